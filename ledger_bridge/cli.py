"""Subcommands of the ledger side: `node`, `ledger up`, `ledger simulate`."""

from __future__ import annotations

import argparse
import signal
import time
from pathlib import Path
from types import FrameType
from typing import Any


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    _register_node(sub)
    ledger = sub.add_parser("ledger", help="the bundled PBFT ledger")
    ledger_sub = ledger.add_subparsers(dest="ledger_command", metavar="LEDGER_COMMAND")
    _register_up(ledger_sub)
    _register_genesis(ledger_sub)
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
    up.add_argument(
        "--ledger-dir",
        "--dir",
        dest="ledger_dir",
        type=Path,
        default=Path(".civis/ledger"),
        help="genesis directory (the name every command gives it; --dir is accepted too)",
    )
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
            args.ledger_dir, args.replicas, base_port=args.base_port, use_tls=not args.no_tls
        )
    except GenesisError as exc:
        print(f"error: {exc}")
        return 2
    with cluster:
        cluster.start()
        try:
            cluster.wait_ready()
            kind = "TLS, pin tls/ca.crt" if cluster.client_ssl else "plain TCP, development only"
            print(f"ledger up: {cluster.n} replicas from {args.ledger_dir}; clients ({kind}) on")
            for address in cluster.client_addresses():
                print(f"  {address}")
            reader = args.ledger_dir / "keys" / "reader.key"
            print(f"reads need a member key; the operator's: {reader}")
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


# -- `civis-vault ledger genesis` (the files of a cluster on several hosts) ---------------------


def _register_genesis(ledger_sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    genesis = ledger_sub.add_parser(
        "genesis",
        help="write the genesis, keys, certificates and node files of a cluster on several hosts",
        description=(
            "Writes LEDGER_DIR/genesis.toml (every host), and for each replica i its "
            "node-<i>.toml, keys/node-<i>.key and tls/node-<i>.{crt,key} (host i only); "
            "tls/ca.key stays offline. Starts nothing. docs/LEDGER-OPERATIONS.md, 'Several hosts'."
        ),
    )
    genesis.add_argument(
        "--ledger-dir",
        "--dir",
        dest="ledger_dir",
        type=Path,
        required=True,
        help="directory to create (the name every command gives it; --dir is accepted too)",
    )
    genesis.add_argument(
        "--host",
        action="append",
        required=True,
        metavar="ADDRESS",
        help="replica i's address, once per replica in id order (3f+1 of them)",
    )
    genesis.add_argument("--base-port", type=int, default=26600, help="peer port of replica 0")
    genesis.add_argument("--chain-id", default=None, help="default: civis-<random>")
    genesis.add_argument(
        "--app", default="contracts", help="the replicated application: contracts (default), kv"
    )
    genesis.add_argument(
        "--member",
        action="append",
        default=[],
        metavar="ROLE:COLLEGE:PUBLIC_KEY",
        help="a founding member besides the validators (the vault, the DPO), hex Ed25519 key",
    )
    genesis.add_argument(
        "--param",
        action="append",
        default=[],
        metavar="NAME=INTEGER",
        help="a protocol parameter (batch_size_max, view_change_timeout_ms...; docs/PBFT.md)",
    )
    genesis.add_argument(
        "--no-tls", action="store_true", help="plain TCP everywhere (development only)"
    )
    genesis.set_defaults(func=_run_genesis)


def _founding_members(specs: list[str]) -> list[dict[str, str]]:
    from ledger_bridge.contracts.vocabulary import ROLES
    from ledger_bridge.genesis import GenesisError

    members = []
    for spec in specs:
        role, _, rest = spec.partition(":")
        college, _, key = rest.partition(":")
        if role not in ROLES or not college or len(key) != 64:
            raise GenesisError(
                f"--member {spec!r}: expected ROLE:COLLEGE:PUBLIC_KEY, a role of "
                f"{', '.join(ROLES)} and 64 hex digits"
            )
        try:
            bytes.fromhex(key)
        except ValueError:
            raise GenesisError(f"--member {spec!r}: the public key is not hex") from None
        members.append({"public_key": key, "role": role, "college": college})
    return members


def _params(app: str, specs: list[str]) -> dict[str, Any]:
    from ledger_bridge.crypto import SigningKey
    from ledger_bridge.genesis import GenesisError
    from ledger_bridge.pbft.config import ClusterConfig

    params: dict[str, Any] = {"app": app}
    for spec in specs:
        name, _, value = spec.partition("=")
        try:
            params[name] = int(value)
        except ValueError:
            raise GenesisError(f"--param {spec!r}: expected NAME=INTEGER") from None
    keys = [bytes(SigningKey.generate().public_key) for _ in range(4)]
    try:  # every replica would refuse it at start: say so now
        ClusterConfig.create(keys, **{k: v for k, v in params.items() if k != "app"})
    except (TypeError, ValueError) as exc:
        raise GenesisError(f"--param: {exc}") from None
    return params


def _run_genesis(args: argparse.Namespace) -> int:
    import secrets

    from ledger_bridge import genesis as gen

    try:
        params = _params(args.app, args.param)
        members = _founding_members(args.member)
        chain_id = args.chain_id or f"civis-{secrets.token_hex(4)}"
        gen.create_local(
            args.ledger_dir,
            len(args.host),
            base_port=args.base_port,
            chain_id=chain_id,
            use_tls=not args.no_tls,
            params=params,
            app_genesis={"members": members} if members else None,
            hosts=args.host,
        )
    except gen.GenesisError as exc:
        print(f"error: {exc}")
        return 2
    print(f"chain {chain_id}: {len(args.host)} replicas written to {args.ledger_dir}")
    for i, host in enumerate(args.host):
        print(f"  host {host}: node-{i}.toml keys/node-{i}.key tls/node-{i}.crt tls/node-{i}.key")
    print("every host and client: genesis.toml tls/ca.crt; keep tls/ca.key offline")
    return 0


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
