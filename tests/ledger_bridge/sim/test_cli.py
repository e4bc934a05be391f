"""`civis-vault ledger simulate`: a summary, and the reproducing command for a failing seed."""

from __future__ import annotations

import argparse

import pytest

from ledger_bridge import cli
from ledger_bridge.sim import checkers


def _args(**kw: object) -> argparse.Namespace:
    base: dict[str, object] = {"seeds": 3, "seed": None, "first": 0, "byzantine": False}
    base.update(kw)
    return argparse.Namespace(**base)


def test_simulate_prints_a_summary(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli._run_simulate(_args(byzantine=True)) == 0
    assert "3/3 seeds passed (Byzantine)" in capsys.readouterr().out


def test_a_failing_seed_prints_how_to_reproduce_it(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    def fake(seed: int, *, byzantine: bool = False) -> checkers.Report:
        return checkers.Report(seed, ["agreement violated at height 3"] if seed == 1 else [])

    monkeypatch.setattr(checkers, "run_seed", fake)
    assert cli._run_simulate(_args(byzantine=True)) == 1
    out = capsys.readouterr().out
    assert "FAIL seed 1: agreement violated at height 3" in out
    assert "civis-vault ledger simulate --seed 1 --byzantine" in out
    assert "2/3 seeds passed" in out
