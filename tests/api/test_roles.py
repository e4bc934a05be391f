"""Who may do what: every /v1 operation, called by every kind of caller, against a real ledger.

The matrix below is the specification of authentication and roles: one row per
operation, one column per caller, each cell the class of answer that caller must get:

- `ok`: any 2xx; the action happened (or the read answered);
- `401`: no API key; `403`: the caller's role (or, for a signed transaction, the signer) may
  not do this; `404`: the resource exists but is not the caller's, and the answer does not
  say that it exists (another provider's dataset, another subject's erasure certificate);
  `409`: the caller may ask, but the state refuses it: a member moving tokens it does not
  hold (a transfer or redemption is always of the signer's own account, so `409` is how
  "not the subject's tokens" shows for everyone else).

The callers, relative to the resources of the scene (`World`): `owner` is the provider that
owns the dataset, `provider` another admitted provider, `consumer` the admitted consumer,
`subject` the subject whose data it is, `signed-in` the same subject with no API key, signed in
with their wallet (a `cvs_` session proving their pseudonym and another of theirs), so every
row shows that a sign-in opens exactly what the subject's key opens, `other-subject` another
registered subject, `dpo`, `validator` (a validator's own key) and `anonymous` (no API key;
for a signed transaction, a key that is no member at all).

Two kinds of operations: most take an API key, and the column's key is sent. The subject's
and members' own transactions (`/v1/members`, governance, consents, erasure requests) take no
API key: the signature is the authentication and the consent contracts the authorisation, so
there the column's WALLET is the author and signer of the transaction (`/v1/drafts` and
`/v1/members` are open to anyone: drafting is pure, and anyone may apply for membership with
a fresh key, which a vote then admits or not). A sign-in is signed the same way: anyone signs in
with the column's key (`/v1/subjects/sessions`); only a session signs out (the `signed-in`
column signs out a session of its own; an API key gets 403 there). The eco-citizen token
writes are signed the same way (transfers and redemptions by the holder, offers and coupon
spends by the partner, a device's registration by its operator), and a device's events by the
device itself: there, the column's wallet signs the claim in the name of the world's device.

Two roles have no column, the partner and the device: their rows show what every column gets,
and `test_a_role_with_no_column_gets_ok_on_its_own_rows` checks the role's own `ok`.

Every /v1 route of the app must have a row (and a request builder): a route added without one
fails `test_every_v1_operation_is_in_the_matrix`, so nobody adds an endpoint without deciding
who may call it. Beyond status classes, a few tests check what the allowed answers contain
where the rule is about content: a provider's list, consent-less access, the subject's export,
and subject transactions signed by somebody else.
"""

from __future__ import annotations

import datetime as dt
import json
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
from fastapi.routing import iter_route_contexts

from api.client import CivisClient, coupons
from api.client.devices import Device
from api.client.notices import notice_body
from api.services import requests
from ledger_bridge.contracts import events
from ledger_bridge.crypto import SigningKey
from tests.api.ledger_env import DAY_MS, LedgerEnv, Wallet
from tests.api.test_consented_access import api, notice, register_subject, signed, vote_through

COLUMNS = (
    "owner",
    "provider",
    "consumer",
    "subject",
    "signed-in",
    "other-subject",
    "dpo",
    "validator",
    "anonymous",
)

