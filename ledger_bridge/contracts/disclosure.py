"""What a consent lets a consumer learn: the purpose's declaration, the consent's mode and
fields, and the predicate questions left in a period. Part of the deterministic contracts
(`rules` calls it): pure functions of the state and the request, no I/O, no clock.

Why bounds on the ledger and not only in the vault: the vault delivers what the contracts
granted, and the access transaction is the record of what was asked. If the bound lived in
the vault alone, the ledger would show a bank "granted" a subject with no trace of whether it
got a yes/no or the whole record, and nobody could hold the vault to the consent.

Three bounds, checked in this order:
- the purpose, as governance declared it (`approve_purpose`): the fields it needs, the modes
  its consents may have, the operators its predicate questions may use, and a budget of
  questions per subject, consumer and period. A request beyond it is refused whole
  (`exceeds_purpose`): no consent can make it lawful.
- the subject's consent: its mode (predicate < projection < full) and, below full, its fields.
  A request beyond it is denied for that subject (`exceeds_consent`).
- the budget: a predicate question granted for a subject spends one question of that
  (subject, consumer, purpose) for the period; beyond it the subject is denied
  (`budget_exhausted`). Why a budget and not only operators: `eq` alone still confirms
  guesses, one per question, and a low-entropy value (a birth year) falls to a hundred.

A purpose approved without a declaration (a founding name in a genesis, an older state, an
`approve_purpose` naming none) declares nothing: consents to it may be given, and every
access under it is refused until governance declares it. Nothing is disclosed by default.
"""

from __future__ import annotations

from typing import Any, NamedTuple

from ledger_bridge.contracts.state import State
from ledger_bridge.contracts.vocabulary import MODES

DAY_MS = 24 * 3600 * 1000
UNDECLARED: dict[str, Any] = {
    "fields": [],
    "modes": [MODES[0]],
    "operators": [],
    "questions": 0,
    "period_days": 1,
    "declared": False,
}


class Refusal(NamedTuple):
    """A consent the rules refuse: `code` (invalid, exceeds_purpose) and why."""

    code: str
    message: str


class Ask(NamedTuple):
    """What an access asks for: `mode` and the record fields it reads or asks about."""

    mode: str
    fields: tuple[str, ...]
    op: str | None = None


def ask_of(body: dict[str, Any]) -> Ask:
    """A predicate is a question (its one field); `fields` a projection; neither: full."""
    predicate: dict[str, Any] | None = body.get("predicate")
    if predicate is not None:
        return Ask("predicate", (predicate["field"],), predicate["op"])
    if "fields" in body:
        return Ask("projection", tuple(body["fields"]))
    return Ask("full", ())


def rank(mode: str) -> int:
    return MODES.index(mode)


def terms(state: State, purpose: str) -> dict[str, Any]:
    """The purpose's declaration, or UNDECLARED."""
    declared: dict[str, Any] | None = state.get("purpose_terms", purpose)
    return UNDECLARED if declared is None else declared


def declaration(raw: dict[str, Any]) -> dict[str, Any]:
    """A declaration as stored: lists sorted (modes narrowest first), so equal declarations
    are equal bytes. Raises ValueError naming what is inconsistent."""
    modes = sorted(raw["modes"], key=rank)
    out = {
        "fields": sorted(raw["fields"]),
        "modes": modes,
        "operators": sorted(raw["operators"]),
        "questions": raw["questions"],
        "period_days": raw["period_days"],
        "declared": True,
    }
    if modes[-1] == "projection" and not out["fields"]:
        raise ValueError("a purpose disclosing projections declares their fields")
    if out["operators"] and not out["questions"]:
        raise ValueError("a purpose with predicate operators declares a question budget")
    if modes == ["predicate"] and not (out["operators"] and out["fields"]):
        raise ValueError("a predicate-only purpose declares its fields and operators")
    return out


