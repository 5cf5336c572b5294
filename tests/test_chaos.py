"""A minute of the chaos run (tests/support/chaos.py) in `make test`; `make chaos` runs five.

On PostgreSQL when KEYROTOR_TEST_POSTGRES_URL is set (CI), else on SQLite, where ending the
service's database connections does not apply. Redis is always a server the run owns, since
restarting it is one of the faults.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.support.chaos import ChaosConfig, run_chaos


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_a_minute_of_faults_breaks_no_token_no_key_and_no_event(tmp_path: Path) -> None:
    figures = run_chaos(
        ChaosConfig(duration=60, realms=200, seed=int.from_bytes(os.urandom(2), "big")),
        tmp_path,
        os.environ.get("KEYROTOR_TEST_POSTGRES_URL"),
    )
    print(figures.table())
    assert figures.problems() == [], figures.table()
