"""Webhooks: the endpoints that receive events over HTTP, and the log of each delivery.

The relay queues a delivery per (event, matching webhook) in the transaction that stamps the
event sent, so none is lost to a crash. A sender leases a few deliveries of one webhook at a
time (`lease`, until `next_attempt_at`): two senders never hold the same delivery, and one that
dies only delays its deliveries by the lease. Outcomes are recorded under the same lease.
"""

from __future__ import annotations

import random
import secrets
import socket
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from keyrotor_client.events import REASONS
from sqlalchemy import func, insert, select, update
from sqlalchemy.orm import Session

from worker.core import ids
from worker.core import webhooks as rules
from worker.core.errors import InvalidInput, NotFound
from worker.core.webhooks import Target
from worker.service.base import MAX_RESULTS, ServiceBase, read_page
from worker.service.views import Page
from worker.store.db import transaction
from worker.store.models import Event, Webhook, WebhookDelivery

# A task sends at most this many deliveries of one webhook (oldest first).
DELIVERIES_PER_TASK = 10
SEALED_AS = "webhook"  # the associated data's realm part, beside the webhook id
RESPONSE_KEPT = 1024
DISABLED = "webhook.disabled"

Resolve = Callable[[str, int], list[str]]


def resolve_host(host: str, port: int) -> list[str]:
    """Every address the host resolves to now (refusal looks at all of them)."""
    try:
        found = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError):
        return []
    return list(dict.fromkeys(str(info[4][0]) for info in found))


@dataclass(frozen=True)
class WebhookView:
    id: str
    url: str
    realm_id: str | None
    reasons: list[str] | None
    enabled: bool
    created_at: datetime


@dataclass(frozen=True)
class DeliveryView:
    id: str
    webhook_id: str
    event_id: str | None
    state: str
    attempts: int
    last_status: int | None
    last_error: str | None
    next_attempt_at: datetime | None
    delivered_at: datetime | None
    created_at: datetime


@dataclass(frozen=True)
class Dispatch:
    """Deliveries of one webhook leased to one sender."""

    webhook_id: str
    delivery_ids: list[str]
    lease: str


@dataclass(frozen=True)
class Outgoing:
    """What a sender needs for its leased deliveries: where, signed with which secrets."""

    webhook_id: str
    url: str
    secrets: list[str] = field(repr=False)
    deliveries: list[tuple[str, str | None, str]]  # (delivery id, event id, body)


@dataclass(frozen=True)
class Outcome:
    """One attempt: a status code (2xx delivered) or an error, and what the endpoint said."""

    delivery_id: str
    status: int | None = None
    error: str | None = None
    response: str | None = None

    @property
    def delivered(self) -> bool:
        return self.status is not None and 200 <= self.status < 300


@dataclass(frozen=True)
class Recorded:
    """What a sender's attempts came to."""

    delivered: int = 0
    retrying: int = 0
    failed: int = 0
    disabled: bool = False


def webhook_view(row: Webhook) -> WebhookView:
    return WebhookView(row.id, row.url, row.realm_id, row.reasons, row.enabled, row.created_at)


def delivery_view(row: WebhookDelivery) -> DeliveryView:
    return DeliveryView(
        id=row.id,
        webhook_id=row.webhook_id,
        event_id=row.event_id,
        state=row.state,
        attempts=row.attempts,
        last_status=row.last_status,
        last_error=row.last_error,
        next_attempt_at=row.next_attempt_at if row.state == "pending" else None,
        delivered_at=row.delivered_at,
        created_at=row.created_at,
    )