# Read it as a table; `{...}` are path parameters, filled in by the row's request builder.
MATRIX_TABLE = """
operation                                            owner prov cons subj sign other dpo valid anon
GET    /v1/datasets                                  ok    ok   403  403  403  403   ok  403   401
POST   /v1/datasets                                  ok    ok   403  403  403  403   403 403   401
GET    /v1/datasets/{dataset_id}                     ok    404  403  403  403  403   ok  403   401
POST   /v1/datasets/{dataset_id}/uploads             ok    404  403  403  403  403   403 403   401
GET    /v1/datasets/{dataset_id}/uploads             ok    404  403  403  403  403   403 403   401
GET    /v1/datasets/{dataset_id}/uploads/{upload_id} ok    404  403  403  403  403   403 403   401
GET    /v1/datasets/{dataset_id}/records             ok    404  403  403  403  403   403 403   401
GET    /v1/records/{record_id}                       ok    404  403  403  403  403   403 403   401
POST   /v1/drafts                                    ok    ok   ok   ok   ok   ok    ok  ok    ok
POST   /v1/members                                   ok    ok   ok   ok   ok   ok    ok  ok    ok
GET    /v1/members/{public_key}                      ok    ok   ok   ok   ok   ok    ok  ok    401
GET    /v1/governance/proposals                      ok    ok   ok   ok   ok   ok    ok  ok    401
POST   /v1/governance/proposals                      ok    ok   ok   403  403  403   ok  ok    403
POST   /v1/governance/proposals/{proposal}/votes     ok    ok   ok   403  403  403   ok  ok    403
GET    /v1/governance/proposals/{proposal}           ok    ok   ok   ok   ok   ok    ok  ok    401
GET    /v1/governance/parameters                     ok    ok   ok   ok   ok   ok    ok  ok    401
GET    /v1/purposes                                  ok    ok   ok   ok   ok   ok    ok  ok    401
GET    /v1/colleges                                  ok    ok   ok   ok   ok   ok    ok  ok    401
POST   /v1/consents                                  403   403  403  ok   ok   403   403 403   403
POST   /v1/consents/revocations                      403   403  403  ok   ok   403   403 403   403
GET    /v1/subjects/{subject_id}/consents            403   403  403  ok   ok   403   ok  403   401
POST   /v1/access-requests                           403   403  ok   403  403  403   403 403   401
GET    /v1/subjects/{subject_id}/export              403   403  403  ok   ok   403   ok  403   401
POST   /v1/erasures                                  403   403  403  403  403  403   ok  403   401
POST   /v1/erasure-requests                          403   403  403  ok   ok   403   403 403   403
GET    /v1/erasures/{erasure_id}                     403   403  403  ok   ok   404   ok  403   401
GET    /v1/erasure-receipts/{erasure_id}             ok    ok   ok   ok   ok   ok    ok  ok    ok
GET    /v1/ledger/status                             ok    ok   ok   ok   ok   ok    ok  ok    401
GET    /v1/ledger/blocks                             ok    ok   ok   ok   ok   ok    ok  ok    401
GET    /v1/ledger/blocks/{height}                    ok    ok   ok   ok   ok   ok    ok  ok    401
GET    /v1/dpo/access-log                            403   403  403  403  403  403   ok  403   401
GET    /v1/dpo/retention-audit                       403   403  403  403  403  403   ok  403   401
GET    /v1/dpo/ledger-verification                   403   403  403  403  403  403   ok  403   401
GET    /v1/dpo/records-of-processing                 403   403  403  403  403  403   ok  403   401
GET    /v1/dpo/outbox                                403   403  403  403  403  403   ok  403   401
POST   /v1/dpo/outbox/{fact_id}/retry                403   403  403  403  403  403   404 403   401
PUT    /v1/datasets/{dataset_id}/prices/{mode}       ok    404  403  403  403  403   403 403   401
GET    /v1/datasets/{dataset_id}/prices              ok    ok   ok   ok   ok   ok    ok  ok    401
POST   /v1/credits                                   403   403  403  403  403  403   ok  403   401
GET    /v1/members/{public_key}/statement            403   403  ok   403  403  403   ok  403   401
POST   /v1/devices                                   ok    404  403  403  403  403   403 403   403
GET    /v1/devices/{device}                          ok    ok   ok   ok   ok   ok    ok  ok    401
POST   /v1/devices/{device}/events                   403   403  403  403  403  403   403 403   403
GET    /v1/reward-rules                              ok    ok   ok   ok   ok   ok    ok  ok    401
GET    /v1/accounts/{account}                        403   403  403  ok   ok   403   ok  403   401
GET    /v1/accounts/{account}/statement              403   403  403  ok   ok   403   ok  403   401
POST   /v1/transfers                                 409   409  409  ok   ok   409   409 409   403
POST   /v1/offers                                    403   403  403  403  403  403   403 403   403
GET    /v1/offers                                    ok    ok   ok   ok   ok   ok    ok  ok    401
POST   /v1/redemptions                               409   409  409  ok   ok   409   409 409   403
POST   /v1/coupons/spend                             403   403  403  403  403  403   403 403   403
GET    /v1/dashboards/impact                         403   403  ok   403  403  403   403 403   401
GET    /v1/dashboards/partner                        403   403  403  403  403  403   403 403   401
POST   /v1/subjects/challenges                       ok    ok   ok   ok   ok   ok    ok  ok    ok
POST   /v1/subjects/sessions                         ok    ok   ok   ok   ok   ok    ok  ok    ok
DELETE /v1/subjects/sessions/current                 403   403  403  403  ok   403   403 403   401
GET    /v1/dpo/incidents                             403  403  403  403  403  403  ok   403  401
POST   /v1/dpo/incidents                             403  403  403  403  403  403  ok   403  401
GET    /v1/dpo/incidents/{incident_id}               403  403  403  403  403  403  ok   403  401
POST   /v1/dpo/incidents/{incident_id}/facts         403  403  403  403  403  403  ok   403  401
POST   /v1/dpo/incidents/{incident_id}/close         403  403  403  403  403  403  ok   403  401
GET    /v1/dpo/incidents/{incident_id}/affected-subjects 403  403  403  403  403  403  ok   403  401
GET /v1/dpo/incidents/{incident_id}/notification-draft 403 403 403 403 403 403 ok 403 401
GET    /v1/decryptions/{decryption_id}/proof         ok   404  403  ok   ok   404  ok   403  401
GET    /v1/recipient-notices                         403  403  ok   403  403  403  403  403  401
PUT    /v1/consumers/me/webhook                      403  403  ok   403  403  403  403  403  401
GET    /v1/dpo/recipient-notices                     403  403  403  403  403  403  ok   403  401
POST /v1/datasets/{dataset_id}/records/{record_id}/rectification ok 404 403 403 403 403 ok 403 401
POST   /v1/subjects/{subject_id}/rectification-requests 403  403  403  ok   ok   403  403  403  403
POST   /v1/notices                                   ok   ok   ok   403  403  403  403  403  401
GET    /v1/notices/{notice_hash}                     ok   ok   ok   ok   ok   ok   ok   ok   401
GET    /v1/subjects/{subject_id}/export/package      403  403  403  ok   ok   403  ok   403  401
GET    /v1/subjects/export-package                   403  403  403  ok   ok   ok   403  403  401
POST   /v1/subjects/{subject_id}/restrictions        403  403  403  ok   ok   403  403  403  403
POST   /v1/subjects/{subject_id}/objections          403  403  403  ok   ok   403  403  403  403
GET    /v1/subjects/{subject_id}/restrictions        403  403  403  ok   ok   403  ok   403  401
POST   /v1/dpo/restriction-exemptions                403  403  403  403  403  403  ok   403  401
POST   /v1/dpo/objection-overrides                   403  403  403  403  403  403  ok   403  401
GET    /v1/subjects/{subject_id}/requests            403  403  403  ok   ok   403  ok   403  401
GET    /v1/dpo/requests                              403  403  403  403  403  403  ok   403  401
POST   /v1/dpo/requests/{request_id}/extension       403  403  403  403  403  403  ok   403  401
POST   /v1/dpo/requests/sync                         403  403  403  403  403  403  ok   403  401
GET    /v1/dpo/dpia                                  403  403  403  403  403  403  ok   403  401
GET    /v1/dpo/members                               403  403  403  403  403  403  ok   403  401
PUT    /v1/dpo/members/{member_id}/name              403  403  403  403  403  403  ok   403  401
"""


def _parse(table: str) -> dict[tuple[str, str], dict[str, str]]:
    rows: dict[tuple[str, str], dict[str, str]] = {}
    for line in table.strip().splitlines()[1:]:
        method, path, *cells = line.split()
        assert len(cells) == len(COLUMNS), f"{method} {path}: {len(cells)} cells"
        assert (method, path) not in rows, f"{method} {path} twice"
        rows[(method, path)] = dict(zip(COLUMNS, cells, strict=True))
    return rows


MATRIX = _parse(MATRIX_TABLE)
# How long the `signed-in` column reuses a session (they live 15 minutes).
SESSION_REUSE_S = 10 * 60


# -- the scene ----------------------------------------------------------------------------


def _now_ms() -> int:
    return int(time.time() * 1000)


def admit(env: LedgerEnv, wallet: Wallet, role: str, college: str) -> int:
    """A legal entity applies (signed by its key) and the cooperative admits it by vote.

    Every college must approve by a majority of the members it had when the proposal was
    made; the founding members and the validators vote, in turn, until it passes. Returns
    the proposal's id.
    """
    client = api(env)
    out = client.register(wallet.key, role, college)  # type: ignore[arg-type]
    assert out["result"]["status"] == "pending", out
    proposal = int(
        client.propose_admission(env.dpo.key, wallet.id, voting_for_ms=DAY_MS)["result"]["proposal"]
    )
    vote_through(env, proposal)
    return proposal


def make_dataset(env: LedgerEnv, owner: dict[str, str], category: str, purposes: list[str]) -> str:
    r = env.client.post(
        "/v1/datasets",
        headers=owner,
        json={
            "name": f"{category}-{uuid.uuid4().hex[:12]}",
            "category": category,
            "purposes": purposes,
            "retention_days": 365,
            "legal_basis": "consent",
        },
    )
    assert r.status_code == 201, r.text
    dataset: str = r.json()["id"]
    return dataset


def ndjson(rows: list[tuple[Wallet, dict[str, Any]]]) -> bytes:
    return "".join(
        json.dumps({"subject_id": w.id, "payload": payload}) + "\n" for w, payload in rows
    ).encode()


def upload_anchored(
    env: LedgerEnv, owner: dict[str, str], dataset: str, rows: list[tuple[Wallet, dict[str, Any]]]
) -> str:
    """Upload records and wait until their anchor is committed (only then are they readable)."""
    r = env.client.post(
        f"/v1/datasets/{dataset}/uploads",
        headers={**owner, "Content-Type": "application/x-ndjson"},
        content=ndjson(rows),
    )
    assert r.status_code == 201, r.text
    upload: str = r.json()["upload_id"]
    env.wait_anchored(dataset, upload, owner)
    return upload


