"""EcrReleaseOperator against the in-process ECR double: every check before any write, all-or-nothing writes."""

from __future__ import annotations

import logging
from collections import Counter

import pytest
from airflow.providers.common.compat.sdk import AirflowFailException
from helpers import AWS, make_context

from airflow_ecr_retag import EcrReleaseOperator, EcrRetagOperator, EcrRollbackOperator
from airflow_ecr_retag.core import errors as core_errors
from airflow_ecr_retag.exceptions import InvalidInputError, ReleaseCheckFailedError, ReleaseFailedError
from airflow_ecr_retag.testing import EcrDouble, Fault, build_image

REPOS = ["team/api", "team/worker", "team/migrate"]
KINDS = {"team/api": "oci-index", "team/worker": "docker", "team/migrate": "oci"}
TARGETS = ["v1.4.2", "prod"]
RETRYING = {"botocore_config": {"retries": {"mode": "standard", "max_attempts": 2}}}


@pytest.fixture
def ecr(ecr_double):
    return ecr_double


def seed(ecr, repos=REPOS, create=None):
    """Each repository: the previous release at prod and v1.4.1, the candidate at sha-1."""
    previous, candidates = {}, {}
    for repo in repos:
        ecr.create_repository(repo, **(create or {}).get(repo, {}))
        previous[repo] = ecr.push(repo, build_image("oci", f"{repo}-old"), ["prod", "v1.4.1"])
        candidates[repo] = ecr.push(repo, build_image(KINDS.get(repo, "oci"), f"{repo}-new"), ["sha-1"])
    ecr.reset_calls()
    return previous, candidates


def images(repos=REPOS, **entry):
    return [{"repository_name": repo, "source_tag": "sha-1", **entry} for repo in repos]


def run(image_list=None, **kwargs):
    operator = EcrReleaseOperator(
        task_id="release", images=images() if image_list is None else image_list, target_tags=TARGETS, **AWS, **kwargs
    )
    context = make_context()
    try:
        return operator.execute(context), context["ti"].xcom
    except Exception as error:
        error.xcom = context["ti"].xcom
        raise


def state(ecr, repos=REPOS):
    return {repo: ecr.tags(repo) for repo in repos}


def all_images(ecr, repos=REPOS):
    return {repo: set(ecr.images(repo)) for repo in repos}


def test_release_reads_each_repository_once_and_writes_each_missing_tag_once(ecr):
    previous, candidates = seed(ecr)
    returned, xcom = run()
    assert returned == candidates
    for repo in REPOS:
        assert ecr.tags(repo) == {
            "sha-1": candidates[repo],
            "v1.4.2": candidates[repo],
            "prod": candidates[repo],
            "v1.4.1": previous[repo],
        }
    assert dict(ecr.calls) == {"BatchGetImage": 3, "DescribeRepositories": 1, "PutImage": 6}
    reads = ecr.requests_for("BatchGetImage")
    assert [r["repositoryName"] for r in reads] == REPOS
    assert all(r["imageIds"] == [{"imageTag": "sha-1"}, {"imageTag": "v1.4.2"}, {"imageTag": "prod"}] for r in reads)
    assert ecr.requests_for("DescribeRepositories")[0]["repositoryNames"] == REPOS
    # Every read and check comes before the first write.
    operations = [c.operation for c in ecr.requests]
    assert operations.index("PutImage") == 4 and set(operations[4:]) == {"PutImage"}
    assert [r["repository_name"] for r in xcom["release"]] == REPOS
    for report, repo in zip(xcom["release"], REPOS, strict=True):
        assert report["added"] == TARGETS and report["moved"] == {"prod": previous[repo]}
        assert report["digest"] == candidates[repo] and report["unchanged"] == []
        assert report["image_uri"] == f"123456789012.dkr.ecr.us-east-1.amazonaws.com/{repo}@{candidates[repo]}"


