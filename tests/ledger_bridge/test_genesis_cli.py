"""`civis-vault ledger genesis`: the files of a cluster on several hosts, as the operator docs
use them (docs/LEDGER-OPERATIONS.md, "Several hosts"; tests/netns/deploy.py runs them on test
hosts). Bad input is refused before anything is written."""

from __future__ import annotations

from pathlib import Path

import pytest

from api.cli import main
from ledger_bridge import genesis as gen
from ledger_bridge.crypto import SigningKey

HOSTS = ["10.0.0.1", "10.0.0.2", "10.0.0.3", "10.0.0.4"]


def _args(directory: Path, *extra: str) -> list[str]:
    hosts = [arg for host in HOSTS for arg in ("--host", host)]
    return ["ledger", "genesis", "--ledger-dir", str(directory), *hosts, *extra]


def test_one_replica_per_host_with_founding_members_and_parameters(tmp_path: Path) -> None:
    vault = SigningKey.generate().public_key.hex()
    out = tmp_path / "cluster"
    code = main(
        _args(out, "--member", f"vault:providers:{vault}", "--param", "view_change_timeout_ms=2000")
    )
    assert code == 0
    genesis = gen.load_genesis(out / gen.GENESIS_FILE)
    assert [v.address for v in genesis.validators] == [
        f"{h}:{26600 + i}" for i, h in enumerate(HOSTS)
    ]
    assert genesis.params == {"app": "contracts", "view_change_timeout_ms": 2000}
    assert genesis.app_genesis["members"] == [
        {"public_key": vault, "role": "vault", "college": "providers"}
    ]
    assert genesis.tls_ca is not None
    for i, host in enumerate(HOSTS):
        node = gen.load_node_config(out / f"node-{i}.toml")
        assert node.listen == f"{host}:{26600 + i}" and node.client_listen == f"{host}:{26700 + i}"
        assert node.tls_files(genesis) is not None and not node.insecure_client_port
    assert main(_args(out)) == 2  # never over an existing genesis


@pytest.mark.parametrize(
    "extra",
    [
        ("--param", "no_such_parameter=1"),
        ("--param", "batch_size_max=many"),
        ("--param", "heartbeat_ms=5000"),  # not below the view-change timeout
        ("--member", "vault:providers:nothex"),
        ("--member", "emperor:providers:" + "ab" * 32),
    ],
)
def test_bad_parameters_and_members_are_refused_and_nothing_is_written(
    tmp_path: Path, extra: tuple[str, str]
) -> None:
    out = tmp_path / "cluster"
    assert main(_args(out, *extra)) == 2
    assert not out.exists()


def test_the_hosts_must_be_3f_plus_1(tmp_path: Path) -> None:
    out = tmp_path / "cluster"
    assert main(["ledger", "genesis", "--ledger-dir", str(out), "--host", "a", "--host", "b"]) == 2
