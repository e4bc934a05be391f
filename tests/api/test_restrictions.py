"""Restriction (GDPR Art. 18) and objection (Art. 21) over HTTP, against four real replicas.

Attacks first, each changing nothing: restricting another subject (signed by another key, or
the path naming someone other than the author), a forged signature, a replay, lifting what is
not set, an override or an exemption asked by anyone but the DPO, grounds that are too long or
carry control characters. Then the stories: a citizen restricts processing at the utility, and
the bank's proof of address is refused, as are the utility's own reads of that citizen's
record (the list leaves it out and counts it); the DPO's legal-claims exemption lets the
utility read, never the bank, until it ends; the lift lets everything work again. An
objection on a dataset processed under legitimate interests stops the bank's access until the
DPO overrides it with grounds the citizen can read. Last, an erasure everywhere leaves no
trace of any of it on any replica.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from api.cli import main
from api.client import CivisClient
from api.client.wallet import Wallet as SubjectWallet
from tests.api.ledger_env import DAY_MS, LedgerEnv, Wallet
from tests.api.test_consented_access import (
    ADDRESS,
    api,
    notice,
    register_subject,
    setup_addresses,
    signed,
)
from tests.api.test_dpo_routes import _redactions_done
from tests.api.test_erasure_receipt import _serve
from tests.api.test_roles import upload_anchored

WITHHELD = "Civis-Withheld-Records"
GROUNDS = "Fraud prevention required by the operator's banking licence, art. 12"


def _now_ms() -> int:
    return int(time.time() * 1000)


def _grant(env: LedgerEnv, citizen: Wallet, dataset: str, purpose: str) -> None:
    api(env).grant_consent(
        citizen.key,
        consumer=env.consumer.id,
        purpose=purpose,
        notice=notice(env, purpose),
        dataset=dataset,
    )


def _post(env: LedgerEnv, kind: str, citizen: Wallet, signed_tx: dict[str, str]) -> httpx.Response:
    r: httpx.Response = env.client.post(f"/v1/subjects/{citizen.id}/{kind}", json=signed_tx)
    return r


def _restrict(env: LedgerEnv, citizen: Wallet, dataset: str, *, lift: bool = False) -> Any:
    body: dict[str, Any] = {"dataset": dataset}
    tx_type = "restriction.lift" if lift else "restriction.set"
    if not lift:
        body["ground"] = "accuracy_contested"
    r = _post(env, "restrictions", citizen, signed(env, citizen, tx_type, body))
    assert r.status_code == 201, r.text
    return r.json()


def _ask_address(env: LedgerEnv, dataset: str, citizen: Wallet) -> httpx.Response:
    """The bank's proof of address: does `citizen` live at ADDRESS?"""
    r: httpx.Response = env.client.post(
        "/v1/access-requests",
        headers=env.headers("consumer", env.consumer),
        json={
            "dataset_id": dataset,
            "purpose": "proof-of-address",
            "subjects": [citizen.id],
            "predicate": {"field": "address", "op": "eq", "value": ADDRESS},
        },
    )
    return r


def _standing(env: LedgerEnv, citizen: Wallet, headers: dict[str, str]) -> list[dict[str, Any]]:
    r = env.client.get(f"/v1/subjects/{citizen.id}/restrictions", headers=headers)
    assert r.status_code == 200, r.text
    out: list[dict[str, Any]] = r.json()["restrictions"]
    return out


def _records(env: LedgerEnv, dataset: str, utility: dict[str, str], **params: Any) -> Any:
    r = env.client.get(f"/v1/datasets/{dataset}/records", headers=utility, params=params)
    assert r.status_code == 200, r.text
    return r


def _subjects_read(r: httpx.Response) -> set[str]:
    return {rec["subject_id"] for rec in r.json()}


# -- attacks -----------------------------------------------------------------------------------


