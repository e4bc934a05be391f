"""`civis-vault wallet`: the command line over the subject's wallet (`api/client/wallet.py`).

Most actions are local (keys, pseudonyms, signatures, receipts). `restrict` and `object` are
the subject's Art. 18 and Art. 21 requests: the wallet signs with the dataset's pseudonym and
posts through the API (`--api`), as `CivisClient` does; the key never leaves the machine."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import httpx

from api.client import coupons
from api.client.wallet import (
    CERTIFICATE_BYTES_MAX,
    Wallet,
    WalletError,
    dataset_id,
    load_wallet,
    new_wallet,
    sign_message,
)
from ledger_bridge import receipts
from ledger_bridge.contracts.vocabulary import RESTRICTION_GROUNDS

if TYPE_CHECKING:
    from api.client import CivisClient, LedgerWrite
    from ledger_bridge.crypto import SigningKey

Send = Callable[["CivisClient", "SigningKey", str], "LedgerWrite"]


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    wallet = sub.add_parser("wallet", help="a data subject's (or a member's) signing keys")
    actions = wallet.add_subparsers(dest="wallet_command", metavar="ACTION", required=True)
    new = actions.add_parser("new", help="create a key file (0600); prints the public key")
    new.add_argument("--key", type=Path, required=True, help="key file to create")
    new.set_defaults(func=_new)
    pub = actions.add_parser(
        "pubkey",
        help="print the key file's own public key: a legal entity's identity "
        "(a subject shows only pseudonyms)",
    )
    pub.add_argument("--key", type=Path, required=True)
    pub.set_defaults(func=_pubkey)
    nym = actions.add_parser("pseudonym", help="print the subject's pseudonym in a dataset")
    nym.add_argument("--key", type=Path, required=True)
    nym.add_argument("--dataset", required=True, help="the dataset's id")
    nym.set_defaults(func=_pseudonym)
    sign = actions.add_parser("sign", help="sign the exact bytes the API handed out")
    sign.add_argument("--key", type=Path, required=True)
    sign.add_argument("--dataset", help="sign with the pseudonym of this dataset")
    what = sign.add_mutually_exclusive_group(required=True)
    what.add_argument("--hex", help="the message, hex-encoded")
    what.add_argument("--file", type=Path, help="a file holding the message bytes")
    sign.set_defaults(func=_sign)
    erased = actions.add_parser(
        "erased",
        help="keep an erasure's certificate and move the dataset to a new pseudonym",
    )
    erased.add_argument("--key", type=Path, required=True)
    erased.add_argument("--dataset", required=True, help="the dataset whose pseudonym was erased")
    erased.add_argument(
        "--certificate", required=True, help="the erasure certificate (JSON) file, or - for stdin"
    )
    erased.add_argument(
        "--api",
        help="the API's base URL: a pending certificate's sealed receipt is fetched from it",
    )
    erased.add_argument(
        "--wait", type=float, default=30.0, help="seconds to wait for a pending receipt"
    )
    erased.set_defaults(func=_erased)
    kept = actions.add_parser(
        "receipt",
        help="print the erasure receipt the wallet kept (verify-erasure --receipt reads it)",
    )
    kept.add_argument("--key", type=Path, required=True)
    kept.add_argument("--dataset", required=True)
    kept.add_argument("--generation", type=int, help="the erased generation (default: latest)")
    kept.set_defaults(func=_receipt)
    receipts.add_verify_command(actions)  # verify-erasure: ledger_bridge/receipts.py
    _add_coupon_command(actions)
    _add_sign_in_commands(actions)
    _add_rights_commands(actions)


def _report(name: str, run: Callable[[], dict[str, Any]]) -> int:
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


def _pseudonym(args: argparse.Namespace) -> int:
    def run() -> dict[str, Any]:
        wallet = Wallet.open(args.key)
        key = wallet.pseudonym(args.dataset)
        d = dataset_id(args.dataset)
        return {
            "public_key": key.public_key.hex(),
            "dataset": d,
            "generation": wallet.generation(d),
        }

    return _report("pseudonym", run)


def _sign(args: argparse.Namespace) -> int:
    def run() -> dict[str, Any]:
        if args.dataset is None:
            key = load_wallet(args.key)
        else:
            key = Wallet.open(args.key).pseudonym(args.dataset)
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


def _erased(args: argparse.Namespace) -> int:
    def run() -> dict[str, Any]:
        wallet = Wallet.open(args.key)
        try:
            if args.certificate == "-":
                raw = sys.stdin.buffer.read(CERTIFICATE_BYTES_MAX + 1)
            else:
                raw = Path(args.certificate).read_bytes()
        except OSError as exc:
            raise WalletError(f"cannot read {args.certificate}: {exc.strerror}") from None
        if len(raw) > CERTIFICATE_BYTES_MAX:
            raise WalletError(f"the certificate is larger than {CERTIFICATE_BYTES_MAX} bytes")
        try:
            certificate = json.loads(raw)
        except ValueError:
            raise WalletError("the certificate is not JSON") from None
        if not isinstance(certificate, dict):
            raise WalletError("the certificate is not an erasure certificate")
        d = dataset_id(args.dataset)
        erased = wallet.pseudonym(d).public_key.hex()
        receipt = None
        if certificate.get("erasure_receipt") is None and args.api is not None:
            receipt = _fetch_receipt(args.api, certificate, args.wait)
        following = wallet.record_erasure(d, certificate, receipt)
        return {
            "dataset": d,
            "erased": erased,
            "generation": wallet.generation(d),
            "public_key": following.public_key.hex(),
        }

    return _report("erased", run)


def _fetch_receipt(api: str, certificate: dict[str, Any], wait_s: float) -> dict[str, Any]:
    """A pending certificate's receipt, fetched sealed from the API and opened with its key."""
    from api.client import CivisClient, ClientError, ErasureCertificate

    try:
        with CivisClient(api) as client:
            answer = cast(ErasureCertificate, certificate)
            return dict(client.erasure_receipt(answer, wait_s=wait_s))
    except (ClientError, httpx.HTTPError, receipts.ReceiptInvalid) as exc:
        raise WalletError(f"fetching the erasure receipt: {exc}") from None


