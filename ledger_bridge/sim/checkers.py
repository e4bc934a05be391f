"""Checkers: what must hold after every simulated run, over the honest replicas only.

- agreement: at every height (= sequence number) all honest replicas hold the same block;
- prefix consistency: every honest chain verifies from genesis (hash links, certificates,
  client signatures) wherever it is contiguous;
- equal state digests at checkpoints;
- exactly once: no (client, request id) is executed at two heights by one replica, and no
  request is ordered in two blocks of one honest chain;
- only signed requests executed: no forged request reaches any honest chain;
- liveness: every client request completed once the network was stable, and every honest
  replica that is up caught up with the highest honest chain;
- memory bounded by the log window (sampled after every step);
- no block re-emitted with different contents after a restart;
- every message fits the peer frame limit the cluster's parameters derive;
- no block holds the body of a request the application refused;
- redaction: every honest replica whose stable checkpoint passed an erasure holds, in its
  store and in the blocks it serves, no body the application listed up to there; none sent
  one in a state transfer; and every honest replica's entries are the same list;
- with the token economy (`Scenario.tokens`), no token minted, stolen or spent twice
  (`token_checks.py`).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from ledger_bridge.pbft import messages as m
from ledger_bridge.pbft.blocks import block_hash, verify_chain
from ledger_bridge.sim.core import Simulator
from ledger_bridge.sim.token_checks import check_tokens

# Once faults stop, every request must complete within this much virtual time. Observed:
# under 1 s for thousands of seeds; the bound leaves room for a few doubled view-change
# timeouts (400 ms base) without hiding a stuck replica.
LIVENESS_BOUND_MS = 8_000


@dataclass
class Report:
    seed: int
    violations: list[str] = field(default_factory=list)
    heights: dict[int, int] = field(default_factory=dict)
    finished_ms: int | None = None
    stats: Counter[str] = field(default_factory=Counter)  # the token checks' counts

    @property
    def ok(self) -> bool:
        return not self.violations


def check(sim: Simulator, *, expect_liveness: bool = True) -> Report:
    report = Report(sim.sc.seed, finished_ms=sim.finished_ms)
    v = report.violations
    honest = sim.honest()
    keys = sim.config.verify_keys
    by_height: dict[int, dict[bytes, int]] = {}
    for i in honest:
        node = sim.nodes[i]
        report.heights[i] = max(node.blocks, default=0)
        if node.conflicting_blocks:
            v.append(f"replica {i} re-emitted {node.conflicting_blocks} different block(s)")
        for h, b in node.blocks.items():
            by_height.setdefault(h, {}).setdefault(block_hash(b), i)
        # Prefix consistency: verify every contiguous run (state transfer may leave gaps).
        heights = sorted(node.blocks)
        run: list[m.Block] = []
        for h in heights:
            if run and h != run[-1].height + 1:
                if not verify_chain(run, keys, anchor=None):
                    v.append(f"replica {i}: chain {run[0].height}..{run[-1].height} invalid")
                run = []
            run.append(node.blocks[h])
        if run and not verify_chain(run, keys):
            v.append(f"replica {i}: chain {run[0].height}..{run[-1].height} invalid")
        for b in node.blocks.values():
            for r in b.requests:
                if m.encode(r) in sim.forged_requests:
                    v.append(f"replica {i}: forged request at height {b.height}")
        _check_ordered_once(i, node.blocks, v)
        if sim.sc.app == "kv":
            _check_executed_once(i, node.executed_log, v)
    for h, hashes in sorted(by_height.items()):
        if len(hashes) > 1:
            v.append(f"agreement violated at height {h}: {len(hashes)} different blocks")
    for seq, digests in sorted(sim.checkpoint_digests.items()):
        honest_digests = {d for r, d in digests.items() if r in honest}
        if len(honest_digests) > 1:
            v.append(f"checkpoint {seq}: honest replicas disagree on the state digest")
    v.extend(sim.memory_violations[:5])
    if sim.codec_mismatches:
        v.append(f"{sim.codec_mismatches} message(s) changed through encode/decode")
    if expect_liveness and not sim.all_done():
        left = sum(len(c.requests) - c.index for c in sim.clients)
        v.append(f"liveness: {left} request(s) not completed by the deadline")
    elif expect_liveness and sim.finished_ms is not None:
        late_ms = sim.finished_ms - sim.sc.fault_end_ms
        if late_ms > LIVENESS_BOUND_MS:
            v.append(f"liveness: last request done {late_ms} ms after the network stabilised")
    # Catch-up: once the network is stable every honest replica that is up reaches the top.
    up = [i for i in honest if sim.nodes[i].up]
    if expect_liveness and up:
        top = max(report.heights[i] for i in up)
        for i in up:
            if report.heights[i] < top:
                v.append(f"catch-up: replica {i} at height {report.heights[i]}, others at {top}")
    v.extend(sim.oversized[:5])
    _check_acknowledged(sim, honest, v)
    _check_redacted(sim, honest, v)
    if sim.sc.app == "tokens":
        tokens = check_tokens(sim)
        v.extend(tokens.violations)
        report.stats = tokens.stats
    return report


def _check_executed_once(i: int, executed: dict[int, list[bytes]], v: list[str]) -> None:
    """Exactly once, by the transactions' bytes: each KV client request carries its own.
    The token traffic sends one transaction in several requests on purpose (a spend raced
    by two API instances); `token_checks` judges it by request, and by the contract's
    answer to the copies."""
    seen: dict[bytes, int] = {}
    for h, txs in sorted(executed.items()):
        for tx in txs:
            if tx in seen and seen[tx] != h:
                v.append(f"replica {i}: tx executed at heights {seen[tx]} and {h}")
            seen[tx] = h


def _check_redacted(sim: Simulator, honest: list[int], v: list[str]) -> None:
    v.extend(sim.redaction_violations[:5])
    lists = set()
    for i in honest:
        node = sim.nodes[i]
        r = node.replica
        entries = node.app.redactions(0, 1 << 30)
        lists.add(tuple(e for e in entries if e.since <= r.h))
        due = [e for e in entries if e.since <= r.h]
        if r.redactions_applied < (due[-1].n if due else 0):
            v.append(f"replica {i}: {len(due)} redaction(s) due, {r.redactions_applied} applied")
        recent = {b.height: b for b in r.recent_blocks}
        for e in due:
            held = (("store", node.blocks.get(e.height)), ("memory", recent.get(e.height)))
            for where, b in held:
                if b is not None and e.index not in {o.index for o in b.omitted}:
                    v.append(f"replica {i}: body at {e.height}/{e.index} kept in its {where}")
    # Entries at or below the lowest honest checkpoint are the same list everywhere.
    if lists:
        low = min(lists, key=len)
        if any(entries[: len(low)] != low for entries in lists):
            v.append("honest replicas list different redactions")


def _check_ordered_once(i: int, blocks: dict[int, m.Block], v: list[str]) -> None:
    """No request in two blocks of one honest chain, with its body or by its digest: the
    reply cache keeps the second copy from executing, but a block is for ever and the
    client's receipt names one height."""
    first: dict[bytes, int] = {}
    for h, b in sorted(blocks.items()):
        digests = [m.request_digest(r) for r in b.requests]
        digests += [o.request_digest for o in b.omitted]
        for d in digests:
            if d in first:
                v.append(f"replica {i}: a request ordered at heights {first[d]} and {h}")
            else:
                first[d] = h


