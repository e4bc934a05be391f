"""A data subject's wallet: keys and pairwise pseudonyms, on the subject's machine.

The command line over it is `civis-vault wallet` (`api/cli/wallet.py`).

Why the wallet signs bytes it is handed, not a JSON it builds: the consent contracts define the
exact transaction bytes (`ledger_bridge/contracts`); the API hands those bytes out and the
subject signs them unchanged, so the wallet never has to agree with the contracts on an
encoding, and what is signed is exactly what the ledger verifies. Key files are the ledger's
format (hex seed, mode 0600), created with O_EXCL so an existing wallet is never overwritten.

Why a subject has one pseudonym per dataset (docs/KEYS.md, "Identities"): the wallet's key
file holds a master seed whose public key is shown to no one. For each dataset d the wallet
derives an Ed25519 key

    seed_d = HKDF-SHA256(ikm = master seed, salt = b"",
                         info = b"civis-vault/pairwise/v1" || utf8(d) || generation (4 bytes BE))

and hex(pub(seed_d)) is the subject's identity in d: records are uploaded under it, consents
for d are signed with it, erasure asks by it. Two datasets' pseudonyms share nothing a ledger
reader or a consumer can see, and only the seed derives one from the other. The generation
starts at 0 and rises by one when an erasure of the pseudonym is recorded, so an erased
pseudonym is never used again. The generation per dataset and the erasure receipts live in a
small JSON file beside the key (`<key>.pairwise.json`, 0600): with the seed, it is the only
place where the subject's pseudonyms are linked.
"""

from __future__ import annotations

import json
import os
import stat
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ledger_bridge import receipts
from ledger_bridge.contracts import tx as contract_tx
from ledger_bridge.crypto import SigningKey
from ledger_bridge.facts import ERASURE_RECORD
from ledger_bridge.genesis import GenesisError, load_signing_key
from ledger_bridge.pbft import messages as m
from vault.crypto._hazmat import hkdf_sha256

MESSAGE_BYTES_MAX = 1024 * 1024
PAIRWISE_INFO = b"civis-vault/pairwise/v1"
GENERATION_MAX = 2**32 - 1  # the info's 4 bytes
STATE_SUFFIX = ".pairwise.json"
STATE_FORMAT = "civis-vault/wallet-pairwise/v1"
STATE_BYTES_MAX = 4 * 1024 * 1024
CERTIFICATE_BYTES_MAX = 1024 * 1024


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


# -- pairwise pseudonyms --------------------------------------------------------------------


def pairwise_seed(master_seed: bytes, dataset: str, generation: int) -> bytes:
    """The seed of the subject's key in `dataset` at `generation`: the one derivation.

    The info needs no length prefix: the generation is a fixed 4 bytes at its end, so the
    dataset's bytes are everything between the label and those 4, and no two (dataset,
    generation) pairs give the same info.
    """
    if len(master_seed) != 32:
        raise WalletError("a master seed is 32 bytes")
    if not 0 <= generation <= GENERATION_MAX:
        raise WalletError(f"a generation is in 0..{GENERATION_MAX}")
    info = PAIRWISE_INFO + dataset.encode() + generation.to_bytes(4, "big")
    return hkdf_sha256(master_seed, salt=b"", info=info, length=32)


def pseudonym_key(master: SigningKey, dataset: str, generation: int = 0) -> SigningKey:
    return SigningKey(pairwise_seed(master.seed(), dataset, generation))


def dataset_id(text: str) -> str:
    """A dataset id in the one form the API writes (lowercase, hyphenated UUID).

    Why canonical: the pseudonym derives from the id's bytes, so `ABC…` and `abc…` would be two
    pseudonyms for one dataset, and the records uploaded under one would never meet the
    consents signed with the other.
    """
    try:
        return str(uuid.UUID(text))
    except ValueError:
        raise WalletError(f"{text!r} is not a dataset id (a UUID)") from None


def state_path(key_path: Path) -> Path:
    return key_path.with_name(key_path.name + STATE_SUFFIX)


