"""A personal data breach: a bank reports its ledger key stolen. The DPO opens an incident (72
hours to notify the supervisory authority, from the discovery); the colleges suspend the bank;
its next access is refused; the DPO lists exactly the citizens the access record shows the
bank received, sees the deadline on the DPO page, and exports the notification draft."""

from __future__ import annotations

import datetime as dt
import json

from api.cli.demo.common import Story, receipt_text
from api.cli.demo.proof_of_address import UTILITY
from api.cli.demo.stage import Entity, Party, Stage

PURPOSE = "billing"
# Cast by this story alone: it ends suspended, and no other story may rely on it.
LEAKY_BANK: Entity = ("the bank Fortuna", "services", "consumer")


def play(stage: Stage) -> None:
    utility, bank = stage.entities(UTILITY, LEAKY_BANK)
    dataset = stage.dataset(utility, "customer-accounts", "address", PURPOSE)
    people = [
        stage.new_subject(f"the citizen {name}-{stage.run_id}", stage.wallet(name), dataset, where)
        for name, where in (
            ("Chloé", "the utility's accounts"),
            ("Driss", "the utility's accounts"),
            ("Emma", "the utility's accounts (she consents to nobody)"),
        )
    ]
    lines = "".join(
        json.dumps({"subject_id": p.id, "payload": {"account": f"{stage.run_id}-{i}"}}) + "\n"
        for i, p in enumerate(people)
    )
    stage.upload(utility, dataset, "application/x-ndjson", lines.encode(), "three accounts")
    chloe, driss, emma = people
    for citizen in (chloe, driss):
        stage.consent(citizen, bank, dataset, PURPOSE)
    with stage.doing("the bank reading the accounts it may read"):
        out = bank.api.access(dataset, PURPOSE)
    stage.check(
        sorted(out["granted"]) == sorted([chloe.id, driss.id]),
        f"the bank should receive Chloé's and Driss's accounts: {out['granted']}",
    )
    stage.tell(f"the bank reads Chloé's and Driss's accounts {receipt_text(out['receipt'])}")
    incident = _report(stage, bank, dataset)
    stage.decide(
        {"kind": "suspend_member", "member": bank.id},
        f"to suspend {bank.name}",
        f"{bank.name} suspended",
    )
    refused = stage.refused_as(
        lambda: bank.api.access(dataset, PURPOSE), "member_suspended", "the suspended bank reading"
    )
    stage.tell(f"whoever holds the bank's key asks again and is refused: {refused.detail[:60]}…")
    _affected(stage, incident, [chloe, driss], emma)
    _notify(stage, incident)


def _report(stage: Stage, bank: Party, dataset: str) -> str:
    discovered = dt.datetime.now(dt.UTC) - dt.timedelta(hours=1)
    with stage.doing("the DPO opening the incident"):
        incident = stage.dpo.api.open_incident(
            f"{bank.name} reports its ledger key stolen",
            discovered_at=discovered.isoformat(),
            member=bank.id,
            dataset_id=dataset,
        )
    stage.tell(
        f"{bank.name} reports its ledger key stolen an hour ago; the DPO opens incident "
        f"{incident['id'][:8]}…: notify the supervisory authority by {incident['deadline_at']}"
    )
    with stage.doing("reading the DPO's work queues"):
        page = stage.dpo.api.request("GET", "/dpo/queues", headers={"Accept": "text/html"}).text
    deadline = dt.datetime.fromisoformat(incident["deadline_at"]).strftime("%Y-%m-%d %H:%M UTC")
    stage.check(
        incident["title"] in page and deadline in page and "70 h" in page,
        "the DPO's work queues should list the incident with its deadline and about 70 hours left",
    )
    stage.tell(
        f"the DPO's work queues (/dpo/queues) list it: deadline {deadline}, 70 hours and some "
        "minutes left"
    )
    return str(incident["id"])


def _affected(stage: Stage, incident: str, received: list[Party], other: Party) -> None:
    with stage.doing("the DPO listing the subjects affected"):
        pages = list(stage.dpo.api.iter_affected_subjects(incident))
    subjects = [s for page in pages for s in page["subjects"]]
    stage.check(
        subjects == sorted(p.id for p in received) and other.id not in subjects,
        f"the subjects affected should be exactly those the bank received: {subjects}",
    )
    by_dataset = pages[0]["by_dataset"]
    stage.tell(
        f"the DPO lists the subjects affected, from the ledger's access record: "
        f"{len(subjects)} pseudonyms ({', '.join(s[:8] + '…' for s in subjects)}), in "
        f"{len(by_dataset)} dataset(s); Emma, who consented to nobody, is not among them"
    )


def _notify(stage: Stage, incident: str) -> None:
    facts: list[tuple[str, dict[str, object]]] = [
        ("nature", {"text": "A consumer's ledger key was copied from its server."}),
        ("categories", {"text": "Customer account numbers of residents."}),
        ("approximate_numbers", {"subjects": 2, "records": 2}),
        ("consequences", {"text": "Account numbers may be known to a third party."}),
        ("measures", {"text": "The cooperative suspended the member; its key is refused."}),
        ("risk", {"risk": "risk", "text": "Account numbers alone open no account."}),
    ]
    with stage.doing("the DPO recording the facts"):
        for kind, fields in facts:
            stage.dpo.api.add_incident_fact(incident, kind, **fields)
        draft = stage.dpo.api.notification_draft(incident)
    stage.check(
        "## (a) Nature of the breach" in draft and "2 data subject(s)" in draft,
        "the notification draft should carry Art. 33(3)'s contents and the subjects' count",
    )
    stage.tell(
        f"the DPO records {len(facts)} facts and exports the Art. 33 notification draft "
        f"({len(draft.splitlines())} lines of Markdown: nature, categories, numbers, "
        "consequences, measures)"
    )
    with stage.doing("the DPO recording the notification and closing"):
        stage.dpo.api.add_incident_fact(incident, "notified", text="supervisory authority")
        closed = stage.dpo.api.close_incident(incident, summary="Notified within 72 hours.")
    stage.check(closed["state"] == "closed", f"the incident should be closed: {closed['state']}")
    stage.tell("the DPO records the notification, within the 72 hours, and closes the incident")


STORY = Story("incident", "A stolen key: suspend the member, list whom it affects, notify", play)