def test_nobody_restricts_for_another_and_a_refusal_changes_nothing(ledger_env: LedgerEnv) -> None:
    env = ledger_env
    citizen, other = register_subject(env), register_subject(env)
    dataset, _ = setup_addresses(env, [citizen, other])
    _grant(env, citizen, dataset, "proof-of-address")
    body = {"dataset": dataset, "ground": "unlawful_processing"}

    # the other subject's own transaction, posted under the citizen's path
    r = _post(env, "restrictions", citizen, signed(env, other, "restriction.set", body))
    assert r.status_code == 403 and "author is not the subject" in r.json()["detail"], r.text
    # the citizen's draft signed by the other subject's key
    draft = CivisClient(http=env.client).draft(citizen.id, "restriction.set", body)
    forged = other.key.sign(bytes.fromhex(draft["signing_payload"])).hex()
    r = _post(
        env, "restrictions", citizen, {"transaction": draft["transaction"], "signature": forged}
    )
    assert r.status_code == 403 and "signature does not verify" in r.json()["detail"], r.text
    # a transaction of another type, and lifting or withdrawing what is not set
    grant: dict[str, Any] = {
        "subject": citizen.id,
        "consumer": env.consumer.id,
        "purpose": "billing",
    }
    grant |= {"dataset": dataset, "valid_until": _now_ms() + DAY_MS}
    r = _post(env, "restrictions", citizen, signed(env, citizen, "consent.grant", grant))
    assert r.status_code == 422 and "restriction.set or restriction.lift" in r.json()["detail"]
    lift = signed(env, citizen, "restriction.lift", {"dataset": dataset})
    r = _post(env, "restrictions", citizen, lift)
    assert r.status_code == 409 and r.json()["detail"].startswith("not_restricted"), r.text
    withdraw = signed(env, citizen, "objection.withdraw", {"dataset": dataset})
    r = _post(env, "objections", citizen, withdraw)
    assert r.status_code == 409 and r.json()["detail"].startswith("not_objected"), r.text
    # the DPO's answers are the DPO's alone
    exempt = {"dataset": dataset, "subject": citizen.id, "until": _now_ms() + DAY_MS}
    override = {"dataset": dataset, "subject": citizen.id, "grounds": GROUNDS}
    for role, who in (("provider", env.provider), ("consumer", env.consumer), ("subject", citizen)):
        headers = env.headers(role, who)
        for path, order in (
            ("/v1/dpo/restriction-exemptions", exempt),
            ("/v1/dpo/objection-overrides", override),
        ):
            assert env.client.post(path, headers=headers, json=order).status_code == 403

    # nothing happened: no standing, the bank's question answered
    assert _standing(env, citizen, env.headers("subject", citizen)) == []
    assert _ask_address(env, dataset, citizen).json()["result"] is True

    # a replay of a restriction that was lifted does not set it again
    restrict = signed(env, citizen, "restriction.set", body)
    assert _post(env, "restrictions", citizen, restrict).status_code == 201
    _restrict(env, citizen, dataset, lift=True)
    r = _post(env, "restrictions", citizen, restrict)
    assert r.status_code == 409 and r.json()["detail"].startswith("replayed"), r.text
    assert _standing(env, citizen, env.headers("subject", citizen)) == []
    assert _ask_address(env, dataset, citizen).status_code == 200


def test_the_dpos_orders_are_checked_before_the_ledger(ledger_env: LedgerEnv) -> None:
    env = ledger_env
    citizen = register_subject(env)
    dataset, _ = setup_addresses(env, [citizen])
    dpo = env.headers("dpo", env.dpo)
    override = {"dataset": dataset, "subject": citizen.id, "grounds": GROUNDS}
    for grounds in ("", "x" * 501, "two\nlines", "bell\x07"):
        r = env.client.post(
            "/v1/dpo/objection-overrides", headers=dpo, json={**override, "grounds": grounds}
        )
        assert r.status_code == 422, (grounds, r.text)
    # nothing to answer yet: no objection, no restriction
    r = env.client.post("/v1/dpo/objection-overrides", headers=dpo, json=override)
    assert r.status_code == 409 and r.json()["detail"].startswith("not_objected"), r.text
    exempt = {"dataset": dataset, "subject": citizen.id, "until": _now_ms() + DAY_MS}
    r = env.client.post("/v1/dpo/restriction-exemptions", headers=dpo, json=exempt)
    assert r.status_code == 409 and r.json()["detail"].startswith("not_restricted"), r.text
    r = env.client.post(
        "/v1/dpo/restriction-exemptions", headers=dpo, json={**exempt, "ground": "research"}
    )
    assert r.status_code == 422
    assert _standing(env, citizen, dpo) == []


