"""Request and response bodies of the HTTP API, so `/openapi.json` says exactly what is served.

The response models describe what `worker.service.wire` produces, field for field and in
order (a test checks); they validate answers but build none. Requests use AuthRocket's
envelopes, `{"jwt_key": {...}}`, `{"realm": {...}}`, `{"rotation": {...}}` and
`{"webhook": {...}}`.
"""

from __future__ import annotations

from typing import Annotated, Literal, NotRequired, get_args

from pydantic import BaseModel, ConfigDict, Field
from typing_extensions import TypedDict

from worker.core import keys
from worker.core.webhooks import MAX_URL

Timestamp = Annotated[str, Field(json_schema_extra={"format": "date-time"})]
Duration = Annotated[
    int | str,
    Field(description="Seconds, or a duration written `30d`, `6h`, `5m`, `90s` (or `1h30m`)."),
]
DURATION_FIELDS = ("rotation_period", "prepublish", "grace", "max_token_ttl")
"""The `RealmPolicy` fields of type `Duration`: parsed by `worker.http.admin`."""
ALGO_HELP = f"One of {', '.join(f'`{algo}`' for algo in keys.ALGOS)} (any case)."


class Errors(BaseModel):
    """Every refusal: one or more sentences for a person."""

    errors: list[str] = Field(examples=[["Algo can't be blank"]])


class JwtKey(BaseModel):
    id: str = Field(examples=["jky_0vRHaJyOFdkV3QVJpUJqJQ"])
    object: Literal["jwt_key"]
    realm_id: str
    algo: keys.Algo
    use: Literal["sign"]
    state: Literal["pending", "active", "expired"]
    expired: bool = Field(description="True when `state` is `expired`.")
    key: str = Field(
        description="The public key as PEM; for an `hs256` key, the secret. Never a private key."
    )
    created_at: Timestamp
    activated_at: Timestamp | None
    expired_at: Timestamp | None
    delete_after: Timestamp | None = Field(
        description="When an expired key leaves the JWKS and is deleted."
    )


class JwtKeyPage(BaseModel):
    more_results: bool = Field(description="True when another page follows; pass `after`.")
    collection: list[JwtKey]


class Realm(BaseModel):
    id: str = Field(examples=["rl_0v1zTHXhtNgmDaXaDYSAqx"])
    name: str
    algo: keys.Algo
    rsa_bits: int
    rotation_period: int = Field(description="Seconds a key signs.")
    prepublish: int = Field(description="Seconds a new key is in the JWKS before it signs.")
    grace: int = Field(description="Seconds a retired key keeps verifying.")
    max_token_ttl: int = Field(description="Seconds: the longest token the realm may sign.")
    jwks_version: int
    next_rotation_at: Timestamp | None
    created_at: Timestamp
    updated_at: Timestamp


class RealmPage(BaseModel):
    more_results: bool
    collection: list[Realm]


class NewJwtKey(BaseModel):
    model_config = ConfigDict(extra="forbid")

    realm_id: str = Field(description="The realm, by id or name.")
    algo: str = Field(description=ALGO_HELP)
    use: Literal["sign"] = "sign"
    key: str | None = Field(
        default=None,
        max_length=keys.MAX_IMPORT_CHARS,
        description="Import this key (a PEM private key, or an hs256 secret of at least 256"
        " bits) instead of generating one.",
    )
    activate: bool = Field(
        default=False, description="Sign with it at once, expiring the active key."
    )


class NewJwtKeyEnvelope(BaseModel):
    model_config = ConfigDict(extra="forbid")

    jwt_key: NewJwtKey


class RealmPolicy(BaseModel):
    """Fields left out (or null) keep their current value, or the default for a new realm."""

    model_config = ConfigDict(extra="forbid")

    algo: str | None = Field(default=None, description=ALGO_HELP)
    rotation_period: Duration | None = None
    prepublish: Duration | None = None
    grace: Duration | None = None
    max_token_ttl: Duration | None = None
    rsa_bits: int | None = Field(
        default=None, description=f"One of {', '.join(map(str, keys.RSA_BITS))}."
    )


class NewRealm(RealmPolicy):
    name: str = Field(
        description="1-100 letters, digits, `.`, `_` or `-`; usable wherever an id is."
    )


class NewRealmEnvelope(BaseModel):
    model_config = ConfigDict(extra="forbid")

    realm: NewRealm


class RealmPolicyEnvelope(BaseModel):
    model_config = ConfigDict(extra="forbid")

    realm: RealmPolicy


