"""JWKS publication: a Redis copy and a file per realm, both following the database.

Publishing happens after the change has committed, so a Redis or disk failure never undoes
it; the reconcile task compares what is published with `jwks_version` and catches up. A copy
is only ever replaced by a newer version, so two publishers racing cannot go backwards.
"""

from __future__ import annotations

import contextlib
import ctypes
import fcntl
import hashlib
import json
import logging
import os
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

import redis

from worker.core.clock import rfc3339
from worker.core.errors import NotFound
from worker.service import Publication, Service

log = logging.getLogger("keyrotor.jwks")
_LIBC = ctypes.CDLL(None, use_errno=True)

T = TypeVar("T")
R = TypeVar("R", bound=tuple[Any, ...])

# Replace the hash only when ARGV[1] (jwks_version) is newer than the stored one.
_SET_IF_NEWER = """
local current = tonumber(redis.call('HGET', KEYS[1], 'jwks_version') or '-1')
if current >= tonumber(ARGV[1]) then return 0 end
redis.call('DEL', KEYS[1])
redis.call('HSET', KEYS[1], 'jwks_version', ARGV[1], 'document', ARGV[2], 'etag', ARGV[3],
           'next_change_at', ARGV[4], 'realm_name', ARGV[5])
return 1
"""

# The jwks_version of each hash in KEYS ('-1' when missing), joined by commas: one reply to
# parse for a whole page instead of one per realm (redis-py packs and parses each pipelined
# command in Python, ~10 µs a realm; bench/README.md: scale).
_VERSIONS = """
local found = {}
for i, key in ipairs(KEYS) do found[i] = redis.call('HGET', key, 'jwks_version') or '-1' end
return table.concat(found, ',')
"""
# Realms per `_VERSIONS` call: ~2.5 ms of Redis time (1.3 µs a realm on the bench machine), so
# a JWKS read never waits longer than that behind a sweep.
VERSIONS_CHUNK = 2000
# Realms compared per database page by `reconcile`: large pages, since each page costs a query
# and a Redis round trip, and a page of ids is all that is held.
RECONCILE_PAGE = 10_000
# Lagging realms read back and republished together: two queries and one Redis round trip.
REPUBLISH_BATCH = 500
# Realm files a batch publication holds locked and open at once (each `.lock` is a descriptor).
FILES_AT_ONCE = 250


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
        self._versions = client.register_script(_VERSIONS)

    def publish(
        self,
        publication: Publication,
        *,
        file: bool = True,
        cache: bool = True,
        pipe: redis.client.Pipeline | None = None,
    ) -> None:
        """Publish both copies (or only the one that lags: `file`, `cache` for Redis); the file
        first, so a Redis copy never claims a file not written. With `pipe`, the Redis copy is
        only queued there: the caller sends it after the file."""
        document = body(publication.jwks)
        if file:
            self.write_file(publication.realm_id, publication.jwks_version, document)
        if cache:
            self._cache(publication, document, pipe)

    def publish_many(self, publications: Sequence[Publication]) -> None:
        """Publish many realms (a rotation batch): every file written and made durable in one
        pass (`write_files`), then every Redis copy in one round trip."""
        documents = [body(publication.jwks) for publication in publications]
        self.write_files(
            [
                (p.realm_id, p.jwks_version, doc)
                for p, doc in zip(publications, documents, strict=True)
            ]
        )
        pipe = self.redis.pipeline(transaction=False)
        for publication, document in zip(publications, documents, strict=True):
            self._cache(publication, document, pipe)
        pipe.execute()

    def _cache(
        self, publication: Publication, document: bytes, pipe: redis.client.Pipeline | None
    ) -> None:
        self._set_if_newer(
            client=pipe,
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
        """The jwks_version of each realm's Redis copy (-1 when missing), one script call per
        VERSIONS_CHUNK realms."""
        ids = list(realm_ids)
        found: dict[str, int] = {}
        for start in range(0, len(ids), VERSIONS_CHUNK):
            chunk = ids[start : start + VERSIONS_CHUNK]
            reply = self._versions(keys=[redis_key(realm_id) for realm_id in chunk])
            versions = (reply if isinstance(reply, bytes) else reply.encode()).split(b",")
            found.update(zip(chunk, map(int, versions), strict=True))
        return found

    def file_version(self, realm_id: str) -> int:
        """The version of the realm's file (-1 when missing or unreadable)."""
        return _read_version(f"{self.jwks_dir}/{realm_id}/.version")

    def file_versions(self, realm_ids: Iterable[str]) -> dict[str, int]:
        """`file_version` of many realms: with no JWKS folder at all, every file is missing
        without a look per realm; otherwise one open and read per realm, relative to the
        folder (pathlib's own work was three quarters of the cost: bench/README.md, scale)."""
        ids = list(realm_ids)
        try:
            folder = os.open(self.jwks_dir, os.O_RDONLY | os.O_DIRECTORY)
        except (FileNotFoundError, NotADirectoryError):
            return dict.fromkeys(ids, -1)
        try:
            return {realm_id: _read_version(realm_id + "/.version", folder) for realm_id in ids}
        finally:
            os.close(folder)

    def write_file(self, realm_id: str, version: int, document: bytes) -> bool:
        """Atomically replace jwks.json unless a newer one is there, then `.version`.

        jwks.json is durable before `.version` is even written (fsync of the file, rename,
        fsync of the folder), so `.version` never claims a file a crash could lose. `.version`
        itself is only overwritten in place, not synced: after a crash it may lag or be
        unreadable, and reconcile then writes the realm again, which is harmless (and saves a
        millisecond of fsync, and a file created and renamed, on every publication).
        """
        folder = self.jwks_dir / realm_id
        folder.mkdir(parents=True, exist_ok=True)
        with open(folder / ".lock", "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            if self.file_version(realm_id) >= version:
                return False
            _replace(folder / "jwks.json", document, durable=True)
            _write_version(folder, version)
            return True

    def write_files(self, documents: Sequence[tuple[str, int, bytes]]) -> int:
        """`write_file` for many realms, (realm id, version, document) each, with one
        filesystem sync for the data and one for the renames of up to FILES_AT_ONCE files,
        instead of two fsyncs per file. Each jwks.json is still replaced by a rename, so a
        reader or a crash sees the old file or the new one, never a torn one. Returns how many
        were written."""
        ordered = sorted(documents, key=lambda d: d[0])  # locks in id order: no deadlock
        return sum(
            self._write_some(ordered[start : start + FILES_AT_ONCE])
            for start in range(0, len(ordered), FILES_AT_ONCE)
        )

    def _write_some(self, documents: Sequence[tuple[str, int, bytes]]) -> int:
        with contextlib.ExitStack() as held:
            writing = []
            for realm_id, version, document in documents:
                folder = self.jwks_dir / realm_id
                folder.mkdir(parents=True, exist_ok=True)
                lock = held.enter_context(open(folder / ".lock", "a"))
                fcntl.flock(lock, fcntl.LOCK_EX)
                if self.file_version(realm_id) >= version:
                    continue
                temporary = _temporary(folder / "jwks.json")
                temporary.write_bytes(document)
                writing.append((folder, version, temporary))
            if not writing:
                return 0
            _sync_filesystem(self.jwks_dir)
            for folder, _, temporary in writing:
                os.replace(temporary, folder / "jwks.json")
            _sync_filesystem(self.jwks_dir)
            for folder, version, _ in writing:
                _write_version(folder, version)
            return len(writing)


def _write_version(folder: Path, version: int) -> None:
    """Overwrite `.version` in place, at a fixed width (so no longer old number shows
    through): an eighth of the cost of a new file renamed over it. Only the holder of the
    realm's lock writes it, after jwks.json is in place; a reader racing the write may see a
    mix of the two numbers, which at worst costs one more publication."""
    handle = os.open(folder / ".version", os.O_WRONLY | os.O_CREAT, 0o644)
    try:
        os.pwrite(handle, f"{version:020d}\n".encode(), 0)
    finally:
        os.close(handle)


def _read_version(path: str, folder: int | None = None) -> int:
    """A `.version` file's number, -1 when it is missing or not a number (a crash mid-rename
    leaves it lagging at worst: the realm is then written again)."""
    try:
        handle = os.open(path, os.O_RDONLY, dir_fd=folder)
    except (FileNotFoundError, NotADirectoryError):
        return -1
    try:
        return int(os.read(handle, 32))
    except ValueError:
        return -1
    finally:
        os.close(handle)


def _replace(path: Path, data: bytes, *, durable: bool) -> None:
    """Write a temporary file and rename it over `path`: readers see the old or the new, never
    a part. `durable` also survives a crash (fsync of the file, then of its folder)."""
    temporary = _temporary(path)
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


def _temporary(path: Path) -> Path:
    return path.with_name(f".{path.name}.{os.getpid()}.tmp")


def _sync_filesystem(folder: Path) -> None:
    """Flush the filesystem holding `folder` to disk: Linux's syncfs, else a whole sync."""
    syncfs = getattr(_LIBC, "syncfs", None)
    handle = os.open(folder, os.O_RDONLY)
    try:
        if syncfs is None or syncfs(handle) != 0:
            os.sync()
    finally:
        os.close(handle)


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


def compared_pages(
    fetch: Callable[[str], Sequence[R]], publisher: Publisher, *, files: bool = True
) -> Iterator[tuple[Sequence[R], dict[str, int], dict[str, int]]]:
    """Every page of realm rows (the id first) that `fetch(after)` returns, walking ids as a
    keyset, with the versions of each realm's Redis copy and file (none looked up without
    `files`). The next page and its Redis versions are read in a thread while the caller reads
    this page's files and acts on it: the waits on the database and Redis then overlap the
    file reads (a quarter less time at 100,000 realms; bench/README.md, scale)."""

    def pages() -> Iterator[tuple[Sequence[R], dict[str, int]]]:
        after = ""
        while page := fetch(after):
            yield page, publisher.published_versions([row[0] for row in page])
            after = page[-1][0]

    for page, in_redis in _ahead(pages()):
        on_disk = publisher.file_versions([row[0] for row in page]) if files else {}
        yield page, in_redis, on_disk


def _ahead(items: Iterator[T]) -> Iterator[T]:
    """`items`, each next one taken in a thread while the caller works on the current one."""
    with ThreadPoolExecutor(1, thread_name_prefix="keyrotor-ahead") as thread:
        coming = thread.submit(next, items, None)
        while (item := coming.result()) is not None:
            coming = thread.submit(next, items, None)
            yield item


def reconcile(service: Service, publisher: Publisher, *, page: int = RECONCILE_PAGE) -> int:
    """Republish every realm whose Redis copy or file lags the database (only the copy that
    lags); returns how many did. A keyset page of realms at a time is compared with one Redis
    read and one look per file, and the realms lagging in it are read back and republished
    together, so a start-up over 1,000,000 realms takes seconds when they are current.

    Redis and disk errors are raised, not logged: the caller (a task) retries the whole sweep.
    """

    def fetch(after: str) -> list[tuple[str, int]]:
        return service.realm_versions(after=after, limit=page)

    lagging = 0
    for rows, in_redis, on_disk in compared_pages(fetch, publisher):
        behind = [
            (realm_id, on_disk[realm_id] < version, in_redis[realm_id] < version)
            for realm_id, version in rows
            if in_redis[realm_id] < version or on_disk[realm_id] < version
        ]
        for start in range(0, len(behind), REPUBLISH_BATCH):
            _republish(service, publisher, behind[start : start + REPUBLISH_BATCH])
        lagging += len(behind)
    return lagging


def _republish(
    service: Service, publisher: Publisher, behind: Sequence[tuple[str, bool, bool]]
) -> None:
    """Republish realms that lag, each (realm id, file lags, Redis copy lags): their
    publications read in two queries, every file written, then the Redis copies in one round
    trip. A realm deleted since its page was read is withdrawn."""
    found = {p.realm_id: p for p in service.publications([realm_id for realm_id, _, _ in behind])}
    pipe = publisher.redis.pipeline(transaction=False)
    for realm_id, file, cache in behind:
        publication = found.get(realm_id)
        if publication is None:
            publisher.unpublish(realm_id)
        else:
            publisher.publish(publication, file=file, cache=cache, pipe=pipe)
    pipe.execute()
