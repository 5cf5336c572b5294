"""The webhook rules as pure functions: which targets may be called, which events a webhook
wants, when a failed delivery is tried again and when an endpoint has failed for too long.

No I/O: addresses come in already resolved, `now` and the random draw are parameters.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from urllib.parse import urlsplit

from worker.core.errors import InvalidInput

MAX_URL = 2000
# Cloud metadata endpoints that are not link-local (Alibaba's sits in shared address space).
METADATA = frozenset(
    {ipaddress.ip_address("100.100.100.200"), ipaddress.ip_address("fd00:ec2::254")}
)
JITTER = 0.2


@dataclass(frozen=True)
class WebhookPolicy:
    """What the settings say about webhooks, as the service and the sender need it."""

    allow_http: bool = False
    allow_private: bool = False
    timeout: timedelta = timedelta(seconds=10)
    secret_overlap: timedelta = timedelta(hours=24)
    retry_for: timedelta = timedelta(hours=24)
    retry_schedule: tuple[timedelta, ...] = (
        timedelta(seconds=5),
        timedelta(seconds=30),
        timedelta(minutes=5),
        timedelta(minutes=30),
        timedelta(hours=2),
        timedelta(hours=5),
    )


@dataclass(frozen=True)
class Target:
    """Where a URL points: what to connect to and what to say in `Host` and SNI."""

    scheme: str
    host: str
    port: int
    path: str


def parse_url(url: str, *, allow_http: bool) -> Target:
    """The URL's parts, or one line saying why it may not be a webhook target."""
    if not isinstance(url, str) or not url.strip():
        raise InvalidInput("Url can't be blank")
    if len(url) > MAX_URL or any(c.isspace() or ord(c) < 32 for c in url):
        raise InvalidInput("Url is not a valid URL")
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        raise InvalidInput("Url is not a valid URL") from None
    schemes = ("https", "http") if allow_http else ("https",)
    if parts.scheme not in schemes:
        if allow_http:
            raise InvalidInput("Url must start with http:// or https://")
        raise InvalidInput("Url must start with https:// (KEYROTOR_WEBHOOK_ALLOW_HTTP allows http)")
    if not parts.hostname:
        raise InvalidInput("Url has no host")
    if parts.username is not None or parts.password is not None:
        raise InvalidInput("Url must not carry a user name or password")
    default = 443 if parts.scheme == "https" else 80
    path = parts.path or "/"
    if parts.query:
        path += "?" + parts.query
    return Target(parts.scheme, parts.hostname, port or default, path)


def refusal(address: str) -> str | None:
    """Why a resolved address may not be called (loopback, private, link-local, metadata,
    anything not globally routable), or None when it may."""
    ip = ipaddress.ip_address(address.split("%", 1)[0])
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    if ip in METADATA or ip.is_link_local:
        return "a link-local or metadata address"
    if ip.is_loopback:
        return "a loopback address"
    if ip.is_private or ip.is_multicast or ip.is_reserved or ip.is_unspecified or not ip.is_global:
        return "a private address"
    return None


def check_addresses(host: str, addresses: Sequence[str]) -> str:
    """The first address to connect to, when every address the host resolves to may be
    called (one bad answer is enough to refuse: a rebinding host would hand it out next)."""
    if not addresses:
        raise InvalidInput(f"Url host {host!r} does not resolve")
    for address in addresses:
        why = refusal(address)
        if why is not None:
            raise InvalidInput(
                f"Url host {host!r} resolves to {why}; webhooks are not sent there"
                " (KEYROTOR_WEBHOOK_ALLOW_PRIVATE allows it)"
            )
    return addresses[0]


def check_reasons(reasons: object, known: Sequence[str]) -> list[str] | None:
    """`None` (every reason) or a list of known reasons without repeats."""
    if reasons is None:
        return None
    if not isinstance(reasons, list) or not all(isinstance(r, str) for r in reasons):
        raise InvalidInput("Reasons must be a list of event reasons")
    unknown = sorted({r for r in reasons if r not in known})
    if unknown:
        raise InvalidInput(f"Reasons has unknown reason(s): {', '.join(unknown)}")
    if not reasons:
        raise InvalidInput("Reasons can't be empty (leave it out for every reason)")
    return sorted(set(reasons))


def wants(
    realm_id: str | None, reasons: Sequence[str] | None, event_realm: str, reason: str
) -> bool:
    """A webhook without a realm hears every realm; without reasons, every reason."""
    return (realm_id is None or realm_id == event_realm) and (reasons is None or reason in reasons)


def next_wait(attempts: int, schedule: Sequence[timedelta], draw: float) -> timedelta:
    """The wait after the `attempts`-th failed attempt (the last wait repeats), moved by up to
    `JITTER` either way by `draw` in [0, 1), so endpoints that failed together do not all
    come back at the same moment."""
    base = schedule[min(attempts, len(schedule)) - 1]
    return base * (1 + JITTER * (2 * draw - 1))


def gives_up(first_attempt_at: datetime, now: datetime, retry_for: timedelta) -> bool:
    """A delivery is retried until `retry_for` has passed since its first attempt."""
    return now - first_attempt_at >= retry_for


def failing_too_long(failing_since: datetime | None, now: datetime, retry_for: timedelta) -> bool:
    """An endpoint that has failed every attempt for the whole window is disabled."""
    return failing_since is not None and now - failing_since >= retry_for
