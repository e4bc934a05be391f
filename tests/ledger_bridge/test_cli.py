"""`civis-vault ledger up`: generates a genesis with TLS, runs 4 replicas that commit over
mutual TLS and serve clients over TLS, and stops them all on Ctrl-C."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ledger_bridge import tls
from ledger_bridge.client import LedgerClient, TcpClientTransport
from ledger_bridge.cluster import probe_status
from ledger_bridge.genesis import READER_KEY_FILE, load_genesis, load_signing_key
from ledger_bridge.kvapp import encode_set
from tests.ledger_bridge.test_processes import _base_port

pytestmark = pytest.mark.e2e


def test_ledger_up_commits_over_mutual_tls_and_ctrl_c_stops_every_replica(
    tmp_path: Path,
) -> None:
    base = _base_port()
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "api.cli",
            "ledger",
            "up",
            "--dir",
            str(tmp_path),
            "--base-port",
            str(base),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 40
        genesis_file = tmp_path / "genesis.toml"

        def up(i: int) -> bool:
            """Replica i answers status over TLS, its certificate under the cluster CA."""
            context = tls.reader_context(tmp_path / "tls" / "ca.crt")
            return (
                probe_status(f"127.0.0.1:{base + 100 + i}", 1.0, context, f"node-{i}") is not None
            )

        while not genesis_file.exists() or not all(up(i) for i in range(4)):
            assert proc.poll() is None, proc.stdout.read() if proc.stdout else ""
            assert time.monotonic() < deadline, "cluster never came up"
            time.sleep(0.2)
        genesis = load_genesis(genesis_file)
        assert genesis.tls_ca is not None  # TLS between replicas and to clients is the default
        # Plain TCP finds no client port: the handshake is what it answers.
        assert probe_status(f"127.0.0.1:{base + 100}") is None
        reader = load_signing_key(tmp_path / READER_KEY_FILE)
        with LedgerClient(
            lambda: TcpClientTransport.for_genesis(genesis, reader),
            genesis.public_keys(),
            genesis.f,
        ) as client:
            receipt = client.submit(encode_set(b"k", b"v"))
            assert receipt.block_height >= 1
            assert client.get_block(receipt.block_height).txs == [encode_set(b"k", b"v")]
        proc.send_signal(signal.SIGINT)
        assert proc.wait(20) == 0
        assert not any(up(i) for i in range(4))
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def _replica_pids(directory: Path) -> set[int]:
    """Live replica processes started from `directory`, found by their command line."""
    needle = str(directory).encode()
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


def test_sigterm_to_ledger_up_stops_every_replica(tmp_path: Path) -> None:
    """What a service manager sends. Python's default SIGTERM ended `ledger up` at once and
    left its replicas (in sessions of their own) running as orphans."""
    base = _base_port()
    proc = subprocess.Popen(
        [
            *(sys.executable, "-m", "api.cli", "ledger", "up", "--ledger-dir", str(tmp_path)),
            *("--no-tls", "--base-port", str(base)),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 40
        while not all(probe_status(f"127.0.0.1:{base + 100 + i}") for i in range(4)):
            assert proc.poll() is None, proc.stdout.read() if proc.stdout else ""
            assert time.monotonic() < deadline, "cluster never came up"
            time.sleep(0.2)
        replicas = _replica_pids(tmp_path)
        assert len(replicas) == 4
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(20) == 0
        assert not _replica_pids(tmp_path)
        assert not any(Path(f"/proc/{pid}").exists() for pid in replicas)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        for pid in _replica_pids(tmp_path):
            os.kill(pid, signal.SIGKILL)
