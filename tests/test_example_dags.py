"""The example DAGs: they import cleanly, and run for real with ``dag.test()`` against the double's server.

They run through the DAG runner users get (``run_dag``, ``airflow_ecr_retag.testing.dag_runner``),
so the recipe the README gives is the one this suite runs.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from airflow_ecr_retag.testing import Vulnerability, build_image

EXAMPLES = Path(__file__).resolve().parent.parent / "example_dags"
REPO = "team/app"
PROD_ASSET = "ecr://team/app:prod"


@pytest.fixture
def dagbag():
    from airflow.models import DagBag

    return DagBag(dag_folder=str(EXAMPLES))


def test_every_example_dag_imports_without_errors(dagbag):
    assert dagbag.import_errors == {}
    assert set(dagbag.dag_ids) == {
        "example_ecr_release",
        "example_ecr_release_set",
        "example_ecr_wait_for_prod",
        "example_ecr_tag_hygiene",
        "example_ecr_roll_out",
    }


PROD, PROD_REGION = "210987654321", "eu-west-1"


@pytest.fixture
def served(ecr_double_server, monkeypatch):
    # Scan on push, as a release repository would have it: every image pushed gets a finished, clean scan.
    ecr_double_server.create_repository(REPO, scan_on_push=True)
    # The release DAG copies to production: its own account's credentials (and Region), its repository.
    monkeypatch.setenv("AIRFLOW_CONN_AWS_BUILD", '{"conn_type": "aws"}')
    key, secret = ecr_double_server.caller_credentials(registry_id=PROD)
    prod = {"conn_type": "aws", "login": key, "password": secret, "extra": {"region_name": PROD_REGION}}
    monkeypatch.setenv("AIRFLOW_CONN_AWS_PROD", json.dumps(prod))
    ecr_double_server.create_repository(REPO, registry_id=PROD, region_name=PROD_REGION)
    return ecr_double_server


def test_release_dag_promotes_the_tested_digest(served, run_dag):
    index = build_image("oci-index", "release")
    digest = served.push(REPO, index, ["sha-0123abcd"])
    old_prod = served.push(REPO, build_image("oci", "previous"), ["prod", "v1.4.1"])
    dag_run = run_dag("example_ecr_release", run_conf={"sha": "0123abcd", "version": "v1.4.2"})
    assert dag_run.states == dict.fromkeys(
        ["wait_for_build", "test_image", "scan_gate", "promote", "deploy", "copy_to_prod"], "success"
    )
    assert dag_run.xcom("wait_for_build") == digest
    gate = dag_run.xcom("scan_gate")
    assert gate["digest"] == digest and gate["severity_counts"]["CRITICAL"] == gate["severity_counts"]["HIGH"] == 0
    assert [i["digest"] for i in gate["images"]] == [c.digest for c in index.children]
    assert dag_run.xcom("promote") == digest
    promotion = dag_run.xcom("promote", "promotion")
    assert promotion["added"] == ["v1.4.2", "prod"] and promotion["moved"] == {"prod": old_prod}
    assert dag_run.xcom("deploy") == f"123456789012.dkr.ecr.us-east-1.amazonaws.com/{REPO}@{digest}"
    tags = served.tags(REPO)
    assert tags["v1.4.2"] == tags["prod"] == tags["sha-0123abcd"] == digest
    assert tags["v1.4.1"] == old_prod
    assert {c.digest for c in index.children} <= set(served.images(REPO))
    # The tested digest, copied to the production account with every platform, tagged there.
    assert dag_run.xcom("copy_to_prod") == digest
    copied = dag_run.xcom("copy_to_prod", "copy")
    in_prod = {"registry_id": PROD, "region_name": PROD_REGION}
    assert served.tags(REPO, **in_prod) == {"v1.4.2": digest, "prod": digest}
    assert set(served.images(REPO, **in_prod)) == {digest, *(c.digest for c in index.children)}
    assert copied["image_uri"] == f"{PROD}.dkr.ecr.{PROD_REGION}.amazonaws.com/{REPO}@{digest}"
    assert copied["source_image_uri"] == f"123456789012.dkr.ecr.us-east-1.amazonaws.com/{REPO}@{digest}"
    blobs = {d: b.size for child in index.children for d, b in child.blobs.items()}
    assert (copied["blobs_copied"], copied["bytes_copied"], copied["manifests_copied"]) == (
        len(blobs),
        sum(blobs.values()),
        3,
    )
    assert served.blobs_of(REPO, **in_prod) == blobs


class EventsByAsset(dict):
    """``triggering_asset_events`` as a task sees it: the events of each asset, looked up by the Asset."""

    def __getitem__(self, asset):
        return super().__getitem__(asset.name)


class StoredEvent:
    def __init__(self, extra):
        self.extra = extra


def test_release_dag_promotion_emits_the_prod_asset_event_and_the_roll_out_deploys_from_it(served, run_dag, dagbag):
    digest = served.push(REPO, build_image("oci-index", "release"), ["sha-0123abcd"])
    old_prod = served.push(REPO, build_image("oci", "previous"), ["prod"])
    dag_run = run_dag("example_ecr_release", run_conf={"sha": "0123abcd", "version": "v1.4.2"})
    assert dag_run.states["promote"] == "success"
    uri = f"123456789012.dkr.ecr.us-east-1.amazonaws.com/{REPO}@{digest}"
    [extra] = dag_run.asset_events[PROD_ASSET]  # activated and read back by run_dag, on 3.0 too
    assert extra == {"digest": digest, "image_uri": uri, "tags": ["v1.4.2", "prod"], "moved": {"prod": old_prod}}
    deploy = dagbag.get_dag("example_ecr_roll_out").task_dict["deploy"].python_callable
    assert deploy(triggering_asset_events=EventsByAsset({PROD_ASSET: [StoredEvent(extra)]})) == {
        "digest": digest,
        "image_uri": uri,
        "events": 1,
    }


def test_the_roll_out_deploys_the_newest_event_whether_a_watcher_or_a_promotion_announced_it(dagbag):
    deploy = dagbag.get_dag("example_ecr_roll_out").task_dict["deploy"].python_callable
    promoted = {"digest": "sha256:" + "a" * 64, "image_uri": "u@a", "tags": ["prod"], "moved": {}}
    watched = {"from_trigger": True, "payload": {"tag": "prod", "digest": "sha256:" + "b" * 64, "image_uri": "u@b"}}
    events = EventsByAsset({PROD_ASSET: [StoredEvent(promoted), StoredEvent(watched)]})
    assert deploy(triggering_asset_events=events) == {"digest": "sha256:" + "b" * 64, "image_uri": "u@b", "events": 2}
    events = EventsByAsset({PROD_ASSET: [StoredEvent(watched), StoredEvent(promoted)]})
    assert deploy(triggering_asset_events=events)["digest"] == "sha256:" + "a" * 64


def test_the_roll_out_is_scheduled_on_prod_through_its_watcher(dagbag):
    from airflow_ecr_retag.triggers import EcrTagEventTrigger

    dag = dagbag.get_dag("example_ecr_roll_out")
    [asset] = dag.timetable.asset_condition.objects
    [watcher] = asset.watchers
    assert asset.name == PROD_ASSET
    assert isinstance(watcher.trigger, EcrTagEventTrigger)
    assert (watcher.trigger.repository_name, watcher.trigger.tags) == (REPO, ["prod"])
    [outlet] = dagbag.get_dag("example_ecr_release").task_dict["promote"].outlets
    assert outlet.name == PROD_ASSET


def test_release_dag_refuses_an_image_re_pushed_after_its_test(served, run_dag):
    served.push(REPO, build_image("oci", "tested"), ["sha-feed"])
    newer = served.push(REPO, build_image("oci", "sneaky"))
    # Between the test task's read and the promotion, the CI tag is re-pushed.
    served.before_call("BatchGetImage", lambda d: d.move_tag(REPO, "sha-feed", newer), call=3)
    dag_run = run_dag("example_ecr_release", run_conf={"sha": "feed", "version": "v2"})
    assert dag_run.states["promote"] == "failed"
    assert served.calls["PutImage"] == 0
    assert "v2" not in served.tags(REPO) and "prod" not in served.tags(REPO)
    assert dag_run.states["copy_to_prod"] == "upstream_failed"
    assert served.tags(REPO, registry_id=PROD, region_name=PROD_REGION) == {}


RELEASE_SET = ["team/api", "team/worker", "team/migrate"]


def seed_release_set(served):
    """Each repository: the previous release at prod and v1.4.1, CI's build at sha-0123abcd."""
    previous, candidates = {}, {}
    for i, repo in enumerate(RELEASE_SET):
        served.create_repository(repo)
        previous[repo] = served.push(repo, build_image("oci", f"{repo}-v1.4.1"), ["prod", "v1.4.1"])
        kind = "oci-index" if i == 0 else "docker"
        candidates[repo] = served.push(repo, build_image(kind, f"{repo}-v1.4.2"), ["sha-0123abcd"])
    return previous, candidates


