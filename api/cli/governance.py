"""`civis-vault governance propose|vote|list`: a founding member's vote, signed with its key file.

Who uses it: the cooperative's voting members, first of all the founders `civis-vault up`
made, whose keys it keeps on the vault host: the DPO's (`<data dir>/keys/dpo.key`) and the
validators' (`<data dir>/ledger/keys/node-<i>.key`). Any member's key file in the wallet format
(`civis-vault wallet new`) works the same way.

Why it talks to the replicas, not to the API: a governance transaction needs no API key (the
signature is its authentication, the contracts its authorisation), and a vote sent through
the vault's API would depend on the vault operator relaying it. Here the transaction is signed
locally and ordered by the replicas named in the genesis, and the answer is accepted only when
f+1 replicas, whose keys the genesis lists, report the same result; `list` reads the committed
proposals the same way. All it needs is the genesis directory (`--data-dir`, or
`--ledger-dir` for replicas that `up` did not start) and a key file.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from ledger_bridge.client import LedgerClient, LedgerError, TcpClientTransport
from ledger_bridge.contracts import codec, rules, tx
from ledger_bridge.crypto import SigningKey
from ledger_bridge.genesis import (
    GENESIS_FILE,
    READER_KEY_FILE,
    Genesis,
    GenesisError,
    load_genesis,
    load_signing_key,
)

DAY_MS = 86_400_000
# The contracts accept a voting period up to VOTING_MAX_MS after the proposing block's time,
# a clock this host does not read: one day under it keeps a skewed clock from crossing it.
VOTING_DAYS_MAX = rules.VOTING_MAX_MS // DAY_MS - 1
VOTING_DAYS_DEFAULT = 7
TX_TTL_MS = 5 * 60 * 1000
TIMEOUT_MS = 20_000
PAGE = 1000


class GovernanceError(Exception):
    """Something the command line reports and exits with: (message, exit code)."""

    def __init__(self, message: str, code: int = 2) -> None:
        super().__init__(message)
        self.code = code


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    gov = sub.add_parser(
        "governance",
        help="propose, vote on and list the cooperative's decisions, signed with a key file",
    )
    actions = gov.add_subparsers(dest="governance_command", metavar="ACTION", required=True)
    propose = actions.add_parser("propose", help="open a proposal; prints its id")
    what = propose.add_mutually_exclusive_group(required=True)
    what.add_argument("--admit-member", metavar="HEX", help="admit a pending legal entity")
    what.add_argument("--admit-voter", metavar="HEX", help="give an active resident a vote")
    what.add_argument("--approve-purpose", metavar="NAME", help="approve a purpose")
    what.add_argument(
        "--suspend-member",
        metavar="HEX",
        help="suspend a legal entity (a key reported stolen): its keys and transactions are "
        "refused until reinstated",
    )
    what.add_argument("--reinstate-member", metavar="HEX", help="lift a member's suspension")
    what.add_argument(
        "--rotate-member-key",
        metavar="HEX",
        help="move a member to the key given with --new-key (which applied with its role and "
        "college); the old key is refused for ever",
    )
    propose.add_argument(
        "--new-key", metavar="HEX", help="with --rotate-member-key: the member's new key"
    )
    propose.add_argument(
        "--days",
        type=_voting_days,
        default=VOTING_DAYS_DEFAULT,
        help=f"voting period in days (1..{VOTING_DAYS_MAX}, default {VOTING_DAYS_DEFAULT})",
    )
    propose.set_defaults(func=_propose)
    vote = actions.add_parser("vote", help="vote on an open proposal")
    vote.add_argument("proposal", type=int)
    choice = vote.add_mutually_exclusive_group(required=True)
    choice.add_argument("--yes", dest="approve", action="store_true")
    choice.add_argument("--no", dest="approve", action="store_false")
    vote.set_defaults(func=_vote)
    listing = actions.add_parser("list", help="open proposals with their tallies per college")
    listing.add_argument("--all", action="store_true", help="closed proposals too")
    listing.set_defaults(func=_list)
    for p in (propose, vote):
        p.add_argument("--key", type=Path, required=True, help="the voting member's key file")
    for p in (propose, vote, listing):
        where = p.add_mutually_exclusive_group()
        where.add_argument("--data-dir", type=Path, default=None, help="up's data directory")
        where.add_argument("--ledger-dir", type=Path, default=None, help="a genesis directory")


def _voting_days(text: str) -> int:
    try:
        days = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of days") from None
    if not 1 <= days <= VOTING_DAYS_MAX:
        raise argparse.ArgumentTypeError(f"the voting period is 1..{VOTING_DAYS_MAX} days")
    return days


# -- the ledger -----------------------------------------------------------------------------


class Ledger:
    """The replicas of one genesis, through a client that checks f+1 signed replies."""

    def __init__(self, genesis: Genesis, reader: SigningKey | None = None) -> None:
        """`reader` reads the proposals (a key with the right to every query); without one
        only submitting works."""
        self.genesis = genesis
        self._client = LedgerClient(
            lambda: TcpClientTransport.for_genesis(genesis, reader),
            genesis.public_keys(),
            genesis.f,
            timeout_ms=TIMEOUT_MS,
        )

    def submit(self, key: SigningKey, tx_type: str, body: dict[str, Any]) -> dict[str, Any]:
        """Order a signed transaction; the contracts' result with `tx_id` and `block_height`."""
        valid_until = int(time.time() * 1000) + TX_TTL_MS
        signed = tx.sign(key, self.genesis.chain_id, tx_type, body, valid_until=valid_until)
        receipt = self._client.submit(signed.encode())
        result: dict[str, Any] = codec.decode(receipt.result)
        if not result.get("ok"):
            raise GovernanceError(
                f"refused by the consent contracts: {result.get('code')}: {result.get('message')}",
                code=1,
            )
        return {
            **{k: v for k, v in result.items() if k not in ("ok", "tx")},
            "tx_id": bytes(result["tx"]).hex(),
            "block_height": receipt.block_height,
        }

    def query(self, q: str, **args: Any) -> dict[str, Any]:
        answer: dict[str, Any] = codec.decode(self._client.query(codec.encode({"q": q, **args})))
        return answer

    def proposals(self) -> Iterator[tuple[int, dict[str, Any]]]:
        """Every proposal with the contract time of the state that answered."""
        after = 0
        while True:
            answer = self.query("proposals", after=after, limit=PAGE)
            for p in answer["result"]:
                yield int(answer["now"]), p
            if len(answer["result"]) < PAGE:
                return
            after = int(answer["result"][-1]["proposal"])

    def close(self) -> None:
        self._client.close()


