# sunday-release: `make demo` runs CI on the sample app; `make test` runs the test suite.
# Both set the machine up first (idempotent): apt packages, dockerd, the local registry, the base image.
SHELL := /bin/bash
.SHELLFLAGS := -o pipefail -c
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
export SUNDAY_HOME ?= $(HOME)/.sunday-release
# mypy's cache outside the clone: it checks each entry against the source's hash, so a new clone of the same code
# type-checks in 0.9 s instead of 15 CPU-s (taken from pytest's workers, beside which it runs in `make test`)
export MYPY_CACHE_DIR ?= $(HOME)/.cache/sunday-release/mypy

.PHONY: demo test test-faults test-fast setup venv bytecode lint lock server server-stop clean

QUIET_PIP := { grep -v 'is ignored: it is neither a file nor a directory' || true; }

# requirements.lock pins every dependency (made by `make lock`), so nothing is resolved. uv (pinned there too) installs
# them in 43 s on a new machine and 2 s with its cache, where pip takes 71 s; where uv cannot reach an index that
# pip's own configuration names, pip does it. Their bytecode is compiled once (17 s) and unpacked into the next venv
# of the same files (1 s): infra/local/site_bytecode.sh
$(BIN)/sunday-release: pyproject.toml requirements.lock
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	{ $(BIN)/pip install -q -c requirements.lock uv 2>&1 | $(QUIET_PIP) && \
	  $(BIN)/uv pip install -q --python $(BIN)/python -c requirements.lock -e '.[dev]' && \
	  bash infra/local/site_bytecode.sh $(VENV); } || \
	  $(BIN)/pip install -q -c requirements.lock -e '.[dev]' 2>&1 | $(QUIET_PIP)
	touch $@

venv: $(BIN)/sunday-release

setup: venv bytecode
	bash infra/local/setup.sh all

# Where PYTHONDONTWRITEBYTECODE is set Python caches nothing it compiles: pip compiled the dependencies, and this
# compiles ours once, or every CLI process and flow run compiles them again (0.2 s of CPU each)
bytecode: venv
	$(BIN)/python -m compileall -q -j 0 sunday_release adapters flows tasks deployments devtools

demo: setup
	bash infra/local/demo.sh

lint: venv
	$(BIN)/ruff check sunday_release adapters devtools flows tasks deployments tests bench infra/local infra/prefect
	$(BIN)/mypy

# The full suite but the fault-injection cases (tests/faults, `make test-faults`), on four workers: much of a test's
# time is waiting on containers and servers, so four keep two cores busy (three left a fifth of them idle).
# `--dist loadgroup`: the tests of one module-scoped fixture (one deployed app, one `make server`) stay on one worker
# (tests/conftest.py schedules them). mypy runs beside pytest, whose workers leave a core idle while they start; its
# report follows pytest's, and either failing fails `make test` (`make lint` gives it alone, at once)
test: setup
	$(BIN)/ruff check sunday_release adapters devtools flows tasks deployments tests bench infra/local infra/prefect
	$(BIN)/mypy > $(VENV)/mypy.out 2>&1 & typing=$$!; \
	  $(BIN)/pytest -q -p no:cacheprovider -n 4 --dist loadgroup -m "not faults" --durations=15; tests=$$?; \
	  wait $$typing; typed=$$?; echo "mypy (exit $$typed):"; cat $(VENV)/mypy.out; exit $$(( tests || typed ))

# Every fault the pipeline promises to survive (kill -9 at each step, outages, a failing release), on the real platform
test-faults: setup
	$(BIN)/pytest -q -m faults --durations=15

# The fast tier: every test that needs no Docker engine, no server and no root (tests/conftest.py marks the rest
# from the fixtures they take, and refuses Docker and the servers in this run), on two workers; no `setup`.
test-fast: venv
	$(BIN)/pytest -q -p no:cacheprovider -n 2 -m "not docker and not server and not services"

lock: venv
	$(BIN)/pip freeze --exclude-editable | grep -v '^-e' > requirements.lock

server: setup
	bash infra/local/server.sh start

server-stop:
	bash infra/local/server.sh stop

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache $(MYPY_CACHE_DIR)
