"""Signing and verifying in process, against PyJWT with a key object already loaded; and
signing over HTTP, against a bare route that only encodes.

The signer and the key cache exist so that a token costs what PyJWT costs and no more: the
key is parsed once, the lookups are dictionary reads. The anchor is `jwt.encode` /
`jwt.decode` called directly with the same loaded key, timed in many short alternating
batches. Batches are timed in process CPU time: on a shared machine, wall time also counts
the moments another process held the core, which swamps a difference of a microsecond.

Over HTTP (`POST /v1/realms/<realm>/tokens`): the real app under uvicorn (`keyrotor web`, on
PostgreSQL and Redis) against `bench.servers sign-bare`, a FastAPI route that stamps `iat` and
`exp` and calls `jwt.encode` with the same ES256 key, loaded once, under the same uvicorn
settings. One httpx client with keep-alive posts the same body to each in turn, one request at
a time, with one admin token minted for the run; the ratio is the median of alternating pairs.
"""

from __future__ import annotations

import json
import os
import socket
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import httpx
import jwt

from bench.jwks_route import start_server
from bench.support import (
    RUNS,
    Deployment,
    Report,
    cpu_seconds,
    deployment,
    median,
    rate,
    sqlite_service,
    us,
    x,
)
from worker import runtime
from worker.client.signer import Signer
from worker.client.verifier import KeyCache
from worker.core.tokens import Stamp, token_claims
from worker.http.app import create_app
from worker.http.tokens import ActiveKeys
from worker.publish.jwks import publish_realm
from worker.service import Service
from worker.service.key_sources import ServiceKeys
from worker.store.admin_keys import AdminKeys

ALGOS = ("rs256", "es256", "eddsa", "hs256")
TARGET = 0.9
BATCH_SECONDS = 0.03
ROUNDS = max(RUNS, 31)
HTTP_TARGET = 0.8
HTTP_SECONDS = 2.0
IN_PROCESS_CALLS = 500
CLAIMS = {"sub": "user-1", "scope": "orders:read"}


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


@dataclass(frozen=True)
class OverHttp:
    real_per_s: list[float]
    bare_per_s: list[float]
    ratios: list[float]
    real_cpu: list[float]  # server CPU seconds per token
    bare_cpu: list[float]
    parts: dict[str, float]  # in-process seconds per call of the route's own steps


def http_client() -> httpx.Client:
    """Keep-alive, and TCP_NODELAY: httpx writes a request's headers and body separately, and
    Nagle's algorithm against the server's delayed ACK would hold each body ~40 ms."""
    nodelay = [(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)]
    return httpx.Client(transport=httpx.HTTPTransport(socket_options=nodelay), timeout=10)


def tokens_per_second(
    client: httpx.Client, url: str, headers: dict[str, str], body: bytes, pid: int, cpu: list[float]
) -> float:
    """Tokens a second for HTTP_SECONDS, one request at a time; the server's CPU seconds per
    token go to `cpu`."""
    count, spent = 0, cpu_seconds(pid)
    start = now = time.perf_counter()
    while now - start < HTTP_SECONDS:
        response = client.post(url, content=body, headers=headers)
        if response.status_code != 201:
            raise RuntimeError(f"{url}: {response.status_code} {response.text[:200]}")
        count += 1
        now = time.perf_counter()
    cpu.append((cpu_seconds(pid) - spent) / count)
    return count / (now - start)


def per_call(call: Callable[[], object]) -> float:
    """Median wall seconds of one call (these wait on the database or Redis: CPU time would
    leave the wait out)."""
    times = []
    for _ in range(IN_PROCESS_CALLS):
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
    return median(times)


