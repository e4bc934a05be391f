"""The subject's export (Art. 15, 20) against a real ledger: paged with nothing cut, and a
portable package another controller verifies from the genesis alone.

The scene: a citizen with records in two uploads of an address dataset and one in a dataset
later erased for them; a consent (with its notice) to the bank, a consent to another purpose
then revoked; accesses by the bank naming the citizen alone, open, and naming another citizen
too (its request withheld from the package). Tests that need many accesses make their own
subject, so the scene's counts never change.
"""

from __future__ import annotations

import base64
import copy
import json
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from api.cli import main as cli
from api.client import CivisClient, json_schema
from api.client.accountability import package_message
from api.client.export_verify import verify_package
from api.client.wallet import pseudonym_key
from api.services import export_package
from api.services.export import Sources
from api.services.gateway import LedgerGateway
from ledger_bridge.crypto import SigningKey
from ledger_bridge.genesis import GENESIS_FILE
from tests.api.ledger_env import LedgerEnv, Wallet
from tests.api.test_consented_access import (
    api,
    grant_body,
    notice,
    register_subject,
    setup_addresses,
    signed,
)
from tests.api.test_roles import make_dataset, upload_anchored


@dataclass
class Scene:
    citizen: Wallet
    other: Wallet
    dataset: str
    erased_dataset: str
    package: dict[str, Any]


def _grant(env: LedgerEnv, citizen: Wallet, dataset: str, purpose: str) -> None:
    body = grant_body(env, citizen, dataset, purpose)
    r = env.client.post("/v1/consents", json=signed(env, citizen, "consent.grant", body))
    assert r.status_code == 201, r.text


def _access(env: LedgerEnv, dataset: str, subjects: list[str] | None) -> int:
    body: dict[str, Any] = {"dataset_id": dataset, "purpose": "billing"}
    if subjects is not None:
        body["subjects"] = subjects
    r = env.client.post(
        "/v1/access-requests", headers=env.headers("consumer", env.consumer), json=body
    )
    assert r.status_code == 200, r.text
    access: int = r.json()["access"]
    return access


def _package(env: LedgerEnv, subject: Wallet) -> dict[str, Any]:
    r = env.client.get(
        f"/v1/subjects/{subject.id}/export/package", headers=env.headers("subject", subject)
    )
    assert r.status_code == 200, r.text
    assert r.headers["content-disposition"].startswith("attachment;")
    package: dict[str, Any] = r.json()
    return package


@pytest.fixture(scope="module")
def scene(ledger_env: LedgerEnv) -> Scene:
    env = ledger_env
    citizen, other = register_subject(env), register_subject(env)
    dataset, owner = setup_addresses(env, [citizen, other], ("proof-of-address", "billing"))
    upload_anchored(env, owner, dataset, [(citizen, {"address": "2 quai Second", "n": 7})])
    _grant(env, citizen, dataset, "billing")
    _grant(env, citizen, dataset, "proof-of-address")
    api(env).revoke_consent(
        citizen.key, consumer=env.consumer.id, purpose="proof-of-address", dataset=dataset
    )
    _grant(env, other, dataset, "billing")
    for subjects in ([citizen.id], None, [citizen.id, other.id]):
        _access(env, dataset, subjects)
    erased = make_dataset(env, owner, "energy", ["research"])
    upload_anchored(env, owner, erased, [(citizen, {"kwh": 3})])
    dpo = env.headers("dpo", env.dpo)
    r = env.client.post(
        "/v1/erasures", headers=dpo, json={"subject_id": citizen.id, "dataset_id": erased}
    )
    assert r.status_code == 201, r.text
    return Scene(citizen, other, dataset, erased, _package(env, citizen))


def _genesis(env: LedgerEnv) -> Path:
    return env.cluster.directory / GENESIS_FILE


def _verify_file(env: LedgerEnv, package: Any, tmp_path: Path, capsys: Any) -> tuple[int, Any]:
    path = tmp_path / "export.json"
    path.write_text(json.dumps(package))
    code = cli(["verify-export", str(path), "--genesis", str(_genesis(env))])
    return code, json.loads(capsys.readouterr().out)


