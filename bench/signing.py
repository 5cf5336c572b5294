"""Signing and verifying in process, against PyJWT with a key object already loaded.

The signer and the key cache exist so that a token costs what PyJWT costs and no more: the
key is parsed once, the lookups are dictionary reads. The anchor is `jwt.encode` /
`jwt.decode` called directly with the same loaded key, timed in many short alternating
batches. Batches are timed in process CPU time: on a shared machine, wall time also counts
the moments another process held the core, which swamps a difference of a microsecond.
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import jwt

from bench.support import RUNS, Report, median, rate, sqlite_service, x
from worker.client.signer import Signer
from worker.client.verifier import KeyCache
from worker.service import Service
from worker.service.key_sources import ServiceKeys

ALGOS = ("rs256", "es256", "eddsa", "hs256")
TARGET = 0.9
BATCH_SECONDS = 0.03
ROUNDS = max(RUNS, 31)


def per_second(call: Callable[[], object], count: int) -> float:
    """Calls per second of this process's CPU time."""
    start = time.process_time()
    for _ in range(count):
        call()
    return count / (time.process_time() - start)


def batch_size(call: Callable[[], object]) -> int:
    """Calls that take about BATCH_SECONDS, so every batch is long enough to time."""
    return max(50, int(per_second(call, 50) * BATCH_SECONDS))


@dataclass(frozen=True)
class Comparison:
    anchor_per_s: float
    subject_per_s: float
    ratio: float
    ratios: list[float]


def compare(subject: Callable[[], object], anchor: Callable[[], object]) -> Comparison:
    """Alternate anchor and subject batches; the median rate of each and of the pair ratios."""
    count = batch_size(anchor)
    anchors, subjects, ratios = [], [], []
    for _ in range(ROUNDS):
        a = per_second(anchor, count)
        s = per_second(subject, count)
        anchors.append(a)
        subjects.append(s)
        ratios.append(s / a)
    return Comparison(
        median(anchors), median(subjects), median(ratios), [round(r, 3) for r in ratios]
    )


def measure(service: Service, signer: Signer, cache: KeyCache, algo: str) -> dict[str, Comparison]:
    """One realm of `algo`: the signer against raw and hand-stamped encoding, the key cache
    against raw decoding, all with the very key objects the signer and cache hold."""
    realm = service.create_realm(f"bench-{algo}", algo=algo).id
    token = signer.sign(realm, {"sub": "user-1"})
    loaded = signer.loaded(realm)
    cache.verify(realm, token)
    verifying = cache.key(realm, loaded.kid)
    now = int(time.time())
    payload = {"sub": "user-1", "iat": now, "exp": now + 3600}
    headers = {"kid": loaded.kid}

    def raw_encode() -> object:
        return jwt.encode(payload, loaded.key, algorithm=loaded.alg, headers=headers)

    def raw_decode() -> object:
        return jwt.decode(token, verifying.key, algorithms=[verifying.alg])

    def stamp_and_encode() -> object:
        """What a hand-written signer must do at least: stamp iat and exp, encode."""
        issued = int(time.time())
        claims = {"sub": "user-1", "iat": issued, "exp": issued + 3600}
        return jwt.encode(claims, loaded.key, algorithm=loaded.alg, headers=headers)

    def sign() -> object:
        return signer.sign(realm, {"sub": "user-1"})

    def verify() -> object:
        return cache.verify(realm, token)

    return {
        "sign": compare(sign, raw_encode),
        "sign_vs_stamping": compare(sign, stamp_and_encode),
        "verify": compare(verify, raw_decode),
    }


def run() -> Report:
    report = Report("signing", "Signing (Signer) and verifying (KeyCache) against raw PyJWT")
    results: dict[str, dict[str, Comparison]] = {"sign": {}, "sign_vs_stamping": {}, "verify": {}}
    with tempfile.TemporaryDirectory(prefix="kr-signing-") as folder:
        service = sqlite_service(Path(folder))
        signer = Signer(service)
        cache = KeyCache(ServiceKeys(service))
        for algo in ALGOS:
            for what, comparison in measure(service, signer, cache, algo).items():
                results[what][algo] = comparison

    for what, label, anchor in (
        ("sign", "Signer.sign", "jwt.encode"),
        ("verify", "KeyCache.verify", "jwt.decode"),
    ):
        for algo, result in results[what].items():
            note = f"{rate(result.subject_per_s)} vs {rate(result.anchor_per_s)}"
            if what == "sign":
                stamping = results["sign_vs_stamping"][algo].ratio
                note += f"; {x(stamping)} of stamping iat/exp + jwt.encode by hand"
            report.add(
                f"{label} {algo} / raw {anchor}",
                x(result.ratio),
                f"≥ {TARGET}x",
                result.ratio >= TARGET,
                note,
            )
    report.details.append(
        f"Each ratio is the median of {ROUNDS} alternating pairs of batches timed in process CPU"
        " time. The raw jwt.encode anchor encodes a payload built once; a signer must stamp iat"
        " and exp on every token, which the 'by hand' ratio isolates."
    )
    for what in results:
        report.data[what] = {algo: asdict(result) for algo, result in results[what].items()}
    return report
