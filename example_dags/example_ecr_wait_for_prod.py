"""Cross-team gate: wait, deferrable, until ``prod`` points at the digest this team expects.

The wait lives in the triggerer (``deferrable=True``, needs the ``async`` extra), so hundreds
of such gates hold no worker slot. Trigger with ``{"expected_digest": "sha256:..."}``; with
no digest given, the gate opens as soon as ``prod`` exists.
"""

from __future__ import annotations

import pendulum
from airflow.sdk import DAG, Param, task

from airflow_ecr_retag import EcrTagSensor

with DAG(
    dag_id="example_ecr_wait_for_prod",
    schedule=None,
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
    params={
        "repository": Param("team/app", type="string"),
        "expected_digest": Param(None, type=["null", "string"]),
    },
    render_template_as_native_obj=True,
    tags=["example", "ecr"],
    doc_md=__doc__,
) as dag:
    prod_ready = EcrTagSensor(
        task_id="prod_ready",
        repository_name="{{ params.repository }}",
        tag="prod",
        expected_digest="{{ params.expected_digest }}",
        deferrable=True,
        poke_interval=5,
        timeout=6 * 60 * 60,
    )

    @task
    def start_integration_tests(digest: str) -> str:
        print(f"prod is at {digest}: starting the integration tests")
        return digest

    start_integration_tests(prod_ready.output)
