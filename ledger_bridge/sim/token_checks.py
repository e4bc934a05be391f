"""What must hold of the token economy after a run (`Scenario.tokens`), whatever the Byzantine
replicas did: no token minted, stolen or spent twice.

- The canonical history: at every height, the honest replicas that executed it executed the
  same transactions in the same context, with the same results and state root.
- The replay: that history, executed again by the contracts on a fresh founded state, gives
  the same results and roots; every honest replica's final state has the replay's root at
  its height. So no honest replica holds a state the committed blocks do not produce.
- The invariants, on the replay after every block and on every honest replica's final state:
  minted = sum(balances) + redeemed + expired + forfeited, no balance negative, each account's
  lots summing to its balance.
- The books: an independent model walks the accepted transactions in order and must end
  where the state does (every balance, the supply counters, the events rewarded, the coupons
  issued and spent). Each minted amount comes from a claim its device signed, rewarded once,
  by the vault, at the rule's rate; no transfer or redemption overdraws its author; a coupon
  is issued once and spent once, by its partner; no transaction is accepted twice; no lie a
  Byzantine replica made up is accepted.
- Each request executes at most once, and every reply a client accepted (f + 1 matching) is
  the canonical result of its request at the height it names.
The replay and the books check each other: a contract bug that the replay reproduces faithfully
(say, a transfer that overdraws) breaks the books; a replica whose state drifted from what the
blocks produce breaks the replay.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from ledger_bridge.app import BlockContext
from ledger_bridge.contracts import codec, events
from ledger_bridge.contracts import tx as txmod
from ledger_bridge.contracts.rules import tokens as token_rules
from ledger_bridge.contracts.state import State
from ledger_bridge.pbft import messages as m
from ledger_bridge.sim import tokens
from ledger_bridge.sim.core import START_MS, Simulator

Outcome = tuple[BlockContext, list[bytes], list[bytes], bytes]


@dataclass
class TokenReport:
    violations: list[str] = field(default_factory=list)
    stats: Counter[str] = field(default_factory=Counter)  # "type:code" of every execution


def check_tokens(sim: Simulator) -> TokenReport:
    report = TokenReport()
    v = report.violations
    honest = sim.honest()
    canon = _canonical(sim, honest, v)
    roots = _replay(sim, canon, v)
    books = Books(sim.token_lies)
    for h, (_, txs, results, _) in sorted(canon.items()):
        for raw, result in zip(txs, results, strict=True):
            books.apply(h, raw, codec.decode(result), report.stats)
    v.extend(books.violations[:5])
    for i in honest:
        node = sim.nodes[i]
        state = _state_of(node.app)
        at = node.replica.last_executed
        if roots.get(at) != state.root():
            v.append(f"replica {i}: its state at height {at} is not the replay's")
        v.extend(f"replica {i}: {problem}" for problem in invariant_violations(state)[:3])
        if at == max(canon, default=0):
            v.extend(f"replica {i}: {problem}" for problem in books.disagree(state)[:5])
    _check_requests(sim, honest, canon, v)
    return report


def _state_of(app: Any) -> State:
    if not isinstance(app, tokens.RecordingConsent):
        raise TypeError("the token checks need the contracts app")
    return app.state


def _canonical(sim: Simulator, honest: list[int], v: list[str]) -> dict[int, Outcome]:
    """Height -> what the honest replicas executed there, which must be one outcome."""
    by_height: dict[int, list[Outcome]] = {}
    for i in honest:
        app = sim.nodes[i].app
        if isinstance(app, tokens.RecordingConsent):
            for h, outcome in app.outcomes.items():
                by_height.setdefault(h, []).append(outcome)
    canon: dict[int, Outcome] = {}
    for h in range(1, max(by_height, default=0) + 1):
        seen = by_height.get(h)
        if not seen:
            v.append(f"height {h} was executed by no honest replica")
            break
        if any(o != seen[0] for o in seen):
            v.append(f"honest replicas executed height {h} differently")
        canon[h] = seen[0]
    return canon


def _replay(sim: Simulator, canon: dict[int, Outcome], v: list[str]) -> dict[int, bytes]:
    """The canonical history executed again on a fresh founded state: its state root at
    each height (0: the founding), checking results, roots and invariants on the way."""
    app = tokens.new_app(sim.keys, START_MS)
    roots = {0: app.state_root()}
    for h, (ctx, txs, results, root) in sorted(canon.items()):
        again, roots[h] = app.execute(txs, ctx)
        if again != results or roots[h] != root:
            v.append(f"replay: height {h} gives other results or another state")
        problems = invariant_violations(app.state)
        if problems:
            v.append(f"replay: after height {h}, {problems[0]}")
    return roots


def invariant_violations(state: State) -> list[str]:
    """The supply adds up, no lot is empty or negative (a balance is the sum of its lots)."""
    out = []
    supply = {k: state.get("meta", k) or 0 for k in ("minted", "redeemed", "expired", "forfeited")}
    total = 0
    for (account,) in state.group("lots", "all"):
        lots = state.get("lots", account) or []
        total += sum(m for _, m in lots)
        if any(m <= 0 for _, m in lots):
            out.append(f"account {account[:8]}: lots {lots} hold an empty or negative lot")
    if supply["minted"] != total + supply["redeemed"] + supply["expired"] + supply["forfeited"]:
        out.append(f"supply {supply} does not add up with balances of {total} mtok")
    return out


class Books:
    """An independent model of the economy, fed the accepted transactions in order."""

    def __init__(self, lies: set[bytes]) -> None:
        self.lies = lies
        self.balances: Counter[str] = Counter()
        self.minted = 0
        self.redeemed = 0
        self.events: set[tuple[bytes, bytes]] = set()
        self.coupons: dict[bytes, str] = {}
        self.accepted: set[tuple[bytes, bytes]] = set()  # (author, nonce)
        self.violations: list[str] = []

    def apply(self, h: int, raw: bytes, result: dict[str, Any], stats: Counter[str]) -> None:
        t = txmod.decode(raw)
        stats[f"{t.type}:{result.get('code', 'ok')}"] += 1
        if raw in self.lies:
            stats["lies executed"] += 1
        if not result["ok"]:
            return
        if raw in self.lies:
            self.violations.append(f"height {h}: a Byzantine replica's {t.type} accepted")
        if (t.author, t.nonce) in self.accepted:
            self.violations.append(f"height {h}: a {t.type} accepted twice")
        self.accepted.add((t.author, t.nonce))
        handler = {
            "event.reward": self._reward,
            "token.transfer": self._transfer,
            "token.redeem": self._redeem,
            "coupon.spend": self._spend,
        }.get(t.type)
        if handler is not None:
            handler(h, t, result)

    def _debit(self, h: int, account: str, mtok: int) -> None:
        self.balances[account] -= mtok
        if self.balances[account] < 0:
            self.violations.append(f"height {h}: account {account[:8]} overdrawn")

    def _reward(self, h: int, t: txmod.SignedTx, result: dict[str, Any]) -> None:
        if t.author != tokens.pub(tokens.CAST.vault):
            self.violations.append(f"height {h}: a reward accepted from another than the vault")
        claims = t.body["claims"]
        if len(result["credited"]) != len(claims):
            self.violations.append(f"height {h}: a reward credits other than its claims")
        for claim, (subject, minted) in zip(claims, result["credited"], strict=False):
            rule = claim["rule"]
            device = tokens.CAST.devices.get(rule)
            if device is None or claim["device"] != tokens.pub(device):
                self.violations.append(f"height {h}: minted on a claim of no device of {rule}")
            if not events.verify_claim(tokens.CHAIN_ID, claim):
                self.violations.append(f"height {h}: minted on a claim no device signed")
            key = (claim["device"], claim["event"])
            if key in self.events:
                self.violations.append(f"height {h}: an event rewarded twice")
            self.events.add(key)
            expect = claim["quantity_milli"] * tokens.RULES[rule][1] // 1000
            if (subject, minted) != (claim["subject"], expect):
                self.violations.append(f"height {h}: credited {minted} mtok, the claim {expect}")
            self.balances[subject] += minted
            self.minted += minted

    def _transfer(self, h: int, t: txmod.SignedTx, result: dict[str, Any]) -> None:
        self._debit(h, t.author.hex(), t.body["amount_mtok"])
        self.balances[t.body["to"].hex()] += t.body["amount_mtok"]

    def _redeem(self, h: int, t: txmod.SignedTx, result: dict[str, Any]) -> None:
        self._debit(h, t.author.hex(), tokens.PRICE_MTOK)
        self.redeemed += tokens.PRICE_MTOK
        if t.body["offer"] != tokens.OFFER or t.body["coupon"] in self.coupons:
            self.violations.append(f"height {h}: a coupon issued twice or for no offer")
        self.coupons[t.body["coupon"]] = "issued"

    def _spend(self, h: int, t: txmod.SignedTx, result: dict[str, Any]) -> None:
        coupon = hashlib.sha256(t.body["secret"]).digest()
        if t.author != tokens.pub(tokens.CAST.partner):
            self.violations.append(f"height {h}: a coupon spent by another than its partner")
        if self.coupons.get(coupon) != "issued":
            self.violations.append(f"height {h}: a coupon spent twice or never issued")
        self.coupons[coupon] = "spent"

    def disagree(self, state: State) -> list[str]:
        """Where `state` differs from the books."""
        out = []
        balances = {a: token_rules.balance(state, a) for (a,) in state.group("lots", "all")}
        held = {a: mtok for a, mtok in balances.items() if mtok}
        if held != {a: m for a, m in self.balances.items() if m}:
            out.append("balances differ from the books")
        counters = [state.get("meta", k) or 0 for k in ("minted", "redeemed", "expired")]
        if counters != [self.minted, self.redeemed, 0]:
            out.append(f"minted, redeemed, expired {counters} differ from the books")
        rewarded = {k[1:] for k, _ in state.items() if k[0] == "event"}
        if rewarded != self.events:
            out.append("the events rewarded differ from the books")
        coupons = {k[1]: c["status"] for k, c in state.items() if k[0] == "coupon"}
        if coupons != self.coupons:
            out.append("the coupons issued and spent differ from the books")
        return out


def _check_requests(
    sim: Simulator, honest: list[int], canon: dict[int, Outcome], v: list[str]
) -> None:
    """Each request executed at most once, and each reply a client accepted is its
    request's canonical result."""
    executed: dict[bytes, tuple[int, bytes]] = {}  # request digest -> (height, result)
    for h, (ctx, _, results, _) in sorted(canon.items()):
        block = next((sim.nodes[i].blocks[h] for i in honest if h in sim.nodes[i].blocks), None)
        digests = block.request_digests() if block is not None else None
        if digests is None:
            v.append(f"height {h}: no honest block to name its requests")
            continue
        for k, result in enumerate(results):
            d = digests[ctx.position(k)]
            if d in executed:
                v.append(f"a request executed at heights {executed[d][0]} and {h}")
            executed[d] = (h, result)
    for c in sim.clients:
        by_id = {r.request_id: r for r in c.requests}
        for rid, height, result in c.done:
            if height == 0:
                continue  # refused at admission: checkers.check judges it
            d = m.request_digest(by_id[rid])
            if executed.get(d) != (height, result):
                v.append(f"a client accepted for request {rid} what height {height} did not say")
