"""`/healthz` for load balancers and `/metrics` for Prometheus; neither needs a token."""

from __future__ import annotations

import redis
from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse
from sqlalchemy import text
from sqlalchemy.exc import SQLAlchemyError

from worker.http.context import HttpContext, context
from worker.http.models import Health
from worker.ops import metrics

router = APIRouter(tags=["operations"])


def _database(ctx: HttpContext) -> str:
    try:
        with ctx.service.sessions() as session:
            session.execute(text("SELECT 1"))
        return "ok"
    except SQLAlchemyError as error:
        return f"unreachable ({error.__class__.__name__})"


def _redis(ctx: HttpContext) -> str:
    client = ctx.redis.client()
    if client is None:
        return "not configured (set KEYROTOR_REDIS_URL, or start with `keyrotor run`)"
    try:
        client.ping()
        return "ok"
    except redis.RedisError as error:
        return f"unreachable ({error.__class__.__name__})"


@router.get(
    "/healthz",
    response_model=Health,
    responses={503: {"model": Health, "description": "The database or Redis does not answer."}},
)
def healthz(request: Request) -> JSONResponse:
    """200 when the database and Redis both answer, else 503; each check says why."""
    ctx = context(request)
    checks = {"database": _database(ctx), "redis": _redis(ctx)}
    healthy = all(result == "ok" for result in checks.values())
    return JSONResponse(
        {"status": "ok" if healthy else "unavailable", "checks": checks},
        status_code=200 if healthy else 503,
        headers={"Cache-Control": "no-store"},
    )


@router.get(
    "/metrics",
    response_class=Response,
    responses={200: {"content": {"text/plain": {}}, "description": "Prometheus text format."}},
)
def metrics_text(request: Request) -> Response:
    """Keys per state, realms overdue, events relayed, rotation failures, outbox backlog and
    JWKS publish lag, read at scrape time; the same size and cost whatever the realms."""
    ctx = context(request)
    body = metrics.exposition(ctx.service, ctx.redis.client(), ctx.clock(), tick=ctx.settings.tick)
    return Response(body, media_type=metrics.CONTENT_TYPE)
