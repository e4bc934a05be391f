"""The API's enumerations agree with the consent contracts' vocabularies
(ledger_bridge/contracts/vocabulary.py): roles, colleges, purposes, legal bases, disclosure
modes, predicate operators, erasure reasons and requesters, and the request register's kinds
and states.

Why a test: the contracts refuse what their vocabulary does not name, so an API that offers a
value the contracts lack fails on the ledger after the vault accepted it, and one that lacks a
value the contracts name refuses a request the cooperative allows. Some of the API's types are
the vocabulary's own `Literal`s; the others (the public client's, the CLI's, a route's subset)
are checked here, and every enum in openapi.yaml that uses a vocabulary word must stay within
that vocabulary.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, get_args, get_type_hints

import pytest
import yaml

from api.cli import bootstrap
from api.cli.demo import common as demo_cli
from api.client import client, types
from api.client import notices as client_notices
from api.http import schemas
from api.http.routes import access, erasures, notices
from api.services.requests import RequestOut
from ledger_bridge.contracts import vocabulary as v
from vault.models import API_ROLES, REQUEST_KINDS_SQL, REQUEST_PENDING_STATES, REQUEST_STATES_SQL

ROOT = Path(__file__).resolve().parent.parent
VOCABULARIES: dict[str, tuple[str, ...]] = {
    "ROLES": v.ROLES,
    "DEFAULT_COLLEGES": v.DEFAULT_COLLEGES,
    "DEFAULT_PURPOSES": v.DEFAULT_PURPOSES,
    "LEGAL_BASES": v.LEGAL_BASES,
    "MODES": v.MODES,
    "PREDICATE_OPS": v.PREDICATE_OPS,
    "ERASURE_REASONS": v.ERASURE_REASONS,
    "REQUESTERS": v.REQUESTERS,
    "REQUEST_KINDS": v.REQUEST_KINDS,
}


def _field(model: Any, name: str) -> tuple[Any, ...]:
    return get_args(model.model_fields[name].annotation)


def _quoted(check: str) -> tuple[str, ...]:
    """The values a check constraint lists (`kind IN ('a', 'b')`), in its order."""
    return tuple(re.findall(r"'([^']*)'", check))


# The API's types that list a whole vocabulary, in its order (openapi.yaml shows that order).
EQUAL = [
    ("DatasetIn.legal_basis", _field(schemas.DatasetIn, "legal_basis"), v.LEGAL_BASES),
    ("PredicateIn.op", _field(access.PredicateIn, "op"), v.PREDICATE_OPS),
    ("client.College", get_args(client.College), v.DEFAULT_COLLEGES),
    ("types.ConsentMode", get_args(types.ConsentMode), v.MODES),
    ("NoticeRights fields", tuple(notices.NoticeRights.model_fields), v.NOTICE_RIGHTS),
    ("client DEFAULT_RIGHTS", tuple(client_notices.DEFAULT_RIGHTS), v.NOTICE_RIGHTS),
    ("RequestOut.kind", _field(RequestOut, "kind"), v.REQUEST_KINDS),
    ("RequestOut.state", _field(RequestOut, "state"), v.REQUEST_STATES),
    (
        "types.SubjectRequest.kind",
        get_args(get_type_hints(types.SubjectRequest)["kind"]),
        v.REQUEST_KINDS,
    ),
    (
        "types.SubjectRequest.state",
        get_args(get_type_hints(types.SubjectRequest)["state"]),
        v.REQUEST_STATES,
    ),
    ("vault's register kinds", _quoted(REQUEST_KINDS_SQL), v.REQUEST_KINDS),
    ("vault's register states", _quoted(REQUEST_STATES_SQL), v.REQUEST_STATES),
]
# The API's choices that offer part of a vocabulary.
SUBSET = [
    ("client.Role", get_args(client.Role), v.ROLES),
    ("erasures.DPO_REASONS", erasures.DPO_REASONS, v.ERASURE_REASONS),
    ("vault API_ROLES", API_ROLES, v.ROLES),
    ("vault REQUEST_PENDING_STATES", REQUEST_PENDING_STATES, v.REQUEST_STATES),
    (
        "bootstrap colleges",
        (bootstrap.VAULT_COLLEGE, bootstrap.DPO_COLLEGE, demo_cli.RESIDENTS),
        v.DEFAULT_COLLEGES,
    ),
]


@pytest.mark.parametrize(("where", "api_values", "vocabulary"), EQUAL, ids=[e[0] for e in EQUAL])
def test_an_api_type_listing_a_vocabulary_lists_it_whole_and_in_order(
    where: str, api_values: tuple[str, ...], vocabulary: tuple[str, ...]
) -> None:
    assert api_values == vocabulary, where


@pytest.mark.parametrize(("where", "api_values", "vocabulary"), SUBSET, ids=[s[0] for s in SUBSET])
def test_an_api_choice_offers_only_vocabulary_words(
    where: str, api_values: tuple[str, ...], vocabulary: tuple[str, ...]
) -> None:
    assert api_values, where
    assert set(api_values) <= set(vocabulary), where


def test_the_resident_college_is_a_default_college_and_the_demo_s() -> None:
    assert v.RESIDENT_COLLEGE in v.DEFAULT_COLLEGES
    assert demo_cli.RESIDENTS == v.RESIDENT_COLLEGE


def _enums(node: Any, path: str = "") -> list[tuple[str, list[Any]]]:
    if isinstance(node, dict):
        here = [(path, node["enum"])] if isinstance(node.get("enum"), list) else []
        return here + [e for k, sub in node.items() for e in _enums(sub, f"{path}/{k}")]
    if isinstance(node, list):
        return [e for i, sub in enumerate(node) for e in _enums(sub, f"{path}/{i}")]
    return []


def stray_enums(document: dict[str, Any]) -> list[str]:
    """The enums of an OpenAPI document that use a vocabulary's word yet are within none of
    the vocabularies they touch (a value the contracts do not know, beside ones they do)."""
    out = []
    for path, values in _enums(document):
        touched = [name for name, vocab in VOCABULARIES.items() if set(values) & set(vocab)]
        if touched and not any(set(values) <= set(VOCABULARIES[n]) for n in touched):
            out.append(f"{path}: {values} (touches {', '.join(touched)})")
    return out


def test_every_openapi_enum_using_a_vocabulary_word_stays_within_that_vocabulary() -> None:
    document = yaml.safe_load((ROOT / "openapi.yaml").read_text())
    enums = _enums(document)
    # The document shows the vocabularies: the check is not vacuous.
    shown = {tuple(values) for _, values in enums}
    assert {v.ROLES, v.LEGAL_BASES, v.MODES, v.PREDICATE_OPS} <= shown
    assert stray_enums(document) == []


def test_a_drifted_enum_is_found() -> None:
    drifted = {"a": {"enum": [*v.LEGAL_BASES, "marketing"]}, "b": {"enum": ["error", "ok"]}}
    assert stray_enums(drifted) == [
        f"/a: {[*v.LEGAL_BASES, 'marketing']} (touches LEGAL_BASES, ERASURE_REASONS)"
    ]
