"""A real uvicorn server in a thread, on a free port, and admin tokens as clients make them."""

from __future__ import annotations

import base64
import json
import socket
import threading
import time
from collections.abc import Mapping
from types import TracebackType
from typing import Any

import jwt
import uvicorn
from fastapi import FastAPI

AUDIENCE = "keyrotor-admin"


class LiveServer:
    """`with LiveServer(app) as server:` serves `app` at `server.url` until the block ends."""

    def __init__(self, app: FastAPI) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        port = self.sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{port}"
        config = uvicorn.Config(app, log_level="warning", lifespan="off", access_log=False)
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(
            target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True
        )

    def __enter__(self) -> LiveServer:
        self.thread.start()
        deadline = time.monotonic() + 15
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise AssertionError("uvicorn did not start")
            time.sleep(0.01)
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        trace: TracebackType | None,
    ) -> None:
        self.server.should_exit = True
        self.thread.join(15)
        self.sock.close()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def admin_token(
    private_pem: str | bytes | Any,
    kid: str | None,
    *,
    aud: Any = (AUDIENCE,),
    lifetime: int = 300,
    iat_offset: int = 0,
    drop: tuple[str, ...] = (),
    extra: Mapping[str, Any] | None = None,
    headers: Mapping[str, Any] | None = None,
    algorithm: str = "RS256",
) -> str:
    """An admin token (RS256, `kid` header, `aud` list, `iat`, `exp`), as a test changes it."""
    now = int(time.time()) + iat_offset
    payload: dict[str, Any] = {
        "aud": list(aud) if isinstance(aud, tuple) else aud,
        "iat": now,
        "exp": now + lifetime,
        **(extra or {}),
    }
    for name in drop:
        payload.pop(name, None)
    header = dict(headers or {})
    if kid is not None:
        header["kid"] = kid
    return jwt.encode(payload, private_pem, algorithm, headers=header)


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def unsigned(header: Mapping[str, Any], payload: Mapping[str, Any]) -> str:
    """`header.payload.` without a signature, the way `alg: none` tokens look."""
    parts = [json.dumps(dict(header)).encode(), json.dumps(dict(payload)).encode()]
    return ".".join(b64url(part) for part in parts) + "."
