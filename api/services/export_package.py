"""The portable export package: every page of a subject's export, with the ledger's proofs.

Why proofs: another controller receiving the package (Art. 20) should not have to trust this
vault. Each record comes with its RFC 6962 inclusion proof under its upload's Merkle root;
each upload with the receipt of the `upload.anchor` that put that root on the ledger; each
consent, access and erasure with the receipt of its transaction; and each block those
receipts name, with its commit certificate, so `civis-vault verify-export` checks everything
against the genesis validator keys alone (api/client/export_verify.py).

Why pruned blocks: a block holds other people's transactions. The package keeps only the
requests its receipts name and leaves every other one as an omission (its digest, code
`withheld`): the batch digest, hence the commit certificate, still verifies, and nobody
else's consent or access travels with the subject's data. An access that named other subjects
besides the package's own is withheld too (its receipt says `held: false`): its body would
disclose them. The schema is docs/EXPORT.md and api/client/export_schema.json.

Why signed: the ledger proves that each record was anchored, not whose it is (which subject a
key was derived for stays in the vault), nor what the vault says of datasets and decryptions.
The vault's ledger key signs the whole package, so those are the vault's word, attributable,
and a package changed by anyone else (a record passed off as another subject's) fails.
"""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import select

from api.client.accountability import package_message
from api.services.export import PAGE_MAX, SECTIONS, Cursor, Sources, datasets, page
from ledger_bridge.contracts import tx as contract_tx
from ledger_bridge.facts import CONSENT_GRANT, CONSENT_REVOKE
from ledger_bridge.pbft import messages as m
from ledger_bridge.pbft.blocks import Block
from vault.models import Upload

FORMAT = "civis-vault-export"
VERSION = 1
WITHHELD = b"withheld"
CONSENT_TYPES = (CONSENT_GRANT, CONSENT_REVOKE)


@dataclass
class Blocks:
    """The blocks the package's receipts name, each fetched once, and the requests of each
    that the package keeps."""

    src: Sources
    fetched: dict[int, Block] = field(default_factory=dict)
    kept: dict[int, set[bytes]] = field(default_factory=dict)

    def block(self, height: int) -> Block:
        if height not in self.fetched:
            self.fetched[height] = self.src.ledger.block(height)
        return self.fetched[height]

    def transactions(self, height: int) -> list[tuple[bytes, contract_tx.SignedTx]]:
        """(tx id, transaction) of each request whose body the block holds."""
        out = []
        for request in self.block(height).requests:
            try:
                signed = contract_tx.decode(request.tx)
            except contract_tx.MalformedTx:
                continue
            out.append((signed.tx_id, signed))
        return out

    def receipt(self, height: int, tx_id: bytes, *, held: bool = True) -> dict[str, Any]:
        if held:
            self.kept.setdefault(height, set()).add(tx_id)
        else:
            self.kept.setdefault(height, set())
        return {
            "tx_id": tx_id.hex(),
            "block_height": height,
            "block_hash": self.block(height).header_hash().hex(),
            "held": held,
        }

    def pruned(self) -> list[dict[str, Any]]:
        return [
            {
                "height": h,
                "hash": self.block(h).header_hash().hex(),
                "block": m.encode_block(prune(self.block(h), self.kept[h])).hex(),
            }
            for h in sorted(self.kept)
        ]


def prune(block: Block, keep: set[bytes]) -> Block:
    """The block with only the requests whose transaction ids are in `keep`; every other one
    becomes an omission (digest and code `withheld`), so the batch digest and the commit
    certificate still verify."""
    omitted = {o.index: o for o in block.omitted}
    held = iter(block.requests)
    requests: list[m.Request] = []
    out: list[m.Omission] = []
    for i in range(block.size):
        if i in omitted:
            out.append(omitted[i])
            continue
        request = next(held)
        if _tx_id(request) in keep:
            requests.append(request)
        else:
            out.append(m.Omission(i, m.request_digest(request), WITHHELD))
    return m.Block(
        height=block.height,
        view=block.view,
        prev_hash=block.prev_hash,
        time_ms=block.time_ms,
        batch_digest=block.batch_digest,
        requests=tuple(requests),
        omitted=tuple(out),
        results_digest=block.results_digest,
        state_root=block.state_root,
        signers=block.signers,
        certificate=block.certificate,
    )


