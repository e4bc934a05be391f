"""Subject rights: a citizen exercises her GDPR rights herself, with her wallet, over HTTP.

The utility holds Lucie's address with two digits swapped, so the bank's proof of address says
no. She signs in with her wallet (no API key: her pseudonyms' signatures are the credential),
reads her export page by page and takes the portable package, which verifies from the genesis
alone (Art. 15, 20). She finds the error and signs a rectification request; the utility carries
it out, and the bank learns yes for the right address, no for the old one (Art. 16). She
restricts processing (Art. 18): the bank's question is refused, the utility's own reads leave
her out; she lifts it, and the next block answers again. She objects (Art. 21) to the
utility's leak analytics, run under its legitimate interests: its reads of her meter readings
stop (an objection to the contract-based addresses is refused: there she withdraws a consent
instead). Last, the register shows each of her requests with its receipt and its deadline, one
calendar month later, answered (Art. 12(3)), and she signs out.
"""

from __future__ import annotations

import datetime as dt
import json
import time

from api.cli.demo.common import DemoFailed, Story, receipt_text
from api.cli.demo.proof_of_address import BANK, UTILITY
from api.cli.demo.stage import Party, Stage
from api.client import (
    CivisClient,
    ClientError,
    Gone,
    PredicateAnswer,
    SubjectRequest,
    Unauthorized,
)
from api.client.export_verify import verify_package
from api.client.wallet import Wallet

PURPOSE = "proof-of-address"
# The utility's own processing of meter readings: an approved purpose no consumer is
# declared for, under legitimate interests, the basis an objection (Art. 21(1)) applies to.
ANALYTICS = "service-improvement"
CITIZEN = "Lucie"
# What the narration says when her rectification request is on the ledger and the utility
# has not yet carried it out (tests/api/test_subject_rights_story.py looks at the vault then).
ASKED = "signs a rectification request"
READINGS = ({"hour": "06:00", "litres": 41}, {"hour": "07:00", "litres": 58})
REGISTER_WAIT_S = 30.0


def addresses(run_id: str) -> tuple[str, str]:
    """The address on file (two digits swapped) and the one she lives at."""
    return f"41 rue des Lilas, appartement {run_id}", f"14 rue des Lilas, appartement {run_id}"


def statement(run_id: str) -> str:
    """What she tells the utility is wrong: kept off the ledger, which holds its SHA-256."""
    wrong, right = addresses(run_id)
    return f"My address is {right}, not {wrong}."


def play(stage: Stage) -> None:
    utility, bank = stage.entities(UTILITY, BANK)
    wrong, right = addresses(stage.run_id)
    homes = stage.dataset(utility, "home-addresses", "address", PURPOSE)
    meters = stage.dataset(
        utility, "leak-detection", "water-consumption", ANALYTICS, "legitimate_interests"
    )
    wallet = stage.wallet(CITIZEN)
    name = f"the citizen {CITIZEN}-{stage.run_id}"
    lucie = stage.new_subject(name, wallet, homes, "the utility's addresses")
    metered = stage.new_subject(name, wallet, meters, "the utility's meter readings")
    line = json.dumps({"subject_id": lucie.id, "payload": {"address": wrong}}) + "\n"
    stage.upload(utility, homes, "application/x-ndjson", line.encode(), "Lucie's address")
    lines = "".join(json.dumps({"subject_id": metered.id, "payload": p}) + "\n" for p in READINGS)
    stage.upload(utility, meters, "application/x-ndjson", lines.encode(), "two meter readings")
    stage.consent(lucie, bank, homes, PURPOSE)
    no = _ask(bank, homes, lucie, right)
    stage.check(no["result"] is False, f"the address on file should not match: {no}")
    stage.tell(f'the bank asks "does Lucie live at {right}?" and learns: no')

    me = _sign_in(stage, wallet, [lucie, metered])
    record = _export(stage, me, (lucie, metered), (utility, bank), wrong)
    _package(stage, me, [lucie, metered])
    current = _rectify(stage, utility, bank, lucie, homes, record, (wrong, right))
    _restrict(stage, utility, bank, lucie, homes, current, right)
    _object(stage, me, utility, (lucie, homes), (metered, meters))
    _register(stage, me, [lucie, metered])
    _sign_out(stage, me, lucie)


