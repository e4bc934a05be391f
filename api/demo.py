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
  votes too. Every key the demo makes is kept, mode 0600, in `<data-dir>/demo/members/<college>/`
  and votes in later runs. A member someone else registered (without leaving a key there) is a
  vote the demo cannot cast; if a college can no longer reach a majority, the demo says so.

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
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from api.bootstrap import DPO_COLLEGE, DPO_KEY_FILE, keys_dir, ledger_dir
from api.wallet import new_wallet
from ledger_bridge.crypto import SigningKey
from ledger_bridge.genesis import GENESIS_FILE, GenesisError, load_genesis, load_signing_key

DAY_MS = 86_400_000
HOUR_MS = 3_600_000
ANCHOR_WAIT_S = 60.0
HTTP_TIMEOUT_S = 60.0
# Contract refusals that mean "this key cannot vote on this proposal": skip it, try the next.
NOT_A_VOTE = ("not_eligible", "not_member", "not_admitted", "duplicate")
MEMBERS_DIR = Path("demo") / "members"


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
    from vault.config import Settings

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
            httpx.Client(base_url=args.url.rstrip("/"), timeout=HTTP_TIMEOUT_S) as http,
        ):
            Demo(http, keyring, issue, print).run()
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
        except (OSError, GenesisError) as exc:
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


IssueKey = Callable[[str, str], dict[str, str]]


@contextlib.contextmanager
def api_keys(database_url: str | None, data_dir: Path) -> Iterator[IssueKey]:
    """Issue API keys in the vault's database, as `civis-vault apikey create` does; every key
    issued here is revoked on the way out, so a demo leaves no live token behind."""
    from sqlalchemy.orm import Session

    from api.keys import create_key, revoke_key
    from vault import db

    issued: list[str] = []
    with db.open_database(database_url, data_dir) as url:
        engine = db.make_engine(url, pool_size=1)

        def issue(member_id: str, role: str) -> dict[str, str]:
            with Session(engine) as session, session.begin():
                key = create_key(session, member_id=member_id, role=role)
            issued.append(key.key_id)
            return {"Authorization": f"Bearer {key.token}"}

        try:
            yield issue
        finally:
            with Session(engine) as session, session.begin():
                for key_id in issued:
                    revoke_key(session, key_id)
            engine.dispose()


# -- the stories ----------------------------------------------------------------------------


def receipt_text(receipt: dict[str, Any] | None) -> str:
    if not receipt:
        return "(no ledger receipt)"
    return f"[ledger tx {receipt['tx_id'][:16]}…, block {receipt['block_height']}]"


def _detail(r: httpx.Response) -> str:
    try:
        body = r.json()
    except ValueError:
        return r.text[:200]
    if isinstance(body, dict) and "detail" in body:
        return str(body["detail"])
    return json.dumps(body)[:200]


@dataclass
class Party:
    """Someone in the stories: a display name, a ledger key, and (once issued) an API key."""

    name: str
    key: SigningKey
    headers: dict[str, str] = field(default_factory=dict)

    @property
    def id(self) -> str:
        return self.key.public_key.hex()


