"""Event-driven roll-out: when ``prod`` points at a new image, deploy that image by digest.

The DAG is scheduled on the asset ``ecr://team/app:prod`` (``ecr_image_asset``). Two things
update it:

- its watcher, ``EcrTagEventTrigger``, which polls the tag from the triggerer and announces each
  new digest, whoever moved the tag (CI, a person with the CLI, another Airflow): the event's
  extra is ``{"from_trigger": True, "payload": {"digest", "previous_digest", "image_uri", ...}}``;
- the release DAG's promotion (``example_ecr_release``), which declares the asset in its
  ``outlets``: its event's extra is ``{"digest", "image_uri", "tags", "moved"}``.

A promotion by the release DAG is seen by both, so the roll-out may run twice for one digest
(once when the two events are queued before the scheduler starts the run): ``deploy`` deploys
the newest event's digest, and deploying the digest that is already live changes nothing.

The watcher polls every ``ECR_ROLL_OUT_POKE_INTERVAL`` seconds (30 by default; the tests use 1).
"""

from __future__ import annotations

import os

import pendulum
from airflow.sdk import DAG, Asset, AssetWatcher, task

from airflow_ecr_retag import EcrTagEventTrigger, ecr_image_asset

REPOSITORY = "team/app"

prod = Asset(
    ecr_image_asset(REPOSITORY, "prod"),
    watchers=[
        AssetWatcher(
            name="team_app_prod",
            trigger=EcrTagEventTrigger(
                repository_name=REPOSITORY,
                tags=["prod"],
                poke_interval=float(os.environ.get("ECR_ROLL_OUT_POKE_INTERVAL", "30")),
            ),
        )
    ],
)

with DAG(
    dag_id="example_ecr_roll_out",
    schedule=[prod],
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
    tags=["example", "ecr"],
    doc_md=__doc__,
) as dag:

    @task
    def deploy(triggering_asset_events=None) -> dict:
        """Deploy the image of the newest event, by digest (a stand-in for kubectl, Helm or an ECS update)."""
        events = triggering_asset_events[prod]
        extra = events[-1].extra
        image = extra["payload"] if extra.get("from_trigger") else extra
        print(f"Deploying {image['image_uri']} ({len(events)} event(s) of {prod.name} in this run)")
        return {"digest": image["digest"], "image_uri": image["image_uri"], "events": len(events)}

    deploy()
