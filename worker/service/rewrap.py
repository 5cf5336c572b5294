"""Master key rotation: re-seal every stored secret under the first master key."""

from __future__ import annotations

from collections.abc import Callable

from sqlalchemy import func, select

from worker.service.base import ServiceBase
from worker.store.db import transaction
from worker.store.models import JwtKey


class Rewrapping(ServiceBase):
    """Touches only sealed secrets: no key state, no `jwks_version`, no event."""

    def rewrap(
        self, *, batch: int = 200, progress: Callable[[int, int], None] | None = None
    ) -> int:
        """Re-seal every secret under the first master key, a committed batch at a time.

        Interrupted, it resumes where it stopped: keys already under the first master key are
        skipped. Returns how many keys it re-sealed.
        """
        with transaction(self.sessions, read_only=True) as session:
            total = int(session.scalar(select(func.count()).select_from(JwtKey)) or 0)
        done = rewrapped = 0
        after = ""
        while True:
            with transaction(self.sessions) as session:
                rows = list(
                    session.scalars(
                        select(JwtKey).where(JwtKey.id > after).order_by(JwtKey.id).limit(batch)
                    )
                )
                for row in rows:
                    if not self.master_keys.is_current(row.sealed_secret):
                        row.sealed_secret = self.master_keys.rewrap(
                            row.sealed_secret, realm_id=row.realm_id, key_id=row.id
                        )
                        rewrapped += 1
            if not rows:
                return rewrapped
            after = rows[-1].id
            done += len(rows)
            if progress is not None:
                progress(done, total)
