"""A real deployment: scheduler, dag-processor, triggerer and api-server (LocalExecutor, SQLite) against the double.

``example_ecr_roll_out`` is scheduled on ``prod`` through its ``EcrTagEventTrigger`` watcher.
Another actor moves the tag: the roll-out runs once. The triggerer is stopped, the tag moved
again, a new triggerer started: it runs exactly once more, with the new digest. A restart with
nothing changed starts nothing. The test asserts what the system decides (the asset events and
the DAG runs that consumed them, the watcher's memory in the asset state store, the deployed
digest, the double's tags) and polls for it with generous deadlines; when anything is not
reached in time it fails with every process's log.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from airflow_ecr_retag.testing import build_image

# The watcher's memory (the asset state store) and its ack (shared streams) are Airflow 3.3's.
pytest.importorskip("airflow.triggers.shared_stream", reason="Airflow before 3.3 has no asset state store")
# Several Airflow processes start, three triggerers among them: on 2 loaded cores the suite's
# 300 s per test is not always enough; each step has its own deadline and fails with the logs.
pytestmark = [pytest.mark.timing, pytest.mark.timeout(900)]

EXAMPLE = Path(__file__).resolve().parent.parent / "example_dags" / "example_ecr_roll_out.py"
REPO = "team/app"
DAG_ID = "example_ecr_roll_out"
ASSET = "ecr://team/app:prod"
MEMORY_KEY = "airflow_ecr_retag.tags:-/team/app:prod"
DEADLINE = 150.0  # seconds for any one step on 2 loaded cores; a healthy run takes a few


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Deployment:
    """The Airflow processes of one home, their logs, and read-only queries of its SQLite database."""

    def __init__(self, home: Path, double_env: dict[str, str]):
        self.home = home
        self.logs = home / "logs-of-processes"
        self.logs.mkdir(parents=True)
        dags = home / "dags"
        dags.mkdir()
        shutil.copy(EXAMPLE, dags / EXAMPLE.name)
        self.db = home / "airflow.db"
        port = free_port()
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("AIRFLOW")}
        self.env.update(double_env)
        self.env.update(
            {
                "AIRFLOW_HOME": str(home),
                "AIRFLOW__CORE__DAGS_FOLDER": str(dags),
                "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
                "AIRFLOW__CORE__EXECUTOR": "LocalExecutor",
                "AIRFLOW__CORE__PARALLELISM": "2",
                "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": "False",
                "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS": "True",
                "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"http://127.0.0.1:{port}/execution/",
                "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{self.db}",
                "AIRFLOW__API__PORT": str(port),
                "AIRFLOW__API__HOST": "127.0.0.1",
                "AIRFLOW__API__WORKERS": "1",
                "AIRFLOW__API_AUTH__JWT_SECRET": "event-driven-deployment-test-secret-0123456789",
                # One DAG file, parsed at start; watchers are registered when it is.
                "AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL": "5",
                "AIRFLOW__DAG_PROCESSOR__MIN_FILE_PROCESS_INTERVAL": "600",
                "AIRFLOW__DAG_PROCESSOR__PARSING_PROCESSES": "1",
                "AIRFLOW__SCHEDULER__SCHEDULER_IDLE_SLEEP_TIME": "0.5",
                "AIRFLOW__LOGGING__LOGGING_LEVEL": "INFO",
                "AIRFLOW_CONN_AWS_DEFAULT": json.dumps({"conn_type": "aws"}),
                "ECR_ROLL_OUT_POKE_INTERVAL": "1",
            }
        )
        self.processes: dict[str, subprocess.Popen] = {}
        self.started = 0
        self.began = time.monotonic()

    def airflow(self, *args: str) -> None:
        log = self.logs / f"{'-'.join(args)}.log"
        with log.open("w") as handle:
            result = subprocess.run(
                [sys.executable, "-m", "airflow", *args],
                env=self.env,
                stdout=handle,
                stderr=subprocess.STDOUT,
                timeout=DEADLINE * 2,
            )
        if result.returncode:
            raise AssertionError(f"airflow {' '.join(args)} failed:\n{log.read_text()[-4000:]}")

    def start(self, name: str, *args: str) -> None:
        self.started += 1
        log = (self.logs / f"{self.started:02d}-{name}.log").open("w")
        self.processes[name] = subprocess.Popen(
            [sys.executable, "-m", "airflow", *args],
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def stop(self, *names: str, grace: float = 60.0) -> None:
        """SIGTERM (Airflow's graceful shutdown) to each process group at once; SIGKILL after ``grace`` seconds."""
        processes = [self.processes.pop(name) for name in names]
        for process in processes:
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGTERM)
        deadline = time.monotonic() + grace
        for process in processes:
            try:
                process.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait(timeout=30)

    def stop_all(self) -> None:
        # The end of the test: nothing is asserted after it, so the processes get a short grace.
        self.stop(*self.processes, grace=5.0)

    def log_of(self, name: str) -> str:
        """The log of the process started last under ``name``."""
        [latest] = sorted(self.logs.glob(f"*-{name}.log"))[-1:]
        return latest.read_text(errors="replace")

    def report(self) -> str:
        parts = []
        for log in sorted(self.logs.glob("*.log")):
            parts.append(f"----- {log.name} (last 3,000 characters) -----\n{log.read_text(errors='replace')[-3000:]}")
        return "\n".join(parts)

    def wait_for(self, what: str, condition, limit: float = DEADLINE):
        """Poll ``condition`` until it returns something truthy; fail with every log if it does not in time."""
        deadline = time.monotonic() + limit
        while True:
            for name, process in self.processes.items():
                if process.poll() is not None:
                    raise AssertionError(
                        f"airflow {name} exited ({process.returncode}) while waiting for {what}\n" + self.report()
                    )
            value = condition()
            if value:
                print(f"{time.monotonic() - self.began:6.1f} s: {what}", flush=True)  # shown if the test fails
                return value
            if time.monotonic() > deadline:
                raise AssertionError(f"not reached within {limit:.0f} s: {what}\n" + self.report())
            time.sleep(0.25)

    def query(self, sql: str, *params: object) -> list[tuple]:
        for _ in range(40):
            try:
                with sqlite3.connect(f"file:{self.db}?mode=ro", uri=True, timeout=10) as db:
                    return db.execute(sql, params).fetchall()
            except sqlite3.OperationalError as error:  # locked by a writer, or a table not made yet
                last = error
                time.sleep(0.25)
        raise last

    def running_triggerers(self) -> int:
        return self.query("SELECT COUNT(*) FROM job WHERE job_type = 'TriggererJob' AND state = 'running'")[0][0]

    def memory(self) -> dict | None:
        rows = self.query(
            "SELECT s.value FROM asset_state_store s JOIN asset a ON a.id = s.asset_id WHERE a.name = ? AND s.key = ?",
            ASSET,
            MEMORY_KEY,
        )
        return json.loads(rows[0][0]) if rows else None

    def asset_events(self) -> list[dict]:
        rows = self.query(
            "SELECT e.extra FROM asset_event e JOIN asset a ON a.id = e.asset_id WHERE a.name = ? ORDER BY e.id", ASSET
        )
        return [json.loads(extra) for (extra,) in rows]

    def runs(self) -> list[tuple[str, str, list[dict]]]:
        """(run_id, state, the extras of the asset events it consumed) of each roll-out run, oldest first."""
        runs = self.query("SELECT id, run_id, state FROM dag_run WHERE dag_id = ? ORDER BY id", DAG_ID)
        result = []
        for run_pk, run_id, state in runs:
            consumed = self.query(
                "SELECT e.extra FROM dagrun_asset_event r JOIN asset_event e ON e.id = r.event_id "
                "WHERE r.dag_run_id = ? ORDER BY e.id",
                run_pk,
            )
            result.append((run_id, state, [json.loads(extra) for (extra,) in consumed]))
        return result

    def runs_if(self, condition) -> list | None:
        runs = self.runs()
        return runs if condition(runs) else None

    def deployed(self, run_id: str) -> dict:
        [(value,)] = self.query(
            "SELECT value FROM xcom WHERE dag_id = ? AND run_id = ? AND task_id = 'deploy' AND key = 'return_value'",
            DAG_ID,
            run_id,
        )
        return json.loads(value)


