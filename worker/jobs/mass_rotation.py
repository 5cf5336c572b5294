"""`keyrotor.rotate_all`: the fan-out of one `rotate --all`, a `rotate_realms` batch per page.

The pages are keyset pages, in realm id order, of the realms the rotation still covers. A
cursor in Redis (`worker.publish.progress.Fanout`) says where the fan-out got to, so a run
that is interrupted, retried or delivered twice goes on from the last batch it queued, with
the same batch numbers, and the batches' reports count once. A rerun of `rotate --all` sends
it with `resend`: the batches that have not reported are sent again as they were (their
message may be lost with a killed worker until the visibility timeout, an hour), and once
every batch has reported, the realms that failed are settled and those still left queued
again: how a rerun retries its failures. Whoever started it (`actor`: the admin key or CLI
user) is passed on to every batch, so each rotation's event records them.
"""

from __future__ import annotations

import logging
import time

from worker.celery import app
from worker.core.clock import rfc3339
from worker.core.errors import NotFound
from worker.jobs.tasks import RETRY, Context, context
from worker.publish import progress
from worker.publish.progress import Fanout
from worker.service import RotationView
from worker.service.actors import SYSTEM, acting_as

log = logging.getLogger("keyrotor.mass_rotation")

# A run queues batches for this long at most, then sends itself again to go on from its
# cursor, so no run nears the task time limit however many realms there are.
SLICE_SECONDS = 60.0


# trail=False: no result handle kept per message sent (see `rotate_due` in tasks.py).
@app.task(name="keyrotor.rotate_all", trail=False, **RETRY)
def rotate_all(rotation_id: str, resend: bool = False, actor: str | None = None) -> int:
    """Queue the rotation's batches from where its fan-out stopped (with `resend`, first
    those queued before that have not reported), then mark it queued. Returns how many
    realms this run queued."""
    with acting_as(actor or SYSTEM):
        return _rotate_all(rotation_id, resend, actor)


def _rotate_all(rotation_id: str, resend: bool, actor: str | None) -> int:
    ctx = context()
    try:
        rotation = ctx.service.rotation(rotation_id)
    except NotFound:
        log.warning("rotation %s is not recorded; nothing to queue", rotation_id)
        return 0
    before = rfc3339(rotation.before)
    cursor = progress.read_fanout(ctx.publisher.redis, rotation_id)
    queued = resend_unreported(ctx, rotation_id, cursor.next_batch, before, actor) if resend else 0
    if cursor.finished:
        reported = progress.read_progress(ctx.publisher.redis, rotation_id, failed_ids=None)
        if reported.batches < cursor.next_batch:  # its batches are still on their way
            ctx.service.mark_queued(rotation_id, cursor.next_batch)
            return queued
        settle_failed(ctx, rotation, reported.failed_realm_ids)
        cursor = Fanout(cursor.next_batch)  # a new pass, over the realms still left
    deadline = time.monotonic() + SLICE_SECONDS
    while ids := ctx.service.matching_realm_ids(rotation, cursor.after, ctx.settings.rotate_batch):
        progress.save_batch(ctx.publisher.redis, rotation_id, cursor.next_batch, ids)
        send_batch(rotation_id, cursor.next_batch, ids, before, actor)
        cursor = Fanout(cursor.next_batch + 1, ids[-1])
        progress.save_fanout(ctx.publisher.redis, rotation_id, cursor)
        queued += len(ids)
        if time.monotonic() > deadline:
            app.send_task("keyrotor.rotate_all", args=[rotation_id], kwargs={"actor": actor})
            return queued
    progress.save_fanout(ctx.publisher.redis, rotation_id, Fanout(cursor.next_batch, finished=True))
    ctx.service.mark_queued(rotation_id, cursor.next_batch)
    log.info(
        "rotation %s: %d batches queued, cut-off %s",
        rotation_id,
        cursor.next_batch,
        before,
        extra={"rotation_id": rotation_id, "batches": cursor.next_batch},
    )
    return queued


def send_batch(
    rotation_id: str, batch: int, realm_ids: list[str], before: str | None, actor: str | None
) -> None:
    app.send_task(
        "keyrotor.rotate_realms",
        args=[realm_ids],
        kwargs={"before": before, "rotation_id": rotation_id, "batch": batch, "actor": actor},
    )


def resend_unreported(
    ctx: Context, rotation_id: str, queued: int, before: str | None, actor: str | None
) -> int:
    """Send again, as they were, the batches numbered below `queued` that have not reported;
    a copy still on its way finds its realms rotated, and only one report counts."""
    reported = progress.reported_batches(ctx.publisher.redis, rotation_id)
    missing = [batch for batch in range(queued) if batch not in reported]
    kept = progress.batch_realms(ctx.publisher.redis, rotation_id, missing)
    for batch, realm_ids in kept.items():
        send_batch(rotation_id, batch, realm_ids, before, actor)
    if kept:
        log.info("rotation %s: %d unreported batches sent again", rotation_id, len(kept))
    return sum(map(len, kept.values()))


def settle_failed(ctx: Context, rotation: RotationView, failed: list[str]) -> None:
    """Realms that failed and are done now count as rotated (or skipped, when gone); the
    rest stay failed and go into the new pass."""
    if not failed:
        return
    left, gone = ctx.service.still_left(rotation, failed)
    rotated = sorted(set(failed) - set(left) - set(gone))
    progress.settle(ctx.publisher.redis, rotation.id, rotated, gone)
