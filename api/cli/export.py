"""`civis-vault verify-export FILE --genesis GENESIS`: check a subject's export package offline.

Who runs it: the controller a subject carries their data to (GDPR Art. 20), an auditor, the
subject. It needs the package and the chain's genesis (its validator keys, its vault's key and chain
id), no network, and trusts the vault only for what no ledger fact proves (whose each record
is), which its signature makes its word (api/client/export_verify.py).
Exit 0 when every proof checks, 1 when anything does not, 2 when an input cannot be read.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from api.client.export_verify import vault_keys, verify_package
from ledger_bridge.genesis import GenesisError, load_genesis

PACKAGE_BYTES_MAX = 1 << 30  # a package holds a subject's data and its proofs, not a dump


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    cmd = sub.add_parser(
        "verify-export",
        help="check every proof of a subject's export package against the chain's genesis",
    )
    cmd.add_argument("file", type=Path, help="the package (JSON), as the export route gave it")
    cmd.add_argument(
        "--genesis", type=Path, required=True, help="the chain's genesis.toml (validator keys)"
    )
    cmd.set_defaults(func=verify_export)


def verify_export(args: argparse.Namespace) -> int:
    try:
        if args.file.stat().st_size > PACKAGE_BYTES_MAX:
            raise ValueError(f"larger than {PACKAGE_BYTES_MAX} bytes")
        package = json.loads(args.file.read_bytes())
        genesis = load_genesis(args.genesis)
        vaults = vault_keys(genesis.app_genesis)
        if not vaults:
            raise ValueError("the genesis names no vault member, whose key signs packages")
    except (OSError, ValueError, GenesisError) as exc:
        print(f"civis-vault verify-export: {exc}", file=sys.stderr)
        return 2
    report = verify_package(package, genesis.public_keys(), genesis.chain_id, vaults)
    print(json.dumps(report.to_json(), indent=2))
    return 0 if report.ok else 1
