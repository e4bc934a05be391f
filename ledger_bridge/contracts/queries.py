"""Read-only queries over committed contract state.

Every answer is `{"height": h, "now": t, "result": ...}`: the height and contract time of the
last block the state reflects, so a caller knows how fresh it is (a consent granted in block h
is in force for decisions from h + 1). Queries never change state; a malformed query raises
ValueError, which the node returns to the caller as an error.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ledger_bridge.contracts import rules
from ledger_bridge.contracts.rules import fees, parameters, restriction, tokens
from ledger_bridge.contracts.state import State
from ledger_bridge.contracts.vocabulary import MODES

LIMIT_MAX = 1000


def _arg(q: dict[str, Any], name: str, kind: type, default: Any = None) -> Any:
    v = q.get(name, default)
    if v is None and default is None and name in q:
        return None
    if v is not None and (type(v) is not kind):
        raise ValueError(f"query argument {name} must be {kind.__name__}")
    return v


def _key(q: dict[str, Any], name: str) -> bytes:
    v = _arg(q, name, bytes)
    if v is None or len(v) != 32:
        raise ValueError(f"query argument {name} is a 32-byte public key")
    return bytes(v)


def _page(q: dict[str, Any]) -> tuple[int, int]:
    after = _arg(q, "after", int, 0)
    limit = _arg(q, "limit", int, 100)
    if after < 0 or not 1 <= limit <= LIMIT_MAX:
        raise ValueError(f"after >= 0 and 1 <= limit <= {LIMIT_MAX}")
    return after, limit


def _status(s: State, q: dict[str, Any]) -> Any:
    colleges = s.get("meta", "colleges")
    return {
        "chain_id": s.get("meta", "chain_id"),
        "colleges": {c: s.get("college_count", c) or 0 for c in colleges},
        # who decides: residents are members at once but vote once governance admits them
        "voters": {c: s.get("college_voters", c) or 0 for c in colleges},
        "purposes": sorted(k[0] for k in s.group("purpose", "all")),
        "validators": s.get("meta", "validators"),
    }


def _member(s: State, q: dict[str, Any]) -> Any:
    return s.get("member", _key(q, "key"))


def _members(s: State, q: dict[str, Any]) -> Any:
    status = _arg(q, "status", str)
    out = []
    for (key,) in s.group("member", "all"):
        m = s.get("member", key)
        if status is None or m["status"] == status:
            out.append({"key": key, **m})
    return out


def _consents(s: State, q: dict[str, Any]) -> Any:
    subject = _arg(q, "subject", str)
    if subject is None:
        raise ValueError("query consents needs subject")
    height = s.get("meta", "height") + 1  # what a decision in the next block would see
    now = s.get("meta", "now")
    out = []
    for key in s.group("consent", "by_subject", subject):
        entry = s.get("consent", *key)
        version = rules.version_at(entry, height)
        cur = entry["cur"]
        out.append(
            {
                "consumer": key[1],
                "scope": key[2],
                "purpose": key[3],
                "valid_until": cur[1],
                "granted": cur[2],
                "changed_at_height": cur[0],
                # what it discloses (contracts/disclosure.py); None: its purpose's narrowest
                "mode": cur[3] if len(cur) > 3 else None,
                "fields": cur[4] if len(cur) > 4 else None,
                # the notice the subject was shown (a revocation keeps its grant's); None for
                # grants that name none
                "notice": cur[5] if len(cur) > 5 else None,
                "in_force": version is not None and bool(version[2]) and now < version[1],
            }
        )
    return out


def _restrictions(s: State, q: dict[str, Any]) -> Any:
    """A subject's (in every dataset, or in `dataset`) or a dataset's restrictions,
    objections, overrides with their grounds and exemptions, as the next block sees them;
    `processing_stopped`: an access refuses the subject there (rules/restriction.py)."""
    return restriction.standings(s, _arg(q, "subject", str), _arg(q, "dataset", str))


def _accesses(s: State, q: dict[str, Any]) -> Any:
    after, limit = _page(q)
    subject = _arg(q, "subject", str)
    if subject is not None:
        ids = [k[0] for k in s.group("access", "subject", subject)]
    elif "consumer" in q:
        ids = [k[0] for k in s.group("access", "consumer", _key(q, "consumer"))]
    elif "dataset" in q:
        dataset = _arg(q, "dataset", str)
        if dataset is None:
            raise ValueError("query argument dataset is a dataset id")
        ids = [k[0] for k in s.group("access", "dataset", dataset)]
    else:
        last = s.get("meta", "next_access") or 0
        ids = list(range(1, last + 1))
    out = []
    for i in sorted(i for i in ids if i > after):
        a = s.get("access", i)
        if subject is not None:
            # The accesses that reached the subject's data (the index also holds those that
            # denied them, for forgetting), each with their own line, not other subjects'.
            if subject not in a["granted"]:
                continue
            a["granted"], a["denied_subjects"] = [subject], []
            a.pop("forgotten", None)
        out.append({"access": i, **a})
        if len(out) >= limit:
            break
    return out


def _recipients(s: State, q: dict[str, Any]) -> Any:
    """Who received `subject`'s data (Art. 15(1)(c)), from the access record: one row per
    (dataset, consumer) with the purposes it was granted for and the heights of those
    accesses, oldest first; `dataset` narrows to one dataset. Unpaged: a consumer's row grows
    by a height per access, and the caller (the export, a recipient notice before an erasure)
    needs them all. Forgotten with the subject's accesses by an erasure, so it is read before
    one commits."""
    subject = _arg(q, "subject", str)
    if subject is None:
        raise ValueError("query recipients needs subject")
    dataset = _arg(q, "dataset", str)
    rows: dict[tuple[str, bytes], dict[str, Any]] = {}
    for (i,) in sorted(s.group("access", "subject", subject)):
        a = s.get("access", i)
        if subject not in a["granted"] or (dataset is not None and a["dataset"] != dataset):
            continue
        row = rows.setdefault(
            (a["dataset"], a["consumer"]),
            {"dataset": a["dataset"], "consumer": a["consumer"], "purposes": [], "heights": []},
        )
        if a["purpose"] not in row["purposes"]:
            row["purposes"].append(a["purpose"])
        if not row["heights"] or row["heights"][-1] != a["height"]:
            row["heights"].append(a["height"])
    return [
        {**row, "purposes": sorted(row["purposes"])}
        for _, row in sorted(rows.items(), key=lambda kv: (kv[0][0], kv[0][1]))
    ]


def _erasures(s: State, q: dict[str, Any]) -> Any:
    """Every erasure, or those of `subject`: the erasures in a dataset of a subject still
    known. An erasure everywhere forgot its subject: nothing finds it by them any more (the
    subject keeps its receipt, docs/CONTRACTS.md "Forgetting")."""
    after, limit = _page(q)
    subject = _arg(q, "subject", str)
    if subject is not None:
        ids = sorted(k[0] for k in s.group("erasure", "subject", subject) if k[0] > after)
    else:
        last = s.get("meta", "next_erasure") or 0
        ids = list(range(after + 1, min(last, after + limit) + 1))
    return [{"erasure": i, **s.get("erasure", i)} for i in ids[:limit]]


def _read_record(s: State, q: dict[str, Any]) -> Any:
    """A batch of the vault's decryptions by its root ({count, height, time, tx}), or None."""
    root = _arg(q, "reads_root", bytes)
    if root is None or len(root) != 32:
        raise ValueError("query argument reads_root is a 32-byte hash")
    return s.get("read_record", root)


