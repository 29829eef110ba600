"""EcrRollbackOperator against the in-process ECR double: tag state afterwards, API-call counts, the report."""

from __future__ import annotations

import json
import logging

import pytest
from airflow.providers.common.compat.sdk import AirflowFailException
from helpers import AWS, make_context

from airflow_ecr_retag import EcrReleaseOperator, EcrRetagOperator, EcrRollbackOperator
from airflow_ecr_retag.exceptions import InvalidInputError, ReleaseFailedError, RollbackIncompleteError
from airflow_ecr_retag.testing import Fault, build_image

REPO = "team/app"
HEX = "0123456789abcdef" * 4


@pytest.fixture
def ecr(ecr_double):
    ecr_double.create_repository(REPO)
    return ecr_double


def promote(ecr, repository_name=REPO, **kwargs):
    """Promote with EcrRetagOperator; its ``promotion`` report."""
    params = {"repository_name": repository_name, "source_tag": "sha-1", "target_tags": ["v1.4.2", "prod"], **kwargs}
    context = make_context()
    EcrRetagOperator(task_id="promote", **params, **AWS).execute(context)
    ecr.reset_calls()
    return context["ti"].xcom["promotion"]


def seed(ecr, repository_name=REPO):
    """The previous release at prod and v1.4.1, the candidate at sha-1: (previous, candidate)."""
    previous = ecr.push(repository_name, build_image("oci", f"{repository_name}-old"), ["prod", "v1.4.1"])
    candidate = ecr.push(repository_name, build_image("oci-index", f"{repository_name}-new"), ["sha-1"])
    return previous, candidate


def roll_back(promotions, **kwargs):
    context = make_context()
    operator = EcrRollbackOperator(task_id="rollback", promotions=promotions, **AWS, **kwargs)
    try:
        returned = operator.execute(context)
    except Exception as error:
        error.xcom = context["ti"].xcom
        raise
    assert returned == context["ti"].xcom["rollback"]
    return returned


def test_rollback_after_a_promotion_restores_the_previous_digests_and_removes_the_added_tags(ecr):
    previous, candidate = seed(ecr)
    before, images_before = ecr.tags(REPO), set(ecr.images(REPO))
    promotion = promote(ecr)
    assert promotion["moved"] == {"prod": previous} and promotion["added"] == ["v1.4.2", "prod"]

    report = roll_back(promotion)

    assert ecr.tags(REPO) == before
    assert set(ecr.images(REPO)) == images_before  # no image deleted, every index child kept
    assert dict(ecr.calls) == {"BatchGetImage": 1, "PutImage": 1, "DescribeImages": 1, "BatchDeleteImage": 1}
    [read] = ecr.requests_for("BatchGetImage")
    assert read["imageIds"] == [{"imageTag": "prod"}, {"imageTag": "v1.4.2"}, {"imageDigest": previous}]
    [put] = ecr.requests_for("PutImage")
    old = build_image("oci", f"{REPO}-old")
    assert (put["imageTag"], put["imageDigest"], put["imageManifest"]) == ("prod", previous, old.manifest)
    assert put["imageManifestMediaType"] == old.media_type
    assert ecr.requests_for("DescribeImages")[0]["imageIds"] == [{"imageDigest": candidate}]
    assert ecr.requests_for("BatchDeleteImage")[0]["imageIds"] == [{"imageTag": "v1.4.2"}]  # by tag only
    assert report == {
        "restored": [{"repository_name": REPO, "tag": "prod", "digest": previous, "from_digest": candidate}],
        "removed": [{"repository_name": REPO, "tag": "v1.4.2", "digest": candidate}],
        "unchanged": [],
        "left_alone": [],
        "failed": [],
    }


def test_rollback_twice_in_a_row_changes_nothing_the_second_time(ecr):
    previous, _ = seed(ecr)
    before = ecr.tags(REPO)
    promotion = promote(ecr)
    roll_back(promotion)
    ecr.reset_calls()
    report = roll_back(promotion)
    assert dict(ecr.calls) == {"BatchGetImage": 1}
    assert ecr.tags(REPO) == before
    assert report["unchanged"] == [
        {"repository_name": REPO, "tag": "prod", "digest": previous},
        {"repository_name": REPO, "tag": "v1.4.2", "digest": None},
    ]
    assert report["restored"] == report["removed"] == report["left_alone"] == report["failed"] == []


