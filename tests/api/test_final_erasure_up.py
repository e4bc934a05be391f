"""Final erasure on a real `civis-vault up`: the forensic attack, and rotation while serving.

The system is what a user runs: `civis-vault up` on a new data directory (its own embedded
PostgreSQL, so its own heap files and WAL; four replica processes; the API under uvicorn), and
a second API instance, `civis-vault up --ledger-dir` on the same database and master key file
(as behind a load balancer). Both report their KEKs every 0.3 s; the second runs the
final-erasure job every second (`CIVIS_FINAL_ERASURE_INTERVAL=PT1S`), the first on the default
daily schedule.

1. The attack that found the problem, on the host's files: the DPO erases a subject, the
   certificate says `recorded`, and with the master key file from the same data directory
   the erased record decrypts from the heap files or the WAL after a CHECKPOINT
   (tests/vault/forensics.py). Once the certificate says `final`, the same attack, on the
   files, the WAL and `pg_dump`, with every KEK the host then holds, opens nothing of the
   erased subject, and still opens a subject who was not erased (the control).
2. Rotation while the two instances serve uploads and reads (and `civis-vault keys rotate` runs
   on top): no 5xx answer, no secret wrapped under a retired KEK, every record readable by a
   freshly started instance.
"""

from __future__ import annotations

import base64
import json
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
from sqlalchemy import text
from sqlalchemy.orm import Session

from api.client import CivisClient, public_hex
from api.services.keys import create_key
from ledger_bridge.crypto import SigningKey
from ledger_bridge.genesis import load_signing_key
from tests.api.test_e2e_up import PORT_RACES, START_ATTEMPTS, System, _stop_and_reap
from tests.api.test_up import Up, _clean_env
from tests.vault import forensics
from vault import db
from vault.embedded import sqlalchemy_url
from vault.keys import SecretRef, epoch_ref, subject_ref, upload_ref

pytestmark = pytest.mark.e2e

FAST = {"CIVIS_INSTANCE_HEARTBEAT_S": "0.3", "CIVIS_INSTANCE_TTL_S": "3"}
ROTATING = {**FAST, "CIVIS_FINAL_ERASURE_INTERVAL": "PT1S"}
FINAL_WAIT_S = 90.0
LOAD_S = 8.0


@dataclass
class Vault:
    system: System
    provider: str  # the provider's API key
    dataset: str
    instances: list[Up] = field(default_factory=list)  # the second instance(s)

    @property
    def data_dir(self) -> Path:
        return self.system.data_dir

    def instance(self, env: dict[str, str]) -> Up:
        """Another API instance on the same database, ledger, ledger keys and master key file
        (a data directory of its own: `up` keeps its directory to itself, 0700)."""
        own = self.data_dir.parent / f"instance-{len(self.instances)}"
        own.mkdir()
        (own / "keys").symlink_to(self.data_dir / "keys")
        up = Up(
            "--data-dir",
            str(own),
            "--ledger-dir",
            str(self.data_dir / "ledger"),
            "--database-url",
            self.system.database_url,
            env={**env, "CIVIS_MASTER_KEY_PATH": str(self.data_dir / "master.key")},
        )
        self.instances.append(up)
        up.wait_until("/readyz", 200)
        return up


def _embedded_url(data_dir: Path) -> str:
    """The embedded server's socket, from its postmaster.pid (port, then socket directory)."""
    lines = (data_dir / "pg" / "postmaster.pid").read_text().splitlines()
    return sqlalchemy_url(lines[4], "civis", int(lines[3]))


def _start(base: Path) -> tuple[Up, Path]:
    for attempt in range(1, START_ATTEMPTS + 1):
        data_dir = base / f"civis-{attempt}"
        up = Up("--data-dir", str(data_dir), env=FAST)
        try:
            up.wait_until("/readyz", 200)
            return up, data_dir
        except AssertionError:
            _stop_and_reap(up, data_dir)
            if attempt == START_ATTEMPTS or not any(s in up.output.lower() for s in PORT_RACES):
                raise
    raise AssertionError("unreachable")


@pytest.fixture(scope="module")
def vault() -> Iterator[Vault]:
    # Not under pytest's base temporary directory: any pytest session of the same user
    # starting meanwhile makes that 0700 again, and the embedded server, which runs as its own
    # user when started by root, then can no longer reach its data directory.
    base = Path(tempfile.mkdtemp(prefix="civis-final-"))
    try:
        yield from _running_vault(base)
    finally:
        shutil.rmtree(base, ignore_errors=True)


