"""Verify an export package (docs/EXPORT.md) against the chain's genesis, trusting no vault.

What another controller checks, from the package and the genesis validator keys alone:

1. the package has the shape of its schema (api/client/export_schema.json);
2. every block it carries decodes, has the header hash its receipts name, and verifies: its
   batch digest over the requests it holds and the digests of those it leaves out, each held
   request's client signature, and 2f+1 commit signatures of the genesis validators;
3. every receipt names a block of the package with that hash and, when `held`, a request of
   it carrying a transaction with that id, signed by its author for this chain;
4. every upload's `upload.anchor` anchors the Merkle root and record count the package states;
5. every record's leaf (recomputed from its id, salt and payload bytes) is included under
   that anchored root at its index, and every superseded record's leaf too;
6. every consent's transaction is its subject's own grant or revocation of that consumer,
   scope and purpose, naming the notice whose canonical JSON hashes to the notice's hash;
7. every access and erasure is the transaction its receipt names, about what the package says;
8. the package is signed by the cooperative's vault (the genesis's `vault` member): what no
   ledger fact proves (whose each record is, the datasets' descriptions, the decryptions) is
   the vault's signed word, and a package changed by anyone else fails.

An access whose request also named other subjects is withheld (its body would disclose them):
only its block's certificate is checked, and the report counts it as unverifiable. Anything
else that does not check is a failure, so a package changed by one byte fails.
"""

from __future__ import annotations

import base64
import binascii
import json
import uuid
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from api.client import json_schema
from api.client.accountability import package_message
from ledger_bridge.contracts import tx as contract_tx
from ledger_bridge.contracts.notices import notice_hash
from ledger_bridge.crypto import VerifyKey
from ledger_bridge.crypto import verify as ed25519_verify
from ledger_bridge.pbft import messages as m
from ledger_bridge.pbft.blocks import Block, verify_block
from vault.crypto import record_leaf
from vault.crypto.merkle import leaf_hash, verify_inclusion


@dataclass
class Report:
    """What the verification found: `failures` (the package cannot be trusted as it is),
    `unverifiable` (withheld by design, listed), and what was checked."""

    failures: list[str] = field(default_factory=list)
    unverifiable: list[str] = field(default_factory=list)
    checked: Counter[str] = field(default_factory=Counter)

    @property
    def ok(self) -> bool:
        return not self.failures

    def fail(self, what: str) -> None:
        self.failures.append(what)

    def to_json(self) -> dict[str, Any]:
        return {
            "verified": self.ok,
            "checked": dict(sorted(self.checked.items())),
            "failures": self.failures,
            "unverifiable": self.unverifiable,
        }


@dataclass
class _Context:
    chain_id: str
    report: Report
    blocks: dict[int, Block] = field(default_factory=dict)
    hashes: dict[int, str] = field(default_factory=dict)
    # upload -> (anchored root, record count, dataset)
    roots: dict[str, tuple[bytes, int, str]] = field(default_factory=dict)


def vault_keys(app_genesis: dict[str, Any]) -> list[bytes]:
    """The public keys of the genesis's founding `vault` members: who signs packages."""
    members = app_genesis.get("members", [])
    return [
        bytes.fromhex(m["public_key"])
        for m in members
        if isinstance(m, dict) and m.get("role") == "vault" and isinstance(m.get("public_key"), str)
    ]


def verify_package(
    package: Any,
    validators: Sequence[VerifyKey] | Sequence[bytes],
    chain_id: str,
    vaults: Sequence[bytes],
) -> Report:
    """Check everything the package claims (see the module docstring); `vaults`: the keys
    that may sign it (`vault_keys` of the genesis), never the package's own `issuer`."""
    report = Report()
    errors = json_schema.validate(package)
    if errors:
        report.failures.extend(f"schema: {e}" for e in errors)
        return report
    if package["chain_id"] != chain_id:
        report.fail(f"the package is of chain {package['chain_id']!r}, not of {chain_id!r}")
        return report
    _signature(report, package, vaults)
    ctx = _Context(chain_id, report)
    keys = [k if isinstance(k, VerifyKey) else VerifyKey(k) for k in validators]
    _blocks(ctx, package["blocks"], keys)
    subjects = set(package["subjects"])
    _uploads(ctx, package["uploads"])
    _records(ctx, package["records"], subjects)
    _history(ctx, package["history"], subjects)
    _consents(ctx, package["consents"], subjects)
    _accesses(ctx, package["accesses"], subjects)
    _erasures(ctx, package["erasures"], subjects)
    return report