def test_rollback_after_a_partial_release_finishes_what_the_release_could_not(ecr_double):
    repos = ["team/api", "team/worker"]
    for repo in repos:
        ecr_double.create_repository(repo)
        seed(ecr_double, repo)
    before = {repo: ecr_double.tags(repo) for repo in repos}
    # The 4th write (worker's v1.4.2) is refused, and so is every write after it: the release's own
    # roll-back cannot run, so team/api is fully promoted and team/worker half.
    ecr_double.inject("PutImage", Fault.ACCESS_DENIED, call=4, times=None)
    context = make_context()
    with pytest.raises(ReleaseFailedError, match="the roll-back itself failed"):
        EcrReleaseOperator(
            task_id="release",
            images=[{"repository_name": r, "source_tag": "sha-1"} for r in repos],
            target_tags=["v1.4.2", "prod"],
            **AWS,
        ).execute(context)
    assert ecr_double.tags("team/worker")["prod"] == ecr_double.tags("team/worker")["sha-1"]
    assert "v1.4.2" not in ecr_double.tags("team/worker")
    ecr_double.clear_faults()

    report = roll_back(context["ti"].xcom["release"])

    assert {repo: ecr_double.tags(repo) for repo in repos} == before
    assert [(e["repository_name"], e["tag"]) for e in report["restored"]] == [
        ("team/api", "prod"),
        ("team/worker", "prod"),
    ]
    assert [(e["repository_name"], e["tag"]) for e in report["removed"]] == [("team/api", "v1.4.2")]
    assert report["unchanged"] == [{"repository_name": "team/worker", "tag": "v1.4.2", "digest": None}]


def test_a_tag_another_actor_moved_since_is_left_alone_and_reported(ecr):
    _, candidate = seed(ecr)
    hotfix = ecr.push(REPO, build_image("oci", "hotfix"))
    promotion = promote(ecr)
    ecr.move_tag(REPO, "prod", hotfix)  # someone deployed a hotfix after our promotion

    report = roll_back(promotion)

    assert ecr.tags(REPO)["prod"] == hotfix
    assert "v1.4.2" not in ecr.tags(REPO)
    assert ecr.calls["PutImage"] == 0
    assert report["left_alone"] == [
        {
            "repository_name": REPO,
            "tag": "prod",
            "digest": hotfix,
            "reason": "moved_since",
            "detail": f"now points at {hotfix}, not the promoted {candidate}: moved since",
        }
    ]
    assert report["failed"] == []


def test_an_added_tag_another_actor_moved_is_not_removed(ecr):
    seed(ecr)
    other = ecr.push(REPO, build_image("oci", "other"))
    promotion = promote(ecr)
    ecr.move_tag(REPO, "v1.4.2", other)
    report = roll_back(promotion)
    assert ecr.tags(REPO)["v1.4.2"] == other
    assert [(e["tag"], e["reason"]) for e in report["left_alone"]] == [("v1.4.2", "moved_since")]
    assert "BatchDeleteImage" not in ecr.calls


def test_a_moved_tag_removed_since_is_not_re_created(ecr):
    seed(ecr)
    promotion = promote(ecr)
    ecr.delete_tag(REPO, "prod")
    report = roll_back(promotion)
    assert "prod" not in ecr.tags(REPO)
    assert [(e["tag"], e["reason"]) for e in report["left_alone"]] == [("prod", "removed_since")]


def test_an_added_tag_moved_before_the_re_read_is_left_alone(ecr):
    seed(ecr)
    other = ecr.push(REPO, build_image("oci", "other"))
    promotion = promote(ecr)
    # Another actor moves v1.4.2 after the first read, before the re-read that precedes the delete.
    ecr.before_call("DescribeImages", lambda d: d.move_tag(REPO, "v1.4.2", other))
    report = roll_back(promotion)
    assert ecr.tags(REPO)["v1.4.2"] == other
    assert "BatchDeleteImage" not in ecr.calls
    assert [(e["tag"], e["reason"]) for e in report["left_alone"]] == [("v1.4.2", "moved_since")]