def grant(env: LedgerEnv, subject: Wallet, body: dict[str, Any]) -> None:
    """`body` names the consumer, purpose and dataset (or category), as a draft's would."""
    scope = {k: body[k] for k in ("dataset", "category") if k in body}
    api(env).grant_consent(
        subject.key,
        consumer=body["consumer"],
        purpose=body["purpose"],
        notice=notice(env, body["purpose"]),
        valid_for_ms=DAY_MS,
        **scope,
    )


@dataclass
class EcoScene:
    """The eco-citizen tokens around the world: the owner's admitted `device` reporting to
    `dataset` (registered for impact-statistics) under the rule `cycling`, an admitted
    `partner` with an active `offer`, and `coupon_secret`, a coupon the subject redeemed at it
    and nobody spent (the partner's own spend redeems a fresh one, so order never matters)."""

    partner: Wallet
    device: Device
    dataset: str
    offer: str
    coupon_secret: bytes = b""


def propose_action(env: LedgerEnv, action: dict[str, Any]) -> int:
    """Propose a governance action; the caller votes it through (`vote_through`)."""
    out = api(env).propose(env.dpo.key, action, voting_for_ms=DAY_MS)
    return int(out["result"]["proposal"])


CYCLING: dict[str, Any] = {
    "kind": "set_reward_rule",
    "rule": "cycling",
    "unit": "km",
    "rate_mtok": 1000,
    "device_kinds": ["bike_reader"],
    "cap_mtok_per_day": 0,
}


def eco_scene(env: LedgerEnv, owner: dict[str, str]) -> EcoScene:
    """The partner, the device and the rule, voted in while the colleges are small (before
    the scene's subjects register, a vote needs few voters)."""
    partner = Wallet()
    assert api(env).register(partner.key, "partner", "providers")["result"]["status"] == "pending"
    dataset = make_dataset(env, owner, "mobility", ["impact-statistics"])
    device = Device(env.chain_id, "centre")
    api(env).register_device(
        env.provider.key, device=device.id, kind="bike_reader", dataset=dataset, district="centre"
    )
    actions = [
        {"kind": "admit_member", "member": partner.id},
        {"kind": "admit_device", "device": device.id},
        CYCLING,
    ]
    for proposal in [propose_action(env, action) for action in actions]:
        vote_through(env, proposal)
    offer = f"matrix-{uuid.uuid4().hex[:8]}"
    api(env).publish_offer(partner.key, offer=offer, title="bread", category="food", price_mtok=100)
    return EcoScene(partner, device, dataset, offer)


def earn_and_redeem(env: LedgerEnv, eco: EcoScene, subject: Wallet) -> None:
    """The subject cycles 10 km (10 tokens: enough for every redemption and transfer the
    rows make) and redeems one coupon, left unspent for the `coupon.spend` row."""
    ride = eco.device.event(subject=subject.id, rule="cycling", unit="km", quantity_milli=10_000)
    assert api(env).send_events(eco.device.id, [ride])["credited"] == [[subject.id, 10_000]]
    eco.coupon_secret = coupons.new_secret()
    api(env).redeem(subject.key, offer=eco.offer, price_mtok=100, secret=eco.coupon_secret)


@dataclass
class World:
    """One dataset of the owner's with one anchored upload, and the people around it.

    Operations that destroy something have their own victims, so the order in which rows and
    columns run never matters: `erased_by_dpo` for `POST /v1/erasures`, `erasing_self` (and
    `erasing_self_signed_in`, for the `signed-in` column) for `POST /v1/erasure-requests`, and
    `erased` (erased during set-up, `erasure` its certificate's id) for `GET /v1/erasures/{id}`.
    """

    env: LedgerEnv
    other_provider: Wallet
    subject: Wallet
    other_subject: Wallet
    erased_by_dpo: Wallet
    erasing_self: Wallet
    erasing_self_signed_in: Wallet
    erased: Wallet
    dataset: str
    upload: str
    record: str
    read: str  # the owner's read of the subject's records, as recorded (decryptions)
    erasure: int
    proposal: int
    eco: EcoScene
    rectified: Wallet  # the subject whose record the owner and the DPO rectify
    incident: str = ""  # an open incident of the DPO's, opened by the first row that needs one
    _keys: dict[tuple[str, str], dict[str, str]] = field(default_factory=dict)
    # wallet id -> (headers, when signed in): a session lives 15 minutes, the matrix less
    _sessions: dict[str, tuple[dict[str, str], float]] = field(default_factory=dict)

    def signer(self, who: str, subject: Wallet | None = None) -> Wallet:
        """The wallet that authors and signs a transaction in column `who` (or as the
        partner, the role with no column)."""
        env = self.env
        wallets = {
            "partner": self.eco.partner,
            "owner": env.provider,
            "provider": self.other_provider,
            "consumer": env.consumer,
            "subject": subject or self.subject,
            "signed-in": subject or self.subject,
            "other-subject": self.other_subject,
            "dpo": env.dpo,
            "validator": env.validators[0],
        }
        return wallets[who] if who in wallets else Wallet()  # anonymous: no member at all

    def headers(self, who: str, subject: Wallet | None = None) -> dict[str, str]:
        """Column `who`'s API key (bound to its ledger key), its wallet sign-in for
        `signed-in`, or none for `anonymous`."""
        if who == "anonymous":
            return {}
        wallet = self.signer(who, subject)
        if who == "signed-in":
            known = self._sessions.get(wallet.id)
            if known is None or time.monotonic() - known[1] > SESSION_REUSE_S:
                self._sessions[wallet.id] = (self.signed_in(wallet), time.monotonic())
            return self._sessions[wallet.id][0]
        role = {"owner": "provider", "other-subject": "subject"}.get(who, who)
        if (role, wallet.id) not in self._keys:
            self._keys[(role, wallet.id)] = self.env.headers(role, wallet)
        return self._keys[(role, wallet.id)]

    def signed_in(self, wallet: Wallet) -> dict[str, str]:
        """A new wallet sign-in of `wallet`'s key and another pseudonym of the same person."""
        another = SigningKey.generate()
        session = api(self.env).sign_in_keys([wallet.key, another]).session
        assert session is not None and wallet.id in session["pseudonyms"]
        return {"Authorization": f"Bearer {session['token']}"}


