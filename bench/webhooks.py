"""Webhooks: from a committed change to the endpoint, and how fast a backlog drains.

The path measured is the deployed one: a change commits, `Relay.after_commit` publishes the
realm's JWKS, relays the event and queues its delivery in the same transaction that stamps
it, and hands the dispatch to Celery; a real webhook worker (the threads pool and options of
`worker.ops.supervisor.WEBHOOK_WORKER`) signs it and POSTs it. The endpoint is a raw ASGI
app under uvicorn in a process of its own, so it shares no GIL with the sender; it writes
each request's arrival time to its stdout, which this process reads.

The anchor of the drain is the floor of any Python sender on one connection: a bare `httpx`
POST loop (one client, sequential) to the same endpoint with a body of the same size,
measured in the same run. No target: the figures are reported.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

import httpx
from sqlalchemy import func, insert, select, text

from bench.support import (
    ROOT,
    RUNS,
    Deployment,
    Process,
    Report,
    cpu_seconds,
    deployment,
    free_port,
    median,
    ms,
    percentile,
    rate,
    seed_realms,
    spawn,
    wait_for,
    x,
)
from worker import runtime
from worker.client.events import encode
from worker.core import ids
from worker.core.clock import utcnow
from worker.ops.supervisor import WEBHOOK_WORKER
from worker.publish.jwks import publish_realm
from worker.publish.relay import Relay, payload
from worker.store.db import transaction
from worker.store.models import Event, WebhookDelivery

CHANGES_PER_RUN = 200
WARM_UP = 5
DRAIN_EVENTS = 2000
REALMS = 50
ARRIVAL_TIMEOUT = 30.0
SETTINGS = {"webhook_allow_http": "true", "webhook_allow_private": "true"}


# -- the endpoint, in its own process ------------------------------------------------------------


def serve_endpoint(port: int) -> None:
    """Answer every POST 200 `ok` as fast as uvicorn can, and write `<webhook-id> <realm id>
    <jwks_version> <arrival time>` to stdout for each (the time the body was read)."""
    import uvicorn

    out = sys.stdout

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        body = b""
        more = True
        while more:
            message = await receive()
            body += message.get("body", b"")
            more = message.get("more_body", False)
        arrived = time.time()
        webhook_id = dict(scope["headers"]).get(b"webhook-id", b"-").decode()
        try:
            event = json.loads(body)
            realm_id, version = event["realm_id"], int(event["jwks_version"])
        except (ValueError, KeyError, TypeError):
            realm_id, version = "-", -1
        out.write(f"{webhook_id} {realm_id} {version} {arrived!r}\n")
        out.flush()
        headers = [(b"content-type", b"text/plain"), (b"content-length", b"2")]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": b"ok"})

    uvicorn.run(
        app,
        host="127.0.0.1",
        port=port,
        loop="uvloop",
        http="httptools",
        lifespan="off",
        log_level="warning",
        access_log=False,
    )


class Arrivals:
    """What the endpoint reported, read from its stdout by a thread: the first arrival of each
    webhook-id and of each (realm, jwks_version)."""

    def __init__(self, stream: IO[bytes]) -> None:
        self.by_id: dict[str, float] = {}
        self.by_change: dict[tuple[str, int], float] = {}
        self.changed = threading.Condition()
        self.thread = threading.Thread(target=self._read, args=(stream,), daemon=True)
        self.thread.start()

    def _read(self, stream: IO[bytes]) -> None:
        for line in stream:
            webhook_id, realm_id, version, at = line.decode().split()
            with self.changed:
                self.by_id.setdefault(webhook_id, float(at))
                self.by_change.setdefault((realm_id, int(version)), float(at))
                self.changed.notify_all()

    def change(self, wanted: tuple[str, int]) -> float:
        """When the first event of a change arrived (waits without spinning a core)."""
        with self.changed:
            if not self.changed.wait_for(lambda: wanted in self.by_change, ARRIVAL_TIMEOUT):
                raise TimeoutError(f"no delivery for {wanted} in {ARRIVAL_TIMEOUT}s")
            return self.by_change[wanted]

    def all_of(self, webhook_ids: list[str], timeout: float) -> tuple[float, float]:
        """When the first and the last of these webhook-ids arrived. They arrive about in
        order, so each wake-up only looks at the first still missing, not at all of them."""
        waiting = deque(webhook_ids)

        def arrived() -> bool:
            while waiting and waiting[0] in self.by_id:
                waiting.popleft()
            return not waiting

        with self.changed:
            if not self.changed.wait_for(arrived, timeout):
                got = sum(i in self.by_id for i in webhook_ids)
                raise TimeoutError(f"{got} of {len(webhook_ids)} deliveries in {timeout}s")
            times = [self.by_id[i] for i in webhook_ids]
            return min(times), max(times)


@contextlib.contextmanager
def endpoint(folder: Path) -> Iterator[tuple[str, Arrivals, int]]:
    """The endpoint's URL, what it reports, and its pid (for its CPU time)."""
    port = free_port()
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    code = f"from bench.webhooks import serve_endpoint; serve_endpoint({port})"
    argv = [sys.executable, "-c", code]
    with open(folder / "endpoint.log", "ab") as log:
        process = subprocess.Popen(
            argv, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=log, start_new_session=True
        )
    try:
        assert process.stdout is not None
        arrivals = Arrivals(process.stdout)
        wait_for(lambda: _accepts(port) or process.poll() is not None, 30, "the endpoint")
        if process.poll() is not None:
            raise RuntimeError((folder / "endpoint.log").read_text()[-3000:])
        yield f"http://127.0.0.1:{port}/hook", arrivals, process.pid
    finally:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(5)


