"""What every `keyrotor` command shares: output, the one-line refusal, settings and service."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from functools import cache
from typing import Annotated, Any, NoReturn

import typer
from rich.console import Console
from rich.table import Table

from worker.service import Page, Service
from worker.settings import Settings

# Piped output keeps whole ids and timestamps rather than a terminal's 80 columns.
out = Console(width=None if sys.stdout.isatty() else 240)
err = Console(stderr=True)

Json = Annotated[bool, typer.Option("--json", help="Print JSON (AuthRocket shapes) for scripts.")]


def fail(message: str, code: int = 2) -> NoReturn:
    err.print(f"error: {message}", markup=False, highlight=False, soft_wrap=True)
    raise SystemExit(code)


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


def published(view: dict[str, Any]) -> dict[str, Any]:
    """Publish the changed realm's JWKS, then relay its events, when a Redis is known; else
    the worker's sweeps catch up."""
    from worker import runtime

    if runtime.redis_url(settings()) is not None:
        runtime.relay(settings(), service()).after_commit(view.get("realm_id", view["id"]))
    return view


def print_json(data: Any) -> None:
    sys.stdout.write(json.dumps(data, indent=2) + "\n")


def emit(
    data: dict[str, Any] | Page, as_json: bool, table: Callable[[list[dict[str, Any]]], Table]
) -> None:
    if as_json:
        print_json(data.as_dict() if isinstance(data, Page) else data)
        return
    rows = data.collection if isinstance(data, Page) else [data]
    out.print(table(rows))
    if isinstance(data, Page) and data.more_results and rows:
        out.print(f"more results: --after {rows[-1]['id']}")