@pytest.fixture(scope="module")
def world(ledger_env: LedgerEnv) -> World:
    env = ledger_env
    other_provider = Wallet()
    # First, while the citizens' college is only its validator: a vote needs its majority.
    proposal = admit(env, other_provider, "provider", "providers")
    owner = env.headers("provider", env.provider)
    eco = eco_scene(env, owner)
    subject, other, by_dpo, by_self, by_self_signed_in, erased, rectified = (
        register_subject(env) for _ in range(7)
    )
    earn_and_redeem(env, eco, subject)
    # billing reads whole records; proof of address answers yes/no only
    dataset = make_dataset(env, owner, "address", ["proof-of-address", "research", "billing"])
    people = (subject, other, by_dpo, by_self, by_self_signed_in, erased, rectified)
    upload = upload_anchored(
        env,
        owner,
        dataset,
        [(w, {"address": f"{i} rue du Test", "n": i}) for i, w in enumerate(people)],
    )
    records = env.client.get(
        f"/v1/datasets/{dataset}/records", params={"subject_id": subject.id}, headers=owner
    ).json()
    grant(
        env,
        subject,
        {
            "subject": subject.id,
            "consumer": env.consumer.id,
            "purpose": "billing",
            "dataset": dataset,
        },
    )
    dpo = env.headers("dpo", env.dpo)
    export = env.client.get(f"/v1/subjects/{subject.id}/export", headers=dpo).json()
    [read] = [d["id"] for d in export["decryptions"] if d["kind"] == "provider_read"]
    # In one dataset: an erasure everywhere forgets the subject (and their API keys), so
    # the certificate would name nobody for the subject column to read.
    body = {"subject_id": erased.id, "dataset_id": dataset}
    r = env.client.post("/v1/erasures", headers=dpo, json=body)
    assert r.status_code in (201, 202), r.text
    return World(
        env,
        other_provider,
        subject,
        other,
        by_dpo,
        by_self,
        by_self_signed_in,
        erased,
        dataset,
        upload,
        records[0]["record_id"],
        read,
        int(r.json()["erasure_id"]),
        proposal,
        eco,
        rectified,
    )


# -- one request per row ------------------------------------------------------------------


@dataclass
class Call:
    """What a row sends for one column: path parameters, headers, a JSON or raw body."""

    params: dict[str, str | int] = field(default_factory=dict)
    headers: dict[str, str] = field(default_factory=dict)
    json: Any = None
    content: bytes | None = None


Builder = Callable[[World, str], Call]


def _keyed(w: World, who: str, **params: str | int) -> Call:
    return Call(params=params, headers=w.headers(who))


def _dataset_new(w: World, who: str) -> Call:
    body = {
        "name": f"matrix-{uuid.uuid4().hex[:12]}",
        "category": "energy",
        "purposes": ["research"],
        "retention_days": 30,
        "legal_basis": "consent",
    }
    return Call(headers=w.headers(who), json=body)


def _upload(w: World, who: str) -> Call:
    return Call(
        params={"dataset_id": w.dataset},
        headers={**w.headers(who), "Content-Type": "application/x-ndjson"},
        content=ndjson([(w.subject, {"address": "1 rue du Test", "n": 99})]),
    )


def _consent_body(w: World, purpose: str) -> dict[str, Any]:
    return {
        "subject": w.subject.id,
        "consumer": w.env.consumer.id,
        "purpose": purpose,
        "dataset": w.dataset,
    }


def _draft(w: World, who: str) -> Call:
    body = {**_consent_body(w, "research"), "valid_until": _now_ms() + DAY_MS}
    return Call(json={"type": "consent.grant", "author": w.signer(who).id, "body": body})


_APPLYING_AS = {
    "owner": ("provider", "providers"),
    "provider": ("provider", "providers"),
    "consumer": ("consumer", "services"),
    "dpo": ("dpo", "services"),
    "validator": ("validator", "providers"),
}


def _apply(w: World, who: str) -> Call:
    # Anyone applies with a FRESH key (a column's own key is a member already): residents are
    # active at once, legal entities wait for a vote.
    role, college = _APPLYING_AS.get(who, ("subject", "citizens"))
    body = {"role": role, "college": college}
    return Call(json=signed(w.env, Wallet(), "member.register", body))


def _propose(w: World, who: str) -> Call:
    action = {"kind": "approve_purpose", "purpose": f"matrix-{uuid.uuid4().hex[:12]}"}
    body = {"action": action, "voting_ends": _now_ms() + DAY_MS}
    return Call(json=signed(w.env, w.signer(who), "governance.propose", body))


def _vote(w: World, who: str) -> Call:
    # A proposal of its own per call, so every vote is the first one and it stays open.
    r = w.env.client.post("/v1/governance/proposals", json=_propose(w, "dpo").json)
    assert r.status_code == 201, r.text
    proposal = int(r.json()["result"]["proposal"])
    body = {"proposal": proposal, "approve": True}
    return Call(
        params={"proposal": proposal},
        json=signed(w.env, w.signer(who), "governance.vote", body),
    )


def _grant(w: World, who: str) -> Call:
    body = {
        **_consent_body(w, "research"),
        "valid_until": _now_ms() + DAY_MS,
        "notice": notice(w.env, "research"),
    }
    return Call(json=signed(w.env, w.signer(who), "consent.grant", body))


def _revoke(w: World, who: str) -> Call:
    grant(w.env, w.subject, _consent_body(w, "research"))  # something in force to revoke
    return Call(json=signed(w.env, w.signer(who), "consent.revoke", _consent_body(w, "research")))


def _access(w: World, who: str) -> Call:
    body = {"dataset_id": w.dataset, "purpose": "billing", "subjects": [w.subject.id]}
    return Call(headers=w.headers(who), json=body)


def _erase(w: World, who: str) -> Call:
    body = {"subject_id": w.erased_by_dpo.id, "dataset_id": w.dataset}
    return Call(headers=w.headers(who), json=body)


def _erasure_request(w: World, who: str) -> Call:
    victim = w.erasing_self_signed_in if who == "signed-in" else w.erasing_self
    body = {"scope": {"kind": "subject", "subject": victim.id}}
    return Call(json=signed(w.env, w.signer(who, victim), "erasure.request", body))


def _sign_in(w: World, who: str) -> Call:
    """A sign-in proving the column's own key (anonymous: a key nobody knows)."""
    r = w.env.client.post("/v1/subjects/challenges")
    assert r.status_code == 201, r.text
    challenge = r.json()
    key = w.signer(who).key
    signature = key.sign(bytes.fromhex(challenge["signing_payload"])).hex()
    proof = {"pseudonym": key.public_key.hex(), "signature": signature}
    body = {"challenge_id": challenge["challenge_id"], "proofs": [proof]}
    return Call(headers=w.headers(who), json=body)


def _sign_out(w: World, who: str) -> Call:
    """The column's credential; `signed-in` ends a session of its own, not the world's."""
    if who == "signed-in":
        return Call(headers=w.signed_in(w.subject))
    return Call(headers=w.headers(who))


def _rectify(w: World, who: str) -> Call:
    """The rectified subject's current record (each rectification gives it a new id)."""
    owner = w.headers("owner")
    params = {"subject_id": w.rectified.id}
    r = w.env.client.get(f"/v1/datasets/{w.dataset}/records", params=params, headers=owner)
    assert r.status_code == 200 and len(r.json()) == 1, r.text
    return Call(
        params={"dataset_id": w.dataset, "record_id": r.json()[0]["record_id"]},
        headers=w.headers(who),
        json={"subject_id": w.rectified.id, "payload": {"address": "6 rue Juste", "n": 6}},
    )


def _rectification_request(w: World, who: str) -> Call:
    """The subject's request about their record; any other signer is refused (403)."""
    body = {"dataset": w.dataset, "record": w.record, "statement_hash": "5e" * 32}
    return Call(
        params={"subject_id": w.subject.id},
        json=signed(w.env, w.signer(who), "rectification.request", body),
    )