def _receipt(args: argparse.Namespace) -> int:
    return _report(
        "receipt", lambda: Wallet.open(args.key).kept_erasure(args.dataset, args.generation)
    )


def _add_coupon_command(actions: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    coupon = actions.add_parser(
        "coupon",
        help="check a coupon's code (and its QR payload's signature); write its QR as SVG",
    )
    shown = coupon.add_mutually_exclusive_group(required=True)
    shown.add_argument("--code", help="the printable code, CV1-…")
    shown.add_argument("--qr", help="the QR payload, <code>.<offer>.<height>.<signature>")
    coupon.add_argument("--issuer", help="the operations key (hex) that must have signed it")
    coupon.add_argument("--chain-id", help="the cooperative's chain id (with --issuer)")
    coupon.add_argument("--price-mtok", type=int, help="the offer's price (with --issuer)")
    coupon.add_argument("--svg", type=Path, help="write the QR code here (needs segno)")
    coupon.set_defaults(func=_coupon)


def _coupon(args: argparse.Namespace) -> int:
    """Print what a code or QR payload holds, after checking it: the code's check bytes, and
    with --issuer the cooperative's signature (offline, as a partner's scanner does)."""

    def run() -> dict[str, Any]:
        try:
            out = _coupon_facts(args)
        except coupons.CouponError as exc:
            raise WalletError(str(exc)) from None
        if args.svg is not None:
            out["svg"] = _write_qr(args.svg, args.qr or args.code)
        return out

    return _report("coupon", run)


def _coupon_facts(args: argparse.Namespace) -> dict[str, Any]:
    if args.code is not None:
        secret = coupons.decode_code(args.code)
        return {"code": coupons.encode_code(secret), "coupon": coupons.coupon_id(secret).hex()}
    if args.issuer is None:
        qr = coupons.decode_qr(args.qr)
        verified = False
    else:
        if args.chain_id is None or args.price_mtok is None:
            raise WalletError("--issuer needs --chain-id and --price-mtok")
        try:
            issuer = bytes.fromhex(args.issuer)
        except ValueError:
            raise WalletError("--issuer is not hexadecimal") from None
        qr = coupons.verify_qr(
            args.qr, chain_id=args.chain_id, issuer=issuer, price_mtok=args.price_mtok
        )
        verified = True
    return {
        "code": qr.code,
        "coupon": qr.coupon.hex(),
        "offer": qr.offer,
        "height": qr.height,
        "signature_verified": verified,
    }


def _write_qr(path: Path, payload: str) -> str | None:
    """The QR code as SVG when segno is installed (an optional dependency); None otherwise,
    and the code printed alone does the job at a till."""
    try:
        import segno  # type: ignore[import-not-found, unused-ignore]
    except ImportError:
        print("civis-vault wallet coupon: segno is not installed, no SVG written", file=sys.stderr)
        return None
    segno.make(payload, error="m").save(str(path), kind="svg")
    return str(path)


# -- signing in: the subject's own keys instead of an API key ---------------------------------

TOKEN_LINE_CHARS_MAX = 256


def _add_sign_in_commands(actions: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    sign_in = actions.add_parser(
        "sign-in",
        help="sign in to the API with every pseudonym of the wallet; prints a token of minutes",
    )
    sign_in.add_argument("--key", type=Path, required=True)
    sign_in.add_argument("--api", required=True, help="the API's base URL")
    sign_in.add_argument(
        "--dataset",
        action="append",
        help="prove only this dataset's pseudonym (repeatable; default: every dataset known)",
    )
    sign_in.add_argument("--chain-id", help="refuse a challenge for any other chain")
    sign_in.set_defaults(func=_sign_in)
    sign_out = actions.add_parser(
        "sign-out", help="end a sign-in: reads its token from standard input"
    )
    sign_out.add_argument("--api", required=True, help="the API's base URL")
    sign_out.set_defaults(func=_sign_out)


def _sign_in(args: argparse.Namespace) -> int:
    """Print {token, expires_at, pseudonyms: {dataset: pseudonym}}; the token is not stored.

    Why printed and not kept in a file beside the wallet: it lives minutes and works for every
    pseudonym at once, so a copy left on disk (and in the wallet's backups) would outlive its
    use; a shell variable dies with the terminal. `wallet sign-out` ends it sooner.
    """
    from api.client import CivisClient, ClientError

    def run() -> dict[str, Any]:
        wallet = Wallet.open(args.key)
        if args.dataset is None:
            keys = wallet.pseudonyms()
        else:
            keys = {dataset_id(d): wallet.pseudonym(d) for d in args.dataset}
        if not keys:
            raise WalletError("the wallet knows no dataset yet: derive a pseudonym first")
        try:
            with CivisClient(args.api) as client:
                signed_in = client.sign_in_keys(list(keys.values()), chain_id=args.chain_id)
        except (ClientError, httpx.HTTPError) as exc:
            raise WalletError(f"signing in: {exc}") from None
        session = signed_in.session
        assert session is not None, "sign_in_keys answers a signed-in client"
        return {
            "token": session["token"],
            "expires_at": session["expires_at"],
            "pseudonyms": {d: k.public_key.hex() for d, k in sorted(keys.items())},
        }

    return _report("sign-in", run)


def _sign_out(args: argparse.Namespace) -> int:
    """End the sign-in whose token is on standard input (never an argument: `ps` shows those)."""
    from api.client import CivisClient, ClientError

    def run() -> dict[str, Any]:
        token = sys.stdin.readline(TOKEN_LINE_CHARS_MAX).strip()
        if not token.startswith("cvs_"):
            raise WalletError("give the sign-in token (cvs_…) on standard input")
        try:
            with CivisClient(args.api, api_key=token) as client:
                client.sign_out()
        except (ClientError, httpx.HTTPError) as exc:
            raise WalletError(f"signing out: {exc}") from None
        return {"signed_out": True}

    return _report("sign-out", run)


# -- restriction (Art. 18) and objection (Art. 21) ---------------------------------------------


def _add_rights_commands(actions: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    restrict = actions.add_parser(
        "restrict",
        help="restrict processing of your data in a dataset (GDPR Art. 18), or lift it",
    )
    objection = actions.add_parser(
        "object",
        help="object to processing in a dataset under public task or legitimate interests "
        "(GDPR Art. 21), or withdraw the objection",
    )
    for parser in (restrict, objection):
        parser.add_argument("--key", type=Path, required=True)
        parser.add_argument("--dataset", required=True, help="the dataset's id")
        parser.add_argument("--api", required=True, help="the API's base URL")
    how = restrict.add_mutually_exclusive_group(required=True)
    how.add_argument("--ground", choices=RESTRICTION_GROUNDS, help="why (Art. 18(1) (a)-(d))")
    how.add_argument("--lift", action="store_true", help="lift the restriction in force")
    restrict.set_defaults(func=_restrict)
    objection.add_argument("--withdraw", action="store_true", help="withdraw the objection")
    objection.set_defaults(func=_object)


def _signed_word(args: argparse.Namespace, name: str, send: Send) -> int:
    """Sign with the dataset's pseudonym and post; the contracts' answer, or why not."""
    from api.client import CivisClient, ClientError

    def run() -> dict[str, Any]:
        d = dataset_id(args.dataset)
        key = Wallet.open(args.key).pseudonym(d)
        try:
            with CivisClient(args.api) as client:
                out = send(client, key, d)
        except (ClientError, httpx.HTTPError) as exc:
            raise WalletError(str(exc)) from None
        return {"dataset": d, "pseudonym": key.public_key.hex(), **out}

    return _report(name, run)


def _restrict(args: argparse.Namespace) -> int:
    def send(client: CivisClient, key: SigningKey, d: str) -> LedgerWrite:
        if args.lift:
            return client.lift_restriction(key, dataset=d)
        return client.restrict(key, dataset=d, ground=args.ground)

    return _signed_word(args, "restrict", send)


def _object(args: argparse.Namespace) -> int:
    def send(client: CivisClient, key: SigningKey, d: str) -> LedgerWrite:
        if args.withdraw:
            return client.withdraw_objection(key, dataset=d)
        return client.object_to(key, dataset=d)

    return _signed_word(args, "object", send)
