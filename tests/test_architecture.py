"""The house rules that CONTRIBUTING.md states and import-linter cannot check alone."""

from __future__ import annotations

import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
from airflow.providers.common.compat.sdk import AirflowFailException
from botocore.exceptions import ClientError

import airflow_ecr_retag
from airflow_ecr_retag import exceptions
from airflow_ecr_retag.core import errors as core_errors

PACKAGE = Path(airflow_ecr_retag.__file__).parent
CORE_MODULES = sorted(
    f"airflow_ecr_retag.core.{p.stem}" for p in (PACKAGE / "core").glob("*.py") if p.stem != "__init__"
)


def test_importing_the_core_loads_no_airflow():
    loaded = "sorted(m for m in sys.modules if m.split('.')[0] == 'airflow')"
    code = f"import sys; import {', '.join(CORE_MODULES)}; print({loaded})"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120)
    assert out.stdout.strip().splitlines()[-1] == "[]"
    assert len(CORE_MODULES) >= 9


def test_no_two_modules_share_a_file_name():
    names = Counter(p.name for p in PACKAGE.rglob("*.py") if p.name != "__init__.py")
    assert [name for name, count in names.items() if count > 1] == []


def test_the_trigger_class_path_stored_in_trigger_rows_keeps_working():
    from airflow_ecr_retag.triggers import EcrTagTrigger
    from airflow_ecr_retag.triggers.tag import EcrTagTrigger as by_module_path

    assert EcrTagTrigger is by_module_path
    classpath, _ = EcrTagTrigger(repository_name="team/app", tag="x").serialize()
    assert classpath == "airflow_ecr_retag.triggers.tag.EcrTagTrigger"


@pytest.mark.parametrize(
    ("package", "name"),
    [
        ("airflow_ecr_retag", "EcrRetagOperator"),
        ("airflow_ecr_retag", "EcrReleaseOperator"),
        ("airflow_ecr_retag", "EcrRollbackOperator"),
        ("airflow_ecr_retag", "EcrTagHygieneOperator"),
        ("airflow_ecr_retag", "EcrTagSensor"),
        ("airflow_ecr_retag", "EcrImageScanSensor"),
        ("airflow_ecr_retag.operators", "EcrRetagOperator"),
        ("airflow_ecr_retag.operators", "EcrReleaseOperator"),
        ("airflow_ecr_retag.operators", "EcrRollbackOperator"),
        ("airflow_ecr_retag.operators", "EcrTagHygieneOperator"),
        ("airflow_ecr_retag.sensors", "EcrTagSensor"),
        ("airflow_ecr_retag.sensors", "EcrImageScanSensor"),
        ("airflow_ecr_retag.triggers", "EcrTagTrigger"),
        ("airflow_ecr_retag.triggers", "EcrImageScanTrigger"),
        ("airflow_ecr_retag.triggers", "EcrTagEventTrigger"),
        ("airflow_ecr_retag", "EcrTagEventTrigger"),
        ("airflow_ecr_retag", "ecr_image_asset"),
    ],
)
def test_each_class_is_exported_from_its_layer_package(package, name):
    import importlib

    module = importlib.import_module(package)
    assert name in dir(module)
    assert getattr(module, name).__name__ == name


def test_every_core_error_has_an_airflow_twin():
    core_classes = {
        c for c in vars(core_errors).values() if isinstance(c, type) and issubclass(c, core_errors.EcrRetagError)
    }
    assert set(exceptions.TWINS) == core_classes
    for core_class, twin in exceptions.TWINS.items():
        assert issubclass(twin, core_class) and issubclass(twin, AirflowFailException), twin
        assert twin.__name__ == core_class.__name__


def test_fail_fast_raises_the_twin_with_the_core_error_attributes():
    with pytest.raises(exceptions.InvalidInputError) as error, exceptions.fail_fast():
        raise core_errors.InvalidInputError("target_tags", "must name at least one tag", [])
    assert isinstance(error.value, AirflowFailException) and isinstance(error.value, core_errors.InvalidInputError)
    assert (error.value.field, error.value.rule) == ("target_tags", "must name at least one tag")
    assert str(error.value) == "target_tags: must name at least one tag (got [])"


def test_fail_fast_maps_permanent_ecr_errors_and_lets_transient_ones_through():
    def client_error(code):
        return ClientError({"Error": {"Code": code, "Message": f"{code} happened"}}, "PutImage")

    with pytest.raises(exceptions.EcrPermanentError) as error, exceptions.fail_fast():
        raise client_error("RepositoryNotFoundException")
    assert error.value.code == "RepositoryNotFoundException"
    assert isinstance(error.value.__cause__, ClientError)
    with pytest.raises(ClientError) as transient, exceptions.fail_fast():
        raise client_error("ThrottlingException")
    assert not isinstance(transient.value, AirflowFailException)  # botocore and Airflow may retry it
