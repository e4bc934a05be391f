"""The consent contracts' rules: `apply(state, tx, block) -> result`, deterministic.

This module holds what runs every transaction: `begin_block`, `apply` and the table of
handlers by transaction type (`HANDLERS`). The handlers live by domain: `membership`,
`datasets` (and uploads), `consent`, `access`, `erasure` (and retention, and forgetting a
subject), `rectification`, `restriction` (and objection), `governance`, `reads` (the
vault's own decryptions, recorded in batches); what they share is in `common`; the closed
vocabularies (roles, legal bases...) in `ledger_bridge.contracts.vocabulary`.

Every decision reads only the state and the block (height, time): no I/O, no wall clock, no
randomness. A transaction either applies completely (burning its nonce) or leaves the state
exactly as it was, so a refused, forged or replayed transaction changes nothing.

Time: the contracts' clock is `now = max(previous now, block time)`, so it never runs
backwards even if a primary proposes an earlier (but still accepted) block time.

Consent and erasure take effect from the NEXT block. An access request reads consents and
erasures as they stood at the end of the previous block: the primary orders the transactions
inside a block, and it must not be able to decide whether an access lands just before or just
after a revocation. Each consent keeps its current version and the one before it (each tagged
with the height it was written at); a decision at height h uses the newest version written
before h.

Results are canonical maps: `{"ok": true, ...}` or `{"ok": false, "code": ..., "message": ...}`.
Messages name fields and identifiers, never a value a caller sent as data.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ledger_bridge.app import BlockContext
from ledger_bridge.contracts import tx as txmod
from ledger_bridge.contracts.rules.access import access_request, erased_before
from ledger_bridge.contracts.rules.common import (
    DAY_MS,
    MINUTE_MS,
    NAME,
    Ctx,
    Reject,
    admit,
    error,
    mention,
    structure,
)
from ledger_bridge.contracts.rules.consent import (
    consent_grant,
    consent_in_force,
    consent_revoke,
    version_at,
)
from ledger_bridge.contracts.rules.datasets import dataset_register, upload_anchor
from ledger_bridge.contracts.rules.devices import device_register
from ledger_bridge.contracts.rules.erasure import (
    erasure_record,
    erasure_request,
    forget,
    retention_expire,
)
from ledger_bridge.contracts.rules.fees import credit_deposit, price_set
from ledger_bridge.contracts.rules.governance import (
    ACTIONS,
    VOTING_MAX_MS,
    Action,
    governance_propose,
    governance_vote,
)
from ledger_bridge.contracts.rules.membership import member_register
from ledger_bridge.contracts.rules.reads import read_record
from ledger_bridge.contracts.rules.rectification import record_rectify, rectification_request
from ledger_bridge.contracts.rules.restriction import (
    objection_override,
    objection_set,
    objection_withdraw,
    restriction_exempt,
    restriction_lift,
    restriction_set,
)
from ledger_bridge.contracts.rules.tokens import (
    coupon_spend,
    event_reward,
    expire_lots,
    offer_publish,
    token_redeem,
    token_transfer,
)
from ledger_bridge.contracts.state import State
from ledger_bridge.contracts.vocabulary import ERASURE_REASONS, REQUESTERS, ROLES
from ledger_bridge.crypto import digest

# What the other modules of the project read from the rules.
__all__ = [
    "ACTIONS",
    "DAY_MS",
    "ERASURE_REASONS",
    "HANDLERS",
    "MINUTE_MS",
    "NAME",
    "REQUESTERS",
    "ROLES",
    "VOTING_MAX_MS",
    "Action",
    "Ctx",
    "Reject",
    "admit",
    "apply",
    "begin_block",
    "consent_in_force",
    "erased_before",
    "error",
    "forget",
    "governance_vote",
    "mention",
    "nonce_id",
    "version_at",
]

# The rules, by transaction type (each a domain module's handler).
HANDLERS: dict[str, Callable[[Ctx], dict[str, Any]]] = {
    "member.register": member_register,
    "dataset.register": dataset_register,
    "upload.anchor": upload_anchor,
    "consent.grant": consent_grant,
    "consent.revoke": consent_revoke,
    "access.request": access_request,
    "erasure.request": erasure_request,
    "erasure.record": erasure_record,
    "retention.expire": retention_expire,
    "governance.propose": governance_propose,
    "governance.vote": governance_vote,
    "device.register": device_register,
    "event.reward": event_reward,
    "token.transfer": token_transfer,
    "offer.publish": offer_publish,
    "token.redeem": token_redeem,
    "coupon.spend": coupon_spend,
    # paid access
    "price.set": price_set,
    "credit.deposit": credit_deposit,
    # accountability of decryptions
    "read.record": read_record,
    # rectification
    "rectification.request": rectification_request,
    "record.rectify": record_rectify,
    # restriction (Art. 18) and objection (Art. 21)
    "restriction.set": restriction_set,
    "restriction.lift": restriction_lift,
    "restriction.exempt": restriction_exempt,
    "objection.set": objection_set,
    "objection.withdraw": objection_withdraw,
    "objection.override": objection_override,
}


# -- blocks and transactions ----------------------------------------------------------------


def begin_block(state: State, block: BlockContext) -> None:
    """Advance the contracts' clock and forget nonces whose transactions can no longer run."""
    prev_now: int = state.get("meta", "now") or 0
    now = max(prev_now, block.time_ms)
    state.put("meta", "now", now)
    state.put("meta", "height", block.height)
    minute = now // MINUTE_MS
    pruned: int | None = state.get("meta", "pruned_minute")
    start = minute if pruned is None else pruned
    for m in range(start, minute):
        for _, spent in state.group("nonce_expiry", "minute", m):
            state.delete("nonce_expiry", m, spent)
            state.delete("nonce", spent)
    if minute != pruned:  # writing the same value changes nothing: skip its encoding
        state.put("meta", "pruned_minute", minute)
    expire_lots(state, block.height)
    state.forgotten.clear()


