"""deploy/ without a Docker engine: every file parses, every command it runs exists with those
flags, every variable it sets is a real setting, systemd units verify, alert rules check."""

from __future__ import annotations

import configparser
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, datetime
from functools import cache
from pathlib import Path
from typing import Any

import pytest
import yaml
from packaging.requirements import Requirement
from prometheus_client.parser import text_string_to_metric_families

from tests.support.stack import ROOT, Stack
from worker.core.errors import ConfigError
from worker.core.sealing import generate_master_key
from worker.ops.metrics import exposition
from worker.ops.supervisor import WEBHOOK_WORKER
from worker.publish.heartbeat import Heartbeat, record_heartbeat
from worker.settings import Settings, load_settings

DEPLOY = ROOT / "deploy"
BIN = Path(sys.executable).parent
PROGRAMS = ("keyrotor", "celery")
SHELL_OPERATORS = {"&&", "||", ";", "|"}
K8S = sorted((DEPLOY / "k8s").glob("*.yaml"))
UNITS = sorted((DEPLOY / "systemd").glob("*.service"))


def load(path: Path) -> Any:
    return yaml.safe_load(path.read_text())


def k8s_objects() -> list[dict[str, Any]]:
    return [doc for path in K8S for doc in yaml.safe_load_all(path.read_text()) if doc]


def by_kind(kind: str) -> dict[str, dict[str, Any]]:
    return {o["metadata"]["name"]: o for o in k8s_objects() if o["kind"] == kind}


def pod_specs() -> Iterator[tuple[str, dict[str, Any]]]:
    for item in k8s_objects():
        if item["kind"] in ("Deployment", "Job"):
            yield item["metadata"]["name"], item["spec"]["template"]["spec"]


def unit(path: Path) -> configparser.ConfigParser:
    parser = configparser.ConfigParser(interpolation=None, strict=True)
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    parser.read_string(path.read_text())
    return parser


def exec_start(path: Path) -> list[str]:
    """A unit's ExecStart as the argv systemd runs (`%%` is its escape for a literal `%`)."""
    return [token.replace("%%", "%") for token in shlex.split(unit(path)["Service"]["ExecStart"])]


def dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, rest) with continuation lines joined."""
    joined = re.sub(r"\\\n\s*", " ", (DEPLOY / "Dockerfile").read_text())
    found = []
    for line in joined.splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            word, _, rest = line.strip().partition(" ")
            found.append((word.upper(), rest.strip()))
    return found


# -- every file parses ---------------------------------------------------------------------------


def test_every_yaml_file_parses() -> None:
    files = sorted(DEPLOY.rglob("*.yaml"))
    assert {p.relative_to(DEPLOY).as_posix() for p in files} >= {
        "compose.yaml",
        "prometheus/alerts.yaml",
        "k8s/web.yaml",
        "k8s/worker.yaml",
        "k8s/webhooks.yaml",
        "k8s/beat.yaml",
        "k8s/migrate-job.yaml",
        "k8s/secret.yaml",
    }
    for path in files:
        assert [doc for doc in yaml.safe_load_all(path.read_text()) if doc], path


# -- commands ------------------------------------------------------------------------------------


def split_shell(argv: list[str]) -> list[list[str]]:
    """`sh -c "a && b"` and compose's CMD-SHELL into the commands they run."""
    if argv[:1] == ["CMD-SHELL"]:
        argv = shlex.split(argv[1])
    elif argv[:1] == ["CMD"]:
        argv = argv[1:]
    elif len(argv) >= 3 and argv[0] in ("sh", "/bin/sh") and argv[1] == "-c":
        argv = shlex.split(argv[2])
    commands: list[list[str]] = [[]]
    for token in argv:
        if token in SHELL_OPERATORS:
            commands.append([])
        else:
            commands[-1].append(token)
    return [command for command in commands if command]


