"""`GET /realms/<id or name>/.well-known/jwks.json`: the published copy, honestly cacheable.

The document comes from the Redis copy the publisher keeps (so verifiers' traffic does not
reach the database), or from the database when Redis has none or is away. `max-age` is the
smaller of KEYROTOR_JWKS_MAX_AGE and the seconds until the realm's next scheduled change, so
no cache keeps a key set past a change it could have known about.

This is the hot route. Each process keeps what it read for 20 ms (`Recent`,
worker/http/context.py), and `FromMemory` answers from that copy before FastAPI's machinery,
which costs more than the answer: a crowd of verifiers asking at once costs one Redis read, and
a change made elsewhere shows here at most 20 ms later (one made through this process, at
once). The route itself is a plain Starlette route; `DOCUMENTED` describes it in /openapi.json.
"""

from __future__ import annotations

import asyncio
import logging
import time
from datetime import datetime, timedelta
from typing import Any

import redis
from fastapi import Request, Response
from fastapi.routing import APIRoute
from starlette.concurrency import run_in_threadpool
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send

from worker.core import ids
from worker.http.context import CORS, Document, HttpContext, clean_ref, context
from worker.http.models import Errors, JwkSet
from worker.publish import jwks

log = logging.getLogger("keyrotor.http")

PATH = "/realms/{realm}/.well-known/jwks.json"
PREFIX, SUFFIX = "/realms/", "/.well-known/jwks.json"
WARN_EVERY = 60.0


def max_age(limit: timedelta, next_change_at: datetime | None, now: datetime) -> int:
    """Whole seconds a cache may keep the set: never past the next scheduled change, never
    negative (an overdue change makes every cache revalidate)."""
    seconds = int(limit.total_seconds())
    if next_change_at is not None:
        seconds = min(seconds, int((next_change_at - now).total_seconds()))
    return max(0, seconds)


def matches(if_none_match: str | None, etag: str) -> bool:
    """Weak comparison (RFC 9110 13.1.2): `*`, or any listed tag, with or without `W/`."""
    if if_none_match is None:
        return False
    for candidate in if_none_match.split(","):
        tag = candidate.strip()
        if tag == "*":
            return True
        if tag.startswith("W/"):
            tag = tag[2:]
        if tag == etag:
            return True
    return False


_last_warning = 0.0


def _warn(message: str, *args: object) -> None:
    """A Redis outage would log on every request; once a minute is enough."""
    global _last_warning
    if time.monotonic() - _last_warning >= WARN_EVERY:
        _last_warning = time.monotonic()
        log.warning(message, *args)


def _from_redis(ctx: HttpContext, ref: str) -> Document | None:
    client = ctx.redis.reader()
    if client is None:
        return None
    by_name = not ids.looks_like("rl", ref)
    realm_id = ctx.names.get(ref) if by_name else ref
    if realm_id is None:
        return None
    try:
        found: list[Any] = client.hmget(
            jwks.redis_key(realm_id), ["document", "etag", "next_change_at", "realm_name"]
        )
    except redis.RedisError as error:
        ctx.redis.failed()
        _warn("JWKS served from the database: Redis is unavailable (%s)", error.__class__.__name__)
        return None
    document, etag, next_change_at, realm_name = (_text(value) for value in found)
    if document is None or etag is None:
        return None
    if by_name and realm_name != ref:
        ctx.names.forget(ref)
        return None
    try:
        next_at = datetime.fromisoformat(next_change_at) if next_change_at else None
    except ValueError:
        return None  # not written by our publisher: the database knows
    if next_at is not None and next_at.tzinfo is None:
        return None
    return Document(document.encode(), etag, next_at, realm_name)


def _text(value: bytes | str | None) -> str | None:
    return value.decode() if isinstance(value, bytes) else value


def _from_database(ctx: HttpContext, ref: str) -> Document:
    publication = ctx.service.publication(ref)
    if publication.realm_id != ref:
        ctx.names.put(ref, publication.realm_id)
    body = jwks.body(publication.jwks)
    return Document(body, jwks.etag(body), publication.next_change_at, publication.realm_name)


def load(ctx: HttpContext, ref: str, generation: int) -> Document:
    """The realm's document from Redis, else the database, kept in `Recent` (blocking: run in a
    thread)."""
    document = _from_redis(ctx, ref) or _from_database(ctx, ref)
    ctx.recent.put(ref, document, generation)
    return document


