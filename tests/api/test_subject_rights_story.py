"""The subject-rights story over a real `civis-vault up`, each step checked from outside.

The story (api/cli/demo/subject_rights.py) plays through the public client only, as a citizen
would, and checks each outcome itself (it raises `DemoFailed` at the first one that did not
happen). This module plays it in-process on a `Stage` of its own, against `up` started as a
subprocess on a database of its own, and then looks again, not through the story's eyes:

- the narration says each step happened (sign-in, export, package, rectification, restriction
  refusing the bank and the utility, the lift, the objection, the register);
- signed in again with her wallet, the citizen reads the corrected address in her export and
  the replaced version in its history; the bank learns yes for it and no for the old one; the
  register holds each request answered, due one calendar month after receipt; her standing
  shows no restriction left on the addresses and an objection stopping the leak analytics;
- the ledger holds her request with the hash of her statement (never the statement), closed
  by the record.rectify that links the old version's upload to the replacement's;
- the old address is unreadable in a pg_dump of the running database (see
  `test_the_old_version_is_unreadable_in_pg_dump` for what that means, tested honestly).
"""

from __future__ import annotations

import calendar
import datetime as dt
import hashlib
import itertools
import json
import secrets
import uuid
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from api.cli.demo import play
from api.cli.demo.common import Keyring, api_keys
from api.cli.demo.proof_of_address import BANK, UTILITY
from api.cli.demo.stage import Party, Stage
from api.cli.demo.subject_rights import (
    ASKED,
    CITIZEN,
    PURPOSE,
    READINGS,
    STORY,
    addresses,
    statement,
)
from api.client import CivisClient, Gone, public_hex
from api.client.export_verify import verify_package
from api.services.gateway import LedgerGateway
from ledger_bridge.crypto import SigningKey
from tests.api.test_e2e_up import System, running_system
from tests.conftest import PgServer
from tests.vault.test_forensic import _pg_dump
from vault.crypto import DecryptionFailed, derive_dek, unseal
from vault.keys import LocalKeyProvider, SecretRef

pytestmark = pytest.mark.e2e

Row = dict[str, str | None]


@pytest.fixture(scope="module")
def system(tmp_path_factory: pytest.TempPathFactory, pg_server: PgServer) -> Iterator[System]:
    with running_system(tmp_path_factory, pg_server, "civis_rights") as running:
        yield running


@dataclass
class Played:
    """One play of the story and what was seen of the system during and after it."""

    stage: Stage
    lines: list[str]
    backup: bytes  # pg_dump once her request was on the ledger, before the utility acted
    after: bytes  # pg_dump once the story ended
    homes: str  # the address dataset's id
    meters: str  # the meter readings' dataset's id
    lucie: SigningKey  # her pseudonym in the address dataset
    metered: SigningKey  # her pseudonym in the meter readings

    @property
    def utility(self) -> Party:
        return self.stage.cast[UTILITY[0]]

    @property
    def bank(self) -> Party:
        return self.stage.cast[BANK[0]]

    @property
    def values(self) -> tuple[str, str]:
        return addresses(self.stage.run_id)


@pytest.fixture(scope="module")
def played(system: System) -> Played:
    run = secrets.token_hex(3)
    lines: list[str] = []
    dumps: list[bytes] = []

    def say(line: str) -> None:
        lines.append(line)
        if ASKED in line:  # the request is on the ledger; the utility has not acted yet
            dumps.append(_pg_dump(system.database_url))

    with api_keys(system.database_url, system.data_dir) as issue:
        stage = Stage(system.api, Keyring.load(system.data_dir), issue, say, run_id=run)
        play(stage, [STORY])
    assert len(dumps) == 1, "the story never said it had signed the rectification request"
    after = _pg_dump(system.database_url)
    utility = system.client(stage.cast[UTILITY[0]].key, "provider")
    named = {d["name"]: d["id"] for d in utility.datasets()}
    homes, meters = named[f"home-addresses-{run}"], named[f"leak-detection-{run}"]
    wallet = stage.wallets[CITIZEN]
    return Played(
        stage,
        lines,
        dumps[0],
        after,
        homes,
        meters,
        wallet.pseudonym(homes),
        wallet.pseudonym(meters),
    )


