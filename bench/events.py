"""Events: from a committed change to a subscriber's callback, and the relay's throughput.

The path measured is the one a task takes after its commit: publish the realm's JWKS, relay
the outbox (Lua: stream append + channel publish), and the `Subscriber` thread's blocking
XREAD wakes and calls back. Its anchor is the floor of any Redis-based delivery, a bare
PUBLISH reaching a pub/sub listener on loopback, measured alongside.
"""

from __future__ import annotations

import threading
import time
from typing import Any

import redis
from sqlalchemy import insert

from bench.support import (
    RUNS,
    Deployment,
    Report,
    deployment,
    median,
    ms,
    percentile,
    rate,
    seed_realms,
    us,
    wait_for,
    x,
)
from worker import runtime
from worker.client.events import STREAM
from worker.client.subscriber import Subscriber
from worker.core import ids
from worker.publish.jwks import publish_realm
from worker.publish.relay import Relay
from worker.store.db import transaction
from worker.store.models import Event

CHANGES_PER_RUN = 100
PUBLISHES_PER_RUN = 300
RELAY_EVENTS = 5000
REALMS = 50
P50_TARGET = 0.005
P99_TARGET = 0.050
RELAY_TARGET = 2000.0


class Arrivals:
    """When each event reached the subscriber's callback, by (realm, jwks_version)."""

    def __init__(self) -> None:
        self.at: dict[tuple[str, int], float] = {}
        self.count = 0
        self._lock = threading.Lock()

    def wait(self, wanted: tuple[str, int], timeout: float = 5.0) -> float:
        return wait_for(lambda: self.at.get(wanted), timeout, "the event", every=0.0002)

    def __call__(self, event: dict[str, Any]) -> None:
        now = time.perf_counter()
        with self._lock:
            self.at[(event["realm_id"], event["jwks_version"])] = now
            self.count += 1


def commit_to_callback(dep: Deployment, relay: Relay, arrivals: Arrivals) -> dict[str, list[float]]:
    """Seconds from each commit returning to the subscriber's callback for its event, and
    the two stages: the JWKS published, then the event read from the outbox, relayed and
    called back (the callback often runs before the relay has stamped the rows)."""
    publisher = runtime.publisher(dep.settings)
    realm_ids = seed_realms(dep.service, REALMS, "es256")
    stages: dict[str, list[float]] = {"total": [], "publish": [], "deliver": []}
    for n in range(CHANGES_PER_RUN):
        realm_id = realm_ids[n % len(realm_ids)]
        change = dep.service.rotate(realm_id, force=True)
        committed = time.perf_counter()
        assert change is not None
        publish_realm(dep.service, publisher, realm_id)  # what the task does next
        published = time.perf_counter()
        relay.relay()
        arrived = arrivals.wait((realm_id, change.jwks_version))
        stages["total"].append(arrived - committed)
        stages["publish"].append(published - committed)
        stages["deliver"].append(arrived - published)
    return stages


def bare_publish(url: str) -> list[float]:
    """Seconds from PUBLISH to a listening thread's receipt: the loopback floor."""
    client = redis.Redis.from_url(url)
    listener = client.pubsub(ignore_subscribe_messages=True)  # type: ignore[no-untyped-call]
    listener.subscribe("bench:anchor")
    received: dict[int, float] = {}
    ready = threading.Event()

    def listen() -> None:
        ready.set()
        for message in listener.listen():
            n = int(message["data"])
            received[n] = time.perf_counter()
            if n == PUBLISHES_PER_RUN - 1:
                return

    thread = threading.Thread(target=listen, daemon=True)
    thread.start()
    ready.wait()
    time.sleep(0.05)
    sent: dict[int, float] = {}
    for n in range(PUBLISHES_PER_RUN):
        sent[n] = time.perf_counter()
        client.publish("bench:anchor", n)
        wait_for(lambda n=n: n in received, 5, "the message", every=0.0001)  # type: ignore[misc]
    thread.join(5)
    listener.close()
    client.close()
    return [received[n] - sent[n] for n in range(PUBLISHES_PER_RUN)]


