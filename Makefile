# Every target sets up its own virtual environment: nothing depends on what the machine has.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-test

.PHONY: demo test lint skopeo bench prove-timing clean

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
test: lint skopeo
	@$(PY) -m pytest $(PYTEST_ARGS); rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "pytest collected no tests: failing"; exit 1; fi; exit $$rc

## skopeo: Debian's skopeo, the registry client of tests/test_registry_skopeo.py, installed with apt-get
## where it is missing (CI runs as root on Debian); where it cannot be, those tests skip and say why
skopeo:
	@command -v skopeo >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    export DEBIAN_FRONTEND=noninteractive; \
	    apt-get install -y -qq --no-install-recommends skopeo >/dev/null 2>&1 \
	      || { apt-get update -qq && apt-get install -y -qq --no-install-recommends skopeo; } \
	      || echo "skopeo could not be installed: tests/test_registry_skopeo.py will skip"; \
	  else \
	    echo "skopeo is missing and cannot be installed here (needs root and apt-get): its tests will skip"; \
	  fi; }

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