def deploy_commands() -> list[tuple[str, list[str]]]:
    """(where, argv) of every command the Procfile and deploy/ run."""
    found: list[tuple[str, list[str]]] = []
    for line in (ROOT / "Procfile").read_text().splitlines():
        name, _, command = line.partition(":")
        found.append((f"Procfile {name}", shlex.split(command)))
    for word, rest in dockerfile_instructions():
        if word in ("CMD", "HEALTHCHECK"):
            found.append((f"Dockerfile {word}", json.loads(rest[rest.index("[") :])))
    for name, service in load(DEPLOY / "compose.yaml")["services"].items():
        for argv in (service.get("command"), service.get("healthcheck", {}).get("test")):
            if argv:
                found.append((f"compose {name}", argv))
    for path in UNITS:
        found.append((path.name, exec_start(path)))
    for name, spec in pod_specs():
        for container in spec["containers"]:
            found.append((f"k8s {name}", container.get("command", []) + container.get("args", [])))
            for probe in ("livenessProbe", "readinessProbe", "startupProbe"):
                if "exec" in container.get(probe, {}):
                    found.append((f"k8s {name} {probe}", container[probe]["exec"]["command"]))
    return [
        (where, [Path(command[0]).name, *command[1:]])
        for where, argv in found
        for command in split_shell(argv)
        if Path(command[0]).name in PROGRAMS
    ]


@cache
def help_text(*argv: str) -> str:
    env = {k: v for k, v in os.environ.items() if not k.startswith("KEYROTOR_")}
    env.update(KEYROTOR_REDIS_URL="redis://127.0.0.1:1/0", COLUMNS="200", TERM="dumb")
    result = subprocess.run(
        [str(BIN / argv[0]), *argv[1:], "--help"], env=env, capture_output=True, text=True
    )
    assert result.returncode == 0, f"`{' '.join(argv)} --help` failed: {result.stderr[-500:]}"
    return result.stdout


def flags(tokens: list[str]) -> list[str]:
    return [token.split("=", 1)[0] for token in tokens if token.startswith("-")]


def celery_parts(argv: list[str]) -> tuple[list[str], str, list[str]]:
    """(global options, subcommand, its options) of `celery -A worker [--quiet] sub ...`."""
    globals_, index = [], 1
    while argv[index].startswith("-"):
        globals_.append(argv[index])
        index += 2 if argv[index] in ("-A", "--app", "-b", "--broker") else 1
    return globals_, argv[index], argv[index + 1 :]


def test_every_command_in_the_procfile_and_deploy_files_exists_with_those_flags() -> None:
    commands = deploy_commands()
    programs = {(where.split()[0], argv[0]) for where, argv in commands}
    assert {program for _, program in programs} == set(PROGRAMS)
    assert len(commands) >= 15
    for where, argv in commands:
        if argv[0] == "keyrotor":
            path = [token for token in argv[1:] if not token.startswith("-")][:1]
            text = help_text("keyrotor", *path)
            missing = [flag for flag in flags(argv[1:]) if flag not in text]
        else:
            global_flags, sub, rest = celery_parts(argv)
            assert argv[1:3] == ["-A", "worker"], f"{where}: {argv}"
            missing = [f for f in flags(global_flags) if f not in help_text("celery")]
            text = help_text("celery", "-A", "worker", sub)
            missing += [flag for flag in flags(rest) if flag not in text]
        assert not missing, f"{where}: {' '.join(argv)}: no such flag {missing}"


def test_the_procfile_and_every_deployment_run_the_same_five_roles() -> None:
    roles = {
        "release": ["keyrotor", "migrate"],
        "web": ["keyrotor", "web"],
        "worker": ["celery", "-A", "worker", "--quiet", "worker"],
        "beat": ["celery", "-A", "worker", "--quiet", "beat"],
        "webhooks": ["celery", "-A", "worker", "--quiet", "worker", *WEBHOOK_WORKER],
    }
    procfile = dict(
        (name, shlex.split(command))
        for name, _, command in (
            line.partition(":") for line in (ROOT / "Procfile").read_text().splitlines()
        )
    )
    assert procfile == roles
    compose = load(DEPLOY / "compose.yaml")["services"]
    assert compose["migrate"]["command"] == roles["release"]
    for role in ("web", "worker", "beat", "webhooks"):
        assert compose[role]["command"] == roles[role]
        systemd = exec_start(DEPLOY / "systemd" / f"keyrotor-{role}.service")
        assert [Path(systemd[0]).name, *systemd[1:]] == roles[role]
        container = dict(pod_specs())[f"keyrotor-{role}"]["containers"][0]
        assert container["command"][: len(roles[role])] == roles[role]
    assert dict(pod_specs())["keyrotor-migrate"]["containers"][0]["command"] == roles["release"]


# -- environment variables -----------------------------------------------------------------------


