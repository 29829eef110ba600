# Every target sets up its own virtual environment: nothing depends on what the machine has.
# VENV and CONSTRAINTS pick the set: .venv from constraints/tested.txt (the default), or .venv-floor
# from constraints/floor.txt (the lowest supported versions; `make test-floor`).
PYTHON ?= python3
VENV ?= .venv
CONSTRAINTS ?= constraints/tested.txt
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-test
FLOOR := VENV=.venv-floor CONSTRAINTS=constraints/floor.txt

.PHONY: demo test suite lint skopeo test-floor suite-floor bench prove-timing clean

$(STAMP): pyproject.toml $(CONSTRAINTS)
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -c $(CONSTRAINTS) -e ".[test]"
	touch $@

## demo: the main job - the example release DAG in a real Airflow against the ECR double's server
demo: $(STAMP)
	$(PY) scripts/demo.py

# The whole suite; pytest exit 5, "no tests collected", is a failure.
define run_suite
	@$(PY) -m pytest $(PYTEST_ARGS); rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "pytest collected no tests: failing"; exit 1; fi; exit $$rc
endef

## test: the house rules (ruff format and lint, import-linter's layers), Debian's skopeo where
## missing, then the whole suite
test: lint skopeo
	$(run_suite)

## suite: the whole suite without the lint step
suite: $(STAMP) skopeo
	$(run_suite)

## test-floor: `make test` on the floor set, in its own .venv-floor built from constraints/floor.txt
test-floor:
	$(MAKE) test $(FLOOR)

## suite-floor: the whole suite on the floor set (what CI runs after `make test`: the lint step
## checks the source, which is the same whatever the versions installed, so it runs once)
suite-floor:
	$(MAKE) suite $(FLOOR)

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
	rm -rf $(VENV) .venv-floor .pytest_cache
