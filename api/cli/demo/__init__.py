"""`civis-vault demo`: the white paper's use cases, played over HTTP against a running system.

Why a demo command: the product's promises (a bank learns one bit, only with the citizen's
consent, and pays for it; a road service reads only what consenting drivers allow; an erased
citizen is unreadable and the ledger shows it; a certified ride earns tokens a coupon spends
once, and the metropolis sees no statistic of fewer than k citizens; a stolen key is suspended
by the colleges and the DPO knows whom it affects; a citizen signs in with her wallet, exports
her data, has an error corrected, restricts and objects, and the register shows each request
answered in time) are easiest to believe
when one sees them happen on a real system. The demo speaks only HTTP to the API a
`civis-vault up` serves, and prints each step in plain words with the ledger receipt
(transaction id, block height) of every step that the
consent contracts decided. It checks every outcome and exits non-zero at the first one that
did not happen, so it doubles as a smoke test of a deployment.

What it needs besides the URL, and why it runs on the vault host (`--data-dir`, the directory
`up` uses):
- API keys. There is no HTTP route that issues them (an operator does, with
  `civis-vault apikey create`), so the demo issues its own the same way, straight into the
  vault's database (`--database-url` when `up` ran with one), and revokes them when it ends.
- Votes. A legal entity (a utility, a bank) joins the cooperative only when every college
  approves its admission by a majority of its members. The demo casts the founding members'
  votes with the keys `up` keeps on this host: the DPO's (`keys/dpo.key`) and the validators'
  (`ledger/keys/node-<i>.key`). It never signs with the vault's own ledger key: the vault is a
  member, but its key speaks for the vault, not for a voter the demo plays.
- Its own members' keys. Each run registers new members (residents join the citizens college,
  the legal entities theirs), so the colleges grow and the next run's majorities need their
  votes too. Every legal entity's key the demo makes is kept, mode 0600, in
  `<data-dir>/demo/members/<college>/`, and every citizen's wallet in `<data-dir>/demo/wallets/`
  (with its relationships file): the wallet's pseudonyms are the residents that vote in later
  runs. A member someone else registered (without leaving a key there) is a vote the demo
  cannot cast; if a college can no longer reach a majority, the demo says so.
- Pseudonyms. A citizen is known in each dataset by a pseudonym her wallet derives for that
  dataset alone (docs/KEYS.md, "Identities"): records are uploaded under it, she registers and
  signs consents with it, the DPO erases by it. The demo prints which pseudonym does what;
  Alice, in two datasets, shows two that nothing on the ledger links.

Stories: each use case is a module of this package registered in `STORIES` (a name, a
one-line summary, a `play(stage)`); adding one is a module and a list entry. A story casts on
the stage (`stage.py`) every party, dataset, upload and consent it needs, so any story runs
alone (`--story NAME`) or with others in any order. The stories of one run share only the
admitted legal entities and the citizens' wallets: an admission holds for good, and a wallet
derives a pseudonym per dataset, each story's datasets being its own, so the pseudonym one
story erases is no other story's.

Every name it creates carries a run id, so the demo can run any number of times on one system.
It prints the fictitious address and sensor readings it made up: they are the story. The
system under it never logs such values, nor writes them to the ledger.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

import httpx

from api.cli.demo import (
    eco_citizen,
    erasure,
    incident,
    proof_of_address,
    road_maintenance,
    subject_rights,
)
from api.cli.demo.common import DemoFailed, Keyring, Story, api_keys
from api.cli.demo.stage import Stage
from api.client import CivisClient

HTTP_TIMEOUT_S = 60.0
# Played in this order unless --story names some; each stands on its own.
STORIES: list[Story] = [
    proof_of_address.STORY,
    road_maintenance.STORY,
    erasure.STORY,
    eco_citizen.STORY,
    incident.STORY,
    subject_rights.STORY,
]


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    demo = sub.add_parser(
        "demo",
        help="play the white paper's use cases against a running `civis-vault up`",
        description=(
            "Proof of address (paid), road maintenance, erasure, eco-citizen tokens, a "
            "personal data breach and a citizen's rights, over HTTP against a running "
            "system; run it on the vault host (it issues its API keys in the vault's database "
            "and signs the founding members' votes with the keys `up` keeps in --data-dir)."
        ),
    )
    demo.add_argument("--url", default="http://127.0.0.1:8000", help="the API's base URL")
    demo.add_argument("--data-dir", type=Path, default=None, help="up's data directory (./.civis)")
    demo.add_argument(
        "--database-url", default=None, help="the external PostgreSQL `up` runs with, if any"
    )
    demo.add_argument(
        "--story",
        action="append",
        choices=[s.name for s in STORIES],
        metavar="NAME",
        help="play only this story (repeat for several, played in the order given); "
        "every story by default; --list-stories names them",
    )
    demo.add_argument(
        "--list-stories", action="store_true", help="name each story with its summary, and exit"
    )
    demo.set_defaults(func=_demo)


def chosen(names: list[str] | None) -> list[Story]:
    """The stories `--story` named, in its order; every registered story when none."""
    by_name = {s.name: s for s in STORIES}
    return [by_name[n] for n in names] if names else list(STORIES)


def play(stage: Stage, stories: list[Story]) -> None:
    """The stories one after the other on one stage, between the health check and the
    ledger's status."""
    stage.open()
    for number, story in enumerate(stories, start=1):
        stage.say(f"\n== {number}. {story.summary} ==")
        story.play(stage)
    stage.close()


def _demo(args: argparse.Namespace) -> int:
    from api.http.settings import Settings

    if args.list_stories:
        for story in STORIES:
            print(f"{story.name:<20} {story.summary}")
        return 0
    overrides: dict[str, object] = {}
    if args.data_dir is not None:
        overrides["data_dir"] = args.data_dir
    if args.database_url is not None:
        overrides["database_url"] = args.database_url
    settings = Settings(**overrides)  # type: ignore[arg-type]
    if not args.verbose:
        # The narration is the output; request lines and migrations are noise (-v shows them).
        for name in ("httpx", "alembic", "vault.embedded"):
            logging.getLogger(name).setLevel(logging.WARNING)
    try:
        keyring = Keyring.load(settings.data_dir)
        with (
            api_keys(settings.database_url, settings.data_dir) as issue,
            CivisClient(args.url, timeout_s=HTTP_TIMEOUT_S) as api,
        ):
            play(Stage(api, keyring, issue, print), chosen(args.story))
    except DemoFailed as exc:
        print(f"\ndemo FAILED: {exc}", flush=True)
        return 1
    except httpx.TransportError as exc:
        print(
            f"\ndemo FAILED: cannot reach the API at {args.url} ({type(exc).__name__}); "
            "is `civis-vault up` running there?",
            flush=True,
        )
        return 2
    print("\ndemo: every expected outcome happened.", flush=True)
    return 0