def _running_vault(base: Path) -> Iterator[Vault]:
    up, data_dir = _start(base)
    extra: list[Up] = []
    try:
        url = _embedded_url(data_dir)
        engine = db.make_engine(url, pool_size=2)
        try:
            with CivisClient(up.url) as api:
                system = System(
                    up, data_dir, url, engine, api, load_signing_key(data_dir / "keys/dpo.key")
                )
                provider = system.member("provider", "providers")
                system.admit(provider)
                with Session(engine) as s, s.begin():
                    token = create_key(s, member_id=public_hex(provider), role="provider").token
                dataset = api.with_key(token).create_dataset(
                    f"meters-{uuid.uuid4().hex[:6]}",
                    category="energy",
                    purposes=["proof-of-address"],
                    retention_days=30,
                    legal_basis="consent",
                )["id"]
                yield Vault(system, token, dataset, extra)
        finally:
            engine.dispose()
    finally:
        for other in extra:
            other.stop()
        _stop_and_reap(up, data_dir)


def _pseudonym() -> str:
    return public_hex(SigningKey.generate())


def _ndjson(rows: list[tuple[str, dict[str, object]]]) -> bytes:
    return b"".join(json.dumps({"subject_id": s, "payload": p}).encode() + b"\n" for s, p in rows)


def _evidence(vault: Vault) -> forensics.Evidence:
    """What the host holds: every relation file and WAL segment after a CHECKPOINT, a
    pg_dump, and the KEKs of the master key file in the same data directory."""
    doc = json.loads((vault.data_dir / "master.key").read_text())
    return forensics.Evidence(
        blobs=forensics.server_files(vault.system.engine),
        values=set(forensics.dump_values(forensics.pg_dump(vault.system.database_url))),
        keks={k: base64.b64decode(v) for k, v in doc["keks"].items()},
    )


def _attack(
    evidence: forensics.Evidence,
    targets: dict[str, forensics.Target],
    witnesses: dict[str, bytes] | None = None,
) -> dict[str, list[bytes]]:
    """Each target's records the evidence decrypts (see tests/vault/forensics.py);
    `witnesses` gets the wrapped secret that opened each target."""
    one = next(iter(targets.values()))
    shared: dict[str, SecretRef] = {
        "upload": upload_ref(one.dataset, one.upload),
        "epoch": epoch_ref(one.dataset, one.day),
    }
    subjects = {name: subject_ref(t.dataset, t.subject) for name, t in targets.items()}
    secrets = forensics.unwrap_targets(
        evidence.windows(), evidence.keks, {**shared, **subjects}, witnesses
    )
    assert "upload" in secrets and "epoch" in secrets, "the live secrets must unwrap"
    return {
        name: forensics.decrypt_records(
            evidence, t, (secrets["upload"], secrets["epoch"]), secrets[name]
        )
        if name in secrets
        else []
        for name, t in targets.items()
    }


def test_an_erased_record_decrypts_from_the_files_until_its_erasure_is_final(
    vault: Vault,
) -> None:
    api = vault.system.api.with_key(vault.provider)
    alice, bob = _pseudonym(), _pseudonym()
    marker, control = f"FORENSIC-{uuid.uuid4().hex}", f"CONTROL-{uuid.uuid4().hex}"
    rows = [(alice, {"note": marker, "n": i}) for i in range(3)]
    rows += [(bob, {"note": control, "n": i}) for i in range(3)]
    upload = api.upload(vault.dataset, _ndjson(rows), media_type="application/x-ndjson")
    upload_id = uuid.UUID(upload["upload_id"])
    with vault.system.engine.connect() as conn:
        record_ids = tuple(
            conn.scalars(text("SELECT id FROM records WHERE upload_id = :u"), {"u": upload_id})
        )
    targets = {
        name: forensics.Target(
            who, uuid.UUID(vault.dataset), upload_id, upload["retention_day"], record_ids
        )
        for name, who in (("alice", alice), ("bob", bob))
    }
    dpo = vault.system.client(vault.system.dpo, "dpo")
    cert = dpo.erase(subject_id=alice)
    assert cert["state"] == "recorded" and cert["final_at"] is None

    # Recorded, not final: the host's own master key opens the erased record from its files.
    opened_by: dict[str, bytes] = {}
    before = _attack(_evidence(vault), targets, opened_by)
    assert any(marker.encode() in p for p in before["alice"]), "the attack must work first"
    assert any(control.encode() in p for p in before["bob"])

    # A second instance runs the job every second; the first adopts its KEK by heartbeat.
    vault.instance(ROTATING)
    deadline = time.monotonic() + FINAL_WAIT_S
    while (now := dpo.erasure(cert["erasure_id"]))["state"] != "final":
        assert time.monotonic() < deadline, now
        time.sleep(0.5)
    assert now["final_at"] is not None and now["recorded_at"] is not None

    evidence = _evidence(vault)
    after = _attack(evidence, targets)
    assert after["alice"] == [], "an erasure certificate said final, yet the record decrypts"
    assert any(control.encode() in p for p in after["bob"])  # the same scan still works
    # What opened alice's records is still on the host (in the WAL at least): final is not
    # "deleted", it is "no key the host holds opens it".
    assert opened_by["alice"] in set(evidence.windows())


