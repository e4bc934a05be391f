"""A data subject signs in with their wallet: no API key, no operator.

`POST /v1/subjects/challenges` hands out a challenge and the exact bytes to sign;
`POST /v1/subjects/sessions` takes one signature of them per pseudonym the wallet holds (one
per dataset) and answers a bearer token `cvs_…` of minutes, accepted wherever a subject's API
key is, for every pseudonym proven; `DELETE /v1/subjects/sessions/current` signs out. The
logic, and why a pseudonym need not be known to sign in, are in
api/services/subject_sessions.py; the signed bytes in api/client/sign_in.py.
"""

from __future__ import annotations

import datetime as dt
from typing import Annotated

from fastapi import APIRouter, Depends, Response
from pydantic import BaseModel, Field, StringConstraints, model_validator

from api.http.bodies import BoundedJsonRoute
from api.http.deps import CurrentMember, LedgerDep, SessionDep, SettingsDep, strict_query
from api.http.schemas import PublicKeyHex, StrictIn
from api.services import subject_sessions

router = APIRouter(
    prefix="/v1/subjects",
    tags=["subject sign-in"],
    dependencies=[Depends(strict_query)],
    route_class=BoundedJsonRoute,
)


class ChallengeOut(BaseModel):
    challenge_id: str = Field(description="names the challenge in the sign-in")
    challenge: str = Field(description="32 random bytes (hex)")
    signing_payload: str = Field(
        description='what every pseudonym signs (hex): "civis-vault/sign-in/v1" 0x00 || '
        "canonical([chain_id, challenge]); never a ledger transaction's signed bytes"
    )
    expires_at: dt.datetime = Field(description="sign in before then; the challenge works once")


class ProofIn(StrictIn):
    pseudonym: PublicKeyHex = Field(description="a pseudonym the wallet holds (hex public key)")
    signature: Annotated[str, StringConstraints(pattern=r"^[0-9a-f]{128}$")] = Field(
        description="its Ed25519 signature of the challenge's signing_payload (hex)"
    )


class SessionIn(StrictIn):
    challenge_id: Annotated[str, StringConstraints(pattern=r"^[0-9a-f]{32}$")]
    proofs: list[ProofIn] = Field(
        min_length=1,
        max_length=subject_sessions.PROOFS_MAX,
        description="one per pseudonym, each distinct; all over the same signing_payload",
    )

    @model_validator(mode="after")
    def _distinct(self) -> SessionIn:
        if len({p.pseudonym for p in self.proofs}) != len(self.proofs):
            raise ValueError("each pseudonym is proven once")
        return self


class SessionOut(BaseModel):
    token: str = Field(description="the bearer `cvs_<id>_<secret>`, shown once")
    expires_at: dt.datetime
    pseudonyms: list[str] = Field(description="the pseudonyms the token proves, sorted")


@router.post("/challenges", status_code=201)
def challenge(session: SessionDep, ledger: LedgerDep) -> ChallengeOut:
    """A single-use sign-in challenge, valid 5 minutes (no key needed)."""
    made = subject_sessions.new_challenge(session, ledger.chain_id, dt.datetime.now(dt.UTC))
    return ChallengeOut(
        challenge_id=made.challenge_id,
        challenge=made.challenge.hex(),
        signing_payload=made.signing_payload.hex(),
        expires_at=made.expires_at,
    )


@router.post("/sessions", status_code=201)
def sign_in(
    body: SessionIn, session: SessionDep, ledger: LedgerDep, settings: SettingsDep
) -> SessionOut:
    """Sign in: a token for every pseudonym whose signature of the challenge verifies.

    All proofs must verify (403 naming the first that does not); a used, expired or unknown
    challenge is 410. Either way nothing changes. Nothing of a sign-in reaches the ledger."""
    opened = subject_sessions.sign_in(
        session,
        ledger.chain_id,
        body.challenge_id,
        [(p.pseudonym, bytes.fromhex(p.signature)) for p in body.proofs],
        ttl=dt.timedelta(seconds=settings.subject_session_ttl_s),
        now=dt.datetime.now(dt.UTC),
    )
    return SessionOut(
        token=opened.token, expires_at=opened.expires_at, pseudonyms=list(opened.pseudonyms)
    )


@router.delete("/sessions/current", status_code=204, response_class=Response)
def sign_out(member: CurrentMember, session: SessionDep) -> Response:
    """Sign out: the token stops working at once, wherever a copy of it is (an API key: 403)."""
    subject_sessions.end_session(session, member)
    return Response(status_code=204)
