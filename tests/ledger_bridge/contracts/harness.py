"""A chain of blocks over one ConsentApp, with signing members: the contracts' test bench.

Why not a cluster here: the rules are a pure function of (state, tx, block), so most tests run
them directly and fast; tests/ledger_bridge/contracts/test_cluster.py runs the same app on
real replica processes.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ledger_bridge.app import BlockContext
from ledger_bridge.contracts import codec, tx
from ledger_bridge.contracts.app import ConsentApp
from ledger_bridge.crypto import SigningKey

CHAIN = "civis-test"
T0 = 1_764_000_000_000  # 2025-11-24, ms
DAY = 86_400_000


def key(n: int) -> SigningKey:
    """Deterministic keys, so failures reproduce."""
    return SigningKey(n.to_bytes(32, "big"))


@dataclass
class Member:
    key: SigningKey
    role: str
    college: str

    @property
    def pub(self) -> bytes:
        return bytes(self.key.public_key)

    @property
    def subject(self) -> str:
        return self.pub.hex()


@dataclass
class Chain:
    app: ConsentApp
    vault: Member
    dpo: Member
    validators: list[Member]
    height: int = 0
    time_ms: int = T0
    pending: list[bytes] = field(default_factory=list)
    _next_key: int = 100

    @classmethod
    def new(cls, **app_genesis: Any) -> Chain:
        validators = [
            Member(key(i + 1), "validator", col)
            for i, col in enumerate(["providers", "services", "citizens", "providers"])
        ]
        vault = Member(key(50), "vault", "providers")
        dpo = Member(key(51), "dpo", "services")
        genesis = {
            "members": [
                {"public_key": vault.pub.hex(), "role": "vault", "college": "providers"},
                {"public_key": dpo.pub.hex(), "role": "dpo", "college": "services"},
            ],
            **app_genesis,
        }
        app = ConsentApp(CHAIN, [(v.pub, v.college) for v in validators], genesis)
        return cls(app, vault, dpo, validators)

    def fresh(self, role: str, college: str) -> Member:
        self._next_key += 1
        return Member(key(self._next_key), role, college)

    def sign(
        self, who: Member | SigningKey, tx_type: str, body: dict[str, Any], **kw: Any
    ) -> bytes:
        k = who.key if isinstance(who, Member) else who
        kw.setdefault("valid_until", self.time_ms + 60_000)
        return tx.sign(k, CHAIN, tx_type, body, **kw).encode()

    def block(self, *txs: bytes, advance_ms: int = 1000) -> list[dict[str, Any]]:
        """Commit one block holding `txs`; return the decoded results."""
        self.height += 1
        self.time_ms += advance_ms
        ctx = BlockContext(self.height, self.time_ms, b"\x00" * 32)
        results, _ = self.app.execute(list(txs), ctx)
        return [codec.decode(r) for r in results]

    def one(self, who: Member | SigningKey, tx_type: str, body: dict[str, Any]) -> dict[str, Any]:
        return self.block(self.sign(who, tx_type, body))[0]

    def ok(self, who: Member | SigningKey, tx_type: str, body: dict[str, Any]) -> dict[str, Any]:
        result = self.one(who, tx_type, body)
        assert result["ok"], result
        return result

    def query(self, **q: Any) -> Any:
        return codec.decode(self.app.query(codec.encode(q)))["result"]

    # -- common set-ups -----------------------------------------------------------------
    def admit_by_vote(self, member: Member) -> None:
        """Register a legal entity and have every founding member approve it."""
        self.ok(member, "member.register", {"role": member.role, "college": member.college})
        pid = self.ok(
            self.vault,
            "governance.propose",
            {
                "action": {"kind": "admit_member", "member": member.pub},
                "voting_ends": self.time_ms + DAY,
            },
        )["proposal"]
        for voter in [self.vault, self.dpo, *self.validators]:
            r = self.one(voter, "governance.vote", {"proposal": pid, "approve": True})
            if r.get("status") == "passed":
                break
        assert self.query(q="member", key=member.pub)["status"] == "active"

    def admit_to_voting(self, resident: Member, *voters: Member) -> None:
        """Have the cooperative give a registered resident a vote: the founders and `voters`
        approve until it passes (a resident's own key makes a member, not a voter)."""
        pid = self.ok(
            self.vault,
            "governance.propose",
            {
                "action": {"kind": "admit_voter", "member": resident.pub},
                "voting_ends": self.time_ms + DAY,
            },
        )["proposal"]
        for voter in [self.vault, self.dpo, *self.validators, *voters]:
            if (
                self.one(voter, "governance.vote", {"proposal": pid, "approve": True}).get("status")
                == "passed"
            ):
                break
        assert self.query(q="member", key=resident.pub)["votes_since"] is not None

    def subject(self) -> Member:
        s = self.fresh("subject", "citizens")
        self.ok(s, "member.register", {"role": "subject", "college": "citizens"})
        return s

    def dataset(
        self,
        provider: Member,
        dataset: str,
        *,
        category: str = "energy",
        purposes: list[str] | None = None,
        retention_days: int = 30,
        legal_basis: str = "consent",
    ) -> None:
        self.ok(
            self.vault,
            "dataset.register",
            {
                "dataset": dataset,
                "owner": provider.pub,
                "category": category,
                "purposes": purposes or ["proof-of-address", "billing"],
                "retention_days": retention_days,
                "legal_basis": legal_basis,
            },
        )

    def anchor(self, dataset: str, upload: str, retention_day: int) -> dict[str, Any]:
        return self.ok(
            self.vault,
            "upload.anchor",
            {
                "upload": upload,
                "dataset": dataset,
                "record_count": 3,
                "merkle_root": b"\x11" * 32,
                "key_commitments_root": b"\x22" * 32,
                "key_commitment_count": 2,
                "retention_day": retention_day,
            },
        )


def standard() -> tuple[Chain, Member, Member]:
    """A chain with an admitted provider and an admitted consumer."""
    chain = Chain.new()
    provider = chain.fresh("provider", "providers")
    consumer = chain.fresh("consumer", "services")
    chain.admit_by_vote(provider)
    chain.admit_by_vote(consumer)
    return chain, provider, consumer
