"""The consent contracts' rules: `apply(state, tx, block) -> result`, deterministic.

Every decision reads only the state and the block (height, time): no I/O, no wall clock, no
randomness. A transaction either applies completely (burning its nonce) or leaves the state
exactly as it was, so a refused, forged or replayed transaction changes nothing.

Time: the contracts' clock is `now = max(previous now, block time)`, so it never runs
backwards even if a primary proposes an earlier (but still accepted) block time.

Consent and erasure take effect from the NEXT block. An access request reads consents and
erasures as they stood at the end of the previous block: the primary orders the transactions
inside a block, and it must not be able to decide whether an access lands just before or just
after a revocation. Each consent keeps its current version and the one before it (each tagged
with the height it was written at); a decision at height h uses the newest version written
before h.

Results are canonical maps: `{"ok": true, ...}` or `{"ok": false, "code": ..., "message": ...}`.
Messages name fields and identifiers, never a value a caller sent as data.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ledger_bridge.app import BlockContext
from ledger_bridge.contracts import bodies, disclosure
from ledger_bridge.contracts import tx as txmod
from ledger_bridge.contracts.bodies import ERASURE_REASONS as ERASURE_REASONS
from ledger_bridge.contracts.bodies import REQUESTERS as REQUESTERS
from ledger_bridge.contracts.bodies import ROLES as ROLES
from ledger_bridge.contracts.bodies import UPLOADS_MAX
from ledger_bridge.contracts.state import SUBJECT_TABLES, State
from ledger_bridge.crypto import digest

SELF_ADMITTED_ROLES = ("subject",)  # residents; legal entities wait for governance
VOTING_MAX_MS = 90 * 24 * 3600 * 1000
DAY_MS = 24 * 3600 * 1000
MINUTE_MS = 60 * 1000

_NAME = re.compile(bodies.NAME_PATTERN)  # purposes, categories, colleges (the genesis too)


class Reject(Exception):
    """A rule refuses the transaction; the state is rolled back."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def error(code: str, message: str) -> dict[str, Any]:
    return {"ok": False, "code": code, "message": message}


# -- body validation ------------------------------------------------------------------------
#
# The shape of every body (types, patterns, bounds, required and unknown fields) is declared
# in bodies.py and checked by `apply` before the handler runs, so a handler reads fields it
# knows are there and well-typed; what is left to it is the rules, whose refusals that are not
# about who or what exists still use the code `invalid` (`_check`).


def _check(cond: bool, message: str) -> None:
    if not cond:
        raise Reject("invalid", message)


def _structure(tx: txmod.SignedTx) -> None:
    try:
        bodies.check(tx.type, tx.body)
    except bodies.BodyError as exc:
        raise Reject("invalid", str(exc)) from None


# -- the execution context ------------------------------------------------------------------


@dataclass
class Ctx:
    state: State
    tx: txmod.SignedTx
    height: int
    now: int
    tx_id: bytes
    index: int = 0  # the transaction's batch index in its block (`BlockContext.position`)
    forgets: list[str] = field(default_factory=list)  # subjects this transaction forgot

    def member(self, key: bytes) -> dict[str, Any] | None:
        m: dict[str, Any] | None = self.state.get("member", key)
        return m

    def active(self, key: bytes, *roles: str) -> dict[str, Any]:
        """The author (or named member) must be an admitted member with one of `roles`."""
        m = self.member(key)
        if m is None:
            raise Reject("not_member", "not a registered member")
        if m["status"] != "active":
            raise Reject("not_admitted", "membership not approved by governance")
        if roles and m["role"] not in roles:
            raise Reject("unauthorized", f"needs the role {' or '.join(roles)}")
        return m

    def next_id(self, counter: str) -> int:
        n: int = self.state.get("meta", counter) or 0
        self.state.put("meta", counter, n + 1)
        return n + 1

    def seq(self) -> int:
        s: int = self.state.get("meta", "seq")
        return s


def admit(
    state: State,
    key: bytes,
    role: str,
    college: str,
    height: int,
    seq: int,
    *,
    votes: bool = True,
) -> None:
    """Make `key` an active member (genesis, resident registration, governance admission).

    Membership and a vote are separate: a founder and a legal entity admitted by vote have
    both from `seq` on; a resident registered by their own key (`votes=False`) is a member at
    once but votes only once governance admits them to voting (`admit_voter`), because nothing
    on the ledger tells one resident's key from a thousand keys of one person.
    """
    old = state.get("member", key)
    state.put(
        "member",
        key,
        {
            "role": role,
            "college": college,
            "status": "active",
            "since": seq,
            "height": height,
            "votes_since": seq if votes else None,
        },
    )
    if old is None or old["status"] != "active":
        _bump(state, "college_count", college)
        if votes:
            _bump(state, "college_voters", college)


def _bump(state: State, table: str, college: str, by: int = 1) -> None:
    count: int = state.get(table, college) or 0
    state.put(table, college, count + by)


def mention(c: Ctx, subject: str) -> None:
    """Remember the batch position of this transaction under `subject` (hex), which it names
    or which authored it: forgetting the subject (`forget`) finds in this list every stored
    transaction to redact. A refused transaction records nothing; its body is never stored."""
    positions: list[list[int]] = c.state.get("mention", subject) or []
    at = [c.height, c.index]
    if at not in positions:
        c.state.put("mention", subject, [*positions, at])


