"""The DPO's documents as files: the PDF writer's structure, read back by a parser of our own
(the xref offsets point at their objects, the streams inflate, the text is there and inside
the margins), and the Markdown renderer, which shows hostile text as written.
"""

from __future__ import annotations

import re
import zlib
from dataclasses import dataclass

import pytest

from api.services.documents import Document, md_escape, to_markdown
from api.services.pdf import MARGIN, PAGE_WIDTH, render_pdf, text_width, wrap


@dataclass
class ParsedPdf:
    objects: dict[int, bytes]
    pages: list[bytes]  # each page's inflated content stream
    trailer: bytes

    def lines(self) -> list[tuple[str, float, float, float, str]]:
        """(font, size, x, y, text) of every text line drawn, pages in order."""
        out = []
        shown = re.compile(rb"BT /(F\d) ([\d.]+) Tf ([\d.]+) ([\d.]+) Td \((.*?)\) Tj ET")
        for content in self.pages:
            for m in shown.finditer(content):
                out.append(
                    (
                        m.group(1).decode(),
                        float(m.group(2)),
                        float(m.group(3)),
                        float(m.group(4)),
                        _unescape(m.group(5)),
                    )
                )
        return out

    def text(self) -> str:
        return "\n".join(line[4] for line in self.lines())


def _unescape(raw: bytes) -> str:
    out = bytearray()
    i = 0
    while i < len(raw):
        if raw[i : i + 1] == b"\\":
            if raw[i + 1 : i + 2].isdigit():
                out.append(int(raw[i + 1 : i + 4], 8))
                i += 4
            else:
                out += raw[i + 1 : i + 2]
                i += 2
        else:
            out += raw[i : i + 1]
            i += 1
    return out.decode("cp1252")


def parse_pdf(data: bytes) -> ParsedPdf:
    """Read a PDF the way a reader starts: from `startxref` at the end, the cross-reference
    table, each object at its offset, the page tree from the catalog."""
    assert data.startswith(b"%PDF-1.4\n")
    assert data.rstrip().endswith(b"%%EOF")
    xref_at = int(re.findall(rb"startxref\n(\d+)\n%%EOF", data)[-1])
    assert data[xref_at : xref_at + 5] == b"xref\n"
    head = re.match(rb"xref\n0 (\d+)\n", data[xref_at:])
    assert head is not None
    count = int(head.group(1))
    table = data[xref_at + head.end() : xref_at + head.end() + 20 * count]
    entries = [table[i * 20 : (i + 1) * 20] for i in range(count)]
    assert entries[0] == b"0000000000 65535 f \n"
    objects = {}
    for number, entry in enumerate(entries[1:], start=1):
        assert re.fullmatch(rb"\d{10} 00000 n \n", entry), entry
        offset = int(entry[:10])
        assert data[offset:].startswith(b"%d 0 obj\n" % number), f"object {number} misplaced"
        end = data.index(b"\nendobj\n", offset)
        objects[number] = data[offset + len(b"%d 0 obj\n" % number) : end]
    trailer = data[xref_at + head.end() + 20 * count :]
    assert trailer.startswith(b"trailer\n")
    assert re.search(rb"/Size %d\b" % count, trailer)
    root = int(re.search(rb"/Root (\d+) 0 R", trailer).group(1))  # type: ignore[union-attr]
    pages_ref = int(re.search(rb"/Pages (\d+) 0 R", objects[root]).group(1))  # type: ignore[union-attr]
    kids = [int(k) for k in re.findall(rb"(\d+) 0 R", objects[pages_ref])]
    count_kids = int(re.search(rb"/Count (\d+)", objects[pages_ref]).group(1))  # type: ignore[union-attr]
    assert len(kids) == count_kids
    pages = []
    for kid in kids:
        assert b"/Type /Page " in objects[kid]
        contents = int(re.search(rb"/Contents (\d+) 0 R", objects[kid]).group(1))  # type: ignore[union-attr]
        body = objects[contents]
        length = int(re.search(rb"/Length (\d+)", body).group(1))  # type: ignore[union-attr]
        start = body.index(b"stream\n") + len(b"stream\n")
        assert body[start + length :] == b"\nendstream"
        pages.append(zlib.decompress(body[start : start + length]))
    return ParsedPdf(objects, pages, trailer)