def deploy_variables() -> list[tuple[str, str, str]]:
    """(where, name, value) of every variable the deploy files set."""
    found: list[tuple[str, str, str]] = []
    for word, rest in dockerfile_instructions():
        if word == "ENV":
            for pair in shlex.split(rest):
                name, _, value = pair.partition("=")
                found.append(("Dockerfile", name, value))
    compose = load(DEPLOY / "compose.yaml")
    for name, service in compose["services"].items():
        for var, value in (service.get("environment") or {}).items():
            found.append((f"compose {name}", var, str(value)))
    example = DEPLOY / "systemd" / "keyrotor.env.example"
    for line in example.read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            name, _, value = line.partition("=")
            found.append((example.name, name, value))
    for kind, field in (("ConfigMap", "data"), ("Secret", "stringData")):
        for name, item in by_kind(kind).items():
            for var, value in item.get(field, {}).items():
                found.append((f"k8s {kind} {name}", var, str(value)))
    for name, spec in pod_specs():
        for container in spec["containers"]:
            for entry in container.get("env", []):
                found.append((f"k8s {name}", entry["name"], str(entry.get("value", ""))))
    return found


def test_every_variable_set_is_a_setting_and_every_literal_value_is_valid() -> None:
    variables = deploy_variables()
    fields = {f"KEYROTOR_{name.upper()}" for name in Settings.model_fields}
    ours = [(where, name, value) for where, name, value in variables if "KEYROTOR" in name]
    assert len(ours) >= 20
    unknown = [(where, name) for where, name, _ in ours if name not in fields]
    assert not unknown, f"not settings: {unknown}"
    by_file: dict[str, dict[str, str]] = {}
    for where, name, value in ours:
        # Placeholders and interpolations are the operator's to fill in, not values to check.
        if "${" not in value and "CHANGE-ME" not in value:
            by_file.setdefault(where.split()[0], {})[name[len("KEYROTOR_") :].lower()] = value
    for where, values in by_file.items():
        values.setdefault("master_keys", generate_master_key())
        try:
            load_settings(**values)
        except ConfigError as error:
            pytest.fail(f"{where}: {error}")


# -- per file ------------------------------------------------------------------------------------


def test_the_dockerfile_is_slim_pinned_non_root_and_health_checked() -> None:
    instructions = dockerfile_instructions()
    bases = [rest.split()[0] for word, rest in instructions if word == "FROM"]
    assert bases and all(base.startswith("python:3.11-slim") for base in bases)
    user = [rest for word, rest in instructions if word == "USER"][-1]
    assert user.split(":")[0] not in ("root", "0")
    health = next(rest for word, rest in instructions if word == "HEALTHCHECK")
    assert "/healthz" in health
    runs = " ".join(rest for word, rest in instructions if word == "RUN")
    assert "--requirement deploy/requirements.lock" in runs and "--no-deps ." in runs
    for word, rest in instructions:
        if word == "COPY" and "--from" not in rest:
            for source in shlex.split(rest)[:-1]:
                assert (ROOT / source).exists(), f"COPY {source}: not in the repository"


def test_the_lock_pins_every_dependency_within_the_project_ranges() -> None:
    lines = (DEPLOY / "requirements.lock").read_text().splitlines()
    pins = {}
    for line in lines:
        if line and not line.startswith("#"):
            name, _, version = line.partition("==")
            assert version, f"not pinned: {line}"
            pins[re.sub(r"[-_.]+", "-", name).lower()] = version
    import tomllib

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    for text in project["dependencies"]:
        requirement = Requirement(text)
        name = re.sub(r"[-_.]+", "-", requirement.name).lower()
        assert name in pins, f"{name} is not in deploy/requirements.lock (run `make lock`)"
        assert requirement.specifier.contains(pins[name]), f"{name}=={pins[name]} vs {text}"
    assert "pytest" not in pins and "keyrotor" not in pins


def test_compose_runs_a_one_shot_migrate_web_two_workers_the_webhook_worker_and_beat() -> None:
    services = load(DEPLOY / "compose.yaml")["services"]
    assert set(services) == {"postgres", "redis", "migrate", "web", "worker", "webhooks", "beat"}
    assert services["migrate"]["restart"] == "no"
    for role in ("web", "worker", "webhooks", "beat"):
        assert services[role]["depends_on"]["migrate"] == {
            "condition": "service_completed_successfully"
        }
    assert services["worker"]["deploy"]["replicas"] == 2
    assert "--appendonly" in services["redis"]["command"]
    assert services["beat"]["healthcheck"]["test"][1:] == ["keyrotor", "doctor", "--check", "beat"]
    # each worker is asked by its own node name
    assert "celery@$$HOSTNAME" in services["worker"]["healthcheck"]["test"][1]
    assert "webhooks@$$HOSTNAME" in services["webhooks"]["healthcheck"]["test"][1]