def _ask(bank: Party, dataset: str, citizen: Party, address: str) -> PredicateAnswer:
    return bank.api.predicate(
        dataset, PURPOSE, subject=citizen.id, field="address", op="eq", value=address
    )


# -- access and portability (Art. 15, 20), signed in with the wallet --------------------------


def _sign_in(stage: Stage, wallet: Wallet, pseudonyms: list[Party]) -> CivisClient:
    with stage.doing("Lucie signing in with her wallet"):
        me = stage.api.sign_in(wallet, chain_id=stage.keys.chain_id)
    assert me.session is not None  # sign_in sets it; for the type checker
    proven = me.session["pseudonyms"]
    until = dt.datetime.fromisoformat(me.session["expires_at"]).astimezone(dt.UTC)
    stage.check(
        sorted(proven) == sorted(p.id for p in pseudonyms),
        f"the sign-in should prove her two pseudonyms: {proven}",
    )
    stage.tell(
        f"Lucie signs in with her wallet, no API key: each of her {len(proven)} pseudonyms signs "
        f"the API's challenge; a session until {until:%H:%M} UTC"
    )
    return me


def _export(
    stage: Stage,
    me: CivisClient,
    citizen: tuple[Party, Party],
    entities: tuple[Party, Party],
    wrong: str,
) -> str:
    """Her export of each pseudonym, a page at a time (here one item per list and page:
    nothing is cut); the id of the record with the address on file."""
    (lucie, metered), (utility, bank) = citizen, entities
    with stage.doing("Lucie reading her export"):
        pages = list(me.iter_export(lucie.id, limit=1))
        meter_pages = list(me.iter_export(metered.id, limit=1))
    records = [r for p in pages for r in p["records"]]
    readings = [r["payload"] for p in meter_pages for r in p["records"]]
    [dataset] = pages[0]["datasets"]
    recipients = {r["consumer"] for r in dataset["recipients"]}
    stage.check(
        pages[-1]["complete"]
        and meter_pages[-1]["complete"]
        and [r["payload"] for r in records] == [{"address": wrong}]
        and sorted(readings, key=str) == sorted(READINGS, key=str)
        and dataset["source"]["provider"] == utility.id
        and bank.id in recipients,
        f"her export should hold her records, their source and the bank: {pages}",
    )
    stage.tell(
        f"she reads her export of each pseudonym, a page at a time ({len(pages)} + "
        f'{len(meter_pages)} pages): the address on file says "{wrong}"; the utility '
        f"is its source, the bank a recipient, the legal basis {dataset['legal_basis']}"
    )
    return str(records[0]["record_id"])


def _package(stage: Stage, me: CivisClient, pseudonyms: list[Party]) -> None:
    with stage.doing("Lucie downloading her package"):
        package = me.export_package()
    report = verify_package(package, stage.keys.validators, stage.keys.chain_id, stage.keys.vaults)
    stage.check(
        report.ok and sorted(package["subjects"]) == sorted(p.id for p in pseudonyms),
        f"her package should cover both pseudonyms and verify: {report.to_json()}",
    )
    stage.tell(
        f"she downloads one package for both pseudonyms ({len(package['records'])} records, "
        f"{len(package['blocks'])} blocks): it verifies from the genesis alone, no vault trusted"
    )


# -- rectification (Art. 16) ------------------------------------------------------------------


def _rectify(
    stage: Stage,
    utility: Party,
    bank: Party,
    lucie: Party,
    dataset: str,
    record: str,
    values: tuple[str, str],
) -> str:
    """The subject asks, the provider carries it out; the new version's id."""
    wrong, right = values
    with stage.doing("Lucie asking for the rectification"):
        asked = stage.api.request_rectification(
            lucie.key, dataset=dataset, record=record, statement=statement(stage.run_id)
        )
    stage.tell(
        f"she {ASKED}: request {asked['request']}; the ledger holds only the SHA-256 of her "
        f"statement {receipt_text(asked['receipt'])}"
    )
    with stage.doing("the utility carrying out the rectification"):
        done = utility.api.rectify(
            dataset,
            record,
            subject_id=lucie.id,
            payload={"address": right},
            request=asked["request"],
        )
    stage.check(
        done["state"] == "anchored" and done["replaced"] == record,
        f"the rectification should be recorded: {done}",
    )
    stage.tell(
        "the utility corrects it: her key in the dataset is replaced, so the old version "
        f"opens nowhere any more; new record {done['record_id'][:8]}… "
        f"{receipt_text(done['receipt'])}"
    )
    _gone(stage, utility, record, str(done["record_id"]))
    yes, no = _ask(bank, dataset, lucie, right), _ask(bank, dataset, lucie, wrong)
    stage.check(
        yes["result"] is True and no["result"] is False,
        f"the bank should now match the new address only: {yes}, {no}",
    )
    stage.tell("the bank asks again: yes for the right address, no for the old one")
    return str(done["record_id"])


