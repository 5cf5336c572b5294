"""`GET /v1/events` over real HTTP: an API change records the admin key that made it (in the
outbox, the stream and the listing, which serves the stream's payload exactly), the listing
filters by realm and actor a page at a time, a realm-scoped key sees only its realms' events,
and `POST /v1/rotations` carries the admin key onto every rotation its batches make."""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest
from sqlalchemy import select

from tests.conftest import ONE_DATABASE
from tests.http.conftest import Api
from tests.support.live import admin_token
from tests.support.replies import xrange
from tests.support.stack import wait_for
from worker.client.events import STREAM
from worker.core.scopes import Action, describe
from worker.http import events as events_route
from worker.store.db import transaction
from worker.store.models import Event


def listed(api: Api, client: httpx.Client | None = None, **params: Any) -> dict[str, Any]:
    response = (client or api.http).get("/v1/events", params=params)
    assert response.status_code == 200, response.text
    return dict(response.json())


def streamed(api: Api, event_id: str) -> dict[str, Any]:
    """The stream's payload of one event (the test Redis is shared: found by id)."""
    payloads = [json.loads(fields[b"event"]) for _, fields in xrange(api.stack.redis, STREAM)]
    (found,) = [p for p in payloads if p["id"] == event_id]
    return dict(found)


def stored_actors(api: Api, realm_id: str) -> list[tuple[str, str]]:
    query = select(Event.reason, Event.actor).where(Event.realm_id == realm_id).order_by(Event.seq)
    with transaction(api.stack.service.sessions, read_only=True) as session:
        return [(reason, actor) for reason, actor in session.execute(query)]


def test_an_api_change_records_its_admin_key_in_the_outbox_the_stream_and_the_listing(
    api: Api,
) -> None:
    realm = api.realm("acme")
    assert stored_actors(api, realm["id"]) == [("realm.created", api.kid)]
    (event,) = listed(api)["collection"]
    assert event == streamed(api, event["id"])  # the stream's payload, exactly
    assert event["actor"] == api.kid and event["reason"] == "realm.created"
    assert list(event) == list(events_route.Event.model_fields)

    api.stack.service.rotate("acme", force=True)  # outside the API: the system's
    rotated = listed(api)["collection"][0]
    assert (rotated["reason"], rotated["actor"]) == ("key.rotated", "system")


def test_events_are_filtered_by_realm_and_actor_a_page_at_a_time(api: Api) -> None:
    acme = api.realm("acme")["id"]
    beta = api.realm("beta")["id"]
    api.stack.service.rotate("acme", force=True)
    created = api.http.post("/v1/jwt_keys", json={"jwt_key": {"realm_id": "acme", "algo": "es256"}})
    assert created.status_code == 201, created.text
    every = listed(api)["collection"]
    assert [(e["realm_id"], e["actor"]) for e in every] == [
        (acme, api.kid),
        (acme, "system"),
        (beta, api.kid),
        (acme, api.kid),
    ]
    assert listed(api, realm_id="acme")["collection"] == listed(api, realm_id=acme)["collection"]
    assert [e["realm_id"] for e in listed(api, realm_id=beta)["collection"]] == [beta]
    assert listed(api, actor="system")["collection"] == [every[1]]
    assert listed(api, actor=api.kid, realm_id=acme)["collection"] == [every[0], every[3]]

    first = listed(api, max_results=3)
    assert first == {"more_results": True, "collection": every[:3]}
    rest = listed(api, max_results=3, after=every[2]["id"])
    assert rest == {"more_results": False, "collection": every[3:]}
    assert listed(api, direction="asc", after=every[3]["id"])["collection"] == every[2::-1]

    api.http.delete("/v1/realms/beta")  # a deleted realm's events stay listed by its id
    assert [e["reason"] for e in listed(api, realm_id=beta)["collection"]] == [
        "key.deleted",
        "realm.created",
    ]


@pytest.mark.parametrize(
    ("params", "status", "message"),
    [
        ({"max_results": 0}, 422, "Max results must be between 1 and 100"),
        ({"max_results": "ten"}, 422, "Max results must be between 1 and 100"),
        ({"after": "jky_0vRHaJyOFdkV3QVJpUJqJQ"}, 422, "After must be an event id"),
        ({"after": "evt_0vSb3RMdQh1XYEdDoJGh4P"}, 422, None),  # no such event kept
        ({"actor": "x" * 65}, 422, "Actor is too long (at most 64 characters)"),
        ({"actor": "cli:\x7f"}, 422, "Actor must be 1-64 printable characters"),
        ({"direction": "up"}, 422, None),
        ({"realm_id": "nope"}, 404, "Not found"),
    ],
)
def test_refusals_are_one_line(
    api: Api, params: dict[str, Any], status: int, message: str | None
) -> None:
    response = api.http.get("/v1/events", params=params)
    assert response.status_code == status, response.text
    (line,) = response.json()["errors"]
    assert message is None or line == message


def test_a_realm_scoped_key_sees_only_its_realms_events(api: Api) -> None:
    a = api.realm("a")["id"]
    b = api.realm("b")["id"]
    view, private_pem = api.admin_keys.create(scopes=[f"realm:{a}:admin"])
    assert private_pem is not None
    with httpx.Client(
        base_url=api.url,
        timeout=30,
        headers={"Authorization": f"Bearer {admin_token(private_pem, view['id'])}"},
    ) as scoped:
        assert [e["realm_id"] for e in listed(api, scoped)["collection"]] == [a]
        assert [e["realm_id"] for e in listed(api, scoped, realm_id="a")["collection"]] == [a]
        for realm in (b, "b"):
            refused = scoped.get("/v1/events", params={"realm_id": realm})
            assert refused.status_code == 403 and refused.json() == {"errors": ["Forbidden"]}
    reader, reader_pem = api.admin_keys.create(scopes=["realms:read"])
    assert reader_pem is not None
    token = admin_token(reader_pem, reader["id"])
    every = api.anon.get("/v1/events", headers={"Authorization": f"Bearer {token}"}).json()
    assert {e["realm_id"] for e in every["collection"]} == {a, b}


def test_the_route_is_documented_with_its_scope(api: Api) -> None:
    operation = api.anon.get("/openapi.json").json()["paths"]["/v1/events"]["get"]
    assert operation["x-required-scope"] == describe(Action.READ)
    assert {p["name"] for p in operation["parameters"]} == {
        "realm_id",
        "actor",
        "after",
        "max_results",
        "direction",
    }


@ONE_DATABASE
def test_rotate_all_from_the_api_records_its_admin_key_on_every_rotation(api: Api) -> None:
    ids = {api.realm(f"t{n}")["id"] for n in range(3)}
    api.stack.worker("w1")
    response = api.http.post("/v1/rotations", json={"rotation": {"realm_prefix": "t"}})
    assert response.status_code == 202, response.text
    rotation = response.json()["id"]

    def done() -> bool:
        return bool(api.http.get(f"/v1/rotations/{rotation}").json()["state"] == "done")

    wait_for(done, 60, "the rotation")
    rotated = [e for e in listed(api, actor=api.kid)["collection"] if e["reason"] == "key.rotated"]
    assert {e["realm_id"] for e in rotated} == ids and len(rotated) == 3
    assert listed(api, actor="system")["collection"] == []
    for event in rotated:
        assert streamed(api, event["id"])["actor"] == api.kid
