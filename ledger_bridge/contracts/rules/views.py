"""What an access decides with, kept as sets: the consents in force by (consumer key, scope,
purpose), and the subjects erased and stopped (restricted, or objected without override) by
dataset, each as it stood at the end of the previous block.

Why sets: an open access over a hundred subjects otherwise looks each one up, several times
(its erasure, its standing, each of its consents), when the answer is a few set operations:
the subjects allowed, less the erased, less the stopped. Named subjects are decided against
the same sets, one membership test each, keeping each one's reason.

Why the same answers as the per-subject reading (`consent.consent_in_force`,
`access.erased_before`, `restriction.stopped_before`): the views are brought up to date at
each decision (`AccessViews.sync`) with exactly those functions' reading of each entry at the
decision's height (`version_at`), for every key written since they last looked
(`State.take_written`, deletions included, so forgetting a subject is seen at once). An
entry read at a height is not read again until it is written, unless it was written at that
height itself: its version in force changes at the next block, so it is read again at the
next height. Consents run out with time, not with writes: each group keeps its subjects by
`valid_until` too, and a decision drops those whose time has passed at its block time (the
contracts' clock never runs backwards, so a consent that has run out stays so until it is
written again).

The views are derived from the entries alone and never hashed: a state made by `restore`
starts without them and builds them from every entry at its first access, so a replica that
restarted or took a snapshot decides exactly as one that executed every block.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable, Iterable
from typing import Any

from ledger_bridge.contracts.rules.consent import version_at
from ledger_bridge.contracts.rules.restriction import stops
from ledger_bridge.contracts.state import WATCHED_TABLES, Key, State

# A consent version's mode and fields as stored (mode None: its purpose's narrowest, read
# from the declaration at decision time, `disclosure.consent_terms`).
Terms = tuple[str | None, tuple[str, ...]]
Group = tuple[bytes, str, str]  # (consumer key, scope, purpose)


def terms_of(version: list[Any]) -> Terms:
    mode: str | None = version[3] if len(version) > 3 else None
    return (None, ()) if mode is None else (mode, tuple(version[4]))


def version_of(terms: Terms) -> list[Any]:
    """A consent version with these terms, for `disclosure.allows`, which reads only them."""
    mode, fields = terms
    return [0, 0, True, mode, list(fields)]


class Bucket:
    """The subjects of one group whose consent in force has one `Terms`: each with its
    valid_until, and a heap of them by that time, so the expired leave in order."""

    __slots__ = ("heap", "until")

    def __init__(self) -> None:
        self.until: dict[str, int] = {}
        self.heap: list[tuple[int, str]] = []

    def add(self, subject: str, until: int) -> None:
        self.until[subject] = until
        heapq.heappush(self.heap, (until, subject))

    def in_force(self, now: int) -> Iterable[str]:
        """The subjects whose consent is in force at `now` (now < valid_until)."""
        heap, until = self.heap, self.until
        while heap and heap[0][0] <= now:
            ended, subject = heapq.heappop(heap)
            if until.get(subject) == ended:
                del until[subject]
        if len(heap) > 2 * len(until) + 64:  # stale times of subjects since moved or gone
            self.heap = [(u, s) for s, u in until.items()]
            heapq.heapify(self.heap)
        return until.keys()


class AccessViews:
    """The sets of one state, as of a decision at `height` (`sync` brings them to another)."""

    def __init__(self) -> None:
        self.consents: dict[Group, dict[Terms, Bucket]] = {}
        self.erased: dict[str, set[str]] = {}  # dataset -> subjects
        self.stopped: dict[str, dict[str, str]] = {}  # dataset -> subject -> why
        # consent key -> (group, terms) of the bucket it is in
        self._placed: dict[Key, tuple[Group, Terms]] = {}
        # keys read at `height` whose entry was written at that height: read again after it
        self._unsettled: dict[str, set[Key]] = {t: set() for t in WATCHED_TABLES}
        self.height = 0
        self._readers: dict[str, Callable[[Key, Any, int], bool]] = {
            "consent": self._read_consent,
            "erased_subject_dataset": self._read_erased,
            "restriction": self._read_restriction,
        }

    def sync(self, state: State, height: int) -> None:
        """Bring the views to a decision at `height`."""
        later = height > self.height
        for table, read in self._readers.items():
            keys = state.take_written(table)
            if later:
                keys |= self._unsettled[table]
                self._unsettled[table] = set()
            unsettled = self._unsettled[table]
            for parts in keys:
                if not read(parts, state.get(table, *parts), height):
                    unsettled.add(parts)
        self.height = height

    # Each reader files one entry (None: deleted) as in force for a decision at `height`, and
    # says whether that stays so at every later height until the entry is written again.

    def _read_consent(self, parts: Key, entry: Any, height: int) -> bool:
        subject, consumer, scope, purpose = parts
        placed = self._placed.pop(parts, None)
        if placed is not None:
            # Its bucket may be gone: every subject in it ran out (`in_force`), and another's
            # rewrite emptied it.
            group = self.consents.get(placed[0])
            bucket = None if group is None else group.get(placed[1])
            if group is not None and bucket is not None:
                bucket.until.pop(subject, None)
                if not bucket.until:
                    del group[placed[1]]
                    if not group:
                        del self.consents[placed[0]]
        version = version_at(entry, height)
        if version is not None and version[2]:
            where = ((consumer, scope, purpose), terms_of(version))
            group = self.consents.setdefault(where[0], {})
            group.setdefault(where[1], Bucket()).add(subject, version[1])
            self._placed[parts] = where
        return entry is None or entry["cur"][0] < height

    def _read_erased(self, parts: Key, erased_at: int | None, height: int) -> bool:
        subject, dataset = parts
        if erased_at is not None and erased_at < height:
            self.erased.setdefault(dataset, set()).add(subject)
        else:
            self.erased.get(dataset, set()).discard(subject)
        return erased_at is None or erased_at < height

    def _read_restriction(self, parts: Key, entry: Any, height: int) -> bool:
        subject, dataset = parts
        version = version_at(entry, height)
        why = None if version is None else stops(version[1])
        if why is not None:
            self.stopped.setdefault(dataset, {})[subject] = why
        else:
            self.stopped.get(dataset, {}).pop(subject, None)
        return entry is None or entry["cur"][0] < height

    def consenting(
        self,
        groups: Iterable[Group],
        now: int,
        allows: Callable[[list[Any]], bool],
    ) -> tuple[set[str], set[str]]:
        """The subjects with a consent in force at `now` in any of `groups`, and among them
        those with one that `allows` (asked once per distinct terms, not per subject)."""
        consented: set[str] = set()
        allowed: set[str] = set()
        for g in groups:
            for terms, bucket in self.consents.get(g, {}).items():
                subjects = bucket.in_force(now)
                consented.update(subjects)
                if allows(version_of(terms)):
                    allowed.update(subjects)
        return consented, allowed


def synced(state: State, height: int) -> AccessViews:
    """The state's views, brought to a decision at `height` (built from every entry the
    first time, or if asked about an earlier height than the last, which no chain does)."""
    views = state.derived.get("access")
    if not isinstance(views, AccessViews) or height < views.height:
        if isinstance(views, AccessViews):  # every key, not only those written since
            for table in WATCHED_TABLES:
                state.rewatch(table)
        views = AccessViews()
        state.derived["access"] = views
    views.sync(state, height)
    return views
