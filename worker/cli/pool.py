"""`keyrotor key-pool` and `key-pool empty`: the RSA keys made ahead of need.

The pool is filled by the workers; the CLI only shows it and, after a leak of the database or
a master key (which exposes pooled keys as much as realm keys), empties it.
"""

from __future__ import annotations

from typing import Annotated

import typer
from rich.table import Table

from worker.cli.common import Json, confirm, out, print_json, service

pool_app = typer.Typer(
    help="The RSA keys made ahead of need: how many are ready, and emptying the pool.",
    invoke_without_command=True,
)


def register(app: typer.Typer) -> None:
    """Add this module's commands to the `keyrotor` app."""
    app.add_typer(pool_app, name="key-pool")


@pool_app.callback()
def show(ctx: typer.Context, as_json: Json = False) -> None:
    """How many ready keys the pool holds for each RSA algo and size."""
    if ctx.invoked_subcommand is not None:
        return
    counts = sorted(service().pool_counts().items())
    if as_json:
        print_json([{"algo": a, "rsa_bits": b, "keys": n} for (a, b), n in counts])
        return
    table = Table("algo", "rsa bits", "ready keys")
    for (algo, bits), count in counts:
        table.add_row(algo, str(bits), str(count))
    out.print(table if counts else "the key pool is empty")


@pool_app.command()
def empty(
    yes: Annotated[bool, typer.Option("--yes", help="Do not ask.")] = False,
) -> None:
    """Delete every pooled key (after a leak of the database or a master key); the workers
    fill the pool again with new keys within a minute."""
    confirm("Delete every key in the key pool?", yes=yes, without_terminal="key-pool empty")
    count = service().empty_pool()
    out.print(f"deleted {count} pooled key{'' if count == 1 else 's'}")
