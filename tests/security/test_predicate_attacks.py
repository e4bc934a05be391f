"""A bank holding a proof-of-address consent tries to learn more than "does she live there?".

The attacker is an admitted consumer with a real consent, speaking plain HTTP to a real
uvicorn server in front of four replica processes running the consent contracts. The
citizen's record at the utility holds her address, her IBAN and her birth year; the
proof-of-address purpose, as the cooperative declared it at founding, needs only `eq`
questions about the address. The attacks:

- ask no predicate at all, for the whole record (address, IBAN, birth year);
- rebuild the birth year with ordering questions (`lt`), a binary search: 7 questions;
- rebuild the address character by character with `ge`: about 7 questions a character;
- guess the address with `eq` questions, as many as it likes.

Each attack is run to the end the contracts allow; the test checks what the attacker holds
when it stops, never that a particular number of calls was made, and that the refusal that
stopped it is the purpose's bound (`exceeds_purpose`, the contracts' code at the head of the
problem's detail), not some other refusal such as a missing consent.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from sqlalchemy.orm import Session

from api.client import AccessAnswer, CivisClient, ProblemError
from api.http.app import create_app
from api.http.settings import Settings
from api.services.gateway import LedgerGateway
from api.services.keys import create_key
from ledger_bridge.cluster import Cluster
from tests.api.conftest import api_settings  # noqa: F401  (fixture)
from tests.api.ledger_env import (  # noqa: F401  (fixtures)
    Wallet,
    ledger_cluster,
    ledger_database_url,
)
from tests.api.notice_helpers import publish
from tests.conftest import served
from vault import db

ADDRESS = "27 boulevard des Hirondelles, 69100 Villeurbanne"
IBAN = "FR7630006000011234567890189"
BIRTH_YEAR = 1987
PURPOSE = "proof-of-address"
# A founding purpose that declares whole records: the control that an access shaped as the
# attack's does deliver the record when the purpose allows it.
FULL_PURPOSE = "billing"
# What an attacker's search starts from: printable ASCII, and any plausible birth year.
CHARS = (32, 126)
YEARS = (1900, 2030)
TIMEOUT_S = 60.0


@dataclass
class Bank:
    """The attacker's view: its own API client, the dataset and the citizen it targets."""

    api: CivisClient
    dataset: str
    citizen: str
    refusals: list[ProblemError]
    answered: int = 0
    purpose: str = PURPOSE

    def ask(self, field: str, op: str, value: Any) -> bool | None:
        """One yes/no question; None once the API refuses (the attacker stops there)."""
        try:
            out = self.api.predicate(
                self.dataset, self.purpose, subject=self.citizen, field=field, op=op, value=value
            )
        except ProblemError as exc:
            self.refusals.append(exc)
            return None
        self.answered += 1
        return bool(out["result"])


@pytest.fixture(scope="module")
def server(
    ledger_cluster: tuple[Cluster, dict[str, Wallet]],  # noqa: F811
    api_settings: Settings,  # noqa: F811
    ledger_database_url: str,  # noqa: F811
) -> Iterator[tuple[str, Callable[[str, str], str], dict[str, Wallet]]]:
    """The API on a loopback port (uvicorn, in a thread) over the module's four replicas;
    yields its URL, a way to issue API keys, and the founding provider and consumer."""
    cluster, wallets = ledger_cluster
    gateway = LedgerGateway.from_directory(cluster.directory, cluster.directory.parent / "keys")
    settings = api_settings.model_copy(update={"relay_interval_s": 0.1, "receipt_wait_s": 15.0})
    app = create_app(settings, database_url=ledger_database_url, ledger=gateway)
    engine = db.make_engine(ledger_database_url, pool_size=1)

    def issue(member_id: str, role: str) -> str:
        with Session(engine) as session:
            key = create_key(session, member_id=member_id, role=role)
            session.commit()
        return key.token

    try:
        with served(app) as (url, _):
            yield url, issue, wallets
    finally:
        gateway.close()
        engine.dispose()


def _customer(
    server: tuple[str, Callable[[str, str], str], dict[str, Wallet]], purpose: str
) -> Iterator[Bank]:
    """A citizen whose record the utility holds in a dataset for `purpose`, and who consented
    to the bank for it with the consent the API drafts by default; the bank, ready to ask."""
    url, issue, wallets = server
    with CivisClient(url, timeout_s=TIMEOUT_S) as anonymous:
        utility = anonymous.with_key(issue(wallets["provider"].id, "provider"))
        dataset = utility.create_dataset(
            f"customers-{time.monotonic_ns()}",
            category="address",
            purposes=[purpose],
            retention_days=365,
            legal_basis="contract",
        )["id"]
        citizen = Wallet()
        anonymous.register(citizen.key, "subject", "citizens")
        record = {"address": ADDRESS, "iban": IBAN, "birth_year": BIRTH_YEAR}
        line = json.dumps({"subject_id": citizen.id, "payload": record}) + "\n"
        utility.upload(dataset, line.encode(), media_type="application/x-ndjson", timeout_s=30)
        consumer = wallets["consumer"].id
        bank = anonymous.with_key(issue(consumer, "consumer"))
        notice = publish(bank, consumer, purpose)
        anonymous.grant_consent(
            citizen.key, consumer=consumer, purpose=purpose, notice=notice, dataset=dataset
        )
        yield Bank(bank, dataset, citizen.id, [], purpose=purpose)


