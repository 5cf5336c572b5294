# keyrotor: the two set-up commands are `make run` and `make test`.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run test tools lint unit bench bench-scale chaos fuzz clean lock

# The client distribution (./client) in the same command as the server, which requires it.
$(STAMP): pyproject.toml client/pyproject.toml
	test -d $(VENV) || $(PY) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e ./client -e '.[dev]'
	touch $(STAMP)

run: $(STAMP)
	$(BIN)/keyrotor run

test: lint unit

# Tools the tests run from Debian's packages: promtool and a prometheus server check the alert
# rules (tests/test_deploy.py, tests/ops/test_prometheus.py), systemd-analyze the units, node
# verifies tokens as a client written in another language (tests/http/test_discovery.py).
tools:
	@command -v promtool >/dev/null && command -v prometheus >/dev/null && command -v systemd-analyze >/dev/null && command -v node >/dev/null || \
	  { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus systemd nodejs >/dev/null; }

lint: $(STAMP)
	$(BIN)/ruff check client worker tests bench
	$(BIN)/ruff format --check client worker tests bench
	$(BIN)/mypy

unit: $(STAMP) tools
	$(BIN)/pytest

# The benchmarks (bench/README.md): each figure a median of 5 runs, each target a ratio to a
# baseline measured in the same run; ~12 minutes. Needs PostgreSQL (KEYROTOR_BENCH_POSTGRES_URL,
# default postgresql://postgres@127.0.0.1:5432/test); starts its own Valkey. Never in `make test`.
bench: $(STAMP)
	$(BIN)/python -m bench.run

# Start-up reconcile, `doctor --check jwks`, /metrics and the outbox at 10,000 and 1,000,000
# realms, then `rotate --all` of 1,000,000 es256 and 100,000 rs256 realms (bench/README.md,
# scale): ~1 hour and ~12 GiB free for JWKS files under the temporary folder. Needs what
# `make bench` needs; in neither `make test` nor `make bench`.
bench-scale: $(STAMP)
	$(BIN)/python -m bench.run scale mass_rotation --output bench/results/scale.json

# Five minutes of faults (tests/support/chaos.py) and the figures, on PostgreSQL:
# KEYROTOR_TEST_POSTGRES_URL, else the local one CI uses. `make test` runs one minute of it.
CHAOS_POSTGRES_URL ?= $(or $(KEYROTOR_TEST_POSTGRES_URL),postgresql://postgres@127.0.0.1:5432/test)
chaos: $(STAMP)
	$(BIN)/python -m tests.support.chaos --minutes 5 --postgres-url $(CHAOS_POSTGRES_URL)

# The fuzzers at full strength: 2,000 schemathesis cases (300 in `make test`) and 2,000
# hypothesis examples per property (200), with the attack catalogue.
fuzz: $(STAMP)
	KEYROTOR_FUZZ_CASES=2000 KEYROTOR_FUZZ_EXAMPLES=2000 $(BIN)/pytest -q -s \
	  tests/http/test_openapi_fuzz.py tests/test_fuzz.py tests/test_attacks.py

# The image's pinned runtime dependencies: a fresh venv with the project alone (no dev tools).
# keyrotor-client comes from ./client, and is pinned as name==version like the rest (`pip
# list`, where `pip freeze` would write a file:// URL); the Dockerfile installs it from ./client.
lock:
	rm -rf .lock-venv && $(PY) -m venv .lock-venv
	.lock-venv/bin/pip install --quiet --upgrade pip
	.lock-venv/bin/pip install --quiet ./client .
	{ echo "# make lock: keyrotor's runtime dependencies, pinned (deploy/Dockerfile installs these)"; \
	  .lock-venv/bin/pip list --format=freeze --exclude-editable \
	    --exclude pip --exclude setuptools --exclude wheel | grep -v '^keyrotor=='; \
	} > deploy/requirements.lock
	rm -rf .lock-venv build client/build

clean:
	rm -rf $(VENV) var .pytest_cache .mypy_cache .ruff_cache
