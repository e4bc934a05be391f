"""Whether the ledger still admits an API key's member: governance may have suspended it
(`suspend_member`) or moved its membership to another key (`rotate_member_key`).

Why the API refuses the key itself, not only the ledger transactions: a suspended member's
ledger transactions are refused by the contracts (`member_suspended`), but some routes never
reach the ledger (a provider reading its own dataset's records, listing its uploads). After a
key is reported stolen, those reads must stop too, so every authenticated request of a legal
entity or founder whose API key is bound to its ledger key (provider, consumer, partner, the
DPO, a validator's operator) asks the ledger
for that member's status, remembered `STANDING_TTL_S` seconds: a suspension takes at most
that long to close the API after its vote passes.

When the ledger does not answer, the last answer known stands (a suspended member stays
refused through an outage); a member never looked up is let through: the routes that need
the ledger fail anyway, and refusing every key whenever the ledger is down would turn an
outage of the ledger into an outage of the vault.
"""

from __future__ import annotations

import threading
import time
from typing import TYPE_CHECKING

from api.http.errors import Forbidden
from api.services.keys import Member
from vault.uploads import LEDGER_SUBJECT_ID

if TYPE_CHECKING:
    from api.services.gateway import LedgerGateway

STANDING_TTL_S = 2.0
# How long one status lookup may hold the request that needs it.
LOOKUP_TIMEOUT_S = 2.0
# Members remembered at once; beyond, the memory starts again (each entry is a key and a word).
REMEMBERED_MAX = 10_000
# API roles whose ledger membership governance decides: the legal entities and the founders
# (the DPO's key reads every subject's export: a stolen one is suspended like a bank's).
GOVERNED_ROLES = frozenset({"provider", "consumer", "partner", "dpo", "validator"})


class MemberSuspended(Forbidden):
    title = "Member suspended"

    def __init__(self) -> None:
        super().__init__(
            "member_suspended: governance suspended this member (suspend_member); its API keys "
            "and ledger transactions are refused until a vote reinstates it (reinstate_member)"
        )


class KeyReplaced(Forbidden):
    title = "Key replaced"

    def __init__(self) -> None:
        super().__init__(
            "key_rotated: governance moved this membership to another ledger key "
            "(rotate_member_key); ask the operator for API keys bound to the new key"
        )


class MemberStanding:
    """The ledger's word on members' status, remembered a few seconds; thread-safe."""

    def __init__(self, gateway: LedgerGateway, *, ttl_s: float = STANDING_TTL_S) -> None:
        self._gateway = gateway
        self._ttl_s = ttl_s
        self._lock = threading.Lock()
        self._known: dict[str, tuple[float, str | None]] = {}

    def check_remembered(self, member: Member) -> bool:
        """`check` from memory alone (no ledger query: the API calls it on its event loop):
        True when decided (refusals raise as `check` does), False when the ledger must be
        asked."""
        if not _governed(member):
            return True
        with self._lock:
            known = self._known.get(member.member_id)
        if known is None or time.monotonic() - known[0] >= self._ttl_s:
            return False
        _refuse(known[1])
        return True

    def status(self, member_id: str) -> str | None:
        """The member's status on the ledger (`active`, `suspended`, `rotated`, `pending`), or
        None: no such member, or not known and the ledger not answering."""
        from api.services.gateway import LedgerUnavailable

        now = time.monotonic()
        with self._lock:
            known = self._known.get(member_id)
        if known is not None and now - known[0] < self._ttl_s:
            return known[1]
        try:
            answer = self._gateway.query(
                "member", timeout_s=LOOKUP_TIMEOUT_S, key=bytes.fromhex(member_id)
            )
        except (LedgerUnavailable, TimeoutError):
            return None if known is None else known[1]
        entry = answer["result"]
        status = None if entry is None else str(entry["status"])
        with self._lock:
            if len(self._known) >= REMEMBERED_MAX:
                self._known.clear()
            self._known[member_id] = (now, status)
        return status

    def check(self, member: Member) -> None:
        """Refuse a governed member that the ledger no longer admits under this key."""
        if _governed(member):
            _refuse(self.status(member.member_id))


def _governed(member: Member) -> bool:
    """Whether the ledger governs this member's standing: a governed role, a ledger key."""
    return (
        member.role in GOVERNED_ROLES and LEDGER_SUBJECT_ID.fullmatch(member.member_id) is not None
    )


def _refuse(status: str | None) -> None:
    """Raise the refusal a member's ledger status calls for, if any."""
    if status == "suspended":
        raise MemberSuspended()
    if status == "rotated":
        raise KeyReplaced()
