"""`civis-vault demo`: the white paper's three use cases, played over HTTP against a running system.

Why a demo command: the product's promises (a bank learns one bit, only with the citizen's
consent; a road service reads only what consenting drivers allow; an erased citizen is
unreadable and the ledger shows it) are easiest to believe when one sees them happen on a real
system. The demo speaks only HTTP to the API a `civis-vault up` serves, and prints each step in
plain words with the ledger receipt (transaction id, block height) of every step that the
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

Every name it creates carries a run id, so the demo can run any number of times on one system.
It prints the fictitious address and sensor readings it made up: they are the story. The
system under it never logs such values, nor writes them to the ledger.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import secrets
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from api.cli.bootstrap import DPO_COLLEGE, DPO_KEY_FILE, keys_dir, ledger_dir
from api.client import (
    CivisClient,
    ClientError,
    College,
    Forbidden,
    NotFound,
    PredicateAnswer,
    ProblemError,
    Receipt,
    Role,
    public_hex,
)
from api.client.wallet import Wallet, WalletError, new_wallet
from ledger_bridge.crypto import SigningKey, digest
from ledger_bridge.genesis import GENESIS_FILE, GenesisError, load_genesis, load_signing_key

ANCHOR_WAIT_S = 60.0
HTTP_TIMEOUT_S = 60.0
# Contract refusals that mean "this key cannot vote on this proposal": skip it, try the next.
NOT_A_VOTE = ("not_eligible", "not_member", "not_admitted", "duplicate")
MEMBERS_DIR = Path("demo") / "members"
WALLETS_DIR = Path("demo") / "wallets"
RESIDENTS: College = "citizens"


class DemoFailed(Exception):
    """An expected outcome did not happen; the message says which, fit for the terminal."""


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    demo = sub.add_parser(
        "demo",
        help="play the white paper's use cases against a running `civis-vault up`",
        description=(
            "Proof of address, road maintenance and erasure, over HTTP against a running "
            "system; run it on the vault host (it issues its API keys in the vault's database "
            "and signs the founding members' votes with the keys `up` keeps in --data-dir)."
        ),
    )
    demo.add_argument("--url", default="http://127.0.0.1:8000", help="the API's base URL")
    demo.add_argument("--data-dir", type=Path, default=None, help="up's data directory (./.civis)")
    demo.add_argument(
        "--database-url", default=None, help="the external PostgreSQL `up` runs with, if any"
    )
    demo.set_defaults(func=_demo)


def _demo(args: argparse.Namespace) -> int:
    from api.http.settings import Settings

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
            Demo(api, keyring, issue, print).run()
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


# -- keys: the founding voters' and the demo's own members' ---------------------------------


@dataclass
class Keyring:
    """The signing keys the demo may use, by college: founding voters and its own members."""

    data_dir: Path
    dpo: SigningKey
    by_college: dict[str, list[SigningKey]] = field(default_factory=dict)

    @classmethod
    def load(cls, data_dir: Path) -> Keyring:
        try:
            dpo = load_signing_key(keys_dir(data_dir) / DPO_KEY_FILE)
            genesis = load_genesis(ledger_dir(data_dir) / GENESIS_FILE)
            ring = cls(data_dir, dpo)
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


# -- the stories ----------------------------------------------------------------------------


def receipt_text(receipt: Receipt | dict[str, Any] | None) -> str:
    if not receipt:
        return "(no ledger receipt)"
    return f"[ledger tx {receipt['tx_id'][:16]}…, block {receipt['block_height']}]"


@dataclass
class Party:
    """Someone in the stories: a display name, a ledger key, and (once issued) an API key,
    as a client of its own over the demo's connections. A citizen's key is her pseudonym in
    one dataset, derived by `wallet`."""

    name: str
    key: SigningKey
    api: CivisClient
    wallet: Wallet | None = None

    @property
    def id(self) -> str:
        return public_hex(self.key)


class Demo:
    """The three stories, each step checked; `say` prints a line of narration."""

    def __init__(
        self, api: CivisClient, keyring: Keyring, issue: IssueKey, say: Callable[[str], None]
    ) -> None:
        self.api = api
        self.keys = keyring
        self.issue = issue
        self.say = say
        self.run_id = secrets.token_hex(3)
        self.step = 0
        self.dpo = Party("the DPO", keyring.dpo, api)

    # -- plumbing ----------------------------------------------------------------------

    def tell(self, text: str) -> None:
        self.step += 1
        self.say(f"  {self.step:>2}. {text}")

    @staticmethod
    @contextlib.contextmanager
    def doing(what: str) -> Iterator[None]:
        """A refusal the story did not expect fails the demo, saying which step it was."""
        try:
            yield
        except ClientError as exc:
            raise DemoFailed(f"{what}: {exc}") from None

    @staticmethod
    def refused(call: Callable[[], object], what: str) -> ProblemError:
        """The refusal the story expects here; an answer instead fails the demo."""
        try:
            call()
        except Forbidden as exc:
            return exc
        except ClientError as exc:
            raise DemoFailed(f"{what}: expected a refusal (403), got {exc}") from None
        raise DemoFailed(f"{what}: expected a refusal (403), it was answered")

    @staticmethod
    def check(ok: bool, what: str) -> None:
        if not ok:
            raise DemoFailed(what)

    def with_key(self, party: Party, role: str) -> None:
        party.api = self.api.with_key(self.issue(party.id, role))

    def new_party(self, name: str, college: College, role: Role) -> Party:
        party = Party(name, self.keys.new_member(college), self.api)
        with self.doing(f"{name} registering as {role}"):
            out = self.api.register(party.key, role, college)
        self.tell(
            f"{name} registers as a {role} in the {college} college with its own key "
            f"{party.id[:12]}…: {out['result']['status']} {receipt_text(out['receipt'])}"
        )
        return party

    def new_subject(self, name: str, wallet: Wallet, dataset: str, where: str) -> Party:
        """The citizen's pseudonym for `dataset`, registered as a resident before it signs."""
        party = Party(name, wallet.pseudonym(dataset), self.api, wallet)
        with self.doing(f"{name} registering a pseudonym"):
            out = self.api.register(party.key, "subject", RESIDENTS)
        self.keys.by_college.setdefault(RESIDENTS, []).append(party.key)
        self.tell(
            f"{name}'s wallet derives the pseudonym {party.id[:12]}… for {where} and registers "
            f"it as a resident: {out['result']['status']} {receipt_text(out['receipt'])}"
        )
        return party

    def admit(self, *parties: Party) -> None:
        """The DPO proposes each admission; the colleges' members vote until it passes."""
        for party in parties:
            with self.doing(f"proposing to admit {party.name}"):
                out = self.api.propose_admission(self.dpo.key, party.id)
            pid = int(out["result"]["proposal"])
            self.tell(
                f"the DPO proposes to admit {party.name}: proposal {pid} "
                f"{receipt_text(out['receipt'])}"
            )
            self.vote_through(pid, party.name)

    def vote_through(self, pid: int, what: str) -> None:
        with self.doing(f"reading proposal {pid}"):
            proposal = self.dpo.api.proposal(pid)["result"]
        members: dict[str, int] = proposal["members"]
        tally: dict[str, int] = {}
        status, last = proposal["status"], None
        for college, n in members.items():
            yes = int(proposal["yes"][college])
            for key in self.keys.by_college.get(college, []):
                if 2 * yes > n:
                    break
                try:
                    out = self.api.vote(key, pid)
                except ProblemError as exc:
                    if exc.code in NOT_A_VOTE:
                        continue  # admitted after the proposal, or not (yet) a member
                    raise DemoFailed(
                        f"a {college} member voting on proposal {pid}: {exc}"
                    ) from None
                yes, status, last = yes + 1, out["result"]["status"], out["receipt"]
            tally[college] = yes
            if 2 * yes <= n:
                raise DemoFailed(
                    f"proposal {pid}: the {college} college has {n} members and the demo holds "
                    f"the keys of only {yes} who may vote; no majority (members registered "
                    f"outside the demo leave no key in {self.keys.data_dir / MEMBERS_DIR})"
                )
        votes = ", ".join(f"{c} {tally[c]} of {members[c]}" for c in members)
        self.check(status == "passed", f"proposal {pid} is {status} after the votes, not passed")
        self.tell(f"the colleges vote yes ({votes}): {what} admitted {receipt_text(last)}")

    def dataset(self, owner: Party, name: str, category: str, purpose: str) -> str:
        with self.doing(f"{owner.name} registering a dataset"):
            out = owner.api.create_dataset(
                f"{name}-{self.run_id}",
                category=category,
                purposes=[purpose],
                retention_days=365,
                legal_basis="contract",
            )
        self.tell(
            f"{owner.name} registers the dataset {out['name']} (category {category}, "
            f"purpose {purpose}) {receipt_text(out['receipt'])}"
        )
        return out["id"]

    def upload(self, owner: Party, dataset: str, media_type: str, body: bytes, what: str) -> None:
        with self.doing(f"{owner.name} uploading {what}"):
            out = owner.api.upload(dataset, body, media_type=media_type, timeout_s=ANCHOR_WAIT_S)
        self.tell(
            f"{owner.name} uploads {what}: {out['record_count']} encrypted record(s), Merkle root "
            f"{out['merkle_root'][:12]}… anchored {receipt_text(out['receipt'])}"
        )

    def consent(self, subject: Party, consumer: Party, dataset: str, purpose: str) -> None:
        with self.doing(f"{subject.name} consenting"):
            out = self.api.grant_consent(
                subject.key, consumer=consumer.id, purpose=purpose, dataset=dataset
            )
        self.tell(
            f"{subject.name} signs a consent: {consumer.name} may use this dataset for "
            f"{purpose}, for a day {receipt_text(out['receipt'])}"
        )

    # -- the stories -------------------------------------------------------------------

    def run(self) -> None:
        with self.doing("checking the API's health"):
            self.api.health()
        self.with_key(self.dpo, "dpo")
        self.say(f"Civis Vault demo, run {self.run_id}, against {self.api.http.base_url}")
        alice = self.proof_of_address()
        self.erasure(*self.road_maintenance(alice))
        with self.doing("ledger status"):
            status = self.dpo.api.ledger_status()
        self.say(
            f"\nThe ledger ({status['answering']} of {status['n']} replicas answering) is at "
            f"block {status['height']}: it holds consents, accesses and erasures by key, id "
            "and commitment, never an address or a sensor reading."
        )

    def proof_of_address(self) -> Party:
        self.say("\n== 1. Proof of address: the bank learns yes or no, with consent ==")
        utility = self.new_party(f"the utility Lumen-{self.run_id}", "providers", "provider")
        bank = self.new_party(f"the bank Crédit-{self.run_id}", "services", "consumer")
        self.admit(utility, bank)
        self.with_key(utility, "provider")
        self.with_key(bank, "consumer")

        address = f"12 rue des Lilas, appartement {self.run_id}"
        dataset = self.dataset(utility, "customer-addresses", "address", "proof-of-address")
        citizen = self.new_subject(
            f"the citizen Alice-{self.run_id}",
            self.keys.new_wallet(),
            dataset,
            "the utility's dataset (her records, her consents to the bank)",
        )
        line = json.dumps({"subject_id": citizen.id, "payload": {"address": address}})
        self.upload(
            utility, dataset, "application/x-ndjson", (line + "\n").encode(), "Alice's address"
        )

        def ask(value: str) -> PredicateAnswer:
            return bank.api.predicate(
                dataset,
                "proof-of-address",
                subject=citizen.id,
                field="address",
                op="eq",
                value=value,
            )

        no = self.refused(lambda: ask(address), "the bank asking before any consent")
        self.tell(f"before any consent the bank asks and is refused: {no.detail}")
        self.consent(citizen, bank, dataset, "proof-of-address")
        with self.doing("the bank asking with Alice's consent"):
            out = ask(address)
        self.check(
            set(out) == {"result", "receipt"} and out["result"] is True,
            f"the bank should learn exactly yes, it got {sorted(out)}",
        )
        self.tell(
            f'the bank asks "does Alice live at {address}?" and learns: yes, and nothing '
            f"else (the answer holds only {sorted(out)}) {receipt_text(out['receipt'])}"
        )
        with self.doing("the bank asking a wrong address"):
            out = ask("3 avenue Ailleurs")
        self.check(out["result"] is False, "a wrong address should answer no")
        self.tell(f"asked about another address, it learns: no {receipt_text(out['receipt'])}")
        whole = self.refused(
            lambda: bank.api.access(dataset, "proof-of-address", subjects=[citizen.id]),
            "the bank asking for Alice's whole record",
        )
        self.tell(f"it asks for Alice's record itself and is refused: {whole.detail}")
        with self.doing("Alice revoking her consent"):
            revoked = self.api.revoke_consent(
                citizen.key, consumer=bank.id, purpose="proof-of-address", dataset=dataset
            )
        self.tell(f"Alice revokes her consent {receipt_text(revoked['receipt'])}")
        no = self.refused(lambda: ask(address), "the bank asking after the revocation")
        self.tell(f"the bank asks again and is refused after the revocation: {no.detail}")
        return citizen

    def road_maintenance(self, alice: Party) -> tuple[Party, Party, str]:
        self.say(
            "\n== 2. Road maintenance: the road service reads what consenting drivers allow =="
        )
        fleet = self.new_party(
            f"the fleet operator Transroute-{self.run_id}", "providers", "provider"
        )
        roads = self.new_party(f"the road service Voirie-{self.run_id}", "services", "consumer")
        self.admit(fleet, roads)
        self.with_key(fleet, "provider")
        self.with_key(roads, "consumer")
        dataset = self.dataset(fleet, "vehicle-sensors", "vehicle-telemetry", "road-maintenance")
        assert alice.wallet is not None  # a citizen's Party carries her wallet
        drivers = [
            self.new_subject(name, wallet, dataset, "the fleet's dataset")
            for name, wallet in (
                (f"the driver Bruno-{self.run_id}", self.keys.new_wallet()),
                (f"the driver Chloé-{self.run_id}", self.keys.new_wallet()),
                (alice.name, alice.wallet),
            )
        ]
        self.check(drivers[2].id != alice.id, "Alice's two datasets should see two pseudonyms")
        self.tell(
            f"{alice.name} drives for the fleet too: her pseudonyms {alice.id[:12]}… (utility) "
            f"and {drivers[2].id[:12]}… (fleet) share nothing on the ledger; only her wallet "
            "links them"
        )
        rows = ["subject_id,driver_id,recorded_at,lat,lon,vibration"]
        for d, driver in enumerate(drivers):
            for k in range(2):
                employee = f"EMP-{self.run_id}-{d}"
                rows.append(
                    f"{driver.id},{employee},2030-05-0{k + 1}T08:0{d}:00Z,"
                    f"45.76{d}{k},4.83{d}{k},{0.2 + 0.3 * d + 0.1 * k:.2f}"
                )
        csv = ("\n".join(rows) + "\n").encode()
        self.upload(fleet, dataset, "text/csv", csv, "six sensor readings (CSV) of three drivers")
        consenting, holdout = drivers[:2], drivers[2]
        for driver in consenting:
            self.consent(driver, roads, dataset, "road-maintenance")
        self.tell(f"{holdout.name} gives no consent")
        self.read_sensors(roads, dataset, consenting, holdout)
        return consenting[0], roads, dataset

    def read_sensors(
        self, roads: Party, dataset: str, consenting: list[Party], holdout: Party
    ) -> None:
        fields = ["lat", "lon", "vibration"]
        with self.doing("the road service reading the sensor data"):
            out = roads.api.access(dataset, "road-maintenance", fields=fields)
        got = {rec["subject_id"] for rec in out["records"]}
        self.check(
            got == {d.id for d in consenting} and len(out["records"]) == 4,
            f"the road service should read the 4 readings of the 2 consenting drivers, "
            f"it read {len(out['records'])} of {len(got)} drivers",
        )
        shapes = {tuple(sorted(rec["payload"])) for rec in out["records"]}
        self.check(
            shapes == {tuple(sorted(fields))}, f"the records should hold only {fields}: {shapes}"
        )
        sample = out["records"][0]["payload"]
        self.tell(
            f"the road service asks for {', '.join(fields)} and reads {len(out['records'])} "
            f"readings of the {len(got)} consenting drivers, e.g. {json.dumps(sample)}; "
            f"no driver_id, nothing of {holdout.name} {receipt_text(out['receipt'])}"
        )
        no = self.refused(
            lambda: roads.api.access(dataset, "road-maintenance", fields=[*fields, "driver_id"]),
            "the road service asking for driver_id",
        )
        self.tell(f"it asks for driver_id too and is refused: {no.detail}")
        everyone = [d.id for d in [*consenting, holdout]]
        with self.doing("the road service naming all three drivers"):
            out = roads.api.access(dataset, "road-maintenance", subjects=everyone, fields=fields)
        self.check(
            out["denied"] == [[holdout.id, "no_consent"]],
            f"{holdout.name} should be denied for no consent: {out['denied']}",
        )
        self.tell(
            f"naming all three drivers, it is told {holdout.name}: no_consent "
            f"{receipt_text(out['receipt'])}"
        )

    def erasure(self, driver: Party, roads: Party, dataset: str) -> None:
        self.say("\n== 3. Erasure: the DPO erases a citizen; unreadable, and on the ledger ==")
        with self.doing(f"the DPO erasing {driver.name}"):
            cert = self.dpo.api.erase(subject_id=driver.id)
        receipt = cert["receipt"]
        self.check(
            cert["state"] == "recorded" and cert["secrets_destroyed"] >= 1 and receipt is not None,
            f"the erasure certificate should be recorded with destroyed keys: {cert}",
        )
        assert receipt is not None  # checked above; for the type checker
        self.tell(
            f"the DPO erases {driver.name}'s pseudonym {driver.id[:12]}… everywhere (no dataset "
            f"named): certificate {cert['erasure_id']}, "
            f"{cert['secrets_destroyed']} key(s) destroyed, {len(cert['key_commitments'])} key "
            f"commitment(s) published, state {cert['state']} {receipt_text(receipt)}"
        )
        self.wallet_keeps(driver, dataset, dict(cert))
        with self.doing("reading the erasure's block"):
            block = self.dpo.api.block(receipt["block_height"])
        proof = cert.get("erasure_receipt")
        self.check(proof is not None, "the erasure's answer should carry the subject's receipt")
        assert proof is not None  # checked above; for the type checker
        # Once a checkpoint covers it, the replicas keep only the digest of each transaction
        # naming the forgotten pseudonym, the erasure's own included: the receipt's request
        # hashes to one of them. Before that the block still holds the transaction itself.
        request_digest = digest(bytes.fromhex(proof["request"])).hex()
        redacted = [o for o in block["omitted"] if o["request_digest"] == request_digest]
        held = [t["type"] for t in block["transactions"] if t["tx_id"] == receipt["tx_id"]]
        self.check(
            block["verified"] and (held == ["erasure.record"] or len(redacted) == 1),
            f"the erasure's block should verify and hold the erasure or its digest: {held}",
        )
        shown = (
            "keeps only its digest, which the driver's receipt opens"
            if redacted
            else "holds the erasure.record transaction (its digest alone once redacted)"
        )
        self.tell(
            f"the ledger shows it: block {block['height']} (commit certificate verified, "
            f"{len(block['certificate']['signers'])} signers) {shown}"
        )
        with self.doing("the road service asking for the erased driver"):
            try:
                roads.api.access(
                    dataset,
                    "road-maintenance",
                    subjects=[driver.id],
                    fields=["lat", "lon", "vibration"],
                )
            except NotFound as exc:
                refusal = exc
            else:
                raise DemoFailed("the road service's access naming the erased driver was answered")
        # Forgotten everywhere, the pseudonym is no member: the access is refused whole, so its
        # body, which names the pseudonym, never enters a block.
        self.check(
            refusal.code == "unknown_subject",
            f"the access naming the erased driver should be refused unknown_subject: {refusal}",
        )
        self.tell(
            f"the road service asks for {driver.name}'s pseudonym again: refused "
            f"({refusal.code}), and the ledger keeps only the request's digest"
        )
        self.after_erasure(driver, receipt["block_height"])

    def wallet_keeps(self, driver: Party, dataset: str, certificate: dict[str, Any]) -> None:
        """The subject's wallet keeps the receipt and never signs as the erased pseudonym again."""
        assert driver.wallet is not None  # a citizen's Party carries her wallet
        try:
            following = driver.wallet.record_erasure(dataset, certificate)
        except WalletError as exc:
            raise DemoFailed(f"{driver.name}'s wallet recording the erasure: {exc}") from None
        self.check(following.public_key != driver.key.public_key, "the generation did not rise")
        self.tell(
            f"{driver.name}'s wallet keeps the certificate's receipt and raises the dataset's "
            f"generation to {driver.wallet.generation(dataset)}: joining it again would be as "
            f"{public_hex(following)[:12]}…, never as the erased pseudonym"
        )

    def after_erasure(self, driver: Party, erased_at: int) -> None:
        with self.doing("the DPO exporting the erased driver's data"):
            export = self.dpo.api.export(driver.id)
        self.check(
            export["records"] == [],
            f"the export should hold no readable record: {len(export['records'])}",
        )
        with self.doing("reading the DPO's access log"):
            log = list(self.dpo.api.iter_access_log(subject=driver.id))
        # Lines that delivered the driver's data (a line filtered by subject lists only them
        # in `granted`); none once the ledger forgot the pseudonym, whose accesses no longer
        # name it, and none after the erasure in any case.
        delivered = [a["height"] for a in log if driver.id in a["granted"]]
        self.check(
            all(h < erased_at for h in delivered),
            f"the access log should show deliveries to {driver.name} only before block "
            f"{erased_at}: {delivered}",
        )
        self.tell(
            f"the subject export now holds {len(export['records'])} readable records, and the "
            f"ledger names the pseudonym in {len(export['erasures'])} erasure record(s) (the "
            "wallet's receipt proves the erasure either way); the DPO's access log shows "
            f"{len(delivered)} accesses that delivered {driver.name}'s data, all before the "
            f"erasure (block {erased_at}), none since"
        )
