"""Celery tasks: each hands its work to the service, then publishes what changed.

Every task is safe to run twice at once: the service re-decides under the realm lock, and a
publication never replaces a newer one.

Each task's events record who it works for (`worker.service.actors`): beat's work is
`scheduler`'s; a task that writes takes an optional `actor` (the admin key or CLI user that
asked), passes it on to the tasks it sends, and is `system`'s without one, so messages sent
before the argument existed still run.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from functools import cache
from typing import Any

import redis
from celery import Task
from celery.signals import worker_process_init, worker_ready
from kombu.exceptions import OperationalError as BrokerError
from sqlalchemy.exc import InterfaceError, OperationalError

from worker import runtime
from worker.celery import app
from worker.core.clock import parse_rfc3339, rfc3339
from worker.core.errors import NotFound
from worker.core.keys import POOLED_ALGOS
from worker.jobs.app import RETRY_DELAY_MAX
from worker.ops.metrics import count_rotation_failure
from worker.publish import progress
from worker.publish.jwks import Publisher, reconcile
from worker.publish.relay import Relay
from worker.service import Change, Service
from worker.service.actors import SCHEDULER, SYSTEM, acting_as
from worker.service.batch import BatchOutcome
from worker.settings import Settings, load_settings
from worker.store import outbox

log = logging.getLogger("keyrotor.tasks")

# The database, Redis or the broker away for a moment: retried, with backoff, without a limit.
RETRYABLE = (
    OperationalError,
    InterfaceError,
    redis.ConnectionError,
    redis.TimeoutError,
    BrokerError,
)
RETRY: dict[str, Any] = {
    "autoretry_for": RETRYABLE,
    "retry_backoff": 1,
    "retry_backoff_max": RETRY_DELAY_MAX,
    "retry_jitter": True,
    "max_retries": None,
}
DUE_PAGE = 500
# A queued realm is not queued again for this many ticks (unless its task ends first): a
# message lost with a SIGKILLed worker delays the realm by a few ticks, not by a minute.
CLAIM_TICKS = 3
# prune_events deletes this many events per transaction, and at most this many batches a run,
# so no run holds a lock for long or outlasts its period; a backlog goes over several runs.
PRUNE_BATCH = 1000
# A realm that fails in its batch is retried alone after this many seconds, doubling up to
# ALONE_RETRIES times (5 s .. 80 s); after that the schedule or `rotate --all` tries again.
ALONE_AFTER = 5
ALONE_RETRIES = 4
PRUNE_BATCHES = 50


@dataclass(frozen=True)
class Context:
    settings: Settings
    service: Service
    relay: Relay

    @property
    def publisher(self) -> Publisher:
        """The relay's: it publishes a realm's JWKS before its events."""
        assert self.relay.publisher is not None
        return self.relay.publisher


@cache
def context() -> Context:
    """Built once per worker process, after the fork (so no connection crosses it)."""
    settings = load_settings()
    service = runtime.build_service(settings)
    return Context(settings, service, runtime.relay(settings, service))


@worker_process_init.connect
def _fresh_connections(**_: Any) -> None:
    context.cache_clear()
    runtime.engine.cache_clear()
    runtime.redis_client.cache_clear()


@worker_ready.connect
def _catch_up(**_: Any) -> None:
    """A worker that starts (after downtime, or for the first time) publishes what lags and
    fills the key pool."""
    reconcile_jwks.delay()
    fill_key_pool.delay()


def publish(realm_id: str) -> None:
    """After a commit: the realm's JWKS first, then the events, so none announces keys that
    are not published yet."""
    context().relay.after_commit(realm_id)


def report(change: Change | None, *, published: bool = False) -> None:
    """Publish a committed change (unless the caller did) and log it."""
    if change is None:
        return
    if not published:
        publish(change.realm_id)
    next_at = rfc3339(change.next_rotation_at)
    # Ids as fields too, so JSON logs can be searched by realm, key or event without parsing.
    fields = {
        "realm_id": change.realm_id,
        "realm": change.realm_name,
        "reason": change.reason,
        "key_ids": change.key_ids,
        "event_id": change.event_id,
        "jwks_version": change.jwks_version,
    }
    if change.activated:
        log.info(
            "rotated %s (%s): %s -> %s, next change %s",
            change.realm_name,
            change.realm_id,
            change.retired or "none",
            change.activated,
            next_at,
            extra={**fields, "key_id": change.activated, "retired_key_id": change.retired},
        )
    else:
        keys = ", ".join(change.key_ids)
        log.info(
            "%s (%s): %s %s, next change %s",
            change.realm_name,
            change.realm_id,
            change.reason,
            keys,
            next_at,
            extra=fields,
        )


def _claim_key(realm_id: str) -> str:
    return f"keyrotor:due:{realm_id}"


# trail=False: Celery otherwise keeps an AsyncResult in `request.children` for every message
# a task sends, so the fan-out's memory grew with the number of due realms (~1 KiB each,
# bench/README.md: memory). Results are ignored anyway.
@app.task(name="keyrotor.rotate_due", trail=False, **RETRY)
def rotate_due() -> int:
    """Fan out the due realms in `rotate_realms` batches, walking the index a page at a time.
    Returns how many realms were queued. The batches are `scheduler`'s."""
    ctx = context()
    now = ctx.service.clock()
    claim = max(1, math.ceil(CLAIM_TICKS * ctx.settings.tick.total_seconds()))
    size = ctx.settings.rotate_batch
    queued: list[str] = []
    sent = 0
    after = None
    while page := ctx.service.due_realm_ids(now, after=after, limit=DUE_PAGE):
        # A realm already queued is not queued again until its task ends (or the claim
        # lapses after a crash), so a backlog cannot grow by one message per tick.
        pipe = ctx.publisher.redis.pipeline(transaction=False)
        for _, realm_id in page:
            pipe.set(_claim_key(realm_id), 1, nx=True, ex=claim)
        queued += [realm_id for (_, realm_id), new in zip(page, pipe.execute(), strict=True) if new]
        while len(queued) >= size:
            rotate_realms.delay(queued[:size], actor=SCHEDULER)
            sent, queued = sent + size, queued[size:]
        after = page[-1]
    if queued:
        rotate_realms.delay(queued, actor=SCHEDULER)
    return sent + len(queued)


