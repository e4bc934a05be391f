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


_MD_SPECIAL = re.compile(r"([\\`*_{}\[\]()#+\-.!|<>~])")


def md_escape(text: str) -> str:
    """Plain text as Markdown that renders it as written: punctuation Markdown reads is
    backslash-escaped, line breaks become spaces (a value cannot start a block of its own)."""
    flat = " ".join(text.split())
    return _MD_SPECIAL.sub(r"\\\1", flat)


def to_markdown(doc: Document) -> str:
    out = [f"# {md_escape(doc.title)}", ""]
    for b in doc.blocks:
        if isinstance(b, Heading):
            out += [f"{'#' * (b.level + 1 if b.level < 6 else 6)} {md_escape(b.text)}", ""]
        elif isinstance(b, Paragraph):
            out += [md_escape(b.text), ""]
        elif isinstance(b, Bullets):
            out += [f"- {md_escape(item)}" for item in b.items] + [""]
        else:
            out += [f"**{md_escape(b.label)}**", ""]
            out += [f"> {BLANK.replace('_', chr(92) + '_')}" for _ in range(b.lines)] + [""]
    return "\n".join(out).rstrip() + "\n"