class Rotation(BaseModel):
    """A `rotate --all` (or `POST /v1/rotations`) and how far its batches have got."""

    id: str = Field(examples=["rot_0vSb3RMdQh1XYEdDoJGh4P"])
    object: Literal["rotation"]
    algo: keys.Algo | None = Field(description="Only realms of this algo; null: every algo.")
    realm_prefix: str | None = Field(
        description="Only realms whose name starts with this; null: every realm."
    )
    before: Timestamp = Field(
        description="The cut-off: a realm whose active key began signing before it is rotated."
    )
    total: int = Field(description="Realms covered when the rotation started.")
    rotated: int = Field(
        description="Realms rotated, by this rotation or (since the cut-off) by anything else."
    )
    skipped: int = Field(description="Realms gone, or without an active key, when their turn came.")
    failed: int = Field(description="Realms whose rotation failed; a rerun retries them.")
    failed_realm_ids: list[str] = Field(description="The failed realms (at most 1,000 of them).")
    state: Literal["queued", "running", "done"] = Field(
        description="`done` once every batch has been rotated, published and relayed."
    )
    created_at: Timestamp


class NewRotation(BaseModel):
    model_config = ConfigDict(extra="forbid")

    algo: str | None = Field(default=None, description=f"Only realms of this algo. {ALGO_HELP}")
    realm_prefix: str | None = Field(
        default=None,
        max_length=100,
        description="Only realms whose name starts with this (letters, digits, `.`, `_`, `-`).",
    )
    before: Timestamp | None = Field(
        default=None,
        max_length=64,
        description="The cut-off, RFC 3339 with an offset, not in the future (default: now).",
    )


class NewRotationEnvelope(BaseModel):
    model_config = ConfigDict(extra="forbid")

    rotation: NewRotation


class Health(BaseModel):
    status: Literal["ok", "unavailable"]
    checks: dict[str, str] = Field(examples=[{"database": "ok", "redis": "ok"}])


class Jwk(TypedDict):
    """Public parameters only: `n`, `e` for RSA; `crv`, `x`, `y` for EC; `crv`, `x` for OKP."""

    kty: Literal["RSA", "EC", "OKP"]
    kid: str
    use: Literal["sig"]
    alg: keys.PublicAlg
    n: NotRequired[str]
    e: NotRequired[str]
    crv: NotRequired[Literal["P-256", "Ed25519"]]
    x: NotRequired[str]
    y: NotRequired[str]


class JwkSet(BaseModel):
    keys: list[Jwk]


class OpenIdConfiguration(BaseModel):
    """The part of OpenID Connect Discovery a token verifier reads: who issues the realm's
    tokens and where their keys are."""

    issuer: str = Field(
        description="`<KEYROTOR_PUBLIC_URL>/realms/<name>`: the `iss` of the realm's tokens.",
        examples=["https://keys.example.com/realms/acme"],
    )
    jwks_uri: str = Field(examples=["https://keys.example.com/realms/acme/.well-known/jwks.json"])
    response_types_supported: list[Literal["id_token"]]
    subject_types_supported: list[Literal["public"]]
    id_token_signing_alg_values_supported: list[keys.PublicAlg] = Field(
        description="The `alg` of every key the realm's JWKS lists: what its tokens may carry."
    )


EventReason = Literal[
    "realm.created",
    "realm.policy_changed",
    "key.created",
    "key.activated",
    "key.rotated",
    "key.expired",
    "key.deleted",
    "key.revoked",
]
"""`keyrotor_client.events.REASONS`, spelled out for the schema (a test checks they agree)."""
REASONS_HELP = (
    "Only events with one of these reasons; null: every reason. One or more of "
    + ", ".join(f"`{reason}`" for reason in get_args(EventReason))
    + "."
)
# Requests take any strings here, so the service can name the unknown ones; the schema still
# lists the reasons.
RequestReason = Annotated[str, Field(json_schema_extra={"enum": list(get_args(EventReason))})]
WEBHOOK_URL_HELP = (
    "Where deliveries are POSTed: https:// (http:// only with KEYROTOR_WEBHOOK_ALLOW_HTTP), to"
    " a host whose every address is public (unless KEYROTOR_WEBHOOK_ALLOW_PRIVATE)."
)
REALM_FILTER_HELP = "Only this realm's events (id or name; answered as the id); null: every realm."


class Webhook(BaseModel):
    """An endpoint that receives realm events over HTTP, signed as Standard Webhooks."""

    id: str = Field(examples=["whk_0vSb3RMdQh1XYEdDoJGh4P"])
    object: Literal["webhook"]
    url: str
    realm_id: str | None = Field(description="Only this realm's events; null: every realm.")
    reasons: list[EventReason] | None = Field(
        description="Only events with these reasons; null: every reason."
    )
    enabled: bool = Field(
        description="False: nothing is sent. Set false by keyrotor after an endpoint has failed"
        " for KEYROTOR_WEBHOOK_RETRY_FOR."
    )
    created_at: Timestamp


