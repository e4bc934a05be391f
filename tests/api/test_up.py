"""`civis-vault up` as a user runs it: embedded PostgreSQL, migrations, the API, clean stop."""

from __future__ import annotations

import os
import signal
import socket
import stat
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_healthy(url: str, proc: subprocess.Popen[bytes], timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"civis-vault up exited early with {proc.returncode}")
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
