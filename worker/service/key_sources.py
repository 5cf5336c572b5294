"""Verifying keys read from the database rather than a published JWKS."""

from __future__ import annotations

from typing import Any

from keyrotor_client.verifier import KeySet, VerifyingKey

from worker.core import keys
from worker.service import Service


class ServiceKeys:
    """Every key of a realm straight from the database, HMAC secrets included: for trusted
    in-process callers such as `keyrotor token verify`."""

    def __init__(self, service: Service) -> None:
        self.service = service

    def fetch(self, realm: str) -> KeySet:
        version = self.service.get_realm(realm).jwks_version
        found: dict[str, VerifyingKey] = {}
        after = None
        while True:
            page = self.service.list_keys(realm=realm, after=after, direction="asc")
            for view in page.collection:
                key: Any = (
                    view.key.encode()
                    if view.algo == "hs256"
                    else keys.load_verifying_key(view.algo, view.key)
                )
                found[view.id] = VerifyingKey(view.id, keys.JWT_ALG[view.algo], key)
            if not page.more_results:
                return KeySet(found, version)
            after = page.collection[-1].id