def test_each_report_is_the_one_ecr_retag_operator_makes():
    with EcrDouble() as ecr:
        seed(ecr, ["team/api"])
        _, xcom = run(images(["team/api"]))
        [released] = xcom["release"]
    with EcrDouble() as ecr:
        seed(ecr, ["team/api"])
        context = make_context()
        EcrRetagOperator(
            task_id="p", repository_name="team/api", source_tag="sha-1", target_tags=TARGETS, **AWS
        ).execute(context)
    assert context["ti"].xcom["promotion"] == released


def test_a_release_that_moves_no_tag_needs_no_describe_repositories(ecr):
    _, candidates = seed(ecr)
    operator = EcrReleaseOperator(task_id="r", images=images(), target_tags=["v2", "v2.0"], **AWS)
    operator.execute(make_context())
    assert dict(ecr.calls) == {"BatchGetImage": 3, "PutImage": 6}
    assert all(ecr.tags(repo)["v2"] == candidates[repo] for repo in REPOS)


def test_rerun_of_a_finished_release_makes_one_read_per_repository_and_no_write(ecr):
    seed(ecr)
    run()
    after = state(ecr)
    ecr.reset_calls()
    _, xcom = run()
    assert dict(ecr.calls) == {"BatchGetImage": 3}
    assert state(ecr) == after
    assert all(r["added"] == [] and r["unchanged"] == TARGETS for r in xcom["release"])


def test_the_last_repositorys_guard_failing_writes_nothing_anywhere(ecr):
    seed(ecr)
    before = state(ecr)
    tested = ecr.push("team/migrate", build_image("oci", "tested-then-replaced"))
    ecr.reset_calls()
    image_list = [
        *images(REPOS[:2]),
        {"repository_name": "team/migrate", "source_tag": "sha-1", "source_digest": tested},
    ]
    with pytest.raises(ReleaseCheckFailedError) as error:
        run(image_list)
    assert ecr.write_calls == 0
    assert state(ecr) == before
    assert isinstance(error.value, AirflowFailException)
    assert "team/migrate: source_tag 'sha-1' now points at" in str(error.value) and tested in str(error.value)
    assert "nothing was written in any" in str(error.value)
    assert set(error.value.problems) == {"team/migrate"}
    assert isinstance(error.value.problems["team/migrate"], core_errors.GuardFailedError)  # the core's error
    assert error.value.xcom["release"] == []


def test_overwrite_false_in_any_repository_writes_nothing_anywhere(ecr):
    previous, _ = seed(ecr, REPOS[:2])
    ecr.create_repository("team/migrate")
    ecr.push("team/migrate", build_image("oci", "new"), ["sha-1"])  # no prod yet: no conflict here
    ecr.reset_calls()
    with pytest.raises(ReleaseCheckFailedError) as error:
        run(overwrite=False)
    assert ecr.write_calls == 0
    assert set(error.value.problems) == {"team/api", "team/worker"}
    assert all(isinstance(p, core_errors.TargetExistsError) for p in error.value.problems.values())
    assert f"prod -> {previous['team/worker']}" in str(error.value)
    assert "v1.4.2" not in ecr.tags("team/migrate")


def test_an_immutable_conflict_in_the_last_repository_writes_nothing_anywhere(ecr):
    previous, _ = seed(ecr, create={"team/migrate": {"mutability": "IMMUTABLE"}})
    before = state(ecr)
    with pytest.raises(ReleaseCheckFailedError) as error:
        run()
    assert ecr.write_calls == 0 and state(ecr) == before
    problem = error.value.problems["team/migrate"]
    assert isinstance(problem, core_errors.ImmutableTagError)
    assert "'prod' is immutable in repository 'team/migrate'" in str(problem) and previous["team/migrate"] in str(
        problem
    )
    assert dict(ecr.calls) == {"BatchGetImage": 3, "DescribeRepositories": 1}


