"""Find an issuer's JWKS through its OpenID configuration, so a service needs only the issuer.

Standard library only, and size-capped like the JWKS fetch. The document must name the very
issuer it was fetched for (OpenID Connect Discovery 1.0, section 4.3): a configuration that
claims another issuer is refused rather than trusted for keys.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from typing import Any
from urllib.parse import urlsplit

from keyrotor_client.errors import DiscoveryError, InvalidInput, NotFound

WELL_KNOWN = "/.well-known/openid-configuration"
MAX_DISCOVERY_BYTES = 256 * 1024
SHOWN_CHARS = 200  # of a value quoted in an error, so a hostile document cannot flood logs


def configuration_url(issuer: str) -> str:
    """Where an issuer publishes its configuration: a trailing `/` is dropped first."""
    return issuer.rstrip("/") + WELL_KNOWN


def is_http_url(value: object) -> bool:
    """An absolute http(s) URL with a host: never `file:` or another scheme urllib would open."""
    if not isinstance(value, str):
        return False
    try:
        parts = urlsplit(value)
    except ValueError:
        return False
    return parts.scheme in ("http", "https") and bool(parts.netloc)


def discover(issuer: str, *, timeout: float = 5.0) -> dict[str, Any]:
    """The issuer's OpenID configuration, checked: its `issuer` is exactly `issuer` and its
    `jwks_uri` an http(s) URL. NotFound when there is none; DiscoveryError otherwise."""
    if not is_http_url(issuer):
        raise InvalidInput(f"Issuer must be an http(s) URL, not {_shown(issuer)}")
    url = configuration_url(issuer)
    request = urllib.request.Request(url, headers={"Accept": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            body = response.read(MAX_DISCOVERY_BYTES + 1)
    except urllib.error.HTTPError as error:
        error.close()
        if error.code == 404:
            raise NotFound(f"no OpenID configuration at {url}") from None
        raise DiscoveryError(f"OpenID configuration at {url}: HTTP {error.code}") from None
    except OSError as error:  # URLError, timeouts, refused connections
        reason = error.reason if isinstance(error, urllib.error.URLError) else error
        raise DiscoveryError(f"OpenID configuration at {url} is unreachable ({reason})") from None
    if len(body) > MAX_DISCOVERY_BYTES:
        raise DiscoveryError(f"OpenID configuration at {url} is too large")
    try:
        document = json.loads(body)
    except (ValueError, RecursionError):
        raise DiscoveryError(f"OpenID configuration at {url} is not JSON") from None
    if not isinstance(document, dict):
        raise DiscoveryError(f"OpenID configuration at {url} is not a JSON object")
    if document.get("issuer") != issuer:
        raise DiscoveryError(
            f"OpenID configuration at {url} is for issuer {_shown(document.get('issuer'))},"
            f" not {_shown(issuer)}"
        )
    if not is_http_url(document.get("jwks_uri")):
        raise DiscoveryError(f"OpenID configuration at {url} has no http(s) jwks_uri")
    return document


def _shown(value: object) -> str:
    text = repr(value)
    return text if len(text) <= SHOWN_CHARS else text[:SHOWN_CHARS] + "..."
