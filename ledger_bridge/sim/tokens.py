"""The eco-citizen token economy in the simulator: the consent contracts as the replicated
application, a founded cooperative, client traffic full of double-spend attempts, and the lies
a Byzantine replica tells to mint tokens.

Why a founding block 0 rather than founding traffic: the devices and reward rules need
governance (proposals, votes of every college), which a client would have to drive request
by request, reading back proposal numbers; the same real transactions, executed once at
height 0 before the replicas start, found the cooperative in a few milliseconds, and every
replica (and the checker's replay) starts from that one snapshot. Rules enacted at height 0
are in force from block 1 (`version_at`: the newest version written before the height).

The cast: the vault (the cooperative's operations key, which relays device claims in
`event.reward`), a provider operating one device of each kind, two partners (one with the
offer, a rival without), and residents (subjects). The traffic (`plan`) is signed by them;
what a Byzantine replica can sign is only its own key's (`forged_txs`).
"""

from __future__ import annotations

import hashlib
import itertools
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from ledger_bridge.app import BlockContext
from ledger_bridge.contracts import codec, events
from ledger_bridge.contracts import tx as txmod
from ledger_bridge.contracts.app import ConsentApp
from ledger_bridge.contracts.state import State
from ledger_bridge.contracts.vocabulary import DEFAULT_COLLEGES
from ledger_bridge.crypto import SigningKey, digest

CHAIN_ID = "civis-sim"
DATASET = "eco-events"
OFFER = "bread"
PRICE_MTOK = 1500
SUBJECTS = 6
# (unit, rate in mtok per unit, the device kind it rewards): the white paper's three rules
RULES = {
    "cycling": ("km", 1000, "bike_reader"),
    "water-saving": ("litre", 3000, "water_meter"),
    "local-produce": ("euro", 1000, "shop_scanner"),
}
VALID_MS = 30 * 60_000  # how long the traffic's transactions stay valid (a run lasts seconds)
FOUNDED_BEFORE_MS = 60_000  # block 0's time, before the run starts


def _key(name: str) -> SigningKey:
    return SigningKey(digest(f"sim-token-{name}".encode()))


@dataclass(frozen=True)
class Cast:
    vault: SigningKey
    provider: SigningKey
    partner: SigningKey
    rival: SigningKey
    subjects: tuple[SigningKey, ...]
    devices: dict[str, SigningKey]  # by rule

    def hex(self, key: SigningKey) -> str:
        return bytes(key.public_key).hex()


CAST = Cast(
    vault=_key("vault"),
    provider=_key("provider"),
    partner=_key("partner"),
    rival=_key("rival"),
    subjects=tuple(_key(f"subject-{s}") for s in range(SUBJECTS)),
    devices={rule: _key(f"device-{rule}") for rule in RULES},
)


def pub(key: SigningKey) -> bytes:
    return bytes(key.public_key)


def sign(
    key: SigningKey, tx_type: str, body: dict[str, Any], valid_until: int, nonce: bytes
) -> bytes:
    return txmod.sign(key, CHAIN_ID, tx_type, body, valid_until=valid_until, nonce=nonce).encode()


# -- the application ------------------------------------------------------------------------


class RecordingConsent(ConsentApp):
    """The consent contracts, remembering what they executed at each height: the txs (the
    exactly-once check) and the whole outcome (context, results, root), which the token
    checker replays on a fresh state."""

    def __init__(self, validators: Sequence[tuple[bytes, str]]) -> None:
        super().__init__(CHAIN_ID, validators, _app_genesis())
        self.executed: dict[int, list[bytes]] = {}
        self.outcomes: dict[int, tuple[BlockContext, list[bytes], list[bytes], bytes]] = {}

    def execute(self, txs: Sequence[bytes], block: BlockContext) -> tuple[list[bytes], bytes]:
        results, root = super().execute(txs, block)
        self.executed[block.height] = list(txs)
        self.outcomes[block.height] = (block, list(txs), list(results), root)
        return results, root

    def refusal_code(self, result: bytes) -> bytes | None:
        """As `ConsentApp`'s, for the results of any block, not only the last one: the
        checkers ask it of the results clients accepted, long after their block."""
        code = super().refusal_code(result)
        if code is not None:
            return code
        outcome = codec.decode(result)
        if isinstance(outcome, dict) and outcome.get("ok") is False:
            return str(outcome.get("code", "refused")).encode()[:64]
        return None