def _accepts(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), 0.5):
            return True
    except OSError:
        return False


def webhook_worker(dep: Deployment) -> Process:
    """The webhook worker as deployed: its queue, threads pool and concurrency."""
    argv = [sys.executable, "-m", "celery", "-A", "worker", "worker", "--loglevel", "INFO"]
    argv += [*WEBHOOK_WORKER, "--without-mingle", "--without-gossip", "--without-heartbeat"]
    process = spawn("webhooks", argv, dep.env, dep.folder)
    try:
        wait_for(
            lambda: "ready." in process.log() or process.popen.poll() is not None,
            60,
            "the webhook worker",
        )
        if process.popen.poll() is not None:
            raise RuntimeError(f"the webhook worker did not start:\n{process.log()[-3000:]}")
    except BaseException:
        process.stop()
        raise
    return process


# -- the measurements ----------------------------------------------------------------------------


def clear(dep: Deployment) -> None:
    """Between runs: no delivery left in flight, then empty tables (the webhook stays)."""
    wait_for(lambda: not _pending(dep), 60, "the last deliveries to be recorded")
    with dep.service.sessions() as session, session.begin():
        session.execute(text("TRUNCATE webhook_deliveries"))
    dep.clear()


def _pending(dep: Deployment) -> int:
    with transaction(dep.service.sessions, read_only=True) as session:
        query = select(func.count()).where(WebhookDelivery.state == "pending")
        return int(session.scalar(query) or 0)


def commit_to_endpoint(dep: Deployment, relay: Relay, arrivals: Arrivals) -> dict[str, list[float]]:
    """Seconds from each forced rotation's commit to its event's arrival at the endpoint, and
    its two parts: `after_commit` (JWKS, relay, delivery queued and handed over), then the
    webhook worker (the task message taken, the delivery read, signed and POSTed)."""
    realm_ids = seed_realms(dep.service, REALMS, "es256")
    stages: dict[str, list[float]] = {"total": [], "after_commit": [], "sender": []}
    for n in range(WARM_UP + CHANGES_PER_RUN):
        realm_id = realm_ids[n % len(realm_ids)]
        change = dep.service.rotate(realm_id, force=True)
        committed = time.time()
        assert change is not None
        relay.after_commit(realm_id)
        handed_over = time.time()
        arrived = arrivals.change((realm_id, change.jwks_version))
        if n >= WARM_UP:
            stages["total"].append(arrived - committed)
            stages["after_commit"].append(handed_over - committed)
            stages["sender"].append(arrived - handed_over)
    return stages


def sample_body(realm_id: str) -> bytes:
    """An event as a delivery carries it: the anchor POSTs bodies of the same size."""
    event = Event(
        id=ids.event_id(),
        realm_id=realm_id,
        event_type="realm.updated",
        reason="key.created",
        key_ids=[ids.key_id()],
        jwks_version=1,
        event_at=utcnow(),
    )
    return encode(payload(event)).encode()


def bare_posts(url: str, body: bytes, arrivals: Arrivals) -> dict[str, float]:
    """DRAIN_EVENTS sequential POSTs on one `httpx.Client`: requests per second, and the
    round trip p50."""
    marks = [f"anchor_{ids.event_id()}" for _ in range(DRAIN_EVENTS)]
    trips = []
    with httpx.Client(timeout=10) as client:
        client.post(url, content=body, headers={"webhook-id": "warm-up"})
        start = time.perf_counter()
        for mark in marks:
            sent = time.perf_counter()
            response = client.post(
                url, content=body, headers={"webhook-id": mark, "content-type": "application/json"}
            )
            trips.append(time.perf_counter() - sent)
            assert response.status_code == 200, response.status_code
        elapsed = time.perf_counter() - start
    arrivals.all_of(marks, 10)  # read, so the next measurement starts with an empty pipe
    return {"per_s": DRAIN_EVENTS / elapsed, "trip_p50": percentile(trips, 50)}