def test_systemd_units_have_what_systemd_needs(tmp_path: Path) -> None:
    assert {path.name for path in UNITS} == {
        "keyrotor-web.service",
        "keyrotor-worker.service",
        "keyrotor-webhooks.service",
        "keyrotor-beat.service",
    }
    for path in UNITS:
        parsed = unit(path)
        assert set(parsed.sections()) == {"Unit", "Service", "Install"}, path.name
        service = parsed["Service"]
        assert service["ExecStart"].startswith("/opt/keyrotor/bin/")
        assert service["User"] == "keyrotor" and service["NoNewPrivileges"] == "yes"
        assert service["EnvironmentFile"] == "/etc/keyrotor/keyrotor.env"
        assert parsed["Install"]["WantedBy"] == "multi-user.target"
    for worker in ("keyrotor-worker.service", "keyrotor-webhooks.service"):
        assert unit(DEPLOY / "systemd" / worker)["Service"]["KillMode"] == "mixed"

    analyze = shutil.which("systemd-analyze")
    assert analyze is not None, "systemd-analyze is missing: `make test` installs Debian's systemd"
    env_file = tmp_path / "keyrotor.env"
    env_file.write_text("")
    copies = []
    for path in UNITS:  # point ExecStart at this checkout's venv, which does exist here
        text = path.read_text().replace("/opt/keyrotor/bin/", f"{BIN}/")
        copy = tmp_path / path.name
        copy.write_text(text.replace("/etc/keyrotor/keyrotor.env", str(env_file)))
        copies.append(str(copy))
    result = subprocess.run(
        [analyze, "verify", "--man=no", *copies], capture_output=True, text=True
    )
    complaints = [
        line for line in (result.stdout + result.stderr).splitlines() if "keyrotor-" in line
    ]
    assert result.returncode == 0 and not complaints, result.stdout + result.stderr


def test_kubernetes_deployments_job_secret_probes_and_resources() -> None:
    deployments = by_kind("Deployment")
    assert set(deployments) == {
        "keyrotor-web",
        "keyrotor-worker",
        "keyrotor-webhooks",
        "keyrotor-beat",
    }
    assert set(by_kind("Job")) == {"keyrotor-migrate"}
    assert "KEYROTOR_MASTER_KEYS" in by_kind("Secret")["keyrotor"]["stringData"]
    beat = deployments["keyrotor-beat"]["spec"]
    assert beat["replicas"] == 1 and beat["strategy"]["type"] == "Recreate"
    assert deployments["keyrotor-worker"]["spec"]["replicas"] >= 2
    webhooks = deployments["keyrotor-webhooks"]["spec"]["template"]["spec"]["containers"][0]
    assert "webhooks@$HOSTNAME" in " ".join(webhooks["livenessProbe"]["exec"]["command"])
    configs, secrets = set(by_kind("ConfigMap")), set(by_kind("Secret"))
    for name, item in deployments.items():
        labels = item["spec"]["template"]["metadata"]["labels"]
        assert item["spec"]["selector"]["matchLabels"].items() <= labels.items(), name
    for name, spec in pod_specs():
        assert spec["securityContext"]["runAsNonRoot"] is True, name
        for container in spec["containers"]:
            requests = container["resources"]["requests"]
            assert {"cpu", "memory"} <= set(requests), name
            assert "memory" in container["resources"]["limits"], name
            assert container["securityContext"]["readOnlyRootFilesystem"] is True, name
            for source in container["envFrom"]:
                if "configMapRef" in source:
                    assert source["configMapRef"]["name"] in configs
                if "secretRef" in source:
                    assert source["secretRef"]["name"] in secrets
    web = deployments["keyrotor-web"]["spec"]["template"]["spec"]["containers"][0]
    ports = {port["name"] for port in web["ports"]}
    for probe in ("readinessProbe", "startupProbe"):
        assert web[probe]["httpGet"]["path"] == "/healthz"
        assert web[probe]["httpGet"]["port"] in ports
    service = by_kind("Service")["keyrotor-web"]["spec"]
    assert service["selector"].items() <= web_labels(deployments).items()