# -- members and datasets -------------------------------------------------------------------


def member_register(c: Ctx) -> dict[str, Any]:
    body = c.tx.body
    role: str = body["role"]
    college: str = body["college"]
    colleges: list[str] = c.state.get("meta", "colleges")
    _check(college in colleges, "college is not one of the cooperative's colleges")
    if c.member(c.tx.author) is not None:
        raise Reject("exists", "this key is already registered")
    resident = c.state.get("meta", "resident_college")
    if role in SELF_ADMITTED_ROLES:
        _check(college == resident, f"residents belong to the {resident} college")
        admit(c.state, c.tx.author, role, college, c.height, c.seq(), votes=False)
        mention(c, c.tx.author.hex())
        return {"ok": True, "status": "active"}
    c.state.put(
        "member",
        c.tx.author,
        {
            "role": role,
            "college": college,
            "status": "pending",
            "since": c.seq(),
            "height": c.height,
            "votes_since": None,
        },
    )
    return {"ok": True, "status": "pending"}


def dataset_register(c: Ctx) -> dict[str, Any]:
    body = c.tx.body
    dataset: str = body["dataset"]
    owner: bytes = body["owner"]
    purposes: list[str] = body["purposes"]
    if c.tx.author != owner:
        c.active(c.tx.author, "vault")
    c.active(owner, "provider")
    for p in purposes:
        if not c.state.has("purpose", p):
            raise Reject("purpose_not_approved", f"purpose {p} is not approved by governance")
    if c.state.has("dataset", dataset):
        raise Reject("exists", f"dataset {dataset} is already registered")
    c.state.put(
        "dataset",
        dataset,
        {
            "owner": owner,
            "category": body["category"],
            "purposes": sorted(purposes),
            "retention_days": body["retention_days"],
            "legal_basis": body["legal_basis"],
            "height": c.height,
        },
    )
    return {"ok": True, "dataset": dataset}


def _dataset(c: Ctx, dataset: str) -> dict[str, Any]:
    d: dict[str, Any] | None = c.state.get("dataset", dataset)
    if d is None:
        raise Reject("not_found", f"dataset {dataset} is not registered")
    return d


def _owner_or_vault(c: Ctx, owner: bytes) -> None:
    if c.tx.author == owner:
        c.active(owner, "provider")
    else:
        c.active(c.tx.author, "vault")


def upload_anchor(c: Ctx) -> dict[str, Any]:
    body = c.tx.body
    upload: str = body["upload"]
    dataset_id: str = body["dataset"]
    day: int = body["retention_day"]
    dataset = _dataset(c, dataset_id)
    _owner_or_vault(c, dataset["owner"])
    if c.state.has("upload", upload):
        raise Reject("exists", f"upload {upload} is already anchored")
    c.state.put(
        "upload",
        upload,
        {
            "dataset": dataset_id,
            "record_count": body["record_count"],
            "merkle_root": body["merkle_root"],
            "key_commitments_root": body["key_commitments_root"],
            "key_commitment_count": body["key_commitment_count"],
            "retention_day": day,
            "deadline": (day + 1) * DAY_MS,
            "status": "anchored",
            "height": c.height,
        },
    )
    c.state.put("dataset_upload", dataset_id, upload, c.height)
    return {"ok": True, "upload": upload, "deadline": (day + 1) * DAY_MS}


# -- consent --------------------------------------------------------------------------------


def _scope_key(body: dict[str, Any]) -> str:
    """A consent's scope as its key names it (the body names exactly one of the two)."""
    if "dataset" in body:
        return f"dataset:{body['dataset']}"
    return f"category:{body['category']}"


def _subject_is_author(c: Ctx, body: dict[str, Any]) -> str:
    subject: str = body["subject"]
    if bytes.fromhex(subject) != c.tx.author:
        raise Reject("not_subject", "only the subject's own key may express the subject's will")
    c.active(c.tx.author, "subject")
    return subject


def version_at(entry: dict[str, Any] | None, height: int) -> list[Any] | None:
    """The version of a consent in force for a decision at `height` (written before it)."""
    if entry is None:
        return None
    cur: list[Any] = entry["cur"]
    if cur[0] < height:
        return cur
    prev: list[Any] | None = entry["prev"]
    return prev


def _write_version(c: Ctx, key: tuple[Any, ...], version: list[Any]) -> None:
    entry = c.state.get(*key)
    if entry is None:
        new = {"cur": version, "prev": None}
    elif entry["cur"][0] == c.height:  # changed twice in one block: the block's last word counts
        new = {"cur": version, "prev": entry["prev"]}
    else:
        new = {"cur": version, "prev": entry["cur"]}
    c.state.put(*key, new)


