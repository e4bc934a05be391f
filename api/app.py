"""The FastAPI application factory. Engines are built in the lifespan, never at import."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from sqlalchemy import text

from vault import db
from vault.config import Settings
from vault.keys import KeyStore, LocalKeyProvider


def create_app(settings: Settings, *, database_url: str) -> FastAPI:
    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        # First start creates the master key file (0600); an unsafe one stops the service here.
        app.state.key_store = KeyStore(LocalKeyProvider(settings.resolved_master_key_path))
        engine = db.make_engine(database_url)
        app.state.engine = engine
        app.state.sessions = db.make_session_factory(engine)
        app.state.settings = settings
        try:
            yield
        finally:
            engine.dispose()

    app = FastAPI(title="Civis Vault", version="0.1.0", lifespan=lifespan)

    @app.get("/healthz", tags=["health"])
    def healthz() -> dict[str, str]:
        """Liveness: the process answers. Says nothing about dependencies (see /readyz)."""
        with app.state.engine.connect() as conn:
            conn.execute(text("SELECT 1"))
        return {"status": "ok"}

    return app
