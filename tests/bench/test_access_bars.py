"""The access benchmark's bars, judged from a report's points without running the system."""

from __future__ import annotations

from typing import Any

from bench import access


def _point(consumers: int, per_s: float, p50: float, p99: float, api: float | None) -> Any:
    return {
        "consumers": consumers,
        "access": {
            "requests_per_s": per_s,
            "p50_ms": p50,
            "p99_ms": p99,
            "cpu_ms_per_request": {"api": api, "replicas": 4.0},
        },
    }


def test_each_bar_is_judged_on_the_eight_consumer_point() -> None:
    points = [_point(1, 90.0, 11.0, 17.0, 4.4), _point(8, 230.0, 19.0, 120.0, 3.2)]
    bar = access._bars(points)
    assert (bar["requests_per_s"], bar["api_cpu_ms"], bar["p50_ms"]) == (230.0, 3.2, 19.0)
    assert bar["requests_per_s_met"] and bar["p50_met"]
    assert not bar["api_cpu_met"] and not bar["p99_met"]


def test_the_bars_hold_at_their_bounds_and_fail_past_them() -> None:
    at = access._bars([_point(8, 200.0, 20.0, 100.0, 3.0)])
    assert at["requests_per_s_met"] and at["api_cpu_met"] and at["p50_met"] and at["p99_met"]
    past = access._bars([_point(8, 199.9, 20.01, 100.01, 3.01)])
    met = ("requests_per_s_met", "api_cpu_met", "p50_met", "p99_met")
    assert not any(past[k] for k in met)


def test_a_missing_point_or_figure_meets_no_bar() -> None:
    for bar in (
        access._bars([_point(1, 300.0, 1.0, 2.0, 1.0)]),
        access._bars([_point(8, 300.0, 1.0, 2.0, None)]),
    ):
        assert not bar["api_cpu_met"]
    none = access._bars([])
    assert none["requests_per_s"] is None and not none["requests_per_s_met"]