def test_a_tag_put_back_concurrently_counts_as_unchanged(ecr):
    previous, _ = seed(ecr)
    promotion = promote(ecr, target_tags=["prod"])
    ecr.before_call("PutImage", lambda d: d.move_tag(REPO, "prod", previous))
    report = roll_back(promotion)
    assert ecr.tags(REPO)["prod"] == previous
    assert report["unchanged"] == [{"repository_name": REPO, "tag": "prod", "digest": previous}]


def test_a_previous_image_that_no_longer_exists_is_reported_not_guessed(ecr):
    previous = ecr.push(REPO, build_image("oci", "old"), ["prod"])
    candidate = ecr.push(REPO, build_image("oci", "new"), ["sha-1"])
    promotion = promote(ecr)
    ecr.client().batch_delete_image(repositoryName=REPO, imageIds=[{"imageDigest": previous}])  # untagged, deleted
    ecr.reset_calls()

    with pytest.raises(RollbackIncompleteError) as error:
        roll_back(promotion)

    assert isinstance(error.value, AirflowFailException)
    assert "team/app:prod (previous_image_gone)" in str(error.value)
    assert ecr.tags(REPO) == {"sha-1": candidate, "prod": candidate}  # v1.4.2 removed; prod left, not guessed
    assert ecr.calls["PutImage"] == 0
    report = error.value.xcom["rollback"]
    [failed] = report["failed"]
    assert (failed["tag"], failed["digest"], failed["reason"]) == ("prod", candidate, "previous_image_gone")
    assert previous in failed["detail"]
    assert [e["tag"] for e in report["removed"]] == ["v1.4.2"]


def test_an_immutable_tag_that_cannot_move_back_is_reported(ecr):
    previous, candidate = seed(ecr)
    promotion = promote(ecr)
    ecr.client().put_image_tag_mutability(repositoryName=REPO, imageTagMutability="IMMUTABLE")
    ecr.reset_calls()

    with pytest.raises(RollbackIncompleteError, match=r"team/app:prod \(immutable\)"):
        roll_back(promotion)

    tags = ecr.tags(REPO)
    assert tags["prod"] == candidate and "v1.4.2" not in tags  # removing a tag is still allowed
    assert previous in ecr.images(REPO)


def test_an_images_last_tag_is_never_removed(ecr):
    untagged = ecr.push(REPO, build_image("oci", "by-digest"))
    promotion = promote(ecr, source_tag=None, source_digest=untagged, target_tags=["v2", "rc"])
    report = roll_back(promotion)
    assert ecr.tags(REPO) == {"v2": untagged}
    assert untagged in ecr.images(REPO)
    assert [(e["tag"], e["reason"]) for e in report["left_alone"]] == [("v2", "last_tag")]
    assert [e["tag"] for e in report["removed"]] == ["rc"]


def test_remove_added_tags_false_only_puts_moved_tags_back(ecr):
    previous, candidate = seed(ecr)
    promotion = promote(ecr)
    report = roll_back(promotion, remove_added_tags=False)
    assert ecr.tags(REPO)["prod"] == previous and ecr.tags(REPO)["v1.4.2"] == candidate
    assert dict(ecr.calls) == {"BatchGetImage": 1, "PutImage": 1}
    assert [(e["tag"], e["reason"]) for e in report["left_alone"]] == [("v1.4.2", "remove_added_tags=False")]


def test_a_list_of_promotions_costs_one_read_per_repository(ecr):
    ecr.create_repository("team/worker")
    seed(ecr)
    seed(ecr, "team/worker")
    before = {r: ecr.tags(r) for r in (REPO, "team/worker")}
    first = promote(ecr, target_tags=["prod"])
    second = promote(ecr, target_tags=["v1.4.2"])
    third = promote(ecr, "team/worker")
    roll_back([first, second, third])
    assert {r: ecr.tags(r) for r in (REPO, "team/worker")} == before
    assert [c.params["repositoryName"] for c in ecr.requests if c.operation == "BatchGetImage"] == [REPO, "team/worker"]


@pytest.mark.parametrize("form", ["dict", "list", "json", "python-literal"])
def test_promotions_arrive_as_a_report_a_list_or_their_text(ecr, form):
    previous, _ = seed(ecr)
    promotion = promote(ecr)
    promotions = {
        "dict": promotion,
        "list": [promotion],
        "json": json.dumps([promotion]),
        "python-literal": str(promotion),
    }[form]
    roll_back(promotions)
    assert ecr.tags(REPO)["prod"] == previous and "v1.4.2" not in ecr.tags(REPO)


