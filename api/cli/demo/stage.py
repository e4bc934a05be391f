"""The stage the stories play on: the parties, the checked steps, and the narration.

Why a stage shared by the stories of one run: a legal entity is admitted by a vote of every
college, the slowest step of a story, and once admitted it stays so; a citizen's wallet
derives a fresh pseudonym for every dataset, whatever another story did with it. So the
stage casts each legal entity and each citizen once per run, on the first story that asks
for it, and any story may ask: none relies on another having run, and none changes what
another finds (each registers its own datasets, uploads and consents).
"""

from __future__ import annotations

import contextlib
import secrets
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from api.cli.demo.common import (
    MEMBERS_DIR,
    RESIDENTS,
    DemoFailed,
    IssueKey,
    Keyring,
    receipt_text,
)
from api.client import (
    CivisClient,
    ClientError,
    College,
    Forbidden,
    ProblemError,
    Role,
    public_hex,
)
from api.client.notices import matches, notice_body
from api.client.wallet import Wallet, dataset_id
from ledger_bridge.crypto import SigningKey

ANCHOR_WAIT_S = 60.0
# Contract refusals that mean "this key cannot vote on this proposal": skip it, try the next
# (a member the incident story had suspended, or moved to another key, is one).
NOT_A_VOTE = (
    "not_eligible",
    "not_member",
    "not_admitted",
    "duplicate",
    "member_suspended",
    "key_rotated",
)
# A legal entity a story needs: (its name, without the run id; its college; its role).
Entity = tuple[str, College, Role]


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