def _load(vault: Vault, urls: list[str], stop: threading.Event, codes: Counter[int]) -> None:
    """Uploads and reads against every instance in turn until `stop`."""
    headers = {"Authorization": f"Bearer {vault.provider}"}
    with httpx.Client(timeout=60) as http:
        i = 0
        while not stop.is_set():
            base = urls[i % len(urls)]
            i += 1
            body = _ndjson([(_pseudonym(), {"n": i, "load": True}) for _ in range(4)])
            r = http.post(
                f"{base}/v1/datasets/{vault.dataset}/uploads",
                content=body,
                headers={**headers, "Content-Type": "application/x-ndjson"},
            )
            codes[r.status_code] += 1
            r = http.get(f"{base}/v1/datasets/{vault.dataset}/records?limit=50", headers=headers)
            codes[r.status_code] += 1


def _rotate_command(vault: Vault) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "api.cli",
            "keys",
            "rotate",
            "--data-dir",
            str(vault.data_dir),
            "--database-url",
            vault.system.database_url,
        ],
        env={**_clean_env(), **FAST},
        capture_output=True,
        timeout=120,
    )


def test_rotation_while_serving_and_uploading_loses_nothing(vault: Vault) -> None:
    rotating = vault.instances[0] if vault.instances else vault.instance(ROTATING)
    with vault.system.engine.connect() as conn:
        started = conn.scalar(text("SELECT now()"))
    codes: Counter[int] = Counter()
    stop = threading.Event()
    urls = [vault.system.up.url, rotating.url]
    workers = [threading.Thread(target=_load, args=(vault, urls, stop, codes)) for _ in range(3)]
    for w in workers:
        w.start()
    try:
        time.sleep(LOAD_S / 2)
        rotated = _rotate_command(vault)  # the operator's command, on top of the schedule
        time.sleep(LOAD_S / 2)
    finally:
        stop.set()
        for w in workers:
            w.join(120)
    assert rotated.returncode == 0, rotated.stderr.decode()[-2000:]
    assert json.loads(rotated.stdout)["finished"] is True
    assert codes and not [c for c in codes if c >= 500], codes
    assert codes[201] >= 6 and codes[200] >= 6, codes

    with vault.system.engine.connect() as conn:
        retired = conn.scalar(
            text("SELECT count(*) FROM keks WHERE retired_at > :t"), {"t": started}
        )
        row_keks = set(conn.scalars(text("SELECT DISTINCT kek_id FROM key_secrets")))
        dead = set(conn.scalars(text("SELECT id FROM keks WHERE retired_at IS NOT NULL")))
        live_records = conn.scalar(
            text("SELECT count(*) FROM records WHERE dataset_id = :d AND envelope IS NOT NULL"),
            {"d": uuid.UUID(vault.dataset)},
        )
    assert retired >= 3, "the schedule and the command rotated several times under load"
    held = set(json.loads((vault.data_dir / "master.key").read_text())["keks"])
    assert row_keks <= held and not row_keks & dead, (row_keks, held, dead)

    # A restarted instance (a new process, the KEKs read afresh) reads every record.
    rotating.stop()
    fresh = vault.instance(FAST)
    with CivisClient(fresh.url, api_key=vault.provider) as api:
        read = list(api.iter_records(vault.dataset))
    assert len(read) == live_records and live_records >= codes[201] * 4