def _check_acknowledged(sim: Simulator, honest: list[int], v: list[str]) -> None:
    """Every acknowledged request is in the honest chains at the height its receipt names:
    with its body if the application accepted it, by its digest alone if it refused it."""
    for c in sim.clients:
        by_id = {r.request_id: r for r in c.requests}
        for rid, height, result in c.done:
            digest = m.request_digest(by_id[rid])
            refused = sim.nodes[honest[0]].app.refusal_code(result) is not None
            if height == 0:
                # Refused at admission (`Application.check`): never ordered, no block.
                if not refused:
                    v.append(f"request {rid} acknowledged at height 0 yet not refused")
                continue
            holders = []
            for i in honest:
                block = sim.nodes[i].blocks.get(height)
                if block is None:
                    continue
                bodies = {m.request_digest(r) for r in block.requests}
                digests = {o.request_digest for o in block.omitted}
                # Redacted after the fact (forgotten): its digest proves it was ordered.
                redacted = {o.request_digest for o in block.omitted if o.code == m.REDACTED}
                if refused and digest in bodies:
                    v.append(f"replica {i}: refused request {rid} kept whole at {height}")
                if digest in (digests if refused else bodies | redacted):
                    holders.append(i)
            if not holders:
                v.append(f"acknowledged request {rid} is in no honest chain at {height}")


def run_seed(seed: int, *, byzantine: bool = False, colluding: bool = False) -> Report:
    """One seed under every checker: `Scenario.random`, or with `colluding` the n = 7
    schedule with two colluding Byzantine replicas (`Scenario.colluding`)."""
    from ledger_bridge.sim.core import Scenario

    sc = Scenario.colluding(seed) if colluding else Scenario.random(seed, byzantine=byzantine)
    return check(Simulator(sc).run())
