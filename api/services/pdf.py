"""A small, correct PDF 1.4 writer for text documents: headings, wrapped paragraphs, bullets
and blanks to fill, on A4 pages with a footer (api/services/documents.py gives the blocks).

Why our own: a DPIA is text; a PDF library would be a dependency (and its supply chain) for
what the format spells out in a few objects. What it writes: the catalog, the page tree, the
two standard fonts every reader has (Helvetica and Helvetica-Bold, WinAnsiEncoding, so nothing
is embedded), an Info dictionary, one page object and one Flate-compressed content stream per
page, and a cross-reference table whose offsets are the objects' exact byte positions. Lines
are wrapped with the fonts' own advance widths (Adobe's AFM metrics), so text stays inside the
margins. Characters outside Windows-1252 (the fonts' encoding) print as "?".
"""

from __future__ import annotations

import datetime as dt
import zlib
from dataclasses import dataclass, field

from api.services.documents import BLANK, Blank, Bullets, Document, Heading, Paragraph

PAGE_WIDTH, PAGE_HEIGHT = 595, 842  # A4, in points
MARGIN = 56
TEXT_WIDTH = PAGE_WIDTH - 2 * MARGIN
BODY_SIZE, BODY_LEADING = 10.5, 14.0
HEADING_SIZES = {1: 15.0, 2: 12.5, 3: 11.0}
BULLET = "\u2022"  # in Windows-1252 (0x95)
BULLET_INDENT = 14.0

# Advance widths (1/1000 em) of the printable ASCII characters, space (32) to tilde (126),
# from Adobe's Helvetica and Helvetica-Bold AFM files. Other characters count as a digit.
_HELVETICA = (
    "278 278 355 556 556 889 667 191 333 333 389 584 278 333 278 278 556 556 556 556 556 556 "
    "556 556 556 556 278 278 584 584 584 556 1015 667 667 722 722 667 611 778 722 278 500 667 "
    "556 833 722 778 667 778 722 667 611 722 667 944 667 667 611 278 278 278 469 556 333 556 "
    "556 500 556 556 278 556 556 222 222 500 222 833 556 556 556 556 333 500 278 556 500 722 "
    "500 500 500 334 260 334 584"
)
_HELVETICA_BOLD = (
    "278 333 474 556 556 889 722 238 333 333 389 584 278 333 278 278 556 556 556 556 556 556 "
    "556 556 556 556 333 333 584 584 584 611 975 722 722 722 722 667 611 778 722 278 556 722 "
    "611 833 722 778 667 778 722 667 611 722 667 944 667 667 611 333 278 333 584 556 333 556 "
    "611 556 611 556 333 611 611 278 278 556 278 889 611 611 611 611 389 556 333 611 556 778 "
    "556 556 500 389 280 389 584"
)
WIDTHS = {
    "F1": [int(w) for w in _HELVETICA.split()],
    "F2": [int(w) for w in _HELVETICA_BOLD.split()],
}
FONTS = {"F1": "Helvetica", "F2": "Helvetica-Bold"}


def text_width(text: str, font: str, size: float) -> float:
    widths = WIDTHS[font]
    units = sum(widths[ord(c) - 32] if 32 <= ord(c) <= 126 else 556 for c in text)
    return units * size / 1000


def wrap(text: str, font: str, size: float, width: float) -> list[str]:
    """Greedy line breaking at spaces; a word longer than a line is cut where it must be."""
    lines: list[str] = []
    current = ""
    for word in text.split():
        while text_width(word, font, size) > width:
            cut = len(word)
            while cut > 1 and text_width(word[:cut], font, size) > width:
                cut -= 1
            if current:
                lines.append(current)
                current = ""
            lines.append(word[:cut])
            word = word[cut:]
        candidate = f"{current} {word}" if current else word
        if text_width(candidate, font, size) <= width:
            current = candidate
        else:
            lines.append(current)
            current = word
    if current:
        lines.append(current)
    return lines or [""]


def pdf_string(text: str) -> bytes:
    """A PDF literal string of `text` in Windows-1252: parentheses and backslashes escaped,
    anything outside printable ASCII as an octal escape, so the stream stays plain ASCII."""
    out = bytearray(b"(")
    for byte in text.encode("cp1252", errors="replace"):
        if byte in b"()\\":
            out += b"\\" + bytes([byte])
        elif 32 <= byte <= 126:
            out.append(byte)
        else:
            out += b"\\%03o" % byte
    return bytes(out + b")")


