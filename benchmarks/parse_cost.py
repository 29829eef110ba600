"""Benchmark 4: what the package adds to DAG parsing."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from importlib import metadata

from benchmarks.common import ROOT, fmt, table

PROVIDER_ECR_OPERATORS = "airflow/providers/amazon/aws/operators/ecr.py"
IMPORTS = {
    "import airflow.sdk": "import airflow.sdk",
    "+ import airflow_ecr_retag (top level only)": "import airflow.sdk; import airflow_ecr_retag",
    "+ from airflow_ecr_retag import EcrRetagOperator, EcrTagSensor, EcrTagHygieneOperator": (
        "import airflow.sdk; from airflow_ecr_retag import EcrRetagOperator, EcrTagSensor, EcrTagHygieneOperator"
    ),
}
# The comparison, where the installed Amazon provider has ECR operators of its own (9.33 on; the
# floor set's 9.5 has none). Read from the distribution's file list: importing it here would load Airflow.
if any(f.as_posix() == PROVIDER_ECR_OPERATORS for f in metadata.files("apache-airflow-providers-amazon") or ()):
    IMPORTS["+ import airflow.providers.amazon.aws.operators.ecr (the provider's own ECR operators)"] = (
        "import airflow.sdk; import airflow.providers.amazon.aws.operators.ecr"
    )
TIMED = "import time; t = time.perf_counter(); {code}; print('T=' + repr(time.perf_counter() - t))"
DAGBAG = (
    "import time; from airflow.models import DagBag; t = time.perf_counter(); "
    "bag = DagBag(dag_folder={folder!r}); print('T=' + repr(time.perf_counter() - t)); "
    "assert not bag.import_errors, bag.import_errors"
)


def _time(code: str, env: dict) -> float:
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300, check=True)
    return float(next(line for line in out.stdout.splitlines() if line.startswith("T="))[2:])


def run(repeats: int = 7) -> dict:
    with tempfile.TemporaryDirectory() as home:
        env = {**os.environ, "AIRFLOW_HOME": home, "AIRFLOW__CORE__LOAD_EXAMPLES": "False"}
        _time(TIMED.format(code="import airflow.sdk"), env)  # first run writes airflow.cfg and warms the disk cache
        imports = {
            name: [_time(TIMED.format(code=code), env) for _ in range(repeats)] for name, code in IMPORTS.items()
        }
        dagbag = [_time(DAGBAG.format(folder=str(ROOT / "example_dags")), env) for _ in range(repeats)]
    return {"imports": imports, "dagbag": dagbag}


def report(results: dict) -> str:
    base = sorted(results["imports"]["import airflow.sdk"])[len(results["imports"]["import airflow.sdk"]) // 2]
    rows = []
    for name, samples in results["imports"].items():
        median = sorted(samples)[len(samples) // 2]
        rows.append(
            [
                name,
                fmt(samples, "ms", 1000, 0),
                "-" if name == "import airflow.sdk" else f"{(median - base) * 1000:+.0f} ms",
            ]
        )
    rows.append(
        ["DagBag of example_dags/ (3 DAGs), after the imports above", fmt(results["dagbag"], "ms", 1000, 0), ""]
    )
    return table(["what", "time, median [min-max]", "added over import airflow.sdk"], rows)


if __name__ == "__main__":
    print(json.dumps(run(3), indent=1))
