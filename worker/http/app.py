"""The FastAPI app: routers, and the one place errors become status codes.

Every answer that is not a success is `{"errors": [sentences]}`. Bad input of any kind is a
4xx; a 5xx means the database or Redis is away (503) or a bug (500, logged).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from importlib.metadata import PackageNotFoundError, version
from typing import Any

import redis
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.utils import get_openapi
from fastapi.responses import JSONResponse
from sqlalchemy.exc import DataError, InterfaceError, OperationalError
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Receive, Scope, Send

from worker.core.clock import Clock, utcnow
from worker.core.durations import field_problem
from worker.core.errors import (
    Conflict,
    Forbidden,
    InvalidInput,
    InvalidToken,
    KeyrotorError,
    NotFound,
    NotMigrated,
    Unauthenticated,
)
from worker.http import admin, discovery_route, events, health, jwks_route, webhooks
from worker.http import admin_keys as admin_keys_routes
from worker.http import tokens as token_routes
from worker.http.auth import AdminAuthenticator, challenge, claimed_kid
from worker.http.context import HttpContext, RedisHandle
from worker.http.models import DURATION_FIELDS
from worker.service import Service
from worker.service.actors import acting_as
from worker.settings import Settings
from worker.store.admin_keys import AdminKeys

log = logging.getLogger("keyrotor.http")

DESCRIPTION = """\
keyrotor's HTTP surface: each realm's JWKS and OpenID Connect discovery document (public,
cacheable, open to every origin), the admin API in AuthRocket's shapes under `/v1` (every
request needs an admin bearer token), and `/healthz` and `/metrics` for operators.
"""

FIELD_NAMES = {
    "realm_id": "Realm",
    "jwt_key": "Jwt key",
    "max_results": "Max results",
    "rsa_bits": "Rsa bits",
    "body": "Body",
}
FIELD_MESSAGES = {"max_results": "Max results must be between 1 and 100"}
ERRORS_REF = "#/components/schemas/Errors"
BODY_NOT_PARSED = "There was an error parsing the body"


def create_app(
    settings: Settings,
    service: Service | None = None,
    *,
    admin_keys: AdminKeys | None = None,
    redis_client: redis.Redis | None = None,
    clock: Clock = utcnow,
) -> FastAPI:
    """The app for `settings`; tests hand in their own service, Redis client and clock."""
    if service is None:
        from worker.runtime import build_service

        service = build_service(settings, clock)
    admin_keys = admin_keys or AdminKeys(service.sessions, clock)
    app = FastAPI(
        title="keyrotor",
        version=_version(),
        description=DESCRIPTION,
        docs_url="/docs",
        redoc_url=None,
        # A reference that decodes to "/" (`/v1/jwt_keys/%2F`) is not found, answered in the
        # API's error shape, rather than a bodiless 307 to a path that does not exist either.
        redirect_slashes=False,
        # No OpenTelemetry here; left on, FastAPI looks for its providers on every request.
        telemetry={"tracing": False, "metrics": False, "logs": False},
    )
    app.state.keyrotor = HttpContext(
        settings=settings,
        service=service,
        admin_keys=admin_keys,
        authenticator=AdminAuthenticator(
            admin_keys,
            audience=settings.admin_audience,
            issuer=settings.admin_issuer,
            max_ttl=settings.admin_token_max_ttl,
            clock_skew=settings.clock_skew,
        ),
        redis=RedisHandle(settings, redis_client),
        clock=clock,
    )
    app.router.routes[:0] = [*jwks_route.ROUTES, *discovery_route.ROUTES]  # the hot route first
    app.add_middleware(ActorScope)
    app.add_middleware(jwks_route.FromMemory, ctx=app.state.keyrotor)
    app.include_router(admin.router)
    app.include_router(webhooks.router)
    app.include_router(token_routes.router)
    app.include_router(admin_keys_routes.router)
    app.include_router(events.router)
    app.include_router(health.router)
    _map_errors(app)
    _document_errors_truthfully(app)
    return app


def _document_errors_truthfully(app: FastAPI) -> None:
    """The OpenAPI document, truthful: it describes the JWKS and discovery routes (plain
    Starlette routes, which FastAPI does not see), and where FastAPI documents its own 422 body
    (`{"detail": [...]}`) it says ours, `{"errors": [...]}`."""

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            routes = [jwks_route.DOCUMENTED, discovery_route.DOCUMENTED, *app.routes]
            schema = get_openapi(
                title=app.title, version=app.version, description=app.description, routes=routes
            )
            for path in schema.get("paths", {}).values():
                for operation in path.values():
                    responses = operation.get("responses", {})
                    response = responses.get("422")
                    if response is None or "HTTPValidationError" not in str(response):
                        continue
                    parameters = operation.get("parameters", [])
                    if "requestBody" not in operation and all(
                        parameter["in"] == "path" for parameter in parameters
                    ):
                        del responses["422"]  # a string in the path cannot be invalid
                    else:
                        response["description"] = "Invalid input, in words."
                        response["content"] = {"application/json": {"schema": {"$ref": ERRORS_REF}}}
            components = schema.get("components", {}).get("schemas", {})
            components.pop("HTTPValidationError", None)
            components.pop("ValidationError", None)
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]


class ActorScope:
    """Each admin API request acts as its own actor, which authentication names after the
    admin key (`require_admin`); the events its changes write record that key."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not scope["path"].startswith("/v1/"):
            await self.app(scope, receive, send)
            return
        with acting_as():
            await self.app(scope, receive, send)


