/* The DPO console's script: the charts (Chart.js, vendored beside this file) and the copy
   buttons. Served from the app's own origin; the CSP allows no other script and no inline
   one. The data comes from the page's JSON block (#chart-data), which the server wrote with
   the same figures as the tables: nothing is fetched. */
"use strict";

/* Writes each bar's value on it (or beside it), so a chart is read without hovering; records
   what it wrote on the canvas (data-values), which the tests compare with the tables. */
const valueLabels = {
  id: "valueLabels",
  afterDatasetsDraw(chart) {
    const ctx = chart.ctx;
    const horizontal = chart.options.indexAxis === "y";
    const written = [];
    ctx.save();
    ctx.font = "600 11px system-ui, sans-serif";
    ctx.fillStyle = "#1d2330";
    chart.data.datasets.forEach((dataset, i) => {
      const meta = chart.getDatasetMeta(i);
      if (meta.hidden) return;
      meta.data.forEach((bar, j) => {
        const value = dataset.data[j];
        if (!value) return;
        const text = String(value);
        if (horizontal) {
          ctx.textAlign = "left";
          ctx.textBaseline = "middle";
          ctx.fillText(text, bar.x + 4, bar.y);
        } else {
          ctx.textAlign = "center";
          ctx.textBaseline = "bottom";
          const inside = chart.options.scales.y.stacked && bar.height > 14;
          if (inside) {
            ctx.fillStyle = "#ffffff";
            ctx.textBaseline = "middle";
            ctx.fillText(text, bar.x, bar.y + bar.height / 2);
            ctx.fillStyle = "#1d2330";
            ctx.textBaseline = "bottom";
          } else {
            ctx.fillText(text, bar.x, bar.y - 2);
          }
        }
        written.push([i, j, value]);
      });
    });
    ctx.restore();
    chart.canvas.dataset.values = JSON.stringify(written);
  },
};

function shortDay(label) {
  return /^\d{4}-\d{2}-\d{2}$/.test(label) ? label.slice(5) : label;
}

function drawChart(spec) {
  const canvas = document.getElementById(spec.id + "-canvas");
  if (!canvas || typeof Chart === "undefined") return;
  const horizontal = spec.horizontal;
  const valueAxis = {
    beginAtZero: true,
    stacked: spec.stacked,
    ticks: { precision: 0 },
    title: { display: true, text: spec.unit },
    grace: "12%",
  };
  const categoryAxis = {
    stacked: spec.stacked,
    title: { display: true, text: spec.x_title },
    ticks: { autoSkip: true, callback(value) { return shortDay(this.getLabelForValue(value)); } },
  };
  const chart = new Chart(canvas, {
    type: "bar",
    data: {
      labels: spec.labels,
      datasets: spec.series.map((s) => ({
        label: s.label, data: s.values, backgroundColor: s.colour, links: s.links,
        maxBarThickness: 48,
      })),
    },
    options: {
      indexAxis: horizontal ? "y" : "x",
      responsive: true,
      maintainAspectRatio: false,
      animation: false,
      scales: horizontal ? { x: valueAxis, y: categoryAxis } : { x: categoryAxis, y: valueAxis },
      plugins: {
        legend: { position: "bottom" },
        tooltip: { callbacks: { footer: () => "click to list them" } },
      },
      onHover(event, elements) {
        event.native.target.style.cursor = elements.length ? "pointer" : "default";
      },
      onClick(event, elements) {
        if (!elements.length) return;
        const { datasetIndex, index } = elements[0];
        const link = chart.data.datasets[datasetIndex].links[index];
        if (link) window.location.assign(link);
      },
    },
    plugins: [valueLabels],
  });
  canvas.dataset.drawn = "true";
}

function drawCharts() {
  const block = document.getElementById("chart-data");
  if (!block) return;
  JSON.parse(block.textContent).forEach(drawChart);
}

function copyButtons() {
  document.addEventListener("click", (event) => {
    const button = event.target.closest("button.copy");
    if (!button) return;
    const text = button.dataset.copy;
    const done = () => {
      button.classList.add("done");
      button.textContent = "Copied";
      setTimeout(() => { button.classList.remove("done"); button.textContent = "Copy"; }, 1500);
    };
    if (navigator.clipboard) navigator.clipboard.writeText(text).then(done, () => {});
  });
}

document.addEventListener("DOMContentLoaded", () => {
  drawCharts();
  copyButtons();
});
