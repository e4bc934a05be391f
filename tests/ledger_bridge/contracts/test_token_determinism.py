"""Determinism of the token contracts: the same blocks give the same results, state roots and
snapshots in processes with different string-hash seeds, and across a snapshot/restore.

The scenario starts from the economy of token_world.py (a snapshot, handed to the replaying
processes as their start) with tokens expiring after a day, then ~60 blocks of seeded random
token traffic: reward batches (some replayed, some from a suspended device), transfers,
redemptions, coupon spends (some twice), days passing (lots expire) and subjects forgotten.
"""

from __future__ import annotations

import functools
import hashlib
import random
from pathlib import Path
from typing import Any

import pytest

from ledger_bridge.app import BlockContext
from ledger_bridge.contracts import codec
from tests.ledger_bridge.contracts.harness import DAY, Member
from tests.ledger_bridge.contracts.model_replay import Block, dump, fresh_from, replay
from tests.ledger_bridge.contracts.test_determinism import (
    HASH_SEEDS,
    Recorder,
    first_difference,
    run_replay,
)
from tests.ledger_bridge.contracts.test_forget import erase_body
from tests.ledger_bridge.contracts.token_world import Eco, decide, eco

SEED = 20_261_205
TRAFFIC_BLOCKS = 60


def _traffic(world: Eco, subjects: list[Member], rng: random.Random) -> list[bytes]:
    chain = world.chain
    txs: list[bytes] = []
    secrets: list[bytes] = []
    for _ in range(rng.randrange(1, 6)):
        s, t = rng.choice(subjects), rng.choice([*subjects, world.partner])
        pick = rng.randrange(40)
        if pick < 16:
            kind = rng.choice(["bike_reader", "water_meter", "shop_scanner"])
            rule = {"bike_reader": "cycling", "water_meter": "water-saving"}.get(
                kind, "local-produce"
            )
            claims = [
                world.claim(s, rule, rng.randrange(1, 5000), device=world.devices[kind])
                for _ in range(rng.randrange(1, 4))
            ]
            replayed = claims[:1] if rng.random() < 0.2 else []
            txs.append(world.reward(*claims, *replayed))
        elif pick < 26:
            body = {"to": t.pub, "amount_mtok": rng.randrange(1, 4000)}
            txs.append(chain.sign(s, "token.transfer", body))
        elif pick < 32:
            secret = rng.randbytes(16)
            secrets.append(secret)
            coupon = hashlib.sha256(secret).digest()
            body = {"offer": "bread", "coupon": coupon, "price_mtok": 1500}
            txs.append(chain.sign(s, "token.redeem", body))
        elif pick < 39 and secrets:
            body = {"secret": rng.choice(secrets)}
            for _ in range(2 if rng.random() < 0.3 else 1):  # shown twice, at two tills
                txs.append(chain.sign(world.partner, "coupon.spend", body))
        elif rng.random() < 0.3:
            txs.append(chain.sign(chain.dpo, "erasure.record", erase_body(s)))
    return txs


@functools.cache
def scenario() -> tuple[bytes, tuple[Block, ...]]:
    """The start snapshot and the recorded blocks after it."""
    world = eco()
    chain = world.chain
    decide(chain, {"kind": "set_parameter", "parameter": "token_expiry_days", "value": 1})
    world.offer("bread", 1500)
    subjects = [chain.subject() for _ in range(8)]
    start = chain.app.snapshot()
    recorder = Recorder(chain.app)
    chain.app = recorder
    rng = random.Random(SEED)
    for n in range(TRAFFIC_BLOCKS):
        if n == TRAFFIC_BLOCKS // 2:
            device = bytes(world.devices["shop_scanner"].public_key)
            decide(chain, {"kind": "suspend_device", "device": device})
        # time passes before the block's transactions are signed, so they are still valid
        chain.time_ms += rng.choice([0, 0, 60_000, 3_600_000, DAY // 2])
        chain.block(*_traffic(world, subjects, rng))
    return start, tuple(recorder.blocks)


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    start, blocks = scenario()
    where = tmp_path_factory.mktemp("token-determinism")
    (where / "start.bin").write_bytes(start)
    (where / "scenario.msgpack").write_bytes(dump(list(blocks)))
    return where / "start.bin", where / "scenario.msgpack"


@pytest.fixture(scope="module")
def straight() -> dict[str, Any]:
    start, blocks = scenario()
    return replay(list(blocks), start=start)


def test_the_token_scenario_exercises_the_rules(straight: dict[str, Any]) -> None:
    results = [codec.decode(bytes.fromhex(r)) for b in straight["blocks"] for r in b["results"]]
    codes = {r["code"] for r in results if not r["ok"]}
    assert sum(1 for r in results if r.get("credited")) >= 10
    assert sum(1 for r in results if r["ok"] and "coupon" in r) >= 5
    assert sum(1 for r in results if r.get("forgotten")) >= 2
    assert {"duplicate_event", "insufficient_tokens", "coupon_spent"} <= codes, codes
    assert "device_suspended" in codes, codes
    start, blocks = scenario()
    app = fresh_from(start)
    for height, time_ms, prev_hash, txs in blocks:
        app.execute(txs, BlockContext(height, time_ms, prev_hash))
    supply = codec.decode(app.query(codec.encode({"q": "supply"})))["result"]
    assert supply["expired"] > 0 and supply["forfeited"] > 0 and supply["redeemed"] > 0, supply
    assert supply["minted"] == (
        supply["balances"] + supply["redeemed"] + supply["expired"] + supply["forfeited"]
    )
    assert app.state_root().hex() == straight["blocks"][-1]["root"]


def test_processes_with_different_hash_seeds_agree_on_tokens(
    files: tuple[Path, Path], straight: dict[str, Any]
) -> None:
    start, blocks = files
    runs = [run_replay(seed, blocks, "--start-from", start) for seed in HASH_SEEDS[:2]]
    assert runs[0]["str_hash"] != runs[1]["str_hash"]
    for run in runs:
        assert run["start_root"] == straight["start_root"]
        assert first_difference(run["blocks"], straight["blocks"]) is None


def test_a_restore_midway_ends_on_the_same_root() -> None:
    start, blocks = scenario()
    heights = [b[0] for b in blocks]
    whole = replay(list(blocks), start=start)
    carried = replay(list(blocks), start=start, restore_after=frozenset(heights[::7]))
    assert first_difference(carried["blocks"], whole["blocks"]) is None
