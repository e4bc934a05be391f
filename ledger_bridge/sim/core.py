"""A seeded, deterministic simulator for the PBFT replica core (tigerbeetle's VOPR, etcd's
in-memory `network`).

What it is for: run the real `Replica` code under thousands of adversarial schedules in a
test run, each reproducible from one integer seed. Everything random comes from
`random.Random(seed)`; time is a virtual clock in milliseconds; the network is a priority
queue of deliveries. A failing seed replays exactly.

Faults: message drop, delay, duplication and reordering (random delays), partitions, crash
and restart from durable state (the `DurableDelta`s the replica handed out, applied the way
the SQLite shell applies them), and one Byzantine replica (up to f) whose outgoing messages
are rewritten: equivocating primary, forged signatures and certificates, forged NEW-VIEW,
corrupted checkpoint digests, poisoned state transfer, censoring primary, sequence numbers
outside the watermarks. An outside adversary also replays client requests and injects
requests with bad signatures.

Redaction (`Scenario.forgetting`): clients write keys and then "forget" them (the KV
stand-in for a subject's erasure), and a Byzantine replica may serve, in its state transfers,
the bodies the honest replicas redacted (`serve_unredacted`). Honest replicas must never
send such a body once their stable checkpoint passed the erasure (`redaction_violations`).

The token economy (`Scenario.tokens`): the replicas run the consent contracts from a founded
cooperative (`tokens.py`), the clients race rewards, transfers, redemptions and coupon spends
full of double-spend attempts, and the Byzantine replicas also lie to mint (TOKEN_BEHAVIOURS):
made-up transactions in their batches and as client requests, made-up replies, a fortune
planted in the state they serve.

After the fault period the network heals and crashed replicas restart; the checkers in
`checkers.py` then judge the run.
"""

from __future__ import annotations

import dataclasses
import heapq
import random
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import msgpack

from ledger_bridge.app import Application, BlockContext
from ledger_bridge.crypto import SigningKey, digest
from ledger_bridge.kvapp import KVApp, encode_del, encode_forget, encode_set, encode_set_sized
from ledger_bridge.pbft import messages as m
from ledger_bridge.pbft.blocks import Block
from ledger_bridge.pbft.config import ClusterConfig
from ledger_bridge.pbft.replica import DurableDelta, DurableState, Ready, Replica
from ledger_bridge.sim import tokens

START_MS = 1_700_000_000_000
TICK_MS = 10
CLIENT_RETRY_MS = 250
CODEC_SAMPLE_P = 0.05  # share of deliveries sent through encode/decode
# The messages whose size grows with batches; the others are a few hundred bytes.
LARGE_MESSAGES = (m.PrePrepare, m.ViewChange, m.NewView, m.StateData, m.Block)
BEHAVIOURS = (
    "equivocate",
    "forge_sigs",
    "forge_certs",
    "forge_new_view",
    "corrupt_checkpoint",
    "poison_state",
    "censor",
    "watermark",
)
# Lies about tokens, for the token economy (`Scenario.tokens`): "mint" makes up transactions
# that would mint, steal or spend twice (a primary puts them, and copies of requests, into its
# batches; any Byzantine replica sends them as client requests), "lie_replies" answers clients
# with results it made up. Kept out of BEHAVIOURS: `Scenario.random` draws from that tuple,
# and the KV schedules of every seed stay as they are.
TOKEN_BEHAVIOURS = ("mint", "lie_replies")


