"""The whole-DAG runner users get: the throwaway Airflow home, its errors, the run's result.

The runs themselves are tests/test_example_dags.py (every example DAG goes through ``run_dag``)
and the user project that tests/test_user_project.py runs from the built wheel.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest

from airflow_ecr_retag.testing.dag_runner import (
    AirflowHomeError,
    DagRunError,
    DagRunResult,
    prepare_airflow_home,
    run_dag,
)

pytest_plugins = ["pytester"]


def test_the_plugin_points_airflow_at_a_throwaway_home_before_it_is_imported():
    from airflow.configuration import conf

    home = Path(os.environ["AIRFLOW_HOME"])
    assert home.parent == Path(tempfile.gettempdir()) and home.name.startswith("airflow-home-")
    assert conf.get("database", "sql_alchemy_conn") == f"sqlite:///{home / 'airflow.db'}"
    assert conf.getboolean("core", "unit_test_mode") and not conf.getboolean("core", "load_examples")
    assert Path(conf.get("core", "dags_folder")).name == "example_dags"  # the ecr_retag_dags_folder option


def test_a_home_set_after_airflow_was_imported_is_refused_saying_why(tmp_path):
    before = dict(os.environ)
    with pytest.raises(AirflowHomeError, match=r"Airflow was imported before .*pytest_plugins"):
        prepare_airflow_home(tmp_path / "late")
    assert dict(os.environ) == before and not (tmp_path / "late").exists()


def test_run_dag_waits_with_that_error_while_the_doubles_fixtures_still_work(pytester):
    # Airflow is imported in this process, so the inner session's plugin cannot set a home.
    pytester.makepyfile(
        """
        def test_double(ecr_double):
            ecr_double.create_repository("team/app")
            assert ecr_double.tags("team/app") == {}

        def test_dag(run_dag):
            pass
        """
    )
    result = pytester.runpytest_inprocess("-p", "airflow_ecr_retag.testing.pytest_plugin", "-p", "no:cacheprovider")
    result.assert_outcomes(passed=1, errors=1)
    result.stdout.fnmatch_lines(["*AirflowHomeError: Airflow was imported before its throwaway home was set*"])


def test_an_unknown_dag_is_an_error_naming_the_dags_there():
    with pytest.raises(
        DagRunError, match=r"no DAG 'example_ecr_nope' in .*example_dags \(found \[.*'example_ecr_release'"
    ):
        run_dag("example_ecr_nope")


def test_a_missing_xcom_names_what_the_task_pushed():
    result = DagRunResult("d", "r", "failed", {"promote": "failed"}, {"promote": {"ecr_image": {}}})
    with pytest.raises(KeyError, match=r"task 'promote' pushed no XCom 'promotion' \(it pushed \['ecr_image'\]"):
        result.xcom("promote", "promotion")
    assert result.xcom("promote", "ecr_image") == {}
