"""The example DAGs: they import cleanly, and run for real with ``dag.test()`` against the double's server."""

from __future__ import annotations

import os
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from airflow_ecr_retag.testing import Vulnerability, build_image

EXAMPLES = Path(__file__).resolve().parent.parent / "example_dags"
REPO = "team/app"
PROD_ASSET = "ecr://team/app:prod"


@pytest.fixture(scope="session")
def airflow_db():
    """A migrated SQLite metadata DB in the suite's throwaway AIRFLOW_HOME."""
    subprocess.run(
        [sys.executable, "-m", "airflow", "db", "migrate"], check=True, env=os.environ, capture_output=True, timeout=600
    )


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


@pytest.fixture
def prod_asset_active(airflow_db):
    """``ecr://team/app:prod`` active, as a scheduler makes the assets of parsed DAGs.

    The release DAG's promotion names it in its outlets, and a task whose outlets name an inactive
    asset fails; ``dag.test()`` activates them on Airflow 3.3, not on 3.0 (no scheduler runs here).
    """
    from airflow.models.asset import AssetActive, AssetModel
    from airflow.utils.session import create_session

    with create_session() as session:
        asset = session.query(AssetModel).filter_by(name=PROD_ASSET, uri=PROD_ASSET).one_or_none()
        if asset is None:
            asset = AssetModel(name=PROD_ASSET, uri=PROD_ASSET, group="asset")
            session.add(asset)
            session.flush()
        if not session.query(AssetActive).filter_by(name=PROD_ASSET, uri=PROD_ASSET).count():
            session.add(AssetActive.for_asset(asset))


@pytest.fixture
def served(ecr_double_server, airflow_db, prod_asset_active, monkeypatch):
    monkeypatch.setenv("AIRFLOW_CONN_AWS_DEFAULT", '{"conn_type": "aws"}')
    # Scan on push, as a release repository would have it: every image pushed gets a finished, clean scan.
    ecr_double_server.create_repository(REPO, scan_on_push=True)
    return ecr_double_server


def xcom(dag_run, task_id, key="return_value"):
    from airflow.models.xcom import XComModel
    from airflow.utils.session import create_session

    with create_session() as session:
        row = (
            session.query(XComModel)
            .filter_by(dag_id=dag_run.dag_id, run_id=dag_run.run_id, task_id=task_id, key=key)
            .one()
        )
        return XComModel.deserialize_value(row)


def states(dag_run):
    return {ti.task_id: ti.state for ti in dag_run.get_task_instances()}


def test_release_dag_promotes_the_tested_digest(served, dagbag):
    index = build_image("oci-index", "release")
    digest = served.push(REPO, index, ["sha-0123abcd"])
    old_prod = served.push(REPO, build_image("oci", "previous"), ["prod", "v1.4.1"])
    dag_run = dagbag.get_dag("example_ecr_release").test(run_conf={"sha": "0123abcd", "version": "v1.4.2"})
    assert states(dag_run) == dict.fromkeys(
        ["wait_for_build", "test_image", "scan_gate", "promote", "deploy"], "success"
    )
    assert xcom(dag_run, "wait_for_build") == digest
    gate = xcom(dag_run, "scan_gate")
    assert gate["digest"] == digest and gate["severity_counts"]["CRITICAL"] == gate["severity_counts"]["HIGH"] == 0
    assert [i["digest"] for i in gate["images"]] == [c.digest for c in index.children]
    assert xcom(dag_run, "promote") == digest
    promotion = xcom(dag_run, "promote", "promotion")
    assert promotion["added"] == ["v1.4.2", "prod"] and promotion["moved"] == {"prod": old_prod}
    assert xcom(dag_run, "deploy") == f"123456789012.dkr.ecr.us-east-1.amazonaws.com/{REPO}@{digest}"
    tags = served.tags(REPO)
    assert tags["v1.4.2"] == tags["prod"] == tags["sha-0123abcd"] == digest
    assert tags["v1.4.1"] == old_prod
    assert {c.digest for c in index.children} <= set(served.images(REPO))


def asset_event_extras(name, dag_run):
    from airflow.models.asset import AssetEvent, AssetModel
    from airflow.utils.session import create_session

    with create_session() as session:
        rows = (
            session.query(AssetEvent)
            .join(AssetModel, AssetEvent.asset_id == AssetModel.id)
            .filter(AssetModel.name == name, AssetEvent.source_run_id == dag_run.run_id)
            .all()
        )
        return [row.extra for row in rows]


class EventsByAsset(dict):
    """``triggering_asset_events`` as a task sees it: the events of each asset, looked up by the Asset."""

    def __getitem__(self, asset):
        return super().__getitem__(asset.name)


class StoredEvent:
    def __init__(self, extra):
        self.extra = extra


def test_release_dag_promotion_emits_the_prod_asset_event_and_the_roll_out_deploys_from_it(served, dagbag):
    digest = served.push(REPO, build_image("oci-index", "release"), ["sha-0123abcd"])
    old_prod = served.push(REPO, build_image("oci", "previous"), ["prod"])
    dag_run = dagbag.get_dag("example_ecr_release").test(run_conf={"sha": "0123abcd", "version": "v1.4.2"})
    assert states(dag_run)["promote"] == "success"
    uri = f"123456789012.dkr.ecr.us-east-1.amazonaws.com/{REPO}@{digest}"
    [extra] = asset_event_extras(PROD_ASSET, dag_run)
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