@dataclass
class Relationship:
    """The wallet's record of one dataset: its current generation and the erasures so far."""

    generation: int = 0
    erasures: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class Wallet:
    """A master key and, per dataset, the generation of the pseudonym in use there."""

    path: Path
    master: SigningKey
    datasets: dict[str, Relationship] = field(default_factory=dict)

    @classmethod
    def create(cls, path: Path) -> Wallet:
        return cls(path, new_wallet(path))

    @classmethod
    def open(cls, path: Path) -> Wallet:
        return cls(path, load_wallet(path), _load_state(state_path(path)))

    def generation(self, dataset: str) -> int:
        known = self.datasets.get(dataset_id(dataset))
        return 0 if known is None else known.generation

    def pseudonym(self, dataset: str) -> SigningKey:
        """The key the subject uses in `dataset` now; a dataset met for the first time is
        remembered (generation 0), so the wallet can list and answer for every relationship."""
        d = dataset_id(dataset)
        if d not in self.datasets:
            self.datasets[d] = Relationship()
            self.save()
        return pseudonym_key(self.master, d, self.datasets[d].generation)

    def pseudonyms(self) -> dict[str, SigningKey]:
        """The current key of every dataset the wallet knows."""
        return {d: pseudonym_key(self.master, d, r.generation) for d, r in self.datasets.items()}

    def record_erasure(
        self,
        dataset: str,
        certificate: Mapping[str, Any],
        erasure_receipt: Mapping[str, Any] | None = None,
    ) -> SigningKey:
        """Keep the erasure's receipt and raise the dataset's generation; returns the next key.

        What the wallet keeps is the erasure receipt {height, request, tx_id}
        (ledger_bridge/receipts.py), the subject's only proof once the ledger forgot the
        pseudonym: the certificate's `erasure_receipt`, or `erasure_receipt` given here when
        the certificate was pending and its sealed receipt was fetched and opened
        (`CivisClient.erasure_receipt`). The receipt's own transaction must be the erasure.record
        of this dataset's current pseudonym: raising the generation on anything else would
        leave the wallet signing with a key the ledger still knows, and keep a proof of
        someone else's erasure. That check needs nothing from the vault, whose certificate names
        no one once it has forgotten the subject.
        """
        d = dataset_id(dataset)
        current = bytes(self.pseudonym(d).public_key).hex()
        scope = certificate.get("scope")
        if not isinstance(scope, Mapping):
            raise WalletError("the certificate has no scope")
        named = [scope[k] for k in ("subject_id", "subject") if k in scope]
        if any(n != current for n in named):
            raise WalletError(f"the certificate does not erase this wallet's pseudonym in {d}")
        receipt = _erasure_receipt_of(certificate, erasure_receipt)
        _check_erases(receipt, current, d)
        ledger = certificate.get("receipt")
        if isinstance(ledger, Mapping) and ledger.get("tx_id") != receipt.tx_id:
            raise WalletError("the certificate's ledger receipt is not its erasure receipt's")
        relation = self.datasets[d]
        if relation.generation >= GENERATION_MAX:
            raise WalletError(f"the generations of {d} are used up")
        relation.erasures.append(
            {
                "generation": relation.generation,
                "pseudonym": current,
                "erasure_id": certificate.get("erasure_id"),
                "receipt": {"tx_id": receipt.tx_id, "block_height": receipt.height},
                "erasure_receipt": receipt.to_json(),
            }
        )
        relation.generation += 1
        self.save()
        return pseudonym_key(self.master, d, relation.generation)

    def kept_erasure(self, dataset: str, generation: int | None = None) -> dict[str, Any]:
        """What the wallet kept of the erasure of `dataset`'s pseudonym at `generation` (the
        latest erasure when None): the pseudonym and its receipt, as `verify-erasure` reads it."""
        d = dataset_id(dataset)
        relation = self.datasets.get(d)
        kept = [] if relation is None else relation.erasures
        if generation is not None:
            kept = [e for e in kept if e.get("generation") == generation]
        if not kept:
            raise WalletError(f"the wallet kept no such erasure in {d}")
        return {"dataset": d, **kept[-1]}

    def save(self) -> None:
        state = {
            "format": STATE_FORMAT,
            "datasets": {
                d: {"generation": r.generation, "erasures": r.erasures}
                for d, r in sorted(self.datasets.items())
            },
        }
        _write_private(state_path(self.path), json.dumps(state, indent=1).encode() + b"\n")


