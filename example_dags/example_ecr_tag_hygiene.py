"""Daily tag hygiene: drop ``latest``, keep the 20 newest ``sha-*``, drop ``pr-*`` older than 14 days.

Release tags (``v*``, ``prod``, ``stable``) are protected. A dry run reports first, then the
real run removes tags. ``allow_image_deletion`` stays False: an image whose every tag is
selected keeps one, so no image is ever deleted by this DAG. ``max_removals`` caps a run at half
of the repository's tags: a wrong pattern fails the dry run, and nothing is removed.
"""

from __future__ import annotations

import pendulum
from airflow.sdk import DAG, Param

from airflow_ecr_retag import EcrTagHygieneOperator

RULES = [
    {"tag_pattern": "latest"},
    {"tag_pattern": "sha-*", "keep_latest": 20},
    {"tag_pattern": "pr-*", "older_than_days": 14},
]
PROTECT = ["v*", "prod", "stable"]
CAP = "50%"

with DAG(
    dag_id="example_ecr_tag_hygiene",
    schedule="@daily",
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
    params={"repository": Param("team/app", type="string")},
    tags=["example", "ecr"],
    doc_md=__doc__,
) as dag:
    report = EcrTagHygieneOperator(
        task_id="dry_run",
        repository_name="{{ params.repository }}",
        rules=RULES,
        protect=PROTECT,
        max_removals=CAP,
        dry_run=True,
    )
    clean_up = EcrTagHygieneOperator(
        task_id="clean_up",
        repository_name="{{ params.repository }}",
        rules=RULES,
        protect=PROTECT,
        max_removals=CAP,
    )
    report >> clean_up
