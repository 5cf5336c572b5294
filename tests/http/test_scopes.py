"""Scopes on admin keys over real HTTP: every `/v1` route, asked with a token of each kind of
key against realm A's and realm B's objects, answers 2xx or exactly `403 {"errors":
["Forbidden"]}` as the rules say; listings show only what a key may read; the OpenAPI document
states each route's scope; a refusal is logged without the token; and a key made before
scopes keeps `admin` across the migration.

The matrix enumerates the app's routes, so a route added without a line in `ROUTES` fails it.
"""

from __future__ import annotations

import itertools
import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple, TypeVar

import httpx
import pytest
from alembic import command
from alembic.config import Config
from fastapi.routing import iter_route_contexts
from sqlalchemy import text

from tests.http.conftest import Api, admin_key_pair, serve
from tests.support.live import admin_token
from tests.support.stack import wait_for
from worker.http.app import create_app
from worker.store.admin_keys import AdminKeys
from worker.store.db import MIGRATIONS, make_engine, session_factory

HOOK = "http://127.0.0.1:9/hook"  # nothing listens: nothing here waits for an answer
FORBIDDEN = {"errors": ["Forbidden"]}

# The kinds of key asked with: A and B are two live realms, GONE a deleted one.
SCOPES = ("admin", "realms:read", "realm:A:admin", "realm:A:sign", "admin-keys", "realm:GONE:admin")
EVERY = frozenset(SCOPES)
# Who may do what, written out (the rule under test is worker.core.scopes.allows): a need on
# realm None is one on no realm in particular, like a webhook that hears every realm.
ALLOWED: dict[tuple[str, str | None], frozenset[str]] = {
    ("list", None): EVERY,  # a listing shows what the key may read: never a 403
    ("read", "A"): frozenset({"admin", "realms:read", "realm:A:admin"}),
    ("read", "B"): frozenset({"admin", "realms:read"}),
    ("read", None): frozenset({"admin", "realms:read"}),
    ("manage", "A"): frozenset({"admin", "realm:A:admin"}),
    ("manage", "B"): frozenset({"admin"}),
    ("manage", None): frozenset({"admin"}),
    ("admin", None): frozenset({"admin"}),
    ("admin-keys", None): frozenset({"admin", "admin-keys"}),
    ("sign", "A"): frozenset({"admin", "realm:A:sign"}),
    ("sign", "B"): frozenset({"admin"}),
}


@pytest.fixture
def api(tmp_path: Path, database_url: str, redis_url: str) -> Iterator[Api]:
    """Webhooks may go to http:// and this machine here, as in development."""
    yield from serve(
        tmp_path, database_url, redis_url, webhook_allow_http="true", webhook_allow_private="true"
    )


@dataclass
class World:
    """Realms A and B with a key, a webhook and a delivery each, a webhook for every realm, a
    rotation, an admin key, the id of a deleted realm, and a token for each kind of key."""

    api: Api
    realms: dict[str, dict[str, Any]]
    gone: str
    keys: dict[str, str]
    hooks: dict[str | None, str]
    deliveries: dict[str | None, str]
    rotation: str
    admin_key: str
    tokens: dict[str, str] = field(default_factory=dict)
    kids: dict[str, str] = field(default_factory=dict)
    names: Iterator[int] = field(default_factory=itertools.count)

    def id(self, label: str | None) -> str | None:
        return None if label is None else self.realms[label]["id"]

    def ref(self, label: str) -> str:
        """Realm A by id, B by name: both ways of naming a realm are checked."""
        return str(self.realms[label]["id" if label == "A" else "name"])

    def as_scope(self, scope: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.tokens[scope]}"}

    def fresh_key(self, label: str) -> str:
        realm_id = self.id(label)
        assert realm_id is not None
        return self.api.stack.service.create_key(realm_id, "es256").id

    def fresh_hook(self, label: str | None) -> str:
        return self.api.stack.service.create_webhook(HOOK, realm_id=self.id(label))[0].id

    def fresh_realm(self) -> str:
        return self.api.stack.service.create_realm(f"spare-{next(self.names)}").id

    def fresh_admin_key(self) -> str:
        return str(self.api.admin_keys.create(admin_key_pair()[1])[0]["id"])


