"""`rotate --all` records: which realms a rotation covers (filters, cut-off), the keyset pages
the fan-out walks, `total`, the refusals, and when a rerun resumes a record."""

from __future__ import annotations

import re
from datetime import timedelta

import pytest
from sqlalchemy import Engine, text

from tests.conftest import FakeClock
from worker.core.errors import InvalidInput, NotFound
from worker.service import RotationProgress, RotationView, Service


def realm_ids(service: Service, *names: str) -> list[str]:
    return sorted(service.get_realm(name).id for name in names)


def every_page(service: Service, rotation: RotationView, size: int) -> list[list[str]]:
    pages, after = [], ""
    while page := service.matching_realm_ids(rotation, after, size):
        pages.append(page)
        after = page[-1]
    return pages


def walk(service: Service, rotation: RotationView, size: int = 100) -> list[str]:
    """Every realm id the fan-out would queue, in order."""
    return [realm_id for page in every_page(service, rotation, size) for realm_id in page]


def no_progress(_: str) -> RotationProgress:
    return RotationProgress()


def test_a_rotation_covers_matching_realms_whose_key_began_signing_before_the_cut_off(
    service: Service, clock: FakeClock
) -> None:
    for name in ("a1", "a_2", "A3", "ab", "b1"):
        service.create_realm(name, algo="es256")
    service.create_realm("a-hmac", algo="hs256")
    clock.advance(minutes=5)
    service.rotate("ab", force=True)  # its key now began signing at the cut-off: not covered
    cutoff = clock.now
    clock.advance(minutes=5)
    service.create_realm("a-late", algo="es256")  # created after the cut-off
    service.rotate("b1", force=True)  # rotated after the cut-off, for whatever reason

    everything = service.start_rotation(None, None, cutoff)
    assert everything.total == 4 and everything.before == cutoff
    assert walk(service, everything) == realm_ids(service, "a1", "a_2", "A3", "a-hmac")
    assert service.count_matching(None, None, cutoff) == 4

    prefixed = service.start_rotation(None, "a", cutoff)
    # case-sensitive, and `_` is a character, not a wildcard
    assert walk(service, prefixed) == realm_ids(service, "a1", "a_2", "a-hmac")
    assert service.count_matching(None, "a_", cutoff) == 1
    assert service.count_matching("ES256", "a", cutoff) == 2  # algo names are normalized
    assert service.start_rotation("hs256", None, cutoff).total == 1

    now = service.start_rotation(None, None, None)  # the default cut-off: now
    assert now.before == clock.now
    assert now.total == 5  # all but the two whose key began signing this very moment


def test_the_fan_out_walks_keyset_pages_in_id_order(service: Service, clock: FakeClock) -> None:
    for number in range(7):
        service.create_realm(f"r{number}", algo="es256")
    clock.advance(seconds=1)
    rotation = service.start_rotation(None, "r", None)
    assert rotation.total == 7

    pages = every_page(service, rotation, 3)

    assert [len(page) for page in pages] == [3, 3, 1]
    assert [realm_id for page in pages for realm_id in page] == realm_ids(
        service, *(f"r{number}" for number in range(7))
    )
    # a realm rotated since leaves the pages; the rest keep their order
    first = pages[0][0]
    service.rotate(first, force=True)
    assert first not in walk(service, rotation, 3)
    assert service.matching_realm_ids(rotation, pages[-1][-1], 3) == []


@pytest.mark.parametrize(
    ("algo", "prefix", "later", "fragment"),
    [
        ("hs512", None, None, "Algo must be one of"),
        ("", None, None, "Algo can't be blank"),
        (None, "x" * 101, None, "Realm prefix is too long (at most 100 characters)"),
        (None, "a%", None, "Realm prefix may hold only"),
        (None, None, timedelta(seconds=1), "Before can't be in the future"),
    ],
)
def test_invalid_input_is_refused_and_records_nothing(
    service: Service,
    clock: FakeClock,
    engine: Engine,
    algo: str | None,
    prefix: str | None,
    later: timedelta | None,
    fragment: str,
) -> None:
    before = clock.now + later if later else None
    with pytest.raises(InvalidInput, match=re.escape(fragment)):
        service.start_rotation(algo, prefix, before)
    with pytest.raises(InvalidInput, match=re.escape(fragment)):
        service.count_matching(algo, prefix, before or clock.now)
    with engine.connect() as connection:
        assert connection.execute(text("SELECT count(*) FROM rotations")).scalar() == 0


def test_a_record_is_found_by_id_and_marked_queued(service: Service, clock: FakeClock) -> None:
    service.create_realm("acme", algo="es256")
    clock.advance(seconds=1)
    started = service.start_rotation(None, None, None)
    assert started.id.startswith("rot_") and started.batches is None
    assert service.rotation(started.id) == started
    assert started.state(RotationProgress()) == "queued"

    clock.advance(seconds=1)
    service.mark_queued(started.id, 3)
    queued = service.rotation(started.id)
    assert (queued.batches, queued.queued_at) == (3, clock.now)
    assert queued.state(RotationProgress(batches=1)) == "running"
    assert queued.state(RotationProgress(batches=3)) == "done"

    for unknown in ("rot_nothere", "rl_x", "", "rot_%"):
        with pytest.raises(NotFound):
            service.rotation(unknown)


def test_a_rerun_resumes_the_newest_unfinished_record_with_the_same_filters(
    service: Service, clock: FakeClock
) -> None:
    acme = service.create_realm("acme", algo="es256")
    clock.advance(seconds=1)
    assert service.resume_rotation(None, None, no_progress) is None

    older = service.start_rotation(None, None, None)
    clock.advance(seconds=1)
    newer = service.start_rotation(None, None, None)
    other = service.start_rotation("es256", "ac", None)

    assert service.resume_rotation(None, None, no_progress) == newer  # not queued yet
    assert service.resume_rotation(None, "", no_progress) == newer  # "" is no prefix
    assert service.resume_rotation("ES256", "ac", no_progress) == other
    assert service.resume_rotation("es256", None, no_progress) is None
    assert older != newer

    service.mark_queued(newer.id, 1)
    one_batch = RotationProgress(batches=1, rotated=1)
    # every batch reported, but the realm is still covered (its batch did not rotate it)
    assert service.resume_rotation(None, None, lambda _: one_batch) == service.rotation(newer.id)
    service.rotate(acme.id, force=True)
    assert service.resume_rotation(None, None, lambda _: RotationProgress()) is not None
    assert service.resume_rotation(None, None, lambda _: one_batch) is None  # finished
    failed = RotationProgress(batches=1, failed=1, failed_realm_ids=[acme.id])
    assert service.resume_rotation(None, None, lambda _: failed) is not None


def test_still_left_sorts_earlier_failures_into_left_rotated_and_gone(
    service: Service, clock: FakeClock
) -> None:
    for name in ("left", "rotated", "gone"):
        service.create_realm(name, algo="es256")
    clock.advance(seconds=1)
    rotation = service.start_rotation(None, None, None)
    ids = {name: service.get_realm(name).id for name in ("left", "rotated", "gone")}
    service.rotate("rotated", force=True)
    service.delete_realm("gone")

    left, gone = service.still_left(rotation, sorted(ids.values()))

    assert (left, gone) == ([ids["left"]], [ids["gone"]])
    assert service.still_left(rotation, []) == ([], [])
