"""One representative task per operator (and sensor), with its seed, for the reliability suite.

Each scenario seeds fresh repositories of the double (``repositories``: the ones whose state the
suite checks: a name in the caller's registry, or ``(name, registry_id, region_name)`` in another;
one the task creates counts as empty until it does), then runs the task. Between them they make
every ECR call the package makes: BatchGetImage, PutImage, DescribeImages (paginated and by
digest), BatchDeleteImage, DescribeRepositories (by name for a release, paginated for hygiene over
a glob), DescribeImageScanFindings and StartImageScan; and the copy's ListImageReferrers,
CreateRepository, BatchCheckLayerAvailability, GetDownloadUrlForLayer, the presigned download
(``LayerDownload``), InitiateLayerUpload, UploadLayerPart and CompleteLayerUpload.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from helpers import make_context

from airflow_ecr_retag.testing import EcrDouble, Vulnerability, build_image, build_referrer

REPO = "team/app"
EPOCH = datetime(2026, 11, 1, tzinfo=UTC)
# Standard retry mode with two retries: one injected transient fault is always absorbed.
RETRYING = {
    "aws_conn_id": None,
    "region_name": "us-east-1",
    "botocore_config": {"retries": {"mode": "standard", "max_attempts": 2}},
}


@dataclass(frozen=True)
class Scenario:
    name: str
    seed: Callable[[EcrDouble], None]
    run: Callable[[], Any]
    repositories: tuple[str | tuple[str, str, str], ...] = (REPO,)


def seed_retag(ecr: EcrDouble) -> None:
    ecr.create_repository(REPO)
    ecr.push(REPO, build_image("oci", "previous"), ["prod", "v1.0"], pushed_at=EPOCH)
    ecr.push(REPO, build_image("oci-index", "candidate"), ["rc"], pushed_at=EPOCH + timedelta(days=1))


def run_retag() -> Any:
    from airflow_ecr_retag import EcrRetagOperator

    return EcrRetagOperator(
        task_id="promote",
        repository_name=REPO,
        source_tag="rc",
        target_tags=["v1.1", "prod"],
        remove_source_tag=True,
        **RETRYING,
    ).execute(make_context())


def seed_sensor(ecr: EcrDouble) -> None:
    ecr.create_repository(REPO)
    ecr.push(REPO, build_image("oci", "built"), ["sha-1"], pushed_at=EPOCH)


def run_sensor() -> Any:
    from airflow_ecr_retag import EcrTagSensor

    return EcrTagSensor(
        task_id="wait", repository_name=REPO, tag="sha-1", poke_interval=0.01, timeout=30, **RETRYING
    ).execute(make_context())


def seed_hygiene(ecr: EcrDouble) -> None:
    ecr.create_repository(REPO)
    for i in range(6):
        tags = [f"sha-{i}", f"build-{i}"] + (["latest"] if i == 5 else [])
        ecr.push(REPO, build_image("oci", f"b{i}"), tags, pushed_at=EPOCH + timedelta(days=i))
    ecr.push(REPO, build_image("oci", "lonely"), ["pr-1"], pushed_at=EPOCH - timedelta(days=30))


def run_hygiene() -> Any:
    from airflow_ecr_retag import EcrTagHygieneOperator

    return EcrTagHygieneOperator(
        task_id="hygiene",
        repository_name=REPO,
        rules=[{"tag_pattern": "latest"}, {"tag_pattern": "sha-*", "keep_latest": 2}, {"tag_pattern": "pr-*"}],
        protect=["v*"],
        **RETRYING,
    ).execute(make_context())


RELEASE_REPOS = (REPO, "team/worker", "team/migrate")


def seed_release(ecr: EcrDouble) -> None:
    for i, repo in enumerate(RELEASE_REPOS):
        ecr.create_repository(repo)
        ecr.push(repo, build_image("oci", f"{repo}-previous"), ["prod", "v1.0"], pushed_at=EPOCH)
        kind = "oci-index" if i == 0 else "docker"
        ecr.push(repo, build_image(kind, f"{repo}-candidate"), ["rc"], pushed_at=EPOCH + timedelta(days=1))


def run_release() -> Any:
    from airflow_ecr_retag import EcrReleaseOperator

    return EcrReleaseOperator(
        task_id="release",
        images=[{"repository_name": repo, "source_tag": "rc"} for repo in RELEASE_REPOS],
        target_tags=["v1.1", "prod"],
        **RETRYING,
    ).execute(make_context())


def seed_hygiene_glob(ecr: EcrDouble) -> None:
    seed_hygiene(ecr)
    ecr.create_repository("team/web")
    ecr.push("team/web", build_image("oci", "web"), ["pr-2", "web-1"], pushed_at=EPOCH - timedelta(days=30))


def run_hygiene_glob() -> Any:
    from airflow_ecr_retag import EcrTagHygieneOperator

    # One repository at a time, so each clean run makes its calls in one order (the matrix's n-th call).
    return EcrTagHygieneOperator(
        task_id="hygiene_glob",
        repository_name="team/*",
        rules=[{"tag_pattern": "latest"}, {"tag_pattern": "sha-*", "keep_latest": 2}, {"tag_pattern": "pr-*"}],
        protect=["v*"],
        max_removals="50%",
        max_concurrent_repositories=1,
        **RETRYING,
    ).execute(make_context())


def seed_scan_gate(ecr: EcrDouble) -> None:
    ecr.create_repository(REPO)
    digest = ecr.push(REPO, build_image("oci", "built"), ["sha-1"], pushed_at=EPOCH)
    ecr.add_findings(REPO, digest, [Vulnerability("CVE-2024-0001", "MEDIUM", "openssl", "3.0.2")])


def run_scan_gate() -> Any:
    from airflow_ecr_retag import EcrImageScanSensor

    # No scan yet: the gate starts one (StartImageScan), then reads it (DescribeImageScanFindings).
    return EcrImageScanSensor(
        task_id="scan_gate",
        repository_name=REPO,
        image_tag="sha-1",
        max_findings={"CRITICAL": 0, "HIGH": 0},
        start_scan=True,
        poke_interval=0.01,
        timeout=30,
        **RETRYING,
    ).execute(make_context())


PREVIOUS = build_image("oci", "previous")
PROMOTED = build_image("oci-index", "candidate")


def seed_rollback(ecr: EcrDouble) -> None:
    """The state after a promotion of ``rc`` to v1.1 and prod (prod moved off the previous image)."""
    ecr.create_repository(REPO)
    ecr.push(REPO, PREVIOUS, ["prod", "v1.0"], pushed_at=EPOCH)
    ecr.push(REPO, PROMOTED, ["rc", "v1.1"], pushed_at=EPOCH + timedelta(days=1))
    ecr.move_tag(REPO, "prod", PROMOTED.digest)


def run_rollback() -> Any:
    from airflow_ecr_retag import EcrRollbackOperator

    promotion = {
        "repository_name": REPO,
        "registry_id": "123456789012",
        "digest": PROMOTED.digest,
        "added": ["v1.1", "prod"],
        "moved": {"prod": PREVIOUS.digest},
    }
    return EcrRollbackOperator(task_id="rollback", promotions=[promotion], **RETRYING).execute(make_context())


# Another account in the same Region: one client serves both sides (a client costs more CPU than the copy).
PROD, PROD_REGION = "210987654321", "us-east-1"
COPIED = build_image("oci", "candidate", layers=1)


def seed_copy(ecr: EcrDouble) -> None:
    """A build with a signature (an OCI 1.1 referrer) in the build account; production has no repository yet."""
    ecr.create_repository(REPO)
    ecr.push(REPO, COPIED, ["rc"], pushed_at=EPOCH)
    ecr.push(REPO, build_referrer(COPIED), pushed_at=EPOCH)


def run_copy() -> Any:
    from airflow_ecr_retag import EcrCopyImageOperator

    return EcrCopyImageOperator(
        task_id="copy",
        source_repository_name=REPO,
        source_tag="rc",
        repository_name=REPO,
        registry_id=PROD,
        target_tags=["v1.1", "prod"],
        create_repository=True,
        **RETRYING,
    ).execute(make_context())


SCENARIOS = [
    Scenario("retag", seed_retag, run_retag),
    Scenario("sensor", seed_sensor, run_sensor),
    Scenario("hygiene", seed_hygiene, run_hygiene),
    Scenario("release", seed_release, run_release, RELEASE_REPOS),
    Scenario("rollback", seed_rollback, run_rollback),
    Scenario("scan_gate", seed_scan_gate, run_scan_gate),
    Scenario("hygiene-glob", seed_hygiene_glob, run_hygiene_glob, (REPO, "team/web")),
    Scenario("copy", seed_copy, run_copy, (REPO, (REPO, PROD, PROD_REGION))),
]
