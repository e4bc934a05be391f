"""Access: a consumer (or the vault on its behalf) asks for a dataset's records for a purpose,
about named subjects or (an open request) every subject who consented. Three steps, each its
own function: `_parse` reads and checks the request (refusing it whole, a price the consumer
did not agree to or cannot pay too), `_decide` grants or denies each subject, `_record` writes
the access to the log, charges its price if it granted anyone (rules.fees: no answer without
payment, no payment without an answer) and answers.

An access reads consents, erasures, restrictions and objections as they stood at the end of
the previous block (`consent.version_at`, `erased_before`, `restriction.stopped_before`): the
primary orders the transactions inside a block, and it must not be able to decide whether an
access lands just before or just after a revocation, an erasure or a restriction.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ledger_bridge.contracts import disclosure
from ledger_bridge.contracts.bodies import UPLOADS_MAX
from ledger_bridge.contracts.rules import fees
from ledger_bridge.contracts.rules.common import (
    Ctx,
    Reject,
    approved_purpose,
    check,
    dataset_of,
)
from ledger_bridge.contracts.rules.views import synced
from ledger_bridge.contracts.state import State


@dataclass(frozen=True)
class Request:
    """An access request as `_parse` accepted it."""

    consumer: bytes
    dataset_id: str
    category: str
    purpose: str
    subjects: list[str] | None  # None: an open request
    terms: dict[str, Any]  # the purpose's declaration (disclosure.terms)
    ask: disclosure.Ask
    provider: bytes  # the dataset's owner, paid for the answer
    price_cents: int  # what the answer costs (0: free), as the consumer agreed
    # The consumer's key and those governance moved its membership from (rotate_member_key),
    # newest first: a consent given to the member under an earlier key still counts.
    consumer_keys: tuple[bytes, ...]

    def scopes(self) -> tuple[str, str]:
        """The two scopes a consent to this access may have been given in."""
        return (f"dataset:{self.dataset_id}", f"category:{self.category}")


def access_request(c: Ctx) -> dict[str, Any]:
    request = _parse(c)
    granted, denied = _decide(c, request)
    return _record(c, request, granted, denied)


def _parse(c: Ctx) -> Request:
    """Who may ask, for what: refuses the whole request, or returns it checked."""
    body = c.tx.body
    consumer: bytes = body["consumer"]
    dataset_id: str = body["dataset"]
    purpose: str = body["purpose"]
    subjects: list[str] | None = body.get("subjects")
    if c.tx.author != consumer:
        c.active(c.tx.author, "vault")
    member = c.active(consumer, "consumer")
    dataset = dataset_of(c, dataset_id)
    if purpose not in dataset["purposes"]:
        raise Reject("purpose_not_allowed", f"purpose {purpose} is not allowed for this dataset")
    approved_purpose(c, purpose)
    terms = disclosure.terms(c.state, purpose)
    ask = _ask(body, terms, purpose)
    if subjects is not None:
        _named_are_members(c, subjects)
    price = fees.price_due(c, consumer, dataset_id, ask.mode, body.get("price_cents"))
    return Request(
        consumer,
        dataset_id,
        dataset["category"],
        purpose,
        subjects,
        terms,
        ask,
        dataset["owner"],
        price,
        (consumer, *reversed(member.get("keys_before", []))),
    )


def _decide(c: Ctx, request: Request) -> tuple[list[str], list[list[str]]]:
    """The subjects granted, and the named subjects denied with why ([subject, reason]), read
    off the sets of `views` as they stood at the end of the previous block. A predicate
    question granted is spent here."""
    views = synced(c.state, c.height)
    groups = [(k, sc, request.purpose) for k in request.consumer_keys for sc in request.scopes()]
    consented, allowed = views.consenting(
        groups, c.now, lambda v: disclosure.allows(v, request.terms, request.ask)
    )
    erased = views.erased.get(request.dataset_id, set())
    stopped = views.stopped.get(request.dataset_id, {})
    if request.subjects is None:  # an open request names nobody it was refused
        return sorted(allowed - erased - stopped.keys() - c.state.forgotten), []
    granted: list[str] = []
    denied: list[list[str]] = []
    for s in request.subjects:
        if s in erased or s in c.state.forgotten:
            reason: str | None = "erased"
        else:
            reason = stopped.get(s)
        if reason is None and s not in allowed:
            reason = "exceeds_consent" if s in consented else "no_consent"
        if (
            reason is None
            and request.ask.op is not None
            and not disclosure.spend_question(
                c.state, s, request.consumer, request.purpose, request.terms, c.now
            )
        ):
            reason = "budget_exhausted"
        if reason is None:
            granted.append(s)
        else:
            denied.append([s, reason])
    return granted, denied


def _record(
    c: Ctx, request: Request, granted: list[str], denied: list[list[str]]
) -> dict[str, Any]:
    """Write the access to the log and answer with what it may read."""
    body = c.tx.body
    uploads = [
        k[1]
        for k in c.state.group("dataset_upload", "dataset", request.dataset_id)
        if _live(c.state.get("upload", k[1]), c.now)
    ][:UPLOADS_MAX]
    access_id = c.next_id("next_access")
    c.state.put(
        "access",
        access_id,
        {
            "consumer": request.consumer,
            "author": c.tx.author,
            "dataset": request.dataset_id,
            "purpose": request.purpose,
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
    charged = 0
    if granted and request.price_cents:
        charged = fees.charge(
            c,
            request.consumer,
            request.provider,
            request.dataset_id,
            access_id,
            request.price_cents,
        )
    return {
        "ok": True,
        "access": access_id,
        "granted": granted,
        "denied": denied,
        "uploads": uploads,
        "as_of": c.now,
        "charged_cents": charged,
    }


def _named_are_members(c: Ctx, subjects: list[str]) -> None:
    """An access names only keys the ledger knows as members. Why: a refused transaction
    leaves only its digest in its block, so a consumer that kept the pseudonym of a subject
    forgotten everywhere cannot make the chain name it again by asking about it; and a key
    that never registered has no consent to find anyway."""
    members = c.state.in_group
    unknown = sum(1 for s in subjects if not members("member", "all", (), (bytes.fromhex(s),)))
    if unknown:
        raise Reject(
            "unknown_subject",
            f"{unknown} named subject(s) are not members (never registered, or forgotten by "
            "an erasure everywhere)",
        )


def _ask(body: dict[str, Any], terms: dict[str, Any], purpose: str) -> disclosure.Ask:
    """What the access asks for, refused whole if the purpose cannot allow it."""
    ask = disclosure.ask_of(body)
    if ask.op is not None:
        check("fields" not in body, "a predicate answer discloses no fields")
        subjects = body.get("subjects")
        check(
            subjects is not None and len(subjects) == 1,
            "a predicate is asked about exactly one subject",
        )
    beyond = disclosure.beyond_purpose(terms, purpose, ask)
    if beyond is not None:
        raise Reject("exceeds_purpose", beyond)
    return ask


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


def _live(upload: dict[str, Any] | None, now: int) -> bool:
    return upload is not None and upload["status"] == "anchored" and now < upload["deadline"]