async def _read_once(ctx: HttpContext, ref: str) -> Document:
    """`load` in the thread pool, once for all the requests that miss a realm together (when
    the copy lapses under load, every request in flight misses at the same moment)."""
    key = (ref, ctx.recent.generation)  # a read begun before a change is not joined after it
    reading = ctx.reading.get(key)
    if reading is None:
        reading = asyncio.ensure_future(run_in_threadpool(load, ctx, *key))
        ctx.reading[key] = reading

        def done(future: asyncio.Future[Document]) -> None:
            ctx.reading.pop(key, None)
            if not future.cancelled():
                future.exception()  # retrieved, so asyncio does not log it as lost

        reading.add_done_callback(done)
    return await asyncio.shield(reading)  # a caller gone does not cancel the others' read


def answer(
    ctx: HttpContext, document: Document, if_none_match: str | None
) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
    """Status, headers and body: the 200, or the 304 when `If-None-Match` names the ETag."""
    age = max_age(ctx.settings.jwks_max_age, document.next_change_at, ctx.clock())
    cache = (b"cache-control", b"public, max-age=%d" % age)
    if matches(if_none_match, document.etag):
        return 304, [*document.headers_304, cache], b""
    return 200, [*document.headers_200, cache], document.body


async def realm_jwks(request: Request) -> Response:
    """A realm's JWKS, by realm id or name; open to every origin. (`FromMemory` answers first
    when this process read it lately.)"""
    ctx = context(request)
    ref = clean_ref(request.path_params["realm"])
    document = await _read_once(ctx, ref)
    status, headers, body = answer(ctx, document, request.headers.get("if-none-match"))
    response = Response(body, status)
    response.raw_headers = headers
    return response


class FromMemory:
    """ASGI middleware: a JWKS request for a document in `Recent` is answered here, before
    FastAPI's exception handling and routing, which cost more than the answer. Anything else,
    a miss included, goes on to the app."""

    def __init__(self, app: ASGIApp, ctx: HttpContext) -> None:
        self.app = app
        self.ctx = ctx

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] in ("GET", "HEAD"):
            path: str = scope["path"]
            if path.startswith(PREFIX) and path.endswith(SUFFIX):
                document = self.ctx.recent.get(path[len(PREFIX) : -len(SUFFIX)])
                if document is not None:
                    if_none_match = next(
                        (v.decode("latin-1") for k, v in scope["headers"] if k == b"if-none-match"),
                        None,
                    )
                    status, headers, body = answer(self.ctx, document, if_none_match)
                    await send(
                        {"type": "http.response.start", "status": status, "headers": headers}
                    )
                    await send({"type": "http.response.body", "body": body})
                    return
        await self.app(scope, receive, send)


async def realm_jwks_preflight(request: Request) -> Response:
    """CORS preflight, for browsers that send `If-None-Match` themselves."""
    return Response(
        status_code=204,
        headers={
            **CORS,
            "Access-Control-Allow-Methods": "GET, HEAD, OPTIONS",
            "Access-Control-Allow-Headers": "If-None-Match, Cache-Control",
            "Access-Control-Max-Age": "86400",
        },
    )


# GET also answers HEAD (the GET's headers; the server sends no body).
ROUTES = [
    Route(PATH, realm_jwks, methods=["GET"]),
    Route(PATH, realm_jwks_preflight, methods=["OPTIONS"]),
]


def _documented(realm: str) -> None:
    """A realm's JWKS, by realm id or name; open to every origin."""


DOCUMENTED = APIRoute(
    PATH,
    _documented,
    methods=["GET"],
    name="realm_jwks",
    tags=["jwks"],
    response_class=Response,
    responses={
        200: {
            "model": JwkSet,
            "description": "The realm's public keys: pending, active and expired-in-grace.",
            "headers": {
                "ETag": {"schema": {"type": "string"}},
                "Cache-Control": {
                    "description": "`public, max-age=N`, N at most KEYROTOR_JWKS_MAX_AGE and"
                    " never past the realm's next scheduled JWKS change.",
                    "schema": {"type": "string"},
                },
                "Access-Control-Allow-Origin": {"schema": {"type": "string", "enum": ["*"]}},
            },
        },
        304: {"description": "Not modified: `If-None-Match` names the current ETag."},
        404: {"model": Errors, "description": "No such realm."},
    },
)
