"""What a data subject does with their own credential: read everything held about them.

The export answers GDPR Art. 15 (access) and Art. 20 (portability): the subject's records,
decrypted, their superseded (rectified) history, the datasets they are in with purposes, legal
basis, retention, source and recipients, and what the ledger holds about them (consents with
the notices they were shown, accesses to their data, erasures), plus the decryptions of their
data. Two forms: `GET /v1/subjects/{id}/export` pages through it with a cursor and cuts
nothing (api/services/export.py); the package is all of it in one JSON file with the ledger's
proofs, which another controller checks with `civis-vault verify-export` (docs/EXPORT.md).
Only the subject named in the path, or the DPO, may read it; a signed-in subject holding
several pseudonyms gets one package over all of them. The subject's writes (consents, erasure
requests) are transactions they sign, relayed by the consents and erasures routes.
"""

from __future__ import annotations

import datetime as dt
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Path, Query
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field
from sqlalchemy.orm import Session

from api.http.bodies import BoundedJsonRoute
from api.http.deps import (
    CurrentMember,
    KeyStoreDep,
    LedgerDep,
    SessionDep,
    strict_query,
    subject_or_dpo,
)
from api.http.errors import Forbidden
from api.http.schemas import PUBLIC_KEY_HEX
from api.services import decryptions, export_package, requests
from api.services.export import CURSOR_CHARS_MAX, PAGE_MAX, Cursor, Sources, page
from api.services.gateway import LedgerGateway
from api.services.keys import Member
from vault.keys import KeyStore

# Tagged "access" in the OpenAPI document: the export is the subject's right of access.
router = APIRouter(
    prefix="/v1",
    tags=["access"],
    dependencies=[Depends(strict_query)],
    route_class=BoundedJsonRoute,
)

CURSOR_PATTERN = r"^[A-Za-z0-9_-]+$"
PACKAGE_DOC = (
    "one JSON document: the schema is docs/EXPORT.md and api/client/export_schema.json; "
    "`civis-vault verify-export FILE --genesis GENESIS` checks every proof in it"
)
_PACKAGE_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {
        "description": PACKAGE_DOC,
        "content": {"application/json": {"schema": {"type": "object"}}},
    }
}


class ExportOut(BaseModel):
    """One page of everything held about the subject (Art. 15 and 20); nothing is cut: each
    list holds at most `limit` items a page, and `next_cursor` asks for the rest."""

    subject_id: str
    ledger_height: int
    datasets: list[dict[str, Any]] = Field(
        description="purposes, legal basis, retention, source (provider) and recipients"
    )
    records: list[dict[str, Any]] = Field(description="decrypted, with inclusion proofs")
    history: list[dict[str, Any]] = Field(description="records a rectification superseded")
    consents: list[dict[str, Any]] = Field(description="each with the notice it names")
    accesses: list[dict[str, Any]]
    erasures: list[dict[str, Any]]
    decryptions: list[dict[str, Any]] = Field(
        default_factory=list,
        description="every read of the subject's data by the vault's members (this one "
        "included), each provable: GET /v1/decryptions/{id}/proof",
    )
    next_cursor: str | None = Field(
        description="pass it as `cursor` for the next page; null: this page ends the export"
    )
    complete: bool = Field(description="true when this page ends the export")


@router.get("/subjects/{subject_id}/export")
def export(
    subject_id: Annotated[str, Path(pattern=PUBLIC_KEY_HEX)],
    member: CurrentMember,
    session: SessionDep,
    store: KeyStoreDep,
    ledger: LedgerDep,
    cursor: Annotated[
        str | None, Query(max_length=CURSOR_CHARS_MAX, pattern=CURSOR_PATTERN)
    ] = None,
    limit: Annotated[int, Query(ge=1, le=PAGE_MAX)] = PAGE_MAX,
) -> ExportOut:
    """A page of the subject's export: up to `limit` items of each list not yet finished;
    follow `next_cursor` until it is null (or take the package)."""
    subject_or_dpo(member, subject_id)
    at = Cursor.decode(cursor)
    answer = page(_recorded(session, store, ledger, member), subject_id, at, limit)
    if cursor is None:  # the first page is the request; the rest are its pages
        _register_answered(session, member, "access", [subject_id])
    return ExportOut(**answer)


def _register_answered(
    session: Session, member: Member, kind: Literal["access", "portability"], subjects: list[str]
) -> None:
    """The subject's own request, answered at once (Art. 12(3)): registered done, one per
    pseudonym. The DPO reading an export is no request of the subject's."""
    if member.role != "subject":
        return
    now = dt.datetime.now(dt.UTC)
    for subject in subjects:
        opened = requests.open_request(session, kind, subject, None, now)
        requests.close_request(session, opened, "done", at=now)


def _recorded(session: Session, store: KeyStore, ledger: LedgerGateway, member: Member) -> Sources:
    """The export's sources, recording each page's decryptions in the request's own
    transaction before the page lists the reads: an answer never leaves without its record
    (invariant 10), and lists it."""

    def record(records: list[dict[str, Any]]) -> None:
        decryptions.record_export_reads(session, member, records)

    return Sources(session, store, ledger, record)


def _download(package: dict[str, Any], name: str) -> JSONResponse:
    return JSONResponse(
        package,
        headers={"Content-Disposition": f'attachment; filename="civis-export-{name}.json"'},
    )


@router.get(
    "/subjects/{subject_id}/export/package",
    response_class=JSONResponse,
    responses=_PACKAGE_RESPONSES,
)
def export_package_of(
    subject_id: Annotated[str, Path(pattern=PUBLIC_KEY_HEX)],
    member: CurrentMember,
    session: SessionDep,
    store: KeyStoreDep,
    ledger: LedgerDep,
) -> JSONResponse:
    """The whole export of one pseudonym as one portable, verifiable JSON package."""
    subject_or_dpo(member, subject_id)
    package = export_package.build(
        _recorded(session, store, ledger, member), [subject_id], ledger.chain_id
    )
    _register_answered(session, member, "portability", [subject_id])
    return _download(package, subject_id[:16])


@router.get("/subjects/export-package", response_class=JSONResponse, responses=_PACKAGE_RESPONSES)
def export_package_of_self(
    member: CurrentMember, session: SessionDep, store: KeyStoreDep, ledger: LedgerDep
) -> JSONResponse:
    """The signed-in subject's package over every pseudonym they authenticated with (one per
    dataset: nothing else links them, so only the subject can ask for them together)."""
    if member.role != "subject":
        raise Forbidden("only a subject exports their own package here; the DPO names one")
    pseudonyms = sorted(member.pseudonyms)
    package = export_package.build(
        _recorded(session, store, ledger, member), pseudonyms, ledger.chain_id
    )
    _register_answered(session, member, "portability", pseudonyms)
    return _download(package, "all")
