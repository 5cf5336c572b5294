"""HTTP load on loopback: wrk for the saturating rate when it is installed, and a small
asyncio client for the rest (open-loop latency at a fixed rate, and a closed-loop fallback).

The asyncio client speaks just enough HTTP/1.1 (keep-alive, Content-Length bodies) to stay
cheap: on a 2-core machine the client shares the CPU with the server it measures.
"""

from __future__ import annotations

import asyncio
import re
import shutil
import subprocess
import time
from urllib.parse import urlsplit

WRK = shutil.which("wrk")


def wrk_rate(url: str, seconds: float, connections: int, headers: dict[str, str]) -> float:
    """Requests per second that wrk (one thread) sustains; non-2xx/3xx answers fail it."""
    assert WRK is not None
    argv = [WRK, "-t1", f"-c{connections}", f"-d{seconds:g}s"]
    for name, value in headers.items():
        argv += ["-H", f"{name}: {value}"]
    output = subprocess.run(
        [*argv, url], capture_output=True, text=True, check=True, timeout=seconds + 30
    ).stdout
    if "Non-2xx or 3xx responses" in output:
        raise RuntimeError(f"wrk saw errors:\n{output}")
    found = re.search(r"Requests/sec:\s+([0-9.]+)", output)
    if found is None:
        raise RuntimeError(f"no rate in wrk's output:\n{output}")
    return float(found.group(1))


class Connection:
    """One keep-alive HTTP/1.1 connection sending the same GET again and again."""

    def __init__(self, url: str, headers: dict[str, str]) -> None:
        parts = urlsplit(url)
        self.host, self.port = parts.hostname or "127.0.0.1", parts.port or 80
        lines = [f"GET {parts.path} HTTP/1.1", f"Host: {parts.netloc}"]
        lines += [f"{name}: {value}" for name, value in headers.items()]
        self.request = ("\r\n".join(lines) + "\r\n\r\n").encode()
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def get(self) -> int:
        if self.reader is None or self.writer is None:
            self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
        self.writer.write(self.request)
        head = await self.reader.readuntil(b"\r\n\r\n")
        status = int(head[9:12])
        length = re.search(rb"(?i)\r\ncontent-length:\s*(\d+)", head)
        if length is not None:
            await self.reader.readexactly(int(length.group(1)))
        return status

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


async def _closed_loop(url: str, seconds: float, count: int, headers: dict[str, str]) -> float:
    deadline = time.perf_counter() + seconds
    done = 0

    async def user() -> None:
        nonlocal done
        connection = Connection(url, headers)
        try:
            while time.perf_counter() < deadline:
                status = await connection.get()
                if status >= 400:
                    raise RuntimeError(f"status {status}")
                done += 1
        finally:
            connection.close()

    started = time.perf_counter()
    await asyncio.gather(*(user() for _ in range(count)))
    return done / (time.perf_counter() - started)


def closed_loop_rate(url: str, seconds: float, connections: int, headers: dict[str, str]) -> float:
    """Requests per second with `connections` clients each sending as fast as answered."""
    return asyncio.run(_closed_loop(url, seconds, connections, headers))


async def _open_loop(
    url: str, rate: float, seconds: float, count: int, headers: dict[str, str]
) -> list[float]:
    idle: asyncio.Queue[Connection] = asyncio.Queue()
    for _ in range(count):
        idle.put_nowait(Connection(url, headers))
    latencies: list[float] = []
    pending: set[asyncio.Task[None]] = set()

    async def one(scheduled: float) -> None:
        connection = await idle.get()  # waiting for a free connection counts as latency
        try:
            status = await connection.get()
            if status >= 400:
                raise RuntimeError(f"status {status}")
            latencies.append(time.perf_counter() - scheduled)
        finally:
            idle.put_nowait(connection)

    start = time.perf_counter()
    total = int(rate * seconds)
    for n in range(total):
        scheduled = start + n / rate
        delay = scheduled - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        task = asyncio.create_task(one(scheduled))
        pending.add(task)
        task.add_done_callback(pending.discard)
    await asyncio.gather(*pending)
    while not idle.empty():
        idle.get_nowait().close()
    return latencies


def open_loop_latencies(
    url: str, rate: float, seconds: float, connections: int, headers: dict[str, str]
) -> list[float]:
    """Latency of each request sent on a fixed schedule, from when it was due to be sent (so
    a slow answer also delays the measured start of those queued behind it)."""
    return asyncio.run(_open_loop(url, rate, seconds, connections, headers))