def errors(status: int, *messages: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"errors": list(messages)}, status_code=status, headers=headers)


def _map_errors(app: FastAPI) -> None:
    """The error tree to status codes, here and nowhere else."""

    @app.exception_handler(InvalidInput)
    def invalid_input(_: Request, error: InvalidInput) -> JSONResponse:
        return errors(422, *error.messages)

    @app.exception_handler(NotFound)
    def not_found(_: Request, error: NotFound) -> JSONResponse:
        return errors(404, "Not found")

    @app.exception_handler(Conflict)
    def conflict(_: Request, error: Conflict) -> JSONResponse:
        return errors(409, str(error))

    @app.exception_handler(InvalidToken)
    @app.exception_handler(Unauthenticated)
    def unauthorized(request: Request, error: InvalidToken | Unauthenticated) -> JSONResponse:
        message = "Unauthorized" if isinstance(error, Unauthenticated) else f"Unauthorized: {error}"
        _refused(request, 401, str(error))
        return errors(401, message, headers={"WWW-Authenticate": challenge(error)})

    @app.exception_handler(Forbidden)
    def forbidden(request: Request, error: Forbidden) -> JSONResponse:
        _refused(request, 403, str(error))  # the reason names the key and what it asked
        return errors(403, "Forbidden")

    @app.exception_handler(NotMigrated)
    @app.exception_handler(OperationalError)
    @app.exception_handler(InterfaceError)
    def unavailable(_: Request, error: Exception) -> JSONResponse:
        log.warning("database unavailable: %s", error.__class__.__name__)
        return errors(503, "Service unavailable: the database does not answer")

    @app.exception_handler(redis.RedisError)
    def redis_unavailable(_: Request, error: Exception) -> JSONResponse:
        log.warning("redis unavailable: %s", error.__class__.__name__)
        return errors(503, "Service unavailable: Redis does not answer")

    @app.exception_handler(DataError)
    def data_error(_: Request, error: DataError) -> JSONResponse:
        return errors(422, "Invalid input")

    @app.exception_handler(KeyrotorError)
    def server_fault(request: Request, error: KeyrotorError) -> JSONResponse:
        # One reaching here (a seal that does not open, say) is the server's fault, not input.
        log.error("%s %s failed: %s", request.method, request.url.path, error.__class__.__name__)
        return errors(500, "Internal server error")

    @app.exception_handler(Exception)
    def internal(_: Request, error: Exception) -> JSONResponse:
        # Starlette re-raises after answering, so the server logs the traceback.
        return errors(500, "Internal server error")

    @app.exception_handler(RequestValidationError)
    def validation(_: Request, error: RequestValidationError) -> JSONResponse:
        return errors(422, *human_errors(error.errors()))

    @app.exception_handler(HTTPException)
    def http_error(_: Request, error: HTTPException) -> JSONResponse:
        if error.status_code == 400 and error.detail == BODY_NOT_PARSED:
            # FastAPI's answer to a body that is not even text (bad UTF-8): invalid input too
            return errors(422, "Body is not valid JSON")
        words = {404: "Not found", 405: "Method not allowed"}.get(error.status_code)
        headers = dict(error.headers) if error.headers else None
        return errors(error.status_code, words or str(error.detail), headers=headers)


