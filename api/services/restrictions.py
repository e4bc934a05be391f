"""What a restriction (GDPR Art. 18) or an objection (Art. 21) means for the vault's own reads.

The consent contracts decide consumers' accesses (they deny a restricted subject from the
next block). The provider's own reads of its records never reach the contracts, so the vault
asks the ledger, on every read, whom processing stops for in the dataset, and withholds their
records: `GET /v1/datasets/{id}/records` leaves them out and says how many, `GET
/v1/records/{id}` answers 409 `restricted`. The exception is the DPO's legal-claims exemption
(Art. 18(2); Art. 21(1)'s own "establishment, exercise or defence of legal claims"), while it
lasts: it lets the provider read, never a consumer.

Why the ledger and not a copy in the database: the subject's restriction is a transaction
they signed, and the ledger is where it is in force; a copy would lag or drift. One query per
request (the dataset's standings, or one subject's in it) keeps the cost to a round trip.
Why the wall clock for the exemption's end: the ledger's clock is the last block's time, which
on an idle chain may be long past, and would keep an expired exemption alive.

With a ledger that does not answer, the read is refused (503, `LedgerUnavailable`): a
restriction that cannot be checked is not assumed away. Without a ledger at all (an instance
run without one), nothing is ever restricted: restrictions exist only as signed transactions
on the ledger.
"""

from __future__ import annotations

import time
import uuid
from typing import TYPE_CHECKING, Any

from api.http.errors import ApiError

if TYPE_CHECKING:
    from api.services.gateway import LedgerGateway


class ProcessingRestricted(ApiError):
    """The provider asked for a record of a subject whose processing is stopped."""

    status = 409
    title = "Processing restricted"


def withheld(standing: dict[str, Any], now_ms: int | None = None) -> bool:
    """Whether a standing (the `restrictions` query's entry) withholds the subject's records
    from the provider's own reads at `now_ms` (default: now): processing is stopped, and no
    legal-claims exemption is live."""
    if not standing["processing_stopped"]:
        return False
    exemption = standing.get("exemption")
    return exemption is None or int(exemption["until"]) <= (now_ms or _now_ms())


def _now_ms() -> int:
    return int(time.time() * 1000)


def withheld_subjects(ledger: LedgerGateway | None, dataset_id: uuid.UUID) -> frozenset[str]:
    """The subjects whose records the provider may not read in `dataset_id` now (one ledger
    query)."""
    if ledger is None:
        return frozenset()
    answer = ledger.query("restrictions", dataset=str(dataset_id))
    now = _now_ms()
    return frozenset(str(s["subject"]) for s in answer["result"] if withheld(s, now))


def refuse_withheld(ledger: LedgerGateway | None, dataset_id: uuid.UUID, subject: str) -> None:
    """Raise `ProcessingRestricted` if `subject`'s records in `dataset_id` are withheld from
    the provider now (one ledger query)."""
    if ledger is None:
        return
    answer = ledger.query("restrictions", subject=subject, dataset=str(dataset_id))
    now = _now_ms()
    for standing in answer["result"]:
        if withheld(standing, now):
            why = "restricted" if standing["ground"] is not None else "objected to"
            raise ProcessingRestricted(
                f"restricted: the subject {why} the processing of their data in this dataset "
                "(GDPR Art. 18, 21); the record stays stored and is read again once that "
                "ends, or while the DPO exempts it for legal claims"
            )