def _redactions(s: State, q: dict[str, Any]) -> Any:
    """The redaction entries n > `after`, for auditors: which stored transactions the
    replicas blank ([height, index]) and the height of the erasure that decided it."""
    after, limit = _page(q)
    last = s.get("meta", "next_redaction") or 0
    out = []
    for n in range(after + 1, min(last, after + limit) + 1):
        height, index, since = s.get("redaction", n)
        out.append({"redaction": n, "height": height, "index": index, "since": since})
    return out


def _erasure_requests(s: State, q: dict[str, Any]) -> Any:
    return [
        {"request": k[0], **s.get("erasure_request", k[0])}
        for k in s.group("erasure_request_open", "all")
    ]


def _rectifications(s: State, q: dict[str, Any]) -> Any:
    """With `subject`: the subject's rectification requests, each with the rectification that
    closed it (null while open). Otherwise the rectifications (`record.rectify`) of `dataset`,
    or all of them, paged by `after`/`limit`: the old and new keys each links."""
    subject = _arg(q, "subject", str)
    if subject is not None:
        out = []
        for (n,) in s.group("rectification_request", "subject", subject):
            req = s.get("rectification_request", n)
            done = req["rectification"]
            if done is not None:
                req["rectification"] = {"rectification": done, **s.get("rectification", done)}
            out.append({"request": n, **req})
        return out
    after, limit = _page(q)
    dataset = _arg(q, "dataset", str)
    if dataset is not None:
        ids = sorted(k[0] for k in s.group("rectification", "dataset", dataset) if k[0] > after)
    else:
        last = s.get("meta", "next_rectification") or 0
        ids = list(range(after + 1, min(last, after + limit) + 1))
    return [{"rectification": i, **s.get("rectification", i)} for i in ids[:limit]]


