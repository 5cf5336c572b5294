"""`keyrotor webhooks`: the HTTP endpoints that receive realm events, and their delivery log.

The same service calls and JSON (`--json`) as `/v1/webhooks`. A secret is printed once, when
it is made (`create`, `rotate-secret`); nothing shows it afterwards.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

import typer
from rich.table import Table

from worker.cli.common import Json, confirm, fail, out, print_json, service
from worker.core.clock import rfc3339
from worker.core.durations import format_duration
from worker.core.errors import InvalidInput
from worker.service import Page
from worker.service.webhooks import DeliveryView, WebhookView
from worker.service.wire import delivery_json, webhook_json, webhook_page_json

webhooks_app = typer.Typer(
    help="Webhooks: HTTP endpoints that receive realm events, signed as Standard Webhooks."
)

Realm = Annotated[
    str | None, typer.Option("--realm", help="Only this realm's events (id or name).")
]
Reasons = Annotated[
    list[str] | None,
    typer.Option("--reason", help="Only events with this reason (repeatable), e.g. key.rotated."),
]
After = Annotated[str | None, typer.Option(help="Start after this id (pagination).")]
MaxResults = Annotated[int, typer.Option(help="Page size, 1-100.")]
Sort = Annotated[str, typer.Option(help="Sort field: id (the only one).")]
Direction = Annotated[str, typer.Option(help="asc or desc (by id).")]
NOT_AGAIN = "The secret is shown only now: keep it where your receiver can read it."


def register(app: typer.Typer) -> None:
    """Add this module's commands to the `keyrotor` app."""
    app.add_typer(webhooks_app, name="webhooks", no_args_is_help=True)


def _when(moment: datetime | None) -> str:
    return rfc3339(moment) or ""


def _webhook_table(rows: list[WebhookView]) -> Table:
    table = Table("id", "url", "realm", "reasons", "enabled", "created")
    for r in rows:
        table.add_row(
            r.id,
            r.url,
            r.realm_id or "(every realm)",
            ", ".join(r.reasons) if r.reasons is not None else "(every reason)",
            "yes" if r.enabled else "no",
            _when(r.created_at),
        )
    return table


def _delivery_table(rows: list[DeliveryView]) -> Table:
    table = Table(
        "delivery",
        "event",
        "state",
        "attempts",
        "last status or error",
        "next attempt",
        "delivered",
    )
    for r in rows:
        last = r.last_error or (str(r.last_status) if r.last_status is not None else "")
        table.add_row(
            r.id,
            r.event_id or "",
            r.state,
            str(r.attempts),
            last,
            _when(r.next_attempt_at),
            _when(r.delivered_at),
        )
    return table


def _show(view: WebhookView, as_json: bool) -> None:
    if as_json:
        print_json(webhook_json(view))
    else:
        out.print(_webhook_table([view]))


def _sorted_by(sort: str) -> None:
    """`--sort id`, as every listing takes; webhooks and deliveries sort by id alone."""
    if sort != "id":
        raise InvalidInput("Sort must be 'id'")


def _page(page: Page[Any], as_json: bool, table: Table, none: str) -> None:
    if as_json:
        print_json(webhook_page_json(page))
        return
    out.print(table if page.collection else none)
    if page.more_results and page.collection:
        out.print(f"more results: --after {page.collection[-1].id}")


def _secret(view: WebhookView, secret: str, as_json: bool, *notes: str) -> None:
    """A webhook and its new secret: the one time it is printed."""
    if as_json:
        print_json(webhook_json(view, secret))
        return
    out.print(f"webhook {view.id}", markup=False, highlight=False)
    out.print(f"secret  {secret}", markup=False, highlight=False)
    for note in (NOT_AGAIN, *notes):
        out.print(note, markup=False, highlight=False, soft_wrap=True)


@webhooks_app.command("create")
def create(
    url: Annotated[str, typer.Argument(help="Where deliveries are POSTed (https://).")],
    realm: Realm = None,
    reason: Reasons = None,
    disabled: Annotated[
        bool, typer.Option("--disabled", help="Create it without sending anything yet.")
    ] = False,
    as_json: Json = False,
) -> None:
    """Create a webhook; prints its id and its signing secret, shown this once.

    It hears every realm and every reason, unless --realm or --reason narrow it.
    """
    view, secret = service().create_webhook(
        url, realm_id=realm, reasons=reason or None, enabled=not disabled
    )
    _secret(view, secret, as_json)