class Webhooks(ServiceBase):
    """Webhook CRUD and secrets, the delivery log, and the bookkeeping of sending."""

    resolve: Resolve = staticmethod(resolve_host)

    # --- the endpoints -------------------------------------------------------------------

    def create_webhook(
        self,
        url: str,
        *,
        realm_id: str | None = None,
        reasons: object = None,
        enabled: bool = True,
    ) -> tuple[WebhookView, str]:
        """A new webhook and its secret, which is shown this once."""
        self.check_target(url)
        known = rules.check_reasons(reasons, REASONS)
        _check_enabled(enabled)
        secret = ids.webhook_secret()
        now = self.clock()
        with transaction(self.sessions) as session:
            row = Webhook(
                id=ids.webhook_id(),
                url=url,
                realm_id=self._realm_id(session, realm_id),
                reasons=known,
                enabled=enabled,
                created_at=now,
                updated_at=now,
            )
            row.sealed_secret = self._seal_secret(row.id, secret)
            session.add(row)
            session.flush()
            return webhook_view(row), secret

    def webhook(self, webhook_id: str) -> WebhookView:
        with transaction(self.sessions, read_only=True) as session:
            return webhook_view(self._webhook(session, webhook_id))

    def list_webhooks(
        self,
        *,
        after: str | None = None,
        max_results: int = MAX_RESULTS,
        direction: str = "desc",
        only: Collection[str] | None = None,
    ) -> Page[WebhookView]:
        """A page of webhooks; `only` (realm ids) narrows it to those realms' webhooks, which
        leaves out the ones for every realm."""
        query = select(Webhook)
        if only is not None:
            query = query.where(Webhook.realm_id.in_(sorted(only)))
        with transaction(self.sessions, read_only=True) as session:
            return read_page(
                session,
                query,
                Webhook.id,
                webhook_view,
                after=after,
                max_results=max_results,
                direction=direction,
                sort="id",
            )

    def update_webhook(self, webhook_id: str, changes: Mapping[str, Any]) -> WebhookView:
        """Change what is given of url, realm_id (None: every realm), reasons, enabled."""
        unknown = sorted(set(changes) - {"url", "realm_id", "reasons", "enabled"})
        if unknown:
            raise InvalidInput(f"Unknown field(s): {', '.join(unknown)}")
        if "url" in changes:
            self.check_target(changes["url"])
        known = rules.check_reasons(changes.get("reasons"), REASONS)
        if "enabled" in changes:
            _check_enabled(changes["enabled"])
        with transaction(self.sessions) as session:
            row = self._webhook(session, webhook_id, lock=True)
            if "url" in changes and changes["url"] != row.url:
                row.url, row.failing_since = changes["url"], None  # a new endpoint, a fresh start
            if "realm_id" in changes:
                row.realm_id = self._realm_id(session, changes["realm_id"])
            if "reasons" in changes:
                row.reasons = known
            if "enabled" in changes:
                if changes["enabled"] and not row.enabled:
                    row.failing_since = None  # a fresh start for a re-enabled endpoint
                if not changes["enabled"] and row.enabled:
                    _fail_waiting(session, row.id, "webhook disabled")
                row.enabled = changes["enabled"]
            row.updated_at = self.clock()
            return webhook_view(row)

    def delete_webhook(self, webhook_id: str) -> WebhookView:
        """Gone at once, with its delivery log; a delivery under way is not recorded."""
        with transaction(self.sessions) as session:
            row = self._webhook(session, webhook_id, lock=True)
            view = webhook_view(row)
            session.delete(row)
            return view

    def rotate_webhook_secret(self, webhook_id: str) -> tuple[WebhookView, str]:
        """A new secret, shown once; the current one keeps signing beside it for the overlap,
        so receivers can switch without missing a delivery."""
        secret = ids.webhook_secret()
        now = self.clock()
        with transaction(self.sessions) as session:
            row = self._webhook(session, webhook_id, lock=True)
            row.previous_sealed_secret = row.sealed_secret
            row.previous_until = now + self.webhook_policy.secret_overlap
            row.sealed_secret = self._seal_secret(row.id, secret)
            row.updated_at = now
            return webhook_view(row), secret

    def check_target(self, url: object) -> tuple[Target, str | None]:
        """The URL's parts, and the address to connect to, when it may be called now: https
        (or http when allowed) to a host whose every address is public. With private targets
        allowed nothing is resolved here (None: connect by name)."""
        policy = self.webhook_policy
        if not isinstance(url, str):
            raise InvalidInput("Url must be a string")
        target = rules.parse_url(url, allow_http=policy.allow_http)
        if policy.allow_private:
            return target, None
        return target, rules.check_addresses(target.host, self.resolve(target.host, target.port))

    # --- the delivery log ------------------------------------------------------------------

    def list_deliveries(
        self,
        webhook_id: str,
        *,
        after: str | None = None,
        max_results: int = MAX_RESULTS,
        direction: str = "desc",
    ) -> Page[DeliveryView]:
        with transaction(self.sessions, read_only=True) as session:
            self._webhook(session, webhook_id)
            query = select(WebhookDelivery).where(WebhookDelivery.webhook_id == webhook_id)
            return read_page(
                session,
                query,
                WebhookDelivery.id,
                delivery_view,
                after=after,
                max_results=max_results,
                direction=direction,
                sort="id",
            )

    def retry_delivery(self, webhook_id: str, delivery_id: str) -> DeliveryView:
        """Send a delivery again soon (the next sweep), whatever its state; attempts go on
        counting, and its retry window starts again."""
        with transaction(self.sessions) as session:
            row = session.get(WebhookDelivery, delivery_id, with_for_update=True)
            if row is None or row.webhook_id != webhook_id or row.event_id is None:
                raise NotFound(f"Delivery {delivery_id!r} not found")
            row.state, row.lease = "pending", None
            row.next_attempt_at = self.clock()
            row.first_attempt_at = None
            return delivery_view(row)

    # --- sending ---------------------------------------------------------------------------

    def queue_deliveries(
        self,
        session: Session,
        events: Sequence[Event],
        bodies: Mapping[str, str],
        *,
        lease: bool = True,
    ) -> list[Dispatch]:
        """In the relay's transaction: a delivery for each enabled webhook each event matches,
        leased at once to whoever sends the returned dispatches (the first attempt is now);
        without `lease`, due at once for the sweep, and nothing is returned."""
        hooks = list(session.scalars(select(Webhook).where(Webhook.enabled.is_(True))))
        if not hooks or not events:
            return []
        now = self.clock()
        rows: dict[str, dict[str, Any]] = {}
        leased: dict[str, list[str]] = {}
        token = _lease() if lease else None
        for event in events:
            for hook in hooks:
                if rules.wants(hook.realm_id, hook.reasons, event.realm_id, event.reason):
                    delivery = ids.delivery_id()
                    rows[delivery] = _new_delivery(
                        delivery, hook.id, event.id, bodies[event.id], now, None
                    )
                    rows[delivery].update(event_seq=event.seq, next_attempt_at=now)
                    if hook.failing_since is None:  # a failing endpoint waits for the sweep
                        leased.setdefault(hook.id, []).append(delivery)
        dispatches = _dispatches(leased, token) if token is not None else []
        for dispatch in dispatches:
            until = now + self._lease_for(dispatch)
            for delivery in dispatch.delivery_ids:
                rows[delivery].update(lease=token, next_attempt_at=until)
        if rows:
            session.execute(insert(WebhookDelivery), list(rows.values()))
        return dispatches

    def lease_due(self, limit: int = 500) -> list[Dispatch]:
        """Lease deliveries whose time has come (retries, and any a lost sender held): at most
        one task per webhook, and none for a webhook whose sender is still at work, so a slow
        or dead endpoint holds one sender at a time, never the whole pool."""
        now = self.clock()
        lease = _lease()
        busy = select(WebhookDelivery.webhook_id).where(
            WebhookDelivery.state == "pending",
            WebhookDelivery.lease.is_not(None),
            WebhookDelivery.next_attempt_at > now,
        )
        due = (
            select(WebhookDelivery.id, WebhookDelivery.webhook_id)
            .where(
                WebhookDelivery.state == "pending",
                WebhookDelivery.next_attempt_at <= now,
                WebhookDelivery.webhook_id.not_in(busy),
            )
            .order_by(WebhookDelivery.next_attempt_at, WebhookDelivery.event_seq)
            .limit(limit)
        )
        with transaction(self.sessions) as session:
            if session.get_bind().dialect.name == "postgresql":  # two sweeps take different rows
                due = due.with_for_update(skip_locked=True)
            found = session.execute(due).all()
            leased: dict[str, list[str]] = {}
            for row in found:
                taken = leased.setdefault(row.webhook_id, [])
                if len(taken) < DELIVERIES_PER_TASK:
                    taken.append(row.id)
            dispatches = _dispatches(leased, lease)
            by_length: dict[int, list[str]] = {}
            for dispatch in dispatches:
                by_length.setdefault(len(dispatch.delivery_ids), []).extend(dispatch.delivery_ids)
            for length, delivery_ids in by_length.items():  # one statement per task length
                session.execute(
                    update(WebhookDelivery)
                    .where(
                        WebhookDelivery.id.in_(delivery_ids),
                        WebhookDelivery.state == "pending",
                        WebhookDelivery.next_attempt_at <= now,
                    )
                    .values(lease=lease, next_attempt_at=now + self._lease_for(length))
                )
        return dispatches

    def outgoing(self, dispatch: Dispatch) -> Outgoing | None:
        """The still-leased deliveries of a dispatch, oldest first, with the webhook's URL and
        its signing secrets; None when nothing is left to send (or the webhook is gone)."""
        now = self.clock()
        with transaction(self.sessions, read_only=True) as session:
            hook = session.get(Webhook, dispatch.webhook_id)
            if hook is None:
                return None
            rows = session.scalars(
                select(WebhookDelivery)
                .where(
                    WebhookDelivery.id.in_(dispatch.delivery_ids),
                    WebhookDelivery.lease == dispatch.lease,
                    WebhookDelivery.state == "pending",
                )
                .order_by(WebhookDelivery.event_seq)
            ).all()
            if not rows:
                return None
            signing = [self._open_secret(hook.id, hook.sealed_secret)]
            previous = hook.previous_sealed_secret
            if previous is not None and hook.previous_until and hook.previous_until > now:
                signing.append(self._open_secret(hook.id, previous))
            return Outgoing(hook.id, hook.url, signing, [(r.id, r.event_id, r.body) for r in rows])

    def record(
        self, dispatch: Dispatch, outcomes: Sequence[Outcome], unsent: Sequence[str] = ()
    ) -> Recorded:
        """Write a sender's attempts (and postpone what it did not try after a failure) under
        its lease: delivered, retried later, or failed for good once the retry window has
        passed; an endpoint that has failed for the whole window is disabled."""
        policy = self.webhook_policy
        now = self.clock()
        failed = [o for o in outcomes if not o.delivered]
        with transaction(self.sessions) as session:
            hook = session.get(Webhook, dispatch.webhook_id, with_for_update=True)
            if hook is None:
                return Recorded()
            rows = {
                row.id: row
                for row in session.scalars(
                    select(WebhookDelivery).where(
                        WebhookDelivery.id.in_([o.delivery_id for o in outcomes] + list(unsent)),
                        WebhookDelivery.lease == dispatch.lease,
                        WebhookDelivery.state == "pending",
                    )
                )
            }
            retry_at, gave_up = now, 0
            for outcome in outcomes:
                row = rows.get(outcome.delivery_id)
                if row is None:
                    continue  # retried by hand meanwhile, or another sender took over
                row.attempts += 1
                row.first_attempt_at = row.first_attempt_at or now
                row.last_status = outcome.status
                row.last_error = outcome.error
                row.last_response = outcome.response
                row.lease = None
                if outcome.delivered:
                    row.state, row.delivered_at = "delivered", now
                elif rules.gives_up(row.first_attempt_at, now, policy.retry_for):
                    row.state, gave_up = "failed", gave_up + 1
                else:
                    wait = rules.next_wait(row.attempts, policy.retry_schedule, random.random())
                    row.next_attempt_at = retry_at = now + wait
            for delivery_id in unsent:
                row = rows.get(delivery_id)
                if row is not None:  # not tried: the endpoint just failed; it waits as long
                    row.lease, row.next_attempt_at = None, max(retry_at, now)
            if len(failed) < len(outcomes):
                hook.failing_since = None
            elif failed and hook.failing_since is None:
                hook.failing_since = now
            delivered = len(outcomes) - len(failed)
            if hook.enabled and rules.failing_too_long(hook.failing_since, now, policy.retry_for):
                self._disable(session, hook, now)
                return Recorded(delivered, len(failed) - gave_up, gave_up, disabled=True)
            return Recorded(delivered, len(failed) - gave_up, gave_up)

    def oldest_undelivered(self) -> datetime | None:
        """When the oldest delivery still waiting was queued: how far behind webhooks are."""
        with transaction(self.sessions, read_only=True) as session:
            return session.scalar(
                select(func.min(WebhookDelivery.created_at)).where(
                    WebhookDelivery.state == "pending"
                )
            )

    # --- helpers -------------------------------------------------------------------------------

    def _lease_for(self, task: Dispatch | int) -> timedelta:
        """A sender holds a task's deliveries for as many timeouts as it has, and two more:
        it always finishes inside its lease, and a lost one delays them no longer."""
        length = task if isinstance(task, int) else len(task.delivery_ids)
        return self.webhook_policy.timeout * (length + 2)

    def _disable(self, session: Session, hook: Webhook, now: datetime) -> None:
        """Disable an endpoint that failed for the whole window: its waiting deliveries fail,
        and an entry in its delivery log says why."""
        hook.enabled, hook.updated_at = False, now
        _fail_waiting(session, hook.id, DISABLED)
        entry = _new_delivery(ids.delivery_id(), hook.id, None, "", now, None)
        entry.update(
            state="failed",
            last_error=f"{DISABLED}: every attempt failed for "
            f"{int(self.webhook_policy.retry_for.total_seconds())}s",
        )
        session.execute(insert(WebhookDelivery), [entry])

    def _webhook(self, session: Session, webhook_id: str, *, lock: bool = False) -> Webhook:
        row = session.get(Webhook, webhook_id, with_for_update=lock) if webhook_id else None
        if row is None:
            raise NotFound(f"Webhook {webhook_id!r} not found")
        return row

    def _realm_id(self, session: Session, ref: object) -> str | None:
        """A webhook's realm by id or name (None: every realm)."""
        if ref is None:
            return None
        if not isinstance(ref, str):
            raise InvalidInput("Realm id must be a string")
        return self._realm(session, ref).id if ref else None

    def _seal_secret(self, webhook_id: str, secret: str) -> bytes:
        return self.master_keys.seal(secret.encode(), realm_id=SEALED_AS, key_id=webhook_id)

    def _open_secret(self, webhook_id: str, sealed: bytes) -> str:
        return self.master_keys.open(sealed, realm_id=SEALED_AS, key_id=webhook_id).decode()