def test_a_package_holds_everything_and_round_trips_through_the_verifier(
    ledger_env: LedgerEnv, scene: Scene, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    env, package = ledger_env, scene.package
    assert json_schema.validate(package) == []
    assert package["subjects"] == [scene.citizen.id]
    assert sorted(r["payload"]["address"] for r in package["records"]) == [
        "12 rue Imaginaire",
        "2 quai Second",
    ]
    [dataset] = [d for d in package["datasets"] if d["dataset_id"] == scene.dataset]
    assert dataset["purposes"] == ["proof-of-address", "billing"]
    assert dataset["legal_basis"] == "contract" and dataset["retention_days"] == 365
    assert dataset["source"] == {"provider": env.provider.id}
    [recipient] = dataset["recipients"]
    assert recipient["consumer"] == env.consumer.id and recipient["purposes"] == ["billing"]
    assert len(recipient["heights"]) == 3
    by_purpose = {c["purpose"]: c for c in package["consents"]}
    assert by_purpose["billing"]["granted"] and not by_purpose["proof-of-address"]["granted"]
    assert by_purpose["billing"]["notice"]["body"]["recipient"] == env.consumer.id
    assert by_purpose["billing"]["notice"]["notice_hash"] == notice(env, "billing")
    assert [a["receipt"]["held"] for a in package["accesses"]] == [True, True, False]
    assert [e["scope"]["dataset"] for e in package["erasures"]] == [scene.erased_dataset]
    assert package["history"] == []
    # the package's own read of the records is recorded before it lists the reads, and listed
    [read] = package["decryptions"]
    assert (read["kind"], read["reader"], read["subject"]) == (
        "subject_export",
        scene.citizen.id,
        scene.citizen.id,
    )
    assert read["record_count"] == 2 and "salt" not in read
    code, report = _verify_file(env, package, tmp_path, capsys)
    assert code == 0, report
    assert report["checked"] == {
        "accesses": 2,
        "blocks": len(package["blocks"]),
        "consents": 2,
        "erasures": 1,
        "inclusions": 2,
        "notices": 2,
        "records": 2,
        "signature": 1,
        "uploads": 2,
    }
    assert len(report["unverifiable"]) == 1 and "withheld" in report["unverifiable"][0]


def test_a_real_package_is_valid_for_an_independent_validator(scene: Scene) -> None:
    jsonschema_rs = pytest.importorskip("jsonschema_rs")  # a test dependency (schemathesis)
    assert jsonschema_rs.validator_for(json_schema.export_schema()).is_valid(scene.package)


def test_pages_of_one_item_hold_what_the_package_holds(ledger_env: LedgerEnv, scene: Scene) -> None:
    """The client follows the cursor; every section ends on its own page, none repeats."""
    env = ledger_env
    token = env.headers("subject", scene.citizen)["Authorization"].removeprefix("Bearer ")
    client = CivisClient(http=env.client).with_key(token)
    pages = list(client.iter_export(scene.citizen.id, limit=1))
    assert len(pages) == 3  # three accesses, one a page; the last page says it is the end
    assert [p["complete"] for p in pages] == [False, False, True]
    for section in ("records", "consents", "accesses", "erasures"):
        paged = [item for p in pages for item in p[section]]
        packaged = [
            {k: v for k, v in item.items() if k != "receipt"} for item in scene.package[section]
        ]
        assert paged == packaged, section
    again = client.export_package(scene.citizen.id)
    assert again["records"] == scene.package["records"]
    assert again["blocks"] == scene.package["blocks"]


def test_a_package_carries_nobody_elses_transactions(scene: Scene) -> None:
    """The pruned blocks hold the package's own requests; the other citizen's consent and the
    access naming them travel as digests only."""
    raw = b"".join(bytes.fromhex(b["block"]) for b in scene.package["blocks"])
    assert bytes.fromhex(scene.other.id) not in raw
    assert scene.other.id not in json.dumps(scene.package)


def _payload(p: dict[str, Any]) -> None:
    record = p["records"][0]
    address = record["payload"]["address"]
    record["payload"]["address"] = chr(ord(address[0]) ^ 1) + address[1:]


def _block(p: dict[str, Any]) -> None:
    block = p["blocks"][0]["block"]
    i = len(block) // 2
    block_list = list(block)
    block_list[i] = "0" if block[i] != "0" else "1"
    p["blocks"][0]["block"] = "".join(block_list)


def _relabel(p: dict[str, Any]) -> None:
    """Someone else's record (a consumer holds records with their salts and proofs) passed
    off as another pseudonym's: the ledger cannot tell whose a record is, only the vault."""
    stranger = "ab" * 32
    p["subjects"].append(stranger)
    p["records"][0]["subject_id"] = stranger


def _resigned(p: dict[str, Any]) -> None:
    """Relabelled, then signed by a key of the forger's own, named as the issuer."""
    _relabel(p)
    forger = SigningKey.generate()
    p["signature"] = {
        "issuer": forger.public_key.hex(),
        "signature": forger.sign(package_message(p)).hex(),
    }


def _set(path: tuple[Any, ...], value: Any) -> Any:
    def change(p: dict[str, Any]) -> None:
        target: Any = p
        for step in path[:-1]:
            target = target[step]
        target[path[-1]] = value

    return change


TAMPERINGS = {
    "one byte of a record's payload": _payload,
    "one hex digit of a block": _block,
    "a record's index in its upload": _set(("records", 0, "proof", "leaf_index"), 1),
    "an upload's root": _set(("uploads", 0, "merkle_root"), "00" * 32),
    "a consent's purpose": _set(("consents", 0, "purpose"), "research"),
    "a consent's notice text": _set(("consents", 0, "notice", "body", "retention"), "forever"),
    "a consent's state": _set(("consents", 0, "granted"), False),
    "an access's consumer": _set(("accesses", 0, "consumer"), "ab" * 32),
    "an erasure's transaction": _set(("erasures", 0, "tx"), "cd" * 32),
    "a receipt's block": _set(("uploads", 0, "receipt", "block_hash"), "ef" * 32),
    "the package's chain": _set(("chain_id",), "another-chain"),
    "a receipt dropped": _set(("consents", 0, "receipt"), None),
    "a field the schema has not": _set(("records", 0, "note"), "x"),
    "a record's dataset": _set(("records", 0, "dataset_id"), str(uuid.UUID(int=7))),
    "a dataset's legal basis": _set(("datasets", 0, "legal_basis"), "vital_interests"),
    "a dataset's recipients": _set(("datasets", 0, "recipients"), []),
    "a record handed to another subject": _relabel,
    "a package signed by another key than the vault's": _resigned,
    "the vault's signature dropped": _set(("signature",), None),
}


@pytest.mark.parametrize("name", list(TAMPERINGS))
def test_any_tampering_fails_the_verifier(
    ledger_env: LedgerEnv,
    scene: Scene,
    name: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    tampered = copy.deepcopy(scene.package)
    TAMPERINGS[name](tampered)
    code, report = _verify_file(ledger_env, tampered, tmp_path, capsys)
    assert code == 1 and not report["verified"] and report["failures"], report


def test_an_unreadable_package_or_genesis_exits_2(ledger_env: LedgerEnv, tmp_path: Path) -> None:
    bad = tmp_path / "not.json"
    bad.write_text("{")
    assert cli(["verify-export", str(bad), "--genesis", str(_genesis(ledger_env))]) == 2
    good = tmp_path / "export.json"
    good.write_text("{}")
    assert cli(["verify-export", str(good), "--genesis", str(tmp_path / "none.toml")]) == 2


def test_the_package_verifies_against_its_own_validators_only(scene: Scene) -> None:
    """Other validator keys: no block verifies, so nothing else does."""
    strangers = [bytes(SigningKey.generate().public_key) for _ in range(4)]
    vaults = [bytes.fromhex(scene.package["signature"]["issuer"])]
    report = verify_package(scene.package, strangers, scene.package["chain_id"], vaults)
    assert not report.ok and any("certificate" in f for f in report.failures)


WIDE = 32  # transactions in flight: the replicas batch them, so the thousand take seconds


def _many_accesses(env: LedgerEnv, dataset: str, subject: Wallet, n: int) -> list[int]:
    """n accesses naming `subject`, signed by the vault for the consumer, WIDE at a time (a
    gateway of its own: the app's has a client per request thread)."""
    body = {
        "consumer": bytes.fromhex(env.consumer.id),
        "dataset": dataset,
        "purpose": "billing",
        "subjects": [subject.id],
    }
    keys_dir = env.cluster.directory.parent / "keys"
    gateway = LedgerGateway.from_directory(env.cluster.directory, keys_dir, clients=WIDE)
    try:
        with ThreadPoolExecutor(WIDE) as pool:
            answers = list(pool.map(lambda _: gateway.act("access.request", body), range(n)))
    finally:
        gateway.close()
    assert all(a.result["granted"] == [subject.id] for a in answers)
    return [int(a.result["access"]) for a in answers]


def test_more_than_a_thousand_accesses_are_all_reachable_by_paging(
    ledger_env: LedgerEnv, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    env = ledger_env
    citizen = register_subject(env)
    dataset, _ = setup_addresses(env, [citizen], ("billing",))
    _grant(env, citizen, dataset, "billing")
    time.sleep(0.05)  # a consent is in force from the next block
    made = _many_accesses(env, dataset, citizen, 1001)
    headers = env.headers("subject", citizen)
    seen: list[int] = []
    pages, cursor = 0, None
    while True:
        params: dict[str, Any] = {"limit": 400}
        if cursor is not None:
            params["cursor"] = cursor
        r = env.client.get(f"/v1/subjects/{citizen.id}/export", headers=headers, params=params)
        assert r.status_code == 200, r.text
        page = r.json()
        pages += 1
        seen += [a["access"] for a in page["accesses"]]
        assert len(page["accesses"]) <= 400
        cursor = page["next_cursor"]
        assert page["complete"] is (cursor is None)
        if cursor is None:
            break
    assert pages == 3 and seen == sorted(made) and len(set(seen)) == 1001
    package = _package(env, citizen)
    assert [a["access"] for a in package["accesses"]] == sorted(made)
    code, report = _verify_file(env, package, tmp_path, capsys)
    assert code == 0 and report["checked"]["accesses"] == 1001, report


def test_a_cursor_the_export_did_not_give_is_refused(ledger_env: LedgerEnv) -> None:
    env = ledger_env
    citizen = register_subject(env)
    headers = env.headers("subject", citizen)
    forged = [
        {"records": ["x", 1]},
        {"records": [12, 1]},
        {"records": [str(uuid.uuid4()), -1]},
        {"accesses": "1"},
        {"accesses": True},
        {"decryptions": "12.not-a-read"},
        {"decryptions": "soon"},
        {"decryptions": f"{10**30}.{uuid.uuid4()}"},
        {"nothing": None},
        {},
    ]
    cursors = [
        base64.urlsafe_b64encode(json.dumps(f).encode()).decode().rstrip("=") for f in forged
    ]
    for cursor in (*cursors, "AAAA", "x" * 3000, "a.b"):
        r = env.client.get(
            f"/v1/subjects/{citizen.id}/export", headers=headers, params={"cursor": cursor}
        )
        assert r.status_code == 422, (cursor, r.text)
        assert r.headers["content-type"] == "application/problem+json"


def test_one_package_over_every_pseudonym_of_a_subject(
    ledger_env: LedgerEnv, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A subject's wallet holds one pseudonym per dataset; signed in with several, they get one
    package over all (the service the signed-in route calls), and it verifies."""
    env = ledger_env
    master = SigningKey.generate()
    owner = env.headers("provider", env.provider)
    first = make_dataset(env, owner, "address", ["billing"])
    second = make_dataset(env, owner, "energy", ["research"])
    nyms = [Wallet(pseudonym_key(master, d)) for d in (first, second)]
    for nym in nyms:
        assert api(env).register(nym.key, "subject", "citizens")["result"]["status"] == "active"
    upload_anchored(env, owner, first, [(nyms[0], {"address": "1 rue Une"})])
    upload_anchored(env, owner, second, [(nyms[1], {"kwh": 12})])
    app = env.client.app
    with app.state.sessions() as session:  # type: ignore[attr-defined]
        src = Sources(session, app.state.key_store, env.gateway)  # type: ignore[attr-defined]
        package = export_package.build(src, sorted(n.id for n in nyms), env.chain_id)
    assert package["subjects"] == sorted(n.id for n in nyms)
    assert {r["subject_id"] for r in package["records"]} == {n.id for n in nyms}
    code, report = _verify_file(env, package, tmp_path, capsys)
    assert code == 0 and report["checked"]["records"] == 2, report
    # over HTTP, a subject's API key stands for its one pseudonym; the DPO names one instead
    r = env.client.get("/v1/subjects/export-package", headers=env.headers("subject", nyms[0]))
    assert r.status_code == 200 and r.json()["subjects"] == [nyms[0].id], r.text
    r = env.client.get("/v1/subjects/export-package", headers=env.headers("dpo", env.dpo))
    assert r.status_code == 403


def test_the_reads_page_oldest_first_each_export_listing_its_own(ledger_env: LedgerEnv) -> None:
    """Each export page records its read before it lists the reads: followed with a cursor of
    one item a page, the reads come in time order, none twice, this export's own included."""
    env = ledger_env
    citizen = register_subject(env)
    setup_addresses(env, [citizen], ("billing",))
    headers = env.headers("subject", citizen)
    path = f"/v1/subjects/{citizen.id}/export"
    for _ in range(2):
        assert env.client.get(path, headers=headers).status_code == 200
    seen: list[dict[str, Any]] = []
    cursor = None
    while True:
        params: dict[str, Any] = {"limit": 1, **({"cursor": cursor} if cursor else {})}
        page = env.client.get(path, headers=headers, params=params).json()
        seen += page["decryptions"]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert len(seen) == 3 and len({d["id"] for d in seen}) == 3
    assert [d["at"] for d in seen] == sorted(d["at"] for d in seen)
    assert {d["kind"] for d in seen} == {"subject_export"}
