"""What the cooperative has decided, read from the ledger: purposes, colleges, governance rules.

Why these routes: a provider registers datasets only for approved purposes, a consumer asks
for one, and a founding member proposing a purpose must know it is not approved yet; each
needs the list, not a 409 after the fact. A proposer also needs each college's majority, and
the voting period the contracts accept. Every answer comes from the replicas' committed state
(`ledger_bridge/contracts/queries.py`), with the height it reflects, never from a copy the API
keeps: the contracts decide by that state, so it is the one worth showing.

Why any authenticated member may read them: they are the cooperative's own rules, the same for
every member, and hold counts and names, never a member's key.
"""

from __future__ import annotations

from fastapi import APIRouter, Depends
from pydantic import BaseModel, Field

from api.http.bodies import BoundedJsonRoute
from api.http.deps import CurrentMember, LedgerDep, strict_query

router = APIRouter(
    prefix="/v1",
    tags=["cooperative"],
    dependencies=[Depends(strict_query)],
    route_class=BoundedJsonRoute,
)


class PurposeDeclaration(BaseModel):
    """What a purpose may disclose (docs/CONTRACTS.md "Disclosure"); consents stay within it."""

    fields: list[str] = Field(description="the record fields it needs")
    modes: list[str] = Field(description="its consents' modes, narrowest first")
    operators: list[str] = Field(description="the operators its predicate questions may use")
    questions: int = Field(description="predicate questions per subject, consumer and period")
    period_days: int


class Purpose(BaseModel):
    purpose: str = Field(description="the name datasets, consents and access requests use")
    approved_at_height: int = Field(
        description="the block whose governance vote approved it; 0 for a founding purpose"
    )
    declaration: PurposeDeclaration | None = Field(
        default=None, description="none: it discloses nothing until governance declares it"
    )


class PurposesOut(BaseModel):
    height: int = Field(description="the last committed block the answer reflects")
    purposes: list[Purpose]


class College(BaseModel):
    college: str
    members: int = Field(description="active members, residents without a vote included")
    voters: int = Field(
        description="members with a vote: founders, legal entities admitted by vote, and "
        "residents governance admitted to voting (docs/CONTRACTS.md, Governance)"
    )
    majority: int = Field(
        description="yes-votes of this college a proposal made now needs (more than half of "
        "`voters`); a proposal keeps the counts of the moment it was made"
    )
    resident: bool = Field(description="residents join this college at once, without a vote")


class CollegesOut(BaseModel):
    height: int = Field(description="the last committed block the answer reflects")
    colleges: list[College]


class GovernanceParameters(BaseModel):
    height: int = Field(description="the last committed block the answer reflects")
    colleges: list[str] = Field(description="every college must approve (one college, one vote)")
    resident_college: str
    actions: list[str] = Field(description="the `kind`s a governance.propose action may take")
    voting_period_max_ms: int = Field(
        description="`voting_ends` must be after the proposing block's time and at most this "
        "many milliseconds after it"
    )
    rule: str = Field(description="how a proposal passes or fails, in words")


RULE = (
    "A proposal passes when, in every college, the yes-votes are more than half of the "
    "college's voting members counted when the proposal was made; it is rejected as soon as "
    "any college's no-votes reach half. Only voting members propose and vote, and only those "
    "who had a vote before the proposal vote on it."
)


@router.get("/purposes")
def purposes(ledger: LedgerDep, _: CurrentMember) -> PurposesOut:
    """The purposes the cooperative approved: the only ones datasets and consents may name."""
    answer = ledger.query("purposes")
    return PurposesOut(height=answer["height"], purposes=[Purpose(**p) for p in answer["result"]])


@router.get("/colleges")
def colleges(ledger: LedgerDep, _: CurrentMember) -> CollegesOut:
    """The colleges with their members, voting members and the majority each needs now."""
    answer = ledger.query("colleges")
    return CollegesOut(height=answer["height"], colleges=[College(**c) for c in answer["result"]])


@router.get("/governance/parameters")
def governance_parameters(ledger: LedgerDep, _: CurrentMember) -> GovernanceParameters:
    """How the contracts decide: colleges, proposal kinds, the voting period's bounds."""
    answer = ledger.query("governance")
    return GovernanceParameters(height=answer["height"], rule=RULE, **answer["result"])
