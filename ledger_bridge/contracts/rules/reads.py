"""Accountability of decryptions (GDPR Art. 5(2)): the vault records its own reads of personal
data as batches (`read.record` {reads_root, count}).

A consumer's access is decided and recorded here by `access.request`; what the vault decrypts
on its own authority (a provider reading its records, a subject's export, the DPO's reads) is
not a decision of the contracts, so they only record it: the vault commits each batch of such
decryptions as the RFC 6962 root over their leaves, which are salted hashes kept in the vault
(vault/decryptions.py). The ledger so holds a timestamped, signed, append-only commitment to
every read without holding who read whose data: an inclusion proof against a root shows one
read was in the batch, and a leaf changed or dropped afterwards no longer matches the root.

The entry names nobody, so forgetting a subject (rules.erasure.forget) has nothing to do here.
"""

from __future__ import annotations

from typing import Any

from ledger_bridge.contracts.rules.common import Ctx, Reject


def read_record(c: Ctx) -> dict[str, Any]:
    """Only the vault (the operations key that decrypts) records its reads. A root is
    recorded once: two batches never share one (their leaves hold distinct ids and random
    salts), so a second is a replay of the first under a new nonce."""
    body = c.tx.body
    c.active(c.tx.author, "vault")
    root: bytes = body["reads_root"]
    if c.state.has("read_record", root):
        raise Reject("duplicate", "this reads root is already recorded")
    c.state.put(
        "read_record",
        root,
        {"count": body["count"], "height": c.height, "time": c.now, "tx": c.tx_id},
    )
    return {"ok": True, "count": body["count"]}
