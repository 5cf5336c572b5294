"""JWKS publication: a Redis copy and a file per realm, both following the database.

Publishing happens after the change has committed, so a Redis or disk failure never undoes
it; the reconcile task compares what is published with `jwks_version` and catches up. A copy
is only ever replaced by a newer version, so two publishers racing cannot go backwards.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import redis

from worker.core.clock import rfc3339
from worker.core.errors import NotFound
from worker.service import Publication, Service

log = logging.getLogger("keyrotor.jwks")

# Replace the hash only when ARGV[1] (jwks_version) is newer than the stored one.
_SET_IF_NEWER = """
local current = tonumber(redis.call('HGET', KEYS[1], 'jwks_version') or '-1')
if current >= tonumber(ARGV[1]) then return 0 end
redis.call('DEL', KEYS[1])
redis.call('HSET', KEYS[1], 'jwks_version', ARGV[1], 'document', ARGV[2], 'etag', ARGV[3],
           'next_change_at', ARGV[4], 'realm_name', ARGV[5])
return 1
"""


def redis_key(realm_id: str) -> str:
    return f"keyrotor:jwks:{realm_id}"


def body(jwks: dict[str, Any]) -> bytes:
    """The exact bytes served: compact and key-sorted, so equal sets give equal ETags."""
    return json.dumps(jwks, separators=(",", ":"), sort_keys=True).encode()


def etag(document: bytes) -> str:
    return '"' + hashlib.sha256(document).hexdigest()[:32] + '"'


class Publisher:
    """Writes a realm's publication to Redis and to `<jwks_dir>/<realm_id>/jwks.json`."""

    def __init__(self, client: redis.Redis, jwks_dir: Path) -> None:
        self.redis = client
        self.jwks_dir = jwks_dir
        self._set_if_newer = client.register_script(_SET_IF_NEWER)

    def publish(self, publication: Publication) -> None:
        """Publish both copies; the file first, so a Redis copy never claims a file not written."""
        document = body(publication.jwks)
        self.write_file(publication.realm_id, publication.jwks_version, document)
        self._set_if_newer(
            keys=[redis_key(publication.realm_id)],
            args=[
                publication.jwks_version,
                document,
                etag(document),
                rfc3339(publication.next_change_at) or "",
                publication.realm_name,
            ],
        )

    def unpublish(self, realm_id: str) -> None:
        self.redis.delete(redis_key(realm_id))
        folder = self.jwks_dir / realm_id
        for name in ("jwks.json", ".version", ".lock"):
            with contextlib.suppress(FileNotFoundError):
                (folder / name).unlink()
        with contextlib.suppress(OSError):
            folder.rmdir()

    def published_versions(self, realm_ids: Iterable[str]) -> dict[str, int]:
        """The jwks_version of each realm's Redis copy (-1 when missing), in one round trip."""
        ids = list(realm_ids)
        pipe = self.redis.pipeline(transaction=False)
        for realm_id in ids:
            pipe.hget(redis_key(realm_id), "jwks_version")
        return {
            realm_id: int(v) if v else -1 for realm_id, v in zip(ids, pipe.execute(), strict=True)
        }

    def file_version(self, realm_id: str) -> int:
        try:
            return int((self.jwks_dir / realm_id / ".version").read_text())
        except (FileNotFoundError, ValueError):
            return -1

    def write_file(self, realm_id: str, version: int, document: bytes) -> bool:
        """Atomically replace jwks.json unless a newer one is there, then `.version`.

        jwks.json is durable before `.version` is even renamed (fsync of the file, rename,
        fsync of the folder), so `.version` never claims a file a crash could lose. `.version`
        itself is only renamed into place: after a crash it may lag or be unreadable, and
        reconcile then writes the realm again, which is harmless (and saves a millisecond of
        fsync on every publication).
        """
        folder = self.jwks_dir / realm_id
        folder.mkdir(parents=True, exist_ok=True)
        with open(folder / ".lock", "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            if self.file_version(realm_id) >= version:
                return False
            _replace(folder / "jwks.json", document, durable=True)
            _replace(folder / ".version", str(version).encode(), durable=False)
            return True


def _replace(path: Path, data: bytes, *, durable: bool) -> None:
    """Write a temporary file and rename it over `path`: readers see the old or the new, never
    a part. `durable` also survives a crash (fsync of the file, then of its folder)."""
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(temporary, "wb") as handle:
        handle.write(data)
        if durable:
            handle.flush()
            os.fsync(handle.fileno())
    os.replace(temporary, path)
    if durable:
        directory = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(directory)
        finally:
            os.close(directory)


def publish_realm(service: Service, publisher: Publisher, realm_id: str) -> bool:
    """Publish a realm after a commit (or withdraw a deleted one); a failure is only logged,
    since the database already holds the truth and `reconcile_jwks` catches up."""
    try:
        try:
            publisher.publish(service.publication(realm_id))
        except NotFound:
            publisher.unpublish(realm_id)
        return True
    except (redis.RedisError, OSError) as error:
        log.warning("JWKS of %s not published (%s); reconcile will retry", realm_id, error)
        return False
