"""The webhook routes over real HTTP: the object and its secret (shown only when made), partial
updates, the delivery log and retries, one-line refusals of the targets webhooks must never
reach, and a truthful OpenAPI document."""

from __future__ import annotations

import base64
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any, get_args

import httpx
import pytest
from keyrotor_client.events import REASONS

from tests.http.conftest import Api, serve
from tests.support.stack import wait_for
from worker.core.webhooks import WebhookPolicy
from worker.http import models

WEBHOOK_ID = re.compile(r"whk_[0-9A-Za-z]{22}")
DELIVERY_ID = re.compile(r"whd_[0-9A-Za-z]{22}")
EVENT_ID = re.compile(r"evt_[0-9A-Za-z]+")
WEBHOOK_FIELDS = list(models.Webhook.model_fields)
DELIVERY_FIELDS = list(models.WebhookDelivery.model_fields)
HOOK = "http://127.0.0.1:9/hook"  # nothing listens: nothing here waits for an answer
UNKNOWN_WEBHOOK = "whk_0vSb3RMdQh1XYEdDoJGh4P"
UNKNOWN_DELIVERY = "whd_0vSb3RMdQh1XYEdDoJGh4P"


@pytest.fixture
def api(tmp_path: Path, database_url: str, redis_url: str) -> Iterator[Api]:
    """A deployment whose webhooks may go to http:// and to this machine, as in development."""
    yield from serve(
        tmp_path,
        database_url,
        redis_url,
        webhook_allow_http="true",
        webhook_allow_private="true",
    )


def create(api: Api, **fields: Any) -> dict[str, Any]:
    response = api.http.post("/v1/webhooks", json={"webhook": {"url": HOOK, **fields}})
    assert response.status_code == 201, response.text
    return dict(response.json())


def refused(response: httpx.Response, status: int = 422) -> str:
    """One sentence, on one line, in the API's error shape."""
    assert response.status_code == status, response.text
    (message,) = response.json()["errors"]
    assert "\n" not in message
    return str(message)


def without_secret(webhook: dict[str, Any]) -> dict[str, Any]:
    return {name: value for name, value in webhook.items() if name != "secret"}


# -- the webhook object ------------------------------------------------------------------------


def test_create_answers_201_with_the_secret_which_get_and_list_never_show(api: Api) -> None:
    webhook = create(api)
    assert list(webhook) == [*WEBHOOK_FIELDS, "secret"]
    assert WEBHOOK_ID.fullmatch(webhook["id"])
    assert webhook["object"] == "webhook" and webhook["url"] == HOOK
    assert (webhook["realm_id"], webhook["reasons"], webhook["enabled"]) == (None, None, True)
    assert webhook["secret"].startswith("whsec_")
    assert len(base64.b64decode(webhook["secret"][6:], validate=True)) == 32

    shown = without_secret(webhook)
    assert api.http.get(f"/v1/webhooks/{webhook['id']}").json() == shown
    listing = api.http.get("/v1/webhooks").json()
    assert listing == {"more_results": False, "collection": [shown]}
    assert webhook["secret"] not in api.http.get("/v1/webhooks").text

    realm = api.realm("acme")
    narrow = create(api, realm_id="acme", reasons=["key.rotated", "key.revoked", "key.rotated"])
    assert narrow["realm_id"] == realm["id"]  # named by name, answered by id
    assert narrow["reasons"] == ["key.revoked", "key.rotated"]
    assert create(api, enabled=False)["enabled"] is False
    assert narrow["secret"] != webhook["secret"]


def test_list_pages_by_id(api: Api) -> None:
    made = sorted(create(api)["id"] for _ in range(3))
    first = api.http.get("/v1/webhooks", params={"max_results": 2}).json()
    assert first["more_results"] is True
    assert [w["id"] for w in first["collection"]] == made[::-1][:2]
    rest = api.http.get(
        "/v1/webhooks", params={"after": first["collection"][-1]["id"], "max_results": 2}
    ).json()
    assert rest["more_results"] is False and [w["id"] for w in rest["collection"]] == made[:1]
    ascending = api.http.get("/v1/webhooks", params={"direction": "asc"}).json()
    assert [w["id"] for w in ascending["collection"]] == made
    for value in ("0", "101", "ten"):
        response = api.http.get("/v1/webhooks", params={"max_results": value})
        assert refused(response) == "Max results must be between 1 and 100"
    assert refused(api.http.get("/v1/webhooks", params={"direction": "up"})).startswith(
        "Direction must be"
    )