def web_labels(deployments: dict[str, dict[str, Any]]) -> dict[str, str]:
    labels: dict[str, str] = deployments["keyrotor-web"]["spec"]["template"]["metadata"]["labels"]
    return labels


# -- alert rules ---------------------------------------------------------------------------------

ALERTS = DEPLOY / "prometheus" / "alerts.yaml"
ALERT_TESTS = DEPLOY / "prometheus" / "alerts.test.yaml"
PROMETHEUS = DEPLOY / "prometheus" / "prometheus.yml"
DURATION = re.compile(r"\d+[smhdwy]")


def alert_rules() -> list[dict[str, Any]]:
    return [rule for group in load(ALERTS)["groups"] for rule in group["rules"]]


def test_the_alert_rules_cover_what_an_operator_must_hear_about() -> None:
    rules = alert_rules()
    assert {rule["alert"] for rule in rules} >= {
        "KeyrotorKeyOverdue",
        "KeyrotorRotationFailures",
        "KeyrotorOutboxBacklogGrowing",
        "KeyrotorJwksPublishLag",
        "KeyrotorBeatSilent",
        "KeyrotorDependencyDown",
        "KeyrotorMetricsAbsent",
    }
    for rule in rules:
        assert set(rule) == {"alert", "expr", "for", "labels", "annotations"}, rule["alert"]
        assert DURATION.fullmatch(rule["for"]), rule["alert"]
        assert rule["labels"]["severity"] in ("warning", "critical")
        assert {"summary", "description"} <= set(rule["annotations"])
        assert rule["expr"].count("(") == rule["expr"].count(")"), rule["alert"]
        # no series is per realm: no rule groups by one, no annotation names one
        assert not re.search(r"\brealm(_id)?\b", rule["expr"]), rule["alert"]
        assert "$labels.realm" not in json.dumps(rule["annotations"]), rule["alert"]


def test_every_alert_has_a_unit_test_that_fires_and_one_that_stays_silent() -> None:
    cases = [case for test in load(ALERT_TESTS)["tests"] for case in test["alert_rule_test"]]
    for name in (rule["alert"] for rule in alert_rules()):
        mine = [case for case in cases if case["alertname"] == name]
        assert any(case["exp_alerts"] for case in mine), f"{name}: no test where it fires"
        assert any(not case["exp_alerts"] for case in mine), f"{name}: no test where it is silent"


def test_prometheus_scrapes_the_web_processes_metrics_and_loads_the_rules() -> None:
    config = load(PROMETHEUS)
    assert config["rule_files"] == [ALERTS.name]
    (job,) = config["scrape_configs"]
    assert job["metrics_path"] == "/metrics"
    assert (job["scrape_interval"], job["scrape_timeout"]) == ("15s", "10s")
    port = str(Settings.model_fields["http_port"].default)
    assert all(
        target.endswith(f":{port}") for s in job["static_configs"] for target in s["targets"]
    )


def test_every_metric_an_alert_uses_is_one_keyrotor_exports(stack: Stack) -> None:
    stack.service.create_realm("acme")
    record_heartbeat(stack.redis, Heartbeat(datetime.now(UTC), "h", 1))
    scraped = exposition(stack.service, stack.redis, datetime.now(UTC)).decode()
    exported = {
        sample.name
        for family in text_string_to_metric_families(scraped)
        for sample in family.samples
    }
    used = set()
    for rule in alert_rules():  # the expression and the queries in its annotations
        used |= set(re.findall(r"\bkeyrotor_[a-z_]+\b", json.dumps(rule)))
    assert used and used <= exported, f"not exported: {sorted(used - exported)}"


def test_promtool_checks_and_unit_tests_the_rules() -> None:
    promtool = shutil.which("promtool")
    assert promtool is not None, "promtool is missing: `make test` installs Debian's prometheus"
    for args in (
        ["check", "rules", ALERTS.name],
        ["test", "rules", ALERT_TESTS.name],
        ["check", "config", PROMETHEUS.name],
    ):
        result = subprocess.run(
            [promtool, *args], cwd=ALERTS.parent, capture_output=True, text=True
        )
        assert result.returncode == 0, result.stdout + result.stderr