def _extension(w: World, who: str) -> Call:
    """An open request of the subject's per call: each column may try to extend a fresh one."""
    sessions = w.env.client.app.state.sessions  # type: ignore[attr-defined]
    with sessions() as session, session.begin():
        opened = requests.open_request(
            session, "objection", w.subject.id, None, dt.datetime.now(dt.UTC)
        )
    return Call(
        params={"request_id": str(opened)},
        headers=w.headers(who),
        json={"reason": "the objection's grounds are weighed by the controller's board"},
    )


def _device_new(w: World, who: str) -> Call:
    body = {
        "device": Device(w.env.chain_id, "centre").id,
        "kind": "bike_reader",
        "dataset": w.eco.dataset,
        "district": "centre",
    }
    return Call(json=signed(w.env, w.signer(who), "device.register", body))


def _device_events(w: World, who: str) -> Call:
    """A claim for the world's device about the subject; a column's wallet signs it in the
    device's name, the device (`who == "device"`) with its own key."""
    event = w.eco.device.event(subject=w.subject.id, rule="cycling", unit="km", quantity_milli=100)
    if who != "device":
        message = events.claim_message(w.env.chain_id, event)
        event["signature"] = w.signer(who).key.sign(message).hex()
    return Call(params={"device": w.eco.device.id}, json={"events": [event]})


def _transfer(w: World, who: str) -> Call:
    # to the partner: a member that is no column, so nobody transfers to themselves
    body = {"to": w.eco.partner.id, "amount_mtok": 1}
    return Call(json=signed(w.env, w.signer(who), "token.transfer", body))


def _offer(w: World, who: str) -> Call:
    body = {
        "offer": f"matrix-{uuid.uuid4().hex[:12]}",
        "title": "a loaf",
        "category": "food",
        "price_mtok": 100,
        "active": True,
    }
    return Call(json=signed(w.env, w.signer(who), "offer.publish", body))


def _redeem(w: World, who: str) -> Call:
    coupon = coupons.coupon_id(coupons.new_secret()).hex()
    body = {"offer": w.eco.offer, "coupon": coupon, "price_mtok": 100}
    return Call(json=signed(w.env, w.signer(who), "token.redeem", body))


def _spend(w: World, who: str) -> Call:
    """The columns try the world's unspent coupon; the partner spends one redeemed for it."""
    secret = w.eco.coupon_secret
    if who == "partner":
        secret = coupons.new_secret()
        api(w.env).redeem(w.subject.key, offer=w.eco.offer, price_mtok=100, secret=secret)
    body = {"secret": secret.hex()}
    return Call(json=signed(w.env, w.signer(who), "coupon.spend", body))


def _new_incident(w: World, **body: Any) -> str:
    r = w.env.client.post(
        "/v1/dpo/incidents",
        headers=w.headers("dpo"),
        json={"title": "matrix", "discovered_at": dt.datetime.now(dt.UTC).isoformat(), **body},
    )
    assert r.status_code == 201, r.text
    incident: str = r.json()["id"]
    return incident


def _incident(w: World, who: str) -> Call:
    """The world's open incident (about its dataset), opened once by the DPO."""
    if not w.incident:
        w.incident = _new_incident(w, dataset_id=w.dataset)
    return _keyed(w, who, incident_id=w.incident)


def _incident_fact(w: World, who: str) -> Call:
    call = _incident(w, who)
    call.json = {"kind": "note", "text": "a line of the timeline"}
    return call


def _incident_close(w: World, who: str) -> Call:
    """An incident of its own per call, assessed unlikely to result in a risk: closable."""
    incident = _new_incident(w)
    fact = {"kind": "risk", "risk": "unlikely", "text": "nothing left the vault"}
    r = w.env.client.post(
        f"/v1/dpo/incidents/{incident}/facts", headers=w.headers("dpo"), json=fact
    )
    assert r.status_code == 201, r.text
    return Call(params={"incident_id": incident}, headers=w.headers(who), json={})


# -- restriction and objection: a scene of their own, built at first use --------------------


@dataclass
class RightsScene:
    """A dataset under legitimate interests (one may object there) and a subject restricted
    in the world's dataset (the DPO may exempt them). Every call that changes a subject's
    standing has a fresh subject of its own, so rows and columns never depend on order."""

    li_dataset: str
    restricted: Wallet


_RIGHTS: dict[int, RightsScene] = {}


def _rights(w: World) -> RightsScene:
    if id(w) not in _RIGHTS:
        r = w.env.client.post(
            "/v1/datasets",
            headers=w.env.headers("provider", w.env.provider),
            json={
                "name": f"matrix-li-{uuid.uuid4().hex[:8]}",
                "category": "mobility",
                "purposes": ["research"],
                "retention_days": 30,
                "legal_basis": "legitimate_interests",
            },
        )
        assert r.status_code == 201, r.text
        li_dataset = str(r.json()["id"])
        restricted = register_subject(w.env)
        body = {"dataset": w.dataset, "ground": "accuracy_contested"}
        path = f"/v1/subjects/{restricted.id}/restrictions"
        r = w.env.client.post(path, json=signed(w.env, restricted, "restriction.set", body))
        assert r.status_code == 201, r.text
        _RIGHTS[id(w)] = RightsScene(li_dataset, restricted)
    return _RIGHTS[id(w)]


def _own_word(w: World, who: str, tx_type: str, body: dict[str, Any]) -> Call:
    """A subject's restriction or objection: the subject column signs as a fresh subject of
    its own, in its own path; every other column signs with its own key under the world's
    subject's path (not theirs to restrict)."""
    if who in ("subject", "signed-in"):  # each its own fresh subject
        author = register_subject(w.env)
        path_subject = author.id
    else:
        author, path_subject = w.signer(who), w.subject.id
    return Call(params={"subject_id": path_subject}, json=signed(w.env, author, tx_type, body))


def _restriction(w: World, who: str) -> Call:
    body = {"dataset": w.dataset, "ground": "unlawful_processing"}
    return _own_word(w, who, "restriction.set", body)


def _objection(w: World, who: str) -> Call:
    return _own_word(w, who, "objection.set", {"dataset": _rights(w).li_dataset})


def _exemption(w: World, who: str) -> Call:
    restricted = _rights(w).restricted
    body = {"dataset": w.dataset, "subject": restricted.id, "until": _now_ms() + DAY_MS}
    return Call(headers=w.headers(who), json=body)


def _override(w: World, who: str) -> Call:
    """An objection in force, of a fresh subject for the DPO's column (it answers once)."""
    li = _rights(w).li_dataset
    subject = w.subject
    if who == "dpo":
        subject = register_subject(w.env)
        r = w.env.client.post(
            f"/v1/subjects/{subject.id}/objections",
            json=signed(w.env, subject, "objection.set", {"dataset": li}),
        )
        assert r.status_code == 201, r.text
    body = {"dataset": li, "subject": subject.id, "grounds": "network security, licence art. 12"}
    return Call(headers=w.headers(who), json=body)


