"""What every `keyrotor` command shares: output, the one-line refusal, settings and service."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from functools import cache
from typing import Annotated, Any, NoReturn, TypeVar

import typer
from rich.console import Console
from rich.table import Table

from worker.service import KeyView, Page, RealmView, Service
from worker.service.wire import page_json, view_json
from worker.settings import Settings

# Piped output keeps whole ids and timestamps rather than a terminal's 80 columns.
out = Console(width=None if sys.stdout.isatty() else 240)
err = Console(stderr=True)

Json = Annotated[bool, typer.Option("--json", help="Print JSON (AuthRocket shapes) for scripts.")]


def fail(message: str, code: int = 2) -> NoReturn:
    err.print(f"error: {message}", markup=False, highlight=False, soft_wrap=True)
    raise SystemExit(code)


def confirm(question: str, *, yes: bool, without_terminal: str) -> None:
    """Go on when `--yes` was given or a person at a terminal says yes; without a terminal,
    refuse in one line (`without_terminal`), since nobody is there to answer."""
    if yes:
        return
    if not sys.stdin.isatty():
        fail(f"{without_terminal}: confirm at a terminal, or pass --yes")
    if not typer.confirm(question, err=True):
        raise typer.Abort()


@cache
def settings() -> Settings:
    from worker.settings import load_settings

    return load_settings()


@cache
def service() -> Service:
    from worker.runtime import build_service, engine
    from worker.store.db import require_migrated

    require_migrated(engine(settings().database_url))
    return build_service(settings())


def published(realm_id: str) -> None:
    """Publish the changed realm's JWKS, then relay its events, when a Redis is known; else
    the worker's sweeps catch up."""
    from worker import runtime

    if runtime.redis_url(settings()) is not None:
        runtime.relay(settings(), service()).after_commit(realm_id)


def print_json(data: Any) -> None:
    sys.stdout.write(json.dumps(data, indent=2) + "\n")


View = TypeVar("View", RealmView, KeyView)


def emit(data: View | Page[View], as_json: bool, table: Callable[[list[View]], Table]) -> None:
    """A view or a page: AuthRocket's JSON for scripts, else a table (and where to go on)."""
    if isinstance(data, Page):
        if as_json:
            print_json(page_json(data))
            return
        out.print(table(data.collection))
        if data.more_results and data.collection:
            out.print(f"more results: --after {data.collection[-1].id}")
    elif as_json:
        print_json(view_json(data))
    else:
        out.print(table([data]))