def test_the_story_says_each_step(played: Played) -> None:
    out = "\n".join(played.lines)
    wrong, right = played.values
    for said in (
        "signs in with her wallet, no API key: each of her 2 pseudonyms signs",
        f'the address on file says "{wrong}"',
        "the bank a recipient, the legal basis contract",
        "it verifies from the genesis alone",
        f"she {ASKED}: request ",
        "the old version opens nowhere any more",
        "the utility asks for the old version: gone (410)",
        "the bank asks again: yes for the right address, no for the old one",
        "the bank asks and is refused (restricted)",
        "(1 record withheld, her record itself 409 restricted)",
        "the utility reads her record again",
        "kept under a contract (basis_is_consent)",
        "legal basis legitimate_interests",
        f"the utility read {len(READINGS)} readings of hers, now none",
        "access, portability, rectification (rectification.request, record.rectify), "
        "restriction (restriction.set)",
        "access, portability, objection (objection.set)",
        "she signs out: the session's token opens nothing any more (401)",
    ):
        assert said in out, f"{said!r} not in:\n{out}"
    assert right in out and "FAILED" not in out


def test_signed_in_again_she_finds_the_corrected_record_and_her_register(
    system: System, played: Played
) -> None:
    wrong, right = played.values
    wallet = played.stage.wallets[CITIZEN]
    me = system.api.sign_in(wallet, datasets=[played.homes, played.meters])
    try:
        assert me.session is not None
        assert sorted(me.session["pseudonyms"]) == sorted(
            public_hex(k) for k in (played.lucie, played.metered)
        )
        _register_answered(me, played)  # first: reading her export again is a request too
        _standing(me, played)
        export = list(me.iter_export(public_hex(played.lucie)))
        [record] = [r for p in export for r in p["records"]]
        [old] = [h for p in export for h in p["history"]]
        assert record["payload"] == {"address": right}
        assert old["superseded_by"] == record["record_id"] and "payload" not in old
        package = me.export_package()
        keyring = Keyring.load(system.data_dir)
        assert verify_package(package, keyring.validators, keyring.chain_id, keyring.vaults).ok
        assert wrong not in json.dumps(package) and right in json.dumps(package)
    finally:
        me.sign_out()
    bank = system.client(played.bank.key, "consumer")
    subject = public_hex(played.lucie)

    def ask(value: str) -> bool:
        out = bank.predicate(
            played.homes, PURPOSE, subject=subject, field="address", op="eq", value=value
        )
        return bool(out["result"])

    assert ask(right) and not ask(wrong)
    with pytest.raises(Gone):
        system.client(played.utility.key, "provider").record(old["record_id"])


def one_month_after(received: dt.datetime) -> dt.datetime:
    """Art. 12(3)'s month: the same date next month, or that month's last day."""
    year, month = received.year + received.month // 12, received.month % 12 + 1
    day = min(received.day, calendar.monthrange(year, month)[1])
    return received.replace(year=year, month=month, day=day)


def _register_answered(me: CivisClient, played: Played) -> None:
    """Every request answered, each due one calendar month after its receipt; the
    rectification closed by the ledger's record.rectify."""
    requests = [r for k in (played.lucie, played.metered) for r in me.requests(public_hex(k))]
    assert sorted(r["kind"] for r in requests) == sorted(
        [
            *("access", "portability", "rectification", "restriction"),  # her address
            *("access", "portability", "objection"),  # her meter readings
        ]
    )
    for r in requests:
        received = dt.datetime.fromisoformat(r["received_at"]).astimezone(dt.UTC)
        due = dt.datetime.fromisoformat(r["due_at"]).astimezone(dt.UTC)
        assert due == one_month_after(received), r  # `up` runs in UTC: no summer time here
        assert r["state"] == "done" and not r["overdue"], r
    [rectification] = [r for r in requests if r["kind"] == "rectification"]
    facts = [f["type"] for f in rectification["facts"]]
    assert facts == ["rectification.request", "record.rectify"], facts
    assert rectification["dataset_id"] == played.homes


