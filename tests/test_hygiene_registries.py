"""EcrTagHygieneOperator on real registries: archived images, tags still in use, a removal cap,
which tag survives, and many repositories at once (against the in-process double)."""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta

import pytest
from airflow.providers.common.compat.sdk import AirflowFailException
from helpers import AWS, make_context

from airflow_ecr_retag import EcrTagHygieneOperator, EcrTagSensor
from airflow_ecr_retag.core import tag_hygiene
from airflow_ecr_retag.exceptions import HygieneFailedError, RemovalCapExceededError
from airflow_ecr_retag.links import EcrRepositoryLink
from airflow_ecr_retag.testing import Fault, build_image

REPO = "team/app"
NOW = datetime.now(UTC)
#: Today's report fields, which a single repository's report keeps exactly ...
TODAYS_FIELDS = {
    "repository_name",
    "registry_id",
    "dry_run",
    "removed",
    "kept_count",
    "skipped_last_tag",
    "images_deleted",
    "failed",
    "protected",
    "skipped_moved",
    "already_absent",
    "images_scanned",
    "tags_scanned",
}
#: ... with these added.
NEW_FIELDS = {"images_archived_seen", "protected_by_pull_time", "removal_cap"}


@pytest.fixture
def ecr(ecr_double):
    ecr_double.create_repository(REPO)
    return ecr_double


def push(ecr, name, tags, days_ago=100.0, repo=REPO):
    return ecr.push(repo, build_image("oci", name), tags, pushed_at=NOW - timedelta(days=days_ago))


def run(**kwargs):
    params = {"repository_name": REPO, "rules": [{"tag_pattern": "pr-*"}], **AWS, **kwargs}
    context = make_context()
    report = EcrTagHygieneOperator(task_id="hygiene", **params).execute(context)
    return report, context["ti"].xcom


def run_failing(error_class, **kwargs):
    params = {"repository_name": REPO, "rules": [{"tag_pattern": "pr-*"}], **AWS, **kwargs}
    context = make_context()
    with pytest.raises(error_class) as error:
        EcrTagHygieneOperator(task_id="hygiene", **params).execute(context)
    return error.value, context["ti"].xcom["hygiene_report"]


def removed_tags(report):
    return sorted(r["tag"] for r in report["removed"])


def status_filters(ecr):
    return [c.get("filter") for c in ecr.requests_for("DescribeImages") if "imageIds" not in c]


# ---------------------------------------------------------------- a single repository keeps today's shape
def test_a_single_repository_report_is_todays_with_the_new_counters(ecr):
    push(ecr, "a", ["pr-1", "v1"])
    report, xcom = run()
    assert set(report) == TODAYS_FIELDS | NEW_FIELDS
    assert report["images_archived_seen"] == report["protected_by_pull_time"] == 0
    assert report["removal_cap"] is None
    assert xcom["hygiene_report"] == report


# ---------------------------------------------------------------- archived images
@pytest.fixture
def with_archived(ecr):
    live = push(ecr, "live", ["pr-1", "keep-live"])
    cold = push(ecr, "cold", ["pr-2", "keep-cold"])
    waking = push(ecr, "waking", ["pr-3", "keep-waking"])
    ecr.set_image_status(REPO, cold, "ARCHIVED")
    ecr.set_image_status(REPO, waking, "ACTIVATING")
    return live, cold, waking


def test_archived_images_are_left_alone_by_default(ecr, with_archived):
    _, cold, waking = with_archived
    report, _ = run()
    assert removed_tags(report) == ["pr-1"]
    assert ecr.tags(REPO)["pr-2"] == cold and ecr.tags(REPO)["pr-3"] == waking
    assert report["images_scanned"] == 1 and report["images_archived_seen"] == 0
    assert status_filters(ecr) == [None]  # ECR's listing: ACTIVE images only


def test_include_archived_cleans_archived_and_activating_images_too(ecr, with_archived):
    live, cold, waking = with_archived
    report, _ = run(include_archived=True)
    assert removed_tags(report) == ["pr-1", "pr-2", "pr-3"]
    assert ecr.tags(REPO) == {"keep-live": live, "keep-cold": cold, "keep-waking": waking}
    assert report["images_scanned"] == 3 and report["images_archived_seen"] == 2
    assert status_filters(ecr) == [{"imageStatus": "ANY"}]
    rechecks = [c for c in ecr.requests_for("DescribeImages") if "imageIds" in c]
    assert len(rechecks) == 1 and len(rechecks[0]["imageIds"]) == 3  # by digest, whatever the status


