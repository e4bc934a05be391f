"""The FastAPI application factory. Engines are built in the lifespan, never at import."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager

from fastapi import FastAPI
from prometheus_client import CollectorRegistry

from api import errors
from api.middleware import BodyLimit, Metrics
from api.readiness import ReadinessProbe
from api.routes import datasets, health
from vault import db
from vault.config import Settings
from vault.keys import KeyStore, make_provider


def create_app(
    settings: Settings, *, database_url: str, probes: Sequence[ReadinessProbe] = ()
) -> FastAPI:
    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        # First start creates the master key file (0600) or the token's first KEK; an unsafe
        # key file, a missing token or a wrong PIN stops the service here.
        app.state.key_store = KeyStore(make_provider(settings))
        engine = db.make_engine(database_url)
        app.state.engine = engine
        app.state.sessions = db.make_session_factory(engine)
        try:
            yield
        finally:
            engine.dispose()

    app = FastAPI(
        title="Civis Vault",
        version="0.1.0",
        lifespan=lifespan,
        responses=errors.PROBLEM_RESPONSES,
    )
    app.state.settings = settings
    app.state.readiness_probes = tuple(probes)
    # One registry per app: several apps in one test process must not collide.
    app.state.metrics_registry = CollectorRegistry()
    errors.install(app)
    app.include_router(health.router)
    app.include_router(datasets.router)
    app.add_middleware(
        BodyLimit,
        upload_max_bytes=settings.upload_body_max_bytes,
        json_max_bytes=settings.json_body_max_bytes,
    )
    app.add_middleware(Metrics, registry=app.state.metrics_registry)
    return app