def _standing(me: CivisClient, played: Played) -> None:
    """The restriction is lifted (nothing left on the addresses); the objection stands."""
    assert me.restrictions(public_hex(played.lucie))["restrictions"] == []
    [objected] = me.restrictions(public_hex(played.metered))["restrictions"]
    assert objected["dataset"] == played.meters and objected["objected"]
    assert objected["processing_stopped"] and objected["provider_reads_withheld"]
    assert objected["override"] is None


def test_the_ledger_holds_her_request_closed_by_the_rectification(
    system: System, played: Played
) -> None:
    """Her signed request holds the hash of her statement, never the statement; the
    record.rectify that closed it links the old version's upload to the replacement's."""
    gateway = LedgerGateway.from_directory(
        system.data_dir / "ledger", system.data_dir / "keys", clients=1
    )
    try:
        [asked] = gateway.query("rectifications", subject=public_hex(played.lucie))["result"]
    finally:
        gateway.close()
    said = statement(played.stage.run_id).encode()
    assert asked["status"] == "done" and asked["dataset"] == played.homes
    assert bytes(asked["statement_hash"]) == hashlib.sha256(said).digest()
    done = asked["rectification"]
    rows = {r["id"]: r for r in _copy_rows(played.after, "records")}
    old = rows[asked["record"]]
    new = rows[str(old["superseded_by"])]
    assert [k["upload"] for k in done["superseded"]] == [old["upload_id"]]
    assert [k["upload"] for k in done["replacement"]] == [new["upload_id"]]
    assert done["request"] == asked["request"] and done["dataset"] == played.homes


# -- the old version in pg_dump ----------------------------------------------------------------


def test_the_old_version_is_unreadable_in_pg_dump(system: System, played: Played) -> None:
    """What "the old address is unreadable in pg_dump" means, and what this checks.

    Records are encrypted, so the old address never appears in clear in any dump, before the
    rectification as after: its absence proves nothing by itself (checked anyway, with the
    pseudonym as the control that the scan sees her rows, and the corrected address found in
    her decrypted export, never in a dump). What matters is whether someone holding a dump
    and the KEK that wraps the key store (here the master key file `up` keeps; in production
    an HSM the operator holds) can open the old version. So:

    - the control: the dump taken while her request waited (a backup) holds the old version's
      ciphertext, and the secrets in that same dump, unwrapped with the KEK, open it to the
      old address: a dump does hold what decrypts a record;
    - after the rectification, a dump of the running database holds the old row without its
      ciphertext (its salted leaf stays for the proofs), the old ciphertext nowhere, the old
      wrapped subject secret nowhere; and no combination of the secrets it holds, unwrapped
      with the same KEK, opens the old ciphertext copied from the backup (what a backup, a
      dead tuple or the WAL keeps), while the same procedure opens the current version to the
      corrected address (the control that it works on this dump).

    The limit, stated rather than hidden: the backup itself still opens the old version for
    as long as the KEK that wrapped its secrets lives; a backup is made final by the KEK's
    rotation and retirement (docs/KEYS.md, "Making erasure final against copies").
    """
    wrong, right = played.values
    homes, subject = uuid.UUID(played.homes), public_hex(played.lucie)
    provider = LocalKeyProvider(system.data_dir / "master.key", create=False)
    # The control: the backup holds the old version and the secrets that open it.
    [old] = [
        r
        for r in _copy_rows(played.backup, "records")
        if r["dataset_id"] == played.homes and r["subject_id"] == subject
    ]
    ciphertext = _bytea(old["envelope"])
    assert ciphertext is not None and old["superseded_by"] is None
    then = _secrets(played.backup, homes, provider)
    assert _open(then, ciphertext, old) == {"address": wrong}
    # After: the row without its ciphertext, the ciphertext and the old secret nowhere.
    rows = {r["id"]: r for r in _copy_rows(played.after, "records")}
    gone = rows[old["id"]]
    assert gone["envelope"] is None and gone["superseded_by"] is not None
    new = rows[gone["superseded_by"]]
    assert new["subject_id"] == subject and new["dataset_id"] == played.homes
    assert ciphertext.hex().encode() not in played.after
    assert ciphertext.hex().encode() in played.backup  # the control: the scan finds it there
    old_wrapped = _wrapped_subject_secret(played.backup, played.homes, subject)
    assert old_wrapped.hex().encode() in played.backup
    assert old_wrapped.hex().encode() not in played.after
    # No secret the dump holds opens the old version; the same procedure opens the new one.
    now = _secrets(played.after, homes, provider)
    assert now["subject"] and now["upload"] and now["epoch"]
    assert _open(now, ciphertext, old) is None, "a secret the store holds opens the old version"
    assert _open(now, _bytea(new["envelope"]), new) == {"address": right}
    # In clear: neither address in either dump; the pseudonym is (the scan sees her rows).
    for dump in (played.backup, played.after):
        assert wrong.encode() not in dump and right.encode() not in dump
        assert subject.encode() in dump