BUILDERS: dict[tuple[str, str], Builder] = {
    ("GET", "/v1/datasets"): lambda w, who: _keyed(w, who),
    ("POST", "/v1/datasets"): _dataset_new,
    ("GET", "/v1/datasets/{dataset_id}"): lambda w, who: _keyed(w, who, dataset_id=w.dataset),
    ("POST", "/v1/datasets/{dataset_id}/uploads"): _upload,
    ("GET", "/v1/datasets/{dataset_id}/uploads"): lambda w, who: _keyed(
        w, who, dataset_id=w.dataset
    ),
    ("GET", "/v1/datasets/{dataset_id}/uploads/{upload_id}"): lambda w, who: _keyed(
        w, who, dataset_id=w.dataset, upload_id=w.upload
    ),
    ("GET", "/v1/datasets/{dataset_id}/records"): lambda w, who: _keyed(
        w, who, dataset_id=w.dataset
    ),
    ("GET", "/v1/records/{record_id}"): lambda w, who: _keyed(w, who, record_id=w.record),
    ("POST", "/v1/drafts"): _draft,
    ("POST", "/v1/members"): _apply,
    ("GET", "/v1/members/{public_key}"): lambda w, who: _keyed(w, who, public_key=w.subject.id),
    ("GET", "/v1/governance/proposals"): lambda w, who: _keyed(w, who),
    ("POST", "/v1/governance/proposals"): _propose,
    ("POST", "/v1/governance/proposals/{proposal}/votes"): _vote,
    ("GET", "/v1/governance/proposals/{proposal}"): lambda w, who: _keyed(
        w, who, proposal=w.proposal
    ),
    ("GET", "/v1/governance/parameters"): lambda w, who: _keyed(w, who),
    ("GET", "/v1/purposes"): lambda w, who: _keyed(w, who),
    ("GET", "/v1/colleges"): lambda w, who: _keyed(w, who),
    # the consumer names itself as recipient; a provider informs on that registered consumer
    ("POST", "/v1/notices"): lambda w, who: Call(
        headers=w.headers(who),
        json=notice_body(
            recipient=w.env.consumer.id,
            purpose="research",
            purpose_text="the matrix's research",
            retention="a day",
            controller="the matrix",
            contact="dpo@example.invalid",
        ),
    ),
    ("GET", "/v1/notices/{notice_hash}"): lambda w, who: _keyed(
        w, who, notice_hash=notice(w.env, "research")
    ),
    ("POST", "/v1/consents"): _grant,
    ("POST", "/v1/consents/revocations"): _revoke,
    ("GET", "/v1/subjects/{subject_id}/consents"): lambda w, who: _keyed(
        w, who, subject_id=w.subject.id
    ),
    ("POST", "/v1/access-requests"): _access,
    ("GET", "/v1/subjects/{subject_id}/export"): lambda w, who: _keyed(
        w, who, subject_id=w.subject.id
    ),
    ("GET", "/v1/subjects/{subject_id}/export/package"): lambda w, who: _keyed(
        w, who, subject_id=w.subject.id
    ),
    # a subject's own package, over the pseudonyms they signed in with: nobody names another
    ("GET", "/v1/subjects/export-package"): lambda w, who: _keyed(w, who),
    ("POST", "/v1/erasures"): _erase,
    ("POST", "/v1/erasure-requests"): _erasure_request,
    ("POST", "/v1/datasets/{dataset_id}/records/{record_id}/rectification"): _rectify,
    ("POST", "/v1/subjects/{subject_id}/rectification-requests"): _rectification_request,
    ("GET", "/v1/erasures/{erasure_id}"): lambda w, who: Call(
        params={"erasure_id": w.erasure}, headers=w.headers(who, w.erased)
    ),
    ("GET", "/v1/subjects/{subject_id}/requests"): lambda w, who: _keyed(
        w, who, subject_id=w.subject.id
    ),
    ("GET", "/v1/dpo/requests"): lambda w, who: _keyed(w, who),
    ("POST", "/v1/dpo/requests/{request_id}/extension"): _extension,
    ("POST", "/v1/dpo/requests/sync"): lambda w, who: _keyed(w, who),
    # Sealed to a key only the erasure's caller holds: anyone may fetch it.
    ("GET", "/v1/erasure-receipts/{erasure_id}"): lambda w, who: Call(
        params={"erasure_id": w.erasure}, headers=w.headers(who)
    ),
    ("GET", "/v1/ledger/status"): lambda w, who: _keyed(w, who),
    ("GET", "/v1/ledger/blocks"): lambda w, who: _keyed(w, who),
    ("GET", "/v1/ledger/blocks/{height}"): lambda w, who: _keyed(w, who, height=1),
    ("GET", "/v1/dpo/access-log"): lambda w, who: _keyed(w, who),
    ("GET", "/v1/dpo/retention-audit"): lambda w, who: _keyed(w, who),
    ("GET", "/v1/dpo/ledger-verification"): lambda w, who: _keyed(w, who),
    ("GET", "/v1/dpo/records-of-processing"): lambda w, who: _keyed(w, who),
    ("GET", "/v1/dpo/dpia"): lambda w, who: _keyed(w, who),
    ("GET", "/v1/dpo/outbox"): lambda w, who: _keyed(w, who),
    ("GET", "/v1/dpo/members"): lambda w, who: _keyed(w, who),
    # the DPO names the world's consumer (a legal entity): the same name every time
    ("PUT", "/v1/dpo/members/{member_id}/name"): lambda w, who: Call(
        params={"member_id": w.env.consumer.id},
        headers=w.headers(who),
        json={"display_name": "Matrix Bank", "contact": "dpo@matrix.example"},
    ),
    # Nothing is refused in this world: the DPO passes the role check and gets 404.
    ("POST", "/v1/dpo/outbox/{fact_id}/retry"): lambda w, who: _keyed(w, who, fact_id=1),
    # paid access: a price of 0 leaves the world's accesses free; a statement is the consumer's
    ("PUT", "/v1/datasets/{dataset_id}/prices/{mode}"): lambda w, who: Call(
        params={"dataset_id": w.dataset, "mode": "projection"},
        headers=w.headers(who),
        json={"price_cents": 0},
    ),
    ("GET", "/v1/datasets/{dataset_id}/prices"): lambda w, who: _keyed(
        w, who, dataset_id=w.dataset
    ),
    ("POST", "/v1/credits"): lambda w, who: Call(
        headers=w.headers(who),
        json={"member": w.env.consumer.id, "amount_cents": 1, "reference": uuid.uuid4().hex},
    ),
    ("GET", "/v1/members/{public_key}/statement"): lambda w, who: _keyed(
        w, who, public_key=w.env.consumer.id
    ),
    # eco-citizen tokens: the account read is the subject's, who earned tokens in set-up
    ("POST", "/v1/devices"): _device_new,
    ("GET", "/v1/devices/{device}"): lambda w, who: _keyed(w, who, device=w.eco.device.id),
    ("POST", "/v1/devices/{device}/events"): _device_events,
    ("GET", "/v1/reward-rules"): lambda w, who: _keyed(w, who),
    ("GET", "/v1/accounts/{account}"): lambda w, who: _keyed(w, who, account=w.subject.id),
    ("GET", "/v1/accounts/{account}/statement"): lambda w, who: _keyed(
        w, who, account=w.subject.id
    ),
    ("POST", "/v1/transfers"): _transfer,
    ("POST", "/v1/offers"): _offer,
    ("GET", "/v1/offers"): lambda w, who: _keyed(w, who),
    ("POST", "/v1/redemptions"): _redeem,
    ("POST", "/v1/coupons/spend"): _spend,
    ("GET", "/v1/dashboards/impact"): lambda w, who: _keyed(w, who),
    ("GET", "/v1/dashboards/partner"): lambda w, who: _keyed(w, who),
    # subject sign-in: anyone asks a challenge and proves its own key; only a session signs out
    ("POST", "/v1/subjects/challenges"): lambda w, who: _keyed(w, who),
    ("POST", "/v1/subjects/sessions"): _sign_in,
    ("DELETE", "/v1/subjects/sessions/current"): _sign_out,
    # personal data breaches: the DPO's register
    ("GET", "/v1/dpo/incidents"): lambda w, who: _keyed(w, who),
    ("POST", "/v1/dpo/incidents"): lambda w, who: Call(
        headers=w.headers(who),
        json={"title": "matrix", "discovered_at": dt.datetime.now(dt.UTC).isoformat()},
    ),
    ("GET", "/v1/dpo/incidents/{incident_id}"): _incident,
    ("POST", "/v1/dpo/incidents/{incident_id}/facts"): _incident_fact,
    ("POST", "/v1/dpo/incidents/{incident_id}/close"): _incident_close,
    ("GET", "/v1/dpo/incidents/{incident_id}/affected-subjects"): _incident,
    ("GET", "/v1/dpo/incidents/{incident_id}/notification-draft"): _incident,
    # every decryption recorded, and recipients told
    ("GET", "/v1/decryptions/{decryption_id}/proof"): lambda w, who: _keyed(
        w, who, decryption_id=w.read
    ),
    ("GET", "/v1/recipient-notices"): lambda w, who: _keyed(w, who),
    ("PUT", "/v1/consumers/me/webhook"): lambda w, who: Call(
        headers=w.headers(who), json={"url": "https://93.184.216.34/civis/notices"}
    ),
    ("GET", "/v1/dpo/recipient-notices"): lambda w, who: _keyed(w, who),
    # restriction and objection: signed by the subject (no API key), answered by the DPO
    ("POST", "/v1/subjects/{subject_id}/restrictions"): _restriction,
    ("POST", "/v1/subjects/{subject_id}/objections"): _objection,
    ("GET", "/v1/subjects/{subject_id}/restrictions"): lambda w, who: _keyed(
        w, who, subject_id=w.subject.id
    ),
    ("POST", "/v1/dpo/restriction-exemptions"): _exemption,
    ("POST", "/v1/dpo/objection-overrides"): _override,
}

