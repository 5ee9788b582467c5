# kiq: `make run` starts a demo, `make test` runs every test. Both set up what they need.
VENV ?= .venv
PY := $(VENV)/bin/python
SYSTEM_PACKAGES := redis-server redis-sentinel openssl prometheus ruby-sidekiq ruby-activejob ruby-globalid ruby-rack ruby-webrick \
                   chromium chromium-driver

.PHONY: install system-deps run test test-django6 test-pythons lint bench bench-quick bench-web bench-sizing soak chaos screenshots clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	touch $@

# Debian packages the tests and the demo run (installed only where missing).
system-deps:
	@bin/system-deps $(SYSTEM_PACKAGES)

run: install system-deps
	$(PY) -m demo

# One pytest process per core (pytest-xdist): each test starts its own Redis and processes on free
# ports, so tests run side by side as they do one after another (6.5 minutes on 2 cores, 12.5 in one).
test: install system-deps
	$(PY) -m pytest -q -n auto
	@$(MAKE) --no-print-directory test-django6

# Django 6 (django.tasks) needs Python 3.12 or later: kiq.contrib.django's tests run again in a
# venv of their own on the first python3.12 or python3.13 found (on PATH, or among pyenv's).
PYTHON_DJANGO6 ?= $(shell for p in python3.12 python3.13 $$HOME/.pyenv/versions/3.1[23]*/bin/python3.1[23]; do \
	"$$p" -c 'import sys; assert sys.version_info >= (3, 12)' >/dev/null 2>&1 && { echo "$$p"; break; }; done)
VENV_DJANGO6 ?= .venv-django6

test-django6: system-deps
ifeq ($(PYTHON_DJANGO6),)
	@echo "SKIPPED the Django 6 tests (tests/test_django_tasks.py on django.tasks): no Python 3.12 or later here"
else
	@$(MAKE) --no-print-directory $(VENV_DJANGO6)/.installed
	KIQ_DJANGO_TASKS=django.tasks $(VENV_DJANGO6)/bin/python -m pytest -q -p no:cacheprovider tests/test_django_tasks.py
endif

$(VENV_DJANGO6)/.installed: pyproject.toml
	$(PYTHON_DJANGO6) -m venv $(VENV_DJANGO6)
	$(VENV_DJANGO6)/bin/python -m pip install -q --upgrade pip
	$(VENV_DJANGO6)/bin/python -m pip install -q -e '.[test-django6]'
	touch $@

# The whole suite again on the oldest Python that pyproject.toml accepts, with the oldest
# dependencies it accepts (tests/floors.txt), and on the newest Python here with the newest, each in
# a venv of its own (.venv-py3.10, .venv-py3.13; about 7 minutes each on 2 cores): a feature of a
# later Python or of a later redis-py shows only there. CI runs it after `make test`.
test-pythons: system-deps
	bin/test-pythons 3.10 3.13

# kiq against Ruby Sidekiq and the Python peers (about 16 minutes on 2 cores; bench-quick about 6).
bench: install system-deps
	$(PY) bench/run.py $(BENCH_ARGS)

bench-quick: install system-deps
	$(PY) bench/run.py --quick $(BENCH_ARGS)

# The dashboard's page times on a Redis of 100,000 retries and 50 busy processes (about 15 s).
bench-web: install system-deps
	$(PY) bench/web_pages.py $(BENCH_WEB_ARGS)

# What kiq's command pattern costs Redis per job and per idle second, to size Redis by, on one Redis,
# two shards and a 3-primary cluster (about 3.5 min; BENCH_SIZING_ARGS=--quick: one Redis, about
# 25 s; --layout one|shards|cluster: one layout). docs/scaling.md turns the figures into a sizing guide.
bench-sizing: install system-deps
	$(PY) bench/sizing.py $(BENCH_SIZING_ARGS)

# The README's pictures of the dashboard (docs/images/*.png), from the demo in headless Chromium (about 1 min).
screenshots: install system-deps
	$(PY) -m demo.screenshots

# kiq's worker memory over a million jobs (about 2 minutes on 2 cores).
soak: install system-deps
	$(PY) bench/soak.py $(SOAK_ARGS)

# The chaos test at DESIGN's scale: 100,000 jobs through SIGKILLs, reloads and a Redis crash.
chaos: install system-deps
	KIQ_CHAOS_JOBS=100000 $(PY) -m pytest -q -s tests/test_chaos.py

lint: install
	$(VENV)/bin/ruff check kiq tests demo examples bench
	$(VENV)/bin/mypy

clean:
	rm -rf $(VENV) $(VENV_DJANGO6) .pytest_cache .mypy_cache .ruff_cache build *.egg-info