def _gone(stage: Stage, utility: Party, old: str, new: str) -> None:
    """The old version's id answers 410, naming the current one."""
    try:
        utility.api.record(old)
    except Gone as exc:
        stage.check(new in exc.detail, f"the 410 should name the current version: {exc}")
        stage.tell(
            f"the utility asks for the old version: gone ({exc.status_code}), see {new[:8]}…"
        )
        return
    except ClientError as exc:
        raise DemoFailed(f"the utility reading the old version: expected 410, got {exc}") from None
    raise DemoFailed("the utility reading the old version: it was answered")


# -- restriction (Art. 18) and objection (Art. 21) ---------------------------------------------


def _restrict(
    stage: Stage, utility: Party, bank: Party, lucie: Party, dataset: str, record: str, right: str
) -> None:
    """Restricted: the bank refused, the utility's reads withheld; lifted: both answered from
    the next block."""
    with stage.doing("Lucie restricting processing"):
        out = stage.api.restrict(lucie.key, dataset=dataset, ground="accuracy_contested")
    stage.tell(
        "she restricts processing of her address while she checks the rest of her file "
        f"(accuracy contested) {receipt_text(out['receipt'])}"
    )
    refused = stage.refused_as(
        lambda: _ask(bank, dataset, lucie, right), "restricted", "the bank asking while restricted"
    )
    with stage.doing("the utility listing its records"):
        listed = utility.api.records(dataset, subject_id=lucie.id)
        withheld = utility.api.withheld_records(dataset, subject_id=lucie.id)
    stage.check(listed == [] and withheld == 1, f"her record should be withheld: {listed}")
    held = stage.refused_as(
        lambda: utility.api.record(record), "restricted", "the utility reading her record"
    )
    stage.tell(
        f"the bank asks and is refused ({refused.code}); the utility's own reads leave her "
        f"out ({withheld} record withheld, her record itself {held.status_code} {held.code})"
    )
    with stage.doing("Lucie lifting the restriction"):
        lifted = stage.api.lift_restriction(lucie.key, dataset=dataset)
    height = lifted["receipt"]["block_height"]
    with stage.doing("the bank and the utility after the lift"):
        yes = _ask(bank, dataset, lucie, right)
        read = utility.api.record(record)
    stage.check(
        yes["result"] is True
        and yes["receipt"]["block_height"] > height
        and read["payload"] == {"address": right},
        f"the bank and the utility should be answered again after block {height}: {yes}",
    )
    stage.tell(
        f"she lifts it in block {height}; the bank is answered again in block "
        f"{yes['receipt']['block_height']} (yes), the utility reads her record again"
    )


def _object(
    stage: Stage,
    me: CivisClient,
    utility: Party,
    homes: tuple[Party, str],
    meters: tuple[Party, str],
) -> None:
    """Refused where she consented under a contract; where the utility processes under its
    legitimate interests, its reads of her stop."""
    (lucie, addresses_id), (metered, meters_id) = homes, meters
    refused = stage.refused_as(
        lambda: stage.api.object_to(lucie.key, dataset=addresses_id),
        "basis_is_consent",
        "objecting to the address file",
    )
    stage.tell(
        f"she cannot object to the address file, kept under a contract ({refused.code}): "
        "there she would withdraw her consent"
    )
    with stage.doing("the utility reading the meter readings"):
        before = utility.api.records(meters_id, subject_id=metered.id)
    with stage.doing("Lucie objecting"):
        out = stage.api.object_to(metered.key, dataset=meters_id)
    stage.tell(
        "she objects to the leak analytics, run under the utility's legitimate interests "
        f"{receipt_text(out['receipt'])}"
    )
    with stage.doing("the utility reading the meter readings again"):
        after = utility.api.records(meters_id, subject_id=metered.id)
        withheld = utility.api.withheld_records(meters_id, subject_id=metered.id)
    with stage.doing("Lucie reading her standing"):
        [standing] = me.restrictions(metered.id)["restrictions"]
    stage.check(
        len(before) == len(READINGS) and after == [] and withheld == len(READINGS),
        f"the utility should read her {len(READINGS)} readings, then none: {before}, {after}",
    )
    stage.check(
        standing["objected"] and standing["processing_stopped"],
        f"her standing should show processing stopped: {standing}",
    )
    stage.tell(
        f"processing stops: the utility read {len(before)} readings of hers, now none "
        f"({withheld} withheld); her standing says processing stopped"
    )