@app.task(name="keyrotor.rotate_realms", trail=False, **RETRY)
def rotate_realms(
    realm_ids: list[str],
    force: bool = False,
    before: str | None = None,
    rotation_id: str | None = None,
    batch: int | None = None,
    actor: str | None = None,
) -> int:
    """Rotate a batch of realms in one transaction (what is due; with `force`, now; with
    `before`, every realm whose active key began signing before that moment), then publish
    their key sets together and relay their events. A realm that fails is split out and
    retried alone, with backoff, by `rotate_realm`; the rest commit. Returns the changes."""
    with acting_as(actor or SYSTEM):
        return _rotate_realms(realm_ids, force, before, rotation_id, batch, actor)


def _rotate_realms(
    realm_ids: list[str],
    force: bool,
    before: str | None,
    rotation_id: str | None,
    batch: int | None,
    actor: str | None,
) -> int:
    ctx = context()
    outcome = BatchOutcome()
    try:
        cutoff = parse_rfc3339(before) if before else None
        outcome = ctx.service.rotate_batch(realm_ids, force=force, before=cutoff)
        ctx.relay.after_batch(outcome.publications)
        for change in outcome.changes:
            report(change, published=True)
        if rotation_id is not None and batch is not None:  # a batch of `rotate --all`
            progress.record_batch(
                ctx.publisher.redis,
                rotation_id,
                batch,
                rotated=[change.realm_id for change in outcome.changes] + outcome.unchanged,
                skipped=outcome.gone,
                failed=list(outcome.failed),
            )
        for realm_id, why in outcome.failed.items():
            count_rotation_failure(ctx.publisher.redis)
            log.error(
                "rotation of %s failed in its batch (%s); retrying it alone",
                realm_id,
                why,
                extra={"realm_id": realm_id},
            )
            rotate_realm.apply_async(
                (realm_id,),
                {"force": force, "before": before, "rotation_id": rotation_id, "actor": actor},
                countdown=ALONE_AFTER,
            )
    finally:  # a realm retried alone keeps its claim until that task ends
        released = [realm_id for realm_id in realm_ids if realm_id not in outcome.failed]
        if released:
            ctx.publisher.redis.delete(*map(_claim_key, released))
    return len(outcome.changes)


@app.task(name="keyrotor.rotate_realm", bind=True, **RETRY)
def rotate_realm(
    self: Task,
    realm_id: str,
    force: bool = False,
    before: str | None = None,
    rotation_id: str | None = None,
    actor: str | None = None,
) -> None:
    """Apply what is due (with `force`, rotate now; with `before`, rotate unless rotated since
    then); a realm deleted meanwhile is skipped. A failure is retried with backoff, a few
    times, before it is left to the next schedule (or the next `rotate --all`, whose id a
    realm split out of its batch carries as `rotation_id`, for the log)."""
    ctx = context()
    extra = {"realm_id": realm_id, "rotation_id": rotation_id}
    try:
        cutoff = parse_rfc3339(before) if before else None
        with acting_as(actor or SYSTEM):
            report(ctx.service.rotate(realm_id, force=force, before=cutoff))
    except NotFound:
        log.info("realm %s is gone; nothing to rotate", realm_id, extra=extra)
    except RETRYABLE:
        raise
    except Exception as error:
        count_rotation_failure(ctx.publisher.redis)  # /metrics: keyrotor_rotation_failures
        if self.request.retries >= ALONE_RETRIES:
            raise
        raise self.retry(
            exc=error, countdown=ALONE_AFTER * 2**self.request.retries, max_retries=ALONE_RETRIES
        ) from error
    finally:
        ctx.publisher.redis.delete(_claim_key(realm_id))


