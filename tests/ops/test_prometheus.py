"""A real Prometheus scraping a running keyrotor: the shipped `KeyrotorBeatSilent` rule fires
when beat stops and resolves when it is back.

promtool's unit tests (tests/test_deploy.py) feed the rules made-up series; this one runs the
rule file Prometheus would load against what a live web process reports, so a renamed metric,
a heartbeat that stops being written or a scrape that fails is caught. Only the beat rule's
threshold and `for:` are shortened (by name; its expression stays as shipped) so the test takes
seconds. Everything listens on 127.0.0.1; the stack fixture stops every process, Prometheus
included, however the test ends.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import sys
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import pytest
import yaml

from tests.support.processes import free_port
from tests.support.stack import ROOT, Stack, wait_for
from worker.publish.heartbeat import HEARTBEAT_EVERY, last_heartbeat

pytestmark = pytest.mark.slow
T = TypeVar("T")

ALERTS = ROOT / "deploy" / "prometheus" / "alerts.yaml"
ALERT = "KeyrotorBeatSilent"
METRIC = "keyrotor_beat_last_seen_timestamp_seconds"
# Beat writes its heartbeat every HEARTBEAT_EVERY seconds (when it ticks, at least every second
# with the FAST tick), and Prometheus sees it up to a scrape later: a healthy beat reads about
# 7 s old at worst, so 12 s never fires on a live beat, and a stopped one fires within ~15 s.
SILENT_AFTER = HEARTBEAT_EVERY + 7
# One backend is enough for what Prometheus sees: PostgreSQL when CI names one, else SQLite.
BACKEND = "postgresql" if os.environ.get("KEYROTOR_TEST_POSTGRES_URL") else "sqlite"
LOCAL = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # never through a proxy


def prometheus_binary() -> str:
    found = shutil.which("prometheus")
    assert found is not None, "prometheus is missing: `make test` installs Debian's prometheus"
    return found


def fast_rules(target: Path) -> None:
    """The shipped rule file, with only the beat rule's threshold and `for:` shortened."""
    rules = yaml.safe_load(ALERTS.read_text())
    found = [r for g in rules["groups"] for r in g["rules"] if r.get("alert") == ALERT]
    assert len(found) == 1, f"{ALERTS.name} has {len(found)} rules named {ALERT}"
    rule = found[0]
    shape = re.fullmatch(r"(?s)\s*(.*\S)\s*>\s*[0-9.]+\s*", rule["expr"])
    assert shape and METRIC in rule["expr"], f"{ALERT} is no longer `... {METRIC} ... > N`"
    rule["expr"] = f"{shape[1]} > {SILENT_AFTER:g}"
    rule["for"] = "1s"
    target.write_text(yaml.safe_dump(rules, sort_keys=False))


def config(target: Path, rules: Path, web_port: int) -> None:
    """Scrape the web process every second and evaluate every second."""
    every = {"scrape_interval": "1s", "scrape_timeout": "1s", "evaluation_interval": "1s"}
    scrape = {"job_name": "keyrotor", "static_configs": [{"targets": [f"127.0.0.1:{web_port}"]}]}
    document = {"global": every, "rule_files": [str(rules)], "scrape_configs": [scrape]}
    target.write_text(yaml.safe_dump(document, sort_keys=False))


class Prometheus:
    """The HTTP API of the Prometheus under test."""

    def __init__(self, port: int) -> None:
        self.base = f"http://127.0.0.1:{port}"

    def get(self, path: str) -> Any:
        with LOCAL.open(self.base + path, timeout=5) as answer:
            return json.load(answer)["data"]

    def ready(self) -> bool:
        try:
            with LOCAL.open(self.base + "/-/ready", timeout=2) as answer:
                return bool(answer.status == 200)
        except OSError:
            return False

    def target_up(self) -> bool:
        return any(t["health"] == "up" for t in self.get("/api/v1/targets")["activeTargets"])

    def heartbeat_seen(self) -> bool:
        result = self.get(f"/api/v1/query?query={METRIC}")["result"]
        return bool(result) and float(result[0]["value"][1]) > 0

    def rule(self) -> dict[str, Any]:
        groups = self.get("/api/v1/rules?type=alert")["groups"]
        return next(r for g in groups for r in g["rules"] if r["name"] == ALERT)

    def alert_state(self) -> str | None:
        """`pending` or `firing` while the alert is active, None once it is not."""
        states = {
            a["state"]
            for a in self.get("/api/v1/alerts")["alerts"]
            if a["labels"]["alertname"] == ALERT
        }
        return "firing" if "firing" in states else next(iter(states), None)

    def firing(self) -> bool:
        return self.alert_state() == "firing"

    def resolved(self) -> bool:
        return self.alert_state() is None


def within(stack: Stack, check: Callable[[], T | None], timeout: float, what: str, *logs: str) -> T:
    """`wait_for`, failing with the end of the named processes' logs as they are by then."""
    try:
        return wait_for(check, timeout, what)
    except AssertionError as error:
        tails = "".join(f"\n--- {name} log:\n{stack.log(name)[-3000:]}" for name in logs)
        raise AssertionError(f"{error}{tails}") from None


@pytest.mark.parametrize("database_url", [BACKEND], indirect=True)
def test_the_beat_alert_fires_when_beat_stops_and_resolves_when_it_returns(
    stack: Stack, tmp_path: Path
) -> None:
    prometheus_bin = prometheus_binary()
    web_port, prometheus_port = free_port(), free_port()
    web = [sys.executable, "-m", "worker.http", "--host", "127.0.0.1", "--port", str(web_port)]
    stack.spawn("web", web)
    stack.beat("beat")
    stack.worker("worker")
    within(stack, lambda: last_heartbeat(stack.redis), 30, "beat's first heartbeat", "beat")

    fast_rules(tmp_path / "rules.yaml")
    config(tmp_path / "prometheus.yml", tmp_path / "rules.yaml", web_port)
    stack.spawn(
        "prometheus",
        [
            prometheus_bin,
            f"--config.file={tmp_path / 'prometheus.yml'}",
            f"--storage.tsdb.path={tmp_path / 'tsdb'}",
            f"--web.listen-address=127.0.0.1:{prometheus_port}",
        ],
    )
    prometheus = Prometheus(prometheus_port)
    within(stack, prometheus.ready, 30, "Prometheus to start", "prometheus")
    within(stack, prometheus.target_up, 30, "the web target to be up", "web", "prometheus")
    within(stack, prometheus.heartbeat_seen, 15, f"a scraped {METRIC}", "web")
    seen_at = prometheus.rule()["lastEvaluation"]
    within(stack, lambda: prometheus.rule()["lastEvaluation"] != seen_at, 10, "an evaluation")
    assert prometheus.rule()["health"] == "ok", prometheus.rule()
    assert prometheus.alert_state() is None, f"{ALERT} is active while beat runs"

    stopped = time.monotonic()
    stack.stop("beat")
    within(stack, prometheus.firing, SILENT_AFTER + 15, f"{ALERT} to fire", "prometheus")
    assert time.monotonic() - stopped > SILENT_AFTER - HEARTBEAT_EVERY - 1  # not at once

    stack.beat("beat")
    within(stack, prometheus.resolved, 30, f"{ALERT} to resolve after beat restarted", "beat")
