"""Proof of address: a utility holds Alice's address; a bank learns only whether the address
she gave is the one on file, only while her signed consent stands, and never the record."""

from __future__ import annotations

import json

from api.cli.demo.common import Story, receipt_text
from api.cli.demo.stage import Party, Stage
from api.client import PredicateAnswer

PURPOSE = "proof-of-address"


def play(stage: Stage) -> None:
    run = stage.run_id
    utility, bank = stage.entities(
        ("the utility Lumen", "providers", "provider"),
        ("the bank Crédit", "services", "consumer"),
    )
    address = f"12 rue des Lilas, appartement {run}"
    dataset = stage.dataset(utility, "customer-addresses", "address", PURPOSE)
    citizen = stage.new_subject(
        f"the citizen Alice-{run}",
        stage.wallet("Alice"),
        dataset,
        "the utility's dataset (her records, her consents to the bank)",
    )
    line = json.dumps({"subject_id": citizen.id, "payload": {"address": address}})
    stage.upload(
        utility, dataset, "application/x-ndjson", (line + "\n").encode(), "Alice's address"
    )
    _the_bank_asks(stage, bank, citizen, dataset, address)


def _the_bank_asks(stage: Stage, bank: Party, citizen: Party, dataset: str, address: str) -> None:
    """Refused before the consent, one bit with it, never the record, refused after revocation."""

    def ask(value: str) -> PredicateAnswer:
        return bank.api.predicate(
            dataset, PURPOSE, subject=citizen.id, field="address", op="eq", value=value
        )

    no = stage.refused(lambda: ask(address), "the bank asking before any consent")
    stage.tell(f"before any consent the bank asks and is refused: {no.detail}")
    stage.consent(citizen, bank, dataset, PURPOSE)
    with stage.doing("the bank asking with Alice's consent"):
        out = ask(address)
    stage.check(
        set(out) == {"result", "receipt", "charged_cents"} and out["result"] is True,
        f"the bank should learn exactly yes, it got {sorted(out)}",
    )
    stage.tell(
        f'the bank asks "does Alice live at {address}?" and learns: yes, and nothing '
        f"else (the answer holds only {sorted(out)}) {receipt_text(out['receipt'])}"
    )
    with stage.doing("the bank asking a wrong address"):
        out = ask("3 avenue Ailleurs")
    stage.check(out["result"] is False, "a wrong address should answer no")
    stage.tell(f"asked about another address, it learns: no {receipt_text(out['receipt'])}")
    whole = stage.refused(
        lambda: bank.api.access(dataset, PURPOSE, subjects=[citizen.id]),
        "the bank asking for Alice's whole record",
    )
    stage.tell(f"it asks for Alice's record itself and is refused: {whole.detail}")
    with stage.doing("Alice revoking her consent"):
        revoked = stage.api.revoke_consent(
            citizen.key, consumer=bank.id, purpose=PURPOSE, dataset=dataset
        )
    stage.tell(f"Alice revokes her consent {receipt_text(revoked['receipt'])}")
    no = stage.refused(lambda: ask(address), "the bank asking after the revocation")
    stage.tell(f"the bank asks again and is refused after the revocation: {no.detail}")


STORY = Story("proof-of-address", "Proof of address: the bank learns yes or no, with consent", play)