def validators_of(keys: Sequence[SigningKey]) -> list[tuple[bytes, str]]:
    return [(pub(k), DEFAULT_COLLEGES[i % len(DEFAULT_COLLEGES)]) for i, k in enumerate(keys)]


def _app_genesis() -> dict[str, Any]:
    founders = [
        (CAST.vault, "vault", "providers"),
        (CAST.provider, "provider", "providers"),
        (CAST.partner, "partner", "services"),
        (CAST.rival, "partner", "services"),
    ]
    return {
        "members": [
            {"public_key": CAST.hex(k), "role": role, "college": college}
            for k, role, college in founders
        ]
    }


def new_app(keys: Sequence[SigningKey], start_ms: int) -> RecordingConsent:
    """An application holding the founded cooperative (block 0 executed)."""
    app = RecordingConsent(validators_of(keys))
    app.restore(founding_snapshot(keys, start_ms))
    return app


_FOUNDED: dict[tuple[tuple[bytes, ...], int], bytes] = {}


def founding_snapshot(keys: Sequence[SigningKey], start_ms: int) -> bytes:
    """Block 0 for validators `keys`: the eco dataset, three devices admitted by governance,
    the three reward rules, the subjects (registering themselves) and the partner's offer.
    Built once per cluster: every replica of every seed restores it."""
    cache_key = (tuple(pub(k) for k in keys), start_ms)
    if cache_key not in _FOUNDED:
        _FOUNDED[cache_key] = _found(keys, start_ms)
    return _FOUNDED[cache_key]


def _found(keys: Sequence[SigningKey], start_ms: int) -> bytes:
    app = ConsentApp(CHAIN_ID, validators_of(keys), _app_genesis())
    until = start_ms + VALID_MS
    nonces = (digest(b"founding-%d" % i)[:16] for i in itertools.count())

    def s(key: SigningKey, tx_type: str, body: dict[str, Any]) -> bytes:
        return sign(key, tx_type, body, until, next(nonces))

    txs = [_dataset_tx(s)]
    for rule, (_, _, kind) in RULES.items():
        device = {"device": pub(CAST.devices[rule]), "kind": kind, "dataset": DATASET}
        txs.append(s(CAST.provider, "device.register", {**device, "district": "centre"}))
    for subject in CAST.subjects:
        txs.append(s(subject, "member.register", {"role": "subject", "college": "citizens"}))
    offer = {"offer": OFFER, "title": "a loaf", "category": "food", "price_mtok": PRICE_MTOK}
    txs.append(s(CAST.partner, "offer.publish", {**offer, "active": True}))
    voters = [*keys, CAST.vault, CAST.provider, CAST.partner, CAST.rival]
    for pid, action in enumerate(_founding_actions(), start=1):
        proposal = {"action": action, "voting_ends": start_ms + 86_400_000}
        txs.append(s(CAST.vault, "governance.propose", proposal))
        txs += [s(k, "governance.vote", {"proposal": pid, "approve": True}) for k in voters]
    time_ms = start_ms - FOUNDED_BEFORE_MS
    results, _ = app.execute(txs, BlockContext(0, time_ms, bytes(32)))
    refused = [codec.decode(r) for r in results if codec.decode(r)["ok"] is False]
    # Votes after a proposal passed are refused `closed`; anything else is a broken founding.
    if any(r["code"] != "closed" for r in refused):
        raise AssertionError(f"the founding block was refused: {refused[:3]}")
    return app.snapshot()


def _dataset_tx(s: Callable[[SigningKey, str, dict[str, Any]], bytes]) -> bytes:
    return s(
        CAST.vault,
        "dataset.register",
        {
            "dataset": DATASET,
            "owner": pub(CAST.provider),
            "category": "eco",
            "purposes": ["impact-statistics"],
            "retention_days": 30,
            "legal_basis": "consent",
        },
    )


def _founding_actions() -> list[dict[str, Any]]:
    actions: list[dict[str, Any]] = [
        {"kind": "admit_device", "device": pub(CAST.devices[rule])} for rule in RULES
    ]
    for rule, (unit, rate, kind) in RULES.items():
        actions.append(
            {
                "kind": "set_reward_rule",
                "rule": rule,
                "unit": unit,
                "rate_mtok": rate,
                "device_kinds": [kind],
                "cap_mtok_per_day": 0,
            }
        )
    return actions


# -- the clients' traffic --------------------------------------------------------------------


