"""The vault's domain errors. Each carries the HTTP status the API renders it with.

Why one tree: the API has a single handler that turns any `VaultError` into an RFC 9457
problem+json answer, so routes never translate errors one by one. Messages name ids and
positions, never payload contents or key material.

    VaultError                      (status 400)
    ├── InvalidRecord               422  a record is not a JSON object, lacks a subject, ...
    ├── RecordTooLarge              413  a record exceeds record_size_max_bytes
    ├── DuplicateRecord             409  a record id already exists
    ├── NotFound                    404
    │   ├── DatasetNotFound
    │   ├── UploadNotFound
    │   └── RecordNotFound
    ├── RecordErased                410  its key was destroyed (erasure or expiry)
    │   └── RecordSuperseded        410  a rectification replaced it: names the current one
    └── RectificationRefused        409  the record is erased or superseded, or not anchored
        └── RectificationBusy       409  an upload or an erasure holds the dataset's keys
"""

from __future__ import annotations


class VaultError(Exception):
    status: int = 400
    title: str = "Bad request"

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail


class InvalidRecord(VaultError):
    status = 422
    title = "Invalid record"

    def __init__(self, detail: str, *, position: int | None = None) -> None:
        # position: 1-based record number in the upload stream (the line of an NDJSON body).
        super().__init__(detail if position is None else f"record {position}: {detail}")
        self.position = position


class RecordTooLarge(InvalidRecord):
    status = 413
    title = "Record too large"


class DuplicateRecord(VaultError):
    status = 409
    title = "Duplicate record"


class NotFound(VaultError):
    status = 404
    title = "Not found"


class DatasetNotFound(NotFound):
    title = "Dataset not found"


class UploadNotFound(NotFound):
    title = "Upload not found"


class RecordNotFound(NotFound):
    title = "Record not found"


class RecordErased(VaultError):
    status = 410
    title = "Record erased"


class RecordSuperseded(RecordErased):
    """A rectification replaced this version; `current` is the record that holds it now."""

    title = "Record superseded"

    def __init__(self, detail: str, *, current: str) -> None:
        super().__init__(detail)
        self.current = current


class RectificationRefused(VaultError):
    """The state refuses the rectification; nothing was changed."""

    status = 409
    title = "Rectification refused"


class RectificationBusy(RectificationRefused):
    """The dataset's keys are held by an upload or an erasure longer than the wait allows."""

    title = "Dataset busy"
