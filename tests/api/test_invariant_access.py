"""Invariant 1 (DESIGN.md) as a property, through the HTTP API against four real replicas.

"No consumer ever receives a record without an active consent committed on the ledger for
that consumer, dataset, and purpose, and an access record on the ledger for that delivery."

A hypothesis state machine plays random sequences of steps through the API, as the people
would: subjects grant and revoke consents with their own keys (dataset- or category-scoped,
for one of two purposes, to one of two consumers: the founding one and one admitted by a
vote), consumers ask for records (named subjects or open, whole or cut down to one field, as
JSON or as an NDJSON stream) or for a yes/no about one subject, the DPO erases a subject,
subjects restrict processing in a dataset and lift it (GDPR Art. 18), and time passes so that
a short consent runs out. A plain model keeps what was COMMITTED: each
consent's versions with the block height their receipt names, each erasure's height.

After every access, against the model at the access's own block (height and ledger time, read
back from the DPO's access log):
- every record delivered belongs to a subject with a consent in force for this consumer, this
  dataset (or its category) and this purpose, not erased, not restricted there, in the
  dataset asked for, and is exactly a record that was uploaded (the delivery is also
  complete: the granted subjects' records, all of them, and nothing else);
- the access is on the ledger: the DPO's access log holds a line with the answer's access id,
  transaction id and height, for this consumer, dataset and purpose, naming exactly the
  subjects delivered; each delivered subject finds the same access id in their own export;
- a refused question (a yes/no without consent, a purpose the dataset does not allow)
  delivers nothing.

Each example builds a fresh scene (new subjects, two new datasets in a new category), so the
ledger state left by earlier examples, consents included, can never be mistaken for this
one's. It starts from a few consents, and steps aim at consents granted before unless drawn
`aimless`: random accesses seldom meet random consents, and the invariant is about the ones
that do. The default run (20 sequences of up to 10 steps, about 40 s on two cores) is
derandomized and must reach every situation in MUST_COVER; CIVIS_LONG_PROPERTIES=1 runs a
long random campaign. A failure prints the shortest sequence of steps, e.g.
`state.first_consents(grants=[(0, 'c1', 'd1', 'research')])` then
`state.access_open(consumer='c1', dataset='d1', ...)`, with notes on what the model expected
(shrinking replays whole scenes: hypothesis stops it after five minutes).
"""

from __future__ import annotations

import datetime as dt
import json
import os
import re
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, ClassVar

import pytest
from hypothesis import HealthCheck, note, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

from tests.api.ledger_env import DAY_MS, LedgerEnv, Wallet
from tests.api.test_consented_access import declare_purpose, notice, register_subject, signed
from tests.api.test_roles import admit, make_dataset, upload_anchored

LONG = os.environ.get("CIVIS_LONG_PROPERTIES") == "1"
SETTINGS = settings(
    max_examples=300 if LONG else 20,
    stateful_step_count=30 if LONG else 10,
    deadline=None,
    # The default run is the same every time: its coverage check below must not be luck.
    derandomize=not LONG,
    suppress_health_check=[HealthCheck.too_slow],
)

SUBJECTS = (0, 1, 2)
CONSUMERS = ("c1", "c2")
DATASETS = ("d1", "d2")
SCOPES = ("d1", "d2", "category")
PURPOSES = ("research", "billing")
# Research is founded without a declaration; the scene declares it so that every form of
# access reaches it: whole records, the field `v`, and `eq` questions about `kind`. Billing
# reads whole records and asks nothing: a question under it is refused (exceeds_purpose).
RESEARCH = {
    "fields": ["kind", "v"],
    "modes": ["predicate", "projection", "full"],
    "operators": ["eq"],
    "questions": 100_000,
    "period_days": 1,
}
# d2 does not allow billing: a grant for it is refused, and so is an access under it.
ALLOWED = {"d1": ("research", "billing"), "d2": ("research",)}
SHORT_MS = 1_000  # a consent that a `pause` outlives
PAUSE_S = 1.0
# What each example uploads: (dataset, subject) -> payloads. Subject 2 has nothing in d2.
KINDS = {
    ("d1", 0): ("meter", "meter"),
    ("d1", 1): ("meter",),
    ("d1", 2): ("bill",),
    ("d2", 0): ("meter",),
    ("d2", 1): ("bill",),
}

ConsentKey = tuple[int, str, str, str]  # subject, consumer, scope (d1, d2, category), purpose
CONSENT_KEYS = st.tuples(
    st.sampled_from(SUBJECTS),
    st.sampled_from(CONSUMERS),
    st.sampled_from(SCOPES),
    st.sampled_from(PURPOSES),
)

