"""A plain-Python reference model of the consent contracts, written from the specification.

It shares no code with `ledger_bridge.contracts.rules` on purpose: where the rules keep two
versions of a consent (current and previous, tagged with heights) the model keeps the whole
history of writes and looks the answer up; where the rules index keys in the state, the model
scans dicts. Two independent readings of the same specification that agree on thousands of
random sequences are the evidence; one reading checked against itself would prove nothing.

The specification it encodes (docs/CONTRACTS.md, the rules package's docstring):

- a consent (subject, consumer, dataset-or-category scope, purpose) is in force for a decision
  in block h at block time `now` iff the newest write to it made BEFORE block h is a grant
  and `now < valid_until`; two writes in one block: the later one is the block's word;
- an erasure of a subject in one dataset denies from the block after it;
- an erasure of a subject everywhere forgets them: no longer a member, their consents and
  erasures in datasets gone; later in its block an access denies them as erased, from the
  next block as an unknown key (no consent);
- an access request names a consumer, a dataset and a purpose allowed for it; each subject
  is granted iff not erased and in force for the dataset's scope or its category's;
- an upload is listed to a consumer while anchored (not erased or expired) and before its
  retention deadline, the end of its retention day, at once (no next-block delay);
- restriction and objection (docs/CONTRACTS.md "Restriction and objection"): a subject's
  restriction in a dataset, or their objection there that no override answers, as written
  before block h, denies them in that dataset to an access in block h (`restricted`,
  `objected`), before any consent is looked at; an objection only where the dataset's basis
  allows one; an erasure everywhere forgets it all;
- disclosure (docs/CONTRACTS.md "Disclosure"), for the whole records these accesses ask: a
  purpose whose declaration does not reach `full` (or that declares nothing) refuses them
  outright (`exceeds_purpose`); a consent takes its purpose's narrowest mode, and a subject
  whose consent is narrower than `full` is denied (`exceeds_consent`).

Every method returns the result the contracts must give: a success map without the `tx`
field, or `{"ok": False, "code": ...}` (the message is not modelled).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

DAY_MS = 86_400_000

Version = tuple[int, int, bool]  # (height written, valid_until, granted)
ConsentKey = tuple[str, bytes, str, str]  # (subject, consumer, scope, purpose)
# A subject's standing in a dataset: (height written, restriction ground or None, objected,
# overridden); the model keeps every write (`Reference.standings`).
Standing = tuple[int, str | None, bool, bool]
NO_STANDING: Standing = (0, None, False, False)

# The founding purposes' declarations, as the spec states them: purpose -> (its modes,
# narrowest first; its fields). Research and service improvement declare nothing.
DECLARED: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "proof-of-address": (("predicate",), ("address",)),
    "road-maintenance": (("projection",), ("lat", "lon", "recorded_at", "vibration")),
    "billing": (("full",), ()),
}


class Refused(Exception):
    """The model's way of saying "the contracts must refuse this with `code`"."""

    def __init__(self, code: str) -> None:
        super().__init__(code)
        self.code = code


def refused(code: str) -> dict[str, Any]:
    return {"ok": False, "code": code}


@dataclass
class ModelUpload:
    dataset: str
    day: int
    status: str = "anchored"  # anchored | erased | expired

    @property
    def deadline(self) -> int:
        return (self.day + 1) * DAY_MS