def test_include_archived_rechecks_by_page_with_the_same_filter(ecr):
    # 150 archived images affected in a 1-page repository: one page is fewer calls than 2 by digest.
    digests = ecr.seed_many(
        REPO, [{"name": f"n{i}", "tags": [f"pr-{i}", f"keep-{i}"], "status": "ARCHIVED"} for i in range(150)]
    )
    report, _ = run(include_archived=True)
    assert len(report["removed"]) == 150 and report["images_archived_seen"] == 150
    assert status_filters(ecr) == [{"imageStatus": "ANY"}, {"imageStatus": "ANY"}]
    assert set(ecr.tags(REPO).values()) == set(digests) and len(ecr.tags(REPO)) == 150


# ---------------------------------------------------------------- tags still in use
def test_tags_of_an_image_pulled_within_the_window_are_kept(ecr, capsys):
    recent = push(ecr, "recent", ["pr-1", "pr-1b", "v1"])
    stale = push(ecr, "stale", ["pr-2", "v2"])
    never = push(ecr, "never", ["pr-3", "v3"])
    ecr.set_last_pulled(REPO, recent, NOW - timedelta(days=5))
    ecr.set_last_pulled(REPO, stale, NOW - timedelta(days=40))
    report, _ = run(protect_pulled_within_days=30)
    assert removed_tags(report) == ["pr-2", "pr-3"]
    assert ecr.tags(REPO)["pr-1"] == ecr.tags(REPO)["pr-1b"] == recent
    assert {ecr.tags(REPO)["v2"], ecr.tags(REPO)["v3"]} == {stale, never}
    assert report["protected_by_pull_time"] == 2
    assert f"Kept pr-1, pr-1b on {recent}: pulled at" in capsys.readouterr().out


def test_a_sensor_poke_counts_as_a_pull(ecr):
    # The double records a pull for each image a BatchGetImage returns, as ECR does for the API
    # call (containers-roadmap#2390): a sensor waiting on a tag keeps its image "in use".
    digest = push(ecr, "watched", ["pr-9", "sha-9"])
    EcrTagSensor(task_id="wait", repository_name=REPO, tag="sha-9", poke_interval=0.01, timeout=5, **AWS).execute(
        make_context()
    )
    report, _ = run(protect_pulled_within_days=1)
    assert report["removed"] == [] and report["protected_by_pull_time"] == 1
    assert ecr.tags(REPO)["pr-9"] == digest


# ---------------------------------------------------------------- the removal cap
def test_over_the_cap_nothing_is_removed_and_the_task_fails(ecr, capsys):
    for i in range(5):
        push(ecr, f"i{i}", [f"pr-{i}", f"v{i}"])
    tags_before = ecr.tags(REPO)
    error, report = run_failing(RemovalCapExceededError, max_removals=4)
    assert isinstance(error, AirflowFailException)
    assert "5 tag removals planned in team/app, over the cap of 4" in str(error)
    assert ecr.tags(REPO) == tags_before
    assert ecr.calls["BatchDeleteImage"] == 0 and ecr.write_calls == 0
    assert report["removed"] == [] and report["kept_count"] == 10
    assert report["removal_cap"] == {"max_removals": 4, "limit": 4, "planned": 5, "exceeded": True}
    out = capsys.readouterr().out
    assert "Not removed (over max_removals), batch 1/1: pr-0, pr-1, pr-2, pr-3, pr-4" in out
    assert "over the cap: 5 removals planned, none made" in out


def test_a_share_cap_counts_the_tags_scanned_and_at_the_cap_is_allowed(ecr):
    for i in range(5):
        push(ecr, f"i{i}", [f"pr-{i}", f"v{i}"])
    report, _ = run(max_removals="50%")  # 50% of 10 tags: exactly the 5 planned
    assert len(report["removed"]) == 5
    assert report["removal_cap"] == {"max_removals": "50%", "limit": 5, "planned": 5, "exceeded": False}


def test_the_cap_is_checked_after_the_recheck(ecr):
    for i in range(5):
        push(ecr, f"i{i}", [f"pr-{i}", f"v{i}"])

    def someone_removes_two(double):
        double.delete_tag(REPO, "pr-0")
        double.delete_tag(REPO, "pr-1")

    ecr.before_call("DescribeImages", someone_removes_two, call=2)  # just before the re-check
    report, _ = run(max_removals=3)  # the snapshot planned 5; after the re-check, 3
    assert removed_tags(report) == ["pr-2", "pr-3", "pr-4"]
    assert len(report["skipped_moved"]) == 2 and report["removal_cap"]["planned"] == 3