def _tx_id(request: m.Request) -> bytes | None:
    try:
        return contract_tx.decode(request.tx).tx_id
    except contract_tx.MalformedTx:
        return None


def _all_pages(src: Sources, subject: str) -> dict[str, list[dict[str, Any]]]:
    """Every item of every section for one subject, following the cursor to the end."""
    sections: dict[str, list[dict[str, Any]]] = {s: [] for s in SECTIONS}
    cursor: Cursor | None = Cursor.start()
    while cursor is not None:
        answer = page(src, subject, cursor, PAGE_MAX)
        for s in SECTIONS:
            sections[s].extend(answer[s])
        following = answer["next_cursor"]
        cursor = None if following is None else Cursor.decode(following)
    return sections


def _uploads(src: Sources, blocks: Blocks, ids: Iterable[str]) -> list[dict[str, Any]]:
    rows = src.session.scalars(
        select(Upload).where(Upload.id.in_([uuid.UUID(i) for i in ids])).order_by(Upload.id)
    )
    out = []
    for u in rows:
        receipt = None
        if u.state == "anchored" and u.anchor_tx_id and u.anchor_height:
            receipt = blocks.receipt(u.anchor_height, bytes.fromhex(u.anchor_tx_id))
        out.append(
            {
                "upload_id": str(u.id),
                "dataset_id": str(u.dataset_id),
                "merkle_root": bytes(u.merkle_root).hex(),
                "record_count": u.record_count,
                "state": u.state,
                "receipt": receipt,
            }
        )
    return out


def _consent_receipt(blocks: Blocks, c: dict[str, Any]) -> dict[str, Any] | None:
    """The receipt of the transaction that wrote the consent's current version: the last
    consent.grant or consent.revoke of its subject, consumer, scope and purpose in the block
    at `changed_at_height`."""
    kind, _, name = c["scope"].partition(":")
    found = None
    for tx_id, signed in blocks.transactions(c["changed_at_height"]):
        body = signed.body
        if (
            signed.type in CONSENT_TYPES
            and signed.author.hex() == c["subject_id"]
            and body.get("consumer", b"").hex() == c["consumer"]
            and body.get("purpose") == c["purpose"]
            and body.get(kind) == name
        ):
            found = tx_id
    return None if found is None else blocks.receipt(c["changed_at_height"], found)


def _access_receipt(blocks: Blocks, a: dict[str, Any], own: set[str]) -> dict[str, Any]:
    """The access's receipt; its request is held only if it names nobody but the package's
    own subjects (an open request names nobody)."""
    tx_id = bytes.fromhex(a["tx"])
    named: list[str] | None = None
    for found, signed in blocks.transactions(a["height"]):
        if found == tx_id:
            named = signed.body.get("subjects") or []
    return blocks.receipt(a["height"], tx_id, held=named is not None and set(named) <= own)


def build(src: Sources, subjects: list[str], chain_id: str) -> dict[str, Any]:
    """The package of `subjects` (one pseudonym, or every pseudonym of a signed-in subject)."""
    sections: dict[str, list[dict[str, Any]]] = {s: [] for s in SECTIONS}
    for subject in subjects:
        for s, items in _all_pages(src, subject).items():
            sections[s].extend(items)
    blocks = Blocks(src)
    uploads = {r["upload_id"] for r in sections["records"] + sections["history"]}
    for c in sections["consents"]:
        c["receipt"] = _consent_receipt(blocks, c)
    own = set(subjects)
    for a in sections["accesses"]:
        a["receipt"] = _access_receipt(blocks, a, own)
    for e in sections["erasures"]:
        e["receipt"] = blocks.receipt(e["height"], bytes.fromhex(e["tx"]))
    package: dict[str, Any] = {
        "format": FORMAT,
        "version": VERSION,
        "created_at": dt.datetime.now(dt.UTC).isoformat(),
        "chain_id": chain_id,
        "ledger_height": src.ledger.query("status")["height"],
        "subjects": subjects,
        "datasets": datasets(src, subjects),
        "uploads": _uploads(src, blocks, uploads),
        **sections,
    }
    package["blocks"] = blocks.pruned()
    key = src.ledger.vault_key
    package["signature"] = {
        "issuer": key.public_key.hex(),
        "signature": key.sign(package_message(package)).hex(),
    }
    return package