def test_put_and_patch_change_only_the_fields_given(api: Api) -> None:
    realm = api.realm("acme")
    webhook = without_secret(create(api, realm_id="acme", reasons=["key.rotated"]))
    path = f"/v1/webhooks/{webhook['id']}"

    response = api.http.put(path, json={"webhook": {"enabled": False}})
    assert response.status_code == 200
    assert response.json() == {**webhook, "enabled": False}
    assert realm["id"] == response.json()["realm_id"]

    response = api.http.patch(path, json={"webhook": {"url": "http://127.0.0.1:9/other"}})
    assert response.json() == {**webhook, "enabled": False, "url": "http://127.0.0.1:9/other"}

    # null: every realm and every reason
    response = api.http.patch(path, json={"webhook": {"realm_id": None, "reasons": None}})
    changed = response.json()
    assert (changed["realm_id"], changed["reasons"]) == (None, None)
    assert changed["url"] == "http://127.0.0.1:9/other" and changed["enabled"] is False

    response = api.http.put(path, json={"webhook": {"realm_id": realm["id"], "enabled": True}})
    assert (response.json()["realm_id"], response.json()["enabled"]) == (realm["id"], True)
    assert api.http.patch(path, json={"webhook": {}}).json() == response.json()
    assert api.http.get(path).json() == response.json()
    assert "secret" not in response.json()


def test_update_refusals(api: Api) -> None:
    webhook = create(api)
    path = f"/v1/webhooks/{webhook['id']}"
    cases: list[tuple[dict[str, Any], str]] = [
        ({"webhook": {"realm_id": "nowhere"}}, "Realm not found"),
        ({"webhook": {"reasons": ["key.lost"]}}, "Reasons has unknown reason(s): key.lost"),
        ({"webhook": {"reasons": []}}, "Reasons can't be empty (leave it out for every reason)"),
        ({"webhook": {"url": None}}, "Url must be a string"),
        ({"webhook": {"url": "ftp://127.0.0.1/"}}, "Url must start with http:// or https://"),
        ({"webhook": {"enabled": None}}, "Enabled must be true or false"),
        ({"webhook": {"enabled": 3}}, "Enabled must be true or false"),
        ({"webhook": {"colour": "red"}}, "Colour is not a known field"),
        ({"url": HOOK}, "Webhook can't be blank"),
    ]
    for body, message in cases:
        for method in ("PUT", "PATCH"):
            response = api.http.request(method, path, json=body)
            assert response.status_code == 422, (method, body, response.text)
            assert message in response.json()["errors"], (body, response.json())
    assert api.http.get(path).json() == without_secret(webhook)  # nothing changed

    unknown = f"/v1/webhooks/{UNKNOWN_WEBHOOK}"
    assert refused(api.http.patch(unknown, json={"webhook": {"enabled": False}}), 404)
    # an unknown webhook is not found, whatever realm the body names
    assert refused(api.http.patch(unknown, json={"webhook": {"realm_id": "nowhere"}}), 404)


def test_create_refusals(api: Api) -> None:
    cases: list[tuple[dict[str, Any], str]] = [
        ({"webhook": {"url": HOOK, "realm_id": "nowhere"}}, "Realm not found"),
        ({"webhook": {"url": HOOK, "realm_id": "a\x00b"}}, "Realm not found"),
        ({"webhook": {"url": HOOK, "reasons": ["key.lost"]}}, "unknown reason(s): key.lost"),
        ({"webhook": {"url": HOOK, "reasons": "key.rotated"}}, "Reasons must be a list"),
        ({"webhook": {"url": ""}}, "Url can't be blank"),
        ({"webhook": {"url": "http://"}}, "Url has no host"),
        ({"webhook": {"url": "http://user:pw@127.0.0.1/"}}, "must not carry a user name"),
        ({"webhook": {"url": "x" * 2001}}, "Url is too long (at most 2000 characters)"),
        ({"webhook": {}}, "Url can't be blank"),
        ({"webhook": {"url": HOOK, "secret": "whsec_x"}}, "Secret is not a known field"),
        ({}, "Webhook can't be blank"),
    ]
    for body, fragment in cases:
        message = refused(api.http.post("/v1/webhooks", json=body))
        assert fragment in message, (body, message)
    assert api.http.get("/v1/webhooks").json()["collection"] == []  # nothing was made


