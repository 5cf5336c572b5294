"""`keyrotor events` and `keyrotor token sign|verify`: the event stream and tokens, inline.

`token` works straight against the database (the same keys a worker uses), so it needs no
running worker; `events` reads the Redis stream and follows it until Ctrl-C.
"""

from __future__ import annotations

import json
import sys
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
) -> None:
    """Print realm.updated events as JSON lines, following the stream until Ctrl-C."""
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
    try:
        if not follow:
            for event in history(runtime.redis_client(url), realm=realm_id, since=start or "0"):
                _print_line(event)
            return
        Subscriber(url, _print_line, realm=realm_id, since=start).run()
    except KeyboardInterrupt:
        return
    except BrokenPipeError:  # `keyrotor events | head`: the reader left
        sys.stderr.close()
        return


def _print_line(event: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(event, separators=(",", ":")) + "\n")
    sys.stdout.flush()


@token_app.command("sign")
def token_sign(
    realm: Realm,
    claims: Annotated[str, typer.Option(help="Claims as a JSON object.")] = "{}",
    ttl: Annotated[str | None, typer.Option(help="Lifetime, e.g. 5m; default: the max.")] = None,
    aud: Audience = None,
    iss: Issuer = None,
    jti: Annotated[str | None, typer.Option(help="Token id (jti).")] = None,
) -> None:
    """Sign a token with the realm's active key and print it; `iss` is the realm's issuer
    (KEYROTOR_PUBLIC_URL/realms/<name>) unless --iss or the claims give one."""
    from worker.client.signer import Signer
    from worker.core.durations import parse_duration
    from worker.core.errors import InvalidInput

    try:
        body = json.loads(claims)
    except ValueError:
        raise InvalidInput("Claims must be a JSON object") from None
    if not isinstance(body, dict):
        raise InvalidInput("Claims must be a JSON object")
    lifetime = parse_duration(ttl) if ttl is not None else None
    signer = Signer(service(), issuer_base=settings().issuer_base)
    token = signer.sign(realm, body, lifetime, aud=aud, iss=iss, jti=jti)
    sys.stdout.write(token + "\n")


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