# -- the register (Art. 12(3)) and signing out -------------------------------------------------


# What each of her pseudonyms asked, in the order of the story: the exports and the package
# are answered at once, the rectification once its record.rectify is on the ledger, the
# restriction and the objection as the ledger records them (a lift or a withdrawal is no new
# request: it ends one).
REQUESTED = (
    ("address", ["access", "portability", "rectification", "restriction"]),
    ("meter", ["access", "portability", "objection"]),
)


def _register(stage: Stage, me: CivisClient, pseudonyms: list[Party]) -> None:
    """Each request she made, received, due one calendar month later, answered."""
    found = _answered(stage, me, pseudonyms)
    for party, (where, wanted) in zip(pseudonyms, REQUESTED, strict=True):
        mine = sorted(found[party.id], key=lambda r: r["received_at"])
        stage.check(
            sorted(r["kind"] for r in mine) == sorted(wanted)
            and all(r["state"] == "done" and _due_in_a_month(r) for r in mine),
            f"the register should list {wanted}, answered, each due a month after receipt: {mine}",
        )
        kinds = ", ".join(
            r["kind"] + (f" ({', '.join(f['type'] for f in r['facts'])})" if r["facts"] else "")
            for r in mine
        )
        first = dt.datetime.fromisoformat(mine[0]["received_at"]).astimezone(dt.UTC)
        due = dt.datetime.fromisoformat(mine[0]["due_at"]).astimezone(dt.UTC)
        stage.tell(
            f"the register, her {where} pseudonym {party.id[:8]}…: {kinds}; received from "
            f"{first:%Y-%m-%d %H:%M}, due a calendar month later ({due:%Y-%m-%d %H:%M} UTC); "
            "all answered"
        )


def _answered(
    stage: Stage, me: CivisClient, pseudonyms: list[Party]
) -> dict[str, list[SubjectRequest]]:
    """Her requests by pseudonym, once all are answered (the rectification closes when the
    relay records its fact) or the wait is over."""
    deadline = time.monotonic() + REGISTER_WAIT_S
    while True:
        with stage.doing("Lucie reading the register"):
            found = {p.id: me.requests(p.id) for p in pseudonyms}
        pending = [r for rs in found.values() for r in rs if r["state"] != "done"]
        if not pending or time.monotonic() > deadline:
            return found
        time.sleep(0.5)


def _due_in_a_month(request: SubjectRequest) -> bool:
    """Due one calendar month after receipt: 28 to 31 days, give or take the hour of a change
    of summer time. The exact day is counted in the controller's time zone, which a subject
    does not see (tests/api/test_request_deadlines.py holds the calendar to the day)."""
    received = dt.datetime.fromisoformat(request["received_at"])
    due = dt.datetime.fromisoformat(request["due_at"])
    hour = dt.timedelta(hours=1)
    return dt.timedelta(days=28) - hour <= due - received <= dt.timedelta(days=31) + hour


def _sign_out(stage: Stage, me: CivisClient, lucie: Party) -> None:
    assert me.session is not None  # signed in by _sign_in
    token = me.session["token"]
    with stage.doing("Lucie signing out"):
        me.sign_out()
    try:
        stage.api.with_key(token).export(lucie.id)
    except Unauthorized:
        stage.tell("she signs out: the session's token opens nothing any more (401)")
        return
    raise DemoFailed("the token should open nothing after signing out")


STORY = Story(
    "subject-rights",
    "Subject rights: a citizen exports, rectifies, restricts and objects, with her wallet",
    play,
)