def consent_grant(c: Ctx) -> dict[str, Any]:
    body = c.tx.body
    subject = _subject_is_author(c, body)
    consumer: bytes = body["consumer"]
    purpose: str = body["purpose"]
    until: int = body["valid_until"]
    scope = _scope_key(body)
    dataset = _dataset(c, body["dataset"]) if "dataset" in body else None
    m = c.member(consumer)
    if m is None or m["role"] != "consumer":
        raise Reject("not_member", "the consumer is not a registered consumer")
    if not c.state.has("purpose", purpose):
        raise Reject("purpose_not_approved", f"purpose {purpose} is not approved by governance")
    if dataset is not None and purpose not in dataset["purposes"]:
        raise Reject("purpose_not_allowed", f"purpose {purpose} is not allowed for this dataset")
    _check(until > c.now, "valid_until must be in the future")
    bounds = disclosure.grant_terms(
        disclosure.terms(c.state, purpose), purpose, body.get("mode"), body.get("fields")
    )
    if isinstance(bounds, disclosure.Refusal):
        raise Reject(bounds.code, bounds.message)
    mode, fields = bounds
    key = ("consent", subject, consumer, scope, purpose)
    # [height written, valid_until, granted, mode, fields]; mode and fields None: the
    # consent follows its purpose's declaration (disclosure.consent_terms)
    _write_version(c, key, [c.height, until, True, mode, fields])
    mention(c, subject)
    return {
        "ok": True,
        "effective_from_height": c.height + 1,
        "valid_until": until,
        "mode": mode,
        "fields": fields,
    }


def consent_revoke(c: Ctx) -> dict[str, Any]:
    body = c.tx.body
    subject = _subject_is_author(c, body)
    key = ("consent", subject, body["consumer"], _scope_key(body), body["purpose"])
    entry = c.state.get(*key)
    if entry is None or not entry["cur"][2]:
        raise Reject("not_found", "no consent in force to revoke")
    _write_version(c, key, [c.height, entry["cur"][1], False, *entry["cur"][3:]])
    mention(c, subject)
    return {"ok": True, "effective_from_height": c.height + 1}


def consent_in_force(
    state: State, subject: str, consumer: bytes, scope: str, purpose: str, height: int, now: int
) -> list[Any] | None:
    """The consent version in force for a decision at `height` (its mode and fields say what
    it allows), or None."""
    # The index answers "no such consent" (the usual case for one of an access's two scopes)
    # without a lookup.
    if not state.in_group(
        "consent", "by_consumer_purpose", (consumer, purpose), (subject, consumer, scope, purpose)
    ):
        return None
    v = version_at(state.get("consent", subject, consumer, scope, purpose), height)
    return v if v is not None and bool(v[2]) and now < v[1] else None


def erased_before(state: State, subject: str, dataset: str, height: int) -> bool:
    """Whether an access at `height` must refuse `subject` in `dataset` as erased: erased in
    that dataset in an earlier block, or forgotten earlier in this very block (a forgotten
    subject is otherwise unknown: after its block nothing says it was ever erased)."""
    if subject in state.forgotten:
        return True
    if state.in_group("erased_subject_dataset", "by_subject", (subject,), (subject, dataset)):
        h = state.get("erased_subject_dataset", subject, dataset)
        if h is not None and h < height:
            return True
    return False


# -- access ---------------------------------------------------------------------------------


def access_request(c: Ctx) -> dict[str, Any]:
    body = c.tx.body
    consumer: bytes = body["consumer"]
    dataset_id: str = body["dataset"]
    purpose: str = body["purpose"]
    subjects: list[str] | None = body.get("subjects")
    if c.tx.author != consumer:
        c.active(c.tx.author, "vault")
    c.active(consumer, "consumer")
    dataset = _dataset(c, dataset_id)
    if purpose not in dataset["purposes"]:
        raise Reject("purpose_not_allowed", f"purpose {purpose} is not allowed for this dataset")
    if not c.state.has("purpose", purpose):
        raise Reject("purpose_not_approved", f"purpose {purpose} is no longer approved")
    terms = disclosure.terms(c.state, purpose)
    ask = _ask(body, terms, purpose)
    if subjects is not None:
        _named_are_members(c, subjects)

    scopes = (f"dataset:{dataset_id}", f"category:{dataset['category']}")
    granted: list[str] = []
    denied: list[list[str]] = []
    for s in _candidates(c, scopes, subjects):
        reason = _refusal_for(c, s, dataset_id, scopes, terms, ask)
        if reason is None:
            granted.append(s)
        else:
            denied.append([s, reason])
    if subjects is None:
        denied = []  # an open request names nobody it was refused
    uploads = [
        k[1]
        for k in c.state.group("dataset_upload", "dataset", dataset_id)
        if _live(c.state.get("upload", k[1]), c.now)
    ][:UPLOADS_MAX]
    access_id = c.next_id("next_access")
    c.state.put(
        "access",
        access_id,
        {
            "consumer": consumer,
            "author": c.tx.author,
            "dataset": dataset_id,
            "purpose": purpose,
            "granted": granted,
            "denied": len(denied),
            # the named subjects it refused: forgetting one finds this access by them too
            "denied_subjects": [d[0] for d in denied],
            "fields": body.get("fields", []),
            "predicate": body.get("predicate"),
            "reference": body.get("reference"),
            "height": c.height,
            "at": [c.height, c.index],  # its batch position, redacted if a subject is forgotten
            "time": c.now,
            "tx": c.tx_id,
        },
    )
    # the access log by subject and by consumer is the state's index over this entry's value
    return {
        "ok": True,
        "access": access_id,
        "granted": granted,
        "denied": denied,
        "uploads": uploads,
        "as_of": c.now,
    }