def test_the_double_reports_tag_mutability_as_describe_repositories_does(ecr):
    # The botocore model's Repository shape: imageTagMutability (MUTABLE, IMMUTABLE,
    # IMMUTABLE_WITH_EXCLUSION, MUTABLE_WITH_EXCLUSION) and imageTagMutabilityExclusionFilters
    # ({filterType: WILDCARD, filter}); repositoryNames takes 1-100 names.
    ecr.create_repository("team/api", mutability="IMMUTABLE_WITH_EXCLUSION", exclusion_filters=["prod", "rc-*"])
    ecr.create_repository("team/worker")
    answer = ecr.client().describe_repositories(repositoryNames=["team/api", "team/worker"])["repositories"]
    by_name = {r["repositoryName"]: r for r in answer}
    assert by_name["team/api"]["imageTagMutability"] == "IMMUTABLE_WITH_EXCLUSION"
    assert by_name["team/api"]["imageTagMutabilityExclusionFilters"] == [
        {"filterType": "WILDCARD", "filter": "prod"},
        {"filterType": "WILDCARD", "filter": "rc-*"},
    ]
    assert by_name["team/worker"]["imageTagMutability"] == "MUTABLE"
    from airflow_ecr_retag.core.ecr import tag_is_immutable

    assert [tag_is_immutable(by_name["team/api"], t) for t in ("prod", "rc-1", "v1", "prod2")] == [
        False,
        False,
        True,
        True,
    ]
    assert not tag_is_immutable(by_name["team/worker"], "prod")


def test_a_tag_excluded_from_immutability_may_move(ecr):
    _, candidates = seed(
        ecr, create={"team/api": {"mutability": "IMMUTABLE_WITH_EXCLUSION", "exclusion_filters": ["pro*"]}}
    )
    run()
    assert ecr.tags("team/api")["prod"] == candidates["team/api"]


def test_a_tag_an_exclusion_filter_freezes_may_not_move(ecr):
    seed(ecr, create={"team/worker": {"mutability": "MUTABLE_WITH_EXCLUSION", "exclusion_filters": ["prod"]}})
    with pytest.raises(ReleaseCheckFailedError, match="'prod' is immutable in repository 'team/worker'"):
        run()
    assert ecr.write_calls == 0


def test_every_failed_check_is_named_at_once(ecr):
    seed(ecr, REPOS[:1])
    ecr.create_repository("team/worker")
    with pytest.raises(ReleaseCheckFailedError) as error:
        run(images(REPOS))  # team/worker has no sha-1; team/migrate does not exist
    assert list(error.value.problems) == ["team/worker", "team/migrate"]
    assert isinstance(error.value.problems["team/worker"], core_errors.ImageNotFoundError)
    assert error.value.problems["team/migrate"].code == "RepositoryNotFoundException"
    assert str(error.value).startswith("release checks failed in 2 of 3 repositories")
    assert ecr.write_calls == 0


def write_points():
    """Every write of a clean release, generated from a clean run (as the fault matrix does)."""
    import os

    os.environ.setdefault("AWS_ACCESS_KEY_ID", "testing")
    os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "testing")
    with EcrDouble() as ecr:
        seed(ecr)
        run()
        seen: Counter = Counter()
        points = []
        for call in ecr.requests:
            seen[call.operation] += 1
            if call.operation in ("PutImage", "BatchDeleteImage"):
                points.append((call.operation, seen[call.operation], call.params["repositoryName"]))
    return points


WRITE_POINTS = write_points()


def test_the_write_points_are_every_put_of_the_set():
    assert [(op, n) for op, n, _ in WRITE_POINTS] == [("PutImage", n) for n in range(1, 7)]
    assert Counter(repo for *_, repo in WRITE_POINTS) == dict.fromkeys(REPOS, 2)


