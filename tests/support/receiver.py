"""A webhook receiver for tests, chaos and benchmarks: a real HTTP server on localhost that
records every delivery and answers as told (statuses in turn, a redirect, or hanging)."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass
class Delivery:
    """One request as the receiver got it."""

    headers: dict[str, str]
    body: bytes
    status: int
    at: float = field(default_factory=time.monotonic)

    @property
    def event(self) -> dict[str, Any]:
        found: dict[str, Any] = json.loads(self.body)
        return found


class Receiver:
    """`statuses` are answered in turn (then 200); `hang` seconds before answering; `verify`
    decides the status from the request instead (a receiver with its own secrets)."""

    def __init__(
        self,
        statuses: list[int] | None = None,
        *,
        hang: float = 0.0,
        verify: Callable[[dict[str, str], bytes], int] | None = None,
    ) -> None:
        self.statuses = list(statuses or [])
        self.hang = hang
        self.verify = verify
        self.deliveries: list[Delivery] = []
        self.seen = threading.Event()  # a request has arrived (answered or not)
        self.lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                receiver.seen.set()
                body = self.rfile.read(int(self.headers.get("content-length") or 0))
                headers = {k.lower(): v for k, v in self.headers.items()}
                if receiver.hang:
                    time.sleep(receiver.hang)
                status = receiver._status(headers, body)
                with receiver.lock:
                    receiver.deliveries.append(Delivery(headers, body, status))
                self.send_response(status)
                if status in (301, 302, 307, 308):
                    self.send_header("location", "/elsewhere")
                reply = b"x" * 5000 if status >= 500 else b"ok"
                self.send_header("content-length", str(len(reply)))
                self.end_headers()
                self.wfile.write(reply)

            def log_message(self, *_: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def _status(self, headers: dict[str, str], body: bytes) -> int:
        if self.verify is not None:
            return self.verify(headers, body)
        with self.lock:
            return self.statuses.pop(0) if self.statuses else 200

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/hook"

    def __enter__(self) -> Receiver:
        self.thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.server.shutdown()
        self.server.server_close()

    def received(self) -> list[Delivery]:
        with self.lock:
            return list(self.deliveries)

    def delivered_ids(self) -> list[str]:
        """The `webhook-id` of each 2xx-answered delivery, in arrival order."""
        return [d.headers["webhook-id"] for d in self.received() if 200 <= d.status < 300]