@pytest.fixture()
def bank(
    server: tuple[str, Callable[[str, str], str], dict[str, Wallet]],
) -> Iterator[Bank]:
    """The attacker, holding a proof-of-address consent from its target."""
    yield from _customer(server, PURPOSE)


@pytest.fixture()
def biller(
    server: tuple[str, Callable[[str, str], str], dict[str, Wallet]],
) -> Iterator[Bank]:
    """The same consumer holding a billing consent from its own citizen: whole records."""
    yield from _customer(server, FULL_PURPOSE)


def _refused_for(exc: ProblemError) -> str:
    """The contracts' code of a refusal: it heads the problem's detail (`code: message`)."""
    return exc.detail.split(":", 1)[0]


def _whole_record_access(customer: Bank) -> AccessAnswer:
    """The attack's call: every field of the named citizen's record, no predicate."""
    return customer.api.access(customer.dataset, customer.purpose, subjects=[customer.citizen])


def test_no_predicate_at_all_gets_no_record(bank: Bank) -> None:
    """Refused whole by the purpose's declaration: never an answer, even one that names no
    value, for an answer that grants nothing would show the bound sits elsewhere."""
    with pytest.raises(ProblemError) as refused:
        _whole_record_access(bank)
    assert refused.value.status_code == 403, refused.value.detail
    assert _refused_for(refused.value) == "exceeds_purpose", refused.value.detail


def test_the_whole_record_call_delivers_under_a_full_purpose(biller: Bank) -> None:
    """The control for the test above: the same call, under a purpose that declares whole
    records, brings back every value the attack is refused, so its refusal is the purpose's
    and not a call that could never deliver."""
    answer = _whole_record_access(biller)
    assert answer["granted"] == [biller.citizen], answer
    text = json.dumps(answer)
    assert IBAN in text and ADDRESS in text and str(BIRTH_YEAR) in text, text


def _assert_refused_as_beyond_the_purpose(bank: Bank) -> None:
    """The attack stopped on the purpose's declaration (`eq` questions about the address),
    the refusal that makes it hopeless whatever the consent: a missing consent or a spent
    budget would stop it too, but only by the chance of the fixture's numbers."""
    assert bank.refusals, f"{bank.answered} ordering questions, none refused"
    first = bank.refusals[0]
    assert first.status_code == 403, first.detail
    assert _refused_for(first) == "exceeds_purpose", first.detail


def test_ordering_questions_do_not_rebuild_the_birth_year(bank: Bank) -> None:
    low, high = YEARS  # the year is in [low, high]
    while low < high:
        mid = (low + high + 1) // 2
        below = bank.ask("birth_year", "lt", mid)
        if below is None:
            break
        low, high = (low, mid - 1) if below else (mid, high)
    assert not (low == high == BIRTH_YEAR), (
        f"binary search on birth_year rebuilt it in {bank.answered} questions"
    )
    _assert_refused_as_beyond_the_purpose(bank)


def _next_char(bank: Bank, prefix: str) -> str | None:
    """The address's character after `prefix`, by binary search with `ge`; "" at its end;
    None once refused. `address >= prefix + c` holds for every c up to the true character."""
    low, high = CHARS[0] - 1, CHARS[1]  # low - 1: the address ends at the prefix
    while low < high:
        mid = (low + high + 1) // 2
        at_least = bank.ask("address", "ge", prefix + chr(mid))
        if at_least is None:
            return None
        low, high = (mid, high) if at_least else (low, mid - 1)
    return "" if low < CHARS[0] else chr(low)


def test_ordering_questions_do_not_rebuild_the_address(bank: Bank) -> None:
    rebuilt = ""
    for _ in range(len(ADDRESS) + 1):
        c = _next_char(bank, rebuilt)
        if not c:
            break
        rebuilt += c
    assert rebuilt != ADDRESS, (
        f"binary search with ge rebuilt the address in {bank.answered} questions"
    )
    _assert_refused_as_beyond_the_purpose(bank)


def test_equality_guesses_are_metered(bank: Bank) -> None:
    guesses = [f"{n} boulevard des Hirondelles, 69100 Villeurbanne" for n in range(1, 101)]
    answered = 0
    for guess in guesses:
        if bank.ask("address", "eq", guess) is None:
            break
        answered += 1
    assert answered < len(guesses), "a hundred guesses were all answered"
    assert bank.refusals[0].status_code == 403 and "budget_exhausted" in bank.refusals[0].detail


def test_asking_within_the_consent_still_works(bank: Bank) -> None:
    assert bank.ask("address", "eq", ADDRESS) is True
    assert bank.ask("address", "eq", ADDRESS + " bis") is False
    assert bank.refusals == []