@app.task(name="keyrotor.purge_expired", **RETRY)
def purge_expired(actor: str | None = None) -> int:
    """Delete the keys whose grace window has ended; beat's, so `scheduler`'s by default."""
    with acting_as(actor or SCHEDULER):
        changes = context().service.purge_expired()
        for change in changes:
            report(change)
    return len(changes)


@app.task(name="keyrotor.delete_key", **RETRY)
def delete_key(key_id: str, force: bool = False, actor: str | None = None) -> None:
    """Expire a key (or revoke it with force); a key already gone is not an error."""
    try:
        with acting_as(actor or SYSTEM):
            original = context().service.delete_key(key_id, force=force)
    except NotFound:
        log.info("key %s is already gone", key_id, extra={"key_id": key_id})
        return
    publish(original.realm_id)
    log.info(
        "%s %s in realm %s",
        "revoked" if force else "expired",
        key_id,
        original.realm_id,
        extra={"realm_id": original.realm_id, "key_id": key_id},
    )


@app.task(name="keyrotor.revoke_key", **RETRY)
def revoke_key(key_id: str, actor: str | None = None) -> None:
    """Force delete: out of storage and every published JWKS at once, replaced at once."""
    delete_key(key_id, force=True, actor=actor)


@app.task(name="keyrotor.publish_jwks", **RETRY)
def publish_jwks(realm_id: str) -> None:
    """Publish a realm's JWKS from the database; errors are retried here, not swallowed."""
    ctx = context()
    try:
        ctx.publisher.publish(ctx.service.publication(realm_id))
    except NotFound:
        ctx.publisher.unpublish(realm_id)


@app.task(name="keyrotor.reconcile_jwks", **RETRY)
def reconcile_jwks() -> int:
    """Republish every realm whose Redis copy or file lags the database."""
    ctx = context()
    with acting_as(SCHEDULER):  # beat's sweep: anything it ever writes is the scheduler's
        lagging = reconcile(ctx.service, ctx.publisher)
    if lagging:
        log.info("republished %d lagging JWKS", lagging, extra={"jwks_republished": lagging})
    return lagging


@app.task(name="keyrotor.relay_events", **RETRY)
def relay_events() -> int:
    """Send the outbox events a commit left behind (Redis away, a worker killed after commit)."""
    with acting_as(SCHEDULER):
        sent = context().relay.relay_all()
    if sent:  # an empty sweep, every two seconds, is no news (Celery's own line is at DEBUG)
        log.info("relayed %d event(s) left in the outbox", sent, extra={"events_relayed": sent})
    return sent


@app.task(name="keyrotor.prune_events", **RETRY)
def prune_events() -> int:
    """Delete the events relayed longer ago than `KEYROTOR_EVENTS_RETENTION`, so the outbox
    stops growing; events the relay has still to send are kept whatever their age."""
    ctx = context()
    before = ctx.service.clock() - ctx.settings.events_retention
    deleted = 0
    for _ in range(PRUNE_BATCHES):
        with acting_as(SCHEDULER):
            pruned = outbox.prune(ctx.service.sessions, before, PRUNE_BATCH)
        deleted += pruned
        if pruned < PRUNE_BATCH:
            break
    if deleted:
        log.info(
            "pruned %d event(s) relayed before %s",
            deleted,
            rfc3339(before),
            extra={"events_pruned": deleted},
        )
    return deleted


@app.task(name="keyrotor.fill_key_pool", **RETRY)
def fill_key_pool() -> int:
    """Make RSA keys ahead of need, up to `KEYROTOR_KEY_POOL_SIZE` for each RSA algo and size
    in use (and the default policy's), so rotations and revocations take one at once."""
    ctx = context()
    policy = ctx.settings.default_policy
    wanted = [(policy.algo, policy.rsa_bits)] if policy.algo in POOLED_ALGOS else []
    with acting_as(SCHEDULER):
        made = ctx.service.fill_pool(ctx.settings.key_pool_size, wanted=wanted)
    if made:
        log.info("made %d pooled key(s)", made, extra={"pooled_keys_made": made})
    return made
