"""Hostile input on the economy's read routes: a number no JSON client reads exactly, as a
page cursor, is a 422 problem+json, never a 500 or a 503 from the ledger's encoder."""

from __future__ import annotations

import pytest

from tests.api.ledger_env import LedgerEnv

pytestmark = pytest.mark.timeout(300)


@pytest.mark.parametrize("after", [2**53, 2**64, 10**40])
def test_a_statement_cursor_beyond_json_integers_is_a_422(
    ledger_env: LedgerEnv, after: int
) -> None:
    env = ledger_env
    dpo = env.headers("dpo")
    for path in (
        f"/v1/members/{env.provider.id}/statement",
        f"/v1/accounts/{env.provider.id}/statement",
    ):
        r = env.client.get(path, params={"after": after}, headers=dpo)
        assert r.status_code == 422, (path, r.status_code, r.text)
        assert r.headers["content-type"].startswith("application/problem+json")
        assert str(after) not in r.text
