"""Schemathesis against the live `/openapi.json`, with a valid admin token on every request:
valid and invalid requests for every operation, and no answer may be a 5xx or stray outside
the schema (status code, content type, headers, body).

`KEYROTOR_FUZZ_CASES` sets how many cases in all: 300 by default (`make test`), on PostgreSQL
when it is configured, else SQLite; from 1,000 on (`make fuzz`: 2,000) on every database. Every
case is counted, so a run that generated nothing fails.
"""

from __future__ import annotations

import contextlib
import math
import os
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, Verbosity, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.checks import (
    content_type_conformance,
    not_a_server_error,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)
from schemathesis.core.result import Err

from tests.conftest import BACKENDS
from tests.http.conftest import Api, serve_on

CASES = int(os.environ.get("KEYROTOR_FUZZ_CASES", "300"))
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
]


@pytest.fixture(params=BACKENDS if CASES >= 1000 else BACKENDS[-1:])
def api(request: pytest.FixtureRequest, tmp_path: Path, redis_url: str) -> Iterator[Api]:
    yield from serve_on(request, tmp_path, redis_url)


@pytest.mark.slow
def test_every_generated_request_gets_a_documented_answer_and_no_5xx(api: Api) -> None:
    api.realm("acme")  # one realm, so some generated names and ids are found
    schema = schemathesis.openapi.from_url(f"{api.url}/openapi.json")
    operations = []
    for result in schema.get_all_operations():
        if isinstance(result, Err):
            raise result.err()  # a part of the schema schemathesis cannot read
        operations.append(result.ok())
    assert len(operations) >= 12, [operation.label for operation in operations]
    counted: Counter[str] = Counter()
    failures: list[str] = []
    rounds = 0
    while sum(counted.values()) < CASES and rounds < 5:
        rounds += 1
        wanted = math.ceil((CASES - sum(counted.values())) / (2 * len(operations)))
        for operation in operations:
            for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
                _fuzz(api, operation, mode, wanted, counted, failures)
    total = sum(counted.values())
    print(f"schemathesis: {total} cases over {len(operations)} operations, {len(failures)} failed")
    for label, count in sorted(counted.items()):
        print(f"  {count:5d}  {label}")
    assert not failures, "\n".join(failures[:10])
    assert total >= CASES


def _fuzz(
    api: Api,
    operation: Any,
    mode: GenerationMode,
    examples: int,
    counted: Counter[str],
    failures: list[str],
) -> None:
    try:
        strategy = operation.as_strategy(generation_mode=mode)
    except Exception:  # nothing negative can be said of an operation without parameters
        return

    @given(case=strategy)
    @settings(
        max_examples=examples,
        deadline=None,
        database=None,
        phases=[Phase.explicit, Phase.generate],
        suppress_health_check=list(HealthCheck),
        verbosity=Verbosity.quiet,  # failures are collected and reported below
    )
    def run(case: Any) -> None:
        counted[f"{operation.label} ({mode.value})"] += 1
        headers = {"Authorization": f"Bearer {api.token()}"}
        try:
            case.call_and_validate(base_url=api.url, headers=headers, checks=CHECKS, timeout=30)
        except (Exception, BaseExceptionGroup) as error:  # collect them all, not the first
            failures.append(f"{operation.label} ({mode.value}): {error}"[:2000])

    # Unsatisfiable: no invalid value exists (a path segment that takes any string, say)
    with contextlib.suppress(Unsatisfiable):
        run()
