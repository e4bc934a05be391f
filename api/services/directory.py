"""The members' directory: each legal entity's display name and contact, kept in the vault.

Why: the ledger names members by their Ed25519 public keys, which no person reads. The DPO's
page, exports and documents show the organisation the cooperative admitted ("Lumen, the
utility"), with the key on hover or in a details view. The name is given when the member
joins: `civis-vault up` names the founders (the vault, the DPO, each validator), the demo its
own members, `civis-vault apikey create --name` and `PUT /v1/dpo/members/{member_id}/name`
the others.

Why only legal entities: a subject (a resident) is known by one pseudonym per dataset, which
nothing on the ledger links; a name beside each would link them, and would be personal data
outliving an erasure. So a key the ledger knows as a resident's is refused (`SubjectNotNamed`),
and `label` shows an unnamed key as a shortened key, never a guess.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Iterable
from typing import Annotated, Any

from pydantic import BaseModel, Field, StringConstraints
from sqlalchemy import func, select
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.orm import Session

from api.http.errors import ApiError
from api.http.schemas import StrictIn
from api.services.gateway import LedgerGateway, jsonable
from vault.models import MemberName

NAME_MAX = 120
CONTACT_MAX = 200
# A display name is one printable line: no control character (a newline would forge a line
# of a CSV or Markdown export, a tab a cell), no leading or trailing space.
_PRINTABLE = r"^[^\x00-\x1f\x7f]*$"
_HEX_KEY = re.compile(r"^[0-9a-f]{64}$")
# Roles the directory names: every member role but the resident's.
NAMED_ROLES = frozenset({"provider", "consumer", "partner", "vault", "dpo", "validator"})
SHORT_KEY = 12  # hex characters an unnamed key is shown with


class SubjectNotNamed(ApiError):
    status = 422
    title = "A subject's pseudonym gets no name"


class MemberNotFound(ApiError):
    status = 404
    title = "No such member"


DisplayName = Annotated[
    str,
    StringConstraints(min_length=1, max_length=NAME_MAX, strip_whitespace=True, pattern=_PRINTABLE),
]
Contact = Annotated[
    str, StringConstraints(max_length=CONTACT_MAX, strip_whitespace=True, pattern=_PRINTABLE)
]


class NameIn(StrictIn):
    display_name: DisplayName = Field(description="the organisation as people call it")
    contact: Contact = Field(
        default="", description="how to reach it about its processing (an address, an e-mail)"
    )


class MemberNameOut(BaseModel):
    member_id: str = Field(description="hex public key of the member (its ledger identity)")
    display_name: str
    contact: str
    updated_at: dt.datetime


class MemberOut(BaseModel):
    member_id: str = Field(description="hex public key of the member (its ledger identity)")
    display_name: str | None = Field(description="null until someone names it")
    contact: str
    role: str
    college: str
    status: str = Field(description="active, pending (awaiting admission) or suspended")


class MemberList(BaseModel):
    members: list[MemberOut] = Field(description="every member but the residents, by name")


def _out(row: MemberName) -> MemberNameOut:
    return MemberNameOut(
        member_id=row.member_id,
        display_name=row.display_name,
        contact=row.contact,
        updated_at=row.updated_at,
    )


def set_name(
    session: Session, member_id: str, name: NameIn, *, only_if_unset: bool = False
) -> MemberNameOut:
    """Name a member (or rename it): one row per key, the last name given wins; with
    `only_if_unset`, a name already given stays (`up` names its founders at every start, and
    must not undo the DPO's renaming)."""
    if not _HEX_KEY.fullmatch(member_id):
        raise MemberNotFound("a member id is the 64 lowercase hex characters of its key")
    stmt = insert(MemberName).values(
        member_id=member_id, display_name=name.display_name, contact=name.contact
    )
    if only_if_unset:
        session.execute(stmt.on_conflict_do_nothing(index_elements=[MemberName.member_id]))
    else:
        session.execute(
            stmt.on_conflict_do_update(
                index_elements=[MemberName.member_id],
                set_={
                    "display_name": stmt.excluded.display_name,
                    "contact": stmt.excluded.contact,
                    "updated_at": func.now(),
                },
            )
        )
    session.flush()
    row = session.get(MemberName, member_id, populate_existing=True)
    assert row is not None, "just written"
    return _out(row)


def set_name_of_member(
    session: Session, ledger: LedgerGateway, member_id: str, name: NameIn
) -> MemberNameOut:
    """Name a key the ledger knows as a member other than a resident."""
    entry = ledger.query("member", key=bytes.fromhex(member_id))["result"]
    if entry is None:
        raise MemberNotFound("no member of the cooperative holds this key")
    if entry["role"] not in NAMED_ROLES:
        raise SubjectNotNamed(
            "this key is a resident's pseudonym: a name beside it would link the pseudonyms "
            "a subject keeps apart, so the directory names legal entities only"
        )
    return set_name(session, member_id, name)


def names(session: Session, member_ids: Iterable[str] | None = None) -> dict[str, str]:
    """Display names by member id: of `member_ids`, or every one."""
    query = select(MemberName.member_id, MemberName.display_name)
    if member_ids is not None:
        wanted = sorted(set(member_ids))
        if not wanted:
            return {}
        query = query.where(MemberName.member_id.in_(wanted))
    return {member: name for member, name in session.execute(query)}


def label(known: dict[str, str], member_id: str) -> str:
    """What a person reads for a key: its name, else the key shortened."""
    return known.get(member_id) or f"{member_id[:SHORT_KEY]}…"


def members(session: Session, ledger: LedgerGateway) -> MemberList:
    """Every member on the ledger but the residents, with the name and contact the vault
    keeps; named members first, by name, then the unnamed by key."""
    rows: list[dict[str, Any]] = [jsonable(m) for m in ledger.query("members")["result"]]
    kept = {
        r.member_id: r
        for r in session.scalars(
            select(MemberName).where(MemberName.member_id.in_([m["key"] for m in rows]))
        )
    }
    out = []
    for m in rows:
        if m["role"] not in NAMED_ROLES:
            continue
        row = kept.get(m["key"])
        out.append(
            MemberOut(
                member_id=m["key"],
                display_name=None if row is None else row.display_name,
                contact="" if row is None else row.contact,
                role=m["role"],
                college=m["college"],
                status=m["status"],
            )
        )
    out.sort(key=lambda m: (m.display_name is None, (m.display_name or "").lower(), m.member_id))
    return MemberList(members=out)
