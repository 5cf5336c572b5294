"""The `keyrotor` command: a thin shell over the service; errors map to exit codes here only."""

from __future__ import annotations

import getpass
import os
import sys
from datetime import datetime
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.progress import Progress
from rich.table import Table
from sqlalchemy.exc import OperationalError, ProgrammingError

from worker.cli import admin as cli_admin
from worker.cli import events as cli_events
from worker.cli import pool as cli_pool
from worker.cli import webhooks as cli_webhooks
from worker.cli.common import Json, emit, err, fail, out, print_json, published, service, settings
from worker.core import keys
from worker.core.clock import rfc3339
from worker.core.durations import format_duration, parse_duration
from worker.core.errors import KeyrotorError
from worker.service import KeyView, RealmView
from worker.service.actors import acting_as
from worker.service.wire import realm_json

app = typer.Typer(
    help="keyrotor: JWT signing keys for many realms, rotated on schedule.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
realms_app = typer.Typer(help="Create, list, inspect, re-configure and delete realms.")
keys_app = typer.Typer(help="List, inspect, create and delete (or revoke) JWT keys.")
app.add_typer(realms_app, name="realms", no_args_is_help=True)
app.add_typer(keys_app, name="keys", no_args_is_help=True)

After = Annotated[str | None, typer.Option(help="Start after this id (pagination).")]
MaxResults = Annotated[int, typer.Option(help="Page size, 1-100.")]


class Direction(StrEnum):
    asc = "asc"
    desc = "desc"


class SortBy(StrEnum):
    id = "id"


Sort = Annotated[SortBy, typer.Option(help="Sort field.")]
Order = Annotated[Direction, typer.Option(help="Sort direction.")]


def when(moment: datetime | None) -> str:
    """A table cell: the timestamp as the JSON writes it, or empty."""
    return rfc3339(moment) or ""


def realm_table(rows: list[RealmView]) -> Table:
    table = Table(
        "id", "name", "algo", "rotation", "prepublish", "grace", "max ttl", "version", "next change"
    )
    for r in rows:
        policy = r.policy
        spans = (policy.rotation_period, policy.prepublish, policy.grace, policy.max_token_ttl)
        table.add_row(
            r.id,
            r.name,
            policy.algo,
            *map(format_duration, spans),
            str(r.jwks_version),
            when(r.next_rotation_at),
        )
    return table


def key_table(rows: list[KeyView]) -> Table:
    table = Table("id", "realm", "algo", "state", "created", "activated", "delete after")
    for r in rows:
        table.add_row(
            r.id,
            r.realm_id,
            r.algo,
            r.state.value,
            when(r.created_at),
            when(r.activated_at),
            when(r.delete_after),
        )
    return table


def policy_options(
    algo: str | None,
    rotation_period: str | None,
    prepublish: str | None,
    grace: str | None,
    max_token_ttl: str | None,
    rsa_bits: int | None,
) -> dict[str, Any]:
    """Only the flags given: the rest keeps its default or current value."""
    given: dict[str, Any] = {}
    if algo is not None:
        given["algo"] = algo
    if rsa_bits is not None:
        given["rsa_bits"] = rsa_bits
    spans = {
        "rotation_period": rotation_period,
        "prepublish": prepublish,
        "grace": grace,
        "max_token_ttl": max_token_ttl,
    }
    for name, text in spans.items():
        if text is not None:
            given[name] = parse_duration(text)
    return given


Algo = Annotated[str | None, typer.Option(help=f"One of {', '.join(keys.ALGOS)}.")]
RotationPeriod = Annotated[str | None, typer.Option(help="How long a key signs, e.g. 30d.")]
Prepublish = Annotated[
    str | None, typer.Option(help="How long a key is published before it signs, e.g. 1h.")
]
Grace = Annotated[str | None, typer.Option(help="How long a retired key keeps verifying, e.g. 6h.")]
MaxTokenTtl = Annotated[str | None, typer.Option(help="Longest token lifetime allowed, e.g. 1h.")]
RsaBits = Annotated[
    int | None, typer.Option(help=f"RSA key size: {', '.join(map(str, keys.RSA_BITS))}.")
]


# -- realms --------------------------------------------------------------------------------------


@realms_app.command("create")
def realms_create(
    name: str,
    algo: Algo = None,
    rotation_period: RotationPeriod = None,
    prepublish: Prepublish = None,
    grace: Grace = None,
    max_token_ttl: MaxTokenTtl = None,
    rsa_bits: RsaBits = None,
    as_json: Json = False,
) -> None:
    """Create a realm; it starts with one active key."""
    policy = policy_options(algo, rotation_period, prepublish, grace, max_token_ttl, rsa_bits)
    view = service().create_realm(name, **policy)
    published(view.id)
    emit(view, as_json, realm_table)


@realms_app.command("list")
def realms_list(
    after: After = None,
    max_results: MaxResults = 100,
    sort: Sort = SortBy.id,
    direction: Order = Direction.desc,
    as_json: Json = False,
) -> None:
    """List realms, newest id first."""
    page = service().list_realms(
        after=after, max_results=max_results, direction=direction.value, sort=sort.value
    )
    emit(page, as_json, realm_table)


@realms_app.command("get")
def realms_get(realm: str, as_json: Json = False) -> None:
    """Show a realm by id or name."""
    emit(service().get_realm(realm), as_json, realm_table)


@realms_app.command("update")
def realms_update(
    realm: str,
    algo: Algo = None,
    rotation_period: RotationPeriod = None,
    prepublish: Prepublish = None,
    grace: Grace = None,
    max_token_ttl: MaxTokenTtl = None,
    rsa_bits: RsaBits = None,
    as_json: Json = False,
) -> None:
    """Change a realm's policy; keys already made are kept."""
    policy = policy_options(algo, rotation_period, prepublish, grace, max_token_ttl, rsa_bits)
    view = service().update_realm(realm, **policy)
    published(view.id)
    emit(view, as_json, realm_table)


@realms_app.command("delete")
def realms_delete(realm: str, as_json: Json = False) -> None:
    """Delete a realm and every key in it."""
    view = service().delete_realm(realm)
    published(view.id)
    emit(view, as_json, realm_table)


# -- keys ----------------------------------------------------------------------------------------


@keys_app.command("list")
def keys_list(
    realm: Annotated[str | None, typer.Option(help="Only this realm (id or name).")] = None,
    after: After = None,
    max_results: MaxResults = 100,
    sort: Sort = SortBy.id,
    direction: Order = Direction.desc,
    as_json: Json = False,
) -> None:
    """List keys, newest id first."""
    page = service().list_keys(
        realm=realm,
        after=after,
        max_results=max_results,
        direction=direction.value,
        sort=sort.value,
    )
    emit(page, as_json, key_table)


@keys_app.command("get")
def keys_get(key_id: str, as_json: Json = False) -> None:
    """Show a key (the public key, or an HMAC key's secret)."""
    emit(service().get_key(key_id), as_json, key_table)


@keys_app.command("create")
def keys_create(
    realm: str,
    algo: Algo = None,
    key_file: Annotated[
        Path | None,
        typer.Option(
            help="Import this PEM private key (or HMAC secret) instead of generating one."
        ),
    ] = None,
    activate: Annotated[
        bool, typer.Option(help="Sign with it at once, retiring the active key.")
    ] = False,
    as_json: Json = False,
) -> None:
    """Create a key in a realm: pending (next to sign) unless --activate."""
    key_text = None
    if key_file is not None:
        try:
            key_text = key_file.read_text().strip()
        except (OSError, UnicodeDecodeError) as error:
            fail(f"cannot read {key_file}: {error.__class__.__name__}")
    created = service().create_key(realm, algo, key_text=key_text, activate=activate)
    published(created.realm_id)
    emit(created, as_json, key_table)


@keys_app.command("delete")
def keys_delete(
    key_id: str,
    force: Annotated[
        bool, typer.Option("--force", help="Revoke: remove from the JWKS now.")
    ] = False,
    as_json: Json = False,
) -> None:
    """Expire a key (it keeps verifying for the grace period), or revoke it with --force."""
    original = service().delete_key(key_id, force=force)
    published(original.realm_id)
    emit(original, as_json, key_table)


# -- realm-wide operations -----------------------------------------------------------------------


@app.command()
def run(
    demo: Annotated[
        bool, typer.Option(help="Seconds-scale policy: watch a whole rotation in two minutes.")
    ] = False,
) -> None:
    """Run the worker, beat and HTTP server (and an embedded Valkey when no Redis is set)."""
    from worker.ops.supervisor import DEMO_OVERRIDES, Child, serve, web_answers

    web = Child("web", [sys.executable, "-m", "worker.http"], ready=web_answers)
    raise SystemExit(serve(dict(DEMO_OVERRIDES) if demo else None, extra_children=[web]))


@app.command()
def migrate() -> None:
    """Create or upgrade the database schema."""
    from worker.runtime import engine
    from worker.store.db import migrate as run_migrations
    from worker.store.db import schema_revision

    db = engine(settings().database_url)
    run_migrations(db)
    out.print(f"database at revision {schema_revision(db)[0]}")


@app.command()
def rotate(
    realm: Annotated[str | None, typer.Argument(help="The realm (id or name).")] = None,
    every: Annotated[
        bool,
        typer.Option(
            "--all", help="Rotate every matching realm whose key began signing before the cut-off."
        ),
    ] = False,
    algo: Annotated[str | None, typer.Option(help="With --all: only realms of this algo.")] = None,
    realm_prefix: Annotated[
        str | None, typer.Option(help="With --all: only realms whose name starts with this.")
    ] = None,
    before: Annotated[
        str | None,
        typer.Option(
            help="With --all: the cut-off, RFC 3339 (default: now, or the unfinished rotation's)."
        ),
    ] = None,
    yes: Annotated[
        bool, typer.Option("--yes", help="With --all: rotate without asking first.")
    ] = False,
    as_json: Json = False,
) -> None:
    """Rotate a realm now: the pending key (or a new one) signs from now on. With --all, rotate
    every matching realm in batches on the workers, with progress; safe to interrupt and run
    again (it resumes, and never rotates a realm twice)."""
    if every:
        if realm is not None:
            fail("give a realm or --all, not both")
        from worker.cli.mass import rotate_all  # Celery and the progress bar: only here

        rotate_all(algo, realm_prefix, before, yes=yes, as_json=as_json)
        return
    if realm is None:
        fail("give a realm to rotate, or --all")
    if algo is not None or realm_prefix is not None or before is not None or yes:
        fail("--algo, --realm-prefix, --before and --yes go with --all")
    svc = service()
    change = svc.rotate(realm, force=True)
    view = svc.get_realm(realm)
    published(view.id)
    activated, retired = change and change.activated, change and change.retired
    if as_json:
        print_json({"realm": realm_json(view), "activated": activated, "retired": retired})
        return
    out.print(f"{view.name}: {retired} -> {activated}, next change {when(view.next_rotation_at)}")


@app.command()
def jwks(realm: str) -> None:
    """Print a realm's JWKS (public keys only)."""
    print_json(service().jwks(realm))


@app.command()
def rewrap() -> None:
    """Re-seal every key under the first master key; safe to interrupt and run again."""
    svc = service()
    with Progress(console=err, transient=False) as progress:
        task = progress.add_task("rewrapping keys", total=None)

        def step(done: int, total: int) -> None:
            progress.update(task, completed=done, total=total)

        count = svc.rewrap(progress=step)
    out.print(f"re-sealed {count} key{'' if count == 1 else 's'} under the first master key")


@app.command()
def doctor(
    as_json: Annotated[
        bool, typer.Option("--json", help='Print {"ok", "checks": [...]} for monitors.')
    ] = False,
    check: Annotated[
        list[str] | None,
        typer.Option(
            help="Run only this check (repeatable): database, redis, sealed_keys, policies,"
            " beat, overdue, outbox, jwks."
        ),
    ] = None,
) -> None:
    """Check the database, Redis, master keys, policies, beat, overdue realms, outbox and
    published JWKS; exit status 1 on any problem."""
    from worker.ops.doctor import CHECKS, examine

    unknown = sorted(set(check or ()) - set(CHECKS))
    if unknown:
        fail(f"unknown check {', '.join(unknown)}; choose from {', '.join(CHECKS)}")
    results = examine(settings(), only=check)
    healthy = all(result.ok for result in results)
    if as_json:
        print_json({"ok": healthy, "checks": [result.as_dict() for result in results]})
    else:
        width = max(len(result.name) for result in results)
        for result in results:
            mark = "ok  " if result.ok else "FAIL"
            sys.stdout.write(f"{mark}  {result.name:<{width}}  {result.detail}\n")
        problems = sum(not result.ok and not result.skipped for result in results)
        skipped = sum(result.skipped for result in results)
        summary = f"{problems} problem{'s' * (problems != 1)}"
        summary += f", {skipped} check{'s' * (skipped != 1)} not run" if skipped else ""
        sys.stdout.write("all checks passed\n" if healthy else summary + "\n")
    raise SystemExit(0 if healthy else 1)


cli_events.register(app)
cli_admin.register(app)
cli_pool.register(app)
cli_webhooks.register(app)


def cli_actor() -> str:
    """Who the events of this run are recorded as: `cli:<OS user>`, or the uid when the
    system knows no name for it (a container run under an arbitrary uid)."""
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = str(os.getuid())
    return f"cli:{user}"


def main() -> None:
    """Entry point: every refusal is one line on stderr with exit status 2; every change a
    command makes is recorded as the OS user's, here once for all commands."""
    try:
        # Not standalone: click's own usage errors (a bad flag, a missing argument) would be a
        # multi-line panel; here they become the same one line as every other refusal.
        with acting_as(cli_actor()):
            code = app(standalone_mode=False)
    except typer.TyperException as error:  # typer's (vendored) click errors: bad flags, args
        if error.__class__.__name__ == "NoArgsIsHelpError":
            raise SystemExit(error.exit_code) from None  # the help text is already printed
        ctx = getattr(error, "ctx", None)
        where = f" (see `{ctx.command_path} --help`)" if ctx is not None else ""
        fail(" ".join(error.format_message().split()) + where, error.exit_code)
    except typer.Abort:
        fail("aborted", 1)
    except KeyrotorError as error:
        fail(str(error).splitlines()[0] if str(error) else error.__class__.__name__)
    except (OperationalError, ProgrammingError) as error:
        fail(f"database error: {str(error.orig).splitlines()[0] if error.orig else error}", 1)
    raise SystemExit(code if isinstance(code, int) else 0)
