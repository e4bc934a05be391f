"""Liveness, readiness and metrics: unauthenticated, and free of personal data."""

from __future__ import annotations

from typing import Literal

from fastapi import APIRouter, Request, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from sqlalchemy import text
from sqlalchemy.exc import SQLAlchemyError

from api.http.errors import ApiError
from api.http.schemas import Health, Readiness

router = APIRouter(tags=["health"])


class NotReady(ApiError):
    status = 503
    title = "Not ready"


@router.get("/healthz")
def healthz() -> Health:
    """Liveness: the process answers. Says nothing about dependencies (see /readyz)."""
    return Health(status="ok")


@router.get("/readyz")
def readyz(request: Request) -> Readiness:
    """Readiness: the database answers, and every configured probe (the ledger quorum) too."""
    try:
        with request.app.state.engine.connect() as conn:
            conn.execute(text("SELECT 1"))
    except SQLAlchemyError:
        raise NotReady("database: unreachable") from None
    checks: dict[str, Literal["ok"]] = {"database": "ok"}
    for probe in request.app.state.readiness_probes:
        reason = probe.check()
        if reason is not None:
            raise NotReady(f"{probe.name}: {reason}")
        checks[probe.name] = "ok"
    return Readiness(status="ready", checks=checks)


@router.get("/metrics", response_class=Response, responses={200: {"content": {"text/plain": {}}}})
def metrics(request: Request) -> Response:
    return Response(
        generate_latest(request.app.state.metrics_registry), media_type=CONTENT_TYPE_LATEST
    )