LONG = (
    "Dataset (meters) of C:\\data with 100% of the residents' readings, "
    "kept 365 days; Привет and 東京 print as question marks. "
) * 40


def _document() -> Document:
    doc = Document("Impact assessment: Métropole (Lyon)")
    doc.heading(1, "1. Context")
    doc.para(LONG)
    doc.bullets(["first item " * 30, "a (parenthesised) item with a \\ backslash"])
    doc.heading(2, "A word too long for any line: " + "x" * 300)
    for i in range(60):
        doc.para(f"Paragraph {i}: the record is kept.")
    doc.blank("Date and signature:", 2)
    return doc


def test_the_pdf_structure_is_exact_and_its_text_is_there() -> None:
    doc = _document()
    pdf = parse_pdf(render_pdf(doc))
    assert len(pdf.pages) >= 3  # long enough to break pages
    text = pdf.text()
    assert "Impact assessment: Métropole (Lyon)" in text
    assert "a (parenthesised) item with a \\ backslash" in text
    assert "Paragraph 59: the record is kept." in text
    assert "Date and signature:" in text
    assert "Привет" not in text and "?????? and ??" in text
    # the wrapped paragraph reads back whole, word for word
    words = " ".join(line[4] for line in pdf.lines() if line[0] == "F1" and line[1] == 10.5)
    assert " ".join(LONG.split()).replace("Привет", "??????").replace("東京", "??") in words
    assert f"page {len(pdf.pages)} of {len(pdf.pages)}" in pdf.pages[-1].decode("latin-1")


def test_every_line_stays_inside_the_page() -> None:
    pdf = parse_pdf(render_pdf(_document()))
    for font, size, x, y, text in pdf.lines():
        assert x >= MARGIN and x + text_width(text, font, size) <= PAGE_WIDTH - MARGIN + 0.01, text
        assert MARGIN / 2 <= y <= 842 - MARGIN


def test_the_info_title_is_utf16_and_nothing_else_is_outside_ascii() -> None:
    data = render_pdf(_document())
    info = parse_pdf(data).objects[5]
    title = re.search(rb"/Title <([0-9A-F]+)>", info)
    assert title is not None
    assert bytes.fromhex(title.group(1).decode()).decode("utf-16") == (
        "Impact assessment: Métropole (Lyon)"
    )


@pytest.mark.parametrize("width", [40.0, 120.0, 483.0])
def test_wrapping_keeps_every_word_and_fits(width: float) -> None:
    text = "the quick brown fox " * 20 + "supercalifragilisticexpialidocious" * 3
    lines = wrap(text, "F1", 10.5, width)
    assert "".join("".join(lines).split()) == "".join(text.split())
    assert all(text_width(line, "F1", 10.5) <= width for line in lines)


def test_markdown_shows_hostile_text_as_written() -> None:
    doc = Document("# not a title")
    doc.heading(1, "[link](http://evil.example) <script>alert(1)</script>")
    doc.para("line one\n# heading injected\n- list injected")
    doc.para("1. not a list, 2) nor this")
    doc.bullets(["*bold* _em_ `code`", "- nested?", "> quoted?"])
    md = to_markdown(doc)
    lines = md.splitlines()
    # exactly one top heading and one section heading: nothing injected starts a block
    assert [line for line in lines if line.startswith("#")] == [
        "# \\# not a title",
        "## \\[link\\](http://evil.example) \\<script\\>alert(1)\\</script\\>",
    ]
    assert "line one # heading injected - list injected" in lines
    assert "1\\. not a list, 2) nor this" in lines
    assert "- \\*bold\\* \\_em\\_ \\`code\\`" in lines
    assert "- \\- nested?" in lines and "- \\> quoted?" in lines
    assert md_escape("a|b ~c~") == "a\\|b \\~c\\~"