def make_world(api: Api) -> World:
    """Everything the matrix asks about, made once (as `admin`, through the API where a
    delivery or a published JWKS has to follow)."""
    realms = {label: api.realm(f"realm-{label.lower()}") for label in ("A", "B")}
    gone = api.realm("realm-gone")["id"]
    assert api.http.delete(f"/v1/realms/{gone}").status_code == 202
    hooks: dict[str | None, str] = {}
    for label in ("A", "B", None):
        realm_id = None if label is None else realms[label]["id"]
        made = api.http.post("/v1/webhooks", json={"webhook": {"url": HOOK, "realm_id": realm_id}})
        assert made.status_code == 201, made.text
        hooks[label] = made.json()["id"]
    keys = {}
    for label in ("A", "B"):  # key.created: a delivery for the realm's webhook and the global one
        made = api.http.post(
            "/v1/jwt_keys", json={"jwt_key": {"realm_id": realms[label]["id"], "algo": "es256"}}
        )
        assert made.status_code == 201, made.text
        keys[label] = made.json()["id"]

    def first_delivery(hook: str) -> str:
        def found() -> str | None:
            page = api.stack.service.list_deliveries(hook, max_results=1)
            return page.collection[0].id if page.collection else None

        return wait_for(found, 10, f"a delivery to {hook}")

    deliveries = {label: first_delivery(hook) for label, hook in hooks.items()}
    rotation = api.http.post("/v1/rotations", json={"rotation": {"realm_prefix": "none-"}})
    assert rotation.status_code == 202, rotation.text
    world = World(
        api=api,
        realms=realms,
        gone=gone,
        keys=keys,
        hooks=hooks,
        deliveries=deliveries,
        rotation=rotation.json()["id"],
        admin_key=str(api.admin_keys.create(admin_key_pair()[1])[0]["id"]),
    )
    private_pem, public_pem = admin_key_pair()  # one pair, a kid per scope: no RSA generation
    named = {"realm:A:admin": f"realm:{realms['A']['id']}:admin"}
    named |= {
        "realm:A:sign": f"realm:{realms['A']['id']}:sign",
        "realm:GONE:admin": f"realm:{gone}:admin",
    }
    for scope in SCOPES:
        kid = api.admin_keys.create(public_pem, [named.get(scope, scope)])[0]["id"]
        world.kids[scope] = kid
        world.tokens[scope] = admin_token(private_pem, kid)
    return world


# -- the table -------------------------------------------------------------------------------

Request = tuple[str, dict[str, Any] | None, dict[str, Any] | None]  # url, query, JSON body
Label = TypeVar("Label", str, str | None)


class Case(NamedTuple):
    """One request to a route: what it needs (every need, for a webhook changing realm), the
    status it answers when allowed, and how to make it; `fresh` asks for objects of its own,
    for a request allowed to delete or move them."""

    needs: tuple[tuple[str, str | None], ...]
    ok: int
    send: Callable[[World, bool], Request]


def case(need: str, realm: str | None, ok: int, send: Callable[[World, bool], Request]) -> Case:
    return Case(((need, realm),), ok, send)


def at(
    label: Label, send: Callable[[World, Label, bool], Request]
) -> Callable[[World, bool], Request]:
    """`send` aimed at the realm `label` names."""

    def aimed(w: World, fresh: bool) -> Request:
        return send(w, label, fresh)

    return aimed


def on_realms(need: str, ok: int, send: Callable[[World, str, bool], Request]) -> list[Case]:
    return [case(need, label, ok, at(label, send)) for label in "AB"]


def on_hooks(need: str, ok: int, send: Callable[[World, str | None, bool], Request]) -> list[Case]:
    labels: tuple[str | None, ...] = ("A", "B", None)
    return [case(need, label, ok, at(label, send)) for label in labels]