def _named_are_members(c: Ctx, subjects: list[str]) -> None:
    """An access names only keys the ledger knows as members. Why: a refused transaction
    leaves only its digest in its block, so a consumer that kept the pseudonym of a subject
    forgotten everywhere cannot make the chain name it again by asking about it; and a key
    that never registered has no consent to find anyway."""
    unknown = sum(1 for s in subjects if c.member(bytes.fromhex(s)) is None)
    if unknown:
        raise Reject(
            "unknown_subject",
            f"{unknown} named subject(s) are not members (never registered, or forgotten by "
            "an erasure everywhere)",
        )


def _candidates(c: Ctx, scopes: tuple[str, str], subjects: list[str] | None) -> list[str]:
    """The subjects an access is decided for: those it names, or (an open request) every
    subject with a consent to this consumer and purpose in either scope."""
    if subjects is not None:
        return subjects
    consumer: bytes = c.tx.body["consumer"]
    purpose: str = c.tx.body["purpose"]
    return sorted(
        {
            k[0]
            for k in c.state.group("consent", "by_consumer_purpose", consumer, purpose)
            if k[2] in scopes
        }
    )


def _ask(body: dict[str, Any], terms: dict[str, Any], purpose: str) -> disclosure.Ask:
    """What the access asks for, refused whole if the purpose cannot allow it."""
    ask = disclosure.ask_of(body)
    if ask.op is not None:
        _check("fields" not in body, "a predicate answer discloses no fields")
        subjects = body.get("subjects")
        _check(
            subjects is not None and len(subjects) == 1,
            "a predicate is asked about exactly one subject",
        )
    beyond = disclosure.beyond_purpose(terms, purpose, ask)
    if beyond is not None:
        raise Reject("exceeds_purpose", beyond)
    return ask


def _refusal_for(
    c: Ctx,
    subject: str,
    dataset: str,
    scopes: tuple[str, str],
    terms: dict[str, Any],
    ask: disclosure.Ask,
) -> str | None:
    """Why `subject` is denied to this access (erased, no_consent, exceeds_consent,
    budget_exhausted), or None, spending a predicate question when granted."""
    if erased_before(c.state, subject, dataset, c.height):
        return "erased"
    consumer: bytes = c.tx.body["consumer"]
    purpose: str = c.tx.body["purpose"]
    versions = [
        v
        for sc in scopes
        if (v := consent_in_force(c.state, subject, consumer, sc, purpose, c.height, c.now))
    ]
    if not versions:
        return "no_consent"
    if not any(disclosure.allows(v, terms, ask) for v in versions):
        return "exceeds_consent"
    if ask.op is not None and not disclosure.spend_question(
        c.state, subject, consumer, purpose, terms, c.now
    ):
        return "budget_exhausted"
    return None


def _live(upload: dict[str, Any] | None, now: int) -> bool:
    return upload is not None and upload["status"] == "anchored" and now < upload["deadline"]


# -- erasure and retention ------------------------------------------------------------------


def _erasure_scope(c: Ctx, scope: dict[str, Any]) -> dict[str, Any]:
    if scope["kind"] == "subject":
        out: dict[str, Any] = {"kind": "subject", "subject": scope["subject"]}
        if "dataset" in scope:
            out["dataset"] = scope["dataset"]
            _dataset(c, out["dataset"])
        return out
    upload: str = scope["upload"]
    if not c.state.has("upload", upload):
        raise Reject("not_found", f"upload {upload} is not anchored")
    return {"kind": "upload", "upload": upload}


def erasure_request(c: Ctx) -> dict[str, Any]:
    # The body's scope is a subject's (bodies.py): a subject asks about their own data only.
    scope = _erasure_scope(c, c.tx.body["scope"])
    _subject_is_author(c, scope)
    request = c.next_id("next_erasure_request")
    c.state.put(
        "erasure_request",
        request,
        {"scope": scope, "height": c.height, "time": c.now, "status": "open"},
    )
    c.state.put("erasure_request_open", request, c.height)
    mention(c, scope["subject"])
    return {"ok": True, "request": request}


def _upload_refs(c: Ctx, raw: list[dict[str, Any]]) -> list[dict[str, Any]]:
    refs = []
    for u in raw:
        upload: str = u["upload"]
        anchored = c.state.get("upload", upload)
        if anchored is None:
            raise Reject("not_found", f"upload {upload} is not anchored")
        if u["key_commitments_root"] != anchored["key_commitments_root"]:
            raise Reject(
                "mismatch", f"upload {upload}: key commitments root differs from its anchor"
            )
        refs.append(
            {
                "upload": upload,
                "key_commitments_root": anchored["key_commitments_root"],
                "key_commitment_count": anchored["key_commitment_count"],
            }
        )
    return refs


def _fulfil_request(c: Ctx, request: int, scope: dict[str, Any]) -> None:
    req = c.state.get("erasure_request", request)
    if req is None:
        raise Reject("not_found", f"no erasure request {request}")
    if req["status"] != "open":
        raise Reject("duplicate", f"erasure request {request} is already fulfilled")
    if req["scope"] != scope:
        raise Reject("mismatch", "the scope differs from the subject's request")
    req["status"] = "done"
    c.state.put("erasure_request", request, req)
    c.state.delete("erasure_request_open", request)