# -- the stories -------------------------------------------------------------------------------


def test_a_restriction_stops_the_bank_and_the_utility_until_lifted(ledger_env: LedgerEnv) -> None:
    """Restriction set: the bank's proof of address is refused and the utility's reads of the
    citizen withheld; the DPO's exemption lets the utility read, not the bank, until it ends;
    lifted: both work again."""
    env = ledger_env
    citizen, neighbour = register_subject(env), register_subject(env)
    dataset, utility = setup_addresses(env, [citizen, neighbour])
    _grant(env, citizen, dataset, "proof-of-address")
    [mine] = _records(env, dataset, utility, subject_id=citizen.id).json()
    record = f"/v1/records/{mine['record_id']}"
    assert _ask_address(env, dataset, citizen).json()["result"] is True
    assert _records(env, dataset, utility).headers[WITHHELD] == "0"

    out = _restrict(env, citizen, dataset)
    assert out["result"]["effective_from_height"] == out["receipt"]["block_height"] + 1
    r = _ask_address(env, dataset, citizen)
    assert r.status_code == 403 and r.json()["detail"].startswith("restricted"), r.text
    listed = _records(env, dataset, utility)
    assert _subjects_read(listed) == {neighbour.id} and listed.headers[WITHHELD] == "1"
    alone = _records(env, dataset, utility, subject_id=citizen.id)
    assert alone.json() == [] and alone.headers[WITHHELD] == "1"
    stream = env.client.get(
        f"/v1/datasets/{dataset}/records",
        headers={**utility, "Accept": "application/x-ndjson"},
    )
    assert stream.headers[WITHHELD] == "1"
    assert {json.loads(line)["subject_id"] for line in stream.text.splitlines()} == {neighbour.id}
    r = env.client.get(record, headers=utility)
    assert r.status_code == 409 and r.headers["content-type"] == "application/problem+json"
    assert r.json()["detail"].startswith("restricted") and ADDRESS not in r.text

    # the DPO's legal-claims exemption: the utility reads, the bank does not
    dpo = env.headers("dpo", env.dpo)
    exempt = {"dataset": dataset, "subject": citizen.id, "until": _now_ms() + DAY_MS}
    r = env.client.post("/v1/dpo/restriction-exemptions", headers=dpo, json=exempt)
    assert r.status_code == 201, r.text
    assert env.client.get(record, headers=utility).json()["payload"]["address"] == ADDRESS
    assert _records(env, dataset, utility).headers[WITHHELD] == "0"
    assert _ask_address(env, dataset, citizen).status_code == 403
    [standing] = _standing(env, citizen, env.headers("subject", citizen))
    assert standing["ground"] == "accuracy_contested" and standing["processing_stopped"]
    assert standing["exemption"]["ground"] == "legal_claims"
    assert standing["provider_reads_withheld"] is False
    # until it ends (the DPO shortens it): the utility is refused again
    soon = _now_ms() + 3_000
    r = env.client.post(
        "/v1/dpo/restriction-exemptions", headers=dpo, json={**exempt, "until": soon}
    )
    assert r.status_code == 201, r.text
    time.sleep(max(0.0, (soon - _now_ms()) / 1000 + 0.05))
    assert env.client.get(record, headers=utility).status_code == 409
    assert _standing(env, citizen, dpo)[0]["provider_reads_withheld"] is True

    _restrict(env, citizen, dataset, lift=True)
    assert _ask_address(env, dataset, citizen).json()["result"] is True
    assert env.client.get(record, headers=utility).status_code == 200
    assert _records(env, dataset, utility).headers[WITHHELD] == "0"
    assert _standing(env, citizen, dpo) == []


@pytest.fixture(scope="module")
def city(ledger_env: LedgerEnv) -> str:
    """A city service's dataset processed under legitimate interests (Art. 6(1)(f))."""
    env = ledger_env
    r = env.client.post(
        "/v1/datasets",
        headers=env.headers("provider", env.provider),
        json={
            "name": f"city-{uuid.uuid4().hex[:8]}",
            "category": "mobility",
            "purposes": ["billing"],
            "retention_days": 30,
            "legal_basis": "legitimate_interests",
        },
    )
    assert r.status_code == 201, r.text
    dataset: str = r.json()["id"]
    return dataset


