"""AuthRocket's JSON, produced once: what `worker.service.wire` makes is exactly what the
OpenAPI response models describe, in their order, for every algorithm and key state."""

from __future__ import annotations

from datetime import timedelta

from pydantic import BaseModel

from worker.core.lifecycle import State
from worker.http import models
from worker.service import RotationProgress, Service
from worker.service.wire import key_json, page_json, realm_json, rotation_json


def described(model: type[BaseModel], produced: dict[str, object]) -> dict[str, object]:
    """`produced` as the response model validates and serializes it."""
    return model.model_validate(produced).model_dump(mode="json")


def test_realm_json_is_the_documented_realm(service: Service) -> None:
    realm = service.create_realm("acme", algo="es256", grace=timedelta(hours=7))

    produced = realm_json(realm)

    assert list(produced) == list(models.Realm.model_fields)
    assert described(models.Realm, produced) == produced
    assert produced["grace"] == 7 * 3600
    assert produced["created_at"] == "2026-01-01T00:00:00Z"


def test_key_json_is_the_documented_key_in_every_state(service: Service) -> None:
    service.create_realm("acme", algo="es256")
    service.create_realm("hmac", algo="hs256")
    service.rotate("acme", force=True)  # the first key expires
    service.create_key("acme")  # pending

    page = service.list_keys()
    produced = page_json(page)

    assert described(models.JwtKeyPage, produced) == produced
    assert {key.state for key in page.collection} == set(State)
    for key in page.collection:
        item = key_json(key)
        assert list(item) == list(models.JwtKey.model_fields)
        assert item["object"] == "jwt_key"
        assert item["expired"] is (key.state is State.EXPIRED)
        assert item["key"] == key.key
    realms = page_json(service.list_realms())
    assert described(models.RealmPage, realms) == realms


def test_rotation_json_is_the_documented_rotation(service: Service) -> None:
    service.create_realm("acme", algo="es256")
    rotation = service.start_rotation("es256", "ac", service.clock())
    reported = RotationProgress(batches=1, rotated=1, failed=1, failed_realm_ids=["rl_x"])

    produced = rotation_json(rotation, reported)

    assert list(produced) == list(models.Rotation.model_fields)
    assert described(models.Rotation, produced) == produced
    assert produced["object"] == "rotation" and produced["state"] == "running"
    assert (produced["before"], produced["created_at"]) == ("2026-01-01T00:00:00Z",) * 2
    assert (produced["rotated"], produced["failed_realm_ids"]) == (1, ["rl_x"])
