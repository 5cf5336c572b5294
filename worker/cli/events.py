"""`keyrotor events` and `keyrotor token sign|verify`: the event stream and tokens, inline.

`token` works straight against the database (the same keys a worker uses), so it needs no
running worker; `token sign --remote` instead asks a running keyrotor to sign, with an admin
key, and needs neither the database nor the master keys. `events` reads the Redis stream and
follows it until Ctrl-C.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer

from worker.cli.common import fail, print_json, service, settings
from worker.core import ids

token_app = typer.Typer(help="Sign and verify tokens with a realm's keys.")

Realm = Annotated[str, typer.Argument(help="Realm id or name.")]
Audience = Annotated[str | None, typer.Option("--aud", help="Audience (aud).")]
Issuer = Annotated[str | None, typer.Option("--iss", help="Issuer (iss).")]


def register(app: typer.Typer) -> None:
    """Add this module's commands to the `keyrotor` app."""
    app.command("events")(events)
    app.add_typer(token_app, name="token", no_args_is_help=True)


def events(
    realm: Annotated[str | None, typer.Option(help="Only this realm (id or name).")] = None,
    since: Annotated[
        str | None,
        typer.Option(
            help="Start after this event id (evt_...) or stream entry id; 0 for all the stream"
            " holds. Default: only new events."
        ),
    ] = None,
    follow: Annotated[
        bool, typer.Option("--follow/--no-follow", help="Keep following the stream.")
    ] = True,
    actor: Annotated[
        str | None,
        typer.Option(
            help="Only the events this actor caused: an admin key id, cli:<user>, scheduler or"
            " system."
        ),
    ] = None,
) -> None:
    """Print realm.updated events as JSON lines, following the stream until Ctrl-C. The
    stream holds the latest KEYROTOR_EVENTS_STREAM_MAXLEN events; `GET /v1/events` lists all
    the database keeps (KEYROTOR_EVENTS_RETENTION)."""
    from keyrotor_client.events import entry_id_of
    from keyrotor_client.subscriber import Subscriber, check_since, history

    from worker import runtime
    from worker.core.errors import InvalidInput

    url = runtime.require_redis_url(settings())
    realm_id = realm
    if realm is not None and not ids.looks_like("rl", realm):
        realm_id = service().get_realm(realm).id
    start = since
    if since is not None and since.startswith("evt_"):
        start = entry_id_of(runtime.redis_client(url), since)
        if start is None:
            raise InvalidInput(f"Event {since} is not in the stream (or was relayed too long ago)")
    check_since(start)
    show = _print_line if actor is None else _only_of(actor)
    try:
        if not follow:
            for event in history(runtime.redis_client(url), realm=realm_id, since=start or "0"):
                show(event)
            return
        Subscriber(url, show, realm=realm_id, since=start).run()
    except KeyboardInterrupt:
        return
    except BrokenPipeError:  # `keyrotor events | head`: the reader left
        sys.stderr.close()
        return


def _print_line(event: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(event, separators=(",", ":")) + "\n")
    sys.stdout.flush()


def _only_of(actor: str) -> Callable[[dict[str, Any]], None]:
    """Print only `actor`'s events; one relayed before events named their actor is `system`'s
    (as the database records it)."""

    def show(event: dict[str, Any]) -> None:
        if event.get("actor", "system") == actor:
            _print_line(event)

    return show


@token_app.command("sign")
def token_sign(
    realm: Realm,
    claims: Annotated[str, typer.Option(help="Claims as a JSON object.")] = "{}",
    ttl: Annotated[str | None, typer.Option(help="Lifetime, e.g. 5m; default: the max.")] = None,
    aud: Audience = None,
    iss: Issuer = None,
    jti: Annotated[str | None, typer.Option(help="Token id (jti).")] = None,
    remote: Annotated[
        str | None,
        typer.Option(
            "--remote",
            help="Sign through the keyrotor at this URL instead of opening the database, with an"
            " admin key that has the realm's sign scope (--key, --kid).",
        ),
    ] = None,
    key: Annotated[
        Path | None, typer.Option("--key", help="With --remote: the admin private key (PEM).")
    ] = None,
    kid: Annotated[
        str | None, typer.Option("--kid", help="With --remote: its admin key id (aky_...).")
    ] = None,
) -> None:
    """Sign a token with the realm's active key and print it; `iss` is the realm's issuer
    (KEYROTOR_PUBLIC_URL/realms/<name>) unless --iss or the claims give one. With --remote
    the server signs, and sets iss and jti itself."""
    from worker.client.signer import Signer
    from worker.core.durations import parse_duration
    from worker.core.errors import InvalidInput

    try:
        body = json.loads(claims)
    except ValueError:
        raise InvalidInput("Claims must be a JSON object") from None
    if not isinstance(body, dict):
        raise InvalidInput("Claims must be a JSON object")
    if remote is not None or key is not None or kid is not None:
        token = _sign_remotely(realm, body, ttl, aud, remote, key, kid, iss=iss, jti=jti)
        sys.stdout.write(token + "\n")
        return
    lifetime = parse_duration(ttl) if ttl is not None else None
    signer = Signer(service(), issuer_base=settings().issuer_base)
    token = signer.sign(realm, body, lifetime, aud=aud, iss=iss, jti=jti)
    sys.stdout.write(token + "\n")


def _sign_remotely(
    realm: str,
    claims: dict[str, Any],
    ttl: str | None,
    aud: str | None,
    remote: str | None,
    key: Path | None,
    kid: str | None,
    *,
    iss: str | None,
    jti: str | None,
) -> str:
    """`token sign --remote`: no database, no master keys; only the admin key file is read."""
    from keyrotor_client import RemoteSigner

    from worker.core.errors import InvalidInput

    if remote is None or key is None or kid is None:
        raise InvalidInput("--remote, --key and --kid go together")
    if iss is not None or jti is not None:
        raise InvalidInput("--iss and --jti cannot be used with --remote: the server sets them")
    signer = RemoteSigner(
        remote, key, kid, settings().admin_audience, issuer=settings().admin_issuer
    )
    return signer.sign(realm, claims, ttl, aud).token


@token_app.command("verify")
def token_verify(
    realm: Realm,
    token: Annotated[str, typer.Argument(help="The token; - reads it from stdin.")],
    aud: Audience = None,
    iss: Issuer = None,
) -> None:
    """Print a token's claims as JSON if it verifies; else one line why, exit status 1."""
    from keyrotor_client.verifier import KeyCache

    from worker.core.errors import InvalidToken
    from worker.service.key_sources import ServiceKeys

    text = sys.stdin.read().strip() if token == "-" else token.strip()
    svc = service()
    realm_id = svc.get_realm(realm).id  # an unknown realm is bad input (status 2)
    cache = KeyCache(ServiceKeys(svc), clock_skew=settings().clock_skew)
    try:
        claims = cache.verify(realm_id, text, audience=aud, issuer=iss)
    except InvalidToken as error:
        fail(str(error), 1)
    print_json(claims)