def _genesis_dir(args: argparse.Namespace) -> Path:
    if args.ledger_dir is not None:
        return Path(args.ledger_dir)
    from api.cli.layout import ledger_dir

    if args.data_dir is not None:
        return ledger_dir(Path(args.data_dir))
    from api.http.settings import Settings

    return ledger_dir(Settings().data_dir)


def _run(name: str, args: argparse.Namespace, act: Callable[[Ledger], Any]) -> int:
    """Connect, act, print the answer as JSON lines; every failure is one line on stderr."""
    try:
        directory = _genesis_dir(args)
        try:
            genesis = load_genesis(directory / GENESIS_FILE)
        except (OSError, GenesisError) as exc:
            raise GovernanceError(f"no genesis in {directory} ({exc})") from None
        # Proposals are read with the operator's read key of a local cluster's directory.
        reader_file = directory / READER_KEY_FILE
        ledger = Ledger(genesis, load_signing_key(reader_file) if reader_file.exists() else None)
        try:
            out = act(ledger)
        except LedgerError as exc:
            raise GovernanceError(
                f"no quorum of replicas answered ({type(exc).__name__}); are they running?"
            ) from None
        finally:
            ledger.close()
    except GovernanceError as exc:
        print(f"civis-vault governance {name}: {exc}", file=sys.stderr)
        return exc.code
    for line in out if isinstance(out, list) else [out]:
        print(json.dumps(line))
    return 0


