"""The JWKS route under load, against a bare route answering constant bytes.

Both run under uvicorn, one process each, with the same settings; they take turns under the
same load (wrk when installed, else the asyncio client in bench/load.py). The 304 path sends
the current ETag in `If-None-Match`. Latency is measured open-loop at half the rate the
JWKS route saturates at.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import httpx

from bench.load import WRK, closed_loop_rate, open_loop_latencies, wrk_rate
from bench.support import (
    RUNS,
    Deployment,
    Process,
    Report,
    cpu_seconds,
    deployment,
    free_port,
    median,
    ms,
    percentile,
    rate,
    spawn,
    us,
    wait_for,
    x,
)
from worker import runtime
from worker.publish.jwks import body, publish_realm

TARGET = 0.8
SECONDS = 3.0
CONNECTIONS = 16
LATENCY_SECONDS = 3.0
STEPS = ("bare-headers", "fastapi-async", "fastapi-sync")


def start_server(dep: Deployment, kind: str, *extra: str) -> tuple[Process, str]:
    port = free_port()
    argv = [sys.executable, "-m", "bench.servers", kind, str(port), *extra]
    process = spawn(f"http-{kind}", argv, dep.env, dep.folder)
    url = f"http://127.0.0.1:{port}"

    def answers() -> bool:
        if process.popen.poll() is not None:
            raise RuntimeError(f"{kind} server exited:\n{process.log()[-2000:]}")
        try:
            return httpx.get(url + "/", timeout=1).status_code > 0
        except httpx.HTTPError:
            return False

    try:
        wait_for(answers, 30, f"the {kind} server")
    except BaseException:
        process.stop()
        raise
    return process, url


def saturate(url: str, headers: dict[str, str] | None = None) -> float:
    if WRK is not None:
        return wrk_rate(url, SECONDS, CONNECTIONS, headers or {})
    return closed_loop_rate(url, SECONDS, CONNECTIONS, headers or {})


def saturate_counting(server: Process, url: str, cpu: list[float]) -> float:
    """`saturate`, also noting the server's CPU seconds per request in `cpu`."""
    before, started = cpu_seconds(server.popen.pid), time.perf_counter()
    per_second = saturate(url)
    spent, elapsed = cpu_seconds(server.popen.pid) - before, time.perf_counter() - started
    cpu.append(spent / (per_second * elapsed))
    return per_second


def run() -> Report:
    report = Report("jwks_route", "JWKS route under load vs a bare route (uvicorn, 1 worker)")
    with deployment("jwks", log_level="WARNING") as dep:
        realm = dep.service.create_realm("bench", algo="es256")
        dep.service.rotate("bench", force=True)  # two keys: an active and an expired one
        publish_realm(dep.service, runtime.publisher(dep.settings), realm.id)
        path = f"/realms/{realm.id}/.well-known/jwks.json"
        document = body(dep.service.jwks(realm.id))
        constant = Path(dep.folder) / "jwks.json"
        constant.write_bytes(document)
        real, real_url = start_server(dep, "keyrotor")
        bare, bare_url = start_server(dep, "bare", str(constant))
        steps = {kind: start_server(dep, kind, str(constant)) for kind in STEPS}
        try:
            answer = httpx.get(real_url + path)
            answer.raise_for_status()
            assert answer.content == document, "the route did not serve the published set"
            etag = answer.headers["etag"]
            revalidate = {"If-None-Match": etag}
            assert httpx.get(real_url + path, headers=revalidate).status_code == 304
            runs: dict[str, list[float]] = {"real": [], "bare": [], "real_304": []}
            runs.update({kind: [] for kind in STEPS})
            cpu: dict[str, list[float]] = {"real": [], "bare": []}
            for _ in range(RUNS):
                runs["bare"].append(saturate_counting(bare, bare_url + path, cpu["bare"]))
                runs["real"].append(saturate_counting(real, real_url + path, cpu["real"]))
                runs["real_304"].append(saturate(real_url + path, revalidate))
                for kind, (_, url) in steps.items():
                    runs[kind].append(saturate(url + path))
            half = median(runs["real"]) / 2
            p50s, p99s, bare_p50s = [], [], []
            for _ in range(RUNS):
                latencies = open_loop_latencies(
                    real_url + path, half, LATENCY_SECONDS, CONNECTIONS, {}
                )
                p50s.append(percentile(latencies, 50))
                p99s.append(percentile(latencies, 99))
                bare_latencies = open_loop_latencies(
                    bare_url + path, half, LATENCY_SECONDS, CONNECTIONS, {}
                )
                bare_p50s.append(percentile(bare_latencies, 50))
        finally:
            for process in (real, bare, *(process for process, _ in steps.values())):
                process.stop()

    ratios = [r / b for r, b in zip(runs["real"], runs["bare"], strict=True)]
    ratio = median(ratios)
    generator = "wrk -t1 -c16" if WRK else "asyncio client, 16 connections (wrk not installed)"
    report.add(
        "JWKS route, 200 with the document",
        rate(median(runs["real"]), " req/s"),
        f"≥ {TARGET}x bare",
        ratio >= TARGET,
        f"{x(ratio)} of the bare route; median of {RUNS} alternating pairs;"
        f" {x(median(runs['real']) / median(runs['bare-headers']))} of a bare route sending the"
        " same headers",
    )
    report.add("bare route, constant bytes (async)", rate(median(runs["bare"]), " req/s"))
    report.add(
        "server CPU per request: JWKS route vs bare route",
        f"{us(median(cpu['real']))} vs {us(median(cpu['bare']))}",
        note="user + system time of the uvicorn process",
    )
    report.add(
        "JWKS route, 304 on If-None-Match",
        rate(median(runs["real_304"]), " req/s"),
        note=f"{x(median(runs['real_304']) / median(runs['bare']))} of the bare route",
    )
    for kind, label in (
        ("bare-headers", "bare route with the JWKS route's headers (ETag, Cache-Control, CORS)"),
        ("fastapi-async", "FastAPI `async def` route, constant bytes"),
        ("fastapi-sync", "FastAPI `def` route (thread pool), constant bytes"),
    ):
        report.add(
            f"  for comparison: {label}",
            rate(median(runs[kind]), " req/s"),
            note=f"{x(median(runs[kind]) / median(runs['bare']))} of the bare route",
        )
    report.add(
        f"latency at half the saturating rate ({half:,.0f} req/s)",
        f"p50 {ms(median(p50s))}, p99 {ms(median(p99s))}",
        note=f"open loop, from the scheduled send; bare route p50 {ms(median(bare_p50s))}",
    )
    report.details.append(
        f"Load: {generator}, {SECONDS:g} s a run, {len(document)}-byte document (2 ES256 keys);"
        " the route answers from the copy its process read in the last 20 ms (FromMemory, ahead"
        " of FastAPI), else reads Redis in the thread pool. Both servers log at WARNING (no"
        " access log), so the ratio is the route's own cost."
    )
    report.data.update(
        runs=runs, ratios=ratios, p50=p50s, p99=p99s, bare_p50=bare_p50s, cpu_per_request=cpu
    )
    return report