def _refused(request: Request, status: int, reason: str) -> None:
    """A WARNING for each refused admin request: the key it claims (verified for a 403), the
    route and why; never the token, and the URL only as its route's template."""
    route = request.scope.get("route")
    path = getattr(route, "path", None) or "".join(
        c for c in request.url.path[:100] if c.isprintable()
    )
    log.warning(
        "admin request refused",
        extra={
            "status": status,
            "kid": claimed_kid(request.headers.get("authorization")),
            "route": f"{request.method} {path}",
            "reason": reason,
        },
    )


def human_errors(details: Sequence[Any]) -> list[str]:
    """pydantic's validation errors as AuthRocket writes them: "Algo can't be blank"."""
    messages: list[str] = []
    for detail in details:
        message = _human(detail)
        if message not in messages:
            messages.append(message)
    return messages or ["Invalid input"]


def _human(detail: Any) -> str:
    loc = [part for part in detail.get("loc", ()) if isinstance(part, str)]
    kind = str(detail.get("type", ""))
    # The first part says where the value came from; a field may be called `header` too.
    where = loc[1:] if loc and loc[0] in ("body", "query", "path", "header") else loc
    if kind == "json_invalid":
        return "Body is not valid JSON"
    if not where:
        if kind == "missing":
            return "Body can't be blank"
        return "Body must be a JSON object"
    # Union members (`int`, `str`) and our own field names come after the field itself.
    field = next((part for part in reversed(where) if part in DURATION_FIELDS), None)
    if field is not None:
        return field_problem(_label(field))
    field = where[-1]
    if field in FIELD_MESSAGES:
        return FIELD_MESSAGES[field]
    label = FIELD_NAMES.get(field) or _label(field)
    ctx = detail.get("ctx") or {}
    match kind:
        case "missing":
            return f"{label} can't be blank"
        case "extra_forbidden":
            return f"{label} is not a known field"
        case "string_type":
            return f"{label} must be a string"
        case "int_type" | "int_parsing" | "int_from_float" | "int_parsing_size":
            return f"{label} must be a whole number"
        case "bool_type" | "bool_parsing":
            return f"{label} must be true or false"
        case "model_type" | "model_attributes_type" | "dict_type":
            return f"{label} must be an object"
        case "list_type":
            return f"{label} must be a list"
        case "literal_error":
            return f"{label} must be {ctx.get('expected', 'one of the allowed values')}"
        case "string_too_long":
            return f"{label} is too long (at most {ctx.get('max_length')} characters)"
        case _:
            return f"{label} is invalid"


def _label(field: str) -> str:
    """A field name as words; an unknown key from the request is shown short and printable."""
    shown = "".join(c for c in field[:40] if c.isprintable())
    return (shown.replace("_", " ").capitalize() or "Field") + ("…" if len(field) > 40 else "")


def _version() -> str:
    try:
        return version("keyrotor")
    except PackageNotFoundError:
        return "0+unknown"


def serve(
    settings: Settings,
    service: Service | None = None,
    *,
    host: str | None = None,
    port: int | None = None,
) -> None:
    """Run the app under uvicorn until SIGTERM or Ctrl-C; the `web` process. Logging is the
    caller's (`worker.ops.logs.configure_logging`): uvicorn's loggers go through it."""
    import uvicorn

    uvicorn.run(
        create_app(settings, service),
        host=host or settings.http_host,
        port=port or settings.http_port,
        log_config=None,
        log_level=settings.log_level.lower(),
        server_header=False,
    )