def test_a_dry_run_over_the_cap_fails_as_the_real_run_would(ecr, capsys):
    for i in range(3):
        push(ecr, f"i{i}", [f"pr-{i}", f"v{i}"])
    _, report = run_failing(RemovalCapExceededError, max_removals="10%", dry_run=True)
    assert report["removed"] == [] and report["dry_run"] is True and ecr.write_calls == 0
    assert "Not removed (over max_removals), batch 1/1: pr-0, pr-1, pr-2" in capsys.readouterr().out


def test_max_removals_may_come_from_a_template(ecr):
    from airflow.sdk.definitions.param import ParamsDict

    push(ecr, "a", ["pr-1", "v1"])
    operator = EcrTagHygieneOperator(
        task_id="h", repository_name=REPO, rules=[{"tag_pattern": "pr-*"}], max_removals="{{ params.cap }}", **AWS
    )
    context = {**make_context(), "params": ParamsDict({"cap": "1"})}
    operator.render_template_fields(context)
    assert operator.execute(context)["removal_cap"]["limit"] == 1


# ---------------------------------------------------------------- which tag survives
def test_the_preference_chooses_the_tag_an_image_keeps(ecr):
    digest = push(ecr, "a", ["latest", "sha-abc", "v1.2", "v1.10"])
    default, _ = run(rules=[{"tag_pattern": "*"}], dry_run=True)
    assert default["skipped_last_tag"] == [{"tag": "v1.2", "digest": digest}]  # highest-sorting, as today
    preferred, _ = run(rules=[{"tag_pattern": "*"}], last_tag_preference=["sha-*", "v*"])
    assert preferred["skipped_last_tag"] == [{"tag": "sha-abc", "digest": digest}]
    assert ecr.tags(REPO) == {"sha-abc": digest}


def test_preference_globs_go_in_order_and_fall_back_to_the_highest_sorting(ecr):
    both = push(ecr, "both", ["rc-1", "v1", "v2"])
    neither = push(ecr, "neither", ["a", "b"])
    report, _ = run(rules=[{"tag_pattern": "*"}], last_tag_preference=["prod", "v*", "rc-*"])
    assert sorted((s["digest"], s["tag"]) for s in report["skipped_last_tag"]) == sorted([(both, "v2"), (neither, "b")])
    assert ecr.tags(REPO) == {"v2": both, "b": neither}


# ---------------------------------------------------------------- several repositories
@pytest.fixture
def team(ecr):
    names = ["team/a", "team/b", "team/c"]
    for name in names:
        ecr.create_repository(name)
        push(ecr, f"{name}-1", ["pr-1", "v1"], repo=name)
        push(ecr, f"{name}-2", ["pr-2", "v2"], repo=name)
    ecr.create_repository("other/x")
    push(ecr, "other", ["pr-1", "v1"], repo="other/x")
    ecr.reset_calls()
    return names


def test_a_glob_cleans_every_matching_repository(ecr, team):
    report, xcom = run(repository_name="team/*", max_concurrent_repositories=2)
    assert list(report["repositories"]) == ["team/a", "team/app", "team/b", "team/c"]  # sorted
    for name in team:
        assert set(ecr.tags(name)) == {"v1", "v2"}
        assert set(report["repositories"][name]) == TODAYS_FIELDS | NEW_FIELDS
        assert removed_tags(report["repositories"][name]) == ["pr-1", "pr-2"]
    assert set(ecr.tags("other/x")) == {"pr-1", "v1"}
    assert report["failed_repositories"] == {}
    assert report["totals"]["repositories"] == 4 and report["totals"]["removed"] == 6
    assert report["totals"]["tags_scanned"] == 12 and report["totals"]["kept_count"] == 6
    assert report["repository_name"] == "team/*" and report["registry_id"] == "123456789012"
    assert ecr.calls["DescribeRepositories"] == 1 and xcom["hygiene_report"] == report


def test_over_many_repositories_the_link_shows_the_registrys_repositories(ecr, team):
    _, xcom = run(repository_name="team/*")
    assert EcrRepositoryLink().format_link(**xcom["ecr_repository"]) == (
        "https://console.aws.amazon.com/ecr/private-registry/repositories?region=us-east-1"
    )


def test_one_repository_failing_is_reported_while_the_others_run(ecr, team):
    def team_b_is_deleted(double):
        double.registry().backend.delete_repository("team/b", "123456789012", force=True)

    # Before the first repository is read: whichever runs first, team/b is gone for its own read.
    ecr.before_call("DescribeImages", team_b_is_deleted, call=1)
    error, report = run_failing(HygieneFailedError, repository_name="team/*")
    assert isinstance(error, AirflowFailException)
    assert "1 of 4 repositories failed: team/b (RepositoryNotFoundException)" in str(error)
    assert report["failed_repositories"]["team/b"]["code"] == "RepositoryNotFoundException"
    assert report["failed_repositories"]["team/b"]["retryable"] is False
    assert "team/b" not in report["repositories"]
    for name in ("team/a", "team/c"):
        assert set(ecr.tags(name)) == {"v1", "v2"}