def hook(w: World, label: str | None, fresh: bool) -> str:
    return f"/v1/webhooks/{w.fresh_hook(label) if fresh else w.hooks[label]}"


def move(old: str | None, new: str | None) -> Case:
    """A webhook moved from one realm (or every realm) to another: it needs both."""

    def send(w: World, fresh: bool) -> Request:
        return hook(w, old, fresh), None, {"webhook": {"realm_id": w.id(new)}}

    return Case((("manage", old), ("manage", new)), 200, send)


def new_realm(w: World, _: bool) -> Request:
    return "/v1/realms", None, {"realm": {"name": f"made-{next(w.names)}"}}


def new_admin_key(_: World, __: bool) -> Request:
    body = {"public_key": admin_key_pair()[1], "scopes": ["realms:read"]}
    return "/v1/admin_keys", None, {"admin_key": body}


ROUTES: dict[tuple[str, str], list[Case]] = {
    ("GET", "/v1/jwt_keys"): [
        case("list", None, 200, lambda w, f: ("/v1/jwt_keys", None, None)),
        *on_realms("read", 200, lambda w, r, f: ("/v1/jwt_keys", {"realm_id": w.ref(r)}, None)),
    ],
    ("POST", "/v1/jwt_keys"): on_realms(
        "manage",
        201,
        lambda w, r, f: (
            "/v1/jwt_keys",
            None,
            {"jwt_key": {"realm_id": w.ref(r), "algo": "es256"}},
        ),
    ),
    ("GET", "/v1/jwt_keys/{key_id}"): on_realms(
        "read", 200, lambda w, r, f: (f"/v1/jwt_keys/{w.keys[r]}", None, None)
    ),
    ("DELETE", "/v1/jwt_keys/{key_id}"): on_realms(
        "manage",
        202,
        lambda w, r, f: (f"/v1/jwt_keys/{w.fresh_key(r) if f else w.keys[r]}", None, None),
    ),
    ("GET", "/v1/realms"): [case("list", None, 200, lambda w, f: ("/v1/realms", None, None))],
    ("POST", "/v1/realms"): [case("admin", None, 201, new_realm)],
    ("GET", "/v1/realms/{realm}"): on_realms(
        "read", 200, lambda w, r, f: (f"/v1/realms/{w.ref(r)}", None, None)
    ),
    ("PUT", "/v1/realms/{realm}"): on_realms(
        "manage", 200, lambda w, r, f: (f"/v1/realms/{w.ref(r)}", None, {"realm": {"grace": "6h"}})
    ),
    ("PATCH", "/v1/realms/{realm}"): on_realms(
        "manage", 200, lambda w, r, f: (f"/v1/realms/{w.ref(r)}", None, {"realm": {"grace": "6h"}})
    ),
    ("DELETE", "/v1/realms/{realm}"): [
        case(
            "admin",  # of realms A and B alike: a realm of its own when it may delete
            None,
            202,
            at(
                label,
                lambda w, r, f: (f"/v1/realms/{w.fresh_realm() if f else w.ref(r)}", None, None),
            ),
        )
        for label in "AB"
    ],
    ("POST", "/v1/rotations"): [
        case(
            "admin",
            None,
            202,
            lambda w, f: ("/v1/rotations", None, {"rotation": {"realm_prefix": "none-"}}),
        )
    ],
    ("GET", "/v1/rotations/{rotation_id}"): [
        case("admin", None, 200, lambda w, f: (f"/v1/rotations/{w.rotation}", None, None))
    ],
    ("POST", "/v1/realms/{realm}/tokens"): on_realms(
        "sign",
        201,
        lambda w, r, f: (
            f"/v1/realms/{w.ref(r)}/tokens",
            None,
            {"token": {"claims": {"sub": "u"}}},
        ),
    ),
    ("GET", "/v1/events"): [
        case("list", None, 200, lambda w, f: ("/v1/events", None, None)),
        *on_realms("read", 200, lambda w, r, f: ("/v1/events", {"realm_id": w.ref(r)}, None)),
    ],
    ("GET", "/v1/webhooks"): [case("list", None, 200, lambda w, f: ("/v1/webhooks", None, None))],
    ("POST", "/v1/webhooks"): on_hooks(
        "manage",
        201,
        lambda w, r, f: ("/v1/webhooks", None, {"webhook": {"url": HOOK, "realm_id": w.id(r)}}),
    ),
    ("GET", "/v1/webhooks/{webhook_id}"): on_hooks(
        "read", 200, lambda w, r, f: (hook(w, r, False), None, None)
    ),
    ("PUT", "/v1/webhooks/{webhook_id}"): [
        *on_hooks(
            "manage", 200, lambda w, r, f: (hook(w, r, False), None, {"webhook": {"enabled": True}})
        ),
        move("A", "B"),
        move("B", "A"),
        move("A", None),
        move(None, "A"),
    ],
    ("PATCH", "/v1/webhooks/{webhook_id}"): [
        *on_hooks(
            "manage", 200, lambda w, r, f: (hook(w, r, False), None, {"webhook": {"reasons": None}})
        ),
        move("A", "B"),
        move(None, "A"),
    ],
    ("DELETE", "/v1/webhooks/{webhook_id}"): on_hooks(
        "manage", 202, lambda w, r, f: (hook(w, r, f), None, None)
    ),
    ("POST", "/v1/webhooks/{webhook_id}/rotate_secret"): on_hooks(
        "manage", 200, lambda w, r, f: (hook(w, r, False) + "/rotate_secret", None, None)
    ),
    ("GET", "/v1/webhooks/{webhook_id}/deliveries"): on_hooks(
        "manage", 200, lambda w, r, f: (hook(w, r, False) + "/deliveries", None, None)
    ),
    ("POST", "/v1/webhooks/{webhook_id}/deliveries/{delivery_id}/retry"): on_hooks(
        "manage",
        202,
        lambda w, r, f: (hook(w, r, False) + f"/deliveries/{w.deliveries[r]}/retry", None, None),
    ),
    ("GET", "/v1/admin_keys"): [
        case("admin-keys", None, 200, lambda w, f: ("/v1/admin_keys", None, None))
    ],
    ("POST", "/v1/admin_keys"): [case("admin-keys", None, 201, new_admin_key)],
    ("GET", "/v1/admin_keys/{admin_key_id}"): [
        case("admin-keys", None, 200, lambda w, f: (f"/v1/admin_keys/{w.admin_key}", None, None))
    ],
    ("DELETE", "/v1/admin_keys/{admin_key_id}"): [
        case(
            "admin-keys",
            None,
            202,
            lambda w, f: (
                f"/v1/admin_keys/{w.fresh_admin_key() if f else w.admin_key}",
                None,
                None,
            ),
        )
    ],
}


