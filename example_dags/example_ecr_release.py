"""Release promotion: wait for CI's ``sha-<commit>`` image, test it by digest, gate it on its scan, promote that digest.

CI pushes ``sha-<commit>``. The sensor waits for it and hands over the digest; the test task
runs against that digest, so what was tested is what gets promoted. The scan gate
(``EcrImageScanSensor``) waits for ECR's vulnerability scan of that same digest (every
platform image of a multi-arch index) and fails, naming the blocking findings, if it has a
CRITICAL or HIGH one: then nothing is promoted. ``EcrRetagOperator`` adds the version tag and
``prod`` to that image with both ``source_tag`` and ``source_digest`` set: if someone re-pushed
``sha-<commit>`` in between, nothing is written and the task fails. The deploy task uses the
``image_uri`` by digest from the ``promotion`` XCom, never a mutable tag.

Then ``EcrCopyImageOperator`` copies the tested digest from the build account to the production
account, every platform and signature, only the blobs production lacks, and tags it there: two
connections, ``aws_build`` (the build account, where CI pushes) and ``aws_prod`` (the production
account's credentials, and its Region). The same guard holds: a re-pushed ``sha-<commit>`` copies
nothing.

The promotion declares the asset ``ecr://team/app:prod`` (``ecr_image_asset``) in its
``outlets``: its asset event carries the promoted ``digest``, ``image_uri``, ``tags`` and
``moved``, and starts ``example_ecr_roll_out``, which is scheduled on that asset. Outlets are
fixed when the DAG is parsed: they name the default repository's ``prod``.

Trigger with ``{"sha": "...", "version": "v1.4.2"}``. Against real AWS, set the
``aws_default`` and ``aws_build`` connections (the build account), ``aws_prod`` (production;
a ``team/app`` repository must exist there) and ``repository``.
"""

from __future__ import annotations

import pendulum
from airflow.sdk import DAG, Asset, Param, task

from airflow_ecr_retag import EcrCopyImageOperator, EcrImageScanSensor, EcrRetagOperator, EcrTagSensor, ecr_image_asset

with DAG(
    dag_id="example_ecr_release",
    schedule=None,
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
    params={
        "repository": Param("team/app", type="string"),
        "sha": Param("0123abcd", type="string"),
        "version": Param("v1.4.2", type="string"),
    },
    tags=["example", "ecr"],
    doc_md=__doc__,
) as dag:
    wait_for_build = EcrTagSensor(
        task_id="wait_for_build",
        repository_name="{{ params.repository }}",
        tag="sha-{{ params.sha }}",
        poke_interval=10,
        timeout=60 * 60,
    )

    @task
    def test_image(digest: str, params: dict | None = None) -> str:
        """Stand-in for the real test suite: check the image *by digest* and list its platforms."""
        import json

        from airflow.providers.amazon.aws.hooks.ecr import EcrHook

        from airflow_ecr_retag.core.manifests import MANIFEST_MEDIA_TYPES, manifest_digest

        client = EcrHook(aws_conn_id="aws_default").conn
        [image] = client.batch_get_image(
            repositoryName=params["repository"],
            imageIds=[{"imageDigest": digest}],
            acceptedMediaTypes=list(MANIFEST_MEDIA_TYPES),
        )["images"]
        assert manifest_digest(image["imageManifest"]) == digest, "manifest does not hash to its digest"
        platforms = [
            f"{m['platform']['os']}/{m['platform']['architecture']}"
            for m in json.loads(image["imageManifest"]).get("manifests", [])
        ]
        print(f"Tests passed for {digest} on {', '.join(platforms) or 'a single platform'}")
        return digest

    tested_digest = test_image(wait_for_build.output)

    scan_gate = EcrImageScanSensor(
        task_id="scan_gate",
        repository_name="{{ params.repository }}",
        image_digest=tested_digest,
        max_findings={"CRITICAL": 0, "HIGH": 0},
        poke_interval=30,
        timeout=60 * 60,
    )

    promote = EcrRetagOperator(
        task_id="promote",
        repository_name="{{ params.repository }}",
        source_tag="sha-{{ params.sha }}",
        source_digest=tested_digest,
        target_tags=["{{ params.version }}", "prod"],
        outlets=[Asset(ecr_image_asset("team/app", "prod"))],
    )

    @task
    def deploy(ti=None) -> str:
        """Deploy by digest: the promotion XCom carries the immutable image URI."""
        promotion = ti.xcom_pull(task_ids="promote", key="promotion")
        print(f"Deploying {promotion['image_uri']} (tags now set: {', '.join(promotion['added']) or 'none'})")
        return promotion["image_uri"]

    scan_gate >> promote >> deploy()

    copy_to_prod = EcrCopyImageOperator(
        task_id="copy_to_prod",
        source_aws_conn_id="aws_build",
        source_repository_name="{{ params.repository }}",
        source_tag="sha-{{ params.sha }}",
        source_digest=tested_digest,
        aws_conn_id="aws_prod",
        repository_name="{{ params.repository }}",
        target_tags=["{{ params.version }}", "prod"],
        botocore_config={"retries": {"mode": "adaptive", "max_attempts": 10}},  # PutImage: 10 a second
    )
    promote >> copy_to_prod
