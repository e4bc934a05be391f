"""Proof of address: a utility holds Alice's address; a bank learns only whether the address
she gave is the one on file, only while her signed consent stands, and never the record. Each
answer is paid: the utility prices its yes/no, the bank pays from a credit the cooperative
recorded, the cooperative keeps its commission, and each reads its statement."""

from __future__ import annotations

import json

from api.cli.demo.common import Story, receipt_text
from api.cli.demo.stage import Entity, Party, Stage
from api.client import CivisClient, PredicateAnswer

PURPOSE = "proof-of-address"
# Also cast by the eco-citizen story (its water meters): admitted once per run.
UTILITY: Entity = ("the utility Lumen", "providers", "provider")
BANK: Entity = ("the bank Crédit", "services", "consumer")
# One yes/no answer's price, and the payment the cooperative receives from the bank (cents).
PRICE_CENTS = 40
DEPOSIT_CENTS = 500


def play(stage: Stage) -> None:
    run = stage.run_id
    utility, bank = stage.entities(UTILITY, BANK)
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
    _the_price(stage, utility, bank, dataset)
    _the_bank_asks(stage, bank, citizen, dataset, address)
    _statements(stage, utility, bank, dataset)


def euros(cents: int) -> str:
    return f"{cents / 100:.2f} €"


def _the_price(stage: Stage, utility: Party, bank: Party, dataset: str) -> None:
    """The utility prices its yes/no; the DPO records the bank's payment as a credit."""
    with stage.doing("the utility pricing its yes/no answers"):
        price = utility.api.set_price(dataset, "predicate", PRICE_CENTS)
    stage.tell(
        f"the utility prices each yes/no answer from its dataset at {euros(PRICE_CENTS)} "
        f"{receipt_text(price['receipt'])}"
    )
    with stage.doing("the DPO recording the bank's payment"):
        credit = stage.dpo.api.deposit(bank.id, DEPOSIT_CENTS, f"demo-{stage.run_id}-bank")
    stage.check(credit["credit_cents"] == DEPOSIT_CENTS, f"the bank's credit should be {credit}")
    stage.tell(
        f"the bank pays the cooperative {euros(DEPOSIT_CENTS)}; the DPO records it as the "
        f"bank's credit {receipt_text(credit['receipt'])}"
    )


def _the_bank_asks(stage: Stage, bank: Party, citizen: Party, dataset: str, address: str) -> None:
    """Refused before the consent, one bit with it, never the record, refused after revocation."""

    def ask(value: str) -> PredicateAnswer:
        return bank.api.predicate(
            dataset,
            PURPOSE,
            subject=citizen.id,
            field="address",
            op="eq",
            value=value,
            price_cents=PRICE_CENTS,
        )

    no = stage.refused(lambda: ask(address), "the bank asking before any consent")
    stage.tell(f"before any consent the bank asks and is refused: {no.detail}")
    stage.consent(citizen, bank, dataset, PURPOSE)
    with stage.doing("the bank asking with Alice's consent"):
        out = ask(address)
    stage.check(
        set(out) == {"result", "receipt", "charged_cents"}
        and out["result"] is True
        and out["charged_cents"] == PRICE_CENTS,
        f"the bank should learn exactly yes, for its price: {out}",
    )
    stage.tell(
        f'the bank asks "does Alice live at {address}?", naming the price, and learns: yes, '
        f"and nothing else (the answer holds only {sorted(out)}); charged "
        f"{euros(out['charged_cents'])} {receipt_text(out['receipt'])}"
    )
    with stage.doing("the bank asking a wrong address"):
        out = ask("3 avenue Ailleurs")
    stage.check(
        out["result"] is False and out["charged_cents"] == PRICE_CENTS,
        f"a wrong address should answer no, for the price: {out}",
    )
    stage.tell(
        f"asked about another address, it learns: no; charged {euros(out['charged_cents'])} "
        f"{receipt_text(out['receipt'])}"
    )
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


def _fees(api: CivisClient, member: str, kind: str, dataset: str) -> dict[int, int]:
    """The member's statement entries of `kind` for `dataset`: cents by access, every page
    read (the cooperative's statement holds every run's commissions)."""
    fees: dict[int, int] = {}
    after: int | None = 0
    while after is not None:
        page = api.statement(member, after=after, limit=1000)
        for e in page["entries"]:
            if e["kind"] == kind and e["dataset"] == dataset and e["access"] is not None:
                fees[e["access"]] = e["cents"]
        after = page["next_after"]
    return fees


def _statements(stage: Stage, utility: Party, bank: Party, dataset: str) -> None:
    """Each answer moved the price once: the bank paid it, the utility earned it less the
    cooperative's commission, which went to the operations key's account."""
    cooperative = stage.keys.operations_key
    with stage.doing("reading the statements"):
        paid = _fees(bank.api, bank.id, "fee_paid", dataset)
        earned = _fees(utility.api, utility.id, "fee_earned", dataset)
        commission = _fees(stage.dpo.api, cooperative, "commission", dataset)
        totals = bank.api.statement(bank.id)["totals"]
    accesses = sorted(paid)
    stage.check(
        len(accesses) == 2
        and set(paid.values()) == {PRICE_CENTS}
        and totals["deposited"] == DEPOSIT_CENTS
        and totals["balance"] == DEPOSIT_CENTS - 2 * PRICE_CENTS
        and sorted(earned) == sorted(commission) == accesses
        and all(earned[a] + commission[a] == PRICE_CENTS for a in accesses),
        f"the two answers should each move {PRICE_CENTS} cents: paid {paid}, earned "
        f"{earned}, commission {commission}, the bank's totals {totals}",
    )
    listed = " and ".join(f"#{a}" for a in accesses)
    stage.tell(
        f"the bank's statement: deposited {euros(totals['deposited'])}, paid "
        f"{euros(totals['paid'])} ({euros(PRICE_CENTS)} for each of the accesses {listed}; "
        f"the refusals cost nothing), balance {euros(totals['balance'])}"
    )
    stage.tell(
        f"the utility's statement: earned {' + '.join(euros(earned[a]) for a in accesses)} "
        "for the same accesses"
    )
    stage.tell(
        f"the cooperative's commission (the statement of its operations key "
        f"{cooperative[:12]}…, read by the DPO): "
        f"{' + '.join(euros(commission[a]) for a in accesses)}"
    )


STORY = Story(
    "proof-of-address", "Proof of address: the bank pays to learn yes or no, with consent", play
)
