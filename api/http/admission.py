"""How many uploads may run at once: per API key, and in all on this API instance.

Why: a running upload holds a worker thread and a database connection until its last chunk,
and a client decides how long that is (up to the body time limits of api/http/middleware.py). A cap
per key keeps one provider from taking every slot; the cap in all keeps uploads together below
what the other routes need from the same thread and connection pools. Refusals are immediate
(no queue: a queue would hold the sockets the cap is meant to bound).

The counters live in one process and are touched only on its event loop (the upload route is
`async`), so they need no lock; each API instance behind a load balancer has its own.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager

from api.http.errors import ApiError

# What a refused client is told to wait before trying again.
RETRY_AFTER_S = 5


class TooManyUploads(ApiError):
    status = 429
    title = "Too many uploads"
    headers = (("Retry-After", str(RETRY_AFTER_S)),)


class UploadsBusy(ApiError):
    status = 503
    title = "Uploads busy"
    headers = (("Retry-After", str(RETRY_AFTER_S)),)


class UploadSlots:
    """At most `per_key_max` uploads per API key and `total_max` in all, at any moment."""

    def __init__(self, *, per_key_max: int, total_max: int) -> None:
        assert per_key_max >= 1 and total_max >= per_key_max, "limits must admit one upload"
        self.per_key_max = per_key_max
        self.total_max = total_max
        self._by_key: Counter[str] = Counter()

    @property
    def running(self) -> int:
        return self._by_key.total()

    @contextmanager
    def hold(self, key_id: str) -> Iterator[None]:
        """A slot for the duration of the block, or `TooManyUploads` / `UploadsBusy` at once."""
        if self._by_key[key_id] >= self.per_key_max:
            raise TooManyUploads(
                f"this API key already runs {self.per_key_max} uploads; wait for one to finish"
            )
        if self.running >= self.total_max:
            raise UploadsBusy("the service runs as many uploads as it takes; try again shortly")
        self._by_key[key_id] += 1
        try:
            yield
        finally:
            self._by_key[key_id] -= 1
            if self._by_key[key_id] == 0:
                del self._by_key[key_id]
