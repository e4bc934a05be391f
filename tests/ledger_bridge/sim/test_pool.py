"""The seed pool gives each seed's result in the seeds' order, from worker processes when
the machine has the cores, and a seed that raises fails the whole run."""

from __future__ import annotations

import os

import pytest

from tests.ledger_bridge.sim.pool import each_seed, workers


def _seed_and_pid(seed: int) -> tuple[int, int]:
    return seed, os.getpid()


def _raises_on_seven(seed: int) -> int:
    if seed == 7:
        raise ValueError("seven")
    return seed


def test_results_come_back_in_the_seeds_order() -> None:
    results = each_seed(_seed_and_pid, range(40, 0, -1))
    assert [seed for seed, _ in results] == list(range(40, 0, -1))
    pids = {pid for _, pid in results}
    if workers() > 1:
        # How the seeds fall to the workers depends on which started first: only that none
        # ran here is certain.
        assert os.getpid() not in pids
    else:
        assert pids == {os.getpid()}


def test_a_seed_that_raises_fails_the_run_and_is_named() -> None:
    with pytest.raises(ValueError, match="seven") as raised:
        each_seed(_raises_on_seven, range(20))
    assert "seed 7" in raised.value.__notes__