def _rectification_requests(s: State, q: dict[str, Any]) -> Any:
    """The open rectification requests (of `dataset`, if given), oldest first."""
    dataset = _arg(q, "dataset", str)
    out = []
    for (n,) in s.group("rectification_request_open", "all"):
        req = s.get("rectification_request", n)
        if dataset is None or req["dataset"] == dataset:
            out.append({"request": n, **req})
    return out


def _one(table: str, arg: str, kind: type) -> Callable[[State, dict[str, Any]], Any]:
    def get(s: State, q: dict[str, Any]) -> Any:
        v = _arg(q, arg, kind)
        if v is None:
            raise ValueError(f"query needs {arg}")
        return s.get(table, v)

    return get


def _nonce(s: State, q: dict[str, Any]) -> Any:
    """The transaction that used (author, nonce), while the contracts remember it. The entry
    is keyed by SHA-256(author || nonce) (`rules.nonce_id`): whoever asks knows both."""
    nonce = _arg(q, "nonce", bytes)
    if nonce is None or len(nonce) != 16:
        raise ValueError("query argument nonce is 16 bytes")
    return s.get("nonce", rules.nonce_id(_key(q, "author"), nonce))


def _proposals(s: State, q: dict[str, Any]) -> Any:
    after, limit = _page(q)
    last = s.get("meta", "next_proposal") or 0
    return [
        {"proposal": i, **s.get("proposal", i)}
        for i in range(after + 1, min(last, after + limit) + 1)
    ]


def _purposes(s: State, q: dict[str, Any]) -> Any:
    """Approved purposes with the height that approved them (0: founding). Unpaged: only a
    governance vote adds one, so the list grows as slowly as the cooperative decides."""
    out = []
    for (purpose,) in s.group("purpose", "all"):
        declared = s.get("purpose_terms", purpose)
        if declared is not None:
            declared.pop("declared", None)
        out.append(
            {
                "purpose": purpose,
                "approved_at_height": s.get("purpose", purpose),
                # what it may disclose; None: nothing, until governance declares it
                "declaration": declared,
            }
        )
    return out


def _colleges(s: State, q: dict[str, Any]) -> Any:
    """Each college's members, voting members, and the yes-votes a proposal made now needs."""
    resident = s.get("meta", "resident_college")
    out = []
    for college in s.get("meta", "colleges"):
        voters = s.get("college_voters", college) or 0
        out.append(
            {
                "college": college,
                "members": s.get("college_count", college) or 0,
                "voters": voters,
                # more than half of the voting members (rules.governance_vote)
                "majority": voters // 2 + 1,
                "resident": college == resident,
            }
        )
    return out