def nonce_id(author: bytes, nonce: bytes) -> bytes:
    """The key a spent nonce is remembered by: SHA-256(author || nonce). Why not the author in
    clear: the entry outlives an erasure by up to the transaction's validity, so it must not
    name the author, yet must still refuse the same transaction replayed (docs/CONTRACTS.md
    "Transactions"). The nonce is random, so the digest tells nothing of the author either."""
    return digest(author + nonce)


def apply(state: State, raw: bytes, chain_id: str, index: int = 0) -> dict[str, Any]:
    """Apply one transaction to `state` (after `begin_block`); return its result. `index` is
    its batch position in the block (`BlockContext.position`)."""
    try:
        tx = txmod.decode(raw)
    except txmod.MalformedTx as exc:
        return error("malformed", str(exc))
    if not tx.verify(chain_id):
        return error("bad_signature", "the signature does not verify for this author and chain")
    now: int = state.get("meta", "now")
    height: int = state.get("meta", "height")
    if tx.valid_until < now:
        return error("expired", "valid_until has passed")
    if tx.valid_until > now + txmod.TTL_MAX_MS:
        return error("ttl_too_long", "valid_until is more than one hour ahead")
    spent = nonce_id(tx.author, tx.nonce)
    if state.has("nonce", spent):
        return error("replayed", "this author already used this nonce")
    state.mark()
    tx_id = tx.tx_id  # a hash of the whole transaction: taken once
    # What the nonce bought, so an author who lost a receipt can find it (`q: nonce`).
    state.put("nonce", spent, {"height": height, "tx": tx_id})
    state.put("nonce_expiry", tx.valid_until // MINUTE_MS, spent, 0)
    seq: int = state.get("meta", "seq")
    state.put("meta", "seq", seq + 1)
    ctx = Ctx(state, tx, height, now, tx_id, index)
    try:
        structure(tx)
        result = HANDLERS[tx.type](ctx)
        # A subject forgotten earlier in this block is forgotten again with whatever this
        # transaction wrote about them (an access naming them, a registration of their key):
        # the whole block forgets them, whatever the order the primary chose.
        for subject in sorted(state.forgotten):
            forget(state, subject, height)
    except Reject as r:
        return _refused(state, tx, height, r.code, r.message)
    except Exception:  # a rule bug must not fork the replicas: every replica refuses alike
        return _refused(
            state, tx, height, "internal", "the contract could not apply this transaction"
        )
    state.commit()
    state.forgotten.update(ctx.forgets)
    result["tx"] = tx_id
    return result


def _refused(
    state: State, tx: txmod.SignedTx, height: int, code: str, message: str
) -> dict[str, Any]:
    """Undo what the handler did, but burn the nonce: a refused transaction, signed by its
    author, must not execute later when the condition that refused it has changed (a consent
    granted meanwhile, a member admitted), so it cannot be held back and replayed within its
    validity. The nonce record says it was refused and why, for an author who asks."""
    state.rollback()
    spent = nonce_id(tx.author, tx.nonce)
    state.put("nonce", spent, {"height": height, "tx": tx.tx_id, "refused": code})
    state.put("nonce_expiry", tx.valid_until // MINUTE_MS, spent, 0)
    return error(code, message)
