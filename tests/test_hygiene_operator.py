"""EcrTagHygieneOperator against the in-process double, including pagination past 1000 images."""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta

import pytest
from helpers import AWS, make_context

from airflow_ecr_retag import EcrTagHygieneOperator
from airflow_ecr_retag.exceptions import EcrPermanentError, HygieneFailedError, InvalidInputError
from airflow_ecr_retag.links import EcrRepositoryLink
from airflow_ecr_retag.testing import build_image

REPO = "team/app"
NOW = datetime.now(UTC)


@pytest.fixture
def ecr(ecr_double):
    ecr_double.create_repository(REPO)
    return ecr_double


def push(ecr, name, tags, days_ago=0.0, kind="oci"):
    return ecr.push(REPO, build_image(kind, name), tags, pushed_at=NOW - timedelta(days=days_ago))


def run(**kwargs):
    params = {"repository_name": REPO, "rules": [{"tag_pattern": "latest"}], **AWS, **kwargs}
    operator = EcrTagHygieneOperator(task_id="hygiene", **params)
    context = make_context()
    return operator.execute(context), context["ti"].xcom


def removed_tags(report):
    return sorted(r["tag"] for r in report["removed"])


def test_remove_outright(ecr):
    digest = push(ecr, "a", ["latest", "v1"])
    report, _ = run()
    assert report["removed"] == [{"tag": "latest", "digest": digest}]
    assert ecr.tags(REPO) == {"v1": digest}
    assert report["kept_count"] == 1 and report["dry_run"] is False


def test_keep_latest_ranks_images_by_push_time_then_digest(ecr):
    digests = [push(ecr, f"img{i}", [f"sha-{i}", f"v{i}"], days_ago=10 - i) for i in range(5)]  # img4 newest
    report, _ = run(rules=[{"tag_pattern": "sha-*", "keep_latest": 2}])
    assert removed_tags(report) == ["sha-0", "sha-1", "sha-2"]
    assert set(ecr.tags(REPO)) == {"sha-3", "sha-4", "v0", "v1", "v2", "v3", "v4"}
    assert set(ecr.images(REPO)) == set(digests)


def test_keep_latest_ties_broken_by_digest(ecr):
    same_time = NOW - timedelta(days=1)
    digests = sorted(
        ecr.push(REPO, build_image("oci", f"tie{i}"), [f"sha-{i}", f"keep-{i}"], pushed_at=same_time) for i in range(3)
    )
    report, _ = run(rules=[{"tag_pattern": "sha-*", "keep_latest": 1}])
    kept_digest = digests[0]
    survivors = {t: d for t, d in ecr.tags(REPO).items() if t.startswith("sha-")}
    assert list(survivors.values()) == [kept_digest]
    assert {r["digest"] for r in report["removed"]} == set(digests[1:])


def test_older_than_days_uses_image_pushed_at(ecr):
    push(ecr, "old", ["pr-1", "main-1"], days_ago=20)
    push(ecr, "new", ["pr-2", "main-2"], days_ago=3)
    report, _ = run(rules=[{"tag_pattern": "pr-*", "older_than_days": 14}])
    assert removed_tags(report) == ["pr-1"]


def test_keep_latest_and_older_than_days_together_both_must_hold(ecr):
    for i, age in enumerate([30, 25, 20, 2]):
        push(ecr, f"i{i}", [f"sha-{i}", f"x{i}"], days_ago=age)
    report, _ = run(rules=[{"tag_pattern": "sha-*", "keep_latest": 1, "older_than_days": 21}])
    assert removed_tags(report) == ["sha-0", "sha-1"]  # sha-2 is ranked out but only 20 days old


def test_protect_wins_over_every_rule(ecr):
    digest = push(ecr, "a", ["latest", "v1.0", "prod", "sha-1"], days_ago=100)
    report, _ = run(rules=[{"tag_pattern": "*"}], protect=["v*", "prod"])
    assert removed_tags(report) == ["latest", "sha-1"]
    assert report["protected"] == ["prod", "v1.0"]
    assert ecr.tags(REPO) == {"v1.0": digest, "prod": digest}


def test_last_tag_is_never_removed_without_permission(ecr):
    lonely = push(ecr, "lonely", ["latest"])
    pair = push(ecr, "pair", ["sha-a", "sha-b"])
    images_before = set(ecr.images(REPO))
    report, _ = run(rules=[{"tag_pattern": "latest"}, {"tag_pattern": "sha-*"}])
    assert set(ecr.images(REPO)) == images_before
    assert ecr.tags(REPO) == {"latest": lonely, "sha-b": pair}
    assert sorted(report["skipped_last_tag"], key=lambda s: s["tag"]) == [
        {"tag": "latest", "digest": lonely},
        {"tag": "sha-b", "digest": pair},
    ]
    assert removed_tags(report) == ["sha-a"]
    assert report["images_deleted"] == []


