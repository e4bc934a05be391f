"""Genesis and node files: what `ledger up` writes is what an operator's replica reads."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from ledger_bridge.genesis import (
    GenesisError,
    create_local,
    load_genesis,
    load_node_config,
    load_signing_key,
)


def test_a_generated_cluster_loads_back_with_matching_keys(tmp_path: Path) -> None:
    paths = create_local(tmp_path, replicas=4, base_port=30000, params={"batch_size_max": 7})
    assert [p.name for p in paths] == [f"node-{i}.toml" for i in range(4)]
    node = load_node_config(paths[2])
    genesis = node.genesis()
    assert (genesis.n, genesis.f, genesis.chain_id) == (4, 1, "civis-local")
    assert genesis.params == {"batch_size_max": 7}
    assert node.id == 2 and node.listen == "127.0.0.1:30002"
    assert genesis.validators[2].client_address == "127.0.0.1:30102"
    # The private key on disk is the one the genesis lists for this id.
    assert node.signing_key().public_key == genesis.validators[2].public_key
    assert node.private_key_file.stat().st_mode & 0o777 == 0o600
    files = node.tls_files(genesis)
    assert files is not None and files.cert.exists() and files.key.exists()
    assert len({v.college for v in genesis.validators}) == 3


def test_the_directory_can_be_moved_as_a_whole(tmp_path: Path) -> None:
    create_local(tmp_path / "a", use_tls=False)
    os.rename(tmp_path / "a", tmp_path / "b")
    node = load_node_config(tmp_path / "b" / "node-0.toml")
    assert node.signing_key().public_key == node.genesis().validators[0].public_key
    assert node.data_dir == tmp_path / "b" / "data" / "node-0"


def test_an_existing_genesis_is_never_overwritten(tmp_path: Path) -> None:
    create_local(tmp_path, use_tls=False)
    before = (tmp_path / "genesis.toml").read_bytes()
    with pytest.raises(GenesisError, match="refusing"):
        create_local(tmp_path, use_tls=False)
    assert (tmp_path / "genesis.toml").read_bytes() == before


@pytest.mark.parametrize("replicas", [3, 5, 1])
def test_replica_counts_other_than_3f_plus_1_are_refused(tmp_path: Path, replicas: int) -> None:
    with pytest.raises(GenesisError):
        create_local(tmp_path, replicas=replicas, use_tls=False)


def test_a_key_file_readable_by_others_is_refused(tmp_path: Path) -> None:
    create_local(tmp_path, use_tls=False)
    key = tmp_path / "keys" / "node-0.key"
    key.chmod(0o644)
    with pytest.raises(GenesisError, match="chmod 600"):
        load_signing_key(key)


@pytest.mark.parametrize(
    ("old", "new", "match"),
    [
        ("f = 1", "f = 2", "3f\\+1"),
        ("id = 1\n", "id = 5\n", "0..n-1"),
        ('chain_id = "civis-local"', "chain_id = 3", "chain_id"),
    ],
)
def test_a_malformed_genesis_names_the_problem(
    tmp_path: Path, old: str, new: str, match: str
) -> None:
    create_local(tmp_path, use_tls=False)
    path = tmp_path / "genesis.toml"
    text = path.read_text()
    assert old in text
    path.write_text(text.replace(old, new, 1))
    with pytest.raises(GenesisError, match=match):
        load_genesis(path)


def test_a_duplicated_public_key_is_refused(tmp_path: Path) -> None:
    create_local(tmp_path, use_tls=False)
    path = tmp_path / "genesis.toml"
    genesis = load_genesis(path)
    text = path.read_text().replace(
        genesis.validators[1].public_key.hex(), genesis.validators[0].public_key.hex()
    )
    path.write_text(text)
    with pytest.raises(GenesisError, match="share"):
        load_genesis(path)
