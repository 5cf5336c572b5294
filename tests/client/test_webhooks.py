"""Standard Webhooks signatures: ours round-trip, refuse what they should with one line, and
agree with the reference implementation both ways."""

from __future__ import annotations

import base64
import json
import secrets
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import pytest
from keyrotor_client import InvalidToken, InvalidWebhook, verify_webhook
from keyrotor_client.errors import InvalidInput
from keyrotor_client.webhooks import sign
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

Change = Callable[[dict[str, str], str], tuple[dict[str, str], str]]
BODY = json.dumps({"event_type": "realm.updated", "realm_id": "rl_1", "reason": "key.rotated"})


def new_secret() -> str:
    return "whsec_" + base64.b64encode(secrets.token_bytes(24)).decode()


def delivery(
    *secrets_: str, body: str = BODY, msg_id: str = "msg_1", at: int | None = None
) -> dict[str, str]:
    timestamp = int(time.time()) if at is None else at
    signatures = " ".join(sign(s, msg_id, timestamp, body.encode()) for s in secrets_)
    return {
        "webhook-id": msg_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": signatures,
    }


def test_a_signed_delivery_verifies_and_gives_the_event() -> None:
    secret = new_secret()
    headers = delivery(secret)
    assert headers["webhook-signature"].startswith("v1,")
    assert verify_webhook(secret, headers, BODY.encode()) == json.loads(BODY)
    assert verify_webhook(secret, headers, BODY) == json.loads(BODY)  # str bodies too
    shouting = {name.upper(): value for name, value in headers.items()}
    assert verify_webhook(secret, shouting, BODY) == json.loads(BODY)


def test_the_secret_may_come_without_its_prefix_or_padding() -> None:
    secret = new_secret()
    bare = secret.removeprefix("whsec_")
    headers = delivery(secret)
    assert verify_webhook(bare, headers, BODY)
    assert verify_webhook(bare.rstrip("="), headers, BODY)
    assert verify_webhook(base64.b64decode(bare), headers, BODY)  # the raw key


def test_two_signatures_either_secret_verifies_and_a_list_of_secrets_too() -> None:
    old, new = new_secret(), new_secret()
    both = delivery(old, new)
    assert len(both["webhook-signature"].split()) == 2
    assert verify_webhook(old, both, BODY)
    assert verify_webhook(new, both, BODY)
    # a receiver part way through the change holds both secrets; the sender signs with one
    assert verify_webhook([new_secret(), old], delivery(old), BODY)
    assert verify_webhook((new, old), delivery(new), BODY)


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        (lambda h, b: (h, b.replace("key.rotated", "key.revoked")), "signature does not match"),
        (lambda h, b: ({**h, "webhook-id": "msg_2"}, b), "signature does not match"),
        (lambda h, b: ({**h, "webhook-signature": "v2,abc"}, b), "has no v1 signature"),
        (lambda h, b: ({**h, "webhook-signature": "v1,***"}, b), "signature does not match"),
        (lambda h, b: ({**h, "webhook-timestamp": "soon"}, b), "is not Unix seconds"),
        (
            lambda h, b: ({k: v for k, v in h.items() if k != "webhook-signature"}, b),
            "webhook-signature header is missing",
        ),
        (
            lambda h, b: ({k: v for k, v in h.items() if k != "webhook-id"}, b),
            "webhook-id header is missing",
        ),
        (
            lambda h, b: ({k: v for k, v in h.items() if k != "webhook-timestamp"}, b),
            "webhook-timestamp header is missing",
        ),
    ],
    ids=[
        "tampered body",
        "other id",
        "no v1",
        "not base64",
        "bad timestamp",
        "no signature",
        "no id",
        "no timestamp",
    ],
)
def test_what_does_not_verify_is_refused_in_one_line(change: Change, reason: str) -> None:
    secret = new_secret()
    headers, body = change(delivery(secret), BODY)
    with pytest.raises(InvalidWebhook, match=reason) as refused:
        verify_webhook(secret, headers, body)
    assert "\n" not in str(refused.value)
    assert secret.removeprefix("whsec_") not in str(refused.value)


def test_a_wrong_secret_is_refused_and_not_named() -> None:
    signed_with, tried = new_secret(), new_secret()
    with pytest.raises(InvalidWebhook, match="signature does not match") as refused:
        verify_webhook(tried, delivery(signed_with), BODY)
    for secret in (signed_with, tried):
        assert secret.removeprefix("whsec_") not in str(refused.value)
    assert isinstance(refused.value, InvalidToken)  # one except clause catches both


def test_old_and_future_timestamps_are_refused_beyond_the_tolerance() -> None:
    secret = new_secret()
    now = datetime(2026, 1, 1, tzinfo=UTC)
    at = int(now.timestamp())
    for offset in (-299, 0, 299):
        assert verify_webhook(secret, delivery(secret, at=at + offset), BODY, now=now)
    with pytest.raises(InvalidWebhook, match="too old"):
        verify_webhook(secret, delivery(secret, at=at - 301), BODY, now=now)
    with pytest.raises(InvalidWebhook, match="in the future"):
        verify_webhook(secret, delivery(secret, at=at + 301), BODY, now=now)
    wider = timedelta(minutes=10)
    assert verify_webhook(secret, delivery(secret, at=at - 500), BODY, tolerance=wider, now=now)


def test_a_body_that_is_not_a_json_object_is_refused_after_the_signature() -> None:
    secret = new_secret()
    for body, reason in (("not json", "is not JSON"), ("[1, 2]", "not a JSON object")):
        with pytest.raises(InvalidWebhook, match=reason):
            verify_webhook(secret, delivery(secret, body=body), body)


def test_a_malformed_or_missing_secret_is_the_callers_mistake() -> None:
    headers = delivery(new_secret())
    for secret in ("whsec_not base64!", "whsec_", b""):
        with pytest.raises(InvalidInput, match="Webhook secret"):
            verify_webhook(secret, headers, BODY)
    with pytest.raises(InvalidInput, match="No webhook secret"):
        verify_webhook([], headers, BODY)


def test_the_reference_implementation_verifies_ours_and_ours_verifies_theirs() -> None:
    secret = new_secret()
    ours = delivery(secret, msg_id="msg_ours")
    assert Webhook(secret).verify(BODY.encode(), ours) == json.loads(BODY)
    with pytest.raises(WebhookVerificationError):
        Webhook(new_secret()).verify(BODY.encode(), ours)

    now = datetime.now(UTC)
    reference = Webhook(secret)
    theirs = {
        "webhook-id": "msg_theirs",
        "webhook-timestamp": str(int(now.timestamp())),
        "webhook-signature": reference.sign("msg_theirs", now, BODY),
    }
    assert verify_webhook(secret, theirs, BODY.encode()) == json.loads(BODY)
    # the same bytes signed, whoever signs
    assert theirs["webhook-signature"] == sign(secret, "msg_theirs", int(now.timestamp()), BODY)
