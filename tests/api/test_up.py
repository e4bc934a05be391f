"""`civis-vault up` as a user runs it: PostgreSQL, the replica processes, the API, clean stop.

What a user would notice: the first run founds a chain and prints a DPO API key that works;
a second run reuses the chain and prints no new key; /readyz follows the ledger's quorum;
Ctrl-C or SIGTERM leaves no replica or PostgreSQL process behind; with `--ledger-dir` the
API joins replicas someone else runs and never stops them.
"""

from __future__ import annotations

import os
import re
import signal
import stat
import subprocess
import sys
import threading
import time
import tomllib
from collections.abc import Iterator
from pathlib import Path

import httpx
import psutil
import pytest
from sqlalchemy.orm import Session

from api.cli.bootstrap import BootstrapError, found_local_ledger, issue_pending_dpo_key, open_ledger
from api.cli.serving import HEIGHT_FLOOR_FILE, cgroup_cores
from api.client.client import CivisClient
from api.services.gateway import VAULT_KEY_FILE, LedgerGateway
from api.services.keys import authenticate
from ledger_bridge import ports
from ledger_bridge.cluster import Cluster
from ledger_bridge.contracts.app import ConsentApp
from ledger_bridge.crypto import SigningKey
from ledger_bridge.genesis import create_local, load_genesis, load_signing_key
from ledger_bridge.height_floor import HeightFloor
from tests.ledger_bridge.test_processes import _base_port
from vault import db

STARTUP_TIMEOUT_S = 120.0


def _free_port() -> int:
    """Outside the ephemeral range: `up` starts replicas whose outgoing connections draw
    their local ports from that range and could take the API's before uvicorn binds it."""
    return ports.free_block([0])