class WebhookWithSecret(Webhook):
    """A webhook as created or with a new secret: the one answer that carries the secret."""

    secret: str = Field(
        description="`whsec_` and the base64 of 32 random bytes: the key of the deliveries'"
        " HMAC-SHA256 signatures. Shown only in this answer.",
        examples=["whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw8zPGvLxjUcU="],
    )


class WebhookPage(BaseModel):
    more_results: bool
    collection: list[Webhook]


class WebhookDelivery(BaseModel):
    """One event sent (or to be sent) to one webhook, and how its attempts went."""

    id: str = Field(examples=["whd_0vSb3RMdQh1XYEdDoJGh4P"])
    object: Literal["webhook_delivery"]
    webhook_id: str
    event_id: str | None = Field(
        description="The event sent (the `webhook-id` header); null for a `webhook.disabled`"
        " entry, which records why the webhook was disabled."
    )
    state: Literal["pending", "delivered", "failed"] = Field(
        description="`failed`: given up after KEYROTOR_WEBHOOK_RETRY_FOR (or the webhook was"
        " disabled); a retry makes it `pending` again."
    )
    attempts: int
    last_status: int | None = Field(description="The HTTP status of the last attempt.")
    last_error: str | None = Field(
        description="Why the last attempt failed: `HTTP 500`, a timeout, a refused address."
    )
    next_attempt_at: Timestamp | None = Field(description="When it is tried next, if pending.")
    delivered_at: Timestamp | None
    created_at: Timestamp


class WebhookDeliveryPage(BaseModel):
    more_results: bool
    collection: list[WebhookDelivery]


class NewWebhook(BaseModel):
    model_config = ConfigDict(extra="forbid")

    url: str = Field(max_length=MAX_URL, description=WEBHOOK_URL_HELP)
    realm_id: str | None = Field(default=None, description=REALM_FILTER_HELP)
    reasons: list[RequestReason] | None = Field(default=None, description=REASONS_HELP)
    enabled: bool = Field(default=True, description="False: create it without sending yet.")


class NewWebhookEnvelope(BaseModel):
    model_config = ConfigDict(extra="forbid")

    webhook: NewWebhook


class WebhookChanges(BaseModel):
    """Only the fields given change; `realm_id` and `reasons` given as null mean every realm
    and every reason (`url` and `enabled` cannot be null)."""

    model_config = ConfigDict(extra="forbid")

    url: str | None = Field(default=None, max_length=MAX_URL, description=WEBHOOK_URL_HELP)
    realm_id: str | None = Field(default=None, description=REALM_FILTER_HELP)
    reasons: list[RequestReason] | None = Field(default=None, description=REASONS_HELP)
    enabled: bool | None = Field(
        default=None,
        description="False: stop sending; true: send again, with a fresh retry window.",
    )


class WebhookChangesEnvelope(BaseModel):
    model_config = ConfigDict(extra="forbid")

    webhook: WebhookChanges


SCOPES_HELP = (
    "What the key's tokens may do: `admin` (everything), `realms:read`, `admin-keys`,"
    " `realm:<realm id>:admin`, `realm:<realm id>:sign`."
)


class AdminKey(BaseModel):
    id: str = Field(examples=["aky_0vRHaJyOFdkV3QVJpUJqJQ"])
    object: Literal["admin_key"]
    fingerprint: str = Field(description="`SHA256:<base64>` of the DER public key, as ssh prints.")
    public_key: str = Field(
        description="The RSA public key as PEM; the private half is never kept."
    )
    scopes: list[str] = Field(
        description=SCOPES_HELP, examples=[["realm:rl_0v1zTHXhtNgmDaXaDYSAqx:admin"]]
    )
    created_at: Timestamp


class AdminKeyPage(BaseModel):
    more_results: bool
    collection: list[AdminKey]


class NewAdminKey(BaseModel):
    model_config = ConfigDict(extra="forbid")

    public_key: str = Field(
        max_length=keys.MAX_IMPORT_CHARS,
        description=f"An RSA public key (PEM, at least {keys.MIN_RSA_BITS} bits); its private"
        " half stays with you.",
    )
    scopes: list[str] = Field(default=["admin"], description=SCOPES_HELP)


class NewAdminKeyEnvelope(BaseModel):
    model_config = ConfigDict(extra="forbid")

    admin_key: NewAdminKey
