"""What the client raises: the API's problem+json answers as typed exceptions.

Why typed: a caller decides on the kind of refusal, not on a number it must remember. A
consumer retries a `TooManyRequests` after `retry_after_s`, tells a citizen "no consent" on a
`Forbidden`, and stops on an `Unauthorized`; a contract's refusal code (`not_eligible`,
`no_consent`, `exists`…) is on `.code` so a caller can branch on it without parsing prose.

    ClientError                         anything the client raises itself
    ├── ProblemError                    an HTTP answer >= 400 (RFC 9457 problem+json)
    │   ├── BadRequest                  400
    │   ├── Unauthorized                401  missing, unknown, revoked or expired API key or
    │   │                                    sign-in token
    │   ├── PaymentRequired             402  a credit too small for a paid answer
    │   ├── Forbidden                   403  wrong role, bad signature, a contract's "no"
    │   ├── NotFound                    404
    │   ├── MethodNotAllowed            405
    │   ├── RequestTimeout              408  a body that came too slowly
    │   ├── Conflict                    409  the cooperative's state refuses (exists, closed…)
    │   ├── Gone                        410  erased; a sign-in challenge used or expired
    │   ├── PayloadTooLarge             413
    │   ├── UnsupportedMediaType        415
    │   ├── Unprocessable               422  malformed input; uploads name the `line`
    │   ├── TooManyRequests             429  + retry_after_s
    │   ├── ServerError                 500 and any other 5xx
    │   └── Unavailable                 503  + retry_after_s (ledger or database down)
    ├── AnchorTimeout                   an upload not anchored on the ledger in time
    ├── AnchorRefused                   the contracts refused an upload's anchor
    ├── ReceiptTimeout                  an erasure's sealed receipt still null at the wait's end
    ├── ErasureReceiptLost              an erasure recorded whose receipt will never come
    └── SignInRefused                   a sign-in challenge the wallet will not sign

Transport failures (no answer at all) stay `httpx.TransportError`: "nobody answered" and
"the API answered no" call for different actions, so they are not folded together.
"""

from __future__ import annotations

import re
from typing import Any, ClassVar

import httpx

# A problem's text can be long (a validation error lists fields); a message stays one line.
MESSAGE_DETAIL_CHARS_MAX = 300
_CODE = re.compile(r"[a-z][a-z_]{1,39}")


class ClientError(Exception):
    """The root of every exception the client raises itself."""


class ProblemError(ClientError):
    """An HTTP answer with a status >= 400, its problem+json fields as attributes.

    `body` holds every member of the problem, extensions included (an upload's `line`, a
    validation error's `errors`). A non-JSON error body (a proxy's HTML page) still becomes a
    problem: its title is the HTTP reason phrase and its detail the body's first characters.
    """

    status: ClassVar[int] = 0

    def __init__(
        self,
        status: int,
        title: str,
        detail: str,
        *,
        type: str = "about:blank",  # the RFC 9457 member's name
        instance: str | None = None,
        body: dict[str, Any] | None = None,
        method: str = "",
        path: str = "",
        retry_after_s: float | None = None,
    ) -> None:
        self.status_code = status
        self.title = title
        self.detail = detail
        self.type = type
        self.instance = instance
        self.body = body or {}
        self.method = method
        self.path = path
        self.retry_after_s = retry_after_s
        where = f" ({method} {path})" if method else ""
        super().__init__(f"{status} {title}: {detail[:MESSAGE_DETAIL_CHARS_MAX]}{where}")

    @property
    def code(self) -> str | None:
        """The consent contracts' refusal code (`no_consent`, `not_eligible`…), if any.

        The API opens the detail of a contract's refusal (and of an access refused for the
        same reasons) with "<code>: "; a detail that opens otherwise has no code, so a word of
        prose is never taken for one.
        """
        head, sep, _ = self.detail.partition(": ")
        return head if sep and _CODE.fullmatch(head) else None

    @property
    def line(self) -> int | None:
        """The refused line of an upload body (1-based), when the problem names one."""
        value = self.body.get("line")
        return value if isinstance(value, int) else None


class BadRequest(ProblemError):
    status = 400


class Unauthorized(ProblemError):
    status = 401


class PaymentRequired(ProblemError):
    status = 402


class Forbidden(ProblemError):
    status = 403


class NotFound(ProblemError):
    status = 404


class MethodNotAllowed(ProblemError):
    status = 405


class RequestTimeout(ProblemError):
    status = 408


class Conflict(ProblemError):
    status = 409


class Gone(ProblemError):
    status = 410


class PayloadTooLarge(ProblemError):
    status = 413


class UnsupportedMediaType(ProblemError):
    status = 415


class Unprocessable(ProblemError):
    status = 422


class TooManyRequests(ProblemError):
    status = 429


class ServerError(ProblemError):
    status = 500


class Unavailable(ProblemError):
    status = 503


class AnchorTimeout(ClientError):
    """The upload is stored but its `upload.anchor` was not committed within the wait."""


class ReceiptTimeout(ClientError):
    """The erasure's sealed receipt was still null at the wait's end: not recorded yet."""


class ErasureReceiptLost(ClientError):
    """The erasure is recorded on the ledger (its certificate holds), but its receipt could
    not be made and never will be: the answer says so (`erasure_receipt_lost`), or
    GET /v1/erasure-receipts/{id} answers 410. Waiting longer would not bring it."""


class AnchorRefused(ClientError):
    """The contracts refused the upload's anchor: no consumer is ever served its records."""


class SignInRefused(ClientError):
    """The API handed out a sign-in challenge whose bytes are not a sign-in payload for it
    (api/client/sign_in.py): signing them could sign something else, a transaction above all,
    so the wallet signs nothing."""


_BY_STATUS: dict[int, type[ProblemError]] = {
    cls.status: cls
    for cls in (
        BadRequest,
        Unauthorized,
        PaymentRequired,
        Forbidden,
        NotFound,
        MethodNotAllowed,
        RequestTimeout,
        Conflict,
        Gone,
        PayloadTooLarge,
        UnsupportedMediaType,
        Unprocessable,
        TooManyRequests,
        ServerError,
        Unavailable,
    )
}


def _retry_after(response: httpx.Response) -> float | None:
    value = response.headers.get("retry-after")
    try:
        return float(value) if value is not None else None
    except ValueError:
        return None  # an HTTP date: rare enough here that the caller picks its own pause


def problem_from(response: httpx.Response) -> ProblemError:
    """The typed exception for an error answer (status >= 400), whatever its body."""
    status = response.status_code
    cls = _BY_STATUS.get(status) or (ServerError if status >= 500 else ProblemError)
    try:
        body = response.json()
    except ValueError:
        body = None
    if not isinstance(body, dict):
        body = {}
        detail = response.text[:MESSAGE_DETAIL_CHARS_MAX]
    else:
        detail = str(body.get("detail") or "")
    request = response.request
    return cls(
        status,
        str(body.get("title") or response.reason_phrase),
        detail,
        type=str(body.get("type") or "about:blank"),
        instance=body.get("instance"),
        body=body,
        method=request.method,
        path=request.url.path,
        retry_after_s=_retry_after(response),
    )
