"""What every WAN scenario checks, and the load it runs: see tests/netns/test_wan.py.

- `settle`: all four replicas voting (active in their view, not muted), in one view, at one
  height, with a contiguous block store (`missing_blocks` 0), read from their `status`.
- `Chains.verify`: every replica serves every block up to the top; the four copies of each
  block have the same header hash and state root; each block names the previous one's hash;
  the commit certificates verify against the genesis keys alone.
- `UploadLoad`: closed-loop uploads through both API instances, recording each acknowledged
  upload (a 201) and each refusal; `acknowledged_are_anchored` then proves none was lost: each
  is anchored, and its anchor transaction is in the block its receipt names, on the chain all
  four replicas agree on.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import httpx

from api.client import CivisClient, ProblemError
from ledger_bridge.crypto import SigningKey
from ledger_bridge.pbft.blocks import block_hash, verify_chain
from ledger_bridge.pbft.messages import Block
from ledger_bridge.receipts import find_request
from tests.netns.deploy import REPLICAS, Deployment

SETTLE_TIMEOUT_S = 120.0


def _summary(statuses: list[dict[str, Any] | None]) -> str:
    keys = ("view", "view_active", "muted", "height", "last_executed", "missing_blocks")
    return "; ".join(
        f"r{i}: " + ("down" if s is None else " ".join(f"{k}={s.get(k)}" for k in keys))
        for i, s in enumerate(statuses)
    )


def in_step(statuses: list[dict[str, Any] | None]) -> bool:
    if any(s is None for s in statuses):
        return False
    live = [s for s in statuses if s is not None]
    return (
        len({s["view"] for s in live}) == 1
        and all(s["view_active"] and not s["muted"] for s in live)
        and all(s["missing_blocks"] == 0 for s in live)
        and len({s["last_executed"] for s in live}) == 1
        and len({s["height"] for s in live}) == 1
    )


def settle(d: Deployment, timeout_s: float = SETTLE_TIMEOUT_S) -> list[dict[str, Any]]:
    """Wait until the four replicas are in step (see the module docstring)."""
    deadline = time.monotonic() + timeout_s
    while True:
        statuses = d.statuses()
        if in_step(statuses):
            return [s for s in statuses if s is not None]
        assert time.monotonic() < deadline, "replicas not in step: " + _summary(statuses)
        time.sleep(0.5)


@dataclass
class Chains:
    """The chain verified so far: its blocks (replica 0's copy) by height."""

    blocks: dict[int, Block] = field(default_factory=dict)

    def verify(self, d: Deployment) -> int:
        """Verify the blocks above those verified before, up to the replicas' common top;
        returns that top."""
        top = int(settle(d)[0]["height"])
        start = max(self.blocks, default=0) + 1
        if start > top:
            return top
        copies = [d.blocks(i, start, top) for i in range(REPLICAS)]
        for i, chain in enumerate(copies):
            holes = [start + k for k, b in enumerate(chain) if b is None]
            assert not holes, f"replica {i} has holes at {holes[:10]}"
        for k in range(top - start + 1):
            versions = {(block_hash(b), b.state_root) for c in copies if (b := c[k]) is not None}
            assert len(versions) == 1, f"replicas diverge at height {start + k}"
        mine = [b for b in copies[0] if b is not None]
        previous = self.blocks.get(start - 1)
        anchor = block_hash(previous) if previous is not None else None
        assert verify_chain(mine, d.genesis.public_keys(), anchor), "the chain does not verify"
        self.blocks.update({b.height: b for b in mine})
        return top

    def holds(self, height: int, tx_id: str) -> bool:
        block = self.blocks.get(height)
        return block is not None and find_request(block, bytes.fromhex(tx_id)) is not None


def ndjson(records: list[tuple[str, str, dict[str, Any]]]) -> bytes:
    """Lines {"record_id", "subject_id", "payload"}."""
    lines = [
        json.dumps({"record_id": rid, "subject_id": sid, "payload": payload})
        for rid, sid, payload in records
    ]
    return ("\n".join(lines) + "\n").encode()


def some_records(n: int = 2) -> list[tuple[str, str, dict[str, Any]]]:
    return [
        (str(uuid.uuid4()), SigningKey.generate().public_key.hex(), {"reading": k})
        for k in range(n)
    ]


@dataclass
class UploadLoad:
    """Closed-loop uploads, one thread per API instance (a provider's key on each)."""

    clients: dict[str, CivisClient]
    dataset: str
    pause_s: float = 0.2
    acked: list[tuple[str, str]] = field(default_factory=list)  # (api, upload id)
    refusals: Counter[tuple[int, str]] = field(default_factory=Counter)  # (status, title)
    unreachable: int = 0
    _stop: threading.Event = field(default_factory=threading.Event)
    _threads: list[threading.Thread] = field(default_factory=list)

    def _run(self, name: str, client: CivisClient) -> None:
        while not self._stop.is_set():
            try:
                out = client.upload(self.dataset, ndjson(some_records()), wait=False)
                self.acked.append((name, out["upload_id"]))
            except ProblemError as exc:
                self.refusals[(exc.status_code, exc.title)] += 1
            except httpx.TransportError:
                self.unreachable += 1
            self._stop.wait(self.pause_s)

    def __enter__(self) -> UploadLoad:
        for name, client in self.clients.items():
            thread = threading.Thread(target=self._run, args=(name, client), daemon=True)
            thread.start()
            self._threads.append(thread)
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(120)

    def wait_for(self, more: int, timeout_s: float = 60.0) -> None:
        target = len(self.acked) + more
        deadline = time.monotonic() + timeout_s
        while len(self.acked) < target:
            assert time.monotonic() < deadline, (
                f"{len(self.acked)} of {target} uploads acknowledged: {self.refusals}"
            )
            time.sleep(0.1)


def acknowledged_are_anchored(
    load: UploadLoad, chains: Chains, d: Deployment, timeout_s: float = 120.0
) -> None:
    """Every acknowledged upload anchored, its anchor in the block its receipt names."""
    client = next(iter(load.clients.values()))
    deadline = time.monotonic() + timeout_s
    receipts = {}
    for _, upload_id in load.acked:
        while True:
            out = client.upload_status(load.dataset, upload_id)
            if out["state"] == "anchored" and out["receipt"] is not None:
                receipts[upload_id] = out["receipt"]
                break
            assert out["state"] == "pending", f"upload {upload_id} is {out['state']}"
            assert time.monotonic() < deadline, f"upload {upload_id} never anchored"
            time.sleep(0.5)
    chains.verify(d)
    for upload_id, receipt in receipts.items():
        assert chains.holds(receipt["block_height"], receipt["tx_id"]), (
            f"upload {upload_id}: its anchor is not in block {receipt['block_height']}"
        )