# The roles with no column, and the rows that are theirs: every column is refused there.
OWN_ROWS = {
    ("POST", "/v1/devices/{device}/events"): "device",
    ("POST", "/v1/offers"): "partner",
    ("POST", "/v1/coupons/spend"): "partner",
    ("GET", "/v1/dashboards/partner"): "partner",
}


def _outcome(status: int) -> str:
    return "ok" if 200 <= status < 300 else str(status)


def _send(world: World, operation: tuple[str, str], who: str) -> httpx.Response:
    method, template = operation
    call = BUILDERS[operation](world, who)
    r: httpx.Response = world.env.client.request(
        method,
        template.format(**call.params),
        headers=call.headers,
        json=call.json,
        content=call.content,
    )
    return r


# -- the tests ----------------------------------------------------------------------------


def test_every_v1_operation_is_in_the_matrix(ledger_env: LedgerEnv) -> None:
    """A route added to the app without a row (or a row left for a route that went) fails.

    Both views of the app count: the routes it dispatches to (hidden from the schema or not)
    and the operations its OpenAPI document publishes.
    """
    app = ledger_env.client.app
    routed = {
        (method, str(route.path))
        for route in iter_route_contexts(app.routes)  # type: ignore[attr-defined]
        if str(route.path).startswith("/v1/")
        for method in route.methods or ()
    }
    published = {
        (method.upper(), path)
        for path, item in app.openapi()["paths"].items()  # type: ignore[attr-defined]
        if path.startswith("/v1/")
        for method in item
    }
    operations = routed | published
    assert operations, "no /v1 route found: the app changed shape"
    missing = sorted(operations - set(MATRIX))
    stale = sorted(set(MATRIX) - operations)
    assert not missing, (
        f"operations with no row in MATRIX_TABLE (decide who may call them): {missing}"
    )
    assert not stale, f"rows for operations the app no longer has: {stale}"
    assert set(BUILDERS) == set(MATRIX), "every row needs a request builder, and only rows"


@pytest.mark.parametrize("operation", list(MATRIX), ids=[f"{m} {p}" for m, p in MATRIX])
def test_each_caller_gets_exactly_its_rows_answer(world: World, operation: tuple[str, str]) -> None:
    method, template = operation
    wrong: list[str] = []
    for who, expected in MATRIX[operation].items():
        r = _send(world, operation, who)
        got = _outcome(r.status_code)
        if got != expected:
            wrong.append(f"{who}: expected {expected}, got {r.status_code} {r.text[:300]}")
        elif got != "ok":
            # A refusal is a problem document, never an empty or HTML body.
            assert r.headers["content-type"] == "application/problem+json", (who, r.text)
    assert not wrong, f"{method} {template}:\n" + "\n".join(wrong)


@pytest.mark.parametrize("operation", list(OWN_ROWS), ids=[f"{m} {p}" for m, p in OWN_ROWS])
def test_a_role_with_no_column_gets_ok_on_its_own_rows(
    world: World, operation: tuple[str, str]
) -> None:
    assert "ok" not in MATRIX[operation].values(), "a column may do this: no role of its own"
    r = _send(world, operation, OWN_ROWS[operation])
    assert _outcome(r.status_code) == "ok", f"{OWN_ROWS[operation]}: {r.status_code} {r.text}"


# The DPO's console (/dpo, outside /v1 and the OpenAPI document): every view and download is
# the DPO's alone, with the same answers for everyone else: 401 without a key (the sign-in
# form), 403 for any other role. `{...}`: filled by PAGE_PARAMS. The sign-in and sign-out
# posts and the static files (public code) are the routes every caller reaches.
PAGE_ROUTES = (
    ("GET", "/dpo"),
    ("GET", "/dpo/figures/{chart}.csv"),
    ("GET", "/dpo/accesses"),
    ("GET", "/dpo/accesses.csv"),
    ("GET", "/dpo/blocks/{height}"),
    ("GET", "/dpo/subjects"),
    ("POST", "/dpo/subjects/search"),
    ("GET", "/dpo/subjects/{subject_id}"),
    ("GET", "/dpo/subjects/{subject_id}/summary.csv"),
    ("GET", "/dpo/subjects/{subject_id}/package.json"),
    ("GET", "/dpo/queues"),
    ("GET", "/dpo/queues/{name}.csv"),
    ("GET", "/dpo/erasures"),
    ("GET", "/dpo/erasures.csv"),
    ("GET", "/dpo/retention.csv"),
    ("GET", "/dpo/members"),
    ("GET", "/dpo/members.csv"),
    ("GET", "/dpo/audit.{fmt}"),
    ("GET", "/dpo/records-of-processing.{fmt}"),
    ("GET", "/dpo/dpia.{fmt}"),
)
OPEN_PAGE_ROUTES = {
    ("POST", "/dpo/session"),
    ("POST", "/dpo/logout"),
    ("GET", "/dpo/static/{name}"),
}