def test_release_dag_refuses_an_image_re_pushed_after_its_test(served, dagbag):
    served.push(REPO, build_image("oci", "tested"), ["sha-feed"])
    newer = served.push(REPO, build_image("oci", "sneaky"))
    # Between the test task's read and the promotion, the CI tag is re-pushed.
    served.before_call("BatchGetImage", lambda d: d.move_tag(REPO, "sha-feed", newer), call=3)
    dag_run = dagbag.get_dag("example_ecr_release").test(run_conf={"sha": "feed", "version": "v2"})
    assert states(dag_run)["promote"] == "failed"
    assert served.calls["PutImage"] == 0
    assert "v2" not in served.tags(REPO) and "prod" not in served.tags(REPO)


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


def test_release_set_dag_rolls_back_to_exactly_the_previous_digests_when_the_deploy_fails(served, dagbag):
    previous, candidates = seed_release_set(served)
    before = {repo: served.tags(repo) for repo in RELEASE_SET}
    images_before = {repo: set(served.images(repo)) for repo in RELEASE_SET}
    dag_run = dagbag.get_dag("example_ecr_release_set").test(
        run_conf={"sha": "0123abcd", "version": "v1.4.2", "fail_deploy": True}
    )
    assert states(dag_run) == {
        "release": "success",
        "deploy": "failed",
        "rollback": "success",
        "deploy_failed": "failed",
    }
    assert xcom(dag_run, "release") == candidates
    assert {repo: served.tags(repo) for repo in RELEASE_SET} == before
    assert {repo: set(served.images(repo)) for repo in RELEASE_SET} == images_before
    report = xcom(dag_run, "rollback", "rollback")
    assert {(e["repository_name"], e["tag"], e["digest"]) for e in report["restored"]} == {
        (repo, "prod", previous[repo]) for repo in RELEASE_SET
    }
    assert {(e["repository_name"], e["tag"]) for e in report["removed"]} == {(repo, "v1.4.2") for repo in RELEASE_SET}
    assert report["left_alone"] == report["failed"] == []


def test_release_set_dag_skips_the_rollback_when_the_deploy_succeeds(served, dagbag):
    _, candidates = seed_release_set(served)
    dag_run = dagbag.get_dag("example_ecr_release_set").test(run_conf={"sha": "0123abcd", "version": "v1.4.2"})
    assert states(dag_run) == {
        "release": "success",
        "deploy": "success",
        "rollback": "skipped",
        "deploy_failed": "skipped",
    }
    for repo in RELEASE_SET:
        assert served.tags(repo)["prod"] == served.tags(repo)["v1.4.2"] == candidates[repo]
    assert xcom(dag_run, "deploy") == [
        f"123456789012.dkr.ecr.us-east-1.amazonaws.com/{repo}@{candidates[repo]}" for repo in RELEASE_SET
    ]
    assert served.calls["PutImage"] == 6 and served.calls["BatchDeleteImage"] == 0


def test_release_dag_gate_blocks_an_image_with_a_critical_finding(served, dagbag):
    index = build_image("oci-index", "vulnerable")
    digest = served.push(REPO, index, ["sha-bad"])
    old_prod = served.push(REPO, build_image("oci", "previous"), ["prod"])
    arm64 = index.children[1].digest
    served.add_findings(
        REPO, arm64, [Vulnerability("CVE-2024-3094", "CRITICAL", "xz-utils", "5.6.0", fixed_in="5.6.1", score=10.0)]
    )
    dag_run = dagbag.get_dag("example_ecr_release").test(run_conf={"sha": "bad", "version": "v9"})
    assert states(dag_run) == {
        "wait_for_build": "success",
        "test_image": "success",
        "scan_gate": "failed",
        "promote": "upstream_failed",
        "deploy": "upstream_failed",
    }
    assert served.calls["PutImage"] == 0
    tags = served.tags(REPO)
    assert tags["prod"] == old_prod and "v9" not in tags and tags["sha-bad"] == digest
    gated = [r["imageId"]["imageDigest"] for r in served.requests_for("DescribeImageScanFindings")]
    assert set(gated) == {c.digest for c in index.children}  # the tested digest's platform images


@pytest.mark.timing
def test_wait_for_prod_dag_defers_until_prod_reaches_the_digest(served, dagbag):
    expected = served.push(REPO, build_image("oci-index", "expected"))
    served.push(REPO, build_image("oci", "current"), ["prod"])
    # The first check (in the worker) sees the old digest; prod moves while the trigger polls.
    served.before_call("BatchGetImage", lambda d: d.move_tag(REPO, "prod", expected), call=3)
    dag_run = dagbag.get_dag("example_ecr_wait_for_prod").test(run_conf={"expected_digest": expected})
    assert states(dag_run) == {"prod_ready": "success", "start_integration_tests": "success"}
    assert xcom(dag_run, "prod_ready") == expected
    assert served.calls["BatchGetImage"] >= 3


def test_hygiene_dag_dry_run_then_clean_up(served, dagbag):
    now = datetime.now(UTC)
    for i in range(25):
        tags = [f"sha-{i:02d}"] + (["latest"] if i == 24 else []) + ([f"v1.{i}"] if i % 5 == 0 else [])
        served.push(REPO, build_image("oci", f"b{i}"), tags, pushed_at=now - timedelta(hours=25 - i))
    served.push(REPO, build_image("oci", "pr-old"), ["pr-7"], pushed_at=now - timedelta(days=30))
    images_before = set(served.images(REPO))
    dag_run = dagbag.get_dag("example_ecr_tag_hygiene").test()
    assert states(dag_run) == {"dry_run": "success", "clean_up": "success"}
    dry, real = xcom(dag_run, "dry_run"), xcom(dag_run, "clean_up")
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