def _check_enabled(enabled: object) -> None:
    if not isinstance(enabled, bool):
        raise InvalidInput("Enabled must be true or false")


def _fail_waiting(session: Session, webhook_id: str, why: str) -> None:
    """A disabled webhook's waiting deliveries fail (they can be retried by hand)."""
    session.execute(
        update(WebhookDelivery)
        .where(WebhookDelivery.webhook_id == webhook_id, WebhookDelivery.state == "pending")
        .values(state="failed", lease=None, last_error=why)
    )


def _lease() -> str:
    return secrets.token_hex(16)


def _new_delivery(
    delivery_id: str,
    webhook_id: str,
    event_id: str | None,
    body: str,
    now: datetime,
    lease: str | None,
) -> dict[str, Any]:
    return {
        "id": delivery_id,
        "webhook_id": webhook_id,
        "event_id": event_id,
        "event_seq": None,
        "body": body,
        "state": "pending",
        "attempts": 0,
        "last_status": None,
        "last_error": None,
        "last_response": None,
        "lease": lease,
        "next_attempt_at": None,
        "first_attempt_at": None,
        "delivered_at": None,
        "created_at": now,
    }


def _dispatches(leased: Mapping[str, list[str]], lease: str) -> list[Dispatch]:
    """Each webhook's deliveries in tasks of at most DELIVERIES_PER_TASK, in order."""
    return [
        Dispatch(webhook_id, chunk, lease)
        for webhook_id, delivery_ids in leased.items()
        for chunk in (
            delivery_ids[i : i + DELIVERIES_PER_TASK]
            for i in range(0, len(delivery_ids), DELIVERIES_PER_TASK)
        )
    ]