def _governance(s: State, q: dict[str, Any]) -> Any:
    """The rules the contracts decide proposals by, as the replicas' own code holds them."""
    return {
        "colleges": s.get("meta", "colleges"),
        "resident_college": s.get("meta", "resident_college"),
        "actions": sorted(rules.ACTIONS),
        "voting_period_max_ms": rules.VOTING_MAX_MS,
    }


# -- eco-citizen tokens (rules/devices.py, rules/tokens.py) ------------------------------------


def _account(q: dict[str, Any], name: str) -> str:
    """A member key as a token account: 32 bytes, or their 64 hex characters."""
    v = q.get(name)
    if isinstance(v, bytes) and len(v) == 32:
        return v.hex()
    if isinstance(v, str) and len(v) == 64 and all(ch in "0123456789abcdef" for ch in v):
        return v
    raise ValueError(f"query argument {name} is a 32-byte key (or its lowercase hex)")


def _device(s: State, q: dict[str, Any]) -> Any:
    return s.get("device", _key(q, "device"))


def _event(s: State, q: dict[str, Any]) -> Any:
    """A device's event as rewarded ({subject, rule, minted, height, index, upload}; {} once
    its record left the vault, `redaction.blank_events`), or None: how the vault tells, for a
    batch it holds the details of, whether the reward reached a block (its answer may have
    been lost to a timeout)."""
    v = q.get("event")
    if isinstance(v, str) and len(v) == 64 and all(ch in "0123456789abcdef" for ch in v):
        v = bytes.fromhex(v)
    if not isinstance(v, bytes) or len(v) != 32:
        raise ValueError("query argument event is a 32-byte id (or its lowercase hex)")
    return s.get("event", _key(q, "device"), bytes(v))


def _devices(s: State, q: dict[str, Any]) -> Any:
    operator = _key(q, "operator") if q.get("operator") is not None else None
    out = []
    for (device,) in s.group("device", "all"):
        d = s.get("device", device)
        if operator is None or d["operator"] == operator:
            out.append({"device": device, **d})
    return out


def _reward_rules(s: State, q: dict[str, Any]) -> Any:
    """Each rule as an event in the next block would be rewarded by (retired ones at rate 0),
    with the height its version was enacted at."""
    height = s.get("meta", "height") + 1
    out = []
    for (rule,) in s.group("reward_rule", "all"):
        version = rules.version_at(s.get("reward_rule", rule), height)
        if version is not None:
            out.append({"rule": rule, **version[1], "since_height": version[0]})
    return out


def _balance(s: State, q: dict[str, Any]) -> Any:
    account = _account(q, "account")
    return {"mtok": tokens.balance(s, account), "lots": s.get("lots", account) or []}


def _offers(s: State, q: dict[str, Any]) -> Any:
    partner = _key(q, "partner") if q.get("partner") is not None else None
    out = []
    for (offer,) in s.group("offer", "all"):
        o = s.get("offer", offer)
        if partner is None or o["partner"] == partner:
            out.append({"offer": offer, **o})
    return out


def _coupon(s: State, q: dict[str, Any]) -> Any:
    coupon = _arg(q, "coupon", bytes)
    if coupon is None or len(coupon) != 32:
        raise ValueError("query argument coupon is a 32-byte hash")
    return s.get("coupon", coupon)


def _redemptions(s: State, q: dict[str, Any]) -> Any:
    """A partner's spent coupons: [[day, category, count, mtok], ...] by day and category."""
    partner = _key(q, "partner")
    return [
        [day, category, *s.get("redemptions", partner, day, category)]
        for _, day, category in s.group("redemptions", "by_partner", partner)
    ]


