"""Sending webhook deliveries: Standard Webhooks signatures, one endpoint at a time.

A sender takes one leased dispatch (a few deliveries of one webhook, oldest first), checks
the target again (a host that now resolves to a private address is refused: DNS rebinding),
connects to the address it checked rather than resolving twice, and POSTs each delivery's
event JSON with `webhook-id`, `webhook-timestamp` and `webhook-signature` (one `v1,` signature
per secret in use). The first failure ends the dispatch: the endpoint is not asked again
until its retry time, and the deliveries not tried wait as long. Redirects are not followed;
at most 1 KiB of an answer is kept.
"""

from __future__ import annotations

import logging
import time
from importlib.metadata import PackageNotFoundError, version

import httpx
import redis
from keyrotor_client.webhooks import sign

from worker.core.errors import InvalidInput
from worker.core.webhooks import Target
from worker.service import Service
from worker.service.webhooks import RESPONSE_KEPT, Dispatch, Outcome, Outgoing, Recorded

log = logging.getLogger("keyrotor.webhooks")

TIMEOUT = 10.0
# Redis hash: outcome -> deliveries recorded so, for `/metrics` (aggregates, no webhook label).
WEBHOOK_OUTCOMES = "keyrotor:metrics:webhooks"
OUTCOMES = ("delivered", "retrying", "failed")


def user_agent() -> str:
    try:
        return f"keyrotor/{version('keyrotor')}"
    except PackageNotFoundError:
        return "keyrotor"


class Sender:
    """Sends leased dispatches and records what happened; safe to run twice at once (only
    the lease holder's outcomes are written)."""

    def __init__(
        self,
        service: Service,
        client: redis.Redis | None = None,
        *,
        http: httpx.Client | None = None,
        timeout: float = TIMEOUT,
    ) -> None:
        self.service = service
        self.redis = client
        self.timeout = timeout
        self.http = http or httpx.Client(timeout=timeout, follow_redirects=False)
        self.agent = user_agent()

    def send(self, dispatch: Dispatch) -> None:
        outgoing = self.service.outgoing(dispatch)
        if outgoing is None:
            return  # sent meanwhile, retried by hand, or the webhook is gone
        outcomes: list[Outcome] = []
        pending = [delivery_id for delivery_id, _, _ in outgoing.deliveries]
        try:
            target, address = self.service.check_target(outgoing.url)
        except InvalidInput as refused:
            outcomes.append(Outcome(pending[0], error=f"refused: {refused}"))
        else:
            for delivery_id, event_id, body in outgoing.deliveries:
                outcome = self._post(outgoing, target, address, delivery_id, event_id, body)
                outcomes.append(outcome)
                if not outcome.delivered:
                    break
        unsent = pending[len(outcomes) :]
        recorded = self.service.record(dispatch, outcomes, unsent)
        self._count(recorded)
        if recorded.disabled:
            log.warning(
                "webhook %s disabled: every attempt failed for the whole retry window",
                dispatch.webhook_id,
                extra={"webhook_id": dispatch.webhook_id},
            )

    def _post(
        self,
        outgoing: Outgoing,
        target: Target,
        address: str | None,
        delivery_id: str,
        event_id: str | None,
        body: str,
    ) -> Outcome:
        msg_id = event_id or delivery_id
        timestamp = int(time.time())
        content = body.encode()
        signature = " ".join(sign(s, msg_id, timestamp, content) for s in outgoing.secrets)
        default_port = 443 if target.scheme == "https" else 80
        host = f"[{target.host}]" if ":" in target.host else target.host
        host_header = host if target.port == default_port else f"{host}:{target.port}"
        connect_to = target.host if address is None else address
        if ":" in connect_to:
            connect_to = f"[{connect_to}]"
        headers = {
            "host": host_header,
            "webhook-id": msg_id,
            "webhook-timestamp": str(timestamp),
            "webhook-signature": signature,
            "content-type": "application/json",
            "user-agent": self.agent,
        }
        url = f"{target.scheme}://{connect_to}:{target.port}{target.path}"
        extensions = {"sni_hostname": target.host} if target.scheme == "https" else {}
        try:
            with self.http.stream(
                "POST", url, content=content, headers=headers, extensions=extensions
            ) as response:
                kept = _first_bytes(response, RESPONSE_KEPT)
        except httpx.TimeoutException:
            return Outcome(delivery_id, error=f"timed out after {self.timeout:g}s")
        except httpx.HTTPError as error:
            return Outcome(delivery_id, error=f"{error.__class__.__name__}: {error}"[:200])
        status = response.status_code
        problem = None if 200 <= status < 300 else f"HTTP {status}"
        return Outcome(delivery_id, status=status, error=problem, response=kept)

    def _count(self, recorded: Recorded) -> None:
        if self.redis is None:
            return
        try:
            pipe = self.redis.pipeline(transaction=False)
            for outcome in OUTCOMES:
                if getattr(recorded, outcome):
                    pipe.hincrby(WEBHOOK_OUTCOMES, outcome, getattr(recorded, outcome))
            pipe.execute()
        except redis.RedisError:
            log.debug("webhook outcomes not counted: Redis is unavailable")


def _first_bytes(response: httpx.Response, limit: int) -> str:
    """At most `limit` bytes of the answer, as text; the rest is never read."""
    kept = b""
    for chunk in response.iter_raw():
        kept += chunk
        if len(kept) >= limit:
            break
    return kept[:limit].decode("utf-8", "replace")
