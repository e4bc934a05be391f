"""The DPO's page session ends when the DPO signs out, on the server, not only in the browser.

The attack: a DPO session cookie copied before sign-out (a shared machine, a proxy log, malware
in the browser profile) replayed after it. Clearing the cookie in the browser does nothing to
that copy; the server must refuse it.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import update

from api.http.app import create_app
from api.http.settings import Settings
from api.services.dpo_sessions import SESSION_COOKIE
from tests.api.conftest import MakeKey, api_database_url, api_settings, make_key  # noqa: F401
from vault import db
from vault.models import ApiKey


@pytest.fixture(scope="module")
def client(api_settings: Settings, api_database_url: str) -> Iterator[TestClient]:  # noqa: F811
    app = create_app(api_settings, database_url=api_database_url)
    with TestClient(app, raise_server_exceptions=False) as c:
        yield c


def _sign_in(client: TestClient, headers: dict[str, str]) -> str:
    key = headers["Authorization"].removeprefix("Bearer ")
    r = client.post(
        "/dpo/session",
        content=f"api_key={key}",
        headers={"Content-Type": "application/x-www-form-urlencoded"},
        follow_redirects=False,
    )
    assert r.status_code == 303, r.text
    return str(r.headers["set-cookie"].split(";")[0].split("=", 1)[1])


def _page(client: TestClient, token: str) -> int:
    return int(client.get("/dpo", headers={"Cookie": f"{SESSION_COOKIE}={token}"}).status_code)


def test_a_cookie_replayed_after_sign_out_is_refused(
    client: TestClient,
    make_key: MakeKey,  # noqa: F811
) -> None:
    dpo = make_key("dpo")
    token = _sign_in(client, dpo)
    assert _page(client, token) == 200
    out = client.post(
        "/dpo/logout", headers={"Cookie": f"{SESSION_COOKIE}={token}"}, follow_redirects=False
    )
    assert out.status_code == 303
    assert _page(client, token) == 401


def test_signing_out_ends_only_that_session(
    client: TestClient,
    make_key: MakeKey,  # noqa: F811
) -> None:
    dpo = make_key("dpo")
    laptop, desk = _sign_in(client, dpo), _sign_in(client, dpo)
    assert laptop != desk
    client.post(
        "/dpo/logout", headers={"Cookie": f"{SESSION_COOKIE}={laptop}"}, follow_redirects=False
    )
    assert (_page(client, laptop), _page(client, desk)) == (401, 200)


def test_a_made_up_or_malformed_cookie_is_refused(
    client: TestClient,
    make_key: MakeKey,  # noqa: F811
) -> None:
    token = _sign_in(client, make_key("dpo"))
    forged = token[:-2] + ("AA" if not token.endswith("AA") else "BB")
    for bad in (forged, "v2." + "A" * 43, "x" * 4000, ""):
        assert _page(client, bad) == 401
    # Signing out with a cookie that names no session is harmless.
    r = client.post(
        "/dpo/logout", headers={"Cookie": f"{SESSION_COOKIE}={forged}"}, follow_redirects=False
    )
    assert r.status_code == 303
    assert _page(client, token) == 200


def _expire(database_url: str, token: str) -> None:
    key_id = token.split("_")[1]
    engine = db.make_engine(database_url)
    try:
        with engine.begin() as conn:
            conn.execute(
                update(ApiKey)
                .where(ApiKey.id == key_id)
                .values(expires_at=dt.datetime.now(dt.UTC) - dt.timedelta(minutes=1))
            )
    finally:
        engine.dispose()


def test_a_session_ends_with_the_key_that_opened_it_and_the_form_says_why(
    client: TestClient,
    make_key: MakeKey,  # noqa: F811
    api_database_url: str,  # noqa: F811
) -> None:
    dpo = make_key("dpo")
    token = _sign_in(client, dpo)
    assert _page(client, token) == 200
    _expire(api_database_url, dpo["Authorization"].removeprefix("Bearer "))
    assert _page(client, token) == 401
    page = client.get("/dpo", headers=dpo)
    assert page.status_code == 401 and page.headers["content-type"].startswith("text/html")
    assert "expired" in page.text
    key = dpo["Authorization"].removeprefix("Bearer ")
    form = client.post(
        "/dpo/session",
        content=f"api_key={key}",
        headers={"Content-Type": "application/x-www-form-urlencoded"},
        follow_redirects=False,
    )
    assert form.status_code == 401 and "expired" in form.text
    assert key.split("_", 2)[2] not in form.text  # the secret is never echoed
