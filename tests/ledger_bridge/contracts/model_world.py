"""The small cooperative the consent-contract property tests play in, and its transaction bodies.

Why a fixed cast: the property tests draw random *choices* (which subject, which consumer,
which scope) from a handful of members whose standing covers every branch of the rules: two
admitted consumers, one still pending, a provider (not a consumer at all), four resident
subjects and one key that never registered. Building it costs ~15 blocks of governance, so it
is built once and every example starts from its snapshot.

Nothing here knows what the rules decide: the reference model (model_reference.py) does, and
the tests compare the two. This module only builds bodies and signs them.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any

from ledger_bridge.contracts import tx
from ledger_bridge.contracts.app import ConsentApp
from ledger_bridge.contracts.tx import NONCE_BYTES
from tests.ledger_bridge.contracts.harness import CHAIN, Chain, Member

# dataset -> (category, purposes allowed for it); every purpose here is approved at founding
DATASETS: dict[str, tuple[str, tuple[str, ...]]] = {
    "d1": ("energy", ("billing", "proof-of-address")),
    "d2": ("energy", ("billing", "research")),
    "d3": ("mobility", ("billing", "road-maintenance")),
}
# the datasets' legal basis where it is not consent: d3 may be objected to (Art. 21(1))
LEGAL_BASES: dict[str, str] = {"d3": "legitimate_interests"}
CATEGORIES = ("energy", "mobility", "water")  # water: a category no dataset has (yet)
FOUNDING_PURPOSES = frozenset(
    {"proof-of-address", "road-maintenance", "billing", "service-improvement", "research"}
)
PURPOSES = ("billing", "proof-of-address", "research", "road-maintenance", "marketing")
SUBJECT_NAMES = ("s1", "s2", "s3", "s4", "ghost")  # ghost never registers
CONSUMER_NAMES = ("c1", "c2", "pending", "provider")  # the last two cannot receive data
TX_TTL_MS = 60_000  # every test transaction is signed valid for one minute after its block
KEY_COMMITMENTS_ROOT = b"\x22" * 32
KEY_COMMITMENT = b"\x07" * 32


@dataclass(frozen=True)
class Cast:
    """The members of the world, by the names the tests draw."""

    vault: Member
    dpo: Member
    provider: Member
    consumers: dict[str, Member]
    subjects: dict[str, Member]


def populate(chain: Chain) -> Cast:
    """Admit the cast and register the datasets on `chain` (from its genesis)."""
    provider = chain.fresh("provider", "providers")
    c1 = chain.fresh("consumer", "services")
    c2 = chain.fresh("consumer", "services")
    for m in (provider, c1, c2):
        chain.admit_by_vote(m)
    pending = chain.fresh("consumer", "services")
    chain.ok(pending, "member.register", {"role": "consumer", "college": "services"})
    for name, (category, purposes) in DATASETS.items():
        basis = LEGAL_BASES.get(name, "consent")
        chain.dataset(provider, name, category=category, purposes=list(purposes), legal_basis=basis)
    subjects = {name: chain.subject() for name in SUBJECT_NAMES[:-1]}
    subjects["ghost"] = chain.fresh("subject", "citizens")
    consumers = {"c1": c1, "c2": c2, "pending": pending, "provider": provider}
    return Cast(chain.vault, chain.dpo, provider, consumers, subjects)


@dataclass(frozen=True)
class World:
    """The populated chain, frozen as a snapshot at `height` and `time_ms`."""

    cast: Cast
    snapshot: bytes
    height: int
    time_ms: int

    def fresh_app(self) -> ConsentApp:
        """A new ConsentApp holding the world's state (what a state transfer would give)."""
        app = ConsentApp(CHAIN)
        app.restore(self.snapshot)
        return app


@functools.cache
def world() -> World:
    chain = Chain.new()
    cast = populate(chain)
    return World(cast, chain.app.snapshot(), chain.height, chain.time_ms)


class Signer:
    """Signs with counter nonces, so an example's bytes depend only on its choices."""

    def __init__(self) -> None:
        self.count = 0

    def sign(self, who: Member, tx_type: str, body: dict[str, Any], block_time_ms: int) -> bytes:
        self.count += 1
        return tx.sign(
            who.key,
            CHAIN,
            tx_type,
            body,
            valid_until=block_time_ms + TX_TTL_MS,
            nonce=self.count.to_bytes(NONCE_BYTES, "big"),
        ).encode()


# -- bodies -----------------------------------------------------------------------------------


def scope_fields(scope: str) -> dict[str, str]:
    """`dataset:d1` -> {"dataset": "d1"}; `category:energy` -> {"category": "energy"}."""
    kind, name = scope.split(":", 1)
    return {kind: name}


def grant_body(
    subject: str, consumer: bytes, scope: str, purpose: str, valid_until: int
) -> dict[str, Any]:
    return {
        "subject": subject,
        "consumer": consumer,
        "purpose": purpose,
        "valid_until": valid_until,
        **scope_fields(scope),
    }


def revoke_body(subject: str, consumer: bytes, scope: str, purpose: str) -> dict[str, Any]:
    return {"subject": subject, "consumer": consumer, "purpose": purpose, **scope_fields(scope)}


def access_body(
    consumer: bytes, dataset: str, purpose: str, subjects: list[str] | None
) -> dict[str, Any]:
    body: dict[str, Any] = {"consumer": consumer, "dataset": dataset, "purpose": purpose}
    if subjects is not None:
        body["subjects"] = subjects
    return body


def erase_subject_body(subject: str, dataset: str | None) -> dict[str, Any]:
    scope: dict[str, Any] = {"kind": "subject", "subject": subject}
    if dataset is not None:
        scope["dataset"] = dataset
    return {
        "scope": scope,
        "key_commitments": [KEY_COMMITMENT],
        "uploads": [],
        "reason": "dpo_decision",
        "requester": "dpo",
    }


def upload_ref(upload: str) -> dict[str, Any]:
    return {
        "upload": upload,
        "key_commitments_root": KEY_COMMITMENTS_ROOT,
        "key_commitment_count": 2,
    }


def erase_upload_body(upload: str) -> dict[str, Any]:
    return {
        "scope": {"kind": "upload", "upload": upload},
        "key_commitments": [],
        "uploads": [upload_ref(upload)],
        "reason": "provider_withdrawal",
        "requester": "provider",
    }


def anchor_body(upload: str, dataset: str, retention_day: int) -> dict[str, Any]:
    return {
        "upload": upload,
        "dataset": dataset,
        "record_count": 3,
        "merkle_root": b"\x11" * 32,
        "key_commitments_root": KEY_COMMITMENTS_ROOT,
        "key_commitment_count": 2,
        "retention_day": retention_day,
    }


def expire_body(dataset: str, day: int, uploads: list[str]) -> dict[str, Any]:
    return {"dataset": dataset, "day": day, "uploads": [upload_ref(u) for u in uploads]}


# -- restriction and objection (rules/restriction.py) ------------------------------------------


def exempt_body(subject: str, dataset: str, until: int) -> dict[str, Any]:
    return {"dataset": dataset, "subject": subject, "ground": "legal_claims", "until": until}


def override_body(subject: str, dataset: str) -> dict[str, Any]:
    return {"dataset": dataset, "subject": subject, "grounds": "compelling legitimate grounds"}
