"""Subcommands of the ledger side: `node`, `ledger up`, `ledger simulate`."""

from __future__ import annotations

import argparse
import signal
import time
from pathlib import Path
from types import FrameType


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    _register_node(sub)
    ledger = sub.add_parser("ledger", help="the bundled PBFT ledger")
    ledger_sub = ledger.add_subparsers(dest="ledger_command", metavar="LEDGER_COMMAND")
    _register_up(ledger_sub)
    _register_simulate(ledger_sub)


# -- `civis-vault node` and `civis-vault ledger up` (the process shell) ---------------------


def _register_node(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    node = sub.add_parser("node", help="run one PBFT replica from its node-<i>.toml")
    node.add_argument("--config", type=Path, required=True, help="path of node-<i>.toml")
    node.set_defaults(func=_run_node)


def _run_node(args: argparse.Namespace) -> int:
    from ledger_bridge import node

    return node.main(["--config", str(args.config)] + (["-v"] if args.verbose else []))


def _register_up(ledger_sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    up = ledger_sub.add_parser(
        "up", help="generate genesis if missing and run a replica cluster on loopback"
    )
    up.add_argument("--replicas", type=int, default=4, help="3f+1 replicas (default 4)")
    up.add_argument("--dir", type=Path, default=Path(".civis/ledger"), help="genesis directory")
    up.add_argument("--base-port", type=int, default=26600, help="peer port of replica 0")
    up.add_argument(
        "--no-tls",
        action="store_true",
        help="plain TCP between replicas and to clients (development only)",
    )
    up.set_defaults(func=_run_up)


def _interrupt(signum: int, frame: FrameType | None) -> None:
    """SIGTERM (what a service manager or `kill` sends) stops the cluster as Ctrl-C does.

    Python's default SIGTERM ends the process on the spot, and the replicas, in sessions of
    their own, ran on as orphans. Later signals are ignored while the cluster stops: a second
    one must not abandon it half-stopped.
    """
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    raise KeyboardInterrupt


def _run_up(args: argparse.Namespace) -> int:
    signal.signal(signal.SIGTERM, _interrupt)
    signal.signal(signal.SIGINT, _interrupt)
    try:
        return _up(args)
    except KeyboardInterrupt:  # a signal before or after the cluster's block below
        return 0


def _up(args: argparse.Namespace) -> int:
    from ledger_bridge.cluster import Cluster
    from ledger_bridge.genesis import GenesisError

    try:
        cluster = Cluster(
            args.dir, args.replicas, base_port=args.base_port, use_tls=not args.no_tls
        )
    except GenesisError as exc:
        print(f"error: {exc}")
        return 2
    with cluster:
        cluster.start()
        try:
            cluster.wait_ready()
            kind = "TLS, pin tls/ca.crt" if cluster.client_ssl else "plain TCP, development only"
            print(f"ledger up: {cluster.n} replicas from {args.dir}; clients ({kind}) on")
            for address in cluster.client_addresses():
                print(f"  {address}")
            print(f"reads need a member key; the operator's: {args.dir / 'keys' / 'reader.key'}")
            print("Ctrl-C or SIGTERM stops the cluster.", flush=True)
            while all(cluster.running(i) for i in range(cluster.n)):
                time.sleep(0.5)
            print("a replica exited; stopping the cluster (see logs/ in the directory)")
            return 1
        except KeyboardInterrupt:
            print("stopping")
            return 0
        except (TimeoutError, RuntimeError) as exc:
            print(f"error: {exc}")
            return 1


# -- `civis-vault ledger simulate` (the seeded simulator of the replica core) ----------------


def _register_simulate(ledger_sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    sim = ledger_sub.add_parser(
        "simulate", help="run the replica core under seeded adversarial schedules"
    )
    sim.add_argument("--seeds", type=int, default=100, help="how many seeds (default 100)")
    sim.add_argument("--seed", type=int, default=None, help="run only this seed (reproduce)")
    sim.add_argument("--first", type=int, default=0, help="first seed of the range")
    sim.add_argument(
        "--byzantine", action="store_true", help="one replica runs Byzantine behaviours"
    )
    sim.set_defaults(func=_run_simulate)


def _run_simulate(args: argparse.Namespace) -> int:
    """Prints one line per failing seed (with the command that reproduces it) and a summary;
    exit status 1 if any seed failed."""
    from ledger_bridge.sim.checkers import run_seed
    from ledger_bridge.sim.core import Scenario

    seeds = [args.seed] if args.seed is not None else range(args.first, args.first + args.seeds)
    flag = " --byzantine" if args.byzantine else ""
    failed, started = 0, time.monotonic()
    for seed in seeds:
        try:
            report = run_seed(seed, byzantine=args.byzantine)
            problems = report.violations
        except Exception as exc:  # a crash of the core is a finding, not the end of the run
            problems = [f"crashed: {type(exc).__name__}: {exc}"]
        if problems:
            failed += 1
            print(f"FAIL seed {seed}: {'; '.join(problems[:3])}")
            print(f"  reproduce: civis-vault ledger simulate --seed {seed}{flag}")
        elif args.seed is not None:
            sc = Scenario.random(seed, byzantine=args.byzantine)
            print(f"seed {seed} ok: {sc}")
    total = len(seeds)
    elapsed_s = time.monotonic() - started
    print(f"{total - failed}/{total} seeds passed{flag and ' (Byzantine)'} in {elapsed_s:.1f} s")
    return 1 if failed else 0
