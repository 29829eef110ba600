"""pytest fixtures for the ECR double and for whole-DAG runs against it.

Enable with ``pytest_plugins = ["airflow_ecr_retag.testing.pytest_plugin"]`` in your top-level
``conftest.py`` (or ``pytest -p airflow_ecr_retag.testing.pytest_plugin``):

- ``ecr_double``: an in-process double; boto3 (and so your operators, called directly) reach it unchanged.
- ``ecr_double_server``: the double served on 127.0.0.1; ``AWS_ENDPOINT_URL_ECR`` points at it for the test.
- ``run_dag``: ``run_dag(dag_id, run_conf=..., logical_date=..., task_ids=...)`` runs a whole DAG of
  the DAGs folder with ``dag.test()`` against this test's ``ecr_double_server`` and returns a
  :class:`~airflow_ecr_retag.testing.dag_runner.DagRunResult` (states and XComs).
- ``airflow_db``: the throwaway home's metadata DB, migrated once a session (``run_dag`` uses it).

Before any test module is collected (``pytest_configure``), the plugin points Airflow at a
throwaway home (:func:`~airflow_ecr_retag.testing.dag_runner.prepare_airflow_home`: a temporary
directory with its own SQLite DB and config, unit-test mode, no example DAGs), removed at the end
of the session. Two ini options (``[tool.pytest.ini_options]`` or ``pytest.ini``):

- ``ecr_retag_dags_folder``: the DAGs folder, relative to the rootdir (default:
  ``AIRFLOW__CORE__DAGS_FOLDER`` if set, else ``<rootdir>/dags``).
- ``ecr_retag_airflow_home``: ``throwaway`` (the default) or ``environment``, to keep the Airflow
  home and configuration your environment gives (its DB is then migrated by ``airflow_db``).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from airflow_ecr_retag.testing import dag_runner
from airflow_ecr_retag.testing.dag_runner import (
    DEFAULT_AWS_CONNECTION,
    AirflowHomeError,
    DagRunResult,
    migrate_metadata_db,
    prepare_airflow_home,
)
from airflow_ecr_retag.testing.double import EcrDouble

DAGS_FOLDER_OPTION = "ecr_retag_dags_folder"
AIRFLOW_HOME_OPTION = "ecr_retag_airflow_home"
_HOME_MODES = ("throwaway", "environment")
_home_key = pytest.StashKey[tuple[str | None, dict[str, str | None], AirflowHomeError | None]]()


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addini(DAGS_FOLDER_OPTION, "the DAGs folder run_dag runs DAGs from, relative to the rootdir")
    parser.addini(AIRFLOW_HOME_OPTION, "throwaway (default): a temporary Airflow home; environment: keep yours")


def _dags_folder(config: pytest.Config) -> Path:
    configured = config.getini(DAGS_FOLDER_OPTION)
    if configured:
        return config.rootpath / configured
    if os.environ.get("AIRFLOW__CORE__DAGS_FOLDER"):
        return Path(os.environ["AIRFLOW__CORE__DAGS_FOLDER"])
    return config.rootpath / "dags"


def pytest_configure(config: pytest.Config) -> None:
    mode = config.getini(AIRFLOW_HOME_OPTION) or "throwaway"
    if mode not in _HOME_MODES:
        raise pytest.UsageError(f"{AIRFLOW_HOME_OPTION} is one of {', '.join(_HOME_MODES)}, not {mode!r}")
    if mode == "environment":
        config.stash[_home_key] = (None, {}, None)
        return
    home = tempfile.mkdtemp(prefix="airflow-home-")
    before = dict(os.environ)
    try:
        environ = prepare_airflow_home(home, dags_folder=_dags_folder(config))
    except AirflowHomeError as error:
        # Only run_dag needs the home: the other fixtures still work, so the error waits for it.
        shutil.rmtree(home, ignore_errors=True)
        config.stash[_home_key] = (None, {}, error)
        return
    config.stash[_home_key] = (home, {name: before.get(name) for name in environ}, None)


def pytest_unconfigure(config: pytest.Config) -> None:
    home, previous, _ = config.stash.get(_home_key, (None, {}, None))
    for name, value in previous.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value
    if home is not None:
        shutil.rmtree(home, ignore_errors=True)


@pytest.fixture
def ecr_double(monkeypatch: pytest.MonkeyPatch) -> Iterator[EcrDouble]:
    """An in-process ECR double with fake credentials; boto3 clients reach it with no change."""
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.delenv("AWS_ENDPOINT_URL_ECR", raising=False)
    monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)
    _default_aws_connection(monkeypatch)
    with EcrDouble() as double:
        yield double


@pytest.fixture
def ecr_double_server(monkeypatch: pytest.MonkeyPatch) -> Iterator[EcrDouble]:
    """The ECR double served on 127.0.0.1; ``AWS_ENDPOINT_URL_ECR`` points at it for the test."""
    _default_aws_connection(monkeypatch)
    with EcrDouble(server=True) as double:
        for name, value in double.environ().items():
            monkeypatch.setenv(name, value)
        yield double


def _default_aws_connection(monkeypatch: pytest.MonkeyPatch) -> None:
    """An ``aws_default`` connection with nothing in it, unless the environment has one: operators'
    default ``aws_conn_id`` then finds it (no "Unable to find AWS Connection ID" warning) and boto3
    takes credentials and endpoint from the environment, which the fixtures point at the double."""
    if "AIRFLOW_CONN_AWS_DEFAULT" not in os.environ:
        monkeypatch.setenv("AIRFLOW_CONN_AWS_DEFAULT", DEFAULT_AWS_CONNECTION)


@pytest.fixture(scope="session")
def airflow_db(pytestconfig: pytest.Config) -> None:
    """The Airflow home's metadata DB, migrated once a session (as ``airflow db migrate`` does, about 4 s)."""
    _, _, error = pytestconfig.stash.get(_home_key, (None, {}, None))
    if error is not None:
        raise error
    migrate_metadata_db()


@pytest.fixture
def run_dag(airflow_db: None, ecr_double_server: EcrDouble) -> Callable[..., DagRunResult]:
    """``run_dag(dag_id, *, run_conf=None, logical_date=None, task_ids=None, dags_folder=None)``: the
    whole DAG (or only ``task_ids``), run with ``dag.test()`` against this test's ``ecr_double_server``."""
    return dag_runner.run_dag