def test_an_objection_stops_processing_and_the_dpos_override_resumes_it(
    ledger_env: LedgerEnv, city: str
) -> None:
    env = ledger_env
    citizen = register_subject(env)
    utility = env.headers("provider", env.provider)
    upload_anchored(env, utility, city, [(citizen, {"trip": "A-B"})])
    _grant(env, citizen, city, "billing")
    bank = env.headers("consumer", env.consumer)
    ask = {"dataset_id": city, "purpose": "billing", "subjects": [citizen.id]}

    def read() -> dict[str, Any]:
        r = env.client.post("/v1/access-requests", headers=bank, json=ask)
        assert r.status_code == 200, r.text
        out: dict[str, Any] = r.json()
        return out

    assert [rec["payload"] for rec in read()["records"]] == [{"trip": "A-B"}]
    # under consent or contract there is nothing to object to: consent is withdrawn instead
    contract, _ = setup_addresses(env, [citizen])
    r = _post(
        env, "objections", citizen, signed(env, citizen, "objection.set", {"dataset": contract})
    )
    assert r.status_code == 409 and r.json()["detail"].startswith("basis_is_consent"), r.text

    objection = signed(env, citizen, "objection.set", {"dataset": city})
    assert _post(env, "objections", citizen, objection).status_code == 201
    answer = read()
    assert answer["records"] == [] and answer["denied"] == [[citizen.id, "objected"]]
    assert _records(env, city, utility).headers[WITHHELD] == "1"

    dpo = env.headers("dpo", env.dpo)
    order = {"dataset": city, "subject": citizen.id, "grounds": GROUNDS}
    r = env.client.post("/v1/dpo/objection-overrides", headers=dpo, json=order)
    assert r.status_code == 201, r.text
    assert [rec["payload"] for rec in read()["records"]] == [{"trip": "A-B"}]
    assert _records(env, city, utility).headers[WITHHELD] == "0"
    r = env.client.post("/v1/dpo/objection-overrides", headers=dpo, json=order)
    assert r.status_code == 409 and r.json()["detail"].startswith("already_overridden")

    # the grounds are the citizen's to read (and the DPO's), nobody else's
    [standing] = _standing(env, citizen, env.headers("subject", citizen))
    assert standing["objected"] and not standing["processing_stopped"]
    assert standing["override"]["grounds"] == GROUNDS
    assert _standing(env, citizen, dpo) == [standing]
    for role, who in (
        ("subject", Wallet()),
        ("provider", env.provider),
        ("consumer", env.consumer),
    ):
        r = env.client.get(
            f"/v1/subjects/{citizen.id}/restrictions", headers=env.headers(role, who)
        )
        assert r.status_code == 403 and GROUNDS not in r.text

    # withdrawn: the override goes with it
    withdraw = signed(env, citizen, "objection.withdraw", {"dataset": city})
    assert _post(env, "objections", citizen, withdraw).status_code == 201
    assert _standing(env, citizen, dpo) == []


def _hits(root: Path, needles: dict[str, bytes]) -> list[tuple[str, str]]:
    """(needle's name, file) for every needle found in a file under `root`."""
    found = []
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        raw = path.read_bytes()
        found += [(what, str(path.relative_to(root))) for what, n in needles.items() if n in raw]
    return found


