"""The outbox relay: sends committed `realm.updated` events to Redis, each into the stream once.

Every change writes its event row in the same transaction (see `Service._event`); the relay
sends the unsent rows, oldest first, to stream `keyrotor:events` and channel
`keyrotor:realm.updated`, then stamps them published. One Lua script per event claims
`keyrotor:relayed:<event id>` and only then appends and publishes, so two relays racing put
each event into the stream once, in commit order per realm. A relay that dies between Redis
and the database leaves rows unsent; the next relay finds them claimed and only stamps them.
The same script counts each event it appends, by reason, for `/metrics`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any

import redis
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session

from worker.client.events import CHANNEL, RELAYED_TTL, STREAM, encode, relayed_key
from worker.core.clock import Clock, utcnow
from worker.publish.jwks import Publisher, publish_realm
from worker.service import Publication, Service
from worker.service.events import event_view
from worker.service.webhooks import Dispatch
from worker.service.wire import event_json
from worker.store import outbox
from worker.store.models import Event

log = logging.getLogger("keyrotor.relay")

BATCH = 500
# Redis hash: reason -> events appended to the stream. Counted where the append happens, once
# per event, so `/metrics` reads eight numbers instead of counting the outbox.
EVENTS_RELAYED = "keyrotor:metrics:events"

# KEYS: relayed marker, stream, counts by reason. ARGV: payload, maxlen, marker ttl (s),
# channel, reason. Returns the new stream entry id, or nil when the event was relayed before.
_RELAY_ONCE = """
if redis.call('EXISTS', KEYS[1]) == 1 then return false end
local entry = redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[2], '*', 'event', ARGV[1])
redis.call('SET', KEYS[1], entry, 'EX', ARGV[3])
redis.call('HINCRBY', KEYS[3], ARGV[5], 1)
redis.call('PUBLISH', ARGV[4], ARGV[1])
return entry
"""


def payload(event: Event) -> dict[str, Any]:
    """The event as published: ids, reason, version and who asked, never key material; the
    same JSON `GET /v1/events` lists (one producer: `worker.service.wire.event_json`)."""
    return event_json(event_view(event))


class Relay:
    """Sends outbox events to Redis in commit order, at most once into the stream per event.

    With a `publisher`, a realm's JWKS is published (if Redis lags) before its events go out,
    so a subscriber that refetches on an event never reads an older key set than it announces.
    Stamping events sent also queues their webhook deliveries (same transaction), which
    `dispatch` hands to the senders at once; any it could not hand over are swept later.
    """

    def __init__(
        self,
        service: Service,
        client: redis.Redis,
        *,
        maxlen: int = 100_000,
        publisher: Publisher | None = None,
        dispatch: Callable[[Sequence[Dispatch]], None] | None = None,
        clock: Clock = utcnow,
    ) -> None:
        self.service = service
        self.redis = client
        self.maxlen = maxlen
        self.publisher = publisher
        self.dispatch = dispatch
        self.clock = clock
        self._relay_once = client.register_script(_RELAY_ONCE)

    def relay(self, limit: int = BATCH, *, catch_up: bool = True) -> int:
        """Send up to `limit` of the oldest unsent events; returns how many are now published.

        An event whose realm's JWKS lags waits; with `catch_up` the relay publishes those
        realms first (together), without it it leaves them to whoever committed them (a batch
        that is publishing its own realms right now) or to the next sweep.

        Raises on a Redis or database error: whatever was sent stays sent (and is only stamped
        by the next relay), the rest waits.
        """
        events = outbox.unpublished(self.service.sessions, limit)
        if not events:
            return 0
        held = self._publish_jwks_first(events, catch_up=catch_up)
        sending = [event for event in events if event.realm_id not in held]
        if sending:
            pipe = self.redis.pipeline(transaction=False)
            ttl = int(RELAYED_TTL.total_seconds())
            bodies = {event.id: encode(payload(event)) for event in sending}
            for event in sending:
                self._relay_once(
                    keys=[relayed_key(event.id), STREAM, EVENTS_RELAYED],
                    args=[bodies[event.id], self.maxlen, ttl, CHANNEL, event.reason],
                    client=pipe,
                )
            entries = pipe.execute()
            dispatches: list[Dispatch] = []

            def queue_deliveries(session: Session, stamped: set[int]) -> None:
                sent = [event for event in sending if event.seq in stamped]
                lease = self.dispatch is not None  # else the sweep sends them
                dispatches.extend(self.service.queue_deliveries(session, sent, bodies, lease=lease))

            seqs = [e.seq for e in sending]
            outbox.mark_published(self.service.sessions, seqs, self.clock(), queue_deliveries)
            repeats = sum(1 for entry in entries if entry is None)
            if repeats:
                log.info("%d event(s) had been relayed already (another relay)", repeats)
            self._hand_over(dispatches)
        return len(sending)

    def _hand_over(self, dispatches: Sequence[Dispatch]) -> None:
        """Webhook deliveries to their senders; the sweep finds any not handed over."""
        if not dispatches or self.dispatch is None:
            return
        try:
            self.dispatch(dispatches)
        except Exception as error:  # the broker away: deliveries wait for their lease to end
            log.warning("webhook deliveries not handed over (%s); the sweep will send them", error)

    def after_commit(self, realm_id: str) -> int:
        """What follows every committed change, from a task, the HTTP API or the CLI alike: the
        realm's JWKS first, then the events, so no event announces keys not yet published.

        Failures are only logged: the change and its event are committed, and the
        `reconcile_jwks` and `relay_events` sweeps finish the job. Returns the events sent.
        """
        if self.publisher is not None:
            publish_realm(self.service, self.publisher, realm_id)
        try:
            return self.relay()
        except (redis.RedisError, SQLAlchemyError) as error:
            log.warning("events not relayed yet (%s); the relay sweep will retry", error)
            return 0

    def after_batch(self, publications: Sequence[Publication]) -> int:
        """`after_commit` for a rotation batch: the key sets the batch wrote, published
        together (files with one durability pass, Redis in one round trip), then the events.
        Failures are only logged, as in `after_commit`."""
        if self.publisher is not None and publications:
            try:
                self.publisher.publish_many(publications)
            except (redis.RedisError, OSError) as error:
                log.warning("a batch's JWKS not published (%s); reconcile will retry", error)
        try:  # another worker's batch, committed but not yet published, is its own to send
            return self.relay(max(BATCH, len(publications)), catch_up=False)
        except (redis.RedisError, SQLAlchemyError) as error:
            log.warning("events not relayed yet (%s); the relay sweep will retry", error)
            return 0

    def relay_all(self, limit: int = BATCH, max_batches: int = 20) -> int:
        """Drain the backlog a batch at a time, bounded so one task never runs for long."""
        total = 0
        for _ in range(max_batches):
            sent = self.relay(limit)
            total += sent
            if sent < limit:
                break
        return total

    def _publish_jwks_first(self, events: Sequence[Event], *, catch_up: bool) -> set[str]:
        """The realms whose Redis copy is older than their events and could not be (or, without
        `catch_up`, were not) published now: their events wait for the next relay. Lagging
        realms are published together: two queries, one pass over their files, one pipeline."""
        if self.publisher is None:
            return set()
        wanted: dict[str, int] = {}
        for event in events:
            wanted[event.realm_id] = max(wanted.get(event.realm_id, 0), event.jwks_version)
        published = self.publisher.published_versions(wanted)
        lagging = sorted(r for r, version in wanted.items() if published[r] < version)
        if not lagging or not catch_up:
            return set(lagging)
        try:
            found = self.service.publications(lagging)
            self.publisher.publish_many(found)
            for realm_id in set(lagging) - {p.realm_id for p in found}:
                self.publisher.unpublish(realm_id)  # deleted since: its last event says so
        except (redis.RedisError, OSError) as error:
            log.warning(
                "JWKS of %d realm(s) not published (%s); reconcile will retry", len(lagging), error
            )
            return set(lagging)
        return set()