def _key(args: argparse.Namespace) -> SigningKey:
    from api.client.wallet import WalletError, load_wallet

    try:
        return load_wallet(args.key)
    except WalletError as exc:
        raise GovernanceError(str(exc)) from None


def _hex_key(text: str, flag: str) -> bytes:
    try:
        key = bytes.fromhex(text)
    except ValueError:
        key = b""
    if len(key) != 32:
        raise GovernanceError(f"{flag} is a member's public key: 64 hex characters")
    return key


# -- the actions ----------------------------------------------------------------------------


# The actions that name one member, by their flag's attribute: (kind, flag).
_MEMBER_ACTIONS = {
    "admit_member": ("admit_member", "--admit-member"),
    "admit_voter": ("admit_voter", "--admit-voter"),
    "suspend_member": ("suspend_member", "--suspend-member"),
    "reinstate_member": ("reinstate_member", "--reinstate-member"),
}


def _action(args: argparse.Namespace) -> dict[str, Any]:
    if args.new_key is not None and args.rotate_member_key is None:
        raise GovernanceError("--new-key goes with --rotate-member-key")
    for attribute, (kind, flag) in _MEMBER_ACTIONS.items():
        value = getattr(args, attribute)
        if value is not None:
            return {"kind": kind, "member": _hex_key(value, flag)}
    if args.rotate_member_key is not None:
        if args.new_key is None:
            raise GovernanceError("--rotate-member-key needs --new-key")
        return {
            "kind": "rotate_member_key",
            "member": _hex_key(args.rotate_member_key, "--rotate-member-key"),
            "new_key": _hex_key(args.new_key, "--new-key"),
        }
    return {"kind": "approve_purpose", "purpose": args.approve_purpose}


def _propose(args: argparse.Namespace) -> int:
    def act(ledger: Ledger) -> dict[str, Any]:
        key, action = _key(args), _action(args)
        ends = int(time.time() * 1000) + args.days * DAY_MS
        return ledger.submit(key, "governance.propose", {"action": action, "voting_ends": ends})

    return _run("propose", args, act)


def _vote(args: argparse.Namespace) -> int:
    def act(ledger: Ledger) -> dict[str, Any]:
        body = {"proposal": args.proposal, "approve": args.approve}
        return ledger.submit(_key(args), "governance.vote", body)

    return _run("vote", args, act)


def proposal_line(p: dict[str, Any], now_ms: int) -> dict[str, Any]:
    """One proposal as `list` prints it: its state, and per college where the votes stand."""
    from api.services.gateway import jsonable

    state = p["status"]
    if state == "open" and now_ms > p["ends"]:
        state = "expired"  # nobody voted it through in time; no vote can reach it any more
    colleges = {
        college: {
            "yes": p["yes"][college],
            "no": p["no"][college],
            "voters": voters,
            "majority": voters // 2 + 1,
        }
        for college, voters in p["members"].items()
    }
    return {
        "proposal": p["proposal"],
        "state": state,
        "action": jsonable(p["action"]),
        # None once the author was a forgotten subject (docs/CONTRACTS.md, "Forgetting")
        "author": None if p["author"] is None else bytes(p["author"]).hex(),
        "voting_ends": dt.datetime.fromtimestamp(p["ends"] / 1000, dt.UTC).isoformat(),
        "colleges": colleges,
    }


def _list(args: argparse.Namespace) -> int:
    def act(ledger: Ledger) -> list[dict[str, Any]]:
        lines = [proposal_line(p, now) for now, p in ledger.proposals()]
        return lines if args.all else [line for line in lines if line["state"] == "open"]

    return _run("list", args, act)