class _Plan:
    """Builds each client's script (the clients are API instances: each sends its requests
    one after another, the clients concurrently). A group of requests that depend on one
    another (a reward, then a redemption, then the coupon's spend) goes to one client, in
    order; its double-spend attempts go to others, so that ordering alone decides which
    one wins."""

    def __init__(self, seed: int, clients: int, start_ms: int) -> None:
        self.rng = random.Random(seed ^ 0x70CE)  # noqa: S311 (simulation, not crypto)
        self.scripts: list[list[bytes]] = [[] for _ in range(clients)]
        self.until = start_ms + VALID_MS
        self.at = start_ms - FOUNDED_BEFORE_MS // 2
        self.events = itertools.count(1)
        self.credited = [0] * SUBJECTS  # what the plan's rewards give each subject

    def sign(self, key: SigningKey, tx_type: str, body: dict[str, Any]) -> bytes:
        return sign(key, tx_type, body, self.until, self.rng.randbytes(16))

    def others(self, c: int) -> list[int]:
        """The clients other than `c`, shuffled (`c` itself when it is the only one)."""
        rest = [d for d in range(len(self.scripts)) if d != c] or [c]
        self.rng.shuffle(rest)
        return rest

    def claim(self, s: int, quantity_milli: int | None = None) -> dict[str, Any]:
        rule = self.rng.choice(list(RULES))
        n = next(self.events)
        quantity = quantity_milli or self.rng.randint(500, 4000)
        claim: dict[str, Any] = {
            "device": pub(CAST.devices[rule]),
            "event": digest(b"sim-event %d" % n),
            "commitment": digest(b"sim-detail %d" % n),
            "rule": rule,
            "quantity_milli": quantity,
            "subject": CAST.hex(CAST.subjects[s]),
            "at": self.at + n,
        }
        claim["signature"] = events.sign_claim(CAST.devices[rule], CHAIN_ID, claim)
        self.credited[s] += quantity * RULES[rule][1] // 1000
        return claim

    def reward(self, c: int, claims: list[dict[str, Any]]) -> None:
        self.scripts[c].append(self.sign(CAST.vault, "event.reward", {"claims": claims}))

    def rewards(self) -> None:
        """One batch of claims; half the time one of them is claimed again in another
        request, sent by another client (a device's retry reaching two API instances)."""
        c = self.rng.randrange(len(self.scripts))
        claims = [self.claim(self.rng.randrange(SUBJECTS)) for _ in range(self.rng.randint(1, 3))]
        self.reward(c, claims)
        if self.rng.random() < 0.5:
            again = [claims[0], self.claim(self.rng.randrange(SUBJECTS))]
            self.reward(self.others(c)[0], again)

    def overdraw(self) -> None:
        """A subject signs two transfers that, together, exceed what it was given: each goes
        to another client."""
        s = self.rng.randrange(SUBJECTS)
        c = self.rng.randrange(len(self.scripts))
        d = self.others(c)[0]
        self.reward(c, [self.claim(s)])
        amount = max(1, self.credited[s] * 6 // 10)
        for client in (c, d):
            to = self.rng.choice([*CAST.subjects[:s], *CAST.subjects[s + 1 :], CAST.partner])
            body = {"to": pub(to), "amount_mtok": amount}
            self.scripts[client].append(self.sign(CAST.subjects[s], "token.transfer", body))

    def coupon(self) -> None:
        """A subject earns enough, redeems the offer and the partner spends the coupon; the
        spend is also signed again (another nonce, another client) and, at times, the very
        same spend is sent by another client, the coupon redeemed twice, or spent by the
        rival partner."""
        s = self.rng.randrange(SUBJECTS)
        c = self.rng.randrange(len(self.scripts))
        others = self.others(c)
        self.reward(c, [self.claim(s, quantity_milli=self.rng.randint(600, 2000))])
        secret = self.rng.randbytes(16)
        body = {
            "offer": OFFER,
            "coupon": hashlib.sha256(secret).digest(),
            "price_mtok": PRICE_MTOK,
        }
        spend = self.sign(CAST.partner, "coupon.spend", {"secret": secret})
        self.scripts[c] += [self.sign(CAST.subjects[s], "token.redeem", body), spend]
        self.scripts[others[0]].append(self.sign(CAST.partner, "coupon.spend", {"secret": secret}))
        extra = {
            "same spend": spend,
            "redeemed twice": self.sign(CAST.subjects[s], "token.redeem", body),
            "rival": self.sign(CAST.rival, "coupon.spend", {"secret": secret}),
        }
        for raw in extra.values():
            if self.rng.random() < 0.4:
                self.scripts[self.rng.choice(others)].append(raw)


def plan(seed: int, clients: int, groups: int, start_ms: int) -> list[list[bytes]]:
    """Each client's transactions, drawn from `seed`: `groups` groups of rewards, overdrawing
    transfers and coupons (every group a double-spend attempt or holding one)."""
    p = _Plan(seed, clients, start_ms)
    p.rewards()
    for _ in range(groups - 1):
        p.rng.choice([p.rewards, p.overdraw, p.coupon, p.coupon])()
    return p.scripts


# -- what a Byzantine replica makes up -------------------------------------------------------


def forged_txs(key: SigningKey, genuine: Sequence[bytes], rng: random.Random) -> list[bytes]:
    """Transactions a Byzantine validator (signing key `key`) makes up to mint, steal or
    spend twice, none of which the contracts may accept: a reward it authors itself (claims
    copied from a genuine one, and one crediting its own key under a device's name it
    forged), a genuine reward altered after the vault signed it, a transfer and a redemption
    in a subject's name, and a spend of a coupon whose secret it saw."""
    until = max((txmod.decode(raw).valid_until for raw in genuine), default=VALID_MS)
    mine = pub(key).hex()
    forged_claim = {
        "device": pub(CAST.devices["cycling"]),
        "event": rng.randbytes(32),
        "commitment": bytes(32),
        "rule": "cycling",
        "quantity_milli": 10**9,
        "subject": mine,
        "at": 0,
    }
    forged_claim["signature"] = key.sign(events.claim_message(CHAIN_ID, forged_claim))
    out = [sign(key, "event.reward", {"claims": [forged_claim]}, until, rng.randbytes(16))]
    victim = rng.choice(CAST.subjects)
    steal = {"to": pub(key), "amount_mtok": 1000}
    out.append(_in_name_of(victim, key, "token.transfer", steal, until, rng.randbytes(16)))
    redeem = {"offer": OFFER, "coupon": rng.randbytes(32), "price_mtok": PRICE_MTOK}
    out.append(_in_name_of(victim, key, "token.redeem", redeem, until, rng.randbytes(16)))
    for raw in genuine:
        t = txmod.decode(raw)
        if t.type == "event.reward":
            out.append(sign(key, "event.reward", t.body, until, rng.randbytes(16)))
            claims = [{**cl, "subject": mine} for cl in t.body["claims"]]
            altered = txmod.SignedTx(
                t.type, t.author, t.nonce, t.valid_until, {"claims": claims}, t.sig
            )
            out.append(altered.encode())
        elif t.type == "coupon.spend":
            out.append(sign(key, "coupon.spend", t.body, until, rng.randbytes(16)))
            out.append(
                _in_name_of(CAST.partner, key, "coupon.spend", t.body, until, rng.randbytes(16))
            )
    return out


def _in_name_of(
    victim: SigningKey,
    key: SigningKey,
    tx_type: str,
    body: dict[str, Any],
    until: int,
    nonce: bytes,
) -> bytes:
    """A transaction naming `victim` as its author, signed by `key`."""
    signed = txmod.sign(key, CHAIN_ID, tx_type, body, valid_until=until, nonce=nonce)
    return txmod.SignedTx(tx_type, pub(victim), nonce, until, signed.body, signed.sig).encode()


def lying_result(result: bytes, beneficiary: bytes) -> bytes:
    """What a Byzantine replica answers a client instead of `result`: a refusal turned into
    success, a success that credited its own key a fortune. Deterministic, so colluding
    replicas tell the client the same lie."""
    outcome = codec.decode(result)
    if not isinstance(outcome, dict):
        return result
    return codec.encode({**outcome, "ok": True, "credited": [[beneficiary.hex(), 10**9]]})


def planted_snapshot(snapshot: bytes, beneficiary: bytes) -> bytes:
    """`snapshot` with a fortune credited to `beneficiary` (and minted, so the books still
    balance): what a Byzantine replica serves in a state transfer under a genuine root."""
    state = State.restore(snapshot)
    account = beneficiary.hex()
    lots = state.get("lots", account) or []
    state.put("lots", account, [*lots, [max([d for d, _ in lots], default=0) + 1, 10**9]])
    state.put("meta", "minted", 10**9 + (state.get("meta", "minted") or 0))
    return state.snapshot()
