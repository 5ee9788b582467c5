# kiq: `make run` starts a demo, `make test` runs every test. Both set up what they need.
VENV ?= .venv
PY := $(VENV)/bin/python
SYSTEM_PACKAGES := redis-server redis-sentinel openssl prometheus ruby-sidekiq ruby-activejob ruby-globalid ruby-rack ruby-webrick \
                   chromium chromium-driver

.PHONY: install system-deps run test lint bench bench-quick bench-web soak chaos screenshots clean

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

test: install system-deps
	$(PY) -m pytest -q

# kiq against Ruby Sidekiq and the Python peers (about 16 minutes on 2 cores; bench-quick about 6).
bench: install system-deps
	$(PY) bench/run.py $(BENCH_ARGS)

bench-quick: install system-deps
	$(PY) bench/run.py --quick $(BENCH_ARGS)

# The dashboard's page times on a Redis of 100,000 retries and 50 busy processes (about 15 s).
bench-web: install system-deps
	$(PY) bench/web_pages.py $(BENCH_WEB_ARGS)

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
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache build *.egg-info
