"""The cooperative's economic parameters: what governance sets by vote, and their defaults.

Why a table and not one governance action per parameter: each is one integer the contracts
read (the commission on paid access, the k of k-anonymous statistics, the lifetime of unspent
tokens), decided the same way (unanimity of colleges, majority within each) and bounded the
same way. One action, `set_parameter`, changes any of them; the table bounds each value, so a
proposal outside the bounds is refused when it is made, not when it passes.

A parameter never set reads its default, so a chain founded before a parameter existed needs
no migration: its state simply holds no entry for it.
"""

from __future__ import annotations

from typing import Any, NamedTuple

from ledger_bridge.contracts.rules.common import Ctx, check
from ledger_bridge.contracts.state import State
from ledger_bridge.contracts.vocabulary import PARAMETER_NAMES, ParameterName


class Parameter(NamedTuple):
    default: int
    low: int
    high: int
    meaning: str


PARAMETERS: dict[ParameterName, Parameter] = {
    "commission_bp": Parameter(
        500, 0, 10_000, "the cooperative's commission on a paid access, in basis points"
    ),
    "k_anonymity": Parameter(
        10, 2, 1_000, "the fewest subjects a published statistics cell may count"
    ),
    "token_expiry_days": Parameter(
        0, 0, 36_600, "days after which unspent eco-citizen tokens expire (0: never)"
    ),
}


assert tuple(PARAMETERS) == PARAMETER_NAMES  # one list of names, in the vocabulary's order


def value(state: State, name: ParameterName) -> int:
    """The parameter's current value: the last one governance set, else its default."""
    v: int | None = state.get("parameter", name)
    return PARAMETERS[name].default if v is None else v


def values(state: State) -> dict[str, int]:
    return {name: value(state, name) for name in PARAMETERS}


def validate_set_parameter(c: Ctx, action: dict[str, Any]) -> dict[str, Any]:
    p = PARAMETERS[action["parameter"]]  # the body's Enum admits only the vocabulary's names
    v: int = action["value"]
    check(p.low <= v <= p.high, f"{action['parameter']} must be in [{p.low}, {p.high}]")
    return {"parameter": action["parameter"], "value": v}


def enact_set_parameter(c: Ctx, action: dict[str, Any]) -> None:
    c.state.put("parameter", action["parameter"], action["value"])