def test_deletion_allowed_deletes_images_whose_every_tag_goes(ecr):
    lonely = push(ecr, "lonely", ["latest"])
    keeper = push(ecr, "keeper", ["latest2", "v1"])
    report, _ = run(rules=[{"tag_pattern": "latest*"}], allow_image_deletion=True)
    assert report["images_deleted"] == [lonely]
    assert set(ecr.images(REPO)) == {keeper}
    assert report["skipped_last_tag"] == []


def test_tag_moved_between_read_and_delete_is_untouched_and_the_other_image_survives(ecr):
    old = push(ecr, "old", ["latest", "sha-old"])
    other = push(ecr, "other", ["only-tag-of-other"])

    def someone_moves_latest(double):
        double.move_tag(REPO, "latest", other)

    # The re-check is the first DescribeImages call with imageIds; the move lands just before it.
    ecr.before_call("DescribeImages", someone_moves_latest, call=2)
    report, _ = run(rules=[{"tag_pattern": "latest"}])
    assert ecr.tags(REPO) == {"latest": other, "sha-old": old, "only-tag-of-other": other}
    assert report["removed"] == []
    assert report["skipped_moved"] == [{"tag": "latest", "digest": old}]
    assert ecr.calls["BatchDeleteImage"] == 0
    assert other in ecr.images(REPO)


def test_per_item_failures_are_reported_and_the_rest_continues(ecr):
    index = build_image("oci-index", "multi")
    ecr.push(REPO, index, ["v1"])
    child = index.children[0].digest
    ecr.move_tag(REPO, "child-tag", child)
    plain = push(ecr, "plain", ["latest", "keep"])
    with pytest.raises(HygieneFailedError, match="child-tag") as error:
        run(rules=[{"tag_pattern": "child-tag"}, {"tag_pattern": "latest"}], allow_image_deletion=True)
    assert "ImageReferencedByManifestList" in str(error.value)
    assert ecr.tags(REPO)["keep"] == plain and "latest" not in ecr.tags(REPO)


def test_failure_report_is_pushed_to_xcom_before_failing(ecr):
    index = build_image("oci-index", "multi")
    ecr.push(REPO, index, ["v1"])
    ecr.move_tag(REPO, "child-tag", index.children[0].digest)
    operator = EcrTagHygieneOperator(
        task_id="h", repository_name=REPO, rules=[{"tag_pattern": "child-tag"}], allow_image_deletion=True, **AWS
    )
    context = make_context()
    with pytest.raises(HygieneFailedError):
        operator.execute(context)
    [failure] = context["ti"].xcom["hygiene_report"]["failed"]
    assert failure["code"] == "ImageReferencedByManifestList" and failure["tag"] == "child-tag"


def test_the_report_is_xcom_hygiene_report_on_success_too(ecr):
    push(ecr, "a", ["latest", "v1"])
    report, xcom = run()
    assert xcom["hygiene_report"] == report  # the same key whatever the outcome; return_value too on success


def test_tag_already_gone_counts_as_success(ecr):
    digest = push(ecr, "a", ["latest", "v1"])
    ecr.before_call("BatchDeleteImage", lambda d: d.delete_tag(REPO, "latest"))
    report, _ = run()
    assert report["failed"] == []
    assert [a["tag"] for a in report["already_absent"]] == ["latest"]
    assert ecr.tags(REPO)["v1"] == digest


def test_dry_run_makes_zero_write_calls_and_reports_the_same(ecr):
    for i in range(5):
        push(ecr, f"i{i}", [f"sha-{i}", f"v{i}"], days_ago=i)
    dry, _ = run(rules=[{"tag_pattern": "sha-*", "keep_latest": 2}], dry_run=True)
    assert ecr.write_calls == 0
    assert set(ecr.calls) == {"DescribeImages"}
    assert dry["dry_run"] is True
    real, _ = run(rules=[{"tag_pattern": "sha-*", "keep_latest": 2}])
    assert removed_tags(dry) == removed_tags(real) == ["sha-2", "sha-3", "sha-4"]


def test_untagged_index_children_are_never_touched(ecr):
    index = build_image("oci-index", "multi")
    ecr.push(REPO, index, ["latest", "v1"])
    run(rules=[{"tag_pattern": "*"}], protect=["v1"], allow_image_deletion=True)
    assert set(ecr.images(REPO)) == {index.digest, *(c.digest for c in index.children)}
    for call in ecr.requests_for("BatchDeleteImage"):
        assert all(set(i) == {"imageTag"} for i in call["imageIds"])


