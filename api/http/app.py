"""The FastAPI application factory. Engines are built in the lifespan, never at import."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import TYPE_CHECKING

from fastapi import FastAPI
from prometheus_client import CollectorRegistry

from api.http import errors
from api.http.admission import UploadSlots
from api.http.middleware import BodyLimit, Metrics, bound_access_log
from api.http.routes import (
    access,
    consents,
    datasets,
    decryptions,
    devices,
    discovery,
    erasures,
    health,
    incidents,
    notices,
    recipient_notices,
    requests,
    restrictions,
    sign_in,
    subjects,
    tokens,
)
from api.http.routes import console as console_routes
from api.http.routes import dashboards as dashboard_routes
from api.http.routes import dpo as dpo_routes
from api.http.routes import fees as fee_routes
from api.http.routes import ledger as ledger_routes
from api.http.routes import rectifications as rectification_routes
from api.http.settings import Settings
from api.services.keys import VerifiedKeys
from api.services.readiness import ReadinessProbe
from vault import db
from vault.keys import KeyStore, make_provider

if TYPE_CHECKING:
    from api.services.gateway import LedgerGateway
    from api.services.jobs import BackgroundJobs, KeyMaintenance

_log = logging.getLogger(__name__)

# A starting process asks an unreachable database again after this long, doubled each time.
DATABASE_RETRY_MIN_S = 0.25
DATABASE_RETRY_MAX_S = 2.0
# Database connections per app (per API worker process), in all: 4 workers stay under a
# default PostgreSQL's 100 (docs/LEDGER-OPERATIONS.md). The engine keeps ENGINE_POOL_SIZE
# open and opens more up to what the loop's own reads (READS_POOL_SIZE) leave.
CONNECTIONS_MAX = 20
ENGINE_POOL_SIZE = 10
READS_POOL_SIZE = 5


def create_app(
    settings: Settings,
    *,
    database_url: str,
    probes: Sequence[ReadinessProbe] = (),
    ledger: LedgerGateway | None = None,
    background_jobs: bool = True,
    owns_ledger: bool = False,
) -> FastAPI:
    """The app; with `ledger`, consent-checked access, anchoring and the ledger routes.

    Without a ledger (some API tests, a read-only maintenance instance) every route that needs
    one answers 503, and datasets live in the vault only. `owns_ledger`: the gateway is this
    app's alone (an API worker process's, api/cli/serving.py) and closes when its lifespan
    ends; otherwise whoever made it closes it.
    """
    app = FastAPI(
        title="Civis Vault",
        version="0.1.0",
        lifespan=_lifespan(settings, database_url, ledger, background_jobs, owns_ledger),
        responses=errors.PROBLEM_RESPONSES,
    )
    _set_state(app, settings, probes, ledger)
    errors.install(app)
    # The order of the routers is the order in which a request's path is matched, and the
    # order of the paths in openapi.yaml. Consented access comes first: it is the hottest
    # path, and matching walks the routes before it one by one on every request.
    app.include_router(access.router)
    app.include_router(health.router)
    app.include_router(datasets.router)
    app.include_router(consents.router)
    app.include_router(notices.router)
    app.include_router(discovery.router)
    app.include_router(fee_routes.router)
    app.include_router(sign_in.router)
    app.include_router(subjects.router)
    app.include_router(restrictions.router)
    app.include_router(erasures.router)
    app.include_router(decryptions.router)
    app.include_router(recipient_notices.router)
    app.include_router(rectification_routes.router)
    app.include_router(requests.router)
    app.include_router(ledger_routes.router)
    app.include_router(dpo_routes.router)
    app.include_router(recipient_notices.dpo_router)
    app.include_router(incidents.router)
    app.include_router(devices.router)
    app.include_router(tokens.router)
    app.include_router(console_routes.page_router)
    app.include_router(dashboard_routes.router)
    app.include_router(dashboard_routes.page_router)
    app.add_middleware(
        BodyLimit,
        upload_max_bytes=settings.upload_body_max_bytes,
        json_max_bytes=settings.json_body_max_bytes,
        idle_timeout_s=settings.body_idle_timeout_s,
        upload_timeout_s=settings.upload_body_timeout_s,
        json_timeout_s=settings.json_body_timeout_s,
    )
    app.add_middleware(Metrics, registry=app.state.metrics_registry)
    return app


def _set_state(
    app: FastAPI,
    settings: Settings,
    probes: Sequence[ReadinessProbe],
    ledger: LedgerGateway | None,
) -> None:
    """What the app holds from its creation: the settings, the ledger and this process's
    memories (members' standing, verified keys) and limits."""
    app.state.settings = settings
    app.state.ledger = ledger
    app.state.member_standing = None
    app.state.reads_pool = None  # the lifespan's, when it runs (db.AsyncPool)
    if ledger is not None:
        from api.services.member_standing import MemberStanding

        app.state.member_standing = MemberStanding(ledger)
    app.state.verified_keys = VerifiedKeys(settings.api_key_cache_s)
    app.state.readiness_probes = tuple(probes)
    app.state.upload_slots = UploadSlots(
        per_key_max=settings.uploads_per_key_max, total_max=settings.uploads_max
    )
    # One registry per app: several apps in one test process must not collide.
    app.state.metrics_registry = CollectorRegistry()


def _lifespan(
    settings: Settings,
    database_url: str,
    ledger: LedgerGateway | None,
    background_jobs: bool,
    owns_ledger: bool,
) -> Callable[[FastAPI], AbstractAsyncContextManager[None]]:
    """The app's lifespan: the key store, the engine and the background jobs exist only while
    the app serves (never at import, nor in an app built only for its OpenAPI document)."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        from api.services.outbox import OutboxCollector

        bound_access_log()
        # First start creates the master key file (0600) or the token's first KEK; an unsafe
        # key file, a missing token or a wrong PIN stops the service here.
        app.state.key_store = KeyStore(make_provider(settings))
        # This loop's own reads (the consented access's), unless an unwrap may wait on a token.
        waits = app.state.key_store.provider.unwrap_waits
        reads_pool = None if waits else db.AsyncPool(database_url, size=READS_POOL_SIZE)
        engine = db.make_engine(
            database_url,
            pool_size=ENGINE_POOL_SIZE,
            max_overflow=max(
                0, CONNECTIONS_MAX - ENGINE_POOL_SIZE - (0 if waits else READS_POOL_SIZE)
            ),
        )
        app.state.engine = engine
        app.state.sessions = db.make_session_factory(engine)
        app.state.reads_pool = reads_pool
        outbox_metrics = OutboxCollector(app.state.sessions)
        app.state.metrics_registry.register(outbox_metrics)
        if ledger is not None:
            await _bind_when_reachable(app, ledger, settings.database_start_wait_s)
        keys = _start_key_maintenance(app, settings) if background_jobs else None
        app.state.key_maintenance = keys
        jobs = _start_jobs(app, settings, ledger) if background_jobs else None
        app.state.jobs = jobs
        if ledger is not None:
            await ledger.open_lane()  # ledger clients on this loop, for the async routes
        try:
            yield
        finally:
            try:
                app.state.metrics_registry.unregister(outbox_metrics)
                if jobs is not None:
                    jobs.stop()
                if keys is not None:
                    keys.stop()
                if reads_pool is not None:
                    app.state.reads_pool = None
                    await reads_pool.close()
                engine.dispose()
            finally:
                if ledger is not None:
                    await _close_ledger(ledger, owns_ledger)

    return lifespan


async def _close_ledger(ledger: LedgerGateway, owns_ledger: bool) -> None:
    """This loop's lane, then the gateway itself when it is this app's alone."""
    try:
        await ledger.close_lane()
    finally:
        if owns_ledger:
            ledger.close()


async def _bind_when_reachable(app: FastAPI, ledger: LedgerGateway, wait_s: float) -> None:
    """Bind the database to the ledger's chain (`bind_database`), waiting up to `wait_s` for
    a database that does not answer yet.

    Why wait: of several worker processes, one the supervisor starts again while PostgreSQL
    restarts would otherwise fail its start, and a failed start stops every worker. Only an
    unreachable database is waited for: a database bound to another chain is refused at once.
    The worker serves nothing meanwhile; the others, started earlier, answer 503 until the
    database is back."""
    from sqlalchemy.exc import OperationalError

    from api.services.gateway import bind_database

    deadline = time.monotonic() + wait_s
    delay_s = DATABASE_RETRY_MIN_S
    while True:
        try:
            with app.state.sessions() as session, session.begin():
                bind_database(session, ledger.genesis)
            return
        except OperationalError:
            if time.monotonic() + delay_s > deadline:
                raise
            _log.warning("the database does not answer yet; starting again in %.1f s", delay_s)
            await asyncio.sleep(delay_s)
            delay_s = min(2 * delay_s, DATABASE_RETRY_MAX_S)


def _start_key_maintenance(app: FastAPI, settings: Settings) -> KeyMaintenance:
    """The heartbeat (this instance's KEKs) and the final-erasure job, running; with or
    without a ledger, since every instance wraps secrets."""
    from api.services.jobs import KeyMaintenance
    from vault.final_erasure import FinalErasure
    from vault.keys.registry import InstanceRegistry

    store: KeyStore = app.state.key_store
    keys = KeyMaintenance(
        InstanceRegistry(app.state.sessions, store.provider),
        FinalErasure(
            app.state.sessions,
            store,
            interval=settings.final_erasure_interval,
            instance_ttl_s=settings.instance_ttl_s,
        ),
        heartbeat_s=settings.instance_heartbeat_s,
    )
    keys.start()
    return keys


def _start_jobs(
    app: FastAPI, settings: Settings, ledger: LedgerGateway | None
) -> BackgroundJobs | None:
    """The outbox relay, the retention sweeper, the batcher of recorded reads, the delivery
    of recipient notices, the sign-in purge and the register's sync with the ledger, running;
    none without a ledger (nor sign-ins: they are signed for the ledger's chain)."""
    if ledger is None:
        return None
    from api.services.decryptions import ReadBatcher
    from api.services.jobs import BackgroundJobs, Periodic
    from api.services.outbox import OutboxRelay
    from api.services.recipient_notices import NoticeDelivery
    from api.services.requests import RequestSync
    from api.services.retention_sync import sync_retention
    from api.services.subject_sessions import purge_expired_sessions
    from vault.erasure import Eraser
    from vault.retention import RetentionSweeper

    sessions = app.state.sessions
    batcher = ReadBatcher(sessions, batch_max=settings.read_batch_max)
    delivery = NoticeDelivery(sessions, ledger.vault_key, recipient_notices.policy(settings))
    jobs = BackgroundJobs(
        OutboxRelay(sessions, ledger),
        RetentionSweeper(sessions, Eraser(app.state.key_store)),
        relay_interval_s=settings.relay_interval_s,
        sweep_interval_s=settings.sweep_interval_s,
        periodic=(
            Periodic("read batcher", settings.read_batch_interval_s, batcher.run_once),
            Periodic(
                "recipient notices",
                settings.notice_delivery_interval_s,
                delivery.run_once,
                alone=True,
            ),
            Periodic(
                "sign-in purge",
                settings.session_purge_interval_s,
                lambda: purge_expired_sessions(sessions),
            ),
            Periodic(
                "request register", settings.request_sync_interval_s, RequestSync(sessions, ledger)
            ),
        ),
        retention_sync=lambda: sync_retention(app.state.sessions, ledger),
    )
    jobs.start()
    return jobs
