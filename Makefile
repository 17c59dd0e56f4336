# The only entry points, for developers and CI alike. Each target creates or
# reuses .venv itself, so a machine with only Python 3.11+ needs nothing else.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
BENCH_STAMP := $(VENV)/.installed-bench
PYTEST_ARGS ?=
# Every version the venv gets is pinned here: club-proxy[lint] (runtime, test,
# embedded servers, lint tools), and the same plus the bench extra.
LOCK := requirements.lock
BENCH_LOCK := requirements-bench.lock

.PHONY: run check test lint bench venv clean lock lock-upgrade lock-check

$(STAMP): pyproject.toml $(LOCK)
	$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11) and "Python 3.11+ is required")'
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -r $(LOCK)
	$(BIN)/python -m pip install --quiet --no-deps -e .
	$(BIN)/python -m pip check
	touch $(STAMP)

# The bench extra (py-spy, psutil) on top, only for `make bench`.
$(BENCH_STAMP): $(STAMP) $(BENCH_LOCK)
	$(BIN)/python -m pip install --quiet -r $(BENCH_LOCK)
	touch $(BENCH_STAMP)

venv: $(STAMP)

run: $(STAMP)
	@$(BIN)/python -m examples.stack

# Validate routes.yaml like `nginx -t` (ROUTES=FILE for another file).
ROUTES ?= routes.yaml
check: $(STAMP)
	$(BIN)/club-proxy check $(ROUTES)

test: $(STAMP)
	$(BIN)/python -m pytest $(PYTEST_ARGS)

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

bench: $(BENCH_STAMP)
	$(BIN)/python -m bench

# docker-compose.yml for real: builds the image, brings the stack up under its
# own project name on free loopback ports, checks it through nginx and tears it
# down (deploy/compose_test.py; docs/deploy.md). Needs Docker and docker-compose
# v1 (on a machine without registry access: ../shared/tools/docker-standins).
.PHONY: compose-test
compose-test: $(STAMP)
	$(BIN)/python -m deploy.compose_test

clean:
	rm -rf $(VENV) build *.egg-info .mypy_cache .pytest_cache .ruff_cache

# The lock files are written by uv, which `make lock` installs from PyPI into
# build/ (installing from them needs only pip). `make lock` after a dependency
# change in pyproject.toml keeps every other pin; `make lock-upgrade` moves every
# pin to the newest release within pyproject.toml's bounds. Commit both files;
# CI runs `make lock-check`. More uv flags: make lock LOCK_FLAGS='...'.
UV_VERSION := 0.13.10
UV := build/uv-$(UV_VERSION)/bin/uv
UPGRADE ?=
LOCK_FLAGS ?=
COMPILE = $(UV) pip compile pyproject.toml --universal --python-version 3.11 \
	--no-header --quiet $(UPGRADE) $(LOCK_FLAGS)
H := \#
LOCK_HEADER = '$(H) Pinned by `make lock` (do not edit): every package `make venv` installs,' \
	'$(H) with `pip install -r`, before club-proxy itself with `--no-deps`. CPython 3.11+,' \
	'$(H) any OS (environment markers kept). `make lock` keeps the pins after a change' \
	'$(H) in pyproject.toml; `make lock-upgrade` takes the newest within its bounds.' \
	'$(H) Made with uv $(UV_VERSION): uv pip compile pyproject.toml --universal --python-version 3.11'
# $(call add_header,FILE,REST OF THE COMPILE COMMAND)
add_header = { printf '%s\n' $(LOCK_HEADER) '$(H)     $(2)'; cat $(1); } > $(1).tmp && mv $(1).tmp $(1)

$(UV):
	$(PYTHON) -m venv build/uv-$(UV_VERSION)
	build/uv-$(UV_VERSION)/bin/python -m pip install --quiet uv==$(UV_VERSION)

lock: $(UV)
	$(COMPILE) --extra lint -o $(LOCK)
	$(COMPILE) --extra lint --extra bench -c $(LOCK) -o $(BENCH_LOCK)
	$(call add_header,$(LOCK),--extra lint -o $(LOCK))
	$(call add_header,$(BENCH_LOCK),--extra lint --extra bench -c $(LOCK) -o $(BENCH_LOCK))

lock-upgrade: UPGRADE = --upgrade
lock-upgrade: lock

# Fails when pyproject.toml changed without `make lock` (compares the pins only).
lock-check: $(UV)
	rm -rf build/lock-check && mkdir -p build/lock-check
	cp $(LOCK) $(BENCH_LOCK) build/lock-check/
	$(MAKE) --no-print-directory lock LOCK=build/lock-check/$(LOCK) BENCH_LOCK=build/lock-check/$(BENCH_LOCK)
	for f in $(LOCK) $(BENCH_LOCK); do \
	    grep -v '^ *#' $$f > build/lock-check/$$f.want; \
	    grep -v '^ *#' build/lock-check/$$f > build/lock-check/$$f.got; \
	    diff -u build/lock-check/$$f.want build/lock-check/$$f.got \
	        || { echo "$$f does not match pyproject.toml: run make lock, commit it"; exit 1; }; \
	done