@dataclass
class _Layout:
    """Places lines top to bottom, starting a new page when one is full."""

    pages: list[list[bytes]] = field(default_factory=lambda: [[]])
    y: float = PAGE_HEIGHT - MARGIN

    def line(self, text: str, font: str, size: float, leading: float, x: float = MARGIN) -> None:
        if self.y - leading < MARGIN:
            self.pages.append([])
            self.y = PAGE_HEIGHT - MARGIN
        self.y -= leading
        self.pages[-1].append(
            b"BT /%s %.1f Tf %.2f %.2f Td %s Tj ET"
            % (font.encode(), size, x, self.y, pdf_string(text))
        )

    def beside(self, text: str, x: float) -> None:
        """`text` at `x` on the line just placed (a bullet before its item)."""
        self.pages[-1].append(
            b"BT /F1 %.1f Tf %.2f %.2f Td %s Tj ET" % (BODY_SIZE, x, self.y, pdf_string(text))
        )

    def space(self, points: float) -> None:
        self.y -= points

    def lines(self, text: str, font: str, size: float, leading: float, x: float = MARGIN) -> None:
        for part in wrap(text, font, size, PAGE_WIDTH - MARGIN - x):
            self.line(part, font, size, leading, x)


def _lay_out(doc: Document) -> _Layout:
    layout = _Layout()
    layout.lines(doc.title, "F2", 18.0, 24.0)
    layout.space(8)
    for block in doc.blocks:
        if isinstance(block, Heading):
            size = HEADING_SIZES.get(block.level, BODY_SIZE)
            layout.space(size * 0.6)
            layout.lines(block.text, "F2", size, size * 1.35)
            layout.space(2)
        elif isinstance(block, Paragraph):
            layout.lines(block.text, "F1", BODY_SIZE, BODY_LEADING)
            layout.space(5)
        elif isinstance(block, Bullets):
            x = MARGIN + BULLET_INDENT
            for item in block.items:
                for k, part in enumerate(wrap(item, "F1", BODY_SIZE, PAGE_WIDTH - MARGIN - x)):
                    layout.line(part, "F1", BODY_SIZE, BODY_LEADING, x)
                    if k == 0:
                        layout.beside(BULLET, MARGIN + 3)
            layout.space(5)
        elif isinstance(block, Blank):
            layout.lines(block.label, "F2", BODY_SIZE, BODY_LEADING)
            for _ in range(block.lines):
                layout.line(BLANK + BLANK[:20], "F1", BODY_SIZE, BODY_LEADING * 1.6)
            layout.space(6)
    return layout


def _footer(title: str, page: int, pages: int) -> bytes:
    text = f"{title} \u2014 page {page} of {pages}"
    short = wrap(text, "F1", 8.0, TEXT_WIDTH)[0]
    return b"BT /F1 8.0 Tf %.2f %.2f Td %s Tj ET" % (MARGIN, MARGIN / 2, pdf_string(short))


def _utf16(text: str) -> bytes:
    """A PDF text string for the Info dictionary, in UTF-16BE with its byte order mark."""
    return b"<" + ("\ufeff" + text).encode("utf-16-be").hex().upper().encode() + b">"


def render_pdf(doc: Document, *, created: dt.datetime | None = None) -> bytes:
    """The document as PDF 1.4 bytes."""
    layout = _lay_out(doc)
    when = (created or dt.datetime.now(dt.UTC)).astimezone(dt.UTC)
    n = len(layout.pages)
    objects: list[bytes] = [
        b"<< /Type /Catalog /Pages 2 0 R >>",
        b"<< /Type /Pages /Kids [%s] /Count %d >>"
        % (b" ".join(b"%d 0 R" % (6 + 2 * i) for i in range(n)), n),
        *(
            b"<< /Type /Font /Subtype /Type1 /BaseFont /%s /Encoding /WinAnsiEncoding >>"
            % FONTS[f].encode()
            for f in ("F1", "F2")
        ),
        b"<< /Title %s /Producer (Civis Vault) /CreationDate (D:%s) >>"
        % (_utf16(doc.title), when.strftime("%Y%m%d%H%M%SZ").encode()),
    ]
    for i, ops in enumerate(layout.pages):
        stream = zlib.compress(b"\n".join([*ops, _footer(doc.title, i + 1, n)]))
        objects.append(
            b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 %d %d] "
            b"/Resources << /Font << /F1 3 0 R /F2 4 0 R >> >> /Contents %d 0 R >>"
            % (PAGE_WIDTH, PAGE_HEIGHT, 7 + 2 * i)
        )
        objects.append(
            b"<< /Length %d /Filter /FlateDecode >>\nstream\n%s\nendstream" % (len(stream), stream)
        )
    return _assemble(objects)


def _assemble(objects: list[bytes]) -> bytes:
    """Header, numbered objects, the cross-reference table of their offsets, the trailer."""
    out = bytearray(b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n")  # the comment marks the file binary
    offsets = []
    for number, body in enumerate(objects, start=1):
        offsets.append(len(out))
        out += b"%d 0 obj\n%s\nendobj\n" % (number, body)
    xref = len(out)
    out += b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1)
    out += b"".join(b"%010d 00000 n \n" % offset for offset in offsets)
    out += b"trailer\n<< /Size %d /Root 1 0 R /Info 5 0 R >>\n" % (len(objects) + 1)
    out += b"startxref\n%d\n%%%%EOF\n" % xref
    return bytes(out)