def test_a_template_rendered_as_text_is_parsed_back(ecr):
    from airflow.sdk.definitions.param import ParamsDict

    previous, _ = seed(ecr)
    promotion = promote(ecr)
    operator = EcrRollbackOperator(task_id="rollback", promotions="{{ params.release }}", **AWS)
    context = {**make_context(), "params": ParamsDict({"release": [promotion]})}
    operator.render_template_fields(context)
    assert operator.promotions.startswith("[{'repository_name': 'team/app'")  # what non-native Jinja renders
    operator.execute(context)
    assert ecr.tags(REPO)["prod"] == previous


def test_nothing_to_roll_back_makes_no_call(ecr):
    report = roll_back([])
    assert ecr.total_calls == 0
    assert report == {"restored": [], "removed": [], "unchanged": [], "left_alone": [], "failed": []}


def test_one_log_line_per_tag(ecr, capsys, caplog):
    previous, candidate = seed(ecr)
    promotion = promote(ecr)
    with caplog.at_level(logging.INFO):
        roll_back(promotion)
    text = capsys.readouterr().out + caplog.text
    assert f"team/app: Tag prod: restored to {previous} (was at the promoted {candidate})" in text
    assert f"team/app: Tag v1.4.2: removed from {candidate}" in text


def test_templated_fields():
    operator = EcrRollbackOperator(task_id="t", promotions="{{ ti.xcom_pull(task_ids='release', key='release') }}")
    assert {"promotions", "aws_conn_id", "region_name"} <= set(operator.template_fields)


REPORT = {
    "repository_name": REPO,
    "registry_id": "123456789012",
    "digest": "sha256:" + HEX,
    "added": ["v2", "prod"],
    "moved": {"prod": "sha256:" + HEX[::-1]},
}
BAD_INPUTS = [
    ({"promotions": None}, "promotions"),
    ({"promotions": "None"}, "promotions"),
    ({"promotions": "not a report"}, "promotions"),
    ({"promotions": 42}, "promotions"),
    ({"promotions": ["x"]}, "promotions[0]"),
    ({"promotions": {"repository_name": REPO, "digest": "sha256:" + HEX}}, "promotions"),
    ({"promotions": [REPORT, {k: v for k, v in REPORT.items() if k != "moved"}]}, "promotions[1]"),
    ({"promotions": {**REPORT, "digest": "sha256:abc"}}, "promotions.digest"),
    ({"promotions": {**REPORT, "repository_name": "Team/App"}}, "promotions.repository_name"),
    ({"promotions": {**REPORT, "added": "v2"}}, "promotions.added"),
    ({"promotions": {**REPORT, "added": ["v2", "bad tag"]}}, "promotions.added[1]"),
    ({"promotions": {**REPORT, "moved": ["prod"]}}, "promotions.moved"),
    ({"promotions": {**REPORT, "moved": {"prod": "latest"}}}, "promotions.moved[prod]"),
    ({"promotions": {**REPORT, "moved": {"stable": "sha256:" + HEX}}}, "promotions.moved"),
    ({"promotions": [REPORT, REPORT]}, "promotions"),
    ({"promotions": REPORT, "remove_added_tags": "yes"}, "remove_added_tags"),
]


@pytest.mark.parametrize(("overrides", "field"), BAD_INPUTS)
def test_bad_input_is_refused_before_any_call(ecr, overrides, field):
    with pytest.raises(InvalidInputError) as error:
        roll_back(**overrides)
    assert error.value.field == field
    assert str(error.value).startswith(f"{field}: ")
    assert isinstance(error.value, AirflowFailException)
    assert ecr.total_calls == 0


def test_a_report_that_is_not_one_names_what_is_missing(ecr):
    with pytest.raises(InvalidInputError) as error:
        roll_back({"repository_name": REPO, "digest": "sha256:" + HEX, "tags": ["prod"]})
    assert str(error.value) == (
        "promotions: is not a promotion report: missing 'added', 'moved' (it has 'digest', 'repository_name', 'tags')"
    )
