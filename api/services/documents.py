"""Documents the DPO reads, downloads and signs (the records of processing, the DPIA), written
once as blocks and rendered to Markdown (api/services/documents.py) or PDF (api/services/pdf.py).

Why blocks and not Markdown parsed back: one structure, two faithful renderings, and no parser
to get wrong. Text is plain: the renderers escape what their format needs, so a dataset named
`<script>` or `# title` is shown as written and changes no structure.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field

BLANK = "_" * 40  # where the DPO writes by hand (or in the Markdown)


@dataclass(frozen=True, slots=True)
class Heading:
    level: int  # 1 (the title) to 3
    text: str


@dataclass(frozen=True, slots=True)
class Paragraph:
    text: str


@dataclass(frozen=True, slots=True)
class Bullets:
    items: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Blank:
    """A question for the DPO, and room for the answer."""

    label: str
    lines: int = 1


Block = Heading | Paragraph | Bullets | Blank


@dataclass
class Document:
    title: str
    blocks: list[Block] = field(default_factory=list)

    def heading(self, level: int, text: str) -> None:
        self.blocks.append(Heading(level, text))

    def para(self, text: str) -> None:
        self.blocks.append(Paragraph(text))

    def bullets(self, items: Iterable[str]) -> None:
        listed = tuple(items)
        if listed:
            self.blocks.append(Bullets(listed))

    def blank(self, label: str, lines: int = 1) -> None:
        self.blocks.append(Blank(label, lines))

    def text(self) -> str:
        """Every word of the document, in order (what a reader of either rendering sees)."""
        out = [self.title]
        for b in self.blocks:
            if isinstance(b, Bullets):
                out += b.items
            elif isinstance(b, Blank):
                out.append(b.label)
            else:
                out.append(b.text)
        return "\n".join(out)


# Inline Markdown (CommonMark and GitHub's tables and strikethrough): what would start
# emphasis, code, a link, raw HTML or a table cell.
_MD_INLINE = re.compile(r"([\\`*_\[\]<>~|])")
# What would start a block at the beginning of a line: a heading, a list, a quote, a thematic
# break or setext underline, a numbered list.
_MD_LINE_START = re.compile(r"^([#>+=-]|\d+(?=[.)]))")


def md_escape(text: str) -> str:
    """Plain text as Markdown that renders it as written: line breaks become spaces (a value
    cannot open a block of its own), the punctuation that Markdown reads inline is
    backslash-escaped, and so is what would open a block at the start."""
    flat = " ".join(text.split())
    escaped = _MD_INLINE.sub(r"\\\1", flat)
    start = _MD_LINE_START.match(escaped)
    if start is None:
        return escaped
    mark = start.group(1)
    if mark.isdigit():  # "1." opens a numbered list; "1\." does not
        return mark + "\\" + escaped[len(mark) :]
    return "\\" + escaped


def to_markdown(doc: Document) -> str:
    out = [f"# {md_escape(doc.title)}", ""]
    for b in doc.blocks:
        if isinstance(b, Heading):
            out += [f"{'#' * min(b.level + 1, 6)} {md_escape(b.text)}", ""]
        elif isinstance(b, Paragraph):
            out += [md_escape(b.text), ""]
        elif isinstance(b, Bullets):
            out += [f"- {md_escape(item)}" for item in b.items] + [""]
        else:
            # A line of underscores in a quote: a rule to write on, as on paper.
            out += [f"**{md_escape(b.label)}**", ""]
            out += ["> " + BLANK for _ in range(b.lines)] + [""]
    return "\n".join(out).rstrip() + "\n"