def allowed(needs: tuple[tuple[str, str | None], ...]) -> frozenset[str]:
    return frozenset.intersection(*(ALLOWED[need] for need in needs))


def v1_routes(api: Api) -> set[tuple[str, str]]:
    """Every `/v1` method and path the app serves, documented or not."""
    app = create_app(
        api.stack.settings,
        api.stack.service,
        admin_keys=api.admin_keys,
        redis_client=api.stack.redis,
    )
    found = {
        (method, route.path)
        for route in iter_route_contexts(app.routes)  # included routers' routes, prefixed
        if route.path and route.path.startswith("/v1/")
        for method in route.methods or ()
    }
    assert len(found) > 20
    return found


# -- the matrix ------------------------------------------------------------------------------


def test_every_route_answers_each_kind_of_key_as_its_scopes_say(api: Api) -> None:
    assert v1_routes(api) == set(ROUTES), "every /v1 route needs its line in ROUTES"
    world = make_world(api)
    started = time.monotonic()
    wrong: list[str] = []
    asked = 0
    with httpx.Client(base_url=api.url, timeout=30) as client:
        for (method, route), cases in ROUTES.items():
            for one in cases:
                may = allowed(one.needs)
                for scope in SCOPES:
                    url, params, body = one.send(world, scope in may)
                    response = client.request(
                        method, url, params=params, json=body, headers=world.as_scope(scope)
                    )
                    asked += 1
                    expected = one.ok if scope in may else 403
                    if response.status_code != expected:
                        wrong.append(
                            f"{scope}: {method} {route} {one.needs}: {response.status_code}"
                            f" (not {expected}) {response.text[:200]}"
                        )
                    elif expected == 403 and response.json() != FORBIDDEN:
                        wrong.append(f"{scope}: {method} {route}: 403 body {response.text}")
    assert not wrong, "\n".join(wrong)
    assert asked == len(SCOPES) * sum(len(cases) for cases in ROUTES.values())
    assert time.monotonic() - started < 60  # one server, one client: seconds