def _signature(report: Report, package: dict[str, Any], vaults: Sequence[bytes]) -> None:
    signed = package["signature"]
    issuer = bytes.fromhex(signed["issuer"])
    if issuer not in vaults or not ed25519_verify(
        issuer, package_message(package), bytes.fromhex(signed["signature"])
    ):
        report.fail(
            "the package is not as the cooperative's vault signed it: whose each record is, "
            "the datasets and the decryptions are the vault's word, and it did not say this"
        )
    else:
        report.checked["signature"] += 1


def _blocks(ctx: _Context, blocks: list[dict[str, Any]], keys: Sequence[VerifyKey]) -> None:
    for entry in blocks:
        height = entry["height"]
        try:
            block = m.decode_block(bytes.fromhex(entry["block"]))
        except (ValueError, m.RemoteProtocolError):
            ctx.report.fail(f"block {height}: does not decode")
            continue
        if block.height != height or block.header_hash().hex() != entry["hash"]:
            ctx.report.fail(f"block {height}: not the block of that height and hash")
        elif not verify_block(block, keys):
            ctx.report.fail(f"block {height}: its certificate or batch digest does not verify")
        elif height in ctx.blocks:
            ctx.report.fail(f"block {height}: given twice")
        else:
            ctx.blocks[height] = block
            ctx.hashes[height] = entry["hash"]
            ctx.report.checked["blocks"] += 1


def _receipt(ctx: _Context, receipt: dict[str, Any] | None, what: str) -> Any:
    """The transaction a receipt names, checked: its block is in the package with that hash,
    and (when held) holds a request carrying it, signed by its author. None otherwise (a
    failure is reported; a withheld one is listed as unverifiable)."""
    if receipt is None:
        ctx.report.fail(f"{what}: no receipt")
        return None
    height = receipt["block_height"]
    if height not in ctx.blocks or ctx.hashes[height] != receipt["block_hash"]:
        ctx.report.fail(f"{what}: its block {height} is not in the package as named")
        return None
    if not receipt["held"]:
        ctx.report.unverifiable.append(f"{what}: withheld (its request names other subjects)")
        return None
    for request in ctx.blocks[height].requests:
        try:
            signed = contract_tx.decode(request.tx)
        except contract_tx.MalformedTx:
            continue
        if signed.tx_id.hex() == receipt["tx_id"]:
            if not signed.verify(ctx.chain_id):
                ctx.report.fail(f"{what}: its transaction's signature does not verify")
                return None
            return signed
    ctx.report.fail(f"{what}: its block holds no transaction {receipt['tx_id'][:16]}…")
    return None


def _uploads(ctx: _Context, uploads: list[dict[str, Any]]) -> None:
    for u in uploads:
        what = f"upload {u['upload_id']}"
        signed = _receipt(ctx, u["receipt"], what)
        if signed is None:
            continue
        body = signed.body
        if (
            signed.type != "upload.anchor"
            or body.get("upload") != u["upload_id"]
            or body.get("dataset") != u["dataset_id"]
            or body.get("merkle_root") != bytes.fromhex(u["merkle_root"])
            or body.get("record_count") != u["record_count"]
        ):
            ctx.report.fail(f"{what}: the anchor on the ledger is of another root or upload")
            continue
        ctx.roots[u["upload_id"]] = (body["merkle_root"], body["record_count"], body["dataset"])
        ctx.report.checked["uploads"] += 1


def _payload_bytes(record: dict[str, Any]) -> bytes | None:
    """The bytes the record's leaf covers: `payload_raw` (when the stored bytes are not the
    compact JSON of the payload, and then they must parse to it), else that compact JSON."""
    if "payload_raw" not in record:
        compact = json.dumps(record["payload"], separators=(",", ":"), ensure_ascii=False)
        return compact.encode()
    try:
        raw = base64.b64decode(record["payload_raw"], validate=True)
        same = json.loads(raw) == record["payload"]
    except (binascii.Error, ValueError, UnicodeDecodeError):
        return None
    return raw if same else None


def _included(ctx: _Context, what: str, item: dict[str, Any], leaf: bytes) -> None:
    """The item's leaf is under the anchored root of its upload, of the dataset it names."""
    anchored = ctx.roots.get(item["upload_id"])
    if anchored is None:
        ctx.report.fail(f"{what}: its upload's anchor is not verified in the package")
        return
    root, count, dataset = anchored
    proof = item["proof"]
    path = [bytes.fromhex(h) for h in proof["audit_path"]]
    if item["dataset_id"] != dataset:
        ctx.report.fail(f"{what}: its upload was anchored in another dataset")
    elif proof["merkle_root"] != root.hex() or proof["tree_size"] != count:
        ctx.report.fail(f"{what}: its proof is not under the anchored root")
    elif not verify_inclusion(leaf, proof["leaf_index"], count, path, root):
        ctx.report.fail(f"{what}: not included under its upload's anchored root")
    else:
        ctx.report.checked["inclusions"] += 1


