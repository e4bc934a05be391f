"""`civis-vault governance propose|vote|list`: the founders decide from the command line, with
the key files `up` keeps, straight against the replicas (four real processes)."""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import pytest

from ledger_bridge.cluster import Cluster
from ledger_bridge.genesis import write_private_file
from tests.api.ledger_env import Wallet


def _key_file(directory: Path, wallet: Wallet) -> Path:
    path = directory / f"{wallet.id[:12]}.key"
    write_private_file(path, wallet.key.seed().hex().encode() + b"\n")
    return path


@pytest.fixture(scope="module")
def founders(
    ledger_cluster: tuple[Cluster, dict[str, Wallet]], tmp_path_factory: pytest.TempPathFactory
) -> tuple[Path, list[Path]]:
    """The genesis directory and every founding voter's key file, validators' first."""
    cluster, wallets = ledger_cluster
    directory = tmp_path_factory.mktemp("founders")
    validators = sorted((cluster.directory / "keys").glob("node-*.key"))
    members = [_key_file(directory, wallets[name]) for name in ("dpo", "provider", "consumer")]
    return cluster.directory, [*validators, *members]


def governance(ledger_dir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "api.cli", "governance", *args, "--ledger-dir", str(ledger_dir)],
        capture_output=True,
        text=True,
        timeout=120,
    )


def _lines(done: subprocess.CompletedProcess[str]) -> list[dict[str, Any]]:
    assert done.returncode == 0, done.stderr
    return [json.loads(line) for line in done.stdout.splitlines()]


def test_founders_propose_list_and_vote_a_purpose_through(
    founders: tuple[Path, list[Path]],
) -> None:
    ledger_dir, keys = founders
    purpose = f"noise-{uuid.uuid4().hex[:8]}"
    made = _lines(
        governance(ledger_dir, "propose", "--key", str(keys[0]), "--approve-purpose", purpose)
    )
    proposal = int(made[0]["proposal"])
    assert made[0]["block_height"] >= 1 and len(made[0]["tx_id"]) == 64
    listed = {p["proposal"]: p for p in _lines(governance(ledger_dir, "list"))}
    shown = listed[proposal]
    assert shown["state"] == "open"
    assert shown["action"] == {"kind": "approve_purpose", "purpose": purpose}
    assert set(shown["colleges"]) == {"providers", "services", "citizens"}
    for tally in shown["colleges"].values():
        assert tally["yes"] == tally["no"] == 0
        assert tally["majority"] == tally["voters"] // 2 + 1
    state = "open"
    for key in keys:
        voted = _lines(governance(ledger_dir, "vote", str(proposal), "--yes", "--key", str(key)))
        state = voted[0]["status"]
        if state == "passed":
            break
    assert state == "passed"
    assert proposal not in {p["proposal"] for p in _lines(governance(ledger_dir, "list"))}
    closed = {p["proposal"]: p for p in _lines(governance(ledger_dir, "list", "--all"))}
    assert closed[proposal]["state"] == "passed"
    assert any(t["yes"] >= t["majority"] for t in closed[proposal]["colleges"].values())
    # It is enacted: the purpose is approved, so proposing it again is refused.
    again = governance(ledger_dir, "propose", "--key", str(keys[0]), "--approve-purpose", purpose)
    assert again.returncode == 1 and "exists" in again.stderr