def test_the_document_states_each_routes_scope_and_its_403(api: Api) -> None:
    document = api.anon.get("/openapi.json").json()
    for (method, route), cases in ROUTES.items():
        operation = document["paths"][route][method.lower()]
        assert operation.get("x-required-scope"), (method, route)
        can_refuse = any(allowed(one.needs) != EVERY for one in cases)
        assert ("403" in operation["responses"]) == can_refuse, (method, route)
        if can_refuse:
            schema = operation["responses"]["403"]["content"]["application/json"]["schema"]
            assert schema == {"$ref": "#/components/schemas/Errors"}, (method, route)


# -- listings --------------------------------------------------------------------------------


def listed(api: Api, world: World, scope: str, path: str, **params: Any) -> list[dict[str, Any]]:
    """Every item of a listing, a page of one at a time: filtering keeps keyset paging whole."""
    items: list[dict[str, Any]] = []
    after: str | None = None
    while True:
        query = {**params, "max_results": 1, **({"after": after} if after else {})}
        response = api.anon.get(path, params=query, headers=world.as_scope(scope))
        assert response.status_code == 200, response.text
        page = response.json()
        items += page["collection"]
        if not page["more_results"]:
            return items
        after = items[-1]["id"]


def test_listings_show_only_what_the_key_may_read(api: Api) -> None:
    world = make_world(api)
    a, b = world.realms["A"]["id"], world.realms["B"]["id"]
    every_realm = {r["id"] for r in api.http.get("/v1/realms").json()["collection"]}
    assert {a, b} <= every_realm
    sees = {
        "admin": ({a, b}, {a, b, None}),
        "realms:read": ({a, b}, {a, b, None}),
        "realm:A:admin": ({a}, {a}),
        "realm:A:sign": (set(), set()),
        "admin-keys": (set(), set()),
        "realm:GONE:admin": (set(), set()),
    }
    for scope, (realms, hooks) in sees.items():
        assert {r["id"] for r in listed(api, world, scope, "/v1/realms")} & {a, b} == realms
        keys = listed(api, world, scope, "/v1/jwt_keys")
        assert {k["realm_id"] for k in keys} == realms, scope
        if realms:
            assert len(keys) >= 2 * len(realms)  # each realm's first key and the one added
        assert {h["realm_id"] for h in listed(api, world, scope, "/v1/webhooks")} == hooks, scope
        events = listed(api, world, scope, "/v1/events")
        assert {e["realm_id"] for e in events} & {a, b} == realms, scope
    assert {r["id"] for r in listed(api, world, "realm:A:admin", "/v1/realms")} == {a}
    a_keys = listed(api, world, "realm:A:admin", "/v1/jwt_keys", realm_id="realm-a")
    assert a_keys and {k["realm_id"] for k in a_keys} == {a}
    refused = api.anon.get(
        "/v1/jwt_keys", params={"realm_id": "realm-b"}, headers=world.as_scope("realm:A:admin")
    )
    assert (refused.status_code, refused.json()) == (403, FORBIDDEN)