def test_release_set_dag_rolls_back_to_exactly_the_previous_digests_when_the_deploy_fails(served, run_dag):
    previous, candidates = seed_release_set(served)
    before = {repo: served.tags(repo) for repo in RELEASE_SET}
    images_before = {repo: set(served.images(repo)) for repo in RELEASE_SET}
    dag_run = run_dag("example_ecr_release_set", run_conf={"sha": "0123abcd", "version": "v1.4.2", "fail_deploy": True})
    assert dag_run.states == {
        "release": "success",
        "deploy": "failed",
        "rollback": "success",
        "deploy_failed": "failed",
    }
    assert dag_run.xcom("release") == candidates
    assert {repo: served.tags(repo) for repo in RELEASE_SET} == before
    assert {repo: set(served.images(repo)) for repo in RELEASE_SET} == images_before
    report = dag_run.xcom("rollback", "rollback")
    assert {(e["repository_name"], e["tag"], e["digest"]) for e in report["restored"]} == {
        (repo, "prod", previous[repo]) for repo in RELEASE_SET
    }
    assert {(e["repository_name"], e["tag"]) for e in report["removed"]} == {(repo, "v1.4.2") for repo in RELEASE_SET}
    assert report["left_alone"] == report["failed"] == []


def test_release_set_dag_skips_the_rollback_when_the_deploy_succeeds(served, run_dag):
    _, candidates = seed_release_set(served)
    dag_run = run_dag("example_ecr_release_set", run_conf={"sha": "0123abcd", "version": "v1.4.2"})
    assert dag_run.states == {
        "release": "success",
        "deploy": "success",
        "rollback": "skipped",
        "deploy_failed": "skipped",
    }
    for repo in RELEASE_SET:
        assert served.tags(repo)["prod"] == served.tags(repo)["v1.4.2"] == candidates[repo]
    assert dag_run.xcom("deploy") == [
        f"123456789012.dkr.ecr.us-east-1.amazonaws.com/{repo}@{candidates[repo]}" for repo in RELEASE_SET
    ]
    assert served.calls["PutImage"] == 6 and served.calls["BatchDeleteImage"] == 0