# Situations the default run must reach, or the invariant was checked on easy cases only.
COVERAGE: Counter[str] = Counter()
MUST_COVER = (
    "records_delivered",
    "denied_no_consent",
    "revoked_then_refused",
    "category_scope_delivered",
    "second_consumer_delivered",
    "open_request",
    "streamed",
    "projected",
    "predicate_answered",
    "predicate_refused",
    "purpose_not_allowed",
    "erased_then_refused",
    # rectification
    "rectified",
    "rectified_then_read",
    # restriction
    "restricted_then_refused",
)


@dataclass
class Scene:
    """What every example shares: the ledger env, the two consumers, a few API keys."""

    env: LedgerEnv
    consumers: dict[str, Wallet]
    keys: dict[str, dict[str, str]]
    notices: dict[tuple[str, str], str]  # (consumer, purpose) -> the notice its consents name
    last_access: int = 0  # the highest access id seen so far (ids are global on the chain)


@pytest.fixture(scope="module")
def scene(ledger_env: LedgerEnv) -> Scene:
    env = ledger_env
    second = Wallet()
    # Before any subject registers: the citizens' college is its validator alone, so the
    # founding members' votes carry every college.
    admit(env, second, "consumer", "services")
    declare_purpose(env, "research", RESEARCH)
    consumers = {"c1": env.consumer, "c2": second}
    keys = {name: env.headers("consumer", w) for name, w in consumers.items()}
    keys["provider"] = env.headers("provider", env.provider)
    keys["dpo"] = env.headers("dpo", env.dpo)
    notices = {
        (name, purpose): notice(env, purpose, wallet)
        for name, wallet in consumers.items()
        for purpose in PURPOSES
    }
    return Scene(env, consumers, keys, notices)


@dataclass
class Model:
    """What the ledger committed, as the steps' receipts said, and what the vault stores."""

    # (subject, consumer, scope, purpose) -> [(height, valid_until_ms, granted)], in order
    consents: dict[ConsentKey, list[tuple[int, int, bool]]] = field(default_factory=dict)
    # (subject, dataset or None for everywhere) -> height of the erasure's ledger record
    erased: dict[tuple[int, str | None], int] = field(default_factory=dict)
    # (dataset, subject) -> the payloads stored and not erased
    stored: dict[tuple[str, int], list[dict[str, Any]]] = field(default_factory=dict)
    # Subjects erased everywhere: the ledger forgot them, so they are no members any more
    # (their transactions are refused `not_member`, an access naming them `unknown_subject`).
    forgotten: set[int] = field(default_factory=set)
    # restriction: (subject, dataset) -> [(height, restricted)], in order
    restricted: dict[tuple[int, str], list[tuple[int, bool]]] = field(default_factory=dict)

    def in_force(
        self, subject: int, consumer: str, scope: str, purpose: str, height: int, now_ms: int
    ) -> bool:
        """A change counts for decisions in LATER blocks; expiry by the deciding block's time."""
        before = [
            v for v in self.consents.get((subject, consumer, scope, purpose), []) if v[0] < height
        ]
        if not before:
            return False
        _, until, granted = before[-1]
        return granted and now_ms < until

    def erased_before(self, subject: int, dataset: str, height: int) -> bool:
        heights = (self.erased.get((subject, None)), self.erased.get((subject, dataset)))
        return any(h is not None and h < height for h in heights)

    def restricted_before(self, subject: int, dataset: str, height: int) -> bool:
        """A restriction (or its lift) counts for decisions in LATER blocks, like a consent."""
        before = [v for v in self.restricted.get((subject, dataset), []) if v[0] < height]
        return bool(before) and before[-1][1]

    def denial(self, subject: int, dataset: str, height: int) -> str:
        """Why the contracts deny a named subject they do not grant: erased, restricted, or
        without a consent in force (what a narrower consent denies is not asked here)."""
        if self.erased_before(subject, dataset, height):
            return "erased"
        if self.restricted_before(subject, dataset, height):
            return "restricted"
        return "no_consent"

    def granted(
        self,
        consumer: str,
        dataset: str,
        purpose: str,
        subjects: tuple[int, ...],
        height: int,
        now_ms: int,
    ) -> set[int]:
        return {
            s
            for s in subjects
            if not self.erased_before(s, dataset, height)
            and not self.restricted_before(s, dataset, height)
            and any(
                self.in_force(s, consumer, scope, purpose, height, now_ms)
                for scope in (dataset, "category")
            )
        }


def _ms(iso: str) -> int:
    return round(dt.datetime.fromisoformat(iso).timestamp() * 1000)