def _wait_healthy(url: str, proc: subprocess.Popen[bytes], timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            output = proc.stdout.read().decode(errors="replace")[-3000:] if proc.stdout else ""
            raise AssertionError(f"civis-vault up exited early with {proc.returncode}:\n{output}")
        try:
            if httpx.get(url, timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise AssertionError("the API did not become healthy in time")


@pytest.mark.e2e
def test_up_serves_healthz_and_stops_cleanly(tmp_path: Path) -> None:
    port = _free_port()
    data_dir = tmp_path / "civis"
    env = {k: v for k, v in os.environ.items() if not k.startswith("CIVIS_")}
    proc = subprocess.Popen(
        [sys.executable, "-m", "api.cli", "up", "--port", str(port), "--data-dir", str(data_dir)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        _wait_healthy(f"http://127.0.0.1:{port}/healthz", proc)
        assert httpx.get(f"http://127.0.0.1:{port}/healthz").json() == {"status": "ok"}
        key = data_dir / "master.key"
        assert stat.S_IMODE(key.stat().st_mode) == 0o600
        assert (data_dir / "pg" / "PG_VERSION").exists()
    finally:
        proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0, out.decode(errors="replace")[-2000:]
    # The embedded server was stopped: no postmaster left behind.
    assert not (data_dir / "pg" / "postmaster.pid").exists()

    # The key store rotates against the same data directory (server started and stopped again).
    done = subprocess.run(
        [sys.executable, "-m", "api.cli", "keys", "rotate", "--data-dir", str(data_dir)],
        env=env,
        capture_output=True,
        timeout=120,
        check=True,
    )
    assert b'"current_kek": "k2"' in done.stdout and b'"retired": ["k1"]' in done.stdout

    # The retention sweep runs as a command too (an empty vault: nothing to expire).
    swept = subprocess.run(
        [
            sys.executable,
            "-m",
            "api.cli",
            "retention",
            "sweep",
            "--data-dir",
            str(data_dir),
            "--today",
            "2030-01-01",
        ],
        env=env,
        capture_output=True,
        timeout=120,
        check=True,
    )
    assert b'"today": "2030-01-01"' in swept.stdout and b'"epochs_expired": 0' in swept.stdout


@pytest.mark.e2e
def test_up_refuses_a_world_readable_master_key(tmp_path: Path) -> None:
    data_dir = tmp_path / "civis"
    data_dir.mkdir()
    key = data_dir / "master.key"
    key.write_text("{}")
    key.chmod(0o644)
    env = {k: v for k, v in os.environ.items() if not k.startswith("CIVIS_")}
    done = subprocess.run(
        [sys.executable, "-m", "api.cli", "keys", "rotate", "--data-dir", str(data_dir)],
        env=env,
        capture_output=True,
        timeout=120,
    )
    assert done.returncode == 2
    assert b"readable by group or others" in done.stderr
    assert b"Traceback" not in done.stderr


# -- the first-run bootstrap, without processes ----------------------------------------------


def test_the_founded_chain_admits_the_vault_and_the_dpo_and_the_key_is_owed_once(
    tmp_path: Path, fresh_database_url: str
) -> None:
    data_dir = tmp_path / "civis"
    founding = found_local_ledger(data_dir, 4)
    genesis = load_genesis(data_dir / "ledger" / "genesis.toml")
    assert genesis.chain_id == founding.chain_id and genesis.n == 4
    # What every replica will compute from the genesis: both founders are active members.
    state = ConsentApp.from_genesis(genesis).state
    vault = state.get("member", bytes.fromhex(founding.vault_public_key))
    dpo = state.get("member", bytes.fromhex(founding.dpo_public_key))
    assert (vault["role"], vault["college"], vault["status"]) == ("vault", "providers", "active")
    assert (dpo["role"], dpo["college"], dpo["status"]) == ("dpo", "services", "active")
    assert sorted({v.college for v in genesis.validators}) == ["citizens", "providers", "services"]
    ports = [
        int(a.rsplit(":", 1)[1]) for v in genesis.validators for a in (v.address, v.client_address)
    ]
    assert len(set(ports)) == 8

    # `up` died after writing the genesis: the database still owes the DPO a key, once.
    db.upgrade(fresh_database_url)
    issued = issue_pending_dpo_key(fresh_database_url, data_dir)
    assert issued is not None
    assert issue_pending_dpo_key(fresh_database_url, data_dir) is None
    engine = db.make_engine(fresh_database_url, pool_size=1)
    try:
        with Session(engine) as session:
            member = authenticate(session, issued.token)
    finally:
        engine.dispose()
    assert member is not None
    assert (member.member_id, member.role) == (founding.dpo_public_key, "dpo")


def test_up_refuses_a_chain_that_does_not_run_the_consent_contracts(tmp_path: Path) -> None:
    # `civis-vault ledger up` makes a key-value chain in the same default directory.
    data_dir = tmp_path / "civis"
    create_local(data_dir / "ledger", 4, base_port=_base_port(), use_tls=False)
    for external in (None, data_dir / "ledger"):
        with (
            pytest.raises(BootstrapError, match="not the consent contracts"),
            open_ledger(data_dir, external_dir=external),
        ):
            pass
    assert not _replica_pids(data_dir / "ledger")


# -- the whole system: ledger cluster, first-run bootstrap, reuse, signals --------------------


def _clean_env() -> dict[str, str]:
    """The user's environment without our settings, so only the flags decide."""
    return {k: v for k, v in os.environ.items() if not k.startswith("CIVIS_")}


def _replica_pids(ledger_dir: Path) -> set[int]:
    """Live replica processes running from `ledger_dir`, found by their command line."""
    needle = str(ledger_dir).encode()
    pids = set()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        if b"ledger_bridge.node" in cmdline and needle in cmdline:
            pids.add(int(entry.name))
    return pids


class Up:
    """A `civis-vault up` child whose output is read as it comes (the DPO key is in it)."""

    def __init__(self, *args: str, env: dict[str, str] | None = None) -> None:
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "api.cli", "up", "--port", str(self.port), *args],
            env={**_clean_env(), **(env or {})},
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        self._lines: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for raw in self.proc.stdout:
            self._lines.append(raw.decode(errors="replace"))

    @property
    def output(self) -> str:
        return "".join(self._lines)

    def wait_until(self, path: str, status: int, headers: dict[str, str] | None = None) -> None:
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"up exited with {self.proc.returncode}:\n{self.output}")
            try:
                if httpx.get(self.url + path, headers=headers, timeout=5).status_code == status:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        raise AssertionError(f"{path} never answered {status}:\n{self.output[-3000:]}")

    def stop_by_itself(self) -> int:
        code = self.proc.wait(timeout=STARTUP_TIMEOUT_S)
        self._reader.join(10)
        return code

    def stop(self, sig: signal.Signals = signal.SIGINT) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            code = self.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            code = self.proc.wait()
        self._reader.join(10)
        return code


@pytest.fixture()
def launched(tmp_path: Path) -> Iterator[list[Up]]:
    """Every `up` a test starts is stopped, even when the test fails; a replica that `up`
    failed to stop is killed here (by pid) so one failure does not load the next tests."""
    started: list[Up] = []
    yield started
    for up in started:
        up.stop()
    for pid in _replica_pids(tmp_path / "civis" / "ledger"):
        os.kill(pid, signal.SIGKILL)


def _chain_id(output: str) -> str:
    found = re.search(r"ledger: chain (civis-[0-9a-f]+),", output)
    assert found, output
    return found.group(1)


def _assert_founding_files(
    first: Up, data_dir: Path, dpo_key_file: Path, member_id: str, chain_id: str
) -> None:
    """The first run's files: the DPO's private signing key, and a genesis naming both founders."""
    assert stat.S_IMODE(dpo_key_file.stat().st_mode) == 0o600
    assert load_signing_key(dpo_key_file).public_key.hex() == member_id
    assert dpo_key_file.read_text().strip() not in first.output
    genesis = tomllib.loads((data_dir / "ledger" / "genesis.toml").read_text())
    assert genesis["chain_id"] == chain_id and genesis["params"]["app"] == "contracts"
    assert {v["college"] for v in genesis["validators"]} == {"providers", "services", "citizens"}
    vault_key = load_signing_key(data_dir / "keys" / VAULT_KEY_FILE).public_key.hex()
    assert {(m["public_key"], m["role"]) for m in genesis["app_genesis"]["members"]} == {
        (vault_key, "vault"),
        (member_id, "dpo"),
    }


def _assert_the_chain_holds_the_dpo(data_dir: Path, member_id: str) -> None:
    """The running replicas answer a member query for the DPO: active, in the `dpo` role."""
    gateway = LedgerGateway.from_directory(data_dir / "ledger", data_dir / "keys", clients=1)
    try:
        answer = gateway.query("member", key=bytes.fromhex(member_id))
    finally:
        gateway.close()
    assert answer["result"]["role"] == "dpo" and answer["result"]["status"] == "active"


def _assert_ready_only_with_a_quorum(up: Up, replicas: set[int]) -> None:
    """Freeze two of the four replicas: /readyz answers 503, then 200 once they run again."""
    frozen = sorted(replicas)[:2]
    for pid in frozen:
        os.kill(pid, signal.SIGSTOP)
    try:
        up.wait_until("/readyz", 503)
    finally:
        for pid in frozen:
            os.kill(pid, signal.SIGCONT)
    up.wait_until("/readyz", 200)


def _assert_a_killed_replica_comes_back(up: Up, ledger_dir: Path, replicas: set[int]) -> None:
    """SIGKILL one replica: `up` starts a new one in its place and the instance is ready again."""
    victim = min(replicas)
    os.kill(victim, signal.SIGKILL)
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    while not (
        len(_replica_pids(ledger_dir) - replicas) == 1 and len(_replica_pids(ledger_dir)) == 4
    ):
        assert time.monotonic() < deadline, up.output[-3000:]
        time.sleep(0.2)
    assert "exited; restarting it" in up.output
    up.wait_until("/readyz", 200)


@pytest.mark.e2e
def test_up_founds_a_chain_prints_one_dpo_key_and_stops_every_process(
    tmp_path: Path, fresh_database_url: str, launched: list[Up]
) -> None:
    data_dir = tmp_path / "civis"
    ledger_dir = data_dir / "ledger"
    flags = ("--data-dir", str(data_dir), "--database-url", fresh_database_url)

    # First run: the chain is founded and the DPO's key is printed once.
    first = Up(*flags)
    launched.append(first)
    first.wait_until("/healthz", 200)
    first.wait_until("/readyz", 200)
    token = re.search(r"DPO API key, shown this once[^:]*: (cvk_\S+)", first.output)
    member = re.search(r"DPO public key \(their member id\): ([0-9a-f]{64})", first.output)
    assert token and member, first.output
    chain_id = _chain_id(first.output)
    assert f"http://127.0.0.1:{first.port}" in first.output
    replicas = _replica_pids(ledger_dir)
    assert len(replicas) == 4

    # The DPO's signing key is theirs alone and is the member the API key is bound to.
    dpo_key_file = data_dir / "keys" / "dpo.key"
    _assert_founding_files(first, data_dir, dpo_key_file, member.group(1), chain_id)

    # The running chain holds the founders: the replicas answer a member query for the DPO.
    _assert_the_chain_holds_the_dpo(data_dir, member.group(1))

    dpo = {"Authorization": f"Bearer {token.group(1)}"}
    assert httpx.get(f"{first.url}/v1/datasets", headers=dpo).status_code == 200
    assert httpx.get(f"{first.url}/v1/datasets").status_code == 401

    # Ctrl-C: everything stops, no replica is left running.
    assert first.stop(signal.SIGINT) == 0, first.output[-3000:]
    assert "civis-vault up: stopped" in first.output
    assert not _replica_pids(ledger_dir)
    assert not any(Path(f"/proc/{pid}").exists() for pid in replicas)

    # Second run: same chain, same keys, no new DPO key; the first key still works.
    second = Up(*flags)
    launched.append(second)
    second.wait_until("/readyz", 200)
    assert _chain_id(second.output) == chain_id
    assert "DPO API key" not in second.output and "First run" not in second.output
    assert load_signing_key(dpo_key_file).public_key.hex() == member.group(1)
    assert httpx.get(f"{second.url}/v1/datasets", headers=dpo).status_code == 200

    # Without a quorum (2 of 4 replicas frozen) the instance is not ready; then it is again.
    replicas = _replica_pids(ledger_dir)
    assert len(replicas) == 4
    _assert_ready_only_with_a_quorum(second, replicas)

    # A replica that dies is restarted by `up` (from its own store).
    _assert_a_killed_replica_comes_back(second, ledger_dir, replicas)

    # SIGTERM (what a service manager sends) stops everything as cleanly as Ctrl-C.
    assert second.stop(signal.SIGTERM) == 0, second.output[-3000:]
    assert not _replica_pids(ledger_dir)


@pytest.mark.e2e
def test_up_joins_external_replicas_and_leaves_them_running(
    tmp_path: Path, fresh_database_url: str, launched: list[Up]
) -> None:
    ledger_dir = tmp_path / "elsewhere" / "ledger"
    params = {"app": "contracts", "batch_size_max": 10, "batch_wait_ms": 2}
    with Cluster(ledger_dir, 4, base_port=_base_port(), params=params) as cluster:
        cluster.start()
        cluster.wait_ready()
        theirs = _replica_pids(ledger_dir)
        data_dir = tmp_path / "civis"
        up = Up(
            "--data-dir",
            str(data_dir),
            "--database-url",
            fresh_database_url,
            "--ledger-dir",
            str(ledger_dir),
        )
        launched.append(up)
        up.wait_until("/readyz", 200)
        assert "4 external replicas" in up.output
        # Nothing was founded: no DPO, and the operator is told the vault is not yet a member.
        assert "DPO API key" not in up.output and not (data_dir / "ledger").exists()
        assert "is not a founding member" in up.output
        assert _replica_pids(ledger_dir) == theirs
        assert up.stop(signal.SIGINT) == 0, up.output[-3000:]
        # Not ours to stop.
        assert all(cluster.running(i) for i in range(cluster.n))

        # A local `up` on the directory of running replicas (say, left by a SIGKILLed `up`)
        # refuses to start a second set instead of fighting over their ports.
        clash = Up("--data-dir", str(ledger_dir.parent), "--database-url", fresh_database_url)
        launched.append(clash)
        assert clash.stop_by_itself() == 2
        assert "already answers on" in clash.output, clash.output[-3000:]
        assert _replica_pids(ledger_dir) == theirs


@pytest.mark.e2e
def test_sigterm_stops_up_and_every_replica_it_started(
    tmp_path: Path, fresh_database_url: str, launched: list[Up]
) -> None:
    """What a service manager sends to stop the system: no replica may outlive `up`."""
    ledger_dir = tmp_path / "civis" / "ledger"
    up = Up("--data-dir", str(tmp_path / "civis"), "--database-url", fresh_database_url)
    launched.append(up)
    up.wait_until("/readyz", 200)
    replicas = _replica_pids(ledger_dir)
    assert len(replicas) == 4
    assert up.stop(signal.SIGTERM) == 0, up.output[-3000:]
    assert "civis-vault up: stopped" in up.output
    assert not _replica_pids(ledger_dir)
    assert not any(Path(f"/proc/{pid}").exists() for pid in replicas)


def _workers(up: Up) -> list[psutil.Process]:
    """The API worker processes of `up` (uvicorn's supervisor starts them with `spawn`)."""
    children = psutil.Process(up.proc.pid).children()
    return [c for c in children if "spawn_main" in " ".join(c.cmdline())]


def _ready_with_two_workers(tmp_path: Path, database_url: str, launched: list[Up]) -> Up:
    up = Up("--data-dir", str(tmp_path / "civis"), "--database-url", database_url, "--workers", "2")
    launched.append(up)
    up.wait_until("/readyz", 200)
    return up


@pytest.mark.e2e
def test_a_killed_up_takes_its_api_workers_with_it(
    tmp_path: Path, fresh_database_url: str, launched: list[Up]
) -> None:
    """`up` killed outright (SIGKILL: no handler runs) must not leave API workers behind,
    still holding the port and running the jobs of an instance that is gone."""
    up = _ready_with_two_workers(tmp_path, fresh_database_url, launched)
    workers = _workers(up)
    assert len(workers) == 2, up.output[-3000:]
    up.proc.kill()
    up.proc.wait(30)
    _, alive = psutil.wait_procs(workers, timeout=30)
    assert not alive, [p.pid for p in alive]
    with pytest.raises(httpx.ConnectError):
        httpx.get(up.url + "/healthz", timeout=5)


@pytest.mark.e2e
def test_a_member_registered_through_one_worker_is_a_member_to_the_next_request(
    tmp_path: Path, fresh_database_url: str, launched: list[Up], request: pytest.FixtureRequest
) -> None:
    """Read-your-writes across API workers: each registration and the read after it come on
    new connections, which the kernel hands to either worker; the read must never answer from
    a replica that has not executed the registration yet. On a quiet machine the replicas are
    rarely far enough apart to show it (tests/ledger_bridge/test_height_floor.py plays the
    lagging replica); what this checks every time is the wiring: the floor the workers share
    holds each registration's block, whichever worker committed it."""
    up = _ready_with_two_workers(tmp_path, fresh_database_url, launched)
    token = re.search(r"DPO API key, shown this once[^:]*: (cvk_\S+)", up.output)
    assert token, up.output
    assert len(_workers(up)) == 2
    floor = HeightFloor.shared(tmp_path / "civis" / HEIGHT_FLOOR_FILE)
    request.addfinalizer(floor.close)
    for _ in range(25):
        resident = SigningKey.generate()
        with CivisClient(up.url) as anyone:
            written = anyone.register(resident, "subject", "citizens")
        assert floor.height >= written["receipt"]["block_height"] > 0
        with CivisClient(up.url, api_key=token.group(1)) as dpo:
            answer = dpo.member(bytes(resident.public_key).hex())
        assert answer["result"] is not None, answer
        assert answer["result"]["status"] == "active"


@pytest.mark.parametrize(
    ("cpu_max", "cores"),
    [
        ("max 100000\n", None),  # no quota
        ("100000 100000\n", 1),
        ("150000 100000\n", 2),  # one and a half CPUs: a second worker has half a core
        ("50000 100000\n", 1),
        ("garbage\n", None),
        ("100000 0\n", None),
    ],
)
def test_a_cpu_quota_caps_the_default_worker_count(
    tmp_path: Path, cpu_max: str, cores: int | None
) -> None:
    """A container limited to one CPU on a large host sees every host core in its affinity
    mask: its quota, not the mask, decides how many workers (and pools) `up` starts."""
    path = tmp_path / "cpu.max"
    path.write_text(cpu_max)
    assert cgroup_cores(path) == cores
    assert cgroup_cores(tmp_path / "absent") is None