def _erasure_receipt_of(
    certificate: Mapping[str, Any], given: Mapping[str, Any] | None
) -> receipts.ErasureReceipt:
    """The erasure receipt given, or the certificate's; a pending certificate's is fetched
    first (GET /v1/erasure-receipts/{id}, opened with its `receipt_key`)."""
    obj = given if given is not None else certificate.get("erasure_receipt")
    if obj is None:
        if certificate.get("receipt_key"):
            raise WalletError(
                "the erasure is pending: fetch its sealed receipt with the certificate's "
                "receipt_key (wallet erased --api URL) and record it then"
            )
        lost = certificate.get("erasure_receipt_lost")
        if lost:  # the API's reason: the erasure is recorded, its receipt can never be made
            raise WalletError(f"the erasure has no receipt and never will: {lost}")
        raise WalletError("the certificate carries no erasure receipt: nothing proves the erasure")
    try:
        return receipts.ErasureReceipt.from_json(dict(obj) if isinstance(obj, Mapping) else obj)
    except receipts.ReceiptInvalid as exc:
        raise WalletError(f"the erasure receipt is malformed: {exc}") from None


def _check_erases(receipt: receipts.ErasureReceipt, pseudonym: str, dataset: str) -> None:
    """The receipt's request must carry a validly signed erasure.record, with the receipt's tx
    id, of `pseudonym` everywhere or in `dataset`. (Whether the ledger committed it is what
    `verify-erasure` checks against the block.)"""
    try:
        request = m.decode(receipt.request)
        if not isinstance(request, m.Request) or not m.verify_request(request):
            raise ValueError("not a signed request")
        signed = contract_tx.decode(request.tx)
    except (m.RemoteProtocolError, contract_tx.MalformedTx, ValueError):
        raise WalletError("the erasure receipt's request is not a signed request") from None
    scope = signed.body.get("scope")
    if (
        signed.type != ERASURE_RECORD
        or signed.tx_id.hex() != receipt.tx_id
        or not isinstance(scope, dict)
        or scope.get("subject") != pseudonym
        or scope.get("dataset", dataset) != dataset
    ):
        raise WalletError(
            f"the erasure receipt does not erase this wallet's pseudonym in {dataset}"
        )


def _write_private(path: Path, data: bytes) -> None:
    """Replace `path` atomically with a 0600 file: a crash leaves the old state or the new."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def _load_state(path: Path) -> dict[str, Relationship]:
    """The relationships file, refused when others may read it (it links the pseudonyms)."""
    try:
        st = path.lstat()
    except FileNotFoundError:
        return {}
    if not stat.S_ISREG(st.st_mode) or st.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise WalletError(f"{path} is not a private file (0600); chmod 600 it")
    if st.st_size > STATE_BYTES_MAX:
        raise WalletError(f"{path} is larger than {STATE_BYTES_MAX} bytes")
    try:
        state = json.loads(path.read_bytes())
        if state.get("format") != STATE_FORMAT:
            raise ValueError("format")
        out: dict[str, Relationship] = {}
        for d, r in state["datasets"].items():
            generation, erasures = r["generation"], r["erasures"]
            if type(generation) is not int or not 0 <= generation <= GENERATION_MAX:
                raise ValueError("generation")
            if not isinstance(erasures, list):
                raise ValueError("erasures")
            out[dataset_id(d)] = Relationship(generation, erasures)
    except (OSError, ValueError, KeyError, TypeError, AttributeError, WalletError):
        raise WalletError(f"{path} is not a wallet's relationships file") from None
    return out