class AccessMachine(RuleBasedStateMachine):
    """One example: a fresh scene, then random steps through the API (see the module doc)."""

    scene: ClassVar[Scene]

    def __init__(self) -> None:
        super().__init__()
        s = self.scene
        env = s.env
        self.env = env
        self.model = Model()
        self.subjects = [register_subject(env) for _ in SUBJECTS]
        self.subject_keys = [env.headers("subject", w) for w in self.subjects]
        # A category of its own: category-scoped consents of earlier examples reach nothing here.
        self.category = f"inv-{uuid.uuid4().hex[:12]}"
        provider = s.keys["provider"]
        self.datasets = {
            d: make_dataset(env, provider, self.category, list(ALLOWED[d])) for d in DATASETS
        }
        tag = uuid.uuid4().hex[:8]
        for d in DATASETS:
            rows: list[tuple[Wallet, dict[str, Any]]] = []
            for subject in SUBJECTS:
                payloads = [
                    {"v": f"{tag}-{d}-s{subject}-{i}", "kind": kind}
                    for i, kind in enumerate(KINDS.get((d, subject), ()))
                ]
                self.model.stored[(d, subject)] = payloads
                rows += [(self.subjects[subject], p) for p in payloads]
            upload_anchored(env, provider, self.datasets[d], rows)
        self.by_subject_id = {w.id: i for i, w in enumerate(self.subjects)}
        self.short_consent_at: float | None = None
        self.pauses = 0
        self.erasures = 0
        self.steps = 0
        self._rectification_scene()

    @invariant()
    def count_steps(self) -> None:
        self.steps += 1

    # -- helpers ----------------------------------------------------------------------------

    def _consent_body(
        self, subject: int, consumer: str, scope: str, purpose: str
    ) -> dict[str, Any]:
        body: dict[str, Any] = {
            "subject": self.subjects[subject].id,
            "consumer": self.scene.consumers[consumer].id,
            "purpose": purpose,
        }
        if scope == "category":
            body["category"] = self.category
        else:
            body["dataset"] = self.datasets[scope]
        return body

    def _log_line(self, consumer: str, tx_id: str) -> dict[str, Any]:
        """The DPO's access-log line of the access with this ledger transaction."""
        r = self.env.client.get(
            "/v1/dpo/access-log",
            headers=self.scene.keys["dpo"],
            params={
                "consumer": self.scene.consumers[consumer].id,
                "after": self.scene.last_access,
                "limit": 100,
            },
        )
        assert r.status_code == 200, r.text
        lines = [a for a in r.json()["accesses"] if a["tx_id"] == tx_id]
        assert len(lines) == 1, f"access tx {tx_id} is not in the DPO's access log"
        line: dict[str, Any] = lines[0]
        self.scene.last_access = max(self.scene.last_access, int(line["access"]))
        return line

    def _ask(self, body: dict[str, Any], stream: bool, consumer: str) -> tuple[int, dict[str, Any]]:
        headers = dict(self.scene.keys[consumer])
        if stream:
            headers["Accept"] = "application/x-ndjson"
        r = self.env.client.post("/v1/access-requests", headers=headers, json=body)
        if r.status_code != 200 or not stream:
            return r.status_code, r.json()
        assert r.headers["content-type"].startswith("application/x-ndjson"), r.headers
        head, *records = (json.loads(line) for line in r.text.splitlines() if line)
        return 200, {**head, "records": records}

    # -- steps --------------------------------------------------------------------------------

    @initialize(grants=st.lists(CONSENT_KEYS, min_size=1, max_size=4, unique=True))
    def first_consents(self, grants: list[ConsentKey]) -> None:
        """Some consents to start from, so that accesses have something to meet."""
        for key in grants:
            self._grant(key, short=False)

    @rule(key=CONSENT_KEYS, short=st.booleans())
    def grant(self, key: ConsentKey, short: bool) -> None:
        """The subject signs a consent: for a day, or for a second (see `pause`)."""
        self._grant(key, short)

    def _grant(self, key: ConsentKey, short: bool) -> None:
        subject, consumer, scope, purpose = key
        until = int(time.time() * 1000) + (SHORT_MS if short else DAY_MS)
        # Whole records: what this property is about is WHEN a consent holds; what a narrower
        # consent discloses is tests/ledger_bridge/contracts/test_disclosure.py's.
        body = {
            **self._consent_body(subject, consumer, scope, purpose),
            "valid_until": until,
            "mode": "full",
            "notice": self.scene.notices[(consumer, purpose)],
        }
        r = self.env.client.post(
            "/v1/consents", json=signed(self.env, self.subjects[subject], "consent.grant", body)
        )
        if subject in self.model.forgotten:
            assert r.status_code == 403 and "not_member" in r.json()["detail"], r.text
            return
        if scope != "category" and purpose not in ALLOWED[scope]:
            assert r.status_code == 403 and "purpose_not_allowed" in r.json()["detail"], r.text
            return
        if short and r.status_code == 422 and "valid_until" in r.json()["detail"]:
            note("a short consent reached the ledger after its own end: refused, as it should")
            return
        assert r.status_code == 201, r.text
        height = int(r.json()["receipt"]["block_height"])
        assert r.json()["result"]["effective_from_height"] == height + 1
        COVERAGE["granted"] += 1
        note(f"granted {key} at height {height} until {until}")
        self.model.consents.setdefault(key, []).append((height, until, True))
        if short:
            self.short_consent_at = time.monotonic()

    def _granted_before(self, data: st.DataObject) -> ConsentKey | None:
        """One of the consents this example granted (so steps meet often enough to matter)."""
        keys = sorted(self.model.consents)
        return data.draw(st.sampled_from(keys), label="consent") if keys else None

    @rule(
        data=st.data(),
        aimless=st.booleans(),
        subject=st.sampled_from(SUBJECTS),
        consumer=st.sampled_from(CONSUMERS),
        scope=st.sampled_from(SCOPES),
        purpose=st.sampled_from(PURPOSES),
    )
    def revoke(
        self,
        data: st.DataObject,
        aimless: bool,
        subject: int,
        consumer: str,
        scope: str,
        purpose: str,
    ) -> None:
        """Revoke a consent granted before (unless `aimless`): refused when none is in force."""
        key = (not aimless and self._granted_before(data)) or (subject, consumer, scope, purpose)
        subject, consumer, scope, purpose = key
        versions = self.model.consents.get(key, [])
        body = self._consent_body(subject, consumer, scope, purpose)
        r = self.env.client.post(
            "/v1/consents/revocations",
            json=signed(self.env, self.subjects[subject], "consent.revoke", body),
        )
        if subject in self.model.forgotten:
            assert r.status_code == 403 and "not_member" in r.json()["detail"], r.text
            return
        if not versions or not versions[-1][2]:
            assert r.status_code == 404, r.text  # nothing in force to revoke
            return
        assert r.status_code == 201, r.text
        height = int(r.json()["receipt"]["block_height"])
        self.model.consents[key].append((height, versions[-1][1], False))

    def _access(
        self,
        consumer: str,
        dataset: str,
        purpose: str,
        named: tuple[int, ...] | None,
        project: bool,
        stream: bool,
    ) -> None:
        note(f"ask: consumer={consumer} dataset={dataset} purpose={purpose} subjects={named}")
        body: dict[str, Any] = {"dataset_id": self.datasets[dataset], "purpose": purpose}
        if named is not None:
            body["subjects"] = [self.subjects[s].id for s in named]
        if project:
            body["fields"] = ["v"]
        status, answer = self._ask(body, stream, consumer)
        if purpose not in ALLOWED[dataset]:
            assert status == 403 and "purpose_not_allowed" in answer["detail"], answer
            assert "records" not in answer
            COVERAGE["purpose_not_allowed"] += 1
            return
        if named is not None and set(named) & self.model.forgotten:
            assert status == 404 and "unknown_subject" in answer["detail"], answer
            assert "records" not in answer
            return
        assert status == 200, answer
        line = self._log_line(consumer, answer["receipt"]["tx_id"])
        height, now_ms = int(line["height"]), _ms(line["time"])
        candidates = SUBJECTS if named is None else named
        expected = self.model.granted(consumer, dataset, purpose, candidates, height, now_ms)
        note(
            f"access {answer['access']} at height {height}, time {now_ms}: model grants "
            f"{sorted(expected)}, the ledger granted "
            f"{sorted(self.by_subject_id.get(g, -1) for g in answer['granted'])}"
        )

        delivered = _assert_delivery_matches_the_model(
            self, answer, dataset, named, expected, project, height
        )
        _assert_delivery_is_on_the_ledger(
            self, answer, line, consumer, dataset, purpose, project, height, delivered
        )

        COVERAGE["open_request" if named is None else "named_request"] += 1
        COVERAGE["streamed"] += stream
        COVERAGE["projected"] += project and bool(delivered)
        if delivered:
            COVERAGE["records_delivered"] += 1
            COVERAGE["second_consumer_delivered"] += consumer == "c2"
            if any(
                not self.model.in_force(s, consumer, dataset, purpose, height, now_ms)
                for s in set(delivered)
            ):
                COVERAGE["category_scope_delivered"] += 1
        _count_refusals(self.model, consumer, dataset, purpose, set(candidates) - expected, height)

    def _aim(
        self, data: st.DataObject, aimless: bool, consumer: str, dataset: str, purpose: str
    ) -> tuple[int | None, str, str, str]:
        """Ask as a consent granted before allows (it may be revoked, expired or erased by
        now); when `aimless`, as drawn. Returns that consent's subject, if any.

        Aiming is what hypothesis tries first (`False` is its simplest boolean): random
        accesses seldom meet random consents, and the invariant is about the ones that do.
        """
        key = self._granted_before(data) if not aimless else None
        if key is None:
            return None, consumer, dataset, purpose
        subject, consumer, scope, purpose = key
        return subject, consumer, dataset if scope == "category" else scope, purpose

    @rule(
        data=st.data(),
        aimless=st.booleans(),
        consumer=st.sampled_from(CONSUMERS),
        dataset=st.sampled_from(DATASETS),
        purpose=st.sampled_from(PURPOSES),
        named=st.lists(st.sampled_from(SUBJECTS), min_size=1, max_size=3, unique=True),
        whole=st.booleans(),
        stream=st.booleans(),
    )
    def access_named(
        self,
        data: st.DataObject,
        aimless: bool,
        consumer: str,
        dataset: str,
        purpose: str,
        named: list[int],
        whole: bool,
        stream: bool,
    ) -> None:
        """Named subjects; cut down to one field unless `whole` (open requests get it whole)."""
        subject, consumer, dataset, purpose = self._aim(data, aimless, consumer, dataset, purpose)
        if subject is not None and subject not in named:
            named = [*named, subject]
        self._access(consumer, dataset, purpose, tuple(named), not whole, stream)

    @rule(
        data=st.data(),
        aimless=st.booleans(),
        consumer=st.sampled_from(CONSUMERS),
        dataset=st.sampled_from(DATASETS),
        purpose=st.sampled_from(PURPOSES),
        stream=st.booleans(),
    )
    def access_open(
        self,
        data: st.DataObject,
        aimless: bool,
        consumer: str,
        dataset: str,
        purpose: str,
        stream: bool,
    ) -> None:
        _, consumer, dataset, purpose = self._aim(data, aimless, consumer, dataset, purpose)
        self._access(consumer, dataset, purpose, None, False, stream)

    @rule(
        data=st.data(),
        aimless=st.booleans(),
        consumer=st.sampled_from(CONSUMERS),
        dataset=st.sampled_from(DATASETS),
        purpose=st.sampled_from(PURPOSES),
        subject=st.sampled_from(SUBJECTS),
        kind=st.sampled_from(("meter", "bill")),
    )
    def predicate(
        self,
        data: st.DataObject,
        aimless: bool,
        consumer: str,
        dataset: str,
        purpose: str,
        subject: int,
        kind: str,
    ) -> None:
        """A yes/no about one subject: answered only under consent, and recorded either way."""
        aimed, consumer, dataset, purpose = self._aim(data, aimless, consumer, dataset, purpose)
        subject = subject if aimed is None else aimed
        body = {
            "dataset_id": self.datasets[dataset],
            "purpose": purpose,
            "subjects": [self.subjects[subject].id],
            "predicate": {"field": "kind", "op": "eq", "value": kind},
        }
        r = self.env.client.post(
            "/v1/access-requests", headers=self.scene.keys[consumer], json=body
        )
        if purpose not in ALLOWED[dataset]:
            assert r.status_code == 403 and "purpose_not_allowed" in r.json()["detail"], r.text
            COVERAGE["purpose_not_allowed"] += 1
            return
        if purpose == "billing":  # asks no questions: refused whole, before any subject
            assert r.status_code == 403 and "exceeds_purpose" in r.json()["detail"], r.text
            return
        if subject in self.model.forgotten:
            assert r.status_code == 404 and "unknown_subject" in r.json()["detail"], r.text
            return
        if r.status_code == 403:
            assert "result" not in r.json(), r.text
            found = re.search(r"access (\d+), ledger tx ([0-9a-f]{64})", r.json()["detail"])
            assert found, r.text
            line = self._log_line(consumer, found.group(2))
            assert int(line["access"]) == int(found.group(1))
        else:
            assert r.status_code == 200, r.text
            assert set(r.json()) == {"result", "receipt", "charged_cents"}, r.text
            line = self._log_line(consumer, r.json()["receipt"]["tx_id"])
        height, now_ms = int(line["height"]), _ms(line["time"])
        expected = self.model.granted(consumer, dataset, purpose, (subject,), height, now_ms)
        note(f"predicate access {line['access']}: model grants {sorted(expected)}")
        assert line["predicate"] is not None and line["predicate"]["field"] == "kind"
        assert line["dataset"] == self.datasets[dataset] and line["purpose"] == purpose
        if not expected:
            assert r.status_code == 403, f"a yes/no answered without consent: {r.text}"
            assert line["granted"] == []
            COVERAGE["predicate_refused"] += 1
            return
        assert r.status_code == 200, f"refused although the model sees a consent: {r.text}"
        assert line["granted"] == [self.subjects[subject].id]
        kinds = {p["kind"] for p in self.model.stored.get((dataset, subject), [])}
        assert r.json()["result"] is (kind in kinds)  # current versions only (rectify)
        COVERAGE["predicate_answered"] += 1

    # Once per example, after a few steps, and the last subject first (hypothesis tries the
    # first choice first): an early erasure of subject 0 would make most sequences moot.
    @precondition(lambda self: self.erasures < 1 and self.steps >= 3)
    @rule(subject=st.sampled_from(SUBJECTS[::-1]), dataset=st.sampled_from((*DATASETS, None)[::-1]))
    def erase(self, subject: int, dataset: str | None) -> None:
        """The DPO erases a subject in one dataset or everywhere."""
        self.erasures += 1
        body: dict[str, Any] = {"subject_id": self.subjects[subject].id}
        if dataset is not None:
            body["dataset_id"] = self.datasets[dataset]
        r = self.env.client.post("/v1/erasures", headers=self.scene.keys["dpo"], json=body)
        scopes = DATASETS if dataset is None else (dataset,)
        if not any(self.model.stored.get((d, subject)) for d in scopes):
            assert r.status_code == 404, r.text  # nothing stored there
            return
        assert r.status_code in (201, 202), r.text
        cert = r.json()
        deadline = time.monotonic() + 30
        while cert["receipt"] is None and time.monotonic() < deadline:
            time.sleep(0.05)
            cert = self.env.client.get(
                f"/v1/erasures/{cert['erasure_id']}", headers=self.scene.keys["dpo"]
            ).json()
        assert cert["receipt"] is not None, "the erasure was not recorded on the ledger in time"
        self.model.erased[(subject, dataset)] = int(cert["receipt"]["block_height"])
        if dataset is None:
            self.model.forgotten.add(subject)
        for d in scopes:
            self.model.stored[(d, subject)] = []

    # -- restriction (GDPR Art. 18): its steps and checks, kept together ----------------------

    @rule(data=st.data(), keep=st.booleans())
    def restrict(self, data: st.DataObject, keep: bool) -> None:
        """The subject of a consent granted before restricts processing in the dataset it
        reaches (or, restricted there already, lifts it; or, unless `keep`, restricts and
        lifts in turn). After each, the provider's own read obeys at once, and the consent's
        consumer asks for the subject's records in the next block (whole while restricted,
        cut down to one field once lifted)."""
        key = self._granted_before(data)
        if key is None:
            return
        subject, consumer, scope, purpose = key
        if scope == "category":  # one of the category's datasets the purpose is allowed in
            allowed = [d for d in DATASETS if purpose in ALLOWED[d]]
            scope = data.draw(st.sampled_from(allowed), label="dataset")
        dataset = scope
        history = self.model.restricted.get((subject, dataset), [])
        in_force = bool(history) and history[-1][1]
        for lift in (True,) if in_force else (False,) if keep else (False, True):
            if not self._restriction(subject, dataset, lift):
                return
            self._access(consumer, dataset, purpose, (subject,), lift, False)

    def _restriction(self, subject: int, dataset: str, lift: bool) -> bool:
        """Sign and post restriction.set (or .lift); False when the subject is forgotten."""
        body: dict[str, Any] = {"dataset": self.datasets[dataset]}
        if not lift:
            body["ground"] = "accuracy_contested"
        tx_type = "restriction.lift" if lift else "restriction.set"
        wallet = self.subjects[subject]
        r = self.env.client.post(
            f"/v1/subjects/{wallet.id}/restrictions",
            json=signed(self.env, wallet, tx_type, body),
        )
        if subject in self.model.forgotten:
            assert r.status_code == 403 and "not_member" in r.json()["detail"], r.text
            return False
        assert r.status_code == 201, r.text
        height = int(r.json()["receipt"]["block_height"])
        note(f"{tx_type} subject {subject} in {dataset} at height {height}")
        self.model.restricted.setdefault((subject, dataset), []).append((height, not lift))
        self._provider_reads(subject, dataset, withheld=not lift)
        return True

    def _provider_reads(self, subject: int, dataset: str, *, withheld: bool) -> None:
        """The provider's own read of the subject's records: none while restricted, and the
        count of those left out; all of them otherwise."""
        r = self.env.client.get(
            f"/v1/datasets/{self.datasets[dataset]}/records",
            headers=self.scene.keys["provider"],
            params={"subject_id": self.subjects[subject].id},
        )
        assert r.status_code == 200, r.text
        stored = self.model.stored.get((dataset, subject), [])
        got = sorted(json.dumps(rec["payload"], sort_keys=True) for rec in r.json())
        want = [] if withheld else sorted(json.dumps(p, sort_keys=True) for p in stored)
        assert got == want, f"the provider read {got}, the model expects {want}"
        assert r.headers["Civis-Withheld-Records"] == str(len(stored) if withheld else 0)
        COVERAGE["provider_read_withheld"] += withheld and bool(stored)

    @precondition(lambda self: self.short_consent_at is not None and self.pauses < 2)
    @rule()
    def pause(self) -> None:
        """Let a short consent run out (the ledger's clock decides, read back per access)."""
        self.pauses += 1
        assert self.short_consent_at is not None
        left = self.short_consent_at + PAUSE_S - time.monotonic()
        time.sleep(max(0.0, left))
        self.short_consent_at = None

    # -- rectification (Art. 16): never a superseded version delivered ----------------------
    #
    # The provider rectifies one of a subject's records (its value and its kind change); the
    # model's stored payloads then hold the new version, so every access above checks that
    # the consumer gets the new one, and `_superseded` that it never gets an old one, whole,
    # projected or as a yes/no (a kind that only the old version had answers false). The old
    # record id is refused (409) ever after, and so is every record of an erased subject.

    def _rectification_scene(self) -> None:
        """What the rectification rules keep (called by `__init__`, after the uploads)."""
        self.rectified = 0
        # the payloads (canonical JSON) and the record ids that rectifications replaced
        self.superseded_payloads: set[str] = set()
        self.old_ids: list[tuple[str, str]] = []  # (dataset, record id)
        # the last record ids the provider's read gave, per (dataset, subject)
        self.known_ids: dict[tuple[str, int], list[str]] = {}
        for d in DATASETS:
            r = self.env.client.get(
                f"/v1/datasets/{self.datasets[d]}/records", headers=self.scene.keys["provider"]
            )
            assert r.status_code == 200, r.text
            for rec in r.json():
                key = (d, self.by_subject_id[rec["subject_id"]])
                self.known_ids.setdefault(key, []).append(rec["record_id"])

    def _current_records(self, dataset: str, subject: int) -> list[dict[str, Any]]:
        """The provider's read of a subject's records: only current versions, exactly the
        model's."""
        r = self.env.client.get(
            f"/v1/datasets/{self.datasets[dataset]}/records",
            params={"subject_id": self.subjects[subject].id},
            headers=self.scene.keys["provider"],
        )
        assert r.status_code == 200, r.text
        records: list[dict[str, Any]] = r.json()
        got = sorted(json.dumps(rec["payload"], sort_keys=True) for rec in records)
        want = sorted(json.dumps(p, sort_keys=True) for p in self.model.stored[(dataset, subject)])
        assert got == want, f"the provider reads {got}, the model holds {want}"
        return records

    @precondition(lambda self: self.rectified < 1)
    @rule(
        subject=st.sampled_from(SUBJECTS),
        dataset=st.sampled_from(DATASETS),
        which=st.integers(0, 1),
    )
    def supersede(self, subject: int, dataset: str, which: int) -> None:
        """The provider corrects one of the subject's records; an erased subject's records,
        and a version replaced before, are refused and change nothing."""
        standing = self.model.restricted.get((subject, dataset), [])
        if standing and standing[-1][1]:
            return  # the provider reads none of a restricted subject's records to correct
        self.rectified += 1
        provider = self.scene.keys["provider"]
        key = (dataset, subject)
        current = self._current_records(dataset, subject)
        for old_dataset, old_id in self.old_ids:  # replaced versions stay replaced
            r = self.env.client.post(
                f"/v1/datasets/{self.datasets[old_dataset]}/records/{old_id}/rectification",
                headers=provider,
                json={"subject_id": self.subjects[subject].id, "payload": {"v": "x"}},
            )
            assert r.status_code == 409 and "rectified before" in r.json()["detail"], r.text
        if not current:
            for record_id in self.known_ids.get(key, []):  # erased (or never stored): refused
                r = self.env.client.post(
                    f"/v1/datasets/{self.datasets[dataset]}/records/{record_id}/rectification",
                    headers=provider,
                    json={"subject_id": self.subjects[subject].id, "payload": {"v": "x"}},
                )
                assert r.status_code == 409 and "erased" in r.json()["detail"], r.text
                COVERAGE["rectify_erased_refused"] += 1
            return
        target = current[which % len(current)]
        old = target["payload"]
        new = {"v": f"{old['v']}-fixed", "kind": "bill" if old["kind"] == "meter" else "meter"}
        r = self.env.client.post(
            f"/v1/datasets/{self.datasets[dataset]}/records/{target['record_id']}/rectification",
            headers=provider,
            json={"subject_id": self.subjects[subject].id, "payload": new},
        )
        assert r.status_code == 201 and r.json()["state"] == "anchored", r.text
        note(f"rectified {old} -> {new} of subject {subject} in {dataset}")
        self.superseded_payloads.add(json.dumps(old, sort_keys=True))
        stored = self.model.stored[key]
        stored[stored.index(old)] = new
        self.old_ids += [(dataset, v["replaced"]) for v in r.json()["versions"]]
        self.known_ids[key] = [rec["record_id"] for rec in self._current_records(dataset, subject)]
        COVERAGE["rectified"] += 1
        # At once, as each consent of the subject reaching this dataset allows: the consumer
        # gets the new version (`_access` holds it to the model), never the old one.
        for s, consumer, scope, purpose in sorted(self.model.consents):
            if s == subject and scope in (dataset, "category"):
                self._access(consumer, dataset, purpose, (subject,), False, False)
                COVERAGE["rectified_then_read"] += 1
                break


