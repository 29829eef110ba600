"""Release set: promote an API, a worker and a migration image as one release; roll back if the deploy fails.

CI pushes ``sha-<commit>`` in each of the three repositories. ``EcrReleaseOperator`` reads all
three and checks every guard, ``overwrite`` and immutability conflict before writing anything,
then sets the version tag and ``prod`` on each image (if a write fails, it undoes what it wrote
and fails). The deploy task deploys each image by digest, from the ``release`` XCom. If the
deploy fails, ``EcrRollbackOperator`` (``trigger_rule="one_failed"``) puts every moved tag back
at exactly its previous digest and removes the version tags the release added, and
``deploy_failed`` fails the run, so a rolled-back release never shows as a success. If the
deploy succeeds, both are skipped.

Trigger with ``{"sha": "...", "version": "v1.4.2"}``; ``{"fail_deploy": true}`` simulates a
failed deploy. Against real AWS, set the ``aws_default`` connection (or the usual AWS
environment) and point ``REPOSITORIES`` at yours.
"""

from __future__ import annotations

import pendulum
from airflow.providers.common.compat.sdk import AirflowFailException
from airflow.sdk import DAG, Param, task

from airflow_ecr_retag import EcrReleaseOperator, EcrRollbackOperator

REPOSITORIES = ["team/api", "team/worker", "team/migrate"]

with DAG(
    dag_id="example_ecr_release_set",
    schedule=None,
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
    params={
        "sha": Param("0123abcd", type="string"),
        "version": Param("v1.4.2", type="string"),
        "fail_deploy": Param(False, type="boolean"),
    },
    tags=["example", "ecr"],
    doc_md=__doc__,
) as dag:
    release = EcrReleaseOperator(
        task_id="release",
        images=[{"repository_name": repository, "source_tag": "sha-{{ params.sha }}"} for repository in REPOSITORIES],
        target_tags=["{{ params.version }}", "prod"],
    )

    @task(retries=0)
    def deploy(params: dict | None = None, ti=None) -> list[str]:
        """Stand-in for the real deploy: every image by digest, never by a mutable tag."""
        uris = [report["image_uri"] for report in ti.xcom_pull(task_ids="release", key="release")]
        for uri in uris:
            print(f"Deploying {uri}")
        if params["fail_deploy"]:
            raise AirflowFailException("deploy failed (simulated): team/api did not pass its health checks")
        return uris

    rollback = EcrRollbackOperator(
        task_id="rollback",
        # One promotion report per repository; rendered as text, parsed back by the operator.
        promotions="{{ ti.xcom_pull(task_ids='release', key='release') }}",
        trigger_rule="one_failed",  # a string: Airflow 3.0's airflow.sdk has no TriggerRule
    )

    @task(retries=0)
    def deploy_failed() -> None:
        """Runs only after a roll-back: the release did not ship, so the run must not succeed."""
        raise AirflowFailException("the deploy failed; every tag was rolled back to its previous digest")

    release >> deploy() >> rollback >> deploy_failed()