def test_release_dag_gate_blocks_an_image_with_a_critical_finding(served, run_dag):
    index = build_image("oci-index", "vulnerable")
    digest = served.push(REPO, index, ["sha-bad"])
    old_prod = served.push(REPO, build_image("oci", "previous"), ["prod"])
    arm64 = index.children[1].digest
    served.add_findings(
        REPO, arm64, [Vulnerability("CVE-2024-3094", "CRITICAL", "xz-utils", "5.6.0", fixed_in="5.6.1", score=10.0)]
    )
    dag_run = run_dag("example_ecr_release", run_conf={"sha": "bad", "version": "v9"})
    assert dag_run.states == {
        "wait_for_build": "success",
        "test_image": "success",
        "scan_gate": "failed",
        "promote": "upstream_failed",
        "deploy": "upstream_failed",
        "copy_to_prod": "upstream_failed",
    }
    assert served.calls["PutImage"] == 0
    tags = served.tags(REPO)
    assert tags["prod"] == old_prod and "v9" not in tags and tags["sha-bad"] == digest
    gated = [r["imageId"]["imageDigest"] for r in served.requests_for("DescribeImageScanFindings")]
    assert set(gated) == {c.digest for c in index.children}  # the tested digest's platform images


@pytest.mark.timing
def test_wait_for_prod_dag_defers_until_prod_reaches_the_digest(served, run_dag):
    expected = served.push(REPO, build_image("oci-index", "expected"))
    served.push(REPO, build_image("oci", "current"), ["prod"])
    # The first check (in the worker) sees the old digest; prod moves while the trigger polls.
    served.before_call("BatchGetImage", lambda d: d.move_tag(REPO, "prod", expected), call=3)
    dag_run = run_dag("example_ecr_wait_for_prod", run_conf={"expected_digest": expected})
    assert dag_run.states == {"prod_ready": "success", "start_integration_tests": "success"}
    assert dag_run.xcom("prod_ready") == expected
    assert served.calls["BatchGetImage"] >= 3


