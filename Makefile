# Each target creates or updates the virtual environment itself, idempotently.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp

.PHONY: demo test bench venv clean

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -e '.[dev]'
	@touch $(STAMP)

venv: $(STAMP)

# The main job: a demo workspace in demo/ with experiment 0.1.0 taken through the loop.
demo: $(STAMP)
	PATH="$(CURDIR)/$(VENV)/bin:$$PATH" bash scripts/demo.sh

# pytest exits 5 when it collected no tests: that is a failure here, not a pass.
test: $(STAMP)
	@$(PY) -m pytest -q; rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "make test: pytest collected no tests" >&2; exit 1; fi; \
	exit $$rc

# exp commands against the code before issue 13 (6c676cc, in this clone's history), then the analysis stages
# (~8 min); the trainer's: python bench/bench_trainer.py (~10 min); SwanLab's cloud fallback: bench/bench_tracking.py.
bench: $(STAMP)
	$(PY) bench/bench_cli.py
	$(PY) bench/bench_analysis.py

clean:
	rm -rf demo .pytest_cache