@dataclass
class Stage:
    """One run of the demo: its run id (in every name it creates), its cast, its narration."""

    api: CivisClient
    keys: Keyring
    issue: IssueKey
    say: Callable[[str], None]
    run_id: str = field(default_factory=lambda: secrets.token_hex(3))
    step: int = 0
    cast: dict[str, Party] = field(default_factory=dict)
    wallets: dict[str, Wallet] = field(default_factory=dict)
    # Dataset id -> the provider's name, so a citizen's relationships can be told apart.
    owners: dict[str, str] = field(default_factory=dict)
    # (consumer id, purpose) -> the hash of the notice it published this run
    notices: dict[tuple[str, str], str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.dpo = Party("the DPO", self.keys.dpo, self.api)

    # -- narration and checks --------------------------------------------------------------

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
    def refused_as(call: Callable[[], object], code: str, what: str) -> ProblemError:
        """The refusal with this contract code the story expects here (any status)."""
        try:
            call()
        except ProblemError as exc:
            if exc.code == code:
                return exc
            raise DemoFailed(f"{what}: expected a refusal ({code}), got {exc}") from None
        except ClientError as exc:
            raise DemoFailed(f"{what}: expected a refusal ({code}), got {exc}") from None
        raise DemoFailed(f"{what}: expected a refusal ({code}), it was answered")

    @staticmethod
    def check(ok: bool, what: str) -> None:
        if not ok:
            raise DemoFailed(what)

    # -- the run's frame ---------------------------------------------------------------------

    def open(self) -> None:
        with self.doing("checking the API's health"):
            self.api.health()
        self.with_key(self.dpo, "dpo")
        self.say(f"Civis Vault demo, run {self.run_id}, against {self.api.http.base_url}")

    def close(self) -> None:
        with self.doing("ledger status"):
            status = self.dpo.api.ledger_status()
        self.say(
            f"\nThe ledger ({status['answering']} of {status['n']} replicas answering) is at "
            f"block {status['height']}: it holds consents, accesses and erasures by key, id "
            "and commitment, never an address or a sensor reading."
        )

    # -- the cast ----------------------------------------------------------------------------

    def with_key(self, party: Party, role: str) -> None:
        party.api = self.api.with_key(self.issue(party.id, role))

    def entities(self, *wanted: Entity) -> list[Party]:
        """The legal entities, each registered, voted in and given an API key the first time
        a story of this run asks for it."""
        new = [spec for spec in wanted if spec[0] not in self.cast]
        parties = [
            self.new_party(f"{name}-{self.run_id}", college, role) for name, college, role in new
        ]
        self.admit(*parties)
        for (name, _, role), party in zip(new, parties, strict=True):
            self.with_key(party, role)
            self.cast[name] = party
        return [self.cast[name] for name, _, _ in wanted]

    def wallet(self, citizen: str) -> Wallet:
        """A citizen's wallet, made the first time a story of this run casts her."""
        if citizen not in self.wallets:
            self.wallets[citizen] = self.keys.new_wallet()
        return self.wallets[citizen]

    def new_party(self, name: str, college: College, role: Role) -> Party:
        party = Party(name, self.keys.new_member(college), self.api)
        with self.doing(f"{name} registering as {role}"):
            out = self.api.register(party.key, role, college)
        self.tell(
            f"{name} registers as a {role} in the {college} college with its own key "
            f"{party.id[:12]}…: {out['result']['status']} {receipt_text(out['receipt'])}"
        )
        display = name.removeprefix("the ")
        with self.doing(f"the DPO naming {name} in the members' directory"):
            self.dpo.api.name_member(
                party.id,
                display[:1].upper() + display[1:],
                f"privacy@{display.split()[-1].lower()}.example",
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

    def other_pseudonyms(self, citizen: Party, dataset: str) -> dict[str, str]:
        """The citizen's pseudonyms (hex) in the other datasets her wallet knows, by owner."""
        assert citizen.wallet is not None  # a citizen's Party carries her wallet
        here = dataset_id(dataset)
        return {
            self.owners.get(d, f"dataset {d[:8]}…"): public_hex(key)
            for d, key in citizen.wallet.pseudonyms().items()
            if d != here
        }

    # -- governance --------------------------------------------------------------------------

    def admit(self, *parties: Party) -> None:
        """The DPO proposes each admission; the colleges' members vote until it passes."""
        for party in parties:
            self.decide(
                {"kind": "admit_member", "member": party.id},
                f"to admit {party.name}",
                f"{party.name} admitted",
            )

    def decide(self, action: dict[str, Any], proposed: str, outcome: str) -> None:
        """The DPO proposes a governance action; the colleges' members vote until it passes.
        `proposed` says what is proposed ("to admit X"), `outcome` what passing does."""
        with self.doing(f"proposing {proposed}"):
            out = self.api.propose(self.dpo.key, action)
        pid = int(out["result"]["proposal"])
        self.tell(f"the DPO proposes {proposed}: proposal {pid} {receipt_text(out['receipt'])}")
        self.vote_through(pid, outcome)

    def vote_through(self, pid: int, outcome: str) -> None:
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
        self.tell(f"the colleges vote yes ({votes}): {outcome} {receipt_text(last)}")

    # -- data and consent --------------------------------------------------------------------

    def dataset(
        self,
        owner: Party,
        name: str,
        category: str,
        purpose: str,
        legal_basis: str = "contract",
    ) -> str:
        with self.doing(f"{owner.name} registering a dataset"):
            out = owner.api.create_dataset(
                f"{name}-{self.run_id}",
                category=category,
                purposes=[purpose],
                retention_days=365,
                legal_basis=legal_basis,
            )
        basis = "" if legal_basis == "contract" else f", legal basis {legal_basis}"
        self.tell(
            f"{owner.name} registers the dataset {out['name']} (category {category}, "
            f"purpose {purpose}{basis}) {receipt_text(out['receipt'])}"
        )
        self.owners[dataset_id(out["id"])] = owner.name
        return out["id"]

    def upload(self, owner: Party, dataset: str, media_type: str, body: bytes, what: str) -> None:
        with self.doing(f"{owner.name} uploading {what}"):
            out = owner.api.upload(dataset, body, media_type=media_type, timeout_s=ANCHOR_WAIT_S)
        self.tell(
            f"{owner.name} uploads {what}: {out['record_count']} encrypted record(s), Merkle root "
            f"{out['merkle_root'][:12]}… anchored {receipt_text(out['receipt'])}"
        )

    def notice(self, consumer: Party, purpose: str) -> str:
        """The notice `consumer` shows the subjects it asks to consent for `purpose`,
        published once per run (the same words have the same hash); its hash."""
        key = (consumer.id, purpose)
        if key not in self.notices:
            body = notice_body(
                recipient=consumer.id,
                purpose=purpose,
                purpose_text=f"{consumer.name} uses your data for {purpose}, and only for it.",
                retention="as long as your consent lasts (a day here), then no longer",
                controller=f"Civis Vault cooperative, demo run {self.run_id}",
                contact="the cooperative's DPO, through the DPO page",
            )
            with self.doing(f"{consumer.name} publishing its consent notice"):
                self.notices[key] = consumer.api.publish_notice(body)["notice_hash"]
        return self.notices[key]

    def consent(self, subject: Party, consumer: Party, dataset: str, purpose: str) -> None:
        notice = self.notice(consumer, purpose)
        with self.doing(f"{subject.name} consenting"):
            # the consumer hands her the notice as the vault holds it; her wallet checks that
            # the words shown are the words whose hash she signs
            shown = consumer.api.notice(notice)["body"]
            self.check(
                matches(shown, notice), "the notice shown is not the one whose hash is signed"
            )
            out = self.api.grant_consent(
                subject.key, consumer=consumer.id, purpose=purpose, notice=notice, dataset=dataset
            )
        self.tell(
            f"{subject.name} reads {consumer.name}'s notice (purpose, retention, her rights; hash "
            f"{notice[:12]}…) and signs a consent naming it: {consumer.name} may use this dataset "
            f"for {purpose}, for a day {receipt_text(out['receipt'])}"
        )