def covers(mode: str, fields: list[str], field: str) -> bool:
    """Whether a purpose's widest mode or a consent's mode, with its fields, covers a field:
    whole records cover every field."""
    return mode == "full" or field in fields


def beyond_purpose(t: dict[str, Any], purpose: str, ask: Ask) -> str | None:
    """Why `ask` exceeds the purpose's declaration (a message naming no value), or None."""
    if not t["declared"]:
        return f"purpose {purpose} declares no fields or modes yet; governance declares them"
    widest: str = t["modes"][-1]
    if rank(ask.mode) > rank(widest):
        return f"purpose {purpose} discloses at most {widest}: {_mode_words(widest)}"
    if ask.op is not None and ask.op not in t["operators"]:
        allowed = ", ".join(t["operators"]) or "none"
        return f"purpose {purpose} allows the predicate operators: {allowed}"
    outside = [f for f in ask.fields if not covers(widest, t["fields"], f)]
    if outside:
        return f"field {outside[0]} is not among purpose {purpose}'s fields"
    return None


def _mode_words(mode: str) -> str:
    return {
        "predicate": "yes/no answers only",
        "projection": "named fields, never whole records",
        "full": "whole records",
    }[mode]


def grant_terms(
    t: dict[str, Any], purpose: str, mode: str | None, fields: list[str] | None
) -> tuple[str | None, list[str] | None] | Refusal:
    """A consent's (mode, fields) as stored, or why the rules refuse them.

    Unnamed, the mode is the narrowest the purpose allows and the fields all of the
    purpose's. Under an undeclared purpose an unnamed mode is stored as None: the consent
    follows the declaration governance makes later, at its narrowest."""
    if not t["declared"] and mode is None and fields is None:
        return None, None
    chosen = mode if mode is not None else t["modes"][0]
    if chosen not in t["modes"]:
        return Refusal(
            "exceeds_purpose", f"purpose {purpose} allows the modes: {', '.join(t['modes'])}"
        )
    if chosen == "full":
        if fields is not None:
            return Refusal("invalid", "a full consent discloses whole records; it names no fields")
        return chosen, []
    named = sorted(fields) if fields is not None else list(t["fields"])
    outside = [f for f in named if not covers(t["modes"][-1], t["fields"], f)]
    if outside:
        return Refusal(
            "exceeds_purpose", f"field {outside[0]} is not among purpose {purpose}'s fields"
        )
    if not named:
        return Refusal(
            "invalid", f"a {chosen} consent names its fields (purpose {purpose} declares none)"
        )
    return chosen, named


def consent_terms(version: list[Any], t: dict[str, Any]) -> tuple[str, list[str]]:
    """The (mode, fields) a consent version allows: as granted, or, for a version that named
    none (granted under an undeclared purpose, or before consents had modes), the purpose's
    narrowest mode and its fields."""
    mode = version[3] if len(version) > 3 else None
    if mode is None:
        return t["modes"][0], list(t["fields"])
    fields: list[str] = version[4]
    return mode, fields


def allows(version: list[Any], t: dict[str, Any], ask: Ask) -> bool:
    mode, fields = consent_terms(version, t)
    if rank(ask.mode) > rank(mode):
        return False
    return all(covers(mode, fields, f) for f in ask.fields)


def spend_question(
    state: State, subject: str, consumer: bytes, purpose: str, t: dict[str, Any], now: int
) -> bool:
    """Spend one predicate question of (subject, consumer, purpose) in the current period;
    False when the period's budget is spent. One entry per triple, [period, count]: a new
    period overwrites the last one's, so the table never grows with time."""
    period = now // (t["period_days"] * DAY_MS)
    entry: list[int] | None = state.get("questions", subject, consumer, purpose)
    used = entry[1] if entry is not None and entry[0] == period else 0
    if used >= t["questions"]:
        return False
    state.put("questions", subject, consumer, purpose, [period, used + 1])
    return True