def test_a_list_with_a_missing_repository_and_a_per_tag_failure(ecr, team):
    index = build_image("oci-index", "multi")
    ecr.push("team/c", index, ["keep"])
    ecr.move_tag("team/c", "pr-child", index.children[0].digest)
    _, report = run_failing(
        HygieneFailedError, repository_name=["team/a", "team/none", "team/c"], allow_image_deletion=True
    )
    assert report["repository_name"] == ["team/a", "team/none", "team/c"]
    assert set(report["failed_repositories"]) == {"team/none", "team/c"}
    assert report["failed_repositories"]["team/c"]["code"] == "HygieneFailedError"
    assert "ImageReferencedByManifestList" in report["failed_repositories"]["team/c"]["message"]
    assert "team/c" in report["repositories"]  # its report exists: the rest of it was done
    assert set(ecr.tags("team/a")) == {"v1", "v2"} and ecr.calls["DescribeRepositories"] == 0


def test_a_transient_failure_leaves_the_task_retryable(ecr, team, monkeypatch):
    monkeypatch.setattr("botocore.retries.standard.ExponentialBackoff.delay_amount", lambda self, context: 0)
    ecr.push("team/a", build_image("oci", "solo"), ["pr-9", "v9"])
    ecr.inject("BatchDeleteImage", Fault.THROTTLE, times=None)
    retrying = {"botocore_config": {"retries": {"mode": "standard", "max_attempts": 2}}}
    error, report = run_failing(
        tag_hygiene.RepositoriesIncompleteError,
        repository_name=["team/a", "other/x"],
        rules=[{"tag_pattern": "pr-9"}],
        **retrying,
    )
    assert not isinstance(error, AirflowFailException)  # Airflow's retries re-run it
    assert report["failed_repositories"]["team/a"] == {
        "code": "ThrottlingException",
        "message": report["failed_repositories"]["team/a"]["message"],
        "retryable": True,
    }
    assert report["repositories"]["other/x"]["removed"] == []


def test_no_more_repositories_in_flight_than_the_bound(ecr, monkeypatch):
    for i in range(6):
        ecr.create_repository(f"many/r{i}")
        push(ecr, f"m{i}", ["pr-1", "v1"], repo=f"many/r{i}")
    threads, lock = set(), threading.Lock()
    clean = tag_hygiene.clean_repository

    def recording(*args, **kwargs):
        with lock:
            threads.add(threading.current_thread().name)
        return clean(*args, **kwargs)

    monkeypatch.setattr(tag_hygiene, "clean_repository", recording)
    report, _ = run(repository_name="many/*", max_concurrent_repositories=2)
    assert report["totals"]["removed"] == 6
    assert 1 <= len(threads) <= 2 and all(name.startswith("ecr-hygiene") for name in threads)


def test_describe_repositories_pages_of_1000(ecr):
    for i in range(1001):
        ecr.create_repository(f"noise/r{i:04d}")
    ecr.create_repository("team/z")
    push(ecr, "z", ["pr-1", "v1"], repo="team/z")
    ecr.reset_calls()
    report, _ = run(repository_name="team/[z]", dry_run=True)
    assert list(report["repositories"]) == ["team/z"]
    pages = ecr.requests_for("DescribeRepositories")
    assert len(pages) == 2 and all(p["maxResults"] == 1000 for p in pages)


@pytest.mark.parametrize("fault", [Fault.THROTTLE, Fault.SERVER_ERROR, Fault.DROPPED_CONNECTION])
def test_describe_repositories_faults_are_retried(ecr, team, fault, monkeypatch):
    monkeypatch.setattr("botocore.retries.standard.ExponentialBackoff.delay_amount", lambda self, context: 0)
    ecr.inject("DescribeRepositories", fault)
    report, _ = run(repository_name="team/*", botocore_config={"retries": {"mode": "standard", "max_attempts": 2}})
    assert report["totals"]["removed"] == 6 and ecr.calls["DescribeRepositories"] == 2


def test_describe_repositories_denied_fails_before_any_write(ecr, team):
    ecr.inject("DescribeRepositories", Fault.ACCESS_DENIED, times=None)
    params = {"repository_name": "team/*", "rules": [{"tag_pattern": "pr-*"}], **AWS}
    with pytest.raises(AirflowFailException, match="AccessDenied"):
        EcrTagHygieneOperator(task_id="h", **params).execute(make_context())
    assert ecr.write_calls == 0 and set(ecr.calls) == {"DescribeRepositories"}
