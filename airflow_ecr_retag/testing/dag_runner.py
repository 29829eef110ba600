"""Run a whole DAG against the ECR double from a test: a throwaway Airflow home, ``dag.test()``, states and XComs.

Airflow reads ``AIRFLOW_HOME`` and its configuration once, when it is first imported, so the home
must be chosen before anything imports Airflow: :func:`prepare_airflow_home` does that (the pytest
plugin calls it in ``pytest_configure``, before your test modules are collected), and refuses,
saying why, once Airflow is imported. :func:`migrate_metadata_db` creates the home's SQLite
metadata DB (as ``airflow db migrate`` does, once a session). :func:`run_dag` then runs a DAG of the DAGs
folder in this process with ``dag.test()``, the way ``airflow dags test`` runs it: every task
through the Task SDK's runner, deferred tasks through an in-process triggerer, so templates,
XComs, extra links, retries and trigger rules behave as in a real run, and the double's counters,
faults and ``before_call`` actions (Python functions included) see every call the tasks make.
The outcome comes back as a :class:`DagRunResult`: the run's state, every task's state, every
XCom and the extras of the asset events its tasks emitted, read from the metadata DB (no SQL in
your tests). The DAG's outlet assets are made active first, as a scheduler makes the assets of
the DAGs it parses: a task whose outlets name an inactive asset fails, and ``dag.test()`` does not
activate them on every supported Airflow (3.0 does not).
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

#: The ``aws_default`` connection the run_dag fixture gives the tasks unless the environment has
#: one: credentials and endpoint then come from the double's environment variables.
DEFAULT_AWS_CONNECTION = json.dumps({"conn_type": "aws"})


class AirflowHomeError(RuntimeError):
    """The throwaway Airflow home cannot take effect (Airflow was imported first), or its DB cannot be made."""


class DagRunError(RuntimeError):
    """The DAG could not be run at all (an import error, an unknown DAG id). A run whose tasks fail
    is not an error: it is a :class:`DagRunResult` whose ``state`` is ``"failed"``."""


def airflow_home_environ(home: str | os.PathLike[str], *, dags_folder: str | os.PathLike[str] | None) -> dict[str, str]:
    """The variables that make Airflow use ``home`` and nothing of yours: its own config file and
    SQLite DB (whatever ``AIRFLOW__DATABASE__SQL_ALCHEMY_CONN`` your shell has), no example DAGs,
    unit-test mode (so an operator's ``execute`` called directly does not warn that it runs outside
    the Task Runner), a DAG-file import timeout of 120 s instead of 30 (a loaded CI machine), and
    the DAGs folder."""
    home = Path(home).resolve()
    environ = {
        "AIRFLOW_HOME": str(home),
        "AIRFLOW_CONFIG": str(home / "airflow.cfg"),
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{home / 'airflow.db'}",
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__CORE__UNIT_TEST_MODE": "True",
        # The first DAG file a test process parses pays for importing Airflow's models; on a busy CI
        # machine that alone has passed the default 30 s, and a file timed out mid-import breaks the
        # imports of every file after it.
        "AIRFLOW__CORE__DAGBAG_IMPORT_TIMEOUT": "120",
    }
    if dags_folder is not None:
        environ["AIRFLOW__CORE__DAGS_FOLDER"] = str(Path(dags_folder).resolve())
    return environ


def prepare_airflow_home(
    home: str | os.PathLike[str], *, dags_folder: str | os.PathLike[str] | None = None
) -> dict[str, str]:
    """Point this process (and the processes it starts) at a throwaway Airflow home; returns the
    variables set. Call it before anything imports Airflow: afterwards it raises
    :class:`AirflowHomeError`, since Airflow would keep the home it found at import."""
    if "airflow" in sys.modules:
        raise AirflowHomeError(
            "Airflow was imported before its throwaway home was set, so it keeps the home it found "
            f"({os.environ.get('AIRFLOW_HOME', '~/airflow')}). Enable the plugin in your top-level "
            'conftest.py (pytest_plugins = ["airflow_ecr_retag.testing.pytest_plugin"]) or with '
            "`pytest -p airflow_ecr_retag.testing.pytest_plugin`, and import Airflow in tests, "
            "not at the top of conftest.py"
        )
    Path(home).mkdir(parents=True, exist_ok=True)
    environ = airflow_home_environ(home, dags_folder=dags_folder)
    os.environ.update(environ)
    return environ


def migrate_metadata_db() -> None:
    """Create (or upgrade) the metadata DB of the Airflow home this process uses, as
    ``airflow db migrate`` does (about 4 s for a new SQLite DB; in this process, which imports
    Airflow to run the DAGs anyway, rather than in a child that would import it again)."""
    from airflow.utils import db

    db.upgradedb()


@dataclass(frozen=True)
class DagRunResult:
    """What one ``dag.test()`` run left behind."""

    dag_id: str
    run_id: str
    #: The DAG run's state: ``"success"`` or ``"failed"``.
    state: str
    #: Each task's state (``"success"``, ``"failed"``, ``"upstream_failed"``, ``"skipped"``, ...) by
    #: task id; a mapped task's instances as ``"task_id[0]"``, ``"task_id[1]"``, ...
    states: dict[str, str | None]
    #: Every XCom of the run: task id (as in ``states``) -> key -> value. The extra links' XComs are
    #: there too, under their keys (``ecr_image``, ``ecr_repository``).
    xcoms: dict[str, dict[str, Any]] = field(default_factory=dict)
    #: The extras of the asset events the run's tasks emitted, oldest first, by asset name
    #: (``{"ecr://team/app:prod": [{"digest": ..., "image_uri": ..., "tags": [...], "moved": {...}}]}``).
    asset_events: dict[str, list[dict[str, Any]]] = field(default_factory=dict)

    def xcom(self, task_id: str, key: str = "return_value") -> Any:
        """One XCom's value; the ``KeyError`` names the XComs the task has when it is not there."""
        pushed = self.xcoms.get(task_id, {})
        if key not in pushed:
            raise KeyError(
                f"task {task_id!r} pushed no XCom {key!r} (it pushed {sorted(pushed)}; states {self.states})"
            )
        return pushed[key]


