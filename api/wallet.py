"""`civis-vault wallet new|pubkey|sign`: a data subject's Ed25519 key, on the subject's machine.

Why the wallet signs bytes it is handed, not a JSON it builds: the consent contracts define the
exact transaction bytes (`ledger_bridge/contracts`); the API hands those bytes out and the
subject signs them unchanged, so the wallet never has to agree with the contracts on an
encoding, and what is signed is exactly what the ledger verifies. The public key (hex) is the
subject's pseudonym. Key files are the ledger's format (hex seed, mode 0600), created with
O_EXCL so an existing wallet is never overwritten.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable
from pathlib import Path

from ledger_bridge.crypto import SigningKey
from ledger_bridge.genesis import GenesisError, load_signing_key

MESSAGE_BYTES_MAX = 1024 * 1024


class WalletError(Exception):
    pass


def new_wallet(path: Path) -> SigningKey:
    key = SigningKey.generate()
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        raise WalletError(f"{path} exists; a wallet is never overwritten") from None
    with os.fdopen(fd, "wb") as fh:
        fh.write(key.seed().hex().encode() + b"\n")
    return key


def load_wallet(path: Path) -> SigningKey:
    try:
        return load_signing_key(path)
    except GenesisError as exc:
        raise WalletError(str(exc)) from None


def sign_message(key: SigningKey, message: bytes) -> bytes:
    if not 0 < len(message) <= MESSAGE_BYTES_MAX:
        raise WalletError(f"the message must be 1..{MESSAGE_BYTES_MAX} bytes")
    return key.sign(message)


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    wallet = sub.add_parser("wallet", help="a data subject's signing key")
    actions = wallet.add_subparsers(dest="wallet_command", metavar="ACTION", required=True)
    new = actions.add_parser("new", help="create a key file (0600); prints the public key")
    new.add_argument("--key", type=Path, required=True, help="key file to create")
    new.set_defaults(func=_new)
    pub = actions.add_parser("pubkey", help="print the public key (the subject's pseudonym)")
    pub.add_argument("--key", type=Path, required=True)
    pub.set_defaults(func=_pubkey)
    sign = actions.add_parser("sign", help="sign the exact bytes the API handed out")
    sign.add_argument("--key", type=Path, required=True)
    what = sign.add_mutually_exclusive_group(required=True)
    what.add_argument("--hex", help="the message, hex-encoded")
    what.add_argument("--file", type=Path, help="a file holding the message bytes")
    sign.set_defaults(func=_sign)


def _report(name: str, run: Callable[[], dict[str, str]]) -> int:
    try:
        out = run()
    except WalletError as exc:
        print(f"civis-vault wallet {name}: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(out))
    return 0


def _new(args: argparse.Namespace) -> int:
    return _report("new", lambda: {"public_key": new_wallet(args.key).public_key.hex()})


def _pubkey(args: argparse.Namespace) -> int:
    return _report("pubkey", lambda: {"public_key": load_wallet(args.key).public_key.hex()})


def _sign(args: argparse.Namespace) -> int:
    def run() -> dict[str, str]:
        key = load_wallet(args.key)
        if args.hex is not None:
            try:
                message = bytes.fromhex(args.hex)
            except ValueError:
                raise WalletError("--hex is not hexadecimal") from None
        else:
            try:
                message = args.file.read_bytes()
            except OSError as exc:
                raise WalletError(f"cannot read {args.file}: {exc.strerror}") from None
        signature = sign_message(key, message)
        return {"public_key": key.public_key.hex(), "signature": signature.hex()}

    return _report("sign", run)
