"""Liveness, readiness and metrics: unauthenticated, and free of personal data."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from sqlalchemy import text
from sqlalchemy.exc import SQLAlchemyError

from api.errors import ApiError
from api.schemas import Health, Readiness

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
    """Readiness: the database answers. (The ledger quorum joins once the client lands.)"""
    try:
        with request.app.state.engine.connect() as conn:
            conn.execute(text("SELECT 1"))
    except SQLAlchemyError:
        raise NotReady("the database is unreachable") from None
    return Readiness(status="ready", database="ok")


@router.get("/metrics", response_class=Response, responses={200: {"content": {"text/plain": {}}}})
def metrics(request: Request) -> Response:
    return Response(
        generate_latest(request.app.state.metrics_registry), media_type=CONTENT_TYPE_LATEST
    )