def _token_statement(s: State, q: dict[str, Any]) -> Any:
    """An account's token movements n > `after` (minted, received, sent, redeemed, expired),
    and its totals over all of them with its balance."""
    account = _account(q, "account")
    after, limit = _page(q)
    totals = s.get("token_totals", account) or {"n": 0, **dict.fromkeys(tokens.STATEMENT_KINDS, 0)}
    last = totals.pop("n")
    entries = [
        {"n": n, **s.get("token_statement", account, n)}
        for n in range(after + 1, min(last, after + limit) + 1)
    ]
    return {"entries": entries, "totals": {**totals, "balance": tokens.balance(s, account)}}


def _supply(s: State, q: dict[str, Any]) -> Any:
    """The supply counters and the sum of the balances: minted = balances + redeemed +
    expired + forfeited."""
    out = {k: s.get("meta", k) or 0 for k in tokens.SUPPLY}
    out["balances"] = sum(tokens.balance(s, a) for (a,) in s.group("lots", "all"))
    return out


# -- paid access (rules.fees) -----------------------------------------------------------------


def _statement(s: State, q: dict[str, Any]) -> Any:
    """A member's credit statement: its entries n > `after` (at most `limit`), oldest first,
    and its totals. Entries name datasets and access numbers, never a subject."""
    after, limit = _page(q)
    member = _key(q, "member")
    book = fees.book_of(s, member)
    last = book["entries"]
    return {
        "entries": [
            {"n": n, **s.get("statement", member, n)}
            for n in range(after + 1, min(last, after + limit) + 1)
        ],
        "totals": {
            "paid": book["paid"],
            "earned": book["earned"],
            "deposited": book["deposited"],
            "balance": fees.credit_of(s, member),
        },
    }


def _prices(s: State, q: dict[str, Any]) -> Any:
    """What one answer costs per disclosure mode, in cents: the mode's own price or, without
    one, the nearest wider mode's (`fees.price_of`); a mode absent is free. None for a
    dataset not registered."""
    dataset = _arg(q, "dataset", str)
    if dataset is None:
        raise ValueError("query prices needs dataset")
    if not s.has("dataset", dataset):
        return None
    due = {m: fees.price_of(s, dataset, m) for m in MODES}
    return {m: cents for m, cents in due.items() if cents}


QUERIES: dict[str, Callable[[State, dict[str, Any]], Any]] = {
    "status": _status,
    "member": _member,
    "members": _members,
    "dataset": _one("dataset", "dataset", str),
    "upload": _one("upload", "upload", str),
    "access": _one("access", "access", int),
    "erasure": _one("erasure", "erasure", int),
    "proposal": _one("proposal", "proposal", int),
    "proposals": _proposals,
    "purposes": _purposes,
    "colleges": _colleges,
    "governance": _governance,
    "nonce": _nonce,
    "consents": _consents,
    "restrictions": _restrictions,
    "accesses": _accesses,
    "recipients": _recipients,
    "erasures": _erasures,
    "erasure_requests": _erasure_requests,
    "read_record": _read_record,
    "redactions": _redactions,
    "parameters": lambda s, q: parameters.values(s),
    "device": _device,
    "devices": _devices,
    "event": _event,
    "reward_rules": _reward_rules,
    "balance": _balance,
    "offers": _offers,
    "coupon": _coupon,
    "redemptions": _redemptions,
    "token_statement": _token_statement,
    "supply": _supply,
    # paid access
    "statement": _statement,
    "prices": _prices,
    # rectification
    "rectification_request": _one("rectification_request", "request", int),
    "rectification_requests": _rectification_requests,
    "rectifications": _rectifications,
}


def answer(state: State, q: Any) -> dict[str, Any]:
    if not isinstance(q, dict) or q.get("q") not in QUERIES:
        raise ValueError(f"a query is a map with q in {', '.join(QUERIES)}")
    return {
        "height": state.get("meta", "height"),
        "now": state.get("meta", "now"),
        "result": QUERIES[q["q"]](state, q),
    }