def erasure_record(c: Ctx) -> dict[str, Any]:
    """Record an erasure. Of a subject with no dataset ("everywhere"), it also forgets the
    subject (`forget`): the stored entry keeps the scope's kind, the key commitments, the
    uploads, the reason and the tx id, and neither it nor the result names the subject."""
    body = c.tx.body
    c.active(c.tx.author, "vault", "dpo")
    scope = _erasure_scope(c, body["scope"])
    everywhere = scope["kind"] == "subject" and "dataset" not in scope
    if everywhere:
        m = c.member(bytes.fromhex(scope["subject"]))
        if m is not None and m["role"] != "subject":
            raise Reject("invalid", "only a subject's key is forgotten; this one has a role")
    commitments: list[bytes] = body["key_commitments"]
    uploads = _upload_refs(c, body["uploads"])
    request: int | None = body.get("request")
    if request is not None:
        _fulfil_request(c, request, scope)
    if scope["kind"] == "upload":
        _check(
            [u["upload"] for u in uploads] == [scope["upload"]],
            "an upload erasure names that upload",
        )
    for u in uploads:
        anchored = c.state.get("upload", u["upload"])
        anchored["status"] = "erased"
        c.state.put("upload", u["upload"], anchored)
    if scope["kind"] == "subject":
        mention(c, scope["subject"])
    if scope["kind"] == "subject" and not everywhere:
        key = ("erased_subject_dataset", scope["subject"], scope["dataset"])
        if c.state.get(*key) is None:
            c.state.put(*key, c.height)
    erasure = c.next_id("next_erasure")
    c.state.put(
        "erasure",
        erasure,
        {
            "kind": "erasure",
            "scope": {"kind": "subject"} if everywhere else scope,
            "key_commitments": commitments,
            "uploads": uploads,
            "reason": body["reason"],
            "requester": body["requester"],
            "request": request,
            "author": c.tx.author,
            "height": c.height,
            "time": c.now,
            "tx": c.tx_id,
        },
    )
    result = {"ok": True, "erasure": erasure, "effective_from_height": c.height + 1}
    if everywhere:  # `{"q": "redactions"}` lists what it redacted
        forget(c.state, scope["subject"], c.height)
        c.forgets.append(scope["subject"])
        result["forgotten"] = True
    return result


# -- forgetting a subject ---------------------------------------------------------------------
#
# docs/CONTRACTS.md "Forgetting": after an erasure everywhere, no state entry names the
# subject (their key raw or hex), and the redaction entries tell the replicas which stored
# transactions to blank. Everything here is found through indexes, so forgetting costs what
# the subject left behind, not the size of the state.


def forget(state: State, subject: str, since: int) -> int:
    """Forget `subject` (hex) in the block at height `since`: append a redaction entry for
    every stored transaction that names them, then delete or rewrite every entry naming them.
    Idempotent: a second call finds only what was written since. Returns how many positions
    it added to the redaction entries."""
    key = bytes.fromhex(subject)
    accesses = [k[0] for k in state.group("access", "subject", subject)]
    positions = {(h, i) for h, i in state.get("mention", subject) or []}
    positions |= {tuple(state.get("access", a)["at"]) for a in accesses}
    redacted = _redact(state, sorted(positions), since)
    member = state.get("member", key)
    if member is not None:
        state.delete("member", key)
        if member["status"] == "active":
            _bump(state, "college_count", member["college"], -1)
            if member["votes_since"] is not None:
                _bump(state, "college_voters", member["college"], -1)
    for table in SUBJECT_TABLES:
        for k in state.group(table, "by_subject", subject):
            state.delete(table, *k)
    for a in accesses:
        _forget_in_access(state, a, subject)
    for table in ("erasure", "erasure_request"):
        for (n,) in state.group(table, "subject", subject):
            _forget_in_erasure(state, table, n)
    _forget_in_governance(state, key)
    return redacted


def _redact(state: State, positions: list[tuple[int, int]], since: int) -> int:
    """Append ("redaction", n) -> [height, index, since] for each position not yet redacted
    (a position names several forgotten subjects at most once)."""
    done: dict[int, set[int]] = {}
    added = 0
    for h, i in positions:
        if h not in done:
            found = state.group("redaction", "height", h)
            done[h] = {state.get("redaction", n)[1] for (n,) in found}
        if i in done[h]:
            continue
        done[h].add(i)
        n: int = (state.get("meta", "next_redaction") or 0) + 1
        state.put("meta", "next_redaction", n)
        state.put("redaction", n, [h, i, since])
        added += 1
    return added


def _forget_in_access(state: State, access: int, subject: str) -> None:
    """The access stays in the log for the other subjects it named; `forgotten` counts the
    subjects since taken out of it."""
    a = state.get("access", access)
    named = subject in a["granted"] or subject in a["denied_subjects"]
    if subject in a["denied_subjects"]:
        a["denied_subjects"] = [s for s in a["denied_subjects"] if s != subject]
        a["denied"] -= 1
    a["granted"] = [s for s in a["granted"] if s != subject]
    if isinstance(a["reference"], str) and a["reference"].lower() == subject:
        a["reference"] = None  # the consumer filed it under the subject's key
    if named:
        a["forgotten"] = a.get("forgotten", 0) + 1
    state.put("access", access, a)


