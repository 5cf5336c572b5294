"""The read-only counts behind /metrics, on each database backend."""

from __future__ import annotations

from tests.conftest import FakeClock
from worker.service import Service
from worker.store import stats


def test_counts_by_state_and_reason_and_each_realms_last_rotation(
    service: Service, clock: FakeClock
) -> None:
    assert stats.keys_by_state(service.sessions) == {}
    assert stats.realms(service.sessions) == []
    created_at = clock.now
    acme = service.create_realm("acme")
    service.create_realm("other")
    rotated_at = clock.advance(hours=1)
    service.rotate("acme", force=True)

    assert stats.keys_by_state(service.sessions) == {"active": 2, "expired": 1}
    reasons = stats.events_by_reason(service.sessions)
    assert reasons["key.rotated"] == 1 and reasons["realm.created"] == 2
    by_name = {realm.name: realm for realm in stats.realms(service.sessions)}
    assert by_name["acme"].id == acme.id
    assert by_name["acme"].last_rotation_at == rotated_at
    assert by_name["acme"].jwks_version == 2
    assert by_name["other"].last_rotation_at == created_at  # its first key, never rotated