def _records(ctx: _Context, records: list[dict[str, Any]], subjects: set[str]) -> None:
    for r in records:
        what = f"record {r['record_id']}"
        payload = _payload_bytes(r)
        salt = r["proof"].get("leaf_salt")
        if r["subject_id"] not in subjects or payload is None or salt is None:
            ctx.report.fail(f"{what}: not a record of the package's subjects as stored")
            continue
        try:
            data = record_leaf(uuid.UUID(r["record_id"]).bytes, bytes.fromhex(salt), payload)
        except ValueError:
            ctx.report.fail(f"{what}: its salt is not hex")
            continue
        _included(ctx, what, r, leaf_hash(data))
        ctx.report.checked["records"] += 1


def _history(ctx: _Context, history: list[dict[str, Any]], subjects: set[str]) -> None:
    for h in history:
        what = f"superseded record {h['record_id']}"
        if h["subject_id"] not in subjects:
            ctx.report.fail(f"{what}: not of the package's subjects")
            continue
        _included(ctx, what, h, bytes.fromhex(h["leaf_hash"]))
        ctx.report.checked["history"] += 1


def _consent_matches(c: dict[str, Any], signed: Any) -> bool:
    kind, _, name = c["scope"].partition(":")
    body = signed.body
    same = (
        signed.author.hex() == c["subject_id"]
        and body.get("consumer", b"").hex() == c["consumer"]
        and body.get("purpose") == c["purpose"]
        and body.get(kind) == name
    )
    if signed.type == "consent.revoke":
        return same and c["granted"] is False
    notice = c["notice"]
    named = body.get("notice")
    return (
        same
        and signed.type == "consent.grant"
        and c["granted"] is True
        and body.get("valid_until") == c["valid_until"]
        and (named.hex() if named is not None else None)
        == (notice["notice_hash"] if notice else None)
    )


def _consents(ctx: _Context, consents: list[dict[str, Any]], subjects: set[str]) -> None:
    for c in consents:
        what = f"consent of {c['subject_id'][:12]}… to {c['consumer'][:12]}… for {c['purpose']}"
        notice = c["notice"]
        if notice is not None and notice["body"] is not None:
            if notice_hash(notice["body"]).hex() != notice["notice_hash"]:
                ctx.report.fail(f"{what}: its notice is not the one whose hash it names")
                continue
            ctx.report.checked["notices"] += 1
        signed = _receipt(ctx, c["receipt"], what)
        if signed is None:
            continue
        if c["subject_id"] not in subjects or not _consent_matches(c, signed):
            ctx.report.fail(f"{what}: its transaction says otherwise")
            continue
        ctx.report.checked["consents"] += 1


def _accesses(ctx: _Context, accesses: list[dict[str, Any]], subjects: set[str]) -> None:
    for a in accesses:
        what = f"access {a['access']}"
        if a["subject_id"] not in subjects or a["receipt"]["tx_id"] != a["tx"]:
            ctx.report.fail(f"{what}: its receipt is of another transaction")
            continue
        signed = _receipt(ctx, a["receipt"], what)
        if signed is None:
            continue
        body = signed.body
        if (
            signed.type != "access.request"
            or body.get("consumer", b"").hex() != a["consumer"]
            or body.get("dataset") != a["dataset"]
            or body.get("purpose") != a["purpose"]
        ):
            ctx.report.fail(f"{what}: its transaction says otherwise")
            continue
        ctx.report.checked["accesses"] += 1


def _erasures(ctx: _Context, erasures: list[dict[str, Any]], subjects: set[str]) -> None:
    for e in erasures:
        what = f"erasure {e['erasure']}"
        if e["subject_id"] not in subjects or e["receipt"]["tx_id"] != e["tx"]:
            ctx.report.fail(f"{what}: its receipt is of another transaction")
            continue
        signed = _receipt(ctx, e["receipt"], what)
        if signed is None:
            continue
        scope = signed.body.get("scope") or {}
        if signed.type != "erasure.record" or scope.get("subject") != e["subject_id"]:
            ctx.report.fail(f"{what}: its transaction says otherwise")
            continue
        ctx.report.checked["erasures"] += 1