def _superseded(machine: AccessMachine, payload: dict[str, Any]) -> bool:
    """Whether a delivered payload (whole, or projected to `v`) is a version a rectification
    replaced: its `v` is an old version's and no current version's."""
    if "v" not in payload:
        return False
    old = {json.loads(p)["v"] for p in machine.superseded_payloads}
    now = {p["v"] for payloads in machine.model.stored.values() for p in payloads}
    return payload["v"] in old - now


def _assert_delivery_matches_the_model(
    machine: AccessMachine,
    answer: dict[str, Any],
    dataset: str,
    named: tuple[int, ...] | None,
    expected: set[int],
    project: bool,
    height: int,
) -> list[int]:
    """Hold an access's records, grants and denials to the model; return whose records came."""
    # The invariant: nothing delivered without a consent in force and not erased ...
    delivered = [machine.by_subject_id.get(rec["subject_id"], -1) for rec in answer["records"]]
    unconsented = [s for s in delivered if s not in expected]
    assert not unconsented, f"delivered records of subjects {unconsented} without consent"
    # ... only records of this dataset, exactly as uploaded, all of the granted ones ...
    want = sorted(
        json.dumps({"v": p["v"]} if project else p, sort_keys=True)
        for s in expected
        for p in machine.model.stored.get((dataset, s), [])
    )
    got = sorted(json.dumps(rec["payload"], sort_keys=True) for rec in answer["records"])
    assert got == want, f"delivered {got}, model expects {want}"
    stale = [rec["payload"] for rec in answer["records"] if _superseded(machine, rec["payload"])]
    assert not stale, f"delivered superseded versions {stale}"
    assert all((rec["proof"] is None) == project for rec in answer["records"])
    assert {machine.by_subject_id.get(g, -1) for g in answer["granted"]} == expected
    if named is not None:
        reasons = {machine.by_subject_id[s]: why for s, why in answer["denied"]}
        for s in named:
            if s in expected:
                continue
            assert reasons.get(s) == machine.model.denial(s, dataset, height), (s, reasons)
    return delivered


