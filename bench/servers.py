"""The two HTTP servers the JWKS benchmark compares, each run as `python -m bench.servers`.

`keyrotor PORT` is the real app through `worker.http.app.serve` (what `keyrotor web` runs);
`bare PORT FILE` is a Starlette route answering the bytes in FILE, under the same uvicorn
settings: one process, the configured log level, no server header; `bare-headers` the same with
the JWKS route's headers (ETag, Cache-Control, CORS). `fastapi-async` and
`fastapi-sync` answer the same bytes from a FastAPI route (`async def`, and a plain `def` run
in the thread pool, as the JWKS route is): they show where the route's time goes.

`sign-bare PORT KEY_FILE KID` is the signing benchmark's anchor: a FastAPI `def` route at the
signing route's path that stamps `iat` and `exp` on the posted claims and calls `jwt.encode`
with the ES256 key in KEY_FILE, loaded once: what signing over HTTP costs at the least.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from worker.settings import load_settings


def main(argv: list[str]) -> None:
    kind, port = argv[0], int(argv[1])
    settings = load_settings()
    if kind == "keyrotor":
        from worker.http.app import serve

        serve(settings, host="127.0.0.1", port=port)
        return
    import uvicorn

    if kind == "sign-bare":
        uvicorn.run(
            _bare_signer(Path(argv[2]), argv[3]),
            host="127.0.0.1",
            port=port,
            log_level=settings.log_level.lower(),
            server_header=False,
        )
        return
    from fastapi import FastAPI
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import Response
    from starlette.routing import Route

    document = Path(argv[2]).read_bytes()
    path = "/realms/{realm}/.well-known/jwks.json"
    app: Any
    if kind == "bare":

        async def constant(_: Request) -> Response:
            return Response(document, media_type="application/json")

        app = Starlette(routes=[Route(path, constant)])
    elif kind == "bare-headers":
        headers = {
            "ETag": '"0123456789abcdef0123456789abcdef"',
            "Cache-Control": "public, max-age=300",
            "Access-Control-Allow-Origin": "*",
            "Access-Control-Expose-Headers": "ETag, Cache-Control",
        }

        async def constant_with_headers(_: Request) -> Response:
            return Response(document, media_type="application/json", headers=headers)

        app = Starlette(routes=[Route(path, constant_with_headers)])
    elif kind == "fastapi-async":

        async def constant_async(realm: str) -> Response:
            return Response(document, media_type="application/json")

        app = FastAPI()
        app.add_api_route(path, constant_async)
    elif kind == "fastapi-sync":

        def constant_sync(realm: str) -> Response:
            return Response(document, media_type="application/json")

        app = FastAPI()
        app.add_api_route(path, constant_sync)
    else:
        raise SystemExit(f"unknown server {kind!r}")
    uvicorn.run(
        app,
        host="127.0.0.1",
        port=port,
        log_level=settings.log_level.lower(),
        server_header=False,
    )


def _bare_signer(key_file: Path, kid: str) -> Any:
    import time

    import jwt
    from cryptography.hazmat.primitives import serialization
    from fastapi import FastAPI

    key = serialization.load_pem_private_key(key_file.read_bytes(), password=None)
    headers = {"kid": kid}
    app = FastAPI()

    @app.post("/v1/realms/{realm}/tokens", status_code=201)
    def sign(realm: str, body: dict[str, Any]) -> dict[str, Any]:
        now = int(time.time())
        claims = {**body["token"]["claims"], "iat": now, "exp": now + 300}
        token = jwt.encode(claims, key, algorithm="ES256", headers=headers)  # type: ignore[arg-type]
        return {"token": token, "kid": kid}

    return app


if __name__ == "__main__":
    main(sys.argv[1:])
