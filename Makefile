# `make demo` and `make test` each set themselves up on a fresh machine:
# they create .venv when it is missing and install the project into it.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp

.PHONY: demo test bench install system-deps clean

install: $(STAMP)

# Re-install when the package metadata changes. torchattacks is a test-only
# cross-check; its pins would downgrade packages Ray needs, hence --no-deps.
# pip byte-compiles at install time (about 50 s here); keep it: where
# PYTHONDONTWRITEBYTECODE is set (as on our CI machines) nothing else writes .pyc
# files, and every Ray worker would then compile torch and Ray from source
# (about 8 s of CPU per process start).
PIP := $(BIN)/python -m pip install --quiet --disable-pip-version-check
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(PIP) -e '.[test]'
	$(PIP) --no-deps 'torchattacks>=3.5'
	touch $(STAMP)

# The main job on the embedded local Ray: every method on MNIST-1D, 3 seeds.
demo: $(STAMP)
	$(BIN)/aalr-ray grid jobs/quickstart.yaml

# Every benchmark; rewrites BENCHMARKS.md (about an hour on a quiet 2-core machine: the stages' measured times added up).
bench: $(STAMP)
	$(BIN)/python bench/run_all.py

# The real components two tests drive, from the system's packages: Prometheus scraping Ray's
# metrics (tests/test_monitoring.py) and Chromium opening report.html (tests/test_report_html.py).
# Installed when missing and this is root on Debian/Ubuntu (as on CI); elsewhere those tests
# skip and say why.
SYSTEM_PACKAGES := prometheus chromium
system-deps:
	@missing=$$(for p in $(SYSTEM_PACKAGES); do command -v $$p >/dev/null || echo $$p; done); \
	if [ -z "$$missing" ]; then exit 0; fi; \
	if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    echo "installing $$missing (apt-get)"; \
	    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null) \
	        || echo "WARNING: apt-get could not install $$missing; the tests that need them will skip"; \
	else \
	    echo "WARNING: $$missing not installed (needs root and apt-get); the tests that need them will skip"; \
	fi

# Two workers, one test module each (--dist loadscope keeps a module's embedded Ray
# to one worker): the Ray tests spend most of their time waiting for actors to
# start, so two at once on 2 cores take about half the wall time of one.
test: $(STAMP) system-deps
	$(BIN)/python -m pytest -q -n 2 --dist loadscope --no-loadscope-reorder

clean:
	rm -rf $(VENV) .pytest_cache .hypothesis
