"""Request dependencies as `Annotated` aliases: the session, the caller, role requirements.

Why they are `async def`: FastAPI runs a plain `def` dependency in its thread pool, one
hand-off per dependency per request. Those that only read the app's state or the request (the
settings, the key store, the ledger gateway, the query check, the role check) run on the event
loop; the session and the caller hand only their database work to the pool, and only when
there is some (a commit, a caller not in memory).

Why `scope="function"` on the session: the commit must happen before the response is sent, so
a client that got 201 knows its upload is durable, and a failed commit is a 500, not a lie.
Services take the session and may flush; only this dependency commits.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TYPE_CHECKING, Annotated, Any

from fastapi import Depends, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy.orm import Session, sessionmaker

from api.http.errors import Forbidden, Unauthorized
from api.http.settings import Settings
from api.services.keys import Member, VerifiedKeys
from api.services.subject_sessions import is_session_token, session_member
from vault.keys import KeyStore

if TYPE_CHECKING:
    from api.services.gateway import LedgerGateway
    from api.services.member_standing import MemberStanding


async def _session(request: Request) -> AsyncIterator[Session]:
    """The request's session, committed before the response is sent.

    Opening a session does no I/O (it connects on first use), so it is opened on the event
    loop; the commit or rollback, which talk to the database, run in the thread pool, and
    only when the session began a transaction: a request that never touched the database
    pays no hand-off for it."""
    session: Session = request.app.state.sessions()
    try:
        yield session
        if session.in_transaction():
            await run_in_threadpool(session.commit)
    except BaseException:
        if session.in_transaction():
            await run_in_threadpool(session.rollback)
        raise
    finally:
        # Nothing left to end: closing only returns a connection to the pool.
        session.close()


SessionDep = Annotated[Session, Depends(_session, scope="function")]

bearer = HTTPBearer(
    auto_error=False,
    description="An API key, `cvk_<id>_<secret>`, or a subject's wallet sign-in token, "
    "`cvs_<id>_<secret>` (POST /v1/subjects/sessions)",
)


Credentials = Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)]


def _authenticated(
    request: Request, session: Session, credentials: HTTPAuthorizationCredentials | None
) -> Member:
    """The caller behind an API key or a subject's sign-in token: a sign-in token is accepted
    wherever a subject's API key is, and proves every pseudonym it was signed in with.

    API keys are verified through the process's `VerifiedKeys` (the database is asked once
    per key every `api_key_cache_s`); a sign-in token is looked up on every request, so that
    signing out ends it at once, in every process."""
    if credentials is None:
        raise Unauthorized(
            "an API key or a subject's sign-in token is required (Authorization: Bearer …)"
        )
    token = credentials.credentials
    if is_session_token(token):
        signed_in = session_member(session, token, dt.datetime.now(dt.UTC))
        if signed_in is None:
            # One answer for signed-out, expired, unknown and malformed tokens.
            raise Unauthorized(
                "the sign-in token is not valid (signed out, expired or unknown): sign in "
                "again with the wallet"
            )
        return signed_in
    verified: VerifiedKeys = request.app.state.verified_keys
    member = verified.authenticate(session, token)
    if member is None:
        # One answer for malformed, unknown, wrong and revoked keys: no oracle for probing.
        raise Unauthorized("the API key is not valid")
    return member


def in_standing(request: Request, member: Member) -> Member:
    """Refuse a member that governance suspended or moved to another key
    (api/services/member_standing.py says why the API asks, and when). The pages that
    authenticate on their own (the DPO page) call it too."""
    standing: MemberStanding | None = getattr(request.app.state, "member_standing", None)
    if standing is not None:
        standing.check(member)
    return member


async def _current_member(request: Request, credentials: Credentials) -> Member:
    """The caller, from memory when this process verified its key and its standing a moment
    ago (no thread-pool hand-off: most requests of a member come close together), else
    checked against the database and the ledger in the thread pool, in a session of its own
    that ends before the route runs (so a route that never touches the database opens no
    session for its caller either)."""
    member = remembered_member(request, credentials)
    if member is not None:
        return member
    return await run_in_threadpool(_released_member, request, credentials)


def remembered_member(request: Request, credentials: Credentials) -> Member | None:
    if credentials is None or is_session_token(credentials.credentials):
        return None
    verified: VerifiedKeys = request.app.state.verified_keys
    member = verified.remembered(credentials.credentials)
    if member is None:
        return None
    standing: MemberStanding | None = getattr(request.app.state, "member_standing", None)
    if standing is not None and not standing.check_remembered(member):
        return None
    return member


CurrentMember = Annotated[Member, Depends(_current_member)]


def _released_member(request: Request, credentials: Credentials) -> Member:
    """The caller, checked in a session that is closed before the route runs.

    For routes that wait on the client (an upload's body): the request's own session would
    keep its connection, checked out for the key lookup, for as long as the client sends.
    """
    sessions: sessionmaker[Session] = request.app.state.sessions
    with sessions() as session, session.begin():
        member = _authenticated(request, session, credentials)
    return in_standing(request, member)


def _check_role(member: Member, roles: tuple[str, ...]) -> Member:
    if member.role not in roles:
        raise Forbidden(f"this action needs the role {' or '.join(roles)}")
    return member


# Where `require_role` leaves the roles its check admits, for a route that admits a caller
# without FastAPI's dependency solver (api/http/direct.py).
ROLES_ATTRIBUTE = "civis_roles"


def require_role(*roles: str) -> Callable[[Request, Credentials], Awaitable[Member]]:
    """A dependency that admits only members whose key has one of `roles`.

    It finds the caller itself (`_current_member` called, not depended on): each level of
    dependency costs FastAPI a solve on every request, and a role check is on most routes."""

    async def check(request: Request, credentials: Credentials) -> Member:
        return _check_role(await _current_member(request, credentials), roles)

    setattr(check, ROLES_ATTRIBUTE, roles)
    return check


def _released_provider(member: Annotated[Member, Depends(_released_member)]) -> Member:
    return _check_role(member, ("provider",))


Provider = Annotated[Member, Depends(require_role("provider"))]
ProviderOrDpo = Annotated[Member, Depends(require_role("provider", "dpo"))]
Consumer = Annotated[Member, Depends(require_role("consumer"))]
Dpo = Annotated[Member, Depends(require_role("dpo"))]
# A provider whose key lookup holds no database connection once it is done (see
# `_released_member`).
ReleasedProvider = Annotated[Member, Depends(_released_provider)]


def subject_or_dpo(member: Member, subject_id: str) -> None:
    """Admit the subject named in the path, or the DPO; refuse everyone else.

    The subject is whoever proved `subject_id`: a subject's API key for it, or a wallet
    sign-in among whose pseudonyms it is. A check the route calls rather than a dependency:
    the subject comes from the route's own path parameter, which the route declares (and
    documents) itself.
    """
    if member.role == "dpo":
        return
    if member.role != "subject" or subject_id not in member.pseudonyms:
        raise Forbidden("only the subject or the DPO may read this")


def _query_names(dependant: Any) -> set[str]:
    """The query parameter names of an operation, its sub-dependencies' included."""
    if dependant is None:
        return set()
    names = {str(field.alias) for field in dependant.query_params}
    for sub in dependant.dependencies:
        names |= _query_names(sub)
    return names


