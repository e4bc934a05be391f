"""`civis-vault bench contracts --json`: the CPU one replica spends deciding one access.

What it measures: a `ConsentApp` built from a genesis, its subjects registered and consenting
through real signed transactions, then blocks of pre-signed `access.request` transactions
executed by `ConsentApp.execute`, as a replica executes a committed batch: decode, signature
check, the rules, the state writes, the result's encoding and the state root. Signing is the
client's work and happens before the clock starts.

Two figures per point, both CPU (`time.process_time`) per access:
- `contract_cpu_ms`: the rule alone (`access.request`'s handler: parse, decide, record);
- `app_cpu_ms`: the whole of `execute` per transaction, root included.

Points: an open request (every consenting subject) over 100 and over 1,000 subjects (the
`--records` option sets the larger one), and a request naming 100 subjects. The baseline,
measured in the same run through the same app, is the open request over 1 consenting
subject: the ratios say what the subjects cost, whatever the machine's load.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import pstats
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from ledger_bridge.app import BlockContext
from ledger_bridge.contracts import codec, rules, tx
from ledger_bridge.contracts.app import ConsentApp
from ledger_bridge.contracts.rules.common import Ctx
from ledger_bridge.crypto import SigningKey, digest

CHECKOUT = Path(__file__).resolve().parent.parent

CHAIN = "civis-bench"
T0 = 1_764_000_000_000
DATASET = "meters"
PURPOSE = "billing"  # whole records: the purpose the vault's answers of 100 records serve
SETUP_BLOCK = 250  # transactions per block while building
ACCESS_BLOCK = 10  # access requests per measured block
ACCESSES = 200  # measured accesses per point
UPLOADS = 3  # live uploads listed in every answer


def _key(label: bytes) -> SigningKey:
    return SigningKey(digest(b"bench-contracts-" + label))


class World:
    """A chain with one provider, one consumer, one dataset and `subjects` consenting."""

    def __init__(self, subjects: int) -> None:
        self.vault, self.provider, self.consumer = _key(b"vault"), _key(b"prov"), _key(b"cons")
        founders = [
            (self.vault, "vault", "providers"),
            (self.provider, "provider", "providers"),
            (self.consumer, "consumer", "services"),
        ]
        genesis = {
            "members": [
                {"public_key": k.public_key.hex(), "role": role, "college": college}
                for k, role, college in founders
            ]
        }
        validator = bytes(_key(b"validator").public_key)
        self.app = ConsentApp(CHAIN, [(validator, "providers")], genesis)
        self.height, self.time_ms, self.nonce = 0, T0, 0
        self.subjects = [_key(b"subject-%d" % i) for i in range(subjects)]
        self._build()

    def sign(self, who: SigningKey, tx_type: str, body: dict[str, Any]) -> bytes:
        self.nonce += 1
        nonce = digest(b"%d" % self.nonce)[: tx.NONCE_BYTES]
        return tx.sign(
            who, CHAIN, tx_type, body, valid_until=self.time_ms + 600_000, nonce=nonce
        ).encode()

    def block(self, txs: list[bytes]) -> list[bytes]:
        self.height += 1
        self.time_ms += 1_000
        results, _ = self.app.execute(txs, BlockContext(self.height, self.time_ms, bytes(32)))
        return results

    def _setup(self, txs: list[bytes]) -> None:
        for i in range(0, len(txs), SETUP_BLOCK):
            for raw in self.block(txs[i : i + SETUP_BLOCK]):
                result = codec.decode(raw)
                if not result["ok"]:  # the set-up must succeed whole
                    raise RuntimeError(f"set-up transaction refused: {result}")

    def _build(self) -> None:
        dataset = {
            "dataset": DATASET,
            "owner": bytes(self.provider.public_key),
            "category": "energy",
            "purposes": [PURPOSE],
            "retention_days": 30,
            "legal_basis": "consent",
        }
        self._setup([self.sign(self.vault, "dataset.register", dataset)])
        self._setup([self.sign(self.vault, "upload.anchor", _upload(u)) for u in range(UPLOADS)])
        people = {"role": "subject", "college": "citizens"}
        self._setup([self.sign(s, "member.register", people) for s in self.subjects])
        consumer = bytes(self.consumer.public_key)
        self._setup(
            [
                self.sign(
                    s,
                    "consent.grant",
                    {
                        "subject": s.public_key.hex(),
                        "consumer": consumer,
                        "dataset": DATASET,
                        "purpose": PURPOSE,
                        "valid_until": T0 + 365 * 86_400_000,
                    },
                )
                for s in self.subjects
            ]
        )
        self.block([])  # the consents are in force from the next block on

    def accesses(self, n: int, named: bool) -> list[bytes]:
        body: dict[str, Any] = {
            "consumer": bytes(self.consumer.public_key),
            "dataset": DATASET,
            "purpose": PURPOSE,
        }
        if named:
            body["subjects"] = [s.public_key.hex() for s in self.subjects]
        return [self.sign(self.consumer, "access.request", body) for _ in range(n)]


def _upload(u: int) -> dict[str, Any]:
    return {
        "upload": f"u{u}",
        "dataset": DATASET,
        "record_count": 100,
        "merkle_root": digest(b"m%d" % u),
        "key_commitments_root": digest(b"k%d" % u),
        "key_commitment_count": 100,
        "retention_day": T0 // 86_400_000 + 30,
    }


@contextmanager
def _timed_handler(spent: list[float]) -> Iterator[None]:
    """Time `access.request`'s handler alone, CPU seconds appended to `spent`."""
    inner = rules.HANDLERS["access.request"]

    def timed(c: Ctx) -> dict[str, Any]:
        t0 = time.process_time()
        try:
            return inner(c)
        finally:
            spent.append(time.process_time() - t0)

    rules.HANDLERS["access.request"] = timed
    try:
        yield
    finally:
        rules.HANDLERS["access.request"] = inner


