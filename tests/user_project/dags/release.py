"""Wait for CI's sha-<commit> image, promote exactly that digest to the version and prod, announce it."""

from __future__ import annotations

import pendulum
from airflow.sdk import DAG, Param, task

from airflow_ecr_retag import EcrRetagOperator, EcrTagSensor

REPOSITORY = "shop/web"

with DAG(
    dag_id="release",
    schedule=None,
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
    params={"sha": Param("", type="string"), "version": Param("v1.0.0", type="string")},
):
    wait_for_build = EcrTagSensor(
        task_id="wait_for_build",
        repository_name=REPOSITORY,
        tag="sha-{{ params.sha }}",
        poke_interval=1,
        timeout=60,
    )
    promote = EcrRetagOperator(
        task_id="promote",
        repository_name=REPOSITORY,
        source_tag="sha-{{ params.sha }}",
        source_digest=wait_for_build.output,  # promote what CI built, even if the tag moves meanwhile
        target_tags=["{{ params.version }}", "prod"],
        botocore_config={"retries": {"mode": "standard", "max_attempts": 3}},
    )

    @task
    def announce(ti=None) -> str:
        promotion = ti.xcom_pull(task_ids="promote", key="promotion")
        print(f"Released {promotion['image_uri']}")
        return promotion["image_uri"]

    promote >> announce()