def test_a_scope_naming_a_deleted_realm_grants_nothing_not_even_on_its_name_reused(
    api: Api,
) -> None:
    world = make_world(api)
    again = api.realm("realm-gone")  # the deleted realm's name, free again: a new id
    assert again["id"] != world.gone
    headers = world.as_scope("realm:GONE:admin")
    for ref in (again["id"], "realm-gone"):
        response = api.anon.get(f"/v1/realms/{ref}", headers=headers)
        assert (response.status_code, response.json()) == (403, FORBIDDEN)
    response = api.anon.patch(
        "/v1/realms/realm-gone", json={"realm": {"grace": "7h"}}, headers=headers
    )
    assert (response.status_code, response.json()) == (403, FORBIDDEN)
    assert api.anon.get("/v1/realms", headers=headers).json()["collection"] == []
    assert api.anon.get(f"/v1/realms/{world.gone}", headers=headers).status_code == 404
    for params in ({}, {"realm_id": world.gone}):  # not even the deleted realm's old events
        events = api.anon.get("/v1/events", params=params, headers=headers)
        assert (events.status_code, events.json()["collection"]) == (200, [])
    everything = api.http.get("/v1/events", params={"realm_id": world.gone}).json()
    assert everything["collection"]  # they are kept: an admin key reads them


# -- what a refusal leaves in the log ----------------------------------------------------------


def test_refusals_are_logged_with_the_key_route_and_reason_never_the_token(
    api: Api, caplog: pytest.LogCaptureFixture
) -> None:
    realm = api.realm("acme")
    private_pem, public_pem = admin_key_pair()
    kid = api.admin_keys.create(public_pem, ["realms:read"])[0]["id"]
    token = admin_token(private_pem, kid)
    expired = admin_token(private_pem, kid, iat_offset=-3600)
    with caplog.at_level(logging.WARNING, logger="keyrotor.http"):
        response = api.anon.delete(f"/v1/realms/{realm['id']}", headers=api.with_token(token))
        assert response.status_code == 403
        assert api.anon.get("/v1/realms", headers=api.with_token(expired)).status_code == 401
        assert api.anon.get("/v1/realms").status_code == 401
    refusals = [vars(r) for r in caplog.records if r.getMessage() == "admin request refused"]
    assert [(r["levelname"], r["status"], r["kid"], r["route"]) for r in refusals] == [
        ("WARNING", 403, kid, "DELETE /v1/realms/{realm}"),
        ("WARNING", 401, kid, "GET /v1/realms"),
        ("WARNING", 401, None, "GET /v1/realms"),
    ]
    assert refusals[0]["reason"] == f"{kid} lacks the scope for admin"
    assert refusals[1]["reason"] == "token has expired"
    for record in caplog.records:
        said = f"{record.getMessage()} {vars(record)}"
        for secret in (token, expired, token.split(".")[2], expired.split(".")[2]):
            assert secret not in said


# -- keys made before scopes -------------------------------------------------------------------


def test_a_key_made_before_scopes_keeps_admin_through_the_migration(tmp_path: Path) -> None:
    engine = make_engine(f"sqlite:///{tmp_path / 'old.db'}")
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.attributes["engine"] = engine
    command.upgrade(config, "0004")
    public_pem = admin_key_pair()[1]
    with engine.begin() as connection:
        connection.execute(
            text(
                "INSERT INTO admin_keys (id, public_pem, created_at)"
                " VALUES ('aky_0vRHaJyOFdkV3QVJpUJqJQ', :pem, '2025-06-01 00:00:00')"
            ),
            {"pem": public_pem},
        )
    command.upgrade(config, "head")
    keys = AdminKeys(session_factory(engine))
    assert keys.admin_key("aky_0vRHaJyOFdkV3QVJpUJqJQ") == (public_pem, ["admin"])
    assert keys.get("aky_0vRHaJyOFdkV3QVJpUJqJQ")["scopes"] == ["admin"]
    assert keys.create(public_pem)[0]["scopes"] == ["admin"]  # and so do keys made without any
    engine.dispose()