@dataclass
class Reference:
    """The model's whole state; `begin_block` then one method per transaction, in order."""

    members: dict[bytes, tuple[str, str]]  # key -> (role, status)
    datasets: dict[str, tuple[str, tuple[str, ...]]]  # id -> (category, purposes)
    purposes: frozenset[str]  # approved by governance
    height: int
    now: int
    consents: dict[ConsentKey, list[Version]] = field(default_factory=dict)
    erased: dict[tuple[str, str], int] = field(default_factory=dict)  # -> first height
    forgotten_now: set[str] = field(default_factory=set)  # erased everywhere in this block
    uploads: dict[str, ModelUpload] = field(default_factory=dict)
    expired_epochs: set[tuple[str, int]] = field(default_factory=set)
    accesses: int = 0  # ids handed out so far
    erasures: int = 0
    rewrites: int = 0  # second writes to a consent in one block (for the tests' coverage)
    # restriction and objection: the datasets one may object in (Art. 6(1)(e), (f)), and
    # (subject, dataset) -> every standing written, oldest first
    objectable: frozenset[str] = frozenset()
    standings: dict[tuple[str, str], list[Standing]] = field(default_factory=dict)

    # -- time -----------------------------------------------------------------------------
    def begin_block(self, height: int, time_ms: int) -> None:
        assert height == self.height + 1
        self.height = height
        self.forgotten_now = set()
        self.now = max(self.now, time_ms)  # the contracts' clock never runs backwards

    # -- reading the history ----------------------------------------------------------------
    def version_before(self, key: ConsentKey, height: int) -> Version | None:
        """The newest write to `key` made in a block before `height`."""
        found = None
        for version in self.consents.get(key, []):
            if version[0] < height:
                found = version
        return found

    def in_force(self, key: ConsentKey, height: int, now: int) -> bool:
        v = self.version_before(key, height)
        return v is not None and v[2] and now < v[1]

    def erased_before(self, subject: str, dataset: str, height: int) -> bool:
        """Was `subject` erased in `dataset` in a block before `height`, or forgotten
        earlier in the current block?"""
        if subject in self.forgotten_now and height == self.height:
            return True
        h = self.erased.get((subject, dataset))
        return h is not None and h < height

    def scopes_of(self, dataset: str) -> tuple[str, str]:
        return f"dataset:{dataset}", f"category:{self.datasets[dataset][0]}"

    def may_see(self, subject: str, consumer: bytes, dataset: str, purpose: str) -> bool:
        """Would an access in the current block grant `subject`?"""
        if self.erased_before(subject, dataset, self.height):
            return False
        return any(
            self.in_force((subject, consumer, scope, purpose), self.height, self.now)
            for scope in self.scopes_of(dataset)
        )

    # -- membership -------------------------------------------------------------------------
    def _active(self, key: bytes, *roles: str) -> None:
        if key not in self.members:
            raise Refused("not_member")
        role, status = self.members[key]
        if status != "active":
            raise Refused("not_admitted")
        if roles and role not in roles:
            raise Refused("unauthorized")

    def _subject_signs(self, author: bytes, subject: str) -> None:
        if bytes.fromhex(subject) != author:
            raise Refused("not_subject")
        self._active(author, "subject")

    def _write(self, key: ConsentKey, version: Version) -> None:
        history = self.consents.setdefault(key, [])
        if history and history[-1][0] == self.height:
            history[-1] = version  # the block's last word counts
            self.rewrites += 1
        else:
            history.append(version)

    # -- transactions -----------------------------------------------------------------------
    def run(self, method: str, *args: Any) -> dict[str, Any]:
        """Apply one transaction; a refusal leaves the model unchanged."""
        try:
            result: dict[str, Any] = getattr(self, method)(*args)
        except Refused as r:
            return refused(r.code)
        return result

    def grant(
        self, author: bytes, subject: str, consumer: bytes, scope: str, purpose: str, until: int
    ) -> dict[str, Any]:
        self._subject_signs(author, subject)
        kind, name = scope.split(":", 1)
        if consumer not in self.members or self.members[consumer][0] != "consumer":
            raise Refused("not_member")  # a pending consumer may be consented to
        if purpose not in self.purposes:
            raise Refused("purpose_not_approved")
        if kind == "dataset" and purpose not in self.datasets[name][1]:
            raise Refused("purpose_not_allowed")
        if until <= self.now:
            raise Refused("invalid")
        self._write((subject, consumer, scope, purpose), (self.height, until, True))
        mode, fields = self.consent_mode(purpose)
        return {
            "ok": True,
            "effective_from_height": self.height + 1,
            "valid_until": until,
            "mode": mode,
            "fields": fields,
        }

    @staticmethod
    def consent_mode(purpose: str) -> tuple[str | None, list[str] | None]:
        """A consent naming no mode: its purpose's narrowest, with the purpose's fields (none
        for whole records); under an undeclared purpose, none yet."""
        if purpose not in DECLARED:
            return None, None
        modes, fields = DECLARED[purpose]
        return modes[0], [] if modes[0] == "full" else list(fields)

    def revoke(
        self, author: bytes, subject: str, consumer: bytes, scope: str, purpose: str
    ) -> dict[str, Any]:
        self._subject_signs(author, subject)
        key = (subject, consumer, scope, purpose)
        history = self.consents.get(key)
        if not history or not history[-1][2]:
            raise Refused("not_found")  # nothing granted as of the latest write
        self._write(key, (self.height, history[-1][1], False))
        return {"ok": True, "effective_from_height": self.height + 1}

    def access(
        self,
        author: bytes,
        consumer: bytes,
        dataset: str,
        purpose: str,
        subjects: list[str] | None,
    ) -> dict[str, Any]:
        if author != consumer:
            self._active(author, "vault")
        self._active(consumer, "consumer")
        if purpose not in self.datasets[dataset][1]:
            raise Refused("purpose_not_allowed")
        if purpose not in self.purposes:
            raise Refused("purpose_not_approved")
        if "full" not in DECLARED.get(purpose, ((), ()))[0]:
            raise Refused("exceeds_purpose")  # these accesses ask for whole records
        if subjects is not None and any(bytes.fromhex(s) not in self.members for s in subjects):
            raise Refused("unknown_subject")  # never registered, or forgotten
        if subjects is None:
            scopes = self.scopes_of(dataset)
            candidates = sorted(
                {
                    s
                    for (s, c, sc, p) in self.consents
                    if c == consumer and p == purpose and sc in scopes
                }
            )
        else:
            candidates = subjects
        granted, denied = [], []
        for s in candidates:
            if self.erased_before(s, dataset, self.height):
                denied.append([s, "erased"])
            elif stopped := self.stopped_before(s, dataset, self.height):
                denied.append([s, stopped])
            elif not self.may_see(s, consumer, dataset, purpose):
                denied.append([s, "no_consent"])
            elif self.consent_mode(purpose)[0] != "full":
                denied.append([s, "exceeds_consent"])
            else:
                granted.append(s)
        self.accesses += 1
        return {
            "ok": True,
            "access": self.accesses,
            "granted": granted,
            "denied": denied if subjects is not None else [],
            "uploads": self.live_uploads(dataset),
            "as_of": self.now,
            "charged_cents": 0,  # the model's datasets have no price (test_fees.py prices)
        }

    def live_uploads(self, dataset: str) -> list[str]:
        return sorted(
            name
            for name, u in self.uploads.items()
            if u.dataset == dataset and u.status == "anchored" and self.now < u.deadline
        )

    def erase_subject(self, author: bytes, subject: str, dataset: str | None) -> dict[str, Any]:
        self._active(author, "vault", "dpo")
        self.erasures += 1
        done = {"ok": True, "erasure": self.erasures, "effective_from_height": self.height + 1}
        if dataset is None:
            self.members.pop(bytes.fromhex(subject), None)
            self.consents = {k: v for k, v in self.consents.items() if k[0] != subject}
            self.erased = {k: v for k, v in self.erased.items() if k[0] != subject}
            self.standings = {k: v for k, v in self.standings.items() if k[0] != subject}
            self.forgotten_now.add(subject)
            return {**done, "forgotten": True}
        if subject not in self.forgotten_now:  # what names them in its block is forgotten
            self.erased.setdefault((subject, dataset), self.height)  # the first one counts
        return done

    def erase_upload(self, author: bytes, upload: str) -> dict[str, Any]:
        self._active(author, "vault", "dpo")
        if upload not in self.uploads:
            raise Refused("not_found")
        self.uploads[upload].status = "erased"
        self.erasures += 1
        return {"ok": True, "erasure": self.erasures, "effective_from_height": self.height + 1}

    def anchor(self, author: bytes, upload: str, dataset: str, day: int) -> dict[str, Any]:
        self._active(author, "vault")
        if upload in self.uploads:
            raise Refused("exists")
        self.uploads[upload] = ModelUpload(dataset, day)
        return {"ok": True, "upload": upload, "deadline": (day + 1) * DAY_MS}

    def expire(self, author: bytes, dataset: str, day: int, uploads: list[str]) -> dict[str, Any]:
        self._active(author, "vault", "dpo")
        if (day + 1) * DAY_MS > self.now:
            raise Refused("too_early")
        if (dataset, day) in self.expired_epochs:
            raise Refused("duplicate")
        if any(u not in self.uploads for u in uploads):
            raise Refused("not_found")
        if any((self.uploads[u].dataset, self.uploads[u].day) != (dataset, day) for u in uploads):
            raise Refused("mismatch")
        for u in uploads:
            if self.uploads[u].status == "anchored":
                self.uploads[u].status = "expired"
        self.expired_epochs.add((dataset, day))
        self.erasures += 1
        return {"ok": True, "erasure": self.erasures}

    # -- restriction (Art. 18) and objection (Art. 21) ----------------------------------------
    def stopped_before(self, subject: str, dataset: str, height: int) -> str | None:
        """Why the newest standing written before `height` stops processing, or None."""
        found = NO_STANDING
        for standing in self.standings.get((subject, dataset), []):
            if standing[0] < height:
                found = standing
        _, ground, objected, overridden = found
        if ground is not None:
            return "restricted"
        return "objected" if objected and not overridden else None

    def latest_standing(self, subject: str, dataset: str) -> Standing:
        history = self.standings.get((subject, dataset))
        return history[-1] if history else NO_STANDING

    def _stand(self, subject: str, dataset: str, ground: str | None, obj: bool, ov: bool) -> None:
        history = self.standings.setdefault((subject, dataset), [])
        standing = (self.height, ground, obj, ov)
        if history and history[-1][0] == self.height:
            history[-1] = standing  # the block's last word counts
        else:
            history.append(standing)

    def _subject_in(self, author: bytes, dataset: str) -> Standing:
        self._active(author, "subject")
        if dataset not in self.datasets:
            raise Refused("not_found")
        return self.latest_standing(author.hex(), dataset)

    def restrict(self, author: bytes, dataset: str, ground: str) -> dict[str, Any]:
        _, now_ground, objected, overridden = self._subject_in(author, dataset)
        if now_ground == ground:
            raise Refused("already_restricted")
        self._stand(author.hex(), dataset, ground, objected, overridden)
        return {"ok": True, "effective_from_height": self.height + 1, "ground": ground}

    def lift(self, author: bytes, dataset: str) -> dict[str, Any]:
        _, ground, objected, overridden = self._subject_in(author, dataset)
        if ground is None:
            raise Refused("not_restricted")
        self._stand(author.hex(), dataset, None, objected, overridden)
        return {"ok": True, "effective_from_height": self.height + 1}

    def object(self, author: bytes, dataset: str) -> dict[str, Any]:
        _, ground, objected, _ = self._subject_in(author, dataset)
        if dataset not in self.objectable:
            raise Refused("basis_is_consent")
        if objected:
            raise Refused("already_objected")
        self._stand(author.hex(), dataset, ground, True, False)
        return {"ok": True, "effective_from_height": self.height + 1}

    def withdraw(self, author: bytes, dataset: str) -> dict[str, Any]:
        _, ground, objected, _ = self._subject_in(author, dataset)
        if not objected:
            raise Refused("not_objected")
        self._stand(author.hex(), dataset, ground, False, False)
        return {"ok": True, "effective_from_height": self.height + 1}

    def override(self, author: bytes, subject: str, dataset: str) -> dict[str, Any]:
        self._active(author, "vault", "dpo")
        if dataset not in self.datasets:
            raise Refused("not_found")
        _, ground, objected, overridden = self.latest_standing(subject, dataset)
        if not objected:
            raise Refused("not_objected")
        if overridden:
            raise Refused("already_overridden")
        self._stand(subject, dataset, ground, True, True)
        return {"ok": True, "effective_from_height": self.height + 1}

    def exempt(self, author: bytes, subject: str, dataset: str, until: int) -> dict[str, Any]:
        """An exemption changes no access (it is the provider's reads, off the ledger): only
        its refusals and its answer are the model's."""
        self._active(author, "vault", "dpo")
        if dataset not in self.datasets:
            raise Refused("not_found")
        if until <= self.now:
            raise Refused("invalid")
        _, ground, objected, overridden = self.latest_standing(subject, dataset)
        if ground is None and not (objected and not overridden):
            raise Refused("not_restricted")
        self._stand(subject, dataset, ground, objected, overridden)
        return {"ok": True, "effective_from_height": self.height + 1, "until": until}

    def replay(self, valid_until: int) -> dict[str, Any]:
        """A transaction that already executed successfully, submitted again."""
        return refused("expired" if valid_until < self.now else "replayed")

    # -- the consents query -----------------------------------------------------------------
    def consents_of(self, subject: str) -> list[dict[str, Any]]:
        """What the `consents` query must answer for `subject`, in the model's own order."""
        out = []
        for (s, consumer, scope, purpose), history in sorted(self.consents.items()):
            if s != subject:
                continue
            latest = history[-1]
            out.append(
                {
                    "consumer": consumer,
                    "scope": scope,
                    "purpose": purpose,
                    "valid_until": latest[1],
                    "granted": latest[2],
                    "changed_at_height": latest[0],
                    "mode": self.consent_mode(purpose)[0],
                    "fields": self.consent_mode(purpose)[1],
                    # the model's grants name no notice (test_notices_recipients.py covers it)
                    "notice": None,
                    "in_force": self.in_force(
                        (s, consumer, scope, purpose), self.height + 1, self.now
                    ),
                }
            )
        return out
