"""What every demo story shares: the keys it may sign with, the API keys it issues, a story's
shape, and how a ledger receipt is printed.

Why the keys live here and not in a story: every story registers members, and each later
admission needs a majority of each college, so every story must be able to cast the votes of
the members any earlier story (of this run or an earlier one) made. One keyring, kept on disk
under `<data-dir>/demo/`, is that memory.
"""

from __future__ import annotations

import contextlib
import secrets
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from api.cli.bootstrap import DPO_COLLEGE, DPO_KEY_FILE
from api.cli.layout import keys_dir, ledger_dir
from api.client import College, Receipt
from api.client.export_verify import vault_keys
from api.client.wallet import Wallet, WalletError, new_wallet
from ledger_bridge.crypto import SigningKey, VerifyKey
from ledger_bridge.genesis import (
    GENESIS_FILE,
    Genesis,
    GenesisError,
    load_genesis,
    load_signing_key,
)

if TYPE_CHECKING:
    from api.cli.demo.stage import Stage

MEMBERS_DIR = Path("demo") / "members"
WALLETS_DIR = Path("demo") / "wallets"
RESIDENTS: College = "citizens"


class DemoFailed(Exception):
    """An expected outcome did not happen; the message says which, fit for the terminal."""


@dataclass(frozen=True)
class Story:
    """One use case: `name` selects it (`civis-vault demo --story NAME`), `summary` heads its
    narration, `play` sets up every party and dataset it needs on the stage and checks each
    outcome, so that it runs alone or after any other story."""

    name: str
    summary: str
    play: Callable[[Stage], None]


def receipt_text(receipt: Receipt | dict[str, Any] | None) -> str:
    if not receipt:
        return "(no ledger receipt)"
    return f"[ledger tx {receipt['tx_id'][:16]}…, block {receipt['block_height']}]"


# -- keys: the founding voters' and the demo's own members' ---------------------------------


@dataclass
class Keyring:
    """The signing keys the demo may use, by college: founding voters and its own members."""

    data_dir: Path
    dpo: SigningKey
    by_college: dict[str, list[SigningKey]] = field(default_factory=dict)
    # From the genesis: what a device signs its claims for, and the cooperative's operations
    # key (the founding member with role vault), which signs coupons and earns commissions.
    chain_id: str = ""
    operations_key: str = ""
    # The genesis validators' keys and its vault members': what a subject's export package is
    # verified against (its blocks' certificates, and who signed it).
    validators: list[VerifyKey] = field(default_factory=list)
    vaults: list[bytes] = field(default_factory=list)

    @classmethod
    def load(cls, data_dir: Path) -> Keyring:
        try:
            dpo = load_signing_key(keys_dir(data_dir) / DPO_KEY_FILE)
            genesis = load_genesis(ledger_dir(data_dir) / GENESIS_FILE)
            ring = cls(data_dir, dpo, chain_id=genesis.chain_id, validators=genesis.public_keys())
            ring.operations_key = _operations_key(genesis)
            ring.vaults = vault_keys(genesis.app_genesis)
            ring.by_college.setdefault(DPO_COLLEGE, []).append(dpo)
            for i, v in enumerate(genesis.validators):
                key = load_signing_key(ledger_dir(data_dir) / "keys" / f"node-{i}.key")
                ring.by_college.setdefault(v.college, []).append(key)
            members = data_dir / MEMBERS_DIR
            for path in sorted(members.glob("*/*.key")) if members.exists() else []:
                ring.by_college.setdefault(path.parent.name, []).append(load_signing_key(path))
            wallets = data_dir / WALLETS_DIR
            for path in sorted(wallets.glob("*.key")) if wallets.exists() else []:
                # A relationship's current pseudonym; one whose erasure raised the generation
                # is not a member yet, and its vote is refused as one (NOT_A_VOTE).
                pseudonyms = Wallet.open(path).pseudonyms().values()
                ring.by_college.setdefault(RESIDENTS, []).extend(pseudonyms)
        except (OSError, GenesisError, WalletError) as exc:
            raise DemoFailed(
                f"cannot read the keys of a local `civis-vault up` in {data_dir} ({exc}); "
                "run the demo on the vault host with up's --data-dir"
            ) from None
        return ring

    def new_member(self, college: str) -> SigningKey:
        """A new key, kept (0600) so that it votes in the demo's later runs."""
        key = new_wallet(self.data_dir / MEMBERS_DIR / college / f"{secrets.token_hex(8)}.key")
        self.by_college.setdefault(college, []).append(key)
        return key

    def new_wallet(self) -> Wallet:
        """A citizen's wallet, kept (0600) so that its pseudonyms vote in later runs."""
        return Wallet.create(self.data_dir / WALLETS_DIR / f"{secrets.token_hex(8)}.key")


def _operations_key(genesis: Genesis) -> str:
    for member in genesis.app_genesis.get("members", []):
        if member.get("role") == "vault":
            return str(member["public_key"])
    raise GenesisError("the genesis names no founding member with role vault")


IssueKey = Callable[[str, str], str]


@contextlib.contextmanager
def api_keys(database_url: str | None, data_dir: Path) -> Iterator[IssueKey]:
    """Issue API keys in the vault's database, as `civis-vault apikey create` does; every key
    issued here is revoked on the way out, so a demo leaves no live token behind."""
    from sqlalchemy.orm import Session

    from api.services.keys import create_key, revoke_key
    from vault import db

    issued: list[str] = []
    with db.open_database(database_url, data_dir) as url:
        engine = db.make_engine(url, pool_size=1)

        def issue(member_id: str, role: str) -> str:
            with Session(engine) as session, session.begin():
                key = create_key(session, member_id=member_id, role=role)
            issued.append(key.key_id)
            return key.token

        try:
            yield issue
        finally:
            with Session(engine) as session, session.begin():
                for key_id in issued:
                    revoke_key(session, key_id)
            engine.dispose()