def _instance_name(task_id: str, map_index: int | None) -> str:
    return task_id if map_index is None or map_index < 0 else f"{task_id}[{map_index}]"


def _state_name(state: Any) -> str | None:
    return None if state is None else str(getattr(state, "value", state))


def _activate_outlet_assets(dag: Any) -> None:
    from airflow.models.asset import AssetActive, AssetModel
    from airflow.sdk import Asset
    from airflow.utils.session import create_session

    outlets = {
        (outlet.name, outlet.uri): outlet
        for task in dag.tasks
        for outlet in getattr(task, "outlets", None) or ()
        if isinstance(outlet, Asset)
    }
    if not outlets:
        return
    with create_session() as session:
        for (name, uri), asset in outlets.items():
            model = session.query(AssetModel).filter_by(name=name, uri=uri).one_or_none()
            if model is None:
                model = AssetModel(name=name, uri=uri, group=asset.group)
                session.add(model)
                session.flush()
            if not session.query(AssetActive).filter_by(name=name, uri=uri).count():
                session.add(AssetActive.for_asset(model))


def run_dag(
    dag_id: str,
    *,
    dags_folder: str | os.PathLike[str] | None = None,
    run_conf: Mapping[str, Any] | None = None,
    logical_date: datetime | None = None,
    task_ids: Iterable[str] | None = None,
) -> DagRunResult:
    """Run one DAG with ``dag.test()`` in this process and return what it left behind.

    The Airflow home must be prepared (:func:`prepare_airflow_home`) and migrated
    (:func:`migrate_metadata_db`); the ``run_dag`` fixture of the pytest plugin does both, and
    points the tasks at the test's ``ecr_double_server``.

    :param dag_id: the DAG to run.
    :param dags_folder: where its file is; default: Airflow's DAGs folder
        (``AIRFLOW__CORE__DAGS_FOLDER``). ``dag.test()`` needs the file inside that folder.
    :param run_conf: the run's ``conf`` (``params`` in templates).
    :param logical_date: the run's logical date (default: now).
    :param task_ids: run only these tasks of the DAG (``dag.partial_subset``, without their upstream
        tasks: an XCom they pull from a task left out is None), still through the Task Runner.
    """
    from airflow.models import DagBag
    from airflow.models.asset import AssetEvent, AssetModel
    from airflow.models.xcom import XComModel
    from airflow.utils.session import create_session

    folder = str(dags_folder if dags_folder is not None else os.environ.get("AIRFLOW__CORE__DAGS_FOLDER", ""))
    if not folder:
        raise DagRunError("no DAGs folder: set AIRFLOW__CORE__DAGS_FOLDER or pass dags_folder=")
    bag = DagBag(dag_folder=folder)
    dag = bag.dags.get(dag_id)  # not get_dag(), which would look in the metadata DB for a DAG not parsed
    if dag is None:
        errors = "".join(f"\n{path}:\n{error}" for path, error in bag.import_errors.items())
        raise DagRunError(f"no DAG {dag_id!r} in {folder} (found {sorted(bag.dag_ids)}){errors}")
    if task_ids is not None:
        dag = dag.partial_subset(list(task_ids), include_upstream=False)
    options: dict[str, Any] = {"run_conf": dict(run_conf or {})}
    if logical_date is not None:
        options["logical_date"] = logical_date
    _activate_outlet_assets(dag)
    dag_run = dag.test(**options)
    states = {_instance_name(ti.task_id, ti.map_index): _state_name(ti.state) for ti in dag_run.get_task_instances()}
    xcoms: dict[str, dict[str, Any]] = {}
    with create_session() as session:
        for row in session.query(XComModel).filter_by(dag_id=dag_run.dag_id, run_id=dag_run.run_id):
            xcoms.setdefault(_instance_name(row.task_id, row.map_index), {})[row.key] = XComModel.deserialize_value(row)
        asset_events: dict[str, list[dict[str, Any]]] = {}
        emitted = (
            session.query(AssetModel.name, AssetEvent.extra)
            .join(AssetModel, AssetEvent.asset_id == AssetModel.id)
            .filter(AssetEvent.source_dag_id == dag_run.dag_id, AssetEvent.source_run_id == dag_run.run_id)
            .order_by(AssetEvent.timestamp, AssetEvent.id)
        )
        for name, extra in emitted:
            asset_events.setdefault(name, []).append(dict(extra or {}))
    return DagRunResult(dag_id, dag_run.run_id, _state_name(dag_run.state) or "", states, xcoms, asset_events)