def measure_http() -> OverHttp:
    with deployment("signing", log_level="WARNING") as dep:
        realm = dep.service.create_realm("bench-http", algo="es256")
        publish_realm(dep.service, runtime.publisher(dep.settings), realm.id)
        view, private_pem = AdminKeys(dep.service.sessions).create()
        assert private_pem is not None
        now = int(time.time())
        admin = jwt.encode(
            {"aud": [dep.settings.admin_audience], "iat": now, "exp": now + 900},
            private_pem,
            "RS256",
            headers={"kid": view["id"]},
        )
        active = dep.service.signing_key(realm.id)
        key_file = dep.folder / "es256.pem"
        key_file.write_bytes(active.secret)
        os.chmod(key_file, 0o600)
        body = json.dumps({"token": {"claims": CLAIMS, "ttl": "5m"}}).encode()
        headers = {"Authorization": f"Bearer {admin}", "Content-Type": "application/json"}
        path = f"/v1/realms/{realm.id}/tokens"
        real, real_url = start_server(dep, "keyrotor")
        bare, bare_url = start_server(dep, "sign-bare", str(key_file), active.kid)
        runs: dict[str, list[float]] = {"real": [], "bare": []}
        cpu: dict[str, list[float]] = {"real": [], "bare": []}
        try:
            with http_client() as client:
                answer = client.post(real_url + path, content=body, headers=headers)
                assert answer.status_code == 201, answer.text
                assert answer.json()["kid"] == active.kid
                for _ in range(RUNS):
                    for name, process, url in (("bare", bare, bare_url), ("real", real, real_url)):
                        runs[name].append(
                            tokens_per_second(
                                client, url + path, headers, body, process.popen.pid, cpu[name]
                            )
                        )
        finally:
            real.stop()
            bare.stop()
        parts = route_parts(dep, realm.id, admin)
    ratios = [r / b for r, b in zip(runs["real"], runs["bare"], strict=True)]
    return OverHttp(runs["real"], runs["bare"], ratios, cpu["real"], cpu["bare"], parts)


def route_parts(dep: Deployment, realm_id: str, admin: str) -> dict[str, float]:
    """The signing route's own steps, in this process, on the same deployment: where its time
    goes beyond the bare route's."""
    ctx = create_app(dep.settings, dep.service, redis_client=dep.redis).state.keyrotor
    active_keys = ActiveKeys(ctx)
    loaded = active_keys.current(realm_id)
    issuer = loaded.issuer
    assert issuer is not None

    def claims_and_encode() -> object:
        stamp = Stamp(issuer, int(time.time()), "tok_bench")
        claims = token_claims(CLAIMS, ttl="5m", max_ttl=loaded.max_token_ttl, stamp=stamp)
        return jwt.encode(claims, loaded.key, algorithm=loaded.alg, headers=loaded.header)

    return {
        "admin_token": per_call(lambda: ctx.authenticator.authenticate(f"Bearer {admin}")),
        "fresh_key": per_call(lambda: active_keys.current(realm_id)),
        "claims_and_encode": per_call(claims_and_encode),
    }


def report_http(report: Report, result: OverHttp) -> None:
    ratio = median(result.ratios)
    parts = result.parts
    report.add(
        "POST /v1/realms/<realm>/tokens, es256 / bare jwt.encode route",
        x(ratio),
        f"≥ {HTTP_TARGET}x",
        ratio >= HTTP_TARGET,
        f"{rate(median(result.real_per_s), ' tokens/s')} vs"
        f" {rate(median(result.bare_per_s), '/s')}; median of {RUNS} alternating pairs"
        f" ({', '.join(f'{r:.2f}' for r in result.ratios)})",
    )
    report.add(
        "server CPU per token: signing route vs bare route",
        f"{us(median(result.real_cpu))} vs {us(median(result.bare_cpu))}",
        note="user + system time of the uvicorn process",
    )
    report.add(
        "  the route's own steps, in process (wall time, median)",
        f"admin token {us(parts['admin_token'])}, fresh key {us(parts['fresh_key'])},"
        f" claims + encode {us(parts['claims_and_encode'])}",
        note="admin token: its key's database read + RS256 verification; fresh key: one Redis"
        " HGET of the realm's published jwks_version",
    )
    report.details.append(
        f"Over HTTP: one httpx client (keep-alive, TCP_NODELAY), one request at a time,"
        f" {HTTP_SECONDS:g} s per side per pair, PostgreSQL and Redis as `keyrotor web` uses"
        " them, both servers at log level WARNING."
    )
    report.data["http"] = asdict(result)


def run() -> Report:
    report = Report(
        "signing", "Signing (Signer, and over HTTP) and verifying (KeyCache) against raw PyJWT"
    )
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
    report_http(report, measure_http())
    return report
