"""What an admin key may do: its scopes, and the one rule that says whether they cover a need.

Scopes: `admin` (everything), `realms:read` (read every realm, key and webhook),
`realm:<realm id>:admin` (that realm's keys, policy, webhooks and events), `realm:<realm
id>:sign` (only that realm's signing endpoint) and `admin-keys` (manage admin keys, so as
strong as `admin`: it can make a key of any scope). Realm ids are never reused, so a scope
naming a deleted realm grants nothing.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Iterable
from dataclasses import dataclass
from enum import StrEnum

from worker.core.errors import InvalidInput

ADMIN = "admin"
REALMS_READ = "realms:read"
ADMIN_KEYS = "admin-keys"
MAX_SCOPES = 100
SCOPE = re.compile(r"admin|realms:read|admin-keys|realm:rl_[0-9A-Za-z]{22}:(?:admin|sign)")


class Action(StrEnum):
    READ = "read"  # see a realm, its keys, webhooks, events
    MANAGE = "manage"  # change a realm's keys, policy, webhooks
    SIGN = "sign"  # sign a token with a realm's active key
    ADMIN_KEYS = "admin-keys"  # manage admin keys
    ADMIN = "admin"  # everything else: create or delete realms, rotate every realm


@dataclass(frozen=True)
class Need:
    """What a request asks: an action, on one realm or (None) on no realm in particular."""

    action: Action
    realm_id: str | None = None


def check_scopes(scopes: object) -> list[str]:
    """Known scopes, without repeats, in a stable order; one line naming what is wrong."""
    if not isinstance(scopes, list | tuple) or not all(isinstance(s, str) for s in scopes):
        raise InvalidInput("Scopes must be a list of scope names")
    if not scopes:
        raise InvalidInput("Scopes can't be empty (admin is what a key without scopes has)")
    if len(scopes) > MAX_SCOPES:
        raise InvalidInput(f"Scopes may list at most {MAX_SCOPES}")
    for scope in scopes:
        if not SCOPE.fullmatch(scope):
            shown = scope[:60].encode("unicode_escape").decode("ascii")
            raise InvalidInput(
                f"Scope {shown!r} is not one of admin, realms:read, admin-keys,"
                " realm:<realm id>:admin, realm:<realm id>:sign"
            )
    return sorted(set(scopes))


def allows(scopes: Collection[str], need: Need) -> bool:
    """Whether a key with `scopes` may do what `need` asks."""
    if ADMIN in scopes:
        return True
    realm = need.realm_id
    match need.action:
        case Action.READ:
            return REALMS_READ in scopes or (realm is not None and f"realm:{realm}:admin" in scopes)
        case Action.MANAGE:
            return realm is not None and f"realm:{realm}:admin" in scopes
        case Action.SIGN:
            return realm is not None and f"realm:{realm}:sign" in scopes
        case Action.ADMIN_KEYS:
            return ADMIN_KEYS in scopes
        case _:
            return False


def readable_realms(scopes: Iterable[str]) -> set[str] | None:
    """The realms a listing may show: None for every realm (`admin`, `realms:read`)."""
    held = set(scopes)
    if held & {ADMIN, REALMS_READ}:
        return None
    return {s.split(":")[1] for s in held if s.startswith("realm:") and s.endswith(":admin")}


def describe(need: Action) -> str:
    """The scopes that grant an action, as the API documentation states them."""
    return {
        Action.READ: "admin, realms:read, or realm:<realm id>:admin for that realm",
        Action.MANAGE: "admin, or realm:<realm id>:admin for that realm",
        Action.SIGN: "admin, or realm:<realm id>:sign for that realm",
        Action.ADMIN_KEYS: "admin or admin-keys",
        Action.ADMIN: "admin",
    }[need]