def test_hygiene_dag_dry_run_then_clean_up(served, run_dag):
    now = datetime.now(UTC)
    for i in range(25):
        tags = [f"sha-{i:02d}"] + (["latest"] if i == 24 else []) + ([f"v1.{i}"] if i % 5 == 0 else [])
        served.push(REPO, build_image("oci", f"b{i}"), tags, pushed_at=now - timedelta(hours=25 - i))
    served.push(REPO, build_image("oci", "pr-old"), ["pr-7"], pushed_at=now - timedelta(days=30))
    images_before = set(served.images(REPO))
    dag_run = run_dag("example_ecr_tag_hygiene")
    assert dag_run.states == {"dry_run": "success", "clean_up": "success"}
    dry, real = dag_run.xcom("dry_run"), dag_run.xcom("clean_up")
    assert dry["dry_run"] is True and real["dry_run"] is False
    assert sorted(r["tag"] for r in dry["removed"]) == sorted(r["tag"] for r in real["removed"])
    tags = served.tags(REPO)
    assert "latest" not in tags
    # sha-00 goes (its image keeps v1.0); sha-01..04 are their images' last tags, so they stay.
    assert sorted(t for t in tags if t.startswith("sha-")) == [f"sha-{i:02d}" for i in range(1, 25)]
    assert sorted(s["tag"] for s in real["skipped_last_tag"]) == ["pr-7", "sha-01", "sha-02", "sha-03", "sha-04"]
    assert {t for t in tags if t.startswith("v1.")} == {f"v1.{i}" for i in range(0, 25, 5)}
    assert tags["pr-7"]  # its image's last tag: kept, not deleted
    assert set(served.images(REPO)) == images_before


def test_a_failed_promotion_logs_no_missing_link(served, run_dag, capfd):
    """The "ECR Image" link exists from the start (the repositories, then the image), so a task
    that fails before it knows the image logs no ``XCom not found ... key='ecr_image'`` error."""
    dag_run = run_dag("example_ecr_release", task_ids=["promote"], run_conf={"sha": "missing", "version": "v3"})
    assert dag_run.states == {"promote": "failed"}
    assert served.calls["PutImage"] == 0
    output = "".join(capfd.readouterr())
    assert "ImageNotFoundError" in output
    # Only the pull of test_image's digest, a task left out of this run, finds no XCom.
    missing = [line for line in output.splitlines() if "XCom not found" in line]
    assert missing and all("key=return_value" in line and "task_id=test_image" in line for line in missing)
    # Until the image is known, the link shows the registry's repositories (its account is unknown yet).
    assert dag_run.xcom("promote", "_link_EcrImageLink") == (
        "https://console.aws.amazon.com/ecr/private-registry/repositories?region=us-east-1"
    )
