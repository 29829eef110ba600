# Every target sets up its own virtual environment: nothing depends on what the machine has.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-test

.PHONY: demo test lint bench prove-timing clean

$(STAMP): pyproject.toml constraints/tested.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -c constraints/tested.txt -e ".[test]"
	touch $@

## demo: the main job - the example release DAG in a real Airflow against the ECR double's server
demo: $(STAMP)
	$(PY) scripts/demo.py

## test: the house rules (ruff format and lint, import-linter's layers), then the whole suite
## (pytest exit 5, "no tests collected", is a failure)
test: lint
	@$(PY) -m pytest $(PYTEST_ARGS); rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "pytest collected no tests: failing"; exit 1; fi; exit $$rc

## lint: ruff (format check and lint) and import-linter (the layers in CONTRIBUTING.md)
lint: $(STAMP)
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/ruff check .
	$(VENV)/bin/lint-imports

## bench: benchmarks against the ECR double's HTTP server; writes benchmarks/RESULTS.md
bench: $(STAMP)
	$(PY) -m benchmarks.run

## prove-timing: every test marked `timing`, 30 rounds in a row with both cores busy
prove-timing: $(STAMP)
	$(PY) scripts/prove_timing.py --runs $(or $(RUNS),30)

clean:
	rm -rf $(VENV) .pytest_cache