def _copy_rows(dump: bytes, table: str) -> list[Row]:
    """The rows of `table`'s COPY block in a plain-text pg_dump, by column name (NULL as None;
    other values as dumped: a bytea is `\\\\x` and hex)."""
    lines = iter(dump.decode().splitlines())
    head = f"COPY public.{table} ("
    for line in lines:
        if line.startswith(head):
            columns = line[len(head) : line.index(")")].split(", ")
            break
    else:
        raise AssertionError(f"no COPY block for {table} in the dump")
    rows = []
    for line in itertools.takewhile(lambda x: x != "\\.", lines):
        values = [None if v == "\\N" else v for v in line.split("\t")]
        rows.append(dict(zip(columns, values, strict=True)))
    return rows


def _bytea(value: str | None) -> bytes | None:
    """A bytea as COPY writes it (`\\\\x` then hex, the backslash escaped)."""
    if value is None:
        return None
    assert value.startswith("\\\\x"), value[:8]
    return bytes.fromhex(value[3:])


def _secrets(dump: bytes, dataset: uuid.UUID, provider: LocalKeyProvider) -> dict[str, list[bytes]]:
    """Every secret of the dataset the dump holds, unwrapped with the KEK, by kind."""
    out: dict[str, list[bytes]] = {"upload": [], "subject": [], "epoch": []}
    for r in _copy_rows(dump, "key_secrets"):
        if r["dataset_id"] != str(dataset):
            continue
        kind, scope, kek, wrapped = r["kind"], r["scope"], r["kek_id"], _bytea(r["wrapped"])
        assert kind is not None and scope is not None and kek is not None and wrapped
        ref = SecretRef(kind, dataset, scope)
        out[kind].append(provider.unwrap(kek, wrapped, aad=ref.aad()))
    return out


def _wrapped_subject_secret(dump: bytes, dataset: str, subject: str) -> bytes:
    [row] = [
        r
        for r in _copy_rows(dump, "key_secrets")
        if (r["kind"], r["dataset_id"], r["scope"]) == ("subject", dataset, subject)
    ]
    wrapped = _bytea(row["wrapped"])
    assert wrapped is not None
    return wrapped


def _open(keys: dict[str, list[bytes]], envelope: bytes | None, row: Row) -> object:
    """The payload any combination of the secrets opens the row's envelope to, or None."""
    assert envelope is not None
    ids = {k: uuid.UUID(str(row[k])).bytes for k in ("id", "dataset_id", "upload_id")}
    for u, s, e in itertools.product(keys["upload"], keys["subject"], keys["epoch"]):
        dek = derive_dek(
            upload_secret=u,
            subject_secret=s,
            epoch_secret=e,
            upload_id=ids["upload_id"],
            subject_id=str(row["subject_id"]).encode(),
        )
        try:
            plain = unseal(
                dek,
                envelope,
                record_id=ids["id"],
                dataset_id=ids["dataset_id"],
                upload_id=ids["upload_id"],
            )
        except DecryptionFailed:
            continue
        return json.loads(plain)
    return None
