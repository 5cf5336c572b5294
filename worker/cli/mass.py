"""`keyrotor rotate --all`: start (or resume) an emergency rotation and follow it to the end.

The workers do the rotating (`keyrotor.rotate_all` queues the batches); this command records
the rotation, sends the fan-out, and shows the batches' progress until every one has reported
and the outbox has relayed the last event. Interrupted, the rotation goes on in the workers;
the same command again follows it (or retries its failures) instead of starting over.
"""

from __future__ import annotations

import time
from datetime import datetime

import redis
from kombu.exceptions import OperationalError as BrokerError
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    Task,
    TaskProgressColumn,
    TextColumn,
    TimeRemainingColumn,
)
from rich.text import Text

from worker import runtime
from worker.cli.common import confirm, err, fail, out, print_json, service, settings
from worker.core.clock import parse_rfc3339, rfc3339, utcnow
from worker.publish.progress import read_progress
from worker.service import RotationProgress, RotationView, Service
from worker.service.actors import current_actor
from worker.service.wire import rotation_json
from worker.store import outbox

POLL_SECONDS = 0.5
PING_SECONDS = 1.0


class RateColumn(ProgressColumn):
    """Realms a second, as rich estimates it from the last 30 s."""

    def render(self, task: Task) -> Text:
        speed = task.finished_speed or task.speed
        return Text(f"{speed:,.0f}/s" if speed else "-/s", style="progress.data.speed")


def rotate_all(
    algo: str | None, realm_prefix: str | None, before: str | None, *, yes: bool, as_json: bool
) -> None:
    """Rotate every matching realm whose key began signing before the cut-off (default: the
    start of this command, or the cut-off of the unfinished rotation with these filters)."""
    try:
        _rotate_all(algo, realm_prefix, before, yes=yes, as_json=as_json)
    except (redis.RedisError, BrokerError) as error:
        why = str(error).splitlines()[0] if str(error) else error.__class__.__name__
        fail(f"Redis does not answer: {why}", 1)


def _rotate_all(
    algo: str | None, realm_prefix: str | None, before: str | None, *, yes: bool, as_json: bool
) -> None:
    started = utcnow()
    cutoff = parse_rfc3339(before) if before is not None else None
    svc = service()
    client = runtime.redis_client(runtime.require_redis_url(settings()))
    client.ping()  # Redis away: refused before anything is recorded
    resumed = None
    if cutoff is None:
        resumed = svc.resume_rotation(algo, realm_prefix, lambda rid: read_progress(client, rid))
    if resumed is not None:
        left = svc.count_matching(resumed.algo, resumed.realm_prefix, resumed.before)
        err.print(
            f"resuming {resumed.id} (cut-off {rfc3339(resumed.before)}):"
            f" {left} of {resumed.total} realms left",
            markup=False,
            highlight=False,
            soft_wrap=True,
        )
        _confirm(left, resumed.before, yes)
        svc.mark_queued(resumed.id, None)  # until the fan-out has queued it again
        view = resumed
    else:
        cutoff = cutoff or started
        _confirm(svc.count_matching(algo, realm_prefix, cutoff), cutoff, yes)
        view = svc.start_rotation(algo, realm_prefix, cutoff)
    try:
        _queue(svc, view, resume=resumed is not None)
        view = _follow(svc, client, view)
    except KeyboardInterrupt:  # typer would exit 130 without a word
        fail(
            f"interrupted; run the same command to resume {view.id} and follow it"
            " (the batches queued go on in the workers)",
            130,
        )
    reported = read_progress(client, view.id, failed_ids=None)
    _summary(view, reported, as_json)
    if reported.failed:
        raise SystemExit(1)


def _confirm(count: int, cutoff: datetime, yes: bool) -> None:
    """Nothing to rotate needs no yes; otherwise a person says so, or `--yes` does."""
    if count == 0:
        return
    what = f"{count} realm{'s' * (count != 1)}"
    confirm(
        f"Rotate {what} whose key began signing before {rfc3339(cutoff)}?",
        yes=yes,
        without_terminal=f"rotate --all would rotate {what}",
    )


def _queue(svc: Service, view: RotationView, *, resume: bool) -> None:
    """Send the fan-out (resuming: sending again the batches that have not reported); a new
    rotation that covers nothing is done at once."""
    if not resume and view.total == 0:
        svc.mark_queued(view.id, 0)
        return
    tasks = runtime.task_sender(settings())
    # The batches' events record this command's user (`cli:<user>`), not the workers.
    kwargs = {"resend": resume, "actor": current_actor()}
    tasks.send_task("keyrotor.rotate_all", args=[view.id], kwargs=kwargs)
    if not tasks.control.ping(timeout=PING_SECONDS):
        err.print("warning: no worker answers; the batches wait until one starts")


def _follow(svc: Service, client: redis.Redis, view: RotationView) -> RotationView:
    """Poll until every batch has reported and the outbox is empty, with a progress bar."""
    columns = (
        TextColumn("[progress.description]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TaskProgressColumn(),
        RateColumn(),
        TimeRemainingColumn(),
    )
    with Progress(*columns, console=err, transient=False) as bar:
        task = bar.add_task(f"rotating realms ({view.id})", total=view.total)
        relay = runtime.relay(settings(), svc, client)
        while True:
            view = svc.rotation(view.id)
            reported = read_progress(client, view.id)
            bar.update(task, completed=reported.done)
            if view.state(reported) == "done":
                # Each batch relays its own events; what waits on another's JWKS, or on beat's
                # sweep, is sent from here, so the command ends when the outbox is empty.
                relay.relay_all()
                if outbox.count_unpublished(svc.sessions) == 0:
                    return view
            time.sleep(POLL_SECONDS)


def _summary(view: RotationView, reported: RotationProgress, as_json: bool) -> None:
    if as_json:
        print_json(rotation_json(view, reported))
        return
    line = (
        f"{view.id}: rotated {reported.rotated}, skipped {reported.skipped},"
        f" failed {reported.failed} of {view.total} realms (cut-off {rfc3339(view.before)})"
    )
    if reported.done < view.total:  # they left the set before their batch was read
        line += (
            f"; {view.total - reported.done} rotated or deleted by other means before their turn"
        )
    out.print(line, markup=False, highlight=False, soft_wrap=True)
    for realm_id in reported.failed_realm_ids:
        out.print(f"failed: {realm_id}", markup=False, highlight=False)