def _forget_in_erasure(state: State, table: str, n: int) -> None:
    """An erasure (in a dataset) or an erasure request keeps its scope without the subject; a
    request still open is done, the erasure everywhere covering it."""
    e = state.get(table, n)
    e["scope"] = {k: v for k, v in e["scope"].items() if k != "subject"}
    if table == "erasure_request" and e["status"] == "open":
        e["status"] = "done"
        state.delete("erasure_request_open", n)
    state.put(table, n, e)


def _forget_in_governance(state: State, key: bytes) -> None:
    """Votes the subject cast go (the tallies keep them); a proposal they made keeps no
    author; a proposal naming them keeps its kind and, if still open, is withdrawn."""
    for pid, voter in state.group("vote", "by_voter", key):
        state.delete("vote", pid, voter)
    for (pid,) in state.group("proposal", "key", key):
        p = state.get("proposal", pid)
        if p["author"] == key:
            p["author"] = None
        if p["action"].get("member") == key:
            p["action"] = {k: v for k, v in p["action"].items() if k != "member"}
            if p["status"] == "open":
                p["status"] = "withdrawn"
        state.put("proposal", pid, p)


def retention_expire(c: Ctx) -> dict[str, Any]:
    body = c.tx.body
    c.active(c.tx.author, "vault", "dpo")
    dataset_id: str = body["dataset"]
    day: int = body["day"]
    _dataset(c, dataset_id)
    if (day + 1) * DAY_MS > c.now:
        raise Reject("too_early", "the retention day has not passed yet")
    if c.state.has("expired_epoch", dataset_id, day):
        raise Reject("duplicate", "this retention epoch is already recorded as expired")
    uploads = _upload_refs(c, body["uploads"])
    commitments: list[bytes] = body.get("key_commitments", [])
    for u in uploads:
        anchored = c.state.get("upload", u["upload"])
        if anchored["dataset"] != dataset_id or anchored["retention_day"] != day:
            raise Reject("mismatch", f"upload {u['upload']} is not in this retention epoch")
        if anchored["status"] == "anchored":
            anchored["status"] = "expired"
            c.state.put("upload", u["upload"], anchored)
    c.state.put("expired_epoch", dataset_id, day, c.height)
    erasure = c.next_id("next_erasure")
    c.state.put(
        "erasure",
        erasure,
        {
            "kind": "retention",
            "scope": {"kind": "epoch", "dataset": dataset_id, "day": day},
            "key_commitments": commitments,
            "uploads": uploads,
            "reason": "retention_expired",
            "requester": "vault",
            "request": None,
            "author": c.tx.author,
            "height": c.height,
            "time": c.now,
            "tx": c.tx_id,
        },
    )
    return {"ok": True, "erasure": erasure}


# -- governance -----------------------------------------------------------------------------
#
# One college, one vote; inside each college, a majority of its VOTING members as they stood
# when the proposal was made (docs/CONTRACTS.md "Governance"). Voting members are the founders,
# the legal entities admitted by vote, and the residents governance admitted to voting: every
# one of them entered by a decision somebody is accountable for, so no number of fresh keys can
# hold a college's majority out of reach or make one.


def _voter(c: Ctx) -> dict[str, Any]:
    """The author must be an active member with a vote."""
    m = c.active(c.tx.author)
    if m["votes_since"] is None:
        raise Reject("not_eligible", "a resident votes once governance admits them to voting")
    return m


def _check_admit_member(c: Ctx, action: dict[str, Any]) -> dict[str, Any]:
    m = c.member(action["member"])
    if m is None or m["status"] != "pending":
        raise Reject("not_found", "no pending membership application for this key")
    return {"member": action["member"]}


def _enact_admit_member(c: Ctx, action: dict[str, Any]) -> None:
    m = c.member(action["member"])
    if m is None or m["status"] != "pending":
        raise Reject("not_found", "the application is no longer pending")
    admit(c.state, action["member"], m["role"], m["college"], c.height, c.seq())


def _resident_without_vote(m: dict[str, Any]) -> bool:
    return m["status"] == "active" and m["role"] in SELF_ADMITTED_ROLES and m["votes_since"] is None


def _check_admit_voter(c: Ctx, action: dict[str, Any]) -> dict[str, Any]:
    m = c.member(action["member"])
    if m is None or not _resident_without_vote(m):
        raise Reject("not_found", "no resident without a vote holds this key")
    return {"member": action["member"]}


def _enact_admit_voter(c: Ctx, action: dict[str, Any]) -> None:
    # Two open proposals may name the same resident; the second to pass has nothing to add.
    m = c.member(action["member"])
    if m is None or not _resident_without_vote(m):
        return
    m["votes_since"] = c.seq()
    c.state.put("member", action["member"], m)
    _bump(c.state, "college_voters", m["college"])


def _check_approve_purpose(c: Ctx, action: dict[str, Any]) -> dict[str, Any]:
    """A new purpose, with or without its declaration; or the declaration of a purpose
    approved without one (a founding name, an older chain's): declared once, never changed,
    so a consent given under a declaration keeps meaning what it meant."""
    purpose: str = action["purpose"]
    raw: dict[str, Any] | None = action.get("declaration")
    if c.state.has("purpose", purpose) and (
        raw is None or disclosure.terms(c.state, purpose)["declared"]
    ):
        raise Reject("exists", f"purpose {purpose} is already approved")
    if raw is None:
        return {"purpose": purpose}
    try:
        declared = disclosure.declaration(raw)
    except ValueError as exc:
        raise Reject("invalid", str(exc)) from None
    declared.pop("declared")
    return {"purpose": purpose, "declaration": declared}


