"""`keyrotor web`, `admin-keys create|list|delete` and `admin-token`.

An admin key's scopes (`--scope`, worker.core.scopes) say what its tokens may do; without
one it has `admin`, everything.

An admin key's private half is written once, to a file only its owner can read, and is not
kept anywhere else; keyrotor stores the public half. `admin-token` signs an RS256 token with
the `kid` header, `aud` as a list, `iat` and `exp` (and `iss` when KEYROTOR_ADMIN_ISSUER is set).
"""

from __future__ import annotations

import contextlib
import os
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from worker.cli.common import fail, out, print_json, service, settings

if TYPE_CHECKING:
    from worker.store.admin_keys import AdminKeys

admin_keys_app = typer.Typer(help="Admin API keys: RSA key pairs that sign admin API tokens.")

Json = Annotated[bool, typer.Option("--json", help="Print JSON for scripts.")]
STDOUT = Path("-")


def register(app: typer.Typer) -> None:
    """Add this module's commands to the `keyrotor` app."""
    app.command("web")(web)
    app.add_typer(admin_keys_app, name="admin-keys", no_args_is_help=True)
    app.command("admin-token")(admin_token)


def web(
    host: Annotated[str | None, typer.Option(help="Default: KEYROTOR_HTTP_HOST.")] = None,
    port: Annotated[
        int | None, typer.Option(min=1, max=65535, help="Default: KEYROTOR_HTTP_PORT.")
    ] = None,
) -> None:
    """Serve the JWKS, the admin API, /healthz and /metrics until stopped."""
    from worker.http.app import serve
    from worker.ops.logs import configure_logging

    ready = service()  # refuses an unmigrated database before anything is served
    configure_logging(settings())
    serve(settings(), ready, host=host, port=port)


def _admin_keys() -> AdminKeys:
    from worker.store.admin_keys import AdminKeys

    return AdminKeys(service().sessions)


@admin_keys_app.command("create")
def admin_keys_create(
    out: Annotated[
        Path,
        typer.Option(
            "--out", help="Write the private key here (mode 0600, never overwritten); - for stdout."
        ),
    ] = Path("private-key.pem"),
    public_key: Annotated[
        Path | None,
        typer.Option(
            "--public-key",
            help="Register this RSA public key (PEM) instead; its private key stays with you.",
        ),
    ] = None,
    scope: Annotated[
        list[str] | None,
        typer.Option(
            "--scope",
            help="What its tokens may do (repeat for more): admin (the default), realms:read,"
            " admin-keys, realm:<realm id>:admin, realm:<realm id>:sign.",
        ),
    ] = None,
    as_json: Json = False,
) -> None:
    """Make an admin key pair: the private key is written once, its kid is printed."""
    from worker.core.scopes import ADMIN, check_scopes

    scopes = check_scopes(scope or [ADMIN])  # refused before any key or file is made
    if public_key is not None:
        try:
            text = public_key.read_text()
        except (OSError, UnicodeDecodeError) as error:
            fail(f"cannot read {public_key}: {error.__class__.__name__}")
        view, _ = _admin_keys().create(text, scopes)
        _print_created(view, None, as_json)
        return

    keys = _admin_keys()  # fails (not migrated, say) before any file exists
    handle = _exclusive(out)
    try:
        view, private_pem = keys.create(scopes=scopes)
    except BaseException:
        _discard(out, handle)
        raise
    assert private_pem is not None
    try:
        if handle is None:
            sys.stdout.write(private_pem)
            sys.stdout.flush()
        else:
            os.write(handle, private_pem.encode("ascii"))
            os.fsync(handle)
            os.close(handle)
            handle = None
    except OSError as error:
        _discard(out, handle)
        keys.delete(view["id"])
        fail(f"cannot write {out}: {error.strerror or error.__class__.__name__}; nothing kept")
    if out == STDOUT:
        sys.stderr.write(view["id"] + "\n")  # stdout carries the key
        return
    _print_created(view, out, as_json)


def _print_created(view: dict[str, Any], out: Path | None, as_json: bool) -> None:

    if as_json:
        print_json(view if out is None else {**view, "private_key_file": str(out)})
    else:
        sys.stdout.write(view["id"] + "\n")


def _exclusive(out: Path) -> int | None:
    """Open `out` for the private key: created here, 0600, or refused if it exists."""

    if out == STDOUT:
        return None
    try:
        handle = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        fail(f"{out} exists: refusing to overwrite a key file (choose another --out)")
    except OSError as error:
        fail(f"cannot create {out}: {error.strerror or error.__class__.__name__}")
    os.fchmod(handle, 0o600)  # whatever the umask
    return handle


def _discard(out: Path, handle: int | None) -> None:
    if out == STDOUT:
        return
    if handle is not None:
        with contextlib.suppress(OSError):
            os.close(handle)
    with contextlib.suppress(OSError):
        out.unlink()


@admin_keys_app.command("list")
def admin_keys_list(as_json: Json = False) -> None:
    """List the admin keys that may sign admin tokens (all of them, oldest first)."""
    from rich.table import Table

    views = _admin_keys().list()
    if as_json:
        print_json({"more_results": False, "collection": views})
        return
    table = Table("id", "fingerprint", "scopes", "created")
    for view in views:
        table.add_row(view["id"], view["fingerprint"], " ".join(view["scopes"]), view["created_at"])
    out.print(table)


@admin_keys_app.command("delete")
def admin_keys_delete(kid: str, as_json: Json = False) -> None:
    """Delete an admin key: tokens it signed are refused from the next request on."""

    view = _admin_keys().delete(kid)
    if as_json:
        print_json(view)
    else:
        sys.stdout.write(f"deleted {view['id']}\n")


def admin_token(
    key: Annotated[Path, typer.Option("--key", help="The admin private key (PEM).")],
    kid: Annotated[str, typer.Option("--kid", help="Its admin key id (aky_...).")],
    ttl: Annotated[
        str, typer.Option(help="Lifetime, e.g. 5m; at most KEYROTOR_ADMIN_TOKEN_MAX_TTL.")
    ] = "5m",
    aud: Annotated[
        str | None, typer.Option("--aud", help="Default: KEYROTOR_ADMIN_AUDIENCE.")
    ] = None,
) -> None:
    """Print an admin API token (RS256), for `Authorization: Bearer <token>`."""
    import jwt
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    from worker.core.durations import format_duration, parse_duration
    from worker.core.errors import InvalidInput

    lifetime = parse_duration(ttl)
    limit = settings().admin_token_max_ttl
    if lifetime.total_seconds() <= 0 or lifetime > limit:
        raise InvalidInput(
            f"--ttl must be more than 0s and at most KEYROTOR_ADMIN_TOKEN_MAX_TTL"
            f" ({format_duration(limit)})"
        )
    try:
        pem = key.read_bytes()
    except OSError as error:
        fail(f"cannot read {key}: {error.strerror or error.__class__.__name__}")
    try:
        private_key = serialization.load_pem_private_key(pem, password=None)
    except (ValueError, TypeError):
        fail(f"{key} is not an unencrypted PEM private key")
    if not isinstance(private_key, rsa.RSAPrivateKey):
        fail(f"{key} is not an RSA private key (admin tokens are RS256)")
    now = int(time.time())
    payload = {
        "aud": [aud or settings().admin_audience],
        "iat": now,
        "exp": now + int(lifetime.total_seconds()),
    }
    if settings().admin_issuer is not None:
        payload["iss"] = settings().admin_issuer
    token = jwt.encode(payload, private_key, "RS256", headers={"kid": kid})
    sys.stdout.write(token + "\n")