class Demo:
    """The three stories, each step checked; `say` prints a line of narration."""

    def __init__(
        self, http: httpx.Client, keyring: Keyring, issue: IssueKey, say: Callable[[str], None]
    ) -> None:
        self.http = http
        self.keys = keyring
        self.issue = issue
        self.say = say
        self.run_id = secrets.token_hex(3)
        self.step = 0
        self.dpo = Party("the DPO", keyring.dpo)

    # -- plumbing ----------------------------------------------------------------------

    def tell(self, text: str) -> None:
        self.step += 1
        self.say(f"  {self.step:>2}. {text}")

    def expect(self, r: httpx.Response, status: int, doing: str) -> dict[str, Any]:
        if r.status_code != status:
            raise DemoFailed(
                f"{doing}: expected HTTP {status}, got {r.status_code}: {_detail(r)} "
                f"({r.request.method} {r.request.url.path})"
            )
        body: dict[str, Any] = r.json()
        return body

    @staticmethod
    def check(ok: bool, what: str) -> None:
        if not ok:
            raise DemoFailed(what)

    def signed(self, who: Party, tx_type: str, body: dict[str, Any]) -> dict[str, str]:
        """A draft from the API, signed with the author's own key (as a wallet does)."""
        r = self.http.post("/v1/drafts", json={"type": tx_type, "author": who.id, "body": body})
        d = self.expect(r, 201, f"drafting {tx_type} for {who.name}")
        signature = who.key.sign(bytes.fromhex(d["signing_payload"])).hex()
        return {"transaction": d["transaction"], "signature": signature}

    def submit(self, path: str, who: Party, tx_type: str, body: dict[str, Any]) -> httpx.Response:
        return self.http.post(path, json=self.signed(who, tx_type, body))

    def new_party(self, name: str, college: str, role: str) -> Party:
        party = Party(name, self.keys.new_member(college))
        r = self.submit("/v1/members", party, "member.register", {"role": role, "college": college})
        out = self.expect(r, 201, f"{name} registering as {role}")
        status = out["result"]["status"]
        self.tell(
            f"{name} registers as a {role} in the {college} college with its own key "
            f"{party.id[:12]}…: {status} {receipt_text(out['receipt'])}"
        )
        return party

    def admit(self, *parties: Party) -> None:
        """The DPO proposes each admission; the colleges' members vote until it passes."""
        for party in parties:
            action = {"kind": "admit_member", "member": party.id}
            ends = int(time.time() * 1000) + HOUR_MS
            r = self.submit(
                "/v1/governance/proposals",
                self.dpo,
                "governance.propose",
                {"action": action, "voting_ends": ends},
            )
            out = self.expect(r, 201, f"proposing to admit {party.name}")
            pid = int(out["result"]["proposal"])
            self.tell(
                f"the DPO proposes to admit {party.name}: proposal {pid} "
                f"{receipt_text(out['receipt'])}"
            )
            self.vote_through(pid, party.name)

    def vote_through(self, pid: int, what: str) -> None:
        r = self.http.get(f"/v1/governance/proposals/{pid}", headers=self.dpo.headers)
        proposal = self.expect(r, 200, f"reading proposal {pid}")["result"]
        members: dict[str, int] = proposal["members"]
        tally: dict[str, int] = {}
        status, last = proposal["status"], None
        for college, n in members.items():
            yes = int(proposal["yes"][college])
            for key in self.keys.by_college.get(college, []):
                if 2 * yes > n:
                    break
                voter = Party(f"a {college} member", key)
                r = self.submit(
                    f"/v1/governance/proposals/{pid}/votes",
                    voter,
                    "governance.vote",
                    {"proposal": pid, "approve": True},
                )
                if r.status_code != 201 and _detail(r).split(":")[0] in NOT_A_VOTE:
                    continue  # admitted after the proposal, or not (yet) a member
                out = self.expect(r, 201, f"a {college} member voting on proposal {pid}")
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

    def wait_anchored(self, owner: Party, dataset: str, upload: str) -> dict[str, Any]:
        deadline = time.monotonic() + ANCHOR_WAIT_S
        while True:
            r = self.http.get(f"/v1/datasets/{dataset}/uploads/{upload}", headers=owner.headers)
            out = self.expect(r, 200, f"reading upload {upload}")
            if out["state"] == "anchored":
                return out
            if time.monotonic() > deadline:
                raise DemoFailed(f"upload {upload} was not anchored within {ANCHOR_WAIT_S:.0f} s")
            time.sleep(0.1)

    def dataset(self, owner: Party, name: str, category: str, purpose: str) -> str:
        r = self.http.post(
            "/v1/datasets",
            headers=owner.headers,
            json={
                "name": f"{name}-{self.run_id}",
                "category": category,
                "purposes": [purpose],
                "retention_days": 365,
                "legal_basis": "contract",
            },
        )
        out = self.expect(r, 201, f"{owner.name} registering a dataset")
        self.tell(
            f"{owner.name} registers the dataset {out['name']} (category {category}, "
            f"purpose {purpose}) {receipt_text(out['receipt'])}"
        )
        return str(out["id"])

    def upload(self, owner: Party, dataset: str, media_type: str, body: bytes, what: str) -> None:
        r = self.http.post(
            f"/v1/datasets/{dataset}/uploads",
            headers={**owner.headers, "Content-Type": media_type},
            content=body,
        )
        out = self.expect(r, 201, f"{owner.name} uploading {what}")
        anchored = self.wait_anchored(owner, dataset, out["upload_id"])
        self.tell(
            f"{owner.name} uploads {what}: {out['record_count']} encrypted record(s), Merkle root "
            f"{out['merkle_root'][:12]}… anchored {receipt_text(anchored['receipt'])}"
        )

    def consent(self, subject: Party, consumer: Party, dataset: str, purpose: str) -> None:
        body = {
            "subject": subject.id,
            "consumer": consumer.id,
            "purpose": purpose,
            "dataset": dataset,
            "valid_until": int(time.time() * 1000) + DAY_MS,
        }
        r = self.submit("/v1/consents", subject, "consent.grant", body)
        out = self.expect(r, 201, f"{subject.name} consenting")
        self.tell(
            f"{subject.name} signs a consent: {consumer.name} may use this dataset for "
            f"{purpose}, for a day {receipt_text(out['receipt'])}"
        )

    def access(self, consumer: Party, body: dict[str, Any]) -> httpx.Response:
        return self.http.post("/v1/access-requests", headers=consumer.headers, json=body)

    # -- the stories -------------------------------------------------------------------

    def run(self) -> None:
        r = self.http.get("/healthz")
        self.expect(r, 200, "checking the API's health")
        self.dpo.headers = self.issue(self.dpo.id, "dpo")
        self.say(f"Civis Vault demo, run {self.run_id}, against {self.http.base_url}")
        self.proof_of_address()
        self.erasure(*self.road_maintenance())
        status = self.expect(
            self.http.get("/v1/ledger/status", headers=self.dpo.headers), 200, "ledger status"
        )
        self.say(
            f"\nThe ledger ({status['answering']} of {status['n']} replicas answering) is at "
            f"block {status['height']}: it holds consents, accesses and erasures by key, id "
            "and commitment, never an address or a sensor reading."
        )

    def proof_of_address(self) -> None:
        self.say("\n== 1. Proof of address: the bank learns yes or no, with consent ==")
        utility = self.new_party(f"the utility Lumen-{self.run_id}", "providers", "provider")
        bank = self.new_party(f"the bank Crédit-{self.run_id}", "services", "consumer")
        self.admit(utility, bank)
        utility.headers = self.issue(utility.id, "provider")
        bank.headers = self.issue(bank.id, "consumer")

        citizen = self.new_party(f"the citizen Alice-{self.run_id}", "citizens", "subject")
        address = f"12 rue des Lilas, appartement {self.run_id}"
        dataset = self.dataset(utility, "customer-addresses", "address", "proof-of-address")
        line = json.dumps({"subject_id": citizen.id, "payload": {"address": address}})
        self.upload(
            utility, dataset, "application/x-ndjson", (line + "\n").encode(), "Alice's address"
        )

        def ask(value: str) -> httpx.Response:
            return self.access(
                bank,
                {
                    "dataset_id": dataset,
                    "purpose": "proof-of-address",
                    "subjects": [citizen.id],
                    "predicate": {"field": "address", "op": "eq", "value": value},
                },
            )

        r = ask(address)
        self.expect(r, 403, "the bank asking before any consent")
        self.tell(f"before any consent the bank asks and is refused: {_detail(r)}")
        self.consent(citizen, bank, dataset, "proof-of-address")
        out = self.expect(ask(address), 200, "the bank asking with Alice's consent")
        self.check(
            set(out) == {"result", "receipt"} and out["result"] is True,
            f"the bank should learn exactly yes, it got {sorted(out)}",
        )
        self.tell(
            f'the bank asks "does Alice live at {address}?" and learns: yes, and nothing '
            f"else (the answer holds only {sorted(out)}) {receipt_text(out['receipt'])}"
        )
        out = self.expect(ask("3 avenue Ailleurs"), 200, "the bank asking a wrong address")
        self.check(out["result"] is False, "a wrong address should answer no")
        self.tell(f"asked about another address, it learns: no {receipt_text(out['receipt'])}")
        body = {
            "subject": citizen.id,
            "consumer": bank.id,
            "purpose": "proof-of-address",
            "dataset": dataset,
        }
        r = self.submit("/v1/consents/revocations", citizen, "consent.revoke", body)
        out = self.expect(r, 201, "Alice revoking her consent")
        self.tell(f"Alice revokes her consent {receipt_text(out['receipt'])}")
        r = ask(address)
        self.expect(r, 403, "the bank asking after the revocation")
        self.tell(f"the bank asks again and is refused after the revocation: {_detail(r)}")

    def road_maintenance(self) -> tuple[Party, Party, str]:
        self.say(
            "\n== 2. Road maintenance: the road service reads what consenting drivers allow =="
        )
        fleet = self.new_party(
            f"the fleet operator Transroute-{self.run_id}", "providers", "provider"
        )
        roads = self.new_party(f"the road service Voirie-{self.run_id}", "services", "consumer")
        self.admit(fleet, roads)
        fleet.headers = self.issue(fleet.id, "provider")
        roads.headers = self.issue(roads.id, "consumer")
        drivers = [
            self.new_party(f"the driver {name}-{self.run_id}", "citizens", "subject")
            for name in ("Bruno", "Chloé", "Dario")
        ]
        dataset = self.dataset(fleet, "vehicle-sensors", "vehicle-telemetry", "road-maintenance")
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

        fields = ["lat", "lon", "vibration"]
        r = self.access(
            roads, {"dataset_id": dataset, "purpose": "road-maintenance", "fields": fields}
        )
        out = self.expect(r, 200, "the road service reading the sensor data")
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
        everyone = [d.id for d in drivers]
        r = self.access(
            roads,
            {
                "dataset_id": dataset,
                "purpose": "road-maintenance",
                "subjects": everyone,
                "fields": fields,
            },
        )
        out = self.expect(r, 200, "the road service naming all three drivers")
        self.check(
            out["denied"] == [[holdout.id, "no_consent"]],
            f"{holdout.name} should be denied for no consent: {out['denied']}",
        )
        self.tell(
            f"naming all three drivers, it is told {holdout.name}: no_consent "
            f"{receipt_text(out['receipt'])}"
        )
        return consenting[0], roads, dataset

    def erasure(self, driver: Party, roads: Party, dataset: str) -> None:
        self.say("\n== 3. Erasure: the DPO erases a citizen; unreadable, and on the ledger ==")
        r = self.http.post("/v1/erasures", headers=self.dpo.headers, json={"subject_id": driver.id})
        cert = self.expect(r, 201, f"the DPO erasing {driver.name}")
        self.check(
            cert["state"] == "recorded" and cert["secrets_destroyed"] >= 1,
            f"the erasure certificate should be recorded with destroyed keys: {cert}",
        )
        self.tell(
            f"the DPO erases {driver.name}: certificate {cert['erasure_id']}, "
            f"{cert['secrets_destroyed']} key(s) destroyed, {len(cert['key_commitments'])} key "
            f"commitment(s) published, state {cert['state']} {receipt_text(cert['receipt'])}"
        )
        block = self.expect(
            self.http.get(
                f"/v1/ledger/blocks/{cert['receipt']['block_height']}", headers=self.dpo.headers
            ),
            200,
            "reading the erasure's block",
        )
        kinds = [t["type"] for t in block["transactions"] if t["tx_id"] == cert["receipt"]["tx_id"]]
        self.check(
            kinds == ["erasure.record"] and block["verified"],
            f"the erasure's block should hold a verified erasure.record: {kinds}",
        )
        self.tell(
            f"the ledger shows it: block {block['height']} (commit certificate verified, "
            f"{len(block['certificate']['signers'])} signers) holds the erasure.record transaction"
        )
        r = self.access(
            roads,
            {
                "dataset_id": dataset,
                "purpose": "road-maintenance",
                "subjects": [driver.id],
                "fields": ["lat", "lon", "vibration"],
            },
        )
        out = self.expect(r, 200, "the road service asking for the erased driver")
        self.check(
            out["records"] == [] and out["denied"] == [[driver.id, "erased"]],
            f"the erased driver should be denied as erased: {out['denied']}",
        )
        refused_access = out["access"]
        self.tell(
            f"the road service asks for {driver.name} again (the consent still stands): "
            f"denied, erased {receipt_text(out['receipt'])}"
        )
        export = self.expect(
            self.http.get(f"/v1/subjects/{driver.id}/export", headers=self.dpo.headers),
            200,
            "the DPO exporting the erased driver's data",
        )
        self.check(
            export["records"] == [] and len(export["erasures"]) >= 1,
            f"the export should hold no record and the erasure: "
            f"{len(export['records'])} records, {len(export['erasures'])} erasures",
        )
        log = self.expect(
            self.http.get(
                "/v1/dpo/access-log", headers=self.dpo.headers, params={"subject": driver.id}
            ),
            200,
            "reading the DPO's access log",
        )["accesses"]
        erased_at = int(cert["receipt"]["block_height"])
        self.check(
            bool(log) and all(a["height"] < erased_at for a in log),
            f"the access log should show deliveries to {driver.name} only before block "
            f"{erased_at}: {[a['height'] for a in log]}",
        )
        self.tell(
            f"the subject export now holds {len(export['records'])} readable records and "
            f"{len(export['erasures'])} erasure(s) from the ledger; the DPO's access log shows "
            f"{len(log)} accesses that delivered {driver.name}'s data, all before the erasure "
            f"(block {erased_at}), none since (access {refused_access} delivered nothing)"
        )