# -- refused targets -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "why"),
    [
        ("http://hooks.example.com/keyrotor", "Url must start with https://"),
        ("https://127.0.0.1/", "resolves to a loopback address"),
        ("https://10.0.0.1/", "resolves to a private address"),
        ("https://169.254.169.254/latest/meta-data", "resolves to a link-local or metadata"),
        ("https://[::1]/", "resolves to a loopback address"),
        ("https://100.100.100.200/", "resolves to a link-local or metadata"),
    ],
)
def test_the_default_policy_refuses_http_and_private_targets_in_one_line(
    api: Api, url: str, why: str
) -> None:
    api.stack.service.webhook_policy = WebhookPolicy()  # production's rules
    assert why in refused(api.http.post("/v1/webhooks", json={"webhook": {"url": url}}))
    assert api.http.get("/v1/webhooks").json()["collection"] == []

    api.stack.service.webhook_policy = WebhookPolicy(allow_http=True, allow_private=True)
    webhook = create(api)
    api.stack.service.webhook_policy = WebhookPolicy()
    path = f"/v1/webhooks/{webhook['id']}"
    assert why in refused(api.http.patch(path, json={"webhook": {"url": url}}))
    assert api.http.get(path).json()["url"] == HOOK


# -- delete, rotate_secret -------------------------------------------------------------------


def test_delete_answers_202_with_the_webhook_then_it_is_gone(api: Api) -> None:
    webhook = without_secret(create(api))
    path = f"/v1/webhooks/{webhook['id']}"
    response = api.http.delete(path)
    assert response.status_code == 202 and response.json() == webhook
    for method, route in [
        ("GET", path),
        ("DELETE", path),
        ("PATCH", path),
        ("POST", f"{path}/rotate_secret"),
        ("GET", f"{path}/deliveries"),
    ]:
        body: dict[str, Any] | None = {"webhook": {}} if method == "PATCH" else None
        response = api.http.request(method, route, json=body)
        assert (response.status_code, response.json()) == (404, {"errors": ["Not found"]})
    assert api.http.get("/v1/webhooks").json()["collection"] == []


def test_rotate_secret_answers_a_new_secret_once(api: Api) -> None:
    webhook = create(api)
    path = f"/v1/webhooks/{webhook['id']}"
    response = api.http.post(f"{path}/rotate_secret")
    assert response.status_code == 200
    rotated = response.json()
    assert list(rotated) == [*WEBHOOK_FIELDS, "secret"]
    assert without_secret(rotated) == without_secret(webhook)
    assert rotated["secret"].startswith("whsec_") and rotated["secret"] != webhook["secret"]
    assert "secret" not in api.http.get(path).json()
    again = api.http.post(f"{path}/rotate_secret").json()["secret"]
    assert again not in (webhook["secret"], rotated["secret"])
    assert refused(api.http.post(f"/v1/webhooks/{UNKNOWN_WEBHOOK}/rotate_secret"), 404)


# -- the delivery log ----------------------------------------------------------------------------


def test_a_new_webhook_has_an_empty_delivery_log(api: Api) -> None:
    webhook = create(api)
    response = api.http.get(f"/v1/webhooks/{webhook['id']}/deliveries")
    assert response.json() == {"more_results": False, "collection": []}
    retry = f"/v1/webhooks/{webhook['id']}/deliveries/{UNKNOWN_DELIVERY}/retry"
    assert refused(api.http.post(retry), 404) == "Not found"
    response = api.http.get(f"/v1/webhooks/{webhook['id']}/deliveries", params={"after": "\x01"})
    assert refused(response) == "After must be an id"