@webhooks_app.command("list")
def list_(
    after: After = None,
    max_results: MaxResults = 100,
    sort: Sort = "id",
    direction: Direction = "desc",
    as_json: Json = False,
) -> None:
    """List webhooks, newest id first (secrets are never shown)."""
    _sorted_by(sort)
    page = service().list_webhooks(after=after, max_results=max_results, direction=direction)
    _page(page, as_json, _webhook_table(page.collection), "no webhooks")


@webhooks_app.command("get")
def get(webhook_id: str, as_json: Json = False) -> None:
    """Show a webhook (without its secret)."""
    _show(service().webhook(webhook_id), as_json)


@webhooks_app.command("update")
def update(
    webhook_id: str,
    url: Annotated[str | None, typer.Option(help="Send to this URL instead.")] = None,
    realm: Realm = None,
    all_realms: Annotated[
        bool, typer.Option("--all-realms", help="Hear every realm's events.")
    ] = False,
    reason: Reasons = None,
    all_reasons: Annotated[
        bool, typer.Option("--all-reasons", help="Hear events of every reason.")
    ] = False,
    enabled: Annotated[
        bool | None,
        typer.Option(
            "--enable/--disable", help="Send again (with a fresh retry window), or stop sending."
        ),
    ] = None,
    as_json: Json = False,
) -> None:
    """Change what is given; the rest is kept."""
    if realm is not None and all_realms:
        fail("give --realm or --all-realms, not both")
    if reason and all_reasons:
        fail("give --reason or --all-reasons, not both")
    changes: dict[str, Any] = {}
    if url is not None:
        changes["url"] = url
    if realm is not None or all_realms:
        changes["realm_id"] = realm
    if reason or all_reasons:
        changes["reasons"] = reason or None
    if enabled is not None:
        changes["enabled"] = enabled
    if not changes:
        fail(
            "nothing to change: give --url, --realm/--all-realms, --reason/--all-reasons"
            " or --enable/--disable"
        )
    _show(service().update_webhook(webhook_id, changes), as_json)


@webhooks_app.command("delete")
def delete(
    webhook_id: str,
    yes: Annotated[bool, typer.Option("--yes", help="Do not ask.")] = False,
) -> None:
    """Delete a webhook and its delivery log; nothing more is sent to it."""
    svc = service()
    view = svc.webhook(webhook_id)  # an unknown id is refused before anyone is asked
    confirm(
        f"Delete webhook {view.id} ({view.url}) and its delivery log?",
        yes=yes,
        without_terminal=f"webhooks delete would delete {view.id}",
    )
    svc.delete_webhook(view.id)
    out.print(f"deleted webhook {view.id}", markup=False, highlight=False)


@webhooks_app.command("rotate-secret")
def rotate_secret(webhook_id: str, as_json: Json = False) -> None:
    """Give a webhook a new secret, shown this once.

    The old secret keeps signing beside it for KEYROTOR_WEBHOOK_SECRET_OVERLAP, so receivers
    can switch without missing a delivery.
    """
    svc = service()
    view, secret = svc.rotate_webhook_secret(webhook_id)
    overlap = format_duration(svc.webhook_policy.secret_overlap)
    _secret(
        view,
        secret,
        as_json,
        f"Both the old and the new secret sign every delivery for the next {overlap}"
        " (KEYROTOR_WEBHOOK_SECRET_OVERLAP): give your receiver the new one before then.",
    )


@webhooks_app.command("deliveries")
def deliveries(
    webhook_id: str,
    after: After = None,
    max_results: MaxResults = 100,
    sort: Sort = "id",
    direction: Direction = "desc",
    as_json: Json = False,
) -> None:
    """A webhook's delivery log, newest first: each event sent, its state and attempts."""
    _sorted_by(sort)
    page = service().list_deliveries(
        webhook_id, after=after, max_results=max_results, direction=direction
    )
    _page(page, as_json, _delivery_table(page.collection), "no deliveries")


@webhooks_app.command("retry")
def retry(webhook_id: str, delivery_id: str, as_json: Json = False) -> None:
    """Send a delivery again within seconds, failed or delivered alike.

    It is pending again, with a fresh retry window; the webhook worker sends it.
    """
    view = service().retry_delivery(webhook_id, delivery_id)
    if as_json:
        print_json(delivery_json(view))
        return
    out.print(
        f"delivery {view.id} is pending again; the webhook worker sends it within seconds",
        markup=False,
        highlight=False,
    )