def drain(
    dep: Deployment, relay: Relay, arrivals: Arrivals, pids: dict[str, int]
) -> dict[str, float]:
    """DRAIN_EVENTS committed events of published realms (a burst of changes), relayed with
    `relay_all`, which queues a delivery each and hands them over 10 to a task: deliveries per
    second from the relay's start to the last arrival at the endpoint, and from the first
    arrival to the last (the sender's pace, the relay still running beside it at first), and
    the CPU time each process in `pids` spent a delivery meanwhile."""
    realm_ids = seed_realms(dep.service, REALMS, "es256")
    publisher = runtime.publisher(dep.settings)
    for realm_id in realm_ids:
        publish_realm(dep.service, publisher, realm_id)
    now = dep.service.clock()
    event_ids = [ids.event_id() for _ in range(DRAIN_EVENTS)]
    rows = [
        {
            "id": event_id,
            "realm_id": realm_ids[n % REALMS],
            "event_type": "realm.updated",
            "reason": "key.created",
            "key_ids": [ids.key_id()],
            "jwks_version": 1,
            "event_at": now,
        }
        for n, event_id in enumerate(event_ids)
    ]
    with transaction(dep.service.sessions) as session:
        session.execute(insert(Event), rows)
    cpu = {name: cpu_seconds(pid) for name, pid in pids.items()}
    start = time.time()
    sent = relay.relay_all(max_batches=DRAIN_EVENTS // 500 + 1)
    relayed = time.time()
    assert sent == DRAIN_EVENTS, sent
    first, last = arrivals.all_of(event_ids, 120)
    wait_for(lambda: not _pending(dep), 60, "the deliveries to be recorded")
    spent = {
        f"{name}_cpu": (cpu_seconds(pid) - cpu[name]) / DRAIN_EVENTS for name, pid in pids.items()
    }
    return {
        **spent,
        "per_s": DRAIN_EVENTS / (last - start),
        "sending_per_s": (DRAIN_EVENTS - 1) / (last - first),
        "relay_s": relayed - start,
    }


def run() -> Report:
    report = Report("webhooks", "Webhooks: commit → endpoint, and draining a backlog")
    per_run: list[dict[str, float]] = []
    with deployment("webhooks", **SETTINGS) as dep, endpoint(dep.folder) as (url, arrivals, pid):
        dep.service.create_webhook(url)
        relay = runtime.relay(dep.settings, dep.service)
        worker = webhook_worker(dep)
        try:
            for _ in range(RUNS):
                clear(dep)
                stages = commit_to_endpoint(dep, relay, arrivals)
                clear(dep)
                body = sample_body(ids.realm_id())
                anchor = bare_posts(url, body, arrivals)
                pids = {"worker": worker.popen.pid, "endpoint": pid}
                drained = drain(dep, relay, arrivals, pids)
                per_run.append(
                    {
                        "p50": percentile(stages["total"], 50),
                        "p99": percentile(stages["total"], 99),
                        "after_commit_p50": percentile(stages["after_commit"], 50),
                        "sender_p50": percentile(stages["sender"], 50),
                        "drain_per_s": drained["per_s"],
                        "sending_per_s": drained["sending_per_s"],
                        "worker_cpu": drained["worker_cpu"],
                        "endpoint_cpu": drained["endpoint_cpu"],
                        "relay_s": drained["relay_s"],
                        "bare_per_s": anchor["per_s"],
                        "bare_trip_p50": anchor["trip_p50"],
                        "ratio": drained["per_s"] / anchor["per_s"],
                        "body_bytes": len(body),
                    }
                )
            clear(dep)
        finally:
            worker.stop()

    def mid(name: str) -> float:
        return median([run[name] for run in per_run])

    report.add(
        "commit → endpoint p50",
        ms(mid("p50")),
        "reported",
        note=f"the bare POST round trip p50 {ms(mid('bare_trip_p50'))}",
    )
    report.add("commit → endpoint p99", ms(mid("p99")), "reported")
    report.add(
        "  of which: after_commit (JWKS, relay, delivery queued, handed over)",
        ms(mid("after_commit_p50")),
        note="p50",
    )
    report.add(
        "  of which: the webhook worker (task taken, delivery read, signed, POSTed)",
        ms(mid("sender_p50")),
        note="p50",
    )
    report.add(
        f"drain: {DRAIN_EVENTS:,} committed events → all at the endpoint",
        rate(mid("drain_per_s"), " deliveries/s"),
        "reported",
        note=f"relaying them took {ms(mid('relay_s'))} of it; one webhook, 8 threads",
    )
    report.add(
        "  first → last arrival",
        rate(mid("sending_per_s"), " deliveries/s"),
        note="the webhook worker's pace once the first delivery is out",
    )
    report.add(
        "  CPU a delivery: webhook worker / endpoint",
        f"{ms(mid('worker_cpu'))} / {ms(mid('endpoint_cpu'))}",
        note="the worker's whole process (8 threads, one GIL); until every outcome is recorded",
    )
    report.add(
        "anchor: bare httpx POST loop (one client, sequential)",
        rate(mid("bare_per_s"), " requests/s"),
        note=f"{int(mid('body_bytes'))}-byte bodies, as the deliveries",
    )
    report.add("drain / bare POST loop", x(mid("ratio")), "reported", note="median of the runs")
    report.details.append(
        f"{CHANGES_PER_RUN} forced es256 rotations a run (after {WARM_UP} to warm up), each"
        " timed from its commit to the endpoint's read of the delivery's body; figures are"
        f" medians over {RUNS} runs of each run's percentile or rate."
    )
    report.data["runs"] = per_run
    return report