async def strict_query(request: Request) -> None:
    """Refuse unknown and repeated query parameters, as request bodies refuse unknown fields.

    FastAPI ignores an unknown parameter (a typo such as `?subjectid=a` would read everyone's
    records) and keeps the last of repeated ones (`?subject_id=a&subject_id=b` reads b's while
    the caller may believe a's). An operation that takes a list in its query says which
    parameters with `strict_query_with_lists`.
    """
    _check_query(request, frozenset())


def strict_query_with_lists(*lists: str) -> Callable[[Request], Awaitable[None]]:
    """`strict_query` for an operation whose parameters `lists` are lists (given repeated)."""
    repeatable = frozenset(lists)

    async def check(request: Request) -> None:
        _check_query(request, repeatable)

    return check


# Where an operation's query parameter names are kept, on its route: its dependencies never
# change once the app is built, and walking them on every request showed in the profiles of
# hot reads.
_NAMES_ATTRIBUTE = "_civis_query_names"


def _check_query(request: Request, repeatable: frozenset[str]) -> None:
    if not request.scope.get("query_string"):
        return
    route = request.scope.get("route")
    known: frozenset[str] | None = getattr(route, _NAMES_ATTRIBUTE, None)
    if known is None:
        known = frozenset(_query_names(getattr(route, "dependant", None)))
        if route is not None:
            setattr(route, _NAMES_ATTRIBUTE, known)
    seen: set[str] = set()
    for key, _ in request.query_params.multi_items():
        if key not in known:
            raise RequestValidationError(
                [{"loc": ("query", key[:64]), "type": "unknown", "msg": "unknown parameter"}]
            )
        if key in seen and key not in repeatable:
            raise RequestValidationError(
                [{"loc": ("query", key), "type": "repeated", "msg": "given more than once"}]
            )
        seen.add(key)


async def _settings(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


def key_store(request: Request) -> KeyStore:
    """The app's key store; a plain call for a hot route, where a dependency's solve costs
    more than the lookup (`KeyStoreDep` elsewhere)."""
    store: KeyStore = request.app.state.key_store
    return store


async def _key_store(request: Request) -> KeyStore:
    return key_store(request)


SettingsDep = Annotated[Settings, Depends(_settings)]
KeyStoreDep = Annotated[KeyStore, Depends(_key_store)]


def ledger_gateway(request: Request) -> LedgerGateway:
    """The app's ledger gateway, or a 503 when this instance runs without one; a plain call
    for a hot route, as `key_store` (`LedgerDep` elsewhere)."""
    from api.services.gateway import LedgerUnavailable

    ledger: LedgerGateway | None = request.app.state.ledger
    if ledger is None:
        raise LedgerUnavailable("this instance runs without a ledger")
    return ledger


async def _ledger(request: Request) -> LedgerGateway:
    return ledger_gateway(request)


LedgerDep = Annotated["LedgerGateway", Depends(_ledger)]
