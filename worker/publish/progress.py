"""How far each `rotate --all` has got, in Redis: what its batches report, and where its
fan-out stopped.

Each batch task reports once it has committed, published and relayed (`record_batch`); a batch
that is delivered twice reports twice, and only the first report counts. The fan-out keeps a
cursor (`Fanout`), so one that is interrupted, or sent again, goes on from the last batch it
queued with the same batch numbers, and it keeps each batch's realm ids until the batch
reports, so a rerun can send a lost batch again as it was. Every key lapses `PROGRESS_TTL`
after its last write; the record itself stays in the database.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import timedelta

import redis

from worker.service.views import RotationProgress

PROGRESS_TTL = timedelta(days=3)
# Failed realm ids read for a progress report (all of them: `failed_ids=None`).
MAX_FAILED_IDS = 1000

# KEYS: the set of batches reported, the counts hash, the set of failed realm ids, the batch's
# realm ids. ARGV: the batch ('' when settling), the TTL in seconds, how many rotated and how
# many skipped ids follow, then the rotated, skipped and failed ids. A batch counts once (SADD
# is the guard); a realm that failed before and is done now leaves the failed set. Settling
# counts only realms that leave it, so settling twice changes nothing the second time.
_RECORD = """
local batch, ttl = ARGV[1], tonumber(ARGV[2])
local last_rotated = 4 + tonumber(ARGV[3])
local last_done = last_rotated + tonumber(ARGV[4])
if batch ~= '' then
  if redis.call('SADD', KEYS[1], batch) == 0 then return 0 end
  redis.call('DEL', KEYS[4])
end
local rotated, skipped = 0, 0
for i = 5, last_done do
  local was_failed = redis.call('SREM', KEYS[3], ARGV[i])
  if batch ~= '' or was_failed == 1 then
    if i <= last_rotated then rotated = rotated + 1 else skipped = skipped + 1 end
  end
end
for i = last_done + 1, #ARGV do redis.call('SADD', KEYS[3], ARGV[i]) end
redis.call('HINCRBY', KEYS[2], 'rotated', rotated)
redis.call('HINCRBY', KEYS[2], 'skipped', skipped)
for i = 1, 3 do redis.call('EXPIRE', KEYS[i], ttl) end
return 1
"""


def _key(rotation_id: str, part: str) -> str:
    return f"keyrotor:rotation:{rotation_id}:{part}"


def _record_keys(rotation_id: str) -> list[str]:
    return [_key(rotation_id, part) for part in ("batches", "counts", "failed")]


def record_batch(
    client: redis.Redis,
    rotation_id: str,
    batch: int,
    rotated: list[str],
    skipped: list[str],
    failed: list[str],
) -> None:
    """Count one batch's outcome, once whatever the number of reports. `rotated` includes
    realms rotated since the cut-off by anything else; `skipped`, realms gone or without an
    active key."""
    _run(client, rotation_id, str(batch), rotated, skipped, failed)


def settle(
    client: redis.Redis, rotation_id: str, rotated: Sequence[str], skipped: Sequence[str]
) -> None:
    """Move realms that failed in an earlier batch, and are done now (rotated since by a
    retry or the schedule, or gone), from `failed` to their outcome."""
    _run(client, rotation_id, "", rotated, skipped, [])


def _run(
    client: redis.Redis,
    rotation_id: str,
    batch: str,
    rotated: Sequence[str],
    skipped: Sequence[str],
    failed: Sequence[str],
) -> None:
    ttl = int(PROGRESS_TTL.total_seconds())
    args: list[str | int] = [batch, ttl, len(rotated), len(skipped), *rotated, *skipped, *failed]
    keys = [*_record_keys(rotation_id), _key(rotation_id, f"batch:{batch}")]
    client.register_script(_RECORD)(keys=keys, args=args)


def read_progress(
    client: redis.Redis, rotation_id: str, *, failed_ids: int | None = MAX_FAILED_IDS
) -> RotationProgress:
    """Batches reported and realms by outcome; at most `failed_ids` of the failed realm ids
    (any of them, sorted), or all with None."""
    batches, counts, failed = _record_keys(rotation_id)
    pipe = client.pipeline(transaction=False)
    pipe.scard(batches)
    pipe.hmget(counts, ["rotated", "skipped"])
    pipe.scard(failed)
    if failed_ids is None:
        pipe.smembers(failed)
    else:
        pipe.srandmember(failed, failed_ids)
    done, (rotated, skipped), failed_count, members = pipe.execute()
    return RotationProgress(
        batches=int(done),
        rotated=int(rotated or 0),
        skipped=int(skipped or 0),
        failed=int(failed_count),
        failed_realm_ids=sorted(member.decode() for member in members or ()),
    )


def reported_batches(client: redis.Redis, rotation_id: str) -> set[int]:
    members: set[bytes] = client.smembers(_key(rotation_id, "batches"))  # type: ignore[assignment]
    return {int(member) for member in members}


def save_batch(client: redis.Redis, rotation_id: str, batch: int, realm_ids: list[str]) -> None:
    """Keep a batch's realm ids until it reports (`record_batch` drops them)."""
    client.set(_key(rotation_id, f"batch:{batch}"), ",".join(realm_ids), ex=PROGRESS_TTL)


def batch_realms(client: redis.Redis, rotation_id: str, batches: list[int]) -> dict[int, list[str]]:
    """The realm ids of those `batches` still kept (not reported, not lapsed)."""
    pipe = client.pipeline(transaction=False)
    for batch in batches:
        pipe.get(_key(rotation_id, f"batch:{batch}"))
    found = zip(batches, pipe.execute(), strict=True)
    return {batch: kept.decode().split(",") for batch, kept in found if kept}


@dataclass(frozen=True)
class Fanout:
    """Where a rotation's fan-out got to: the next batch number, the last realm id queued,
    and whether it has queued every batch of its pass."""

    next_batch: int = 0
    after: str = ""
    finished: bool = False


def read_fanout(client: redis.Redis, rotation_id: str) -> Fanout:
    """The cursor; from the start when none was saved (or it lapsed)."""
    found: dict[bytes, bytes] = client.hgetall(_key(rotation_id, "fanout"))  # type: ignore[assignment]
    if not found:
        return Fanout()
    return Fanout(
        next_batch=int(found.get(b"next_batch", b"0")),
        after=found.get(b"after", b"").decode(),
        finished=found.get(b"finished") == b"1",
    )


def save_fanout(client: redis.Redis, rotation_id: str, fanout: Fanout) -> None:
    key = _key(rotation_id, "fanout")
    pipe = client.pipeline(transaction=True)
    pipe.hset(
        key,
        mapping={
            "next_batch": fanout.next_batch,
            "after": fanout.after,
            "finished": int(fanout.finished),
        },
    )
    pipe.expire(key, PROGRESS_TTL)
    pipe.execute()