def test_an_event_is_logged_as_a_delivery_which_can_be_retried(api: Api) -> None:
    webhook = create(api)
    other = create(api, reasons=["key.revoked"])  # hears nothing a new realm says
    api.realm("acme")  # realm.created, relayed after the commit: one delivery queued
    log = f"/v1/webhooks/{webhook['id']}/deliveries"
    page = wait_for(lambda: api.http.get(log).json()["collection"], 10, "a delivery")
    (delivery,) = page
    assert list(delivery) == DELIVERY_FIELDS
    assert DELIVERY_ID.fullmatch(delivery["id"]) and EVENT_ID.fullmatch(delivery["event_id"])
    assert delivery["object"] == "webhook_delivery" and delivery["webhook_id"] == webhook["id"]
    assert delivery["state"] == "pending" and delivery["delivered_at"] is None
    assert api.http.get(f"/v1/webhooks/{other['id']}/deliveries").json()["collection"] == []

    response = api.http.post(f"{log}/{delivery['id']}/retry")
    assert response.status_code == 202
    retried = response.json()
    assert list(retried) == DELIVERY_FIELDS
    assert (retried["id"], retried["state"]) == (delivery["id"], "pending")
    assert retried["next_attempt_at"] is not None
    # a delivery is retried through its own webhook only
    other_log = f"/v1/webhooks/{other['id']}/deliveries"
    assert refused(api.http.post(f"{other_log}/{delivery['id']}/retry"), 404)


# -- authentication and the OpenAPI document ----------------------------------------------------


def test_every_webhook_route_needs_an_admin_token(api: Api) -> None:
    webhook = create(api)
    path = f"/v1/webhooks/{webhook['id']}"
    routes = [
        ("GET", "/v1/webhooks"),
        ("POST", "/v1/webhooks"),
        ("GET", path),
        ("PUT", path),
        ("PATCH", path),
        ("DELETE", path),
        ("POST", f"{path}/rotate_secret"),
        ("GET", f"{path}/deliveries"),
        ("POST", f"{path}/deliveries/{UNKNOWN_DELIVERY}/retry"),
    ]
    for method, route in routes:
        response = api.anon.request(method, route, json={"webhook": {"url": HOOK}})
        assert response.status_code == 401, (method, route)
        assert response.json() == {"errors": ["Unauthorized"]}
        assert response.headers["WWW-Authenticate"].startswith("Bearer")
    assert api.http.get(path).json() == without_secret(webhook)  # untouched


def test_openapi_documents_every_webhook_route_and_object(api: Api) -> None:
    document = api.anon.get("/openapi.json").json()
    expected = {
        ("/v1/webhooks", "get"): {"200", "401", "422"},  # lists what the key may read
        ("/v1/webhooks", "post"): {"201", "401", "403", "422"},
        ("/v1/webhooks/{webhook_id}", "get"): {"200", "401", "403", "404"},
        ("/v1/webhooks/{webhook_id}", "put"): {"200", "401", "403", "404", "422"},
        ("/v1/webhooks/{webhook_id}", "patch"): {"200", "401", "403", "404", "422"},
        ("/v1/webhooks/{webhook_id}", "delete"): {"202", "401", "403", "404"},
        ("/v1/webhooks/{webhook_id}/rotate_secret", "post"): {"200", "401", "403", "404"},
        ("/v1/webhooks/{webhook_id}/deliveries", "get"): {"200", "401", "403", "404", "422"},
        ("/v1/webhooks/{webhook_id}/deliveries/{delivery_id}/retry", "post"): {
            "202",
            "401",
            "403",
            "404",
        },
    }
    found = {
        (path, method): set(operation["responses"])
        for path, operations in document["paths"].items()
        if path.startswith("/v1/webhooks")
        for method, operation in operations.items()
    }
    assert found == expected
    for path, method in expected:
        operation = document["paths"][path][method]
        assert operation["security"] == [{"HTTPBearer": []}]
        assert "x-required-scope" in operation, (path, method)
        for status in {"401", "403", "404", "422"} & set(operation["responses"]):
            schema = operation["responses"][status]["content"]["application/json"]["schema"]
            assert schema == {"$ref": "#/components/schemas/Errors"}, (path, method, status)
    schemas = document["components"]["schemas"]
    assert list(schemas["Webhook"]["properties"]) == WEBHOOK_FIELDS
    assert list(schemas["WebhookWithSecret"]["properties"]) == [*WEBHOOK_FIELDS, "secret"]
    assert list(schemas["WebhookDelivery"]["properties"]) == DELIVERY_FIELDS
    assert schemas["NewWebhook"]["required"] == ["url"]
    assert "required" not in schemas["WebhookChanges"]


def test_the_documented_reasons_are_the_events_reasons() -> None:
    assert get_args(models.EventReason) == REASONS