def _assert_delivery_is_on_the_ledger(
    machine: AccessMachine,
    answer: dict[str, Any],
    line: dict[str, Any],
    consumer: str,
    dataset: str,
    purpose: str,
    project: bool,
    height: int,
    delivered: list[int],
) -> None:
    """Hold an access to its line in the DPO's access log and to each delivered subject's export."""
    assert int(line["access"]) == int(answer["access"])
    assert int(answer["receipt"]["block_height"]) == height
    assert line["dataset"] == machine.datasets[dataset] and line["purpose"] == purpose
    assert line["consumer"] == machine.scene.consumers[consumer].id
    assert sorted(line["granted"]) == sorted(answer["granted"])
    assert line["fields"] == (["v"] if project else [])
    for s in {*delivered}:
        export = machine.env.client.get(
            f"/v1/subjects/{machine.subjects[s].id}/export", headers=machine.subject_keys[s]
        )
        assert export.status_code == 200, export.text
        ids = {int(a["access"]) for a in export.json()["accesses"]}
        assert int(answer["access"]) in ids, f"subject {s}'s export misses the access"


def _count_refusals(
    model: Model, consumer: str, dataset: str, purpose: str, refused: set[int], height: int
) -> None:
    """Count in COVERAGE why each subject an access did not grant was refused."""
    for s in refused:
        versions = [
            v
            for scope in (dataset, "category")
            for v in model.consents.get((s, consumer, scope, purpose), [])
        ]
        if model.erased_before(s, dataset, height):
            COVERAGE["erased_then_refused"] += 1
        elif model.restricted_before(s, dataset, height):
            COVERAGE["restricted_then_refused"] += 1
        elif any(not g for _, _, g in versions):
            COVERAGE["revoked_then_refused"] += 1
        elif versions:
            COVERAGE["expired_then_refused"] += 1
        else:
            COVERAGE["denied_no_consent"] += 1


@pytest.mark.timeout(7200 if LONG else 600)
def test_no_record_leaves_without_a_committed_consent_and_an_access_record(scene: Scene) -> None:
    class Machine(AccessMachine):
        pass

    Machine.scene = scene
    COVERAGE.clear()
    run_state_machine_as_test(Machine, settings=SETTINGS)
    print(f"coverage: {dict(sorted(COVERAGE.items()))}")
    missing = [c for c in MUST_COVER if not COVERAGE[c]]
    assert not missing, f"the run never reached {missing}: {dict(COVERAGE)}"
