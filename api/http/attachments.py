"""Downloads the DPO takes away: documents (Markdown, PDF), JSON and CSV, as attachments.

Why one place: the JSON routes (/v1/dpo/...) and the console's downloads (/dpo/...) answer
the same documents with the same headers: named after their kind and the day, never cached,
never sniffed into another type (`PAGE_HEADERS`).
"""

from __future__ import annotations

import datetime as dt

from fastapi.responses import Response

from api.http.page_sessions import PAGE_HEADERS
from api.services.csv_export import MEDIA_TYPE as CSV
from api.services.documents import Document, to_markdown
from api.services.pdf import render_pdf

MARKDOWN = "text/markdown; charset=utf-8"
PDF = "application/pdf"
JSON = "application/json"


def attachment(body: bytes | str, media_type: str, kind: str, extension: str) -> Response:
    """`body` as the file `<kind>-<UTC day>.<extension>`."""
    name = f"{kind}-{dt.datetime.now(dt.UTC):%Y-%m-%d}.{extension}"
    headers = {"Content-Disposition": f'attachment; filename="{name}"', **PAGE_HEADERS}
    return Response(body, media_type=media_type, headers=headers)


def document(doc: Document, kind: str, fmt: str) -> Response:
    """A document as an attachment: Markdown, or PDF when `fmt` is "pdf"."""
    if fmt == "pdf":
        return attachment(render_pdf(doc), PDF, kind, "pdf")
    return attachment(to_markdown(doc), MARKDOWN, kind, "md")


def csv_file(text: str, kind: str) -> Response:
    return attachment(text, CSV, kind, "csv")
