"""The pool of ready RSA keys: made in the background, so a rotation, a revocation or a new
realm stores one at once instead of waiting 40 ms to over a second for RSA generation.

A pooled key belongs to no realm, so it is in no JWKS, event or listing. Its secret is sealed
like a realm key's, with `keys.POOL_REALM` in place of the realm id; the realm that takes it
seals it again under its own ids, in the same transaction that deletes it from the pool.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any, cast

from sqlalchemy import CursorResult, delete, func, select
from sqlalchemy.orm import Session

from worker.core import ids, keys
from worker.core.errors import SealError
from worker.service.base import ServiceBase
from worker.store.db import transaction
from worker.store.models import PooledKey, Realm

log = logging.getLogger("keyrotor.pool")


class KeyPool(ServiceBase):
    """Fills the pool, counts and empties it, and hands its keys out once each."""

    def _take_pooled(
        self, session: Session, algo: str, rsa_bits: int, count: int
    ) -> list[keys.KeyMaterial]:
        """Up to `count` pooled keys of this kind, deleted in the caller's transaction: used
        once, and back in the pool if that transaction rolls back.

        `SKIP LOCKED` lets two takers on PostgreSQL take different keys without waiting (SQLite
        serialises writers anyway). A key that no longer opens (sealed under a master key
        since removed) is dropped with the rest: the caller generates in its place, so a stale
        pool never stops a rotation or a revocation.
        """
        if algo not in keys.POOLED_ALGOS or count <= 0:
            return []
        query = (
            select(PooledKey.id, PooledKey.public_pem, PooledKey.sealed_secret)
            .where(PooledKey.algo == algo, PooledKey.rsa_bits == rsa_bits)
            .order_by(PooledKey.id)
            .limit(count)
            .with_for_update(skip_locked=True)
        )
        rows = list(session.execute(query))
        if not rows:
            return []
        taken = [row.id for row in rows]
        session.execute(
            delete(PooledKey).where(PooledKey.id.in_(taken)),
            execution_options={"synchronize_session": False},
        )
        made = []
        for pooled_id, public_pem, sealed in rows:
            try:
                secret = self.master_keys.open(sealed, realm_id=keys.POOL_REALM, key_id=pooled_id)
            except SealError:
                log.warning("dropped pooled key %s: it does not open", pooled_id)
                continue
            made.append(keys.KeyMaterial(algo, secret, public_pem))
        return made

    def fill_pool(self, size: int, *, wanted: Iterable[tuple[str, int]] | None = None) -> int:
        """Bring the pool to `size` keys for each RSA (algo, rsa_bits) a realm uses, and for
        each of `wanted` (the default policy's, so the first realm finds a key ready); other
        algos are ignored. Returns how many keys it made; `size` 0 makes none.

        Keys are generated outside any transaction and each is committed in its own short one,
        so takers use the first while the rest are made and a crash loses at most one. Each
        commit re-counts first: two fills at once stop at `size` on SQLite and overshoot by
        at most one key per extra fill on PostgreSQL (harmless: the surplus is used first).
        """
        if size <= 0:
            return 0
        with transaction(self.sessions, read_only=True) as session:
            in_use = select(Realm.algo, Realm.rsa_bits).where(Realm.algo.in_(keys.POOLED_ALGOS))
            kinds = {(algo, bits) for algo, bits in session.execute(in_use.distinct())}
            held = _counts(session)
        kinds |= {(algo, bits) for algo, bits in wanted or () if algo in keys.POOLED_ALGOS}
        made = 0
        for algo, bits in sorted(kinds):
            for _ in range(size - held.get((algo, bits), 0)):
                if not self._add_pooled(keys.generate(algo, bits), bits, size):
                    break
                made += 1
        return made

    def pool_counts(self) -> dict[tuple[str, int], int]:
        """Pooled keys by (algo, rsa_bits), for the doctor, metrics and the CLI."""
        with transaction(self.sessions, read_only=True) as session:
            return _counts(session)

    def empty_pool(self) -> int:
        """Delete every pooled key; returns how many. After a leak of the database or a master
        key the pool is as exposed as the realm keys: empty it before rotating them."""
        with transaction(self.sessions) as session:
            result = session.execute(delete(PooledKey))
            return cast("CursorResult[Any]", result).rowcount

    def _add_pooled(self, material: keys.KeyMaterial, rsa_bits: int, size: int) -> bool:
        """Commit one generated key unless the pool of its kind is full meanwhile."""
        kind = (PooledKey.algo == material.algo, PooledKey.rsa_bits == rsa_bits)
        with transaction(self.sessions) as session:
            if (
                session.scalar(select(func.count()).select_from(PooledKey).where(*kind)) or 0
            ) >= size:
                return False
            pooled_id = ids.pooled_key_id()
            assert material.public_pem is not None  # RSA keys have a public half
            session.add(
                PooledKey(
                    id=pooled_id,
                    algo=material.algo,
                    rsa_bits=rsa_bits,
                    public_pem=material.public_pem,
                    sealed_secret=self.master_keys.seal(
                        material.secret, realm_id=keys.POOL_REALM, key_id=pooled_id
                    ),
                    created_at=self.clock(),
                )
            )
        return True


def _counts(session: Session) -> dict[tuple[str, int], int]:
    query = select(PooledKey.algo, PooledKey.rsa_bits, func.count()).group_by(
        PooledKey.algo, PooledKey.rsa_bits
    )
    return {(algo, bits): int(n) for algo, bits, n in session.execute(query)}