def measure(world: World, accesses: int, named: bool = False) -> dict[str, Any]:
    """CPU per access of `accesses` requests in blocks of ACCESS_BLOCK, best of 3 rounds."""
    best: dict[str, Any] | None = None
    for _ in range(3):
        txs = world.accesses(accesses, named)
        spent: list[float] = []
        with _timed_handler(spent):
            t0 = time.process_time()
            for i in range(0, accesses, ACCESS_BLOCK):
                results = world.block(txs[i : i + ACCESS_BLOCK])
            app_s = time.process_time() - t0
        granted = codec.decode(results[-1])["granted"] if results else []
        point = {
            "subjects": len(world.subjects),
            "named": named,
            "granted": len(granted),
            "contract_cpu_ms": round(sum(spent) / accesses * 1e3, 4),
            "app_cpu_ms": round(app_s / accesses * 1e3, 4),
        }
        if best is None or point["contract_cpu_ms"] < best["contract_cpu_ms"]:
            best = point
    assert best is not None and best["granted"] == len(world.subjects), best
    return best


def profile(world: World, accesses: int = 100, top: int = 14) -> dict[str, list[str]]:
    """Where `execute` spends its time over `accesses` open requests: the functions with the
    most time below them (`cumulative`) and of their own (`own`), as cProfile prints them."""
    txs = world.accesses(accesses, named=False)
    prof = cProfile.Profile()
    prof.enable()
    for i in range(0, accesses, ACCESS_BLOCK):
        world.block(txs[i : i + ACCESS_BLOCK])
    prof.disable()
    out: dict[str, list[str]] = {}
    for name, order in (("cumulative", "cumtime"), ("own", "tottime")):
        text = io.StringIO()
        pstats.Stats(prof, stream=text).sort_stats(order).print_stats(top)
        lines = [
            ln.rstrip().replace(str(CHECKOUT) + "/", "") for ln in text.getvalue().splitlines()
        ]
        start = next(i for i, ln in enumerate(lines) if ln.lstrip().startswith("ncalls"))
        out[name] = [ln for ln in lines[start : start + top + 1] if ln]
    return out


def _ratio(point: dict[str, Any], base: dict[str, Any], key: str) -> float:
    return round(float(point[key]) / float(base[key]), 2)


def run(args: argparse.Namespace) -> dict[str, Any]:
    large = max(args.records or 1_000, 100)
    worlds: dict[int, World] = {}

    def world(n: int) -> World:
        if n not in worlds:
            worlds[n] = World(n)
        return worlds[n]

    points: list[tuple[str, Callable[[], dict[str, Any]]]] = [
        ("baseline_open_1", lambda: measure(world(1), ACCESSES)),
        ("open_100", lambda: measure(world(100), ACCESSES)),
        ("named_100", lambda: measure(world(100), ACCESSES, named=True)),
        (f"open_{large}", lambda: measure(world(large), ACCESSES // 4)),
    ]
    out: dict[str, Any] = {"benchmark": "contracts", "access_block": ACCESS_BLOCK}
    for name, fn in points:
        out[name] = fn()
    base = out["baseline_open_1"]
    for name, _ in points[1:]:
        for key in ("contract_cpu_ms", "app_cpu_ms"):
            out[name][f"ratio_{key}_to_baseline"] = _ratio(out[name], base, key)
    out["bar"] = {
        "contract_cpu_ms_max": 0.5,
        "met": out["open_100"]["contract_cpu_ms"] <= 0.5,
    }
    out["profile_open_100"] = profile(world(100))
    return out
