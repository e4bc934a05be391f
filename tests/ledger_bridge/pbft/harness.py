"""A tiny deterministic cluster for protocol tests: FIFO delivery, a manual clock, and a
filter to drop or rewrite messages (etcd's raft_paper_test style `network`)."""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

from ledger_bridge.crypto import SigningKey, digest
from ledger_bridge.kvapp import KVApp, encode_set
from ledger_bridge.pbft import messages as m
from ledger_bridge.pbft.config import ClusterConfig
from ledger_bridge.pbft.replica import DurableDelta, DurableState, Replica

T0_MS = 1_000_000
Filter = Callable[[int, int, m.Message], bool]  # (src, dst, msg) -> deliver?


def key(i: int) -> SigningKey:
    return SigningKey(digest(b"harness-validator-%d" % i))


CLIENT = SigningKey(digest(b"harness-client"))


def request(rid: int, client: SigningKey = CLIENT) -> m.Request:
    return m.make_request(client, rid, encode_set(b"k%d" % rid, b"v%d" % rid))


@dataclass
class Net:
    n: int = 4
    params: dict[str, int] = field(default_factory=dict)
    now_ms: int = T0_MS

    def __post_init__(self) -> None:
        defaults = {
            "checkpoint_interval": 4,
            "log_window": 8,
            "batch_size_max": 1,
            "batch_wait_ms": 0,
            "view_change_timeout_ms": 500,
            "heartbeat_ms": 100,
        }
        defaults.update(self.params)
        self.config = ClusterConfig.create(
            [bytes(key(i).public_key) for i in range(self.n)], **defaults
        )
        self.apps = [KVApp() for _ in range(self.n)]
        self.replicas = [Replica(self.config, i, key(i), self.apps[i]) for i in range(self.n)]
        self.records: list[dict[str, dict[bytes, bytes]]] = [{} for _ in range(self.n)]
        # What a power cut leaves: the records as of each replica's last fsynced Ready.
        self.synced: list[dict[str, dict[bytes, bytes]]] = [{} for _ in range(self.n)]
        self.blocks: list[dict[int, m.Block]] = [{} for _ in range(self.n)]
        self.replies: list[m.Reply] = []
        self.queue: deque[tuple[int, int, m.Message]] = deque()
        self.down: set[int] = set()
        self.filter: Filter = lambda src, dst, msg: True
        self.sent: list[tuple[int, int | None, m.Message]] = []

    def _apply(self, i: int, delta: DurableDelta) -> None:
        rec = self.records[i]
        for kind, bound in delta.delete_below:
            for k in [k for k in rec.get(kind, {}) if k < bound]:
                del rec[kind][k]
        for kind, k in delta.delete:
            rec.get(kind, {}).pop(k, None)
        for kind, k, v in delta.put:
            rec.setdefault(kind, {})[k] = v

    def drain(self, i: int) -> None:
        r = self.replicas[i]
        while r.has_ready():
            ready = r.ready()
            self._apply(i, ready.persist)
            if ready.must_sync:
                self.synced[i] = {kind: dict(rows) for kind, rows in self.records[i].items()}
            for b in ready.blocks:
                self.blocks[i][b.height] = b
            for height, indices in ready.redact:
                if height in self.blocks[i]:
                    self.blocks[i][height] = m.redact_block(self.blocks[i][height], indices)[0]
            for out in ready.messages:
                self.sent.append((i, out.to, out.msg))
                targets = [j for j in range(self.n) if j != i] if out.to is None else [out.to]
                for j in targets:
                    self.queue.append((i, j, out.msg))
            self.replies += [cr.reply for cr in ready.replies]
            r.advance(ready)

    def submit(self, req: m.Request, to: list[int] | None = None) -> None:
        for i in to if to is not None else [0]:
            if i not in self.down:
                self.replicas[i].step(req, self.now_ms)
                self.drain(i)

    def deliver_all(self, limit: int = 100_000) -> None:
        for _ in range(limit):
            if not self.queue:
                return
            src, dst, msg = self.queue.popleft()
            if dst in self.down or src in self.down or not self.filter(src, dst, msg):
                continue
            self.replicas[dst].step(msg, self.now_ms)
            self.drain(dst)
        raise AssertionError("message storm")

    def tick(self, ms: int, step_ms: int = 10) -> None:
        end = self.now_ms + ms
        while self.now_ms < end:
            self.now_ms += step_ms
            for i in range(self.n):
                if i not in self.down:
                    self.replicas[i].tick(self.now_ms)
                    self.drain(i)
            self.deliver_all()

    def restart(self, i: int, *, power_cut: bool = False) -> None:
        """Restart replica i from its records; after a `power_cut`, only from what its last
        fsynced Ready left on disk (the unsynced writes are lost)."""
        self.apps[i] = KVApp()
        if power_cut:
            self.records[i] = {kind: dict(rows) for kind, rows in self.synced[i].items()}
        durable = DurableState({k: sorted(v.items()) for k, v in self.records[i].items()})
        self.replicas[i] = Replica(self.config, i, key(i), self.apps[i], durable=durable)
        self.down.discard(i)
        self.drain(i)

    def heights(self) -> list[int]:
        return [max(b, default=0) for b in self.blocks]