def relay_throughput(dep: Deployment, relay: Relay, arrivals: Arrivals) -> tuple[float, float]:
    """Events per second through `relay_all`, and until the subscriber has them all, for a
    backlog of outbox rows whose realms' JWKS are already published (the steady state)."""
    realm_ids = seed_realms(dep.service, REALMS, "es256")
    publisher = runtime.publisher(dep.settings)
    for realm_id in realm_ids:
        publish_realm(dep.service, publisher, realm_id)
    now = dep.service.clock()
    rows = [
        {
            "id": ids.event_id(),
            "realm_id": realm_ids[n % REALMS],
            "event_type": "realm.updated",
            "reason": "key.created",
            "key_ids": [ids.key_id()],
            "jwks_version": 1,
            "event_at": now,
        }
        for n in range(RELAY_EVENTS)
    ]
    with transaction(dep.service.sessions) as session:
        session.execute(insert(Event), rows)
    before = arrivals.count
    start = time.perf_counter()
    sent = relay.relay_all(max_batches=RELAY_EVENTS // 500 + 1)
    relayed = time.perf_counter() - start
    assert sent == RELAY_EVENTS, sent
    wait_for(lambda: arrivals.count - before >= RELAY_EVENTS, 60, "all events", every=0.001)
    delivered = time.perf_counter() - start
    return RELAY_EVENTS / relayed, RELAY_EVENTS / delivered


def run() -> Report:
    report = Report("events", "Events: commit → subscriber callback, and the relay")
    per_run: list[dict[str, float]] = []
    with deployment("events") as dep:
        url = str(dep.settings.redis_url)
        publisher = runtime.publisher(dep.settings)
        relay = Relay(dep.service, publisher.redis, publisher=publisher)
        arrivals = Arrivals()
        subscriber = Subscriber(url, arrivals).start()
        wait_for(subscriber.connected.is_set, 10, "the subscriber")
        try:
            for _ in range(RUNS):
                dep.clear()
                anchor = bare_publish(url)
                stages = commit_to_callback(dep, relay, arrivals)
                latencies = stages["total"]
                dep.clear()
                relayed, delivered = relay_throughput(dep, relay, arrivals)
                per_run.append(
                    {
                        "p50": percentile(latencies, 50),
                        "p99": percentile(latencies, 99),
                        "anchor_p50": percentile(anchor, 50),
                        "anchor_p99": percentile(anchor, 99),
                        "relay_per_s": relayed,
                        "delivered_per_s": delivered,
                        "publish_p50": percentile(stages["publish"], 50),
                        "deliver_p50": percentile(stages["deliver"], 50),
                    }
                )
        finally:
            subscriber.stop()
            streamed = dep.redis.xlen(STREAM)

    def mid(name: str) -> float:
        return median([run[name] for run in per_run])

    p50, p99 = mid("p50"), mid("p99")
    report.add(
        "commit → callback p50",
        ms(p50),
        f"≤ {ms(P50_TARGET)}",
        p50 <= P50_TARGET,
        f"{x(p50 / mid('anchor_p50'))} the bare PUBLISH p50",
    )
    report.add("commit → callback p99", ms(p99), f"≤ {ms(P99_TARGET)}", p99 <= P99_TARGET)
    report.add(
        "  of which: JWKS published (DB read, file, Redis)",
        ms(mid("publish_p50")),
        note="p50; published before the event, by design",
    )
    report.add(
        "  of which: outbox read, relay script, XREAD wakes, callback",
        ms(mid("deliver_p50")),
        note="p50",
    )
    report.add(
        "anchor: PUBLISH → pub/sub listener (loopback)",
        f"p50 {us(mid('anchor_p50'))}, p99 {us(mid('anchor_p99'))}",
    )
    relayed = mid("relay_per_s")
    report.add(
        "relay throughput (outbox → stream + channel)",
        rate(relayed, " events/s"),
        f"≥ {RELAY_TARGET:,.0f}/s",
        relayed >= RELAY_TARGET,
        f"{RELAY_EVENTS:,} events a run, batches of 500",
    )
    report.add(
        "relay → every event at a subscriber",
        rate(mid("delivered_per_s"), " events/s"),
        note="the subscriber thread in the same process",
    )
    report.details.append(
        f"{CHANGES_PER_RUN} changes a run (a forced es256 rotation: commit, JWKS published,"
        " event relayed, as a task does); figures are medians over"
        f" {RUNS} runs of each run's percentile. Stream length at the end: {streamed}."
    )
    report.data["runs"] = per_run
    return report
