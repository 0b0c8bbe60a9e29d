# cefmp4 — `make run` starts the whole pipeline on this box, `make test` runs the tests.

PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
WATCH_DIR ?= ./recordings
export WATCH_DIR
# Three workers: the tests mostly wait on real processes and servers, so three share two
# cores well. PYTEST_ARGS="-n 0" runs them one by one.
PYTEST_ARGS ?= -n 3
# cefmp4/ links to common/, producer/ and consumer/: mypy reads them through it, under the
# names they are installed as; ruff does not follow links, so it is given the folders.
LINT_PATHS := cefmp4 common producer consumer ops tests
TYPE_PATHS := cefmp4 ops tests

.PHONY: venv run status test bench lint clean clean-data

venv: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	@test -n "$(PYTHON)" || { echo "python3.11 (or python3) not found" >&2; exit 1; }
	test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --disable-pip-version-check -q --upgrade pip
	$(VENV)/bin/pip install --disable-pip-version-check -e '.[dev]'
	touch $@

# Local Redis/Valkey and S3 (weed mini) keep their data in .data/ unless REDIS_URL /
# S3_ENDPOINT_URL point at running services.
run: venv
	mkdir -p "$(WATCH_DIR)"
	exec $(VENV)/bin/python -m ops.local_services run --data .data -- $(VENV)/bin/cefmp4 run

# In a second terminal while `make run` runs: where each recording is.
status: venv
	$(VENV)/bin/python -m ops.local_services with --data .data -- $(VENV)/bin/cefmp4 status

test: venv
	$(VENV)/bin/python -m pytest $(PYTEST_ARGS)

# cefmp4 against s5cmd on local Redis + S3, under 10 minutes: a table, and bench.json.
# BENCH_ARGS="--quick" for tiny sizes, "--cases throughput cpu", "--repeat 5".
BENCH_ARGS ?=
bench: venv
	$(VENV)/bin/python -m ops.bench $(BENCH_ARGS)

lint: venv
	$(VENV)/bin/ruff check $(LINT_PATHS)
	$(VENV)/bin/mypy $(TYPE_PATHS)

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache build dist *.egg-info
	find . -name __pycache__ -type d -prune -exec rm -rf {} +

# Deletes the local Redis and S3 data of `make run` (not the recordings); refuses while
# services run on it. Standard library only: no venv needed.
clean-data:
	$(PYTHON) -m ops.local_services clean --data .data
