"""A tiny JWKS server over the Redis copy, for verifiers that only see HTTP (and PyJWKClient)."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import redis

from tests.support.replies import hget
from worker.publish.jwks import redis_key


@contextmanager
def serve_jwks(client: redis.Redis, hits: list[str] | None = None) -> Iterator[str]:
    """Serve `/realms/<realm_id>/.well-known/jwks.json`; yields the URL with `{realm}` in it."""

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            parts = self.path.strip("/").split("/")
            document = hget(client, redis_key(parts[1]), "document") if len(parts) == 4 else None
            if hits is not None:
                hits.append(self.path)
            if document is None:
                self.send_error(404)
                return
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(document)))
            self.end_headers()
            self.wfile.write(document)

        def log_message(self, *_: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}/realms/{{realm}}/.well-known/jwks.json"
    finally:
        server.shutdown()
        server.server_close()