def test_pagination_past_1000_images_and_batches_of_at_most_100(ecr):
    for i in range(1150):
        ecr.push(
            REPO,
            build_image("oci", f"n{i}"),
            [f"sha-{i:04d}", f"latest-{i}" if i % 4 == 0 else f"x-{i}"],
            pushed_at=NOW - timedelta(minutes=i),
        )
    report, _ = run(rules=[{"tag_pattern": "sha-*", "keep_latest": 20}, {"tag_pattern": "latest-*"}])
    assert report["images_scanned"] == 1150
    # Images 0-19 are the newest 20: their sha-* stay, their latest-* go (5 of them). Every older
    # image loses its sha-*; those also carrying latest-* keep one tag (the higher-sorting sha-*).
    newest_latest = sum(1 for i in range(20) if i % 4 == 0)
    expected = (1150 - 20) + newest_latest
    assert len(report["removed"]) == expected
    assert len(report["skipped_last_tag"]) == sum(1 for i in range(20, 1150) if i % 4 == 0)
    # The re-check reads the 2 pages again: fewer calls than ceil(1135 affected images / 100) = 12.
    assert ecr.calls["DescribeImages"] == 2 + 2
    deletes = ecr.requests_for("BatchDeleteImage")
    assert len(deletes) == math.ceil(expected / 100)
    assert max(len(c["imageIds"]) for c in deletes) <= 100
    pages = [c for c in ecr.requests_for("DescribeImages") if "imageIds" not in c]
    assert [p.get("maxResults") for p in pages] == [1000, 1000, 1000, 1000]
    assert len(ecr.images(REPO)) == 1150


def test_recheck_by_digest_when_few_images_are_affected(ecr):
    for i in range(250):
        ecr.push(REPO, build_image("oci", f"few{i}"), [f"keep-{i}"] + ([f"old-{i}", f"older-{i}"] if i < 3 else []))
    report, _ = run(rules=[{"tag_pattern": "old-*"}, {"tag_pattern": "older-*"}])
    rechecks = [c for c in ecr.requests_for("DescribeImages") if "imageIds" in c]
    assert [len(c["imageIds"]) for c in rechecks] == [3]  # 1 call by digest, not 1 page of 250
    assert len(report["removed"]) == 6


BAD = [
    ({"rules": []}, "rules"),
    ({"rules": "not json"}, "rules"),
    ({"rules": [{"pattern": "x"}]}, "rules[0]"),
    ({"rules": [{"keep_latest": 3}]}, "rules[0].tag_pattern"),
    ({"rules": [{"tag_pattern": ""}]}, "rules[0].tag_pattern"),
    ({"rules": [{"tag_pattern": "sha-*", "keep_latest": -1}]}, "rules[0].keep_latest"),
    ({"rules": [{"tag_pattern": "sha-*", "keep_latest": 2.5}]}, "rules[0].keep_latest"),
    ({"rules": [{"tag_pattern": "sha-*", "keep_latest": True}]}, "rules[0].keep_latest"),
    ({"rules": [{"tag_pattern": "pr-*", "older_than_days": -1}]}, "rules[0].older_than_days"),
    ({"repository_name": "Bad/Name"}, "repository_name"),
    ({"registry_id": "12345678901"}, "registry_id"),
    ({"protect": [""]}, "protect"),
    ({"dry_run": "no"}, "dry_run"),
]


@pytest.mark.parametrize(("overrides", "field"), BAD)
def test_bad_input_is_refused_before_any_call(ecr, overrides, field):
    with pytest.raises(InvalidInputError) as error:
        run(**overrides)
    assert error.value.field == field
    assert ecr.total_calls == 0


def test_rules_may_come_as_rendered_json_text(ecr):
    push(ecr, "a", ["latest", "v1"])
    report, _ = run(rules='[{"tag_pattern": "latest"}]')
    assert removed_tags(report) == ["latest"]


def test_progress_and_summary_are_logged(ecr, capsys):
    push(ecr, "a", ["latest", "v1"])
    run()
    out = capsys.readouterr().out
    assert "Read 1 images" in out and "to remove in 1 batches" in out and "Batch 1/1 done" in out
    assert "Tag hygiene of team/app" in out and "tags removed" in out


def test_the_repository_link_exists_from_the_start_and_names_the_account_once_known(ecr):
    push(ecr, "a", ["latest", "v1"])
    context = make_context()
    operator = EcrTagHygieneOperator(
        task_id="hygiene", repository_name="team/missing", rules=[{"tag_pattern": "x"}], **AWS
    )
    with pytest.raises(EcrPermanentError, match="RepositoryNotFoundException"):
        operator.execute(context)
    assert EcrRepositoryLink().format_link(**context["ti"].xcom["ecr_repository"]) == (
        "https://console.aws.amazon.com/ecr/private-registry/repositories?region=us-east-1"
    )
    _, xcom = run()
    assert EcrRepositoryLink().format_link(**xcom["ecr_repository"]) == (
        "https://console.aws.amazon.com/ecr/repositories/private/123456789012/team/app?region=us-east-1"
    )