_PAGE_SUBJECT: dict[int, Wallet] = {}


def _page_params(w: World) -> dict[str, str | int]:
    """A subject of the console's rows alone: the Art. 15 package records a read, which the
    world's subjects' own tests must not see."""
    if id(w) not in _PAGE_SUBJECT:
        _PAGE_SUBJECT[id(w)] = register_subject(w.env)
    return {
        "chart": "accesses-per-purpose",
        "height": 1,
        "subject_id": _PAGE_SUBJECT[id(w)].id,
        "name": "requests",
        "fmt": "pdf",
    }


def test_every_console_route_is_in_the_page_matrix(ledger_env: LedgerEnv) -> None:
    app = ledger_env.client.app
    routed = {
        (method, str(route.path))
        for route in iter_route_contexts(app.routes)  # type: ignore[attr-defined]
        if str(route.path) == "/dpo" or str(route.path).startswith("/dpo/")
        for method in route.methods or ()
    }
    assert routed - OPEN_PAGE_ROUTES == set(PAGE_ROUTES)


@pytest.mark.parametrize("operation", PAGE_ROUTES, ids=[f"{m} {p}" for m, p in PAGE_ROUTES])
def test_only_the_dpo_opens_the_console(world: World, operation: tuple[str, str]) -> None:
    method, template = operation
    path = template.format(**_page_params(world))
    form = {"Content-Type": "application/x-www-form-urlencoded"} if method == "POST" else {}
    got = {}
    for who in COLUMNS:
        if who == "signed-in":
            continue  # a subject's wallet session is no DPO session: the `subject` column's
        headers = {**(world.headers(who) if who != "anonymous" else {}), **form}
        r = world.env.client.request(
            method,
            path,
            headers=headers,
            content="q=abcdef" if form else None,
            follow_redirects=False,
        )
        got[who] = _outcome(r.status_code)
    wanted = {
        who: ("ok" if who == "dpo" else "401" if who == "anonymous" else "403") for who in got
    }
    assert got == wanted


def test_a_device_on_another_providers_dataset_is_refused_as_on_no_dataset(world: World) -> None:
    """The answer does not tell another provider that the owner's dataset exists."""
    answers = []
    for dataset in (world.eco.dataset, str(uuid.uuid4())):
        body = {"device": Device(world.env.chain_id, "x").id, "kind": "bike_reader"}
        body |= {"dataset": dataset, "district": "x"}
        r = world.env.client.post(
            "/v1/devices", json=signed(world.env, world.other_provider, "device.register", body)
        )
        answers.append((r.status_code, r.json()["detail"].replace(dataset, "<id>")))
    assert answers[0] == answers[1] == (404, "not_found: dataset <id> is not registered")


def test_a_providers_list_shows_only_its_own_datasets(world: World) -> None:
    env = world.env
    listed = env.client.get("/v1/datasets", headers=world.headers("provider")).json()
    assert world.dataset not in {d["id"] for d in listed}
    assert world.dataset in {
        d["id"] for d in env.client.get("/v1/datasets", headers=world.headers("owner")).json()
    }
    assert world.dataset in {
        d["id"] for d in env.client.get("/v1/datasets", headers=world.headers("dpo")).json()
    }


def test_nobody_reads_without_consent(world: World) -> None:
    """The other subject never consented: named, open and yes/no requests all get nothing."""
    env = world.env
    consumer = world.headers("consumer")
    ask = {"dataset_id": world.dataset, "purpose": "billing"}
    r = env.client.post(
        "/v1/access-requests", headers=consumer, json={**ask, "subjects": [world.other_subject.id]}
    )
    assert r.status_code == 200, r.text
    assert r.json()["granted"] == [] and r.json()["records"] == []
    assert r.json()["denied"] == [[world.other_subject.id, "no_consent"]]
    # an open request reaches exactly the consenting subject
    r = env.client.post("/v1/access-requests", headers=consumer, json=ask)
    assert {rec["subject_id"] for rec in r.json()["records"]} == {world.subject.id}
    r = env.client.post(
        "/v1/access-requests",
        headers=consumer,
        json={
            **ask,
            "purpose": "proof-of-address",
            "subjects": [world.other_subject.id],
            "predicate": {"field": "address", "op": "eq", "value": "1 rue du Test"},
        },
    )
    assert r.status_code == 403 and r.headers["content-type"] == "application/problem+json"
    assert "result" not in r.json()


def test_a_subject_exports_only_their_own_data(world: World) -> None:
    env = world.env
    mine = env.client.get(
        f"/v1/subjects/{world.subject.id}/export", headers=world.headers("subject")
    )
    assert mine.status_code == 200, mine.text
    assert mine.json()["subject_id"] == world.subject.id
    records = mine.json()["records"]
    # their address (and the matrix's upload of it) and their rides: theirs only
    assert {rec["dataset_id"] for rec in records} == {world.dataset, world.eco.dataset}
    addresses = {rec["payload"]["n"] for rec in records if rec["dataset_id"] == world.dataset}
    assert 0 in addresses and addresses <= {0, 99}
    theirs = env.client.get(
        f"/v1/subjects/{world.subject.id}/export", headers=world.headers("other-subject")
    )
    assert theirs.status_code == 403 and "records" not in theirs.json()


def test_a_subject_transaction_signed_by_someone_else_is_refused(world: World) -> None:
    """Drafts name the subject as their author; the other subject's key signs them."""
    env = world.env
    subject, forger = world.subject, world.other_subject
    cases = {
        "/v1/consents": (
            "consent.grant",
            {**_consent_body(world, "research"), "valid_until": _now_ms() + DAY_MS},
        ),
        "/v1/consents/revocations": ("consent.revoke", _consent_body(world, "proof-of-address")),
        "/v1/erasure-requests": (
            "erasure.request",
            {"scope": {"kind": "subject", "subject": subject.id}},
        ),
    }
    for path, (tx_type, body) in cases.items():
        draft = CivisClient(http=env.client).draft(subject.id, tx_type, body)
        forged = forger.key.sign(bytes.fromhex(draft["signing_payload"])).hex()
        r = env.client.post(path, json={"transaction": draft["transaction"], "signature": forged})
        assert r.status_code == 403, (path, r.text)
        assert "signature does not verify" in r.json()["detail"], (path, r.text)
    # nothing happened: the consent stands, the subject's data is still there and not erased
    r = env.client.post(
        "/v1/access-requests",
        headers=world.headers("consumer"),
        json={
            "dataset_id": world.dataset,
            "purpose": "billing",
            "subjects": [subject.id],
        },
    )
    assert r.json()["granted"] == [subject.id] and r.json()["records"], r.text
    export = env.client.get(f"/v1/subjects/{subject.id}/export", headers=world.headers("dpo"))
    assert export.json()["erasures"] == [] and export.json()["records"], export.text
