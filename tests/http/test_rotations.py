"""`/v1/rotations` over real HTTP: a rotation of every matching realm is queued at once (202)
and followed to `done` on a real worker; refusals are 422 in words and record nothing; an
unknown id is 404."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select

from tests.http.conftest import Api, serve
from tests.support.stack import wait_for
from worker.http import models
from worker.store.db import transaction
from worker.store.models import Event, MassRotation

ROTATION_FIELDS = list(models.Rotation.model_fields)


@pytest.fixture
def api(tmp_path: Path, database_url: str, redis_url: str) -> Iterator[Api]:
    """Batches of two realms, so a handful of realms makes several batches."""
    yield from serve(tmp_path, database_url, redis_url, rotate_batch="2")


def rotations(api: Api) -> dict[str, int]:
    """`key.rotated` events by realm id."""
    query = (
        select(Event.realm_id, func.count())
        .where(Event.reason == "key.rotated")
        .group_by(Event.realm_id)
    )
    with transaction(api.stack.service.sessions, read_only=True) as session:
        return {realm_id: count for realm_id, count in session.execute(query)}


def records(api: Api) -> int:
    with transaction(api.stack.service.sessions, read_only=True) as session:
        return int(session.scalar(select(func.count()).select_from(MassRotation)) or 0)


def start(api: Api, **fields: Any) -> dict[str, Any]:
    response = api.http.post("/v1/rotations", json={"rotation": fields})
    assert response.status_code == 202, response.text
    body = dict(response.json())
    assert list(body) == ROTATION_FIELDS
    return body


def test_a_rotation_is_queued_at_once_and_followed_to_done(api: Api) -> None:
    covered = sorted(api.realm(f"t{number}")["id"] for number in range(3))
    api.realm("other")
    hmac = api.realm("t-hmac", algo="hs256")["id"]
    api.stack.worker("w1")

    rotation = start(api, algo="ES256", realm_prefix="t")

    assert rotation["id"].startswith("rot_") and rotation["object"] == "rotation"
    assert (rotation["algo"], rotation["realm_prefix"]) == ("es256", "t")
    assert (rotation["state"], rotation["total"], rotation["rotated"]) == ("queued", 3, 0)
    assert rotation["before"] == rotation["created_at"]  # the default cut-off: now

    def done() -> dict[str, Any] | None:
        found = api.http.get(f"/v1/rotations/{rotation['id']}")
        assert found.status_code == 200, found.text
        body = dict(found.json())
        return body if body["state"] == "done" else None

    finished = wait_for(done, 60, "the rotation")
    assert list(finished) == ROTATION_FIELDS
    counts = [finished[k] for k in ("total", "rotated", "skipped", "failed", "failed_realm_ids")]
    assert counts == [3, 3, 0, 0, []]
    assert rotations(api) == dict.fromkeys(covered, 1)
    assert hmac not in rotations(api)

    # The same cut-off again queues only what is left: nothing.
    again = start(api, algo="es256", realm_prefix="t", before=rotation["before"])
    assert (again["total"], again["state"]) == (0, "done")
    assert api.http.get(f"/v1/rotations/{again['id']}").json() == again
    assert rotations(api) == dict.fromkeys(covered, 1)


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"algo": "hs512"}, "Algo must be one of hs256, rs256, ps256, es256, eddsa"),
        ({"algo": ""}, "Algo can't be blank"),
        ({"before": "yesterday"}, "Before must be an RFC 3339 timestamp with an offset"),
        ({"before": "2026-01-31T12:00:00"}, "Before must be an RFC 3339 timestamp with an offset"),
        ({"before": "0001-01-01T00:00:00+05:00"}, "Before must be an RFC 3339 timestamp"),
        ({"before": "2999-01-01T00:00:00Z"}, "Before can't be in the future"),
        ({"realm_prefix": "x" * 101}, "Realm prefix is too long (at most 100 characters)"),
        ({"realm_prefix": "a b"}, "Realm prefix may hold only letters, digits, '.', '_' or '-'"),
        ({"realms": "all"}, "Realms is not a known field"),
    ],
)
def test_invalid_input_is_422_in_words_and_records_nothing(
    api: Api, fields: dict[str, Any], message: str
) -> None:
    api.realm("acme")
    response = api.http.post("/v1/rotations", json={"rotation": fields})
    assert response.status_code == 422, response.text
    (error,) = response.json()["errors"]
    assert error.startswith(message), error
    assert records(api) == 0


def test_unknown_rotations_are_404_and_every_call_needs_a_token(api: Api) -> None:
    for ref in ("rot_0vSb3RMdQh1XYEdDoJGh4P", "rl_x", "nothing"):
        response = api.http.get(f"/v1/rotations/{ref}")
        assert (response.status_code, response.json()) == (404, {"errors": ["Not found"]})
    assert api.http.post("/v1/rotations", json={}).json() == {"errors": ["Rotation can't be blank"]}
    assert api.anon.post("/v1/rotations", json={"rotation": {}}).status_code == 401
    assert api.anon.get("/v1/rotations/rot_0vSb3RMdQh1XYEdDoJGh4P").status_code == 401
    assert records(api) == 0
