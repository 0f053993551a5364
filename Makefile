# The two commands of the README: `make run` (the chat on embedded defaults) and `make test`.
# Both create the virtual environment and install what they need on first use.

PYTHON ?= python3
VENV   ?= .venv
WORKERS ?= 3
# load test (loadtests/README.md): headless locust against a local cluster, or TARGET (loopback only)
USERS      ?= 100
SPAWN_RATE ?= 10
DURATION   ?= 90s
TARGET     ?=
PROCESSES  ?= auto
LT_WORKERS ?= 1
# test processes (pytest-xdist, one test file each at a time): a serial run of the suite keeps
# ~0.6 of one core busy, the rest is waiting on real processes and timeouts
TEST_PROCESSES ?= 3
PY     := $(VENV)/bin/python
BASE   := $(VENV)/.base-installed
TEST   := $(VENV)/.test-installed
PIP    := $(PY) -m pip install --quiet --disable-pip-version-check

.PHONY: screenshots run admin-unlock cluster test compose-test loadtest capacity overload soak attacks venv migrate purge clean help

help:
	@echo "make run    - the chat on embedded defaults (private Redis, SQLite); PORT=5000"
	@echo "make admin-unlock [ADDRESS=127.0.0.1] - lift the admin console's sign-in lockout (all addresses by default)"
	@echo "make cluster - nginx in front of WORKERS=3 web workers, the matcher, the archiver; PORT=8080 (needs nginx)"
	@echo "make test   - the test suite (starts its own Redis, web workers and matcher)"
	@echo "make compose-test - docker-compose.yml for real under podman (installed if missing) or Docker: build, up, checks, down"
	@echo "make loadtest USERS=100 SPAWN_RATE=10 DURATION=90s [TARGET=http://127.0.0.1:8080] - locust report in loadtests/results/"
	@echo "make capacity LABEL=before|after [CAPACITY_ARGS='--repeat 2'] - CPU per message against 1, 2, 4, 8 web workers, unit costs; loadtests/capacity/LABEL.json (docs/SCALING.md)"
	@echo "make overload [OVERLOAD_ARGS='--max-connections 300 --chatters 400 --newcomers 600'] - past capacity: refusals by reason, chatters' p99 delivery below vs past capacity (< 5 min); docs/SCALING.md, Overload"
	@echo "make soak [SOAK_SECONDS=180] - Redis restarts, killed listeners, worker drains, matcher kills under chat traffic, repeated; prints lost/resume figures"
	@echo "make attacks [ATTACK_SECONDS=8] [ONLY=star,slowloris] - each hostile client of issue 11 against one worker beside 5 chatting pairs; prints their delivery p50/p99"
	@echo "make migrate - apply the SQL schema migrations (DATABASE_URL)"
	@echo "make purge  - delete history older than RETENTION_DAYS"
	@echo "make clean  - remove the virtual environment and local data"

$(BASE): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "Python 3.11 or newer is needed")'
	$(PYTHON) -m venv $(VENV)
	$(PIP) -e .
	@touch $@

$(TEST): $(BASE)
	$(PIP) -e '.[test]'
	@touch $@

venv: $(BASE)

run: $(BASE)
	$(PY) -m stack run

# with make run's private Redis (instance/redis/url) or REDIS_URL / REDIS_CLUSTER_URL
admin-unlock: $(BASE)
	$(PY) -m web.admin unlock $(ADDRESS)

cluster: $(BASE)
	WORKERS=$(WORKERS) $(PY) -m stack cluster

test: $(TEST)
	$(PY) -m pytest -n $(TEST_PROCESSES) --dist loadfile $(PYTEST_ARGS)

compose-test: $(TEST)
	$(PY) tests/compose/run.py

LOADTEST := $(VENV)/.loadtest-installed

$(LOADTEST): $(TEST)
	$(PIP) -e '.[test,loadtest]'
	@touch $@

loadtest: $(LOADTEST)
	$(PY) loadtests/run.py --users $(USERS) --spawn-rate $(SPAWN_RATE) --duration $(DURATION) \
	  --processes $(PROCESSES) --workers $(LT_WORKERS) $(if $(TARGET),--target $(TARGET))

capacity: $(LOADTEST)
	$(PY) loadtests/capacity.py $(if $(LABEL),--label $(LABEL)) $(CAPACITY_ARGS)

overload: $(LOADTEST)
	$(PY) loadtests/overload.py $(OVERLOAD_ARGS)

soak: $(TEST)
	$(PY) tests/soak.py $(if $(SOAK_SECONDS),--seconds $(SOAK_SECONDS))

attacks: $(TEST)
	$(PY) tests/attacks.py $(if $(ATTACK_SECONDS),--seconds $(ATTACK_SECONDS)) $(if $(ONLY),--only $(ONLY))

migrate: $(BASE)
	$(PY) -m archiver migrate

purge: $(BASE)
	$(PY) -m archiver purge

screenshots: $(TEST)
	SCREENSHOT_DIR=$(CURDIR)/docs/screenshots $(PY) -m pytest -q tests/browser/test_screenshots.py tests/browser/test_metrics_dashboard.py

clean:
	rm -rf $(VENV) instance *.egg-info