@pytest.fixture
def deployment(ecr_double_server, tmp_path):
    env = {name: os.environ[name] for name in ecr_double_server.environ()}
    env.update({k: v for k, v in os.environ.items() if k.startswith("AWS_")})
    deployment = Deployment(tmp_path / "airflow", env)
    try:
        yield deployment
    finally:
        deployment.stop_all()


def polls_of_prod(double) -> int:
    return sum(1 for c in double.requests_for("BatchGetImage") if {"imageTag": "prod"} in c["imageIds"])


def test_a_tag_moved_by_another_actor_starts_the_roll_out_once_across_triggerer_restarts(ecr_double_server, deployment):
    double = ecr_double_server
    double.create_repository(REPO)
    first = double.push(REPO, build_image("oci", "first"), ["prod"])
    second = double.push(REPO, build_image("oci-index", "second"), ["sha-2"])
    third = double.push(REPO, build_image("oci", "third"), ["sha-3"])

    deployment.airflow("db", "migrate")
    # The api-server serves the Execution API the LocalExecutor's tasks report to.
    deployment.start("api-server", "api-server", "--apps", "execution")
    deployment.start("dag-processor", "dag-processor")
    deployment.start("scheduler", "scheduler", "--skip-serve-logs")
    deployment.start("triggerer", "triggerer", "--skip-serve-logs")

    # The watcher's first poll is its baseline: remembered, not announced.
    assert deployment.wait_for("the watcher's baseline in the asset state store", deployment.memory) == {
        "tags": {"prod": first}
    }
    assert deployment.asset_events() == [] and deployment.runs() == []

    # Another actor moves prod: one event, one run.
    double.move_tag(REPO, "prod", second)
    deployment.wait_for(
        "the memory to hold the second digest", lambda: deployment.memory() == {"tags": {"prod": second}}
    )
    [(_, _, consumed)] = deployment.wait_for("the first roll-out run", deployment.runs)
    [event] = consumed
    assert event["from_trigger"] is True
    payload = event["payload"]
    assert {k: payload[k] for k in ("tag", "digest", "previous_digest", "repository_name", "registry_id")} == {
        "tag": "prod",
        "digest": second,
        "previous_digest": first,
        "repository_name": REPO,
        "registry_id": "123456789012",
    }
    assert payload["image_uri"] == f"123456789012.dkr.ecr.us-east-1.amazonaws.com/{REPO}@{second}"
    assert payload["image_pushed_at"]

    # No triggerer runs while prod moves again; the next one announces the change exactly once.
    deployment.stop("triggerer")
    double.move_tag(REPO, "prod", third)
    deployment.start("triggerer", "triggerer", "--skip-serve-logs")
    deployment.wait_for("the memory to hold the third digest", lambda: deployment.memory() == {"tags": {"prod": third}})
    runs = deployment.wait_for("the second roll-out run", lambda: deployment.runs_if(lambda r: len(r) >= 2))
    assert [[e["payload"]["digest"] for e in consumed] for _, _, consumed in runs] == [[second], [third]]
    assert runs[1][2][0]["payload"]["previous_digest"] == second

    # A restart with nothing changed starts nothing: a rolling restart (the new triggerer up, then the
    # old one stopped, so the watcher moves over) and the new watcher polls, remembers, stays quiet.
    deployment.start("next-triggerer", "triggerer", "--skip-serve-logs")
    deployment.wait_for("the new triggerer's heartbeat", lambda: deployment.running_triggerers() == 2)
    deployment.stop("triggerer")
    deployment.processes["triggerer"] = deployment.processes.pop("next-triggerer")
    deployment.wait_for(
        "the restarted watcher's decision on its first poll",
        lambda: "Polled team/app:prod: nothing to announce" in deployment.log_of("next-triggerer"),
    )
    assert "now points at" not in deployment.log_of("next-triggerer")
    polls = polls_of_prod(double)
    deployment.wait_for("two more polls of prod", lambda: polls_of_prod(double) >= polls + 2)

    finished = deployment.wait_for(
        "both roll-out runs to finish",
        lambda: deployment.runs_if(lambda runs: all(state in ("success", "failed") for _, state, _ in runs)),
    )
    assert [state for _, state, _ in finished] == ["success", "success"], deployment.report()
    assert len(deployment.asset_events()) == 2
    assert deployment.memory() == {"tags": {"prod": third}}
    assert [deployment.deployed(run_id)["digest"] for run_id, _, _ in finished] == [second, third]
    assert deployment.deployed(finished[0][0])["image_uri"].endswith(f"/{REPO}@{second}")
    assert double.tags(REPO)["prod"] == third
    assert double.write_calls == 0  # the watcher and the roll-out only read