@dataclass
class Scenario:
    """One schedule's parameters; `Scenario.random(seed)` draws them from the seed."""

    seed: int
    n: int = 4
    clients: int = 3
    requests_per_client: int = 8
    drop_p: float = 0.0
    dup_p: float = 0.0
    delay_ms: tuple[int, int] = (1, 5)
    partitions: list[tuple[int, int, list[set[int]]]] = field(default_factory=list)
    crashes: list[tuple[int, int, int]] = field(default_factory=list)  # (node, at, restart)
    byzantine: int | None = None
    also_byzantine: tuple[int, ...] = ()  # more replicas with the same behaviours (total <= f)
    behaviours: frozenset[str] = frozenset()
    fault_end_ms: int = 1_500
    deadline_ms: int = 25_000
    replay_requests: bool = True
    checkpoint_interval: int = 4
    log_window: int = 8
    batch_size_max: int = 4
    # A flood: each client's transactions are this large (0: a few bytes), and every
    # `refused_every`-th is one the application refuses at execution (a delete of a key no
    # one set), whose body must then stay out of the blocks.
    tx_bytes: int = 0
    refused_every: int = 0
    # Redaction: each client writes one key per group of this many requests and the last
    # request of the group forgets it (0: no forgets).
    forget_every: int = 0
    # "kv": the KV app, each client writing its own keys; "tokens": the consent contracts
    # with the token economy's traffic (`sim/tokens.py`), `requests_per_client` groups of it.
    app: str = "kv"
    # Each client sends a request first to a replica of its own (not all to the primary), so
    # two clients racing to spend one coupon reach different replicas.
    spread_first: bool = False

    @classmethod
    def random(cls, seed: int, *, byzantine: bool = False) -> Scenario:
        rng = random.Random(seed ^ 0x5EED)  # noqa: S311 (simulation, not crypto)
        n = 7 if rng.random() < 0.1 else 4
        f = (n - 1) // 3
        sc = cls(seed=seed, n=n)
        sc.clients = rng.randint(1, 4)
        sc.requests_per_client = rng.randint(3, 10)
        sc.drop_p = rng.choice([0.0, 0.0, 0.05, 0.2])
        sc.dup_p = rng.choice([0.0, 0.05])
        sc.delay_ms = (1, rng.choice([3, 10, 40]))
        sc.fault_end_ms = rng.randint(500, 2_500)
        faulty: set[int] = set()
        if byzantine:
            sc.byzantine = rng.randrange(n)
            faulty.add(sc.byzantine)
            k = rng.randint(1, 3)
            sc.behaviours = frozenset(rng.sample(BEHAVIOURS, k))
        # Crashes and partitions may only hit replicas beyond the Byzantine one while the
        # total stays <= f at any time, else liveness is not promised during the fault.
        if (rng.random() < 0.4 and len(faulty) < f) or (not byzantine and rng.random() < 0.4):
            node = rng.choice([i for i in range(n) if i not in faulty])
            at = rng.randint(0, sc.fault_end_ms)
            sc.crashes.append((node, at, rng.randint(at + 50, sc.fault_end_ms + 500)))
        if rng.random() < 0.3:
            start = rng.randint(0, sc.fault_end_ms)
            side = set(rng.sample(range(n), rng.randint(1, n // 2)))
            sc.partitions.append((start, rng.randint(start, sc.fault_end_ms), [side]))
        # Drawn last so that adding it left every n = 4 schedule unchanged.
        if byzantine and n == 7 and not sc.crashes and rng.random() < 0.5:
            sc.also_byzantine = (rng.choice([i for i in range(n) if i not in faulty]),)
        return sc

    @classmethod
    def colluding(cls, seed: int) -> Scenario:
        """n = 7 with f = 2 colluding Byzantine replicas sharing 1-3 behaviours, message loss
        and partitions among the honest ones (no crash: the Byzantine pair already uses up f).
        `random` draws this shape in one seed in forty, too rarely to catch a fault that only
        two colluders cause (seed 538)."""
        rng = random.Random(seed ^ 0xC0DE)  # noqa: S311 (simulation, not crypto)
        sc = cls(seed=seed, n=7)
        sc.clients = rng.randint(1, 4)
        sc.requests_per_client = rng.randint(3, 10)
        sc.drop_p = rng.choice([0.0, 0.0, 0.05, 0.2])
        sc.dup_p = rng.choice([0.0, 0.05])
        sc.delay_ms = (1, rng.choice([3, 10, 40]))
        sc.fault_end_ms = rng.randint(500, 2_500)
        pair = rng.sample(range(7), 2)
        sc.byzantine, sc.also_byzantine = pair[0], (pair[1],)
        sc.behaviours = frozenset(rng.sample(BEHAVIOURS, rng.randint(1, 3)))
        if rng.random() < 0.3:
            start = rng.randint(0, sc.fault_end_ms)
            side = set(rng.sample(range(7), rng.randint(1, 3)))
            sc.partitions.append((start, rng.randint(start, sc.fault_end_ms), [side]))
        return sc

    @classmethod
    def forgetting(cls, seed: int) -> Scenario:
        """n = 4, clients that write and forget keys, and either a Byzantine replica serving
        unredacted blocks in its state transfers while an honest one is cut off (so it
        comes back by state transfer), or a crash long enough that the restarted replica is
        rebuilt from a peer's snapshot and must redact the blocks it held from before."""
        rng = random.Random(seed ^ 0xF0F0)  # noqa: S311 (simulation, not crypto)
        sc = cls(seed=seed, n=4)
        sc.clients = rng.randint(1, 3)
        sc.forget_every = rng.choice([2, 3, 4])
        sc.requests_per_client = rng.randint(3, 5) * sc.forget_every + rng.randint(0, 4)
        sc.drop_p = rng.choice([0.0, 0.0, 0.05, 0.2])
        sc.dup_p = rng.choice([0.0, 0.05])
        sc.delay_ms = (1, rng.choice([3, 10, 40]))
        sc.fault_end_ms = rng.randint(800, 2_500)
        victim = rng.randrange(4)
        at = rng.randint(50, sc.fault_end_ms // 2)
        if rng.random() < 0.5:
            sc.byzantine = rng.choice([i for i in range(4) if i != victim])
            extra = ["poison_state"] if rng.random() < 0.3 else []
            sc.behaviours = frozenset(["serve_unredacted", *extra])
            sc.partitions.append((at, sc.fault_end_ms, [{victim}]))
        else:
            sc.crashes.append((victim, at, sc.fault_end_ms + rng.randint(0, 500)))
        return sc

    @classmethod
    def tokens(cls, seed: int, byzantine: str = "primary") -> Scenario:
        """The token economy (`sim/tokens.py`): 2-4 clients racing each other with rewards,
        transfers, redemptions and coupon spends, every group holding a double-spend attempt,
        under message loss, duplication, delays and partitions; and `byzantine`: "primary"
        (replica 0, the primary of view 0, until the others depose it), "backup" (another
        replica), "colluding" (n = 7: the primary and a backup), or "none". The Byzantine
        replicas always lie about tokens (TOKEN_BEHAVIOURS) and in their checkpoints, and
        draw up to two more lies."""
        rng = random.Random(seed ^ 0x70CE)  # noqa: S311 (simulation, not crypto)
        n = 7 if byzantine == "colluding" else 4
        sc = cls(seed=seed, n=n, app="tokens", spread_first=True)
        sc.clients = rng.randint(2, 4)
        sc.requests_per_client = rng.randint(4, 8)
        sc.drop_p = rng.choice([0.0, 0.0, 0.05, 0.2])
        sc.dup_p = rng.choice([0.0, 0.05])
        sc.delay_ms = (1, rng.choice([3, 10, 40]))
        sc.fault_end_ms = rng.randint(500, 2_500)
        if byzantine in ("primary", "colluding"):
            sc.byzantine = 0
        elif byzantine == "backup":
            sc.byzantine = rng.randrange(1, n)
        if byzantine == "colluding":
            sc.also_byzantine = (rng.randrange(1, n),)
        if sc.byzantine is not None:
            # Every Byzantine replica also vouches for a state of its own in its checkpoints.
            extra = rng.sample(BEHAVIOURS, rng.randint(0, 2))
            sc.behaviours = frozenset([*TOKEN_BEHAVIOURS, "corrupt_checkpoint", *extra])
        if rng.random() < 0.3:
            start = rng.randint(0, sc.fault_end_ms)
            side = set(rng.sample(range(n), rng.randint(1, (n - 1) // 3)))
            sc.partitions.append((start, rng.randint(start, sc.fault_end_ms), [side]))
        return sc

    @property
    def byzantine_ids(self) -> frozenset[int]:
        first = () if self.byzantine is None else (self.byzantine,)
        return frozenset((*first, *self.also_byzantine))


class RecordingKV(KVApp):
    """The KV app, remembering which txs it executed at which height (exactly-once check)."""

    def __init__(self) -> None:
        super().__init__()
        self.executed: dict[int, list[bytes]] = {}

    def execute(self, txs: Sequence[bytes], block: BlockContext) -> tuple[list[bytes], bytes]:
        self.executed[block.height] = list(txs)
        return super().execute(txs, block)


class SimApp(Application, Protocol):
    """An application the simulator runs: it also says which txs it executed at each height
    (the exactly-once check)."""

    executed: dict[int, list[bytes]]


@dataclass
class SimNode:
    replica: Replica
    app: SimApp
    records: dict[str, dict[bytes, bytes]] = field(default_factory=dict)
    blocks: dict[int, Block] = field(default_factory=dict)
    up: bool = True
    conflicting_blocks: int = 0
    executed_log: dict[int, list[bytes]] = field(default_factory=dict)


@dataclass
class SimClient:
    key: SigningKey
    requests: list[m.Request]
    index: int = 0
    replies: dict[int, tuple[int, bytes]] = field(default_factory=dict)
    next_retry_ms: int = 0
    done: list[tuple[int, int, bytes]] = field(default_factory=list)  # (rid, height, result)
    view_guess: int = 0


class Simulator:
    """Runs one `Scenario`; `run()` returns a `checkers.Report`-ready trace in `self`."""

    def __init__(self, scenario: Scenario, **config_overrides: Any) -> None:
        self.sc = scenario
        self.rng = random.Random(scenario.seed)  # noqa: S311 (simulation, not crypto)
        self.codec_rng = random.Random(~scenario.seed)  # noqa: S311
        n = scenario.n
        self.keys = [SigningKey(digest(f"sim-validator-{i}".encode())) for i in range(n)]
        params: dict[str, Any] = {
            "checkpoint_interval": scenario.checkpoint_interval,
            "log_window": scenario.log_window,
            "batch_size_max": scenario.batch_size_max,
            "batch_wait_ms": 3,
            "view_change_timeout_ms": 400,
            "view_change_timeout_max_ms": 3_000,
            "heartbeat_ms": 50,
            "block_time_skew_ms": 2_000,
            "state_transfer_blocks_max": 10_000,
            # Restarts from a snapshot at the stable checkpoint, or well below it (re-executing
            # the logged batches up to it), or from genesis: every seed draws one.
            "durable_snapshot_txs": (1, 30, 1_000_000)[(scenario.seed // 7) % 3],
        }
        params.update(config_overrides)
        self.config = ClusterConfig.create([bytes(k.public_key) for k in self.keys], **params)
        self.now_ms = START_MS
        self.queue: list[tuple[int, int, str, Any]] = []
        self._counter = 0
        self.nodes = [self._new_node(i, None) for i in range(n)]
        self.clients = [
            SimClient(
                SigningKey(digest(f"sim-client-{scenario.seed}-{c}".encode())),
                [],
            )
            for c in range(scenario.clients)
        ]
        for client, script in zip(self.clients, self._scripts(), strict=True):
            client.requests = [m.make_request(client.key, i + 1, tx) for i, tx in enumerate(script)]
        self.seen_requests: list[m.Request] = []
        self.forged_requests: set[bytes] = set()
        self.checkpoint_digests: dict[int, dict[int, bytes]] = {}
        self.memory_violations: list[str] = []
        self.messages_sent = 0
        self.stable_since_ms: int | None = None
        self.finished_ms: int | None = None
        self.restarts = 0
        self.codec_mismatches = 0
        self.largest_message = 0
        self.oversized: list[str] = []
        # Every client request by digest: what a Byzantine replica puts back into the blocks.
        self.bodies = {m.request_digest(r): r for c in self.clients for r in c.requests}
        self.redaction_violations: list[str] = []
        self.unredacted_sent = 0  # bodies the Byzantine replicas put back into state transfers
        # Token lies: the made-up transactions no honest replica may accept, and the client
        # key and last request id each Byzantine replica sends them under.
        self.token_lies: set[bytes] = set()
        self.byzantine_clients: dict[int, tuple[SigningKey, int]] = {}
        self.token_lies_told: Counter[str] = Counter()  # by kind, for the tests' coverage

    # -- setup ----------------------------------------------------------------------------

    def _scripts(self) -> list[list[bytes]]:
        """Each client's transactions, in the order it sends them."""
        sc = self.sc
        if sc.app == "tokens":
            return tokens.plan(sc.seed, sc.clients, sc.requests_per_client, START_MS)
        return [[self._tx(c, i) for i in range(sc.requests_per_client)] for c in range(sc.clients)]

    def _tx(self, c: int, i: int) -> bytes:
        sc = self.sc
        if sc.forget_every:
            group = f"c{c}-g{i // sc.forget_every}".encode()
            last = i % sc.forget_every == sc.forget_every - 1
            return encode_forget(group) if last else encode_set(group, b"v%d" % i)
        key = f"c{c}-r{i}".encode()
        if sc.refused_every and i % sc.refused_every == sc.refused_every - 1:
            return encode_del(b"never-set-" + key)
        if not sc.tx_bytes:
            return encode_set(key, b"v%d" % i)
        return encode_set_sized(key, sc.tx_bytes)

    def honest(self) -> list[int]:
        return [i for i in range(self.sc.n) if i not in self.sc.byzantine_ids]

    def _new_app(self, old: SimNode | None) -> SimApp:
        if self.sc.app != "tokens":
            return RecordingKV()
        app = tokens.new_app(self.keys, START_MS)
        if old is not None and isinstance(old.app, tokens.RecordingConsent):
            app.outcomes = old.app.outcomes  # the checker's record outlives the process
        return app

    def _new_node(self, i: int, old: SimNode | None) -> SimNode:
        app = self._new_app(old)
        durable = None
        if old is not None:
            durable = DurableState({k: sorted(v.items()) for k, v in old.records.items() if v})
        replica = Replica(self.config, i, self.keys[i], app, durable=durable)
        node = SimNode(replica, app)
        if old is not None:
            node.records, node.blocks = old.records, old.blocks
            node.conflicting_blocks = old.conflicting_blocks
            node.executed_log = old.executed_log
        self._drain(i, node)
        return node

    def _push(self, at_ms: int, kind: str, payload: Any) -> None:
        self._counter += 1
        heapq.heappush(self.queue, (at_ms, self._counter, kind, payload))

    # -- network ----------------------------------------------------------------------------

    def _connected(self, a: int, b: int) -> bool:
        if self.now_ms - START_MS >= self.sc.fault_end_ms:
            return True
        t = self.now_ms - START_MS
        for start, end, groups in self.sc.partitions:
            if start <= t < end:
                for g in groups:
                    if (a in g) != (b in g):
                        return False
        return True

    def _faulty_period(self) -> bool:
        return self.now_ms - START_MS < self.sc.fault_end_ms

    def _send(self, src: int, dst: int, msg: m.Message) -> None:
        self.messages_sent += 1
        if isinstance(msg, LARGE_MESSAGES):
            # What a node cannot put in a frame it drops (node.py): here, a violation.
            size = len(m.encode(msg))
            self.largest_message = max(self.largest_message, size)
            if size > self.config.peer_frame_bytes_max:
                self.oversized.append(f"replica {src}: a {type(msg).__name__} of {size} bytes")
        if not self._connected(src, dst):
            return
        if self._faulty_period() and self.rng.random() < self.sc.drop_p:
            return
        # What a real node does to every frame; sampled because it costs more than the rest
        # of a delivery, with its own generator so the schedule does not depend on it.
        if self.codec_rng.random() < CODEC_SAMPLE_P and m.decode(m.encode(msg)) != msg:
            self.codec_mismatches += 1
        lo, hi = self.sc.delay_ms
        copies = 2 if self._faulty_period() and self.rng.random() < self.sc.dup_p else 1
        for _ in range(copies):
            self._push(self.now_ms + self.rng.randint(lo, hi), "deliver", (dst, msg))

    # -- the Ready loop (what the asyncio node does, with a dictionary for SQLite) -----------

    def _drain(self, i: int, node: SimNode) -> None:
        r = node.replica
        while r.has_ready():
            ready = r.ready()
            self._handle(i, node, ready)
            r.advance(ready)
        self._check_memory(i, node)

    def _apply(self, node: SimNode, delta: DurableDelta) -> None:
        for kind, bound in delta.delete_below:
            table = node.records.get(kind, {})
            for key in [k for k in table if k < bound]:
                del table[key]
        for kind, key in delta.delete:
            node.records.get(kind, {}).pop(key, None)
        for kind, key, value in delta.put:
            node.records.setdefault(kind, {})[key] = value

    def _handle(self, i: int, node: SimNode, ready: Ready) -> None:
        self._apply(node, ready.persist)
        for block in ready.blocks:
            old = node.blocks.get(block.height)
            # Re-emission after a restart must be the same block (the certificate's signers
            # may differ: compare the header fields that matter).
            if old is not None and (old.batch_digest, old.state_root, old.prev_hash) != (
                block.batch_digest,
                block.state_root,
                block.prev_hash,
            ):
                node.conflicting_blocks += 1
            node.blocks[block.height] = block
        for height, indices in ready.redact:  # same transaction as `persist` in SQLite
            if height in node.blocks:
                node.blocks[height] = m.redact_block(node.blocks[height], indices)[0]
        for height, txs in node.app.executed.items():
            node.executed_log[height] = txs
        node.app.executed.clear()
        for out in ready.messages:
            if isinstance(out.msg, m.StateData) and i not in self.sc.byzantine_ids:
                self._check_served(i, node, out.msg)
            if isinstance(out.msg, m.Checkpoint) and out.msg.replica_id == i:
                self.checkpoint_digests.setdefault(out.msg.seq, {})[i] = out.msg.state_digest
            targets = [j for j in range(self.sc.n) if j != i] if out.to is None else [out.to]
            for dst, msg in self._byzantine_rewrite(i, targets, out.msg):
                self._send(i, dst, msg)
        for cr in ready.replies:
            reply = self._lie_reply(i, cr.reply)
            self._push(self.now_ms + self.rng.randint(*self.sc.delay_ms), "reply", reply)

    def _check_served(self, i: int, node: SimNode, data: m.StateData) -> None:
        """An honest replica's STATE-DATA holds no body its stable checkpoint redacted."""
        r = node.replica
        due: dict[int, set[int]] = {}
        for e in node.app.redactions(0, 1 << 30):
            if e.since <= r.h:
                due.setdefault(e.height, set()).add(e.index)
        for b in data.blocks:
            if m.redact_block(b, due.get(b.height, ()))[1]:
                self.redaction_violations.append(
                    f"replica {i} served a redacted body at height {b.height}"
                )

    def _unredact(self, block: m.Block) -> m.Block:
        """`block` with the redacted bodies put back (what a Byzantine replica kept)."""
        back = {
            o.index: self.bodies[o.request_digest]
            for o in block.omitted
            if o.code == m.REDACTED and o.request_digest in self.bodies
        }
        if not back:
            return block
        kept = iter(block.requests)
        omitted = {o.index for o in block.omitted if o.index not in back}
        requests = tuple(
            back[k] if k in back else next(kept) for k in range(block.size) if k not in omitted
        )
        self.unredacted_sent += len(back)
        return dataclasses.replace(
            block, requests=requests, omitted=tuple(o for o in block.omitted if o.index in omitted)
        )

    def _check_memory(self, i: int, node: SimNode) -> None:
        r = node.replica
        cfg = self.config
        L = cfg.log_window
        per_replica = L // cfg.checkpoint_interval + 2
        bounds = {
            "slots": (len(r.slots), L),
            "prepared certificates": (len(r.pcerts), L),
            "committed batches": (len(r.committed_batches), L),
            "checkpoint votes": (
                sum(len(v) for v in r.checkpoint_votes.values()),
                cfg.n * per_replica,
            ),
            "own snapshots": (len(r.own_snapshots), L // cfg.checkpoint_interval + 1),
            "pending": (len(r.pending) + len(r.inflight), cfg.pending_requests_max),
            "view changes": (len(r.view_changes), cfg.n),
        }
        for what, (size, bound) in bounds.items():
            if size > bound:
                self.memory_violations.append(f"replica {i}: {what} {size} > {bound}")
        if any(s <= r.h or s > r.h + L for s in r.slots):
            self.memory_violations.append(f"replica {i}: a slot outside the watermarks")

    # -- Byzantine rewriting ---------------------------------------------------------------

    def _byzantine_rewrite(
        self, i: int, targets: list[int], msg: m.Message
    ) -> list[tuple[int, m.Message]]:
        """What replica `i` sends instead of `msg` (and on top of it) if it is Byzantine:
        its token lies first (`_mint`), then one lie per message type (`_lie`)."""
        if i not in self.sc.byzantine_ids or not self.sc.behaviours:
            return [(t, msg) for t in targets]
        extra: list[tuple[int, m.Message]] = []
        if "mint" in self.sc.behaviours:
            msg, extra = self._mint(i, targets, msg)
        return self._lie(i, targets, msg) + extra

    def _lie(self, i: int, targets: list[int], msg: m.Message) -> list[tuple[int, m.Message]]:
        """One lie per message type, each in a method of its own below."""
        out: list[tuple[int, m.Message]] = [(t, msg) for t in targets]
        beh = self.sc.behaviours
        key = self.keys[i]
        if isinstance(msg, m.StateData):
            return self._lie_state_data(targets, msg, beh, key)
        if isinstance(msg, m.PrePrepare) and msg.requests:
            return self._lie_pre_prepare(targets, msg, beh, key)
        if isinstance(msg, m.Prepare | m.Commit):
            return out + self._lie_vote(i, targets, msg, beh, key)
        if isinstance(msg, m.Block) and "forge_certs" in beh:
            # A catch-up block whose batch was swapped under a genuine certificate.
            fake_reqs = (self._forged_request(),)
            swapped = dataclasses.replace(
                msg, requests=fake_reqs, batch_digest=m.batch_digest(msg.time_ms, fake_reqs)
            )
            return [(t, swapped) for t in targets]
        if isinstance(msg, m.ViewChange) and "forge_certs" in beh:
            forged_vc = self._forged_view_change(msg, key)
            return [(t, forged_vc) for t in targets]
        if isinstance(msg, m.NewView) and "forge_new_view" in beh:
            forged_nv = self._forged_new_view(i, msg, key)
            return [(t, forged_nv) for t in targets]
        if isinstance(msg, m.Checkpoint) and "corrupt_checkpoint" in beh:
            bad = m.sign(dataclasses.replace(msg, state_digest=digest(msg.state_digest)), key)
            return [(t, bad) for t in targets]
        return out

    def _lie_state_data(
        self, targets: list[int], msg: m.StateData, beh: frozenset[str], key: SigningKey
    ) -> list[tuple[int, m.Message]]:
        if "serve_unredacted" in beh:
            full = tuple(self._unredact(blk) for blk in msg.blocks)
            if full != msg.blocks:
                msg = m.sign(dataclasses.replace(msg, blocks=full), key)
        if "poison_state" not in beh:
            return [(t, msg) for t in targets]
        # Two lies: a reply cache other than the certified one (the digest no longer
        # matches), and an application state other than the certified one under the
        # certified root (the restore no longer reaches it).
        app_snapshot, cache, head, time_ms, root = msgpack.unpackb(msg.snapshot)
        lies = [
            [app_snapshot, [*cache, [b"c" * 32, 1, 1, b"ok"]], head, time_ms, root],
            [self._planted(app_snapshot, time_ms, head, key), cache, head, time_ms, root],
        ]
        return [
            (t, m.sign(dataclasses.replace(msg, snapshot=msgpack.packb(lie)), key))
            for t in targets
            for lie in lies
        ]

    def _planted(self, snapshot: bytes, time_ms: int, head: bytes, key: SigningKey) -> bytes:
        """`snapshot` with something planted: a key the clients never wrote, or a fortune
        in tokens credited to the Byzantine replica."""
        if self.sc.app == "tokens":
            self.token_lies_told["planted state"] += 1
            return tokens.planted_snapshot(snapshot, bytes(key.public_key))
        planted = KVApp()
        planted.restore(snapshot)
        planted.execute([encode_set(b"planted", b"!")], BlockContext(1, time_ms, head))
        return planted.snapshot()

    def _mint(
        self, i: int, targets: list[int], msg: m.Message
    ) -> tuple[m.Message, list[tuple[int, m.Message]]]:
        """Token lies (`msg` as replica `i` sends it, and messages on top): as the primary it
        fills its batches with made-up transactions under a client key of its own, or repeats
        a client's request in one; with its COMMITs it sends a made-up one as a client
        request to every replica."""
        if isinstance(msg, m.PrePrepare) and msg.replica_id == i and msg.requests:
            room = self.config.batch_size_max - len(msg.requests)
            if room == 0 or self.rng.random() < 0.2:
                added: tuple[m.Request, ...] = (msg.requests[0],)
                self.token_lies_told["request repeated in a batch"] += 1
            else:
                added = tuple(self._minting_request(i) for _ in range(self.rng.randint(1, room)))
                self.token_lies_told["batch stuffed"] += 1
            reqs = (*msg.requests, *added)
            stuffed = dataclasses.replace(
                msg, requests=reqs, batch_digest=m.batch_digest(msg.time_ms, reqs)
            )
            return m.sign(stuffed, self.keys[i]), []
        if isinstance(msg, m.Commit) and self.rng.random() < 0.3:
            req = self._minting_request(i)
            self.token_lies_told["sent as a client"] += 1
            return msg, [(t, req) for t in targets]
        return msg, []

    def _minting_request(self, i: int) -> m.Request:
        """A request of Byzantine replica `i`'s own client key: a made-up transaction
        (`tokens.forged_txs`), or one in five times a client's genuine one sent again."""
        key, rid = self.byzantine_clients.get(i, (SigningKey(digest(b"sim-byz-%d" % i)), 0))
        self.byzantine_clients[i] = (key, rid + 1)
        genuine = [r.tx for c in self.clients for r in c.requests]
        sample = self.rng.sample(genuine, min(3, len(genuine)))
        if self.rng.random() < 0.2:
            self.token_lies_told["genuine tx sent again"] += 1
            return m.make_request(key, rid + 1, self.rng.choice(sample))
        lie = self.rng.choice(tokens.forged_txs(self.keys[i], sample, self.rng))
        self.token_lies.add(lie)
        return m.make_request(key, rid + 1, lie)

    def _lie_reply(self, i: int, reply: m.Reply) -> m.Reply:
        """A Byzantine replica's answer to a client: the same lie from every colluder, all
        crediting the first of them."""
        if i not in self.sc.byzantine_ids or "lie_replies" not in self.sc.behaviours:
            return reply
        first = min(self.sc.byzantine_ids)
        self.token_lies_told["lying reply"] += 1
        lie = tokens.lying_result(reply.result, bytes(self.keys[first].public_key))
        return m.sign(dataclasses.replace(reply, result=lie), self.keys[i])

    def _lie_pre_prepare(
        self, targets: list[int], msg: m.PrePrepare, beh: frozenset[str], key: SigningKey
    ) -> list[tuple[int, m.Message]]:
        if "censor" in beh:
            return []
        out: list[tuple[int, m.Message]] = [(t, msg) for t in targets]
        if "equivocate" in beh:
            alt_reqs = msg.requests[::-1] if len(msg.requests) > 1 else msg.requests
            alt_time = msg.time_ms + (0 if len(msg.requests) > 1 else 1)
            alt = dataclasses.replace(
                msg,
                requests=alt_reqs,
                time_ms=alt_time,
                batch_digest=m.batch_digest(alt_time, alt_reqs),
            )
            alt = m.sign(alt, key)
            out = [(t, alt if t % 2 else msg) for t in targets]
        if "watermark" in beh:
            far = m.sign(dataclasses.replace(msg, seq=msg.seq + 10 * self.config.log_window), key)
            out += [(t, far) for t in targets]
        return out

    def _lie_vote(
        self,
        b: int,
        targets: list[int],
        msg: m.Prepare | m.Commit,
        beh: frozenset[str],
        key: SigningKey,
    ) -> list[tuple[int, m.Message]]:
        """Votes sent on top of `msg`: forged and garbage signatures, votes beyond the window."""
        extra: list[tuple[int, m.Message]] = []
        if "forge_sigs" in beh:
            victim = next(j for j in range(self.sc.n) if j != b)
            forged = m.sign(dataclasses.replace(msg, replica_id=victim), key)
            garbage = dataclasses.replace(msg, signature=bytes(64))
            extra += [(t, forged) for t in targets] + [(t, garbage) for t in targets]
        if "watermark" in beh:
            far_vote = m.sign(
                dataclasses.replace(msg, seq=msg.seq + 10 * self.config.log_window), key
            )
            extra += [(t, far_vote) for t in targets]
        return extra

    def _forged_view_change(self, msg: m.ViewChange, key: SigningKey) -> m.ViewChange:
        """`msg` claiming a prepared certificate for a batch no client sent."""
        fake_reqs = (self._forged_request(),)
        seq = msg.stable_seq + 1
        view = max(0, msg.new_view - 1)
        pp = m.PrePrepare(
            view, seq, m.batch_digest(0, fake_reqs), 0, fake_reqs, self.config.primary(view)
        )
        pp = m.sign(pp, key)  # signed by b in the primary's name: forged
        preps = tuple(
            m.sign(m.Prepare(view, seq, pp.batch_digest, j), key)
            for j in range(self.sc.n)
            if j != self.config.primary(view)
        )[: 2 * self.config.f]
        certs = tuple(c for c in msg.prepared if c.pre_prepare.seq != seq)
        return m.sign(dataclasses.replace(msg, prepared=(m.PreparedCert(pp, preps), *certs)), key)

    def _forged_new_view(self, b: int, msg: m.NewView, key: SigningKey) -> m.NewView:
        """`msg` with one more PRE-PREPARE, of a batch no client sent."""
        fake_reqs = (self._forged_request(),)
        seq = (
            msg.pre_prepares[-1].seq
            if msg.pre_prepares
            else max(vc.stable_seq for vc in msg.view_changes)
        ) + 1
        pp = m.sign(m.PrePrepare(msg.view, seq, m.batch_digest(0, fake_reqs), 0, fake_reqs, b), key)
        return m.sign(dataclasses.replace(msg, pre_prepares=(*msg.pre_prepares, pp)), key)

    def _forged_request(self) -> m.Request:
        """A request from the first client that it never signed (tx altered after signing)."""
        real = next((c.requests[0] for c in self.clients if c.requests), None)
        client_id = real.client_id if real else bytes(32)
        req = m.Request(client_id, 10**6, encode_set(b"forged", b"!"), bytes(64))
        self.forged_requests.add(m.encode(req))
        return req

    # -- clients ----------------------------------------------------------------------------

    def _client_step(self, c: int) -> None:
        cl = self.clients[c]
        if cl.index >= len(cl.requests) or self.now_ms < cl.next_retry_ms:
            return
        req = cl.requests[cl.index]
        first = cl.next_retry_ms == 0
        home = cl.view_guess + (c if self.sc.spread_first else 0)
        targets = [home % self.sc.n] if first else list(range(self.sc.n))
        for t in targets:
            self._push(self.now_ms + self.rng.randint(*self.sc.delay_ms), "client", (t, req))
        self.seen_requests.append(req)
        if len(self.seen_requests) > 64:
            del self.seen_requests[:32]
        cl.next_retry_ms = self.now_ms + CLIENT_RETRY_MS

    def _on_reply(self, reply: m.Reply) -> None:
        for cl in self.clients:
            if bytes(cl.key.public_key) != reply.client_id or cl.index >= len(cl.requests):
                continue
            if reply.request_id != cl.requests[cl.index].request_id:
                return
            if not m.verify_reply(reply, self.config.verify_keys):
                return
            cl.replies[reply.replica_id] = (reply.block_height, reply.result)
            cl.view_guess = max(cl.view_guess, reply.view)
            votes = list(cl.replies.values())
            for answer in set(votes):
                if votes.count(answer) >= self.config.f + 1:
                    cl.done.append((reply.request_id, answer[0], answer[1]))
                    cl.index += 1
                    cl.replies = {}
                    cl.next_retry_ms = 0
                    self._client_step(self.clients.index(cl))
                    return

    def all_done(self) -> bool:
        return all(cl.index >= len(cl.requests) for cl in self.clients)

    # -- the run ------------------------------------------------------------------------------

    def run(self) -> Simulator:
        sc = self.sc
        for i in range(sc.n):
            self._push(self.now_ms + self.rng.randint(0, TICK_MS), "tick", i)
        for c in range(sc.clients):
            self._push(self.now_ms + self.rng.randint(0, 50), "client_tick", c)
        for node, at, restart in sc.crashes:
            self._push(START_MS + at, "crash", node)
            self._push(START_MS + restart, "restart", node)
        if sc.replay_requests:
            self._push(START_MS + 100, "adversary", None)
        end = START_MS + sc.deadline_ms
        while self.queue:
            at, _, kind, payload = heapq.heappop(self.queue)
            if at > end:
                break
            self.now_ms = at
            self._event(kind, payload)
            if self.all_done() and self.finished_ms is None:
                self.finished_ms = self.now_ms - START_MS
                # Let retransmission settle so every honest replica catches up.
                end = min(end, max(self.now_ms, START_MS + sc.fault_end_ms) + 1_500)
        return self

    def _event(self, kind: str, payload: Any) -> None:
        if kind == "tick":
            i = payload
            node = self.nodes[i]
            if node.up:
                node.replica.tick(self.now_ms)
                self._drain(i, node)
            self._push(self.now_ms + TICK_MS, "tick", i)
        elif kind == "deliver":
            dst, msg = payload
            node = self.nodes[dst]
            if node.up:
                node.replica.step(msg, self.now_ms)
                self._drain(dst, node)
        elif kind == "client":
            dst, req = payload
            node = self.nodes[dst]
            if node.up and self._connected(dst, dst):
                node.replica.step(req, self.now_ms)
                self._drain(dst, node)
        elif kind == "reply":
            self._on_reply(payload)
        elif kind == "client_tick":
            self._client_step(payload)
            self._push(self.now_ms + 20, "client_tick", payload)
        elif kind == "crash":
            self.nodes[payload].up = False
        elif kind == "restart":
            old = self.nodes[payload]
            if not old.up:
                self.nodes[payload] = self._new_node(payload, old)
                self.restarts += 1
        elif kind == "adversary":
            self._adversary()
            if self._faulty_period() or not self.all_done():
                self._push(self.now_ms + 97, "adversary", None)

    def _adversary(self) -> None:
        """Replays a request seen on the network and injects one with a bad signature."""
        target = self.rng.randrange(self.sc.n)
        if self.seen_requests:
            old = self.rng.choice(self.seen_requests)
            self._push(self.now_ms + 1, "client", (target, old))
        forged = self._forged_request()
        self._push(self.now_ms + 1, "client", (target, forged))