def _enact_approve_purpose(c: Ctx, action: dict[str, Any]) -> None:
    purpose: str = action["purpose"]
    if not c.state.has("purpose", purpose):
        c.state.put("purpose", purpose, c.height)
    raw: dict[str, Any] | None = action.get("declaration")
    # Two open proposals may declare the same purpose; the first to pass is its declaration.
    if raw is not None and not disclosure.terms(c.state, purpose)["declared"]:
        c.state.put("purpose_terms", purpose, disclosure.declaration(raw))


def _check_set_retention(c: Ctx, action: dict[str, Any]) -> dict[str, Any]:
    dataset: str = action["dataset"]
    _dataset(c, dataset)
    return {"dataset": dataset, "retention_days": action["retention_days"]}


def _enact_set_retention(c: Ctx, action: dict[str, Any]) -> None:
    d = _dataset(c, action["dataset"])
    d["retention_days"] = action["retention_days"]
    c.state.put("dataset", action["dataset"], d)


def _validator_row(r: dict[str, Any], colleges: list[str]) -> dict[str, Any]:
    _check(r["college"] in colleges, "a validator's college is unknown")
    return {"public_key": r["public_key"], "college": r["college"], "address": r["address"]}


def _check_set_validators(c: Ctx, action: dict[str, Any]) -> dict[str, Any]:
    rows: list[dict[str, Any]] = action["validators"]
    _check(len(rows) >= 4 and (len(rows) - 1) % 3 == 0, "a validator set has 3f+1 members, f >= 1")
    colleges: list[str] = c.state.get("meta", "colleges")
    out = [_validator_row(r, colleges) for r in rows]
    _check(len({r["public_key"] for r in out}) == len(out), "validator keys must be distinct")
    return {"validators": out}


def _enact_set_validators(c: Ctx, action: dict[str, Any]) -> None:
    # Recorded for the operators: replicas adopt a new validator set by a new genesis epoch
    # (docs/LEDGER-OPERATIONS.md), never by reconfiguring a running cluster.
    c.state.put("meta", "validators", action["validators"])


# kind -> (check the proposed action and return its canonical fields, enact it once passed)
ACTIONS: dict[
    str,
    tuple[Callable[[Ctx, dict[str, Any]], dict[str, Any]], Callable[[Ctx, dict[str, Any]], None]],
] = {
    "admit_member": (_check_admit_member, _enact_admit_member),
    "admit_voter": (_check_admit_voter, _enact_admit_voter),
    "approve_purpose": (_check_approve_purpose, _enact_approve_purpose),
    "set_retention": (_check_set_retention, _enact_set_retention),
    "set_validators": (_check_set_validators, _enact_set_validators),
}


def _mention_resident(c: Ctx, key: bytes | None) -> None:
    """A governance transaction authored by a resident, or naming one, is theirs to forget."""
    m = None if key is None else c.member(key)
    if key is not None and m is not None and m["role"] in SELF_ADMITTED_ROLES:
        mention(c, key.hex())


def _action(c: Ctx, action: dict[str, Any]) -> dict[str, Any]:
    kind: str = action["kind"]
    check, _ = ACTIONS[kind]
    return {"kind": kind, **check(c, action)}


def governance_propose(c: Ctx) -> dict[str, Any]:
    body = c.tx.body
    author = _voter(c)
    action = _action(c, body["action"])
    ends: int = body["voting_ends"]
    _check(c.now < ends <= c.now + VOTING_MAX_MS, "voting_ends must be within 90 days from now")
    colleges: list[str] = c.state.get("meta", "colleges")
    # The voting members each college decides by, fixed now: admissions during the vote change
    # neither the majorities nor who votes (`governance_vote` checks `votes_since`).
    counts = {col: c.state.get("college_voters", col) or 0 for col in colleges}
    empty = [col for col, n in counts.items() if n == 0]
    if empty:
        raise Reject("college_empty", f"college {empty[0]} has no voting member")
    proposal = c.next_id("next_proposal")
    c.state.put(
        "proposal",
        proposal,
        {
            "author": c.tx.author,
            "author_college": author["college"],
            "action": action,
            "seq": c.seq(),
            "height": c.height,
            "ends": ends,
            "members": counts,
            "yes": {col: 0 for col in colleges},
            "no": {col: 0 for col in colleges},
            "status": "open",
        },
    )
    for key in (c.tx.author, action.get("member")):
        _mention_resident(c, key)
    return {"ok": True, "proposal": proposal}