@pytest.mark.parametrize(("operation", "nth", "repo"), WRITE_POINTS, ids=[f"{o}#{n}-{r}" for o, n, r in WRITE_POINTS])
def test_a_permanent_fault_at_any_write_rolls_back_to_the_digests_from_before(ecr, operation, nth, repo):
    seed(ecr)
    before, images_before = state(ecr), all_images(ecr)
    ecr.inject(operation, Fault.ACCESS_DENIED, call=nth)
    with pytest.raises(ReleaseFailedError) as error:
        run()
    assert isinstance(error.value, AirflowFailException)
    assert state(ecr) == before, "a tag was left half-promoted"
    assert all(all_images(ecr)[r] >= images_before[r] for r in REPOS), "an image was lost"
    message = str(error.value)
    assert f"release failed writing {repo}: " in message and "AccessDeniedException" in message
    assert "rolled back this run's writes: restored" in message and "not undone none" in message
    assert error.value.rollback["failed"] == []
    # XCom release names what the run wrote; rolling it back again changes nothing.
    written = error.value.xcom["release"]
    assert [r["repository_name"] for r in written] == REPOS[: REPOS.index(repo) + 1]
    ecr.reset_calls()
    EcrRollbackOperator(task_id="again", promotions=written, **AWS).execute(make_context())
    assert ecr.write_calls == 0 and state(ecr) == before


@pytest.mark.parametrize(("operation", "nth", "repo"), WRITE_POINTS, ids=[f"{o}#{n}-{r}" for o, n, r in WRITE_POINTS])
def test_a_write_whose_retries_run_out_is_rolled_back_and_left_to_airflows_retries(
    ecr, monkeypatch, operation, nth, repo
):
    monkeypatch.setattr("botocore.retries.standard.ExponentialBackoff.delay_amount", lambda self, context: 0)
    seed(ecr)
    before = state(ecr)
    ecr.inject(operation, Fault.SERVER_ERROR, call=nth, times=3)  # one try and two retries
    with pytest.raises(Exception, match="ServerException") as error:
        run(**RETRYING)
    assert not isinstance(error.value, AirflowFailException)  # a task retry may succeed
    assert state(ecr) == before
    assert any("rolled back this run's writes" in note for note in getattr(error.value, "__notes__", []))
    ecr.clear_faults()
    returned, _ = run(**RETRYING)  # Airflow's retry
    assert returned == {repo: before[repo]["sha-1"] for repo in REPOS}


def test_a_write_refused_after_the_checks_passed_is_rolled_back(ecr):
    # The checks pass (v2 is new in the immutable team/migrate); then another actor tags their
    # image v2 there just before our PutImage, which ECR then refuses: no retry can fix that.
    seed(ecr, create={"team/migrate": {"mutability": "IMMUTABLE"}})
    theirs = ecr.push("team/migrate", build_image("oci", "someone-else"))
    before = state(ecr)
    ecr.before_call("PutImage", lambda d: d.move_tag("team/migrate", "v2", theirs), call=3)
    with pytest.raises(ReleaseFailedError) as error:
        EcrReleaseOperator(task_id="r", images=images(), target_tags=["v2"], **AWS).execute(make_context())
    assert "release failed writing team/migrate: target tag 'v2' is immutable" in str(error.value)
    assert "removed team/api:v2, team/worker:v2" in str(error.value)
    assert state(ecr) == {**before, "team/migrate": {**before["team/migrate"], "v2": theirs}}  # theirs, untouched
    assert error.value.rollback["left_alone"] == [
        {
            "repository_name": "team/migrate",
            "tag": "v2",
            "digest": theirs,
            "reason": "moved_since",
            "detail": f"now points at {theirs}, not the promoted {before['team/migrate']['sha-1']}: moved since",
        }
    ]


def test_a_rollback_that_cannot_finish_says_so_and_leaves_the_reports(ecr):
    seed(ecr)
    ecr.inject("PutImage", Fault.ACCESS_DENIED, call=3, times=None)  # every write from the 3rd on
    ecr.inject("BatchDeleteImage", Fault.ACCESS_DENIED, times=None)
    with pytest.raises(ReleaseFailedError) as error:
        run()
    assert "the roll-back itself failed" in str(error.value) and "EcrRollbackOperator" in str(error.value)
    written = error.value.xcom["release"]
    assert [r["repository_name"] for r in written] == ["team/api", "team/worker"]
    ecr.clear_faults()
    EcrRollbackOperator(task_id="finish", promotions=written, **AWS).execute(make_context())
    for repo in REPOS:
        assert "v1.4.2" not in ecr.tags(repo) and ecr.tags(repo)["prod"] == ecr.tags(repo)["v1.4.1"]