def test_refusals_are_one_line_with_the_contracts_code(
    founders: tuple[Path, list[Path]], tmp_path: Path
) -> None:
    ledger_dir, keys = founders
    stranger = _key_file(tmp_path, Wallet())
    refused = governance(ledger_dir, "propose", "--key", str(stranger), "--approve-purpose", "x-1")
    assert refused.returncode == 1
    assert refused.stderr.startswith("civis-vault governance propose: refused by the consent")
    assert "not_member" in refused.stderr and refused.stdout == ""
    made = _lines(
        governance(ledger_dir, "propose", "--key", str(keys[1]), "--approve-purpose", "y-2")
    )
    proposal = str(made[0]["proposal"])
    first = governance(ledger_dir, "vote", proposal, "--no", "--key", str(keys[1]))
    assert first.returncode == 0, first.stderr
    twice = governance(ledger_dir, "vote", proposal, "--yes", "--key", str(keys[1]))
    assert twice.returncode == 1 and "duplicate" in twice.stderr
    bad = governance(ledger_dir, "propose", "--key", str(keys[0]), "--admit-member", "abc")
    assert bad.returncode == 2 and "64 hex" in bad.stderr
    nowhere = governance(tmp_path, "list")
    assert nowhere.returncode == 2 and "no genesis" in nowhere.stderr
    # --data-dir finds the genesis where `up` keeps it, under ledger/
    up_dir = subprocess.run(
        [sys.executable, "-m", "api.cli", "governance", "list", "--data-dir", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert up_dir.returncode == 2 and f"no genesis in {tmp_path / 'ledger'}" in up_dir.stderr
    too_long = governance(
        ledger_dir, "propose", "--key", str(keys[0]), "--approve-purpose", "z", "--days", "91"
    )
    assert too_long.returncode == 2 and "voting period" in too_long.stderr


def test_a_proposal_whose_author_was_forgotten_lists_without_an_author() -> None:
    """A resident voter's proposal outlives their erasure everywhere; the contracts keep it
    with no author (docs/CONTRACTS.md, "Forgetting"), and `list` says so instead of failing."""
    from api.cli.governance import proposal_line

    proposal = {
        "proposal": 3,
        "status": "passed",
        "action": {"kind": "approve_purpose", "purpose": "road-maintenance"},
        "author": None,
        "ends": 2_000_000_000_000,
        "members": {"citizens": 3},
        "yes": {"citizens": 2},
        "no": {"citizens": 0},
    }
    line = proposal_line(proposal, now_ms=1_000)
    assert line["author"] is None and line["proposal"] == 3
    assert proposal_line(proposal | {"author": b"\x01" * 32}, 1_000)["author"] == "01" * 32


def test_the_founders_suspend_and_reinstate_a_member_from_the_command_line(
    founders: tuple[Path, list[Path]], ledger_cluster: tuple[Cluster, dict[str, Wallet]]
) -> None:
    """A key reported stolen: the CLI proposes its suspension, the colleges vote it through,
    and its reinstatement; a rotation's flags are checked before anything is signed."""
    from api.cli.governance import Ledger
    from ledger_bridge.genesis import GENESIS_FILE, READER_KEY_FILE, load_genesis
    from ledger_bridge.genesis import load_signing_key as load_key

    ledger_dir, keys = founders
    consumer = ledger_cluster[1]["consumer"].id
    ledger = Ledger(load_genesis(ledger_dir / GENESIS_FILE), load_key(ledger_dir / READER_KEY_FILE))
    voters = [load_key(k) for k in keys if consumer[:12] not in k.name]
    try:
        for flag, status in (("--suspend-member", "suspended"), ("--reinstate-member", "active")):
            made = _lines(governance(ledger_dir, "propose", "--key", str(keys[0]), flag, consumer))
            proposal = int(made[0]["proposal"])
            state = "open"
            for voter in voters:
                vote = {"proposal": proposal, "approve": True}
                state = ledger.submit(voter, "governance.vote", vote)["status"]
                if state == "passed":
                    break
            assert state == "passed"
            member = ledger.query("member", key=bytes.fromhex(consumer))["result"]
            assert member["status"] == status
    finally:
        ledger.close()
    lone = governance(ledger_dir, "propose", "--key", str(keys[0]), "--rotate-member-key", consumer)
    assert lone.returncode == 2 and "needs --new-key" in lone.stderr
    stray = governance(
        ledger_dir,
        "propose",
        "--key",
        str(keys[0]),
        "--approve-purpose",
        "x",
        "--new-key",
        consumer,
    )
    assert stray.returncode == 2 and "--new-key goes with --rotate-member-key" in stray.stderr