def governance_vote(c: Ctx) -> dict[str, Any]:
    body = c.tx.body
    pid: int = body["proposal"]
    approve: bool = body["approve"]
    voter = _voter(c)
    p = c.state.get("proposal", pid)
    if p is None:
        raise Reject("not_found", f"no proposal {pid}")
    if p["status"] != "open" or c.now > p["ends"]:
        raise Reject("closed", f"proposal {pid} is no longer open")
    if voter["votes_since"] >= p["seq"]:
        raise Reject("not_eligible", "members given a vote after the proposal do not vote on it")
    if c.state.has("vote", pid, c.tx.author):
        raise Reject("duplicate", "this member has already voted on this proposal")
    c.state.put("vote", pid, c.tx.author, approve)
    _mention_resident(c, c.tx.author)
    col = voter["college"]
    p["yes" if approve else "no"][col] += 1
    members = p["members"]
    if all(2 * p["yes"][k] > n for k, n in members.items()):
        p["status"] = "passed"
        _enact(c, p["action"])
    elif any(2 * p["no"][k] >= n for k, n in members.items()):
        p["status"] = "rejected"
    c.state.put("proposal", pid, p)
    return {"ok": True, "proposal": pid, "status": p["status"]}


def _enact(c: Ctx, action: dict[str, Any]) -> None:
    _, enact = ACTIONS[action["kind"]]
    enact(c, action)


HANDLERS: dict[str, Callable[[Ctx], dict[str, Any]]] = {
    "member.register": member_register,
    "dataset.register": dataset_register,
    "upload.anchor": upload_anchor,
    "consent.grant": consent_grant,
    "consent.revoke": consent_revoke,
    "access.request": access_request,
    "erasure.request": erasure_request,
    "erasure.record": erasure_record,
    "retention.expire": retention_expire,
    "governance.propose": governance_propose,
    "governance.vote": governance_vote,
}


# -- blocks and transactions ----------------------------------------------------------------


def begin_block(state: State, block: BlockContext) -> None:
    """Advance the contracts' clock and forget nonces whose transactions can no longer run."""
    prev_now: int = state.get("meta", "now") or 0
    now = max(prev_now, block.time_ms)
    state.put("meta", "now", now)
    state.put("meta", "height", block.height)
    minute = now // MINUTE_MS
    pruned: int | None = state.get("meta", "pruned_minute")
    start = minute if pruned is None else pruned
    for m in range(start, minute):
        for _, spent in state.group("nonce_expiry", "minute", m):
            state.delete("nonce_expiry", m, spent)
            state.delete("nonce", spent)
    state.put("meta", "pruned_minute", minute)
    state.forgotten.clear()


def nonce_id(author: bytes, nonce: bytes) -> bytes:
    """The key a spent nonce is remembered by: SHA-256(author || nonce). Why not the author in
    clear: the entry outlives an erasure by up to the transaction's validity, so it must not
    name the author, yet must still refuse the same transaction replayed (docs/CONTRACTS.md
    "Transactions"). The nonce is random, so the digest tells nothing of the author either."""
    return digest(author + nonce)


def apply(state: State, raw: bytes, chain_id: str, index: int = 0) -> dict[str, Any]:
    """Apply one transaction to `state` (after `begin_block`); return its result. `index` is
    its batch position in the block (`BlockContext.position`)."""
    try:
        tx = txmod.decode(raw)
    except txmod.MalformedTx as exc:
        return error("malformed", str(exc))
    if not tx.verify(chain_id):
        return error("bad_signature", "the signature does not verify for this author and chain")
    now: int = state.get("meta", "now")
    height: int = state.get("meta", "height")
    if tx.valid_until < now:
        return error("expired", "valid_until has passed")
    if tx.valid_until > now + txmod.TTL_MAX_MS:
        return error("ttl_too_long", "valid_until is more than one hour ahead")
    spent = nonce_id(tx.author, tx.nonce)
    if state.has("nonce", spent):
        return error("replayed", "this author already used this nonce")
    state.mark()
    # What the nonce bought, so an author who lost a receipt can find it (`q: nonce`).
    state.put("nonce", spent, {"height": height, "tx": tx.tx_id})
    state.put("nonce_expiry", tx.valid_until // MINUTE_MS, spent, 0)
    seq: int = state.get("meta", "seq")
    state.put("meta", "seq", seq + 1)
    ctx = Ctx(state, tx, height, now, tx.tx_id, index)
    try:
        _structure(tx)
        result = HANDLERS[tx.type](ctx)
        # A subject forgotten earlier in this block is forgotten again with whatever this
        # transaction wrote about them (an access naming them, a registration of their key):
        # the whole block forgets them, whatever the order the primary chose.
        for subject in sorted(state.forgotten):
            forget(state, subject, height)
    except Reject as r:
        return _refused(state, tx, height, r.code, r.message)
    except Exception:  # a rule bug must not fork the replicas: every replica refuses alike
        return _refused(
            state, tx, height, "internal", "the contract could not apply this transaction"
        )
    state.commit()
    state.forgotten.update(ctx.forgets)
    result["tx"] = tx.tx_id
    return result


def _refused(
    state: State, tx: txmod.SignedTx, height: int, code: str, message: str
) -> dict[str, Any]:
    """Undo what the handler did, but burn the nonce: a refused transaction, signed by its
    author, must not execute later when the condition that refused it has changed (a consent
    granted meanwhile, a member admitted), so it cannot be held back and replayed within its
    validity. The nonce record says it was refused and why, for an author who asks."""
    state.rollback()
    spent = nonce_id(tx.author, tx.nonce)
    state.put("nonce", spent, {"height": height, "tx": tx.tx_id, "refused": code})
    state.put("nonce_expiry", tx.valid_until // MINUTE_MS, spent, 0)
    return error(code, message)
