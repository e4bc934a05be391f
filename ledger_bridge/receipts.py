"""Erasure receipts: the subject's proof that their erasure was recorded, checkable by anyone.

Why a receipt: an erasure "everywhere" makes the ledger forget the pseudonym P. The replicas
redact every request that named P, the erasure.record's own included, so a block then holds
only that request's digest, and the vault keeps nothing naming P either. Without a receipt the
chain shows that *some* request was ordered at that height, not whose erasure it was. The
subject keeps

    {"height": h, "request": hex of the encoded PBFT Request, "tx_id": hex}

and shows it to whoever needs proof (a supervisory authority): `verify` checks that block h
verifies against the validator keys alone (its commit certificate and batch digest), that
digest(request) is one of the block's request digests, and that the request's transaction is
an erasure.record of P with that tx id. Only the holder of the receipt can link the digest to
P: a digest of a signed request cannot be inverted, and the request's bytes exist only in the
receipt.

Delivery: the vault seals the receipt to a one-time X25519 key that the erasure's HTTP caller
holds (`new_receipt_key`, `seal`, `open_sealed`: libsodium's sealed box), so the vault's
database keeps the receipt only as ciphertext for a key it never stored.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nacl.exceptions import CryptoError
from nacl.public import PrivateKey, PublicKey, SealedBox

from ledger_bridge.contracts import tx as contract_tx
from ledger_bridge.crypto import VerifyKey, digest
from ledger_bridge.facts import ERASURE_RECORD
from ledger_bridge.genesis import GenesisError, load_genesis
from ledger_bridge.pbft import messages as m
from ledger_bridge.pbft.blocks import Block, verify_block, verify_chain

__all__ = [
    "ErasureReceipt",
    "ReceiptInvalid",
    "add_verify_command",
    "find_request",
    "new_receipt_key",
    "open_sealed",
    "seal",
    "verify",
]

RECEIPT_BYTES_MAX = 1 << 20  # a request is at most a transaction (512 KiB) plus its envelope


class ReceiptInvalid(ValueError):
    """Bytes or JSON that are not an erasure receipt."""


@dataclass(frozen=True, slots=True)
class ErasureReceipt:
    height: int
    request: bytes  # the encoded PBFT Request that carried the erasure.record
    tx_id: str  # hex SHA-256 of the contract transaction (the contracts' name for it)

    def to_json(self) -> dict[str, Any]:
        return {"height": self.height, "request": self.request.hex(), "tx_id": self.tx_id}

    def encode(self) -> bytes:
        return json.dumps(self.to_json(), separators=(",", ":"), sort_keys=True).encode()

    @classmethod
    def from_json(cls, obj: Any) -> ErasureReceipt:
        """Parse {"height", "request", "tx_id"}; ReceiptInvalid on anything else."""
        if not isinstance(obj, dict) or set(obj) != {"height", "request", "tx_id"}:
            raise ReceiptInvalid("a receipt is an object of height, request and tx_id")
        height, request, tx_id = obj["height"], obj["request"], obj["tx_id"]
        if type(height) is not int or height < 1:
            raise ReceiptInvalid("height is a positive integer")
        if not isinstance(request, str) or not isinstance(tx_id, str):
            raise ReceiptInvalid("request and tx_id are hex strings")
        try:
            raw = bytes.fromhex(request)
            bytes.fromhex(tx_id)
        except ValueError:
            raise ReceiptInvalid("request and tx_id are hex strings") from None
        if len(raw) > RECEIPT_BYTES_MAX or len(tx_id) != 64:
            raise ReceiptInvalid("request too large or tx_id not 32 bytes")
        return cls(height, raw, tx_id.lower())

    @classmethod
    def decode(cls, raw: bytes) -> ErasureReceipt:
        try:
            return cls.from_json(json.loads(raw))
        except (ValueError, UnicodeDecodeError) as exc:
            if isinstance(exc, ReceiptInvalid):
                raise
            raise ReceiptInvalid("a receipt is JSON") from None


def _block_at(
    blocks: Block | Sequence[Block], height: int, keys: Sequence[VerifyKey]
) -> Block | None:
    """The verified block at `height`: one block checked on its own, or a chain segment
    checked as a whole (contiguous, hash-linked, each block certified)."""
    if isinstance(blocks, Block):
        return blocks if blocks.height == height and verify_block(blocks, keys) else None
    segment = list(blocks)
    if not segment or not verify_chain(segment, keys):
        return None
    return next((b for b in segment if b.height == height), None)


def _erasure_tx(request: bytes) -> contract_tx.SignedTx | None:
    """The contract transaction an encoded Request carries, if it is a validly signed
    request holding an erasure.record."""
    try:
        msg = m.decode(request)
    except m.RemoteProtocolError:
        return None
    if not isinstance(msg, m.Request) or not m.verify_request(msg):
        return None
    try:
        signed = contract_tx.decode(msg.tx)
    except contract_tx.MalformedTx:
        return None
    return signed if signed.type == ERASURE_RECORD else None


def verify(
    receipt: ErasureReceipt,
    blocks: Block | Sequence[Block],
    validators: Sequence[VerifyKey] | Sequence[bytes],
    pseudonym: str,
) -> bool:
    """True when the receipt proves that `pseudonym`'s erasure committed at receipt.height.

    `blocks` is the block at that height, or a chain segment holding it; either way it must
    verify against `validators` (the genesis keys) alone, so the replica that served it need
    not be trusted. A block whose copy of the request was redacted still holds its digest.
    """
    keys = [k if isinstance(k, VerifyKey) else VerifyKey(k) for k in validators]
    block = _block_at(blocks, receipt.height, keys)
    if block is None:
        return False
    digests = block.request_digests()
    if digests is None or digest(receipt.request) not in digests:
        return False
    signed = _erasure_tx(receipt.request)
    if signed is None or signed.tx_id.hex() != receipt.tx_id:
        return False
    scope = signed.body.get("scope")
    return isinstance(scope, dict) and scope.get("subject") == pseudonym.lower()


def find_request(block: Block, tx_id: bytes) -> bytes | None:
    """The encoded request of `block` whose transaction has id `tx_id`, if the block still
    holds its body (for a receipt whose submission was answered from a replica's reply
    cache or its nonce record rather than by the request this client just sent)."""
    for request in block.requests:
        try:
            if contract_tx.decode(request.tx).tx_id == tx_id:
                return m.encode(request)
        except contract_tx.MalformedTx:
            continue
    return None


def new_receipt_key() -> tuple[bytes, bytes]:
    """A one-time (private, public) X25519 key pair for receiving a sealed receipt."""
    key = PrivateKey.generate()
    return bytes(key), bytes(key.public_key)


def seal(receipt: ErasureReceipt, recipient: bytes) -> bytes:
    """The receipt encrypted to `recipient` (an X25519 public key): only its holder opens it."""
    return bytes(SealedBox(PublicKey(recipient)).encrypt(receipt.encode()))


def open_sealed(sealed: bytes, private_key: bytes) -> ErasureReceipt:
    """Open a sealed receipt with the one-time private key; ReceiptInvalid if it does not open."""
    try:
        raw = SealedBox(PrivateKey(private_key)).decrypt(sealed)
    except (CryptoError, ValueError, TypeError):
        raise ReceiptInvalid("the sealed receipt does not open with this key") from None
    return ErasureReceipt.decode(raw)


# -- `civis-vault wallet verify-erasure` ------------------------------------------------------


def add_verify_command(actions: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add `verify-erasure` to a subcommand group (the wallet's): offline, from files only."""
    cmd = actions.add_parser(
        "verify-erasure",
        help="check an erasure receipt against its block and the validator keys",
    )
    cmd.add_argument(
        "--receipt",
        type=Path,
        required=True,
        help="the receipt {height, request, tx_id}, or the erasure's answer holding it (JSON)",
    )
    cmd.add_argument(
        "--block",
        type=Path,
        required=True,
        help="the block at the receipt's height as a replica serves it (bytes, or their hex)",
    )
    cmd.add_argument(
        "--genesis", type=Path, required=True, help="the chain's genesis.toml (validator keys)"
    )
    cmd.add_argument("--pseudonym", required=True, help="the erased pseudonym (64 hex)")
    cmd.set_defaults(func=verify_command)


def _read_receipt(path: Path) -> ErasureReceipt:
    obj = json.loads(path.read_text())
    if isinstance(obj, dict) and "erasure_receipt" in obj:  # the erasure's whole answer
        obj = obj["erasure_receipt"]
    return ErasureReceipt.from_json(obj)


def _read_block(path: Path) -> Block:
    raw = path.read_bytes()
    with contextlib.suppress(UnicodeDecodeError, ValueError):  # else the encoded bytes
        raw = bytes.fromhex(raw.decode("ascii").strip())
    return m.decode_block(raw)


def verify_command(args: argparse.Namespace) -> int:
    """Exit 0 when the receipt proves the pseudonym's erasure, 1 when it does not, 2 when
    an input cannot be read."""
    try:
        receipt = _read_receipt(args.receipt)
        block = _read_block(args.block)
        validators = load_genesis(args.genesis).public_keys()
    except (OSError, ValueError, GenesisError, m.RemoteProtocolError) as exc:
        print(f"civis-vault wallet verify-erasure: {exc}", file=sys.stderr)
        return 2
    ok = verify(receipt, block, validators, args.pseudonym)
    print(json.dumps({"verified": ok, "height": receipt.height, "tx_id": receipt.tx_id}))
    return 0 if ok else 1
