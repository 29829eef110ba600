"""Packaging: the provider registers with Airflow and the top-level import stays cheap."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import airflow_ecr_retag


def test_provider_info_names_the_distribution():
    info = airflow_ecr_retag.get_provider_info()
    assert info["package-name"] == "airflow-ecr-retag"
    assert info["versions"] == [airflow_ecr_retag.__version__]


def test_airflow_providers_list_shows_this_provider_and_keeps_the_others(tmp_path):
    env = {**os.environ, "AIRFLOW_HOME": str(tmp_path)}
    out = subprocess.run(
        [sys.executable, "-m", "airflow", "providers", "list", "--output", "json"],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    )
    # Unit-test mode logs a line before the JSON document.
    listing = out.stdout[out.stdout.index("[{") :]
    providers = {row["package_name"]: row for row in json.loads(listing)}
    assert providers["airflow-ecr-retag"]["version"] == airflow_ecr_retag.__version__
    assert "apache-airflow-providers-amazon" in providers
    assert "apache-airflow-providers-standard" in providers


def test_providers_manager_registers_links_and_modules():
    from airflow.providers_manager import ProvidersManager

    manager = ProvidersManager()
    assert "airflow-ecr-retag" in manager.providers
    links = set(manager.extra_links_class_names)
    assert "airflow_ecr_retag.links.EcrImageLink" in links
    info = manager.providers["airflow-ecr-retag"].data
    for section in ("operators", "sensors", "triggers"):
        for module in info[section][0]["python-modules"]:
            __import__(module)


def test_top_level_import_does_not_load_boto3_or_the_amazon_provider():
    code = (
        "import sys, airflow_ecr_retag;"
        "heavy = [m for m in ('boto3', 'botocore', 'airflow.providers.amazon', 'aiobotocore', 'moto') "
        "if m in sys.modules];"
        "print(','.join(heavy))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120)
    assert out.stdout.strip() == ""


def test_package_ships_py_typed():
    assert (Path(airflow_ecr_retag.__file__).parent / "py.typed").exists()


def test_airflow_config_knows_the_freeze_settled_heap_option(tmp_path):
    def value(**environ: str) -> str:
        out = subprocess.run(
            [sys.executable, "-m", "airflow", "config", "get-value", "ecr_retag", "freeze_settled_heap"],
            env={
                **{k: v for k, v in os.environ.items() if k != "AIRFLOW__ECR_RETAG__FREEZE_SETTLED_HEAP"},
                "AIRFLOW_HOME": str(tmp_path),
                **environ,
            },
            capture_output=True,
            text=True,
            timeout=300,
            check=True,
        )
        return out.stdout.strip().splitlines()[-1]

    # Declared by the provider (get_provider_info()["config"]): a default without any airflow.cfg entry.
    assert value() == "False"
    assert value(AIRFLOW__ECR_RETAG__FREEZE_SETTLED_HEAP="True") == "True"