def test_one_log_line_per_tag_named_by_repository(ecr, capsys, caplog):
    previous, candidates = seed(ecr, REPOS[:2])
    with caplog.at_level(logging.INFO):
        run(images(REPOS[:2]))
    text = capsys.readouterr().out + caplog.text
    for repo in REPOS[:2]:
        assert f"{repo}: Tag prod: moved from {previous[repo]} to {candidates[repo]}" in text
        assert f"{repo}: Tag v1.4.2: added at {candidates[repo]}" in text


def test_images_rendered_as_text_by_a_template_are_parsed_back(ecr):
    from airflow.sdk.definitions.param import ParamsDict

    _, candidates = seed(ecr)
    operator = EcrReleaseOperator(task_id="r", images="{{ params.images }}", target_tags="{{ params.tags }}", **AWS)
    context = {**make_context(), "params": ParamsDict({"images": images(), "tags": TARGETS})}
    operator.render_template_fields(context)
    assert operator.images.startswith("[{'repository_name': 'team/api'")  # what non-native Jinja renders
    assert operator.execute(context) == candidates


def test_templated_fields():
    operator = EcrReleaseOperator(task_id="t", images=[], target_tags=[])
    assert {"images", "target_tags", "registry_id", "aws_conn_id", "region_name"} <= set(operator.template_fields)


def test_cross_account_registry_id_reaches_every_call(ecr):
    ecr.create_repository("shared/app", registry_id="222222222222")
    ecr.push("shared/app", build_image("oci", "old"), ["prod"], registry_id="222222222222")
    digest = ecr.push("shared/app", build_image("oci", "new"), ["sha-1"], registry_id="222222222222")
    returned, xcom = run(images(["shared/app"]), registry_id="222222222222")
    assert returned == {"shared/app": digest}
    assert ecr.tags("shared/app", registry_id="222222222222")["prod"] == digest
    assert all(call.params.get("registryId") == "222222222222" for call in ecr.requests)
    assert xcom["release"][0]["registry_id"] == "222222222222"


def test_missing_repository_fails_without_retries(ecr):
    with pytest.raises(ReleaseCheckFailedError) as error:
        run(images(["team/none"]))
    assert error.value.problems["team/none"].code == "RepositoryNotFoundException"
    assert isinstance(error.value.problems["team/none"], core_errors.EcrPermanentError)


BAD_INPUTS = [
    ({"images": []}, "images"),
    ({"images": "[]"}, "images"),
    ({"images": {"repository_name": "team/api"}}, "images"),
    ({"images": ["team/api"]}, "images[0]"),
    ({"images": [{"repository_name": "team/api", "source_tag": "sha-1", "tag": "x"}]}, "images[0]"),
    ({"images": [{"source_tag": "sha-1"}]}, "images[0].repository_name"),
    ({"images": [{"repository_name": "team/api"}]}, "images[0].source_tag"),
    ({"images": [{"repository_name": "Team/API", "source_tag": "sha-1"}]}, "images[0].repository_name"),
    ({"images": [{"repository_name": "team/api", "source_tag": "bad tag"}]}, "images[0].source_tag"),
    ({"images": images(REPOS[:1], source_digest="sha256:abc")}, "images[0].source_digest"),
    ({"images": images(["team/api", "team/worker", "team/api"])}, "images"),
    ({"target_tags": []}, "target_tags"),
    ({"target_tags": ["prod", "prod"]}, "target_tags"),
    ({"registry_id": "12345"}, "registry_id"),
    ({"overwrite": "false"}, "overwrite"),
]


@pytest.mark.parametrize(("overrides", "field"), BAD_INPUTS)
def test_bad_input_is_refused_before_any_call(ecr, overrides, field):
    params = {"images": images(), "target_tags": TARGETS, **AWS, **overrides}
    context = make_context()
    with pytest.raises(InvalidInputError) as error:
        EcrReleaseOperator(task_id="r", **params).execute(context)
    assert error.value.field == field
    assert str(error.value).startswith(f"{field}: ")
    assert ecr.total_calls == 0
    assert context["ti"].xcom["release"] == []
