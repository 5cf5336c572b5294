"""Master key rotation: re-seal every stored secret (keys, pooled keys, webhook secrets) under
the first master key."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from itertools import chain
from typing import TypeVar

from sqlalchemy import func, select

from worker.core import keys
from worker.core.errors import SealError
from worker.service.base import ServiceBase
from worker.service.webhooks import SEALED_AS
from worker.store.db import transaction
from worker.store.models import JwtKey, PooledKey, Webhook

Sealed = TypeVar("Sealed", JwtKey, PooledKey, Webhook)
SEALED = (JwtKey, PooledKey, Webhook)


class Rewrapping(ServiceBase):
    """Touches only sealed secrets: no key state, no `jwks_version`, no event."""

    def rewrap(
        self, *, batch: int = 200, progress: Callable[[int, int], None] | None = None
    ) -> int:
        """Re-seal every secret, realm keys, pooled keys then webhook secrets, under the first
        master key, a committed batch at a time.

        Interrupted, it resumes where it stopped: keys already under the first master key are
        skipped. Returns how many keys it re-sealed.
        """
        with transaction(self.sessions, read_only=True) as session:
            total = sum(
                int(session.scalar(select(func.count()).select_from(model)) or 0)
                for model in SEALED
            )
        done = rewrapped = 0
        pages = chain(
            self._rewrap_pages(JwtKey, batch),
            self._rewrap_pages(PooledKey, batch),
            self._rewrap_pages(Webhook, batch),
        )
        for read, resealed in pages:
            done += read
            rewrapped += resealed
            if progress is not None:
                progress(done, total)
        return rewrapped

    def _reseal(self, row: JwtKey | PooledKey | Webhook, sealed: bytes) -> bytes:
        return self.master_keys.rewrap(sealed, realm_id=_sealed_for(row), key_id=row.id)

    def _rewrap_pages(self, model: type[Sealed], batch: int) -> Iterator[tuple[int, int]]:
        """One table's rows in id order, a committed batch at a time; yields (read, re-sealed).

        Each batch locks its rows, so a key purged or taken from the pool meanwhile is waited
        for and left out, not written back. A pooled key that does not open is deleted (a realm
        key is not: that is an error): it never signed anything, and the pool refills.
        """
        after = ""
        while True:
            resealed = 0
            with transaction(self.sessions) as session:
                query = select(model).where(model.id > after).order_by(model.id).limit(batch)
                rows = list(session.scalars(query.with_for_update()))
                for row in rows:
                    if self.master_keys.is_current(row.sealed_secret):
                        continue
                    try:
                        row.sealed_secret = self._reseal(row, row.sealed_secret)
                        if isinstance(row, Webhook) and row.previous_sealed_secret is not None:
                            row.previous_sealed_secret = self._reseal(
                                row, row.previous_sealed_secret
                            )
                        resealed += 1
                    except SealError:
                        if not isinstance(row, PooledKey):
                            raise
                        session.delete(row)
            if not rows:
                return
            after = rows[-1].id
            yield len(rows), resealed


def _sealed_for(row: JwtKey | PooledKey | Webhook) -> str:
    """The realm part a row's secret is sealed with: its realm's id, the pool's or webhooks'."""
    if isinstance(row, JwtKey):
        return row.realm_id
    return keys.POOL_REALM if isinstance(row, PooledKey) else SEALED_AS
