"""The records of processing (Art. 30) and the DPIA draft (Art. 35) over HTTP, against four real
replica processes: every Art. 30(1) field is there, from the registry, the ledger and the
running system; what the controller must give and did not is a finding of the DPO's audit; the
DPIA downloads as Markdown and as a PDF whose structure and text read back.

This module has a database of its own (the ledger environment's): the controller's record is
the vault's one row, and the audit reads the whole vault.
"""

from __future__ import annotations

import json
import time
import uuid
from typing import Any

import pytest
from sqlalchemy.orm import Session, sessionmaker

from api.client import CivisClient
from api.services.records_of_processing import ControllerIn, Transfer, set_controller
from tests.api.ledger_env import LedgerEnv, Wallet
from tests.api.ledger_env import ledger_cluster as ledger_cluster  # fixture
from tests.api.ledger_env import ledger_env as ledger_env  # fixture
from tests.api.test_consented_access import notice
from tests.api.test_documents import parse_pdf

DATASET_NAME = "Compteurs (Lyon) # 3"


def _sessions(env: LedgerEnv) -> sessionmaker[Session]:
    sessions: sessionmaker[Session] = env.client.app.state.sessions  # type: ignore[attr-defined]
    return sessions


def _audit_gaps(env: LedgerEnv) -> set[str]:
    r = env.client.get("/v1/dpo/retention-audit", headers=env.headers("dpo", env.dpo))
    assert r.status_code == 200, r.text
    return {
        f["refs"]["field"]
        for f in r.json()["findings"]
        if f["code"] == "processing-record-incomplete"
    }


def _record(env: LedgerEnv) -> dict[str, Any]:
    r = env.client.get("/v1/dpo/records-of-processing", headers=env.headers("dpo", env.dpo))
    assert r.status_code == 200, r.text
    body: dict[str, Any] = r.json()
    return body


@pytest.fixture(scope="module")
def scene(ledger_env: LedgerEnv) -> str:
    """A dataset with a subject's record, read once by the consumer under the subject's
    consent: the consumer is a recipient. Its id."""
    env = ledger_env
    subject = Wallet()
    api = CivisClient(http=env.client)
    api.register(subject.key, "subject", "citizens")
    provider = api.with_key(env.headers("provider", env.provider)["Authorization"][7:])
    dataset = provider.create_dataset(
        DATASET_NAME,
        category="energy",
        purposes=["billing"],
        retention_days=400,
        legal_basis="consent",
    )["id"]
    line = json.dumps({"subject_id": subject.id, "payload": {"kwh": 12}}) + "\n"
    upload = provider.upload(dataset, line.encode(), media_type="application/x-ndjson")
    assert upload["state"] == "anchored"
    api.grant_consent(
        subject.key,
        consumer=env.consumer.id,
        purpose="billing",
        notice=notice(env, "billing"),
        dataset=dataset,
    )
    consumer = api.with_key(env.headers("consumer", env.consumer)["Authorization"][7:])
    deadline = time.monotonic() + 10
    while not consumer.access(dataset, "billing", subjects=[subject.id])["records"]:
        assert time.monotonic() < deadline, "the consent never came into force"
        time.sleep(0.1)
    return str(dataset)


def _name_the_consumer(env: LedgerEnv, name: str) -> None:
    r = env.client.put(
        f"/v1/dpo/members/{env.consumer.id}/name",
        json={"display_name": name, "contact": "dpo@banque.example"},
        headers=env.headers("dpo", env.dpo),
    )
    assert r.status_code == 200, r.text