def test_an_erasure_leaves_no_restriction_objection_or_override_on_any_replica(
    ledger_env: LedgerEnv, city: str
) -> None:
    """Invariant 7, as tests/api/test_ledger_forgets.py checks it for consents: a subject with
    a restriction, an objection, the DPO's override (with grounds naming nobody but unique
    here) and an exemption is erased everywhere. Once every replica applied the redactions,
    no file of any replica holds the subject's key (raw or hex) nor the override's grounds,
    and no query finds them; a second subject with the same history is still found."""
    env = ledger_env
    erased, kept = register_subject(env), register_subject(env)
    utility = env.headers("provider", env.provider)
    upload_anchored(env, utility, city, [(erased, {"trip": "C-D"}), (kept, {"trip": "E-F"})])
    dpo = env.headers("dpo", env.dpo)
    tag = uuid.uuid4().hex
    for who in (erased, kept):
        _restrict(env, who, city)
        assert (
            _post(
                env, "objections", who, signed(env, who, "objection.set", {"dataset": city})
            ).status_code
            == 201
        )
        order = {"dataset": city, "subject": who.id, "grounds": f"{GROUNDS} {tag} {who.id[:8]}"}
        assert (
            env.client.post("/v1/dpo/objection-overrides", headers=dpo, json=order).status_code
            == 201
        )
        exempt = {"dataset": city, "subject": who.id, "until": _now_ms() + DAY_MS}
        assert (
            env.client.post("/v1/dpo/restriction-exemptions", headers=dpo, json=exempt).status_code
            == 201
        )
    applied = (env.cluster.status(0) or {}).get("redactions_applied", 0)
    r = env.client.post("/v1/erasures", headers=dpo, json={"subject_id": erased.id})
    assert r.status_code == 201, r.text
    listed = env.gateway.query("redactions", after=applied, limit=1000)["result"]
    assert len(listed) >= 6  # registration, restriction, objection, override, exemption, erasure
    _redactions_done(env, applied + len(listed))
    for i in range(4):
        env.cluster.status(i)  # lands each replica's held-back writes

    raw = bytes.fromhex(erased.id)
    gone = {
        "key raw": raw,
        "key hex": erased.id.encode(),
        "grounds": f"{tag} {erased.id[:8]}".encode(),
    }
    here = {
        "key raw": bytes.fromhex(kept.id),
        "key hex": kept.id.encode(),
        "grounds": f"{tag} {kept.id[:8]}".encode(),
    }
    root = env.cluster.directory
    # The control, needle by needle: each form the erased subject is looked for in is found
    # for the subject kept, so no needle's absence below comes from a scan that cannot see it.
    assert {what for what, _ in _hits(root, here)} == set(gone) == set(here)
    assert _hits(root, gone) == []
    assert env.gateway.query("restrictions", subject=erased.id)["result"] == []
    [left] = env.gateway.query("restrictions", dataset=city)["result"]
    assert left["subject"] == kept.id


@pytest.fixture(scope="module")
def base_url(ledger_env: LedgerEnv) -> Iterator[str]:
    """The module's app behind real HTTP, for the wallet's command line."""
    yield from _serve(ledger_env.client.app, "off")  # type: ignore[arg-type]


def test_the_wallet_restricts_and_objects_with_the_datasets_pseudonym(
    ledger_env: LedgerEnv,
    city: str,
    base_url: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """`civis-vault wallet restrict|object`: signed with the subject's pseudonym in that
    dataset (never the wallet's own key), posted through the API; a refusal says why and
    exits 2."""
    env = ledger_env
    key = tmp_path / "subject.key"
    assert main(["wallet", "new", "--key", str(key)]) == 0
    pseudonym = Wallet(SubjectWallet.open(key).pseudonym(city))
    api(env).register(pseudonym.key, "subject", "citizens")
    capsys.readouterr()

    def wallet(*argv: str) -> tuple[int, dict[str, Any], str]:
        code = main(["wallet", *argv, "--key", str(key), "--dataset", city, "--api", base_url])
        out, err = capsys.readouterr()
        return code, json.loads(out) if code == 0 else {}, err

    code, out, _ = wallet("restrict", "--ground", "objection_pending")
    assert code == 0 and out["pseudonym"] == pseudonym.id and out["dataset"] == city
    assert out["result"]["ground"] == "objection_pending"
    code, out, _ = wallet("object")
    assert code == 0 and out["receipt"]["block_height"] >= 1
    [standing] = _standing(env, pseudonym, env.headers("dpo", env.dpo))
    assert standing["ground"] == "objection_pending" and standing["objected"]
    assert wallet("restrict", "--lift")[0] == 0
    assert wallet("object", "--withdraw")[0] == 0
    code, _, err = wallet("restrict", "--lift")
    assert code == 2 and "not_restricted" in err
    assert _standing(env, pseudonym, env.headers("dpo", env.dpo)) == []
