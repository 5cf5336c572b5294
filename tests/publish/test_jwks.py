"""JWKS copies against the database: reconcile republishes exactly the copies that lag, and the
bulk reads it compares with see every copy as it is (or as missing)."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from worker.publish import jwks
from worker.publish.jwks import Publisher, reconcile, redis_key
from worker.service import Service


@pytest.fixture
def publisher(redis_url: str, tmp_path: Path) -> Iterator[Publisher]:
    client = redis.Redis.from_url(redis_url)
    yield Publisher(client, tmp_path / "jwks")
    client.close()


def copies(publisher: Publisher, realm_id: str) -> tuple[int, int]:
    """(Redis copy version, file version), -1 for a missing one."""
    return publisher.published_versions([realm_id])[realm_id], publisher.file_version(realm_id)


def test_reconcile_republishes_each_copy_that_lags_page_by_page(
    service: Service, publisher: Publisher
) -> None:
    a, b, c = (service.create_realm(name).id for name in ("a", "b", "c"))
    assert reconcile(service, publisher, page=2) == 3  # never published: both copies
    assert {copies(publisher, realm) for realm in (a, b, c)} == {(1, 1)}
    assert reconcile(service, publisher, page=2) == 0

    # a's file lost while its Redis copy is current: the file alone is written again.
    shutil.rmtree(publisher.jwks_dir / a)
    publisher.redis.hset(redis_key(a), "realm_name", "left alone")
    # b's Redis copy lost while its file is current; c changed and published nowhere.
    publisher.redis.delete(redis_key(b))
    service.rotate("c", force=True)
    assert reconcile(service, publisher, page=2) == 3
    assert copies(publisher, a) == copies(publisher, b) == (1, 1)
    assert copies(publisher, c) == (2, 2)
    assert publisher.redis.hget(redis_key(a), "realm_name") == b"left alone"
    assert (publisher.jwks_dir / a / "jwks.json").read_bytes() == publisher.redis.hget(
        redis_key(a), "document"
    )
    assert reconcile(service, publisher) == 0


def test_a_realm_deleted_after_its_page_was_read_is_withdrawn(
    service: Service, publisher: Publisher, monkeypatch: pytest.MonkeyPatch
) -> None:
    gone = service.create_realm("gone").id
    assert reconcile(service, publisher) == 1
    service.delete_realm(gone)
    # The page was read just before the delete committed, and showed a newer version.
    monkeypatch.setattr(
        service, "realm_versions", lambda after, limit: [(gone, 2)] if after < gone else []
    )
    assert reconcile(service, publisher) == 1
    assert copies(publisher, gone) == (-1, -1)
    assert not (publisher.jwks_dir / gone).exists()


def test_bulk_reads_report_missing_and_unreadable_copies_as_minus_one(
    service: Service, publisher: Publisher, monkeypatch: pytest.MonkeyPatch
) -> None:
    realms = [service.create_realm(f"r{n}").id for n in range(5)]
    assert publisher.file_versions(realms) == dict.fromkeys(realms, -1)  # no JWKS folder yet
    assert not publisher.jwks_dir.exists()
    for realm in realms[:3]:
        publisher.publish(service.publication(realm))
    (publisher.jwks_dir / realms[2] / ".version").write_text("not a number")
    monkeypatch.setattr(jwks, "VERSIONS_CHUNK", 2)  # three script calls for five realms
    assert publisher.published_versions(realms) == dict(zip(realms, [1, 1, 1, -1, -1], strict=True))
    assert publisher.file_versions(realms) == dict(zip(realms, [1, 1, -1, -1, -1], strict=True))
    assert publisher.published_versions([]) == {} == publisher.file_versions([])