def test_every_art30_field_is_there_and_a_missing_one_is_a_finding(
    ledger_env: LedgerEnv, scene: str
) -> None:
    """The only test of the module that sets the controller's record (the vault's one row)."""
    env, dataset = ledger_env, scene
    body = _record(env)
    assert body["controller"] is None and body["dpo"] is None
    assert body["missing"] == ["controller"] and _audit_gaps(env) == {"controller"}

    with _sessions(env)() as session, session.begin():
        set_controller(
            session,
            ControllerIn(
                name="Coopérative Civis (SCIC)",
                address="1 place de la Comédie, 69001 Lyon",
                email="contact@civis.example",
                dpo_name="Délégué à la protection des données",
                transfers=[Transfer(recipient="Backup Inc.", country="US", safeguard="")],
            ),
        )
    gaps = {"dpo.email", "transfers[0].safeguard"}
    body = _record(env)
    assert set(body["missing"]) == gaps and _audit_gaps(env) == gaps

    with _sessions(env)() as session, session.begin():
        set_controller(
            session,
            ControllerIn(
                name="Coopérative Civis (SCIC)",
                address="1 place de la Comédie, 69001 Lyon",
                email="contact@civis.example",
                dpo_name="Délégué à la protection des données",
                dpo_email="dpo@civis.example",
            ),
        )
    _name_the_consumer(env, "Banque du Rhône")
    body = _record(env)
    assert body["missing"] == [] and _audit_gaps(env) == set()
    assert body["controller"]["name"] == "Coopérative Civis (SCIC)"
    assert body["dpo"] == {
        "name": "Délégué à la protection des données",
        "address": "",
        "email": "dpo@civis.example",
        "phone": "",
    }
    assert body["transfers"] == []  # none outside the EU unless configured

    entry = next(e for e in body["records"] if e["dataset_id"] == dataset)
    assert entry["provider"] == env.provider.id and entry["purposes"] == ["billing"]
    assert entry["category_of_data"] == "energy" and entry["retention_days"] == 400
    assert entry["categories_of_subjects"] and entry["records"] == 1
    assert entry["recipients"] == [
        {
            "consumer": env.consumer.id,
            "name": "Banque du Rhône",  # the recipient as people call it (Art. 30(1)(d))
            "purposes": ["billing"],
            "accesses": 1,
        }
    ]
    assert body["recipients_read"] and body["recipients_complete"]
    # the measures as the system runs them: this cluster's n, f and transport, the key file
    measures = {m["measure"]: m for m in body["security_measures"]}
    assert "4 PBFT replicas" in measures["Consent ledger"]["detail"]
    assert "tolerating 1 faulty" in measures["Consent ledger"]["detail"]
    assert measures["Ledger transport"]["detail"].startswith("plain TCP")  # the test cluster's
    assert "master key file" in measures["Key protection"]["detail"]
    ledger = body["ledger_processing"]
    assert (ledger["replicas"], ledger["faults_tolerated"]) == (4, 1)
    assert ledger["chain_id"] == env.chain_id and len(ledger["colleges"]) == 4


@pytest.mark.usefixtures("scene")
def test_the_record_files_as_markdown(ledger_env: LedgerEnv) -> None:
    env = ledger_env
    r = env.client.get(
        "/v1/dpo/records-of-processing?format=md", headers=env.headers("dpo", env.dpo)
    )
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/markdown")
    assert "attachment" in r.headers["content-disposition"]
    md = r.text
    assert md.startswith("# Records of processing activities")
    assert "## Controller and data protection officer (a)" in md
    assert "## Compteurs (Lyon) # 3 (dataset" in md  # shown as named, no heading of its own
    assert "None: no transfer outside the EU/EEA is configured." in md


@pytest.mark.usefixtures("scene")
def test_the_dpia_downloads_as_markdown_and_as_a_pdf(ledger_env: LedgerEnv) -> None:
    env = ledger_env
    dpo = env.headers("dpo", env.dpo)
    r = env.client.get("/v1/dpo/dpia", headers=dpo)
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/markdown")
    md = r.text
    for heading in (
        "Systematic description of the processing",
        "Necessity and proportionality",
        "Risks to the rights and freedoms of data subjects",
        "Measures",
        "Assessment and sign-off",
    ):
        assert heading in md.replace("\\", ""), heading
    assert "Compteurs" in md and "400 days" in md

    r = env.client.get("/v1/dpo/dpia?format=pdf", headers=dpo)
    assert r.status_code == 200 and r.headers["content-type"] == "application/pdf"
    assert r.headers["content-disposition"].endswith('.pdf"')
    pdf = parse_pdf(r.content)
    text = pdf.text()
    assert "Data protection impact assessment" in text
    assert f"Dataset {DATASET_NAME}" in text
    assert "Date and signature:" in text
    words = " ".join(text.split())
    assert "The longest retention is 400 days" in words

    for bad in ("?format=docx", "?format=pdf&format=md", "?fmt=pdf"):
        r = env.client.get("/v1/dpo/dpia" + bad, headers=dpo)
        assert r.status_code == 422, bad
        assert r.headers["content-type"] == "application/problem+json"


def test_the_page_downloads_need_the_dpos_session(ledger_env: LedgerEnv) -> None:
    env = ledger_env
    consumer = env.headers("consumer", env.consumer)
    for path in ("/dpo/dpia.pdf", "/dpo/dpia.md", "/dpo/records-of-processing.json"):
        assert env.client.get(path).status_code == 401, path
        assert env.client.get(path, headers=consumer).status_code == 403, path
    dpo = env.headers("dpo", env.dpo)
    r = env.client.get("/dpo/records-of-processing.json", headers=dpo)
    assert r.status_code == 200 and r.json()["ledger_processing"]["replicas"] == 4
    assert env.client.get("/dpo/dpia.pdf", headers=dpo).content.startswith(b"%PDF-1.4")
    assert env.client.get(f"/dpo/dpia.{uuid.uuid4().hex[:4]}", headers=dpo).status_code == 404
