"""EcrRetagOperator against the in-process ECR double: tag state and API-call counts."""

from __future__ import annotations

import json
import logging

import pytest
from airflow.providers.common.compat.sdk import AirflowFailException
from helpers import AWS, make_context

from airflow_ecr_retag import EcrRetagOperator
from airflow_ecr_retag.core import errors as core_errors
from airflow_ecr_retag.core.promotion import PromotionRequest, promote
from airflow_ecr_retag.exceptions import (
    EcrPermanentError,
    GuardFailedError,
    ImageNotFoundError,
    ImmutableTagError,
    InvalidInputError,
    TargetExistsError,
)
from airflow_ecr_retag.links import EcrImageLink
from airflow_ecr_retag.testing import Fault, build_image

REPO = "team/app"


@pytest.fixture
def ecr(ecr_double):
    ecr_double.create_repository(REPO)
    return ecr_double


def run(**kwargs):
    params = {"repository_name": REPO, "source_tag": "sha-1", "target_tags": ["v1.4.2", "prod"], **AWS, **kwargs}
    operator = EcrRetagOperator(task_id="promote", **params)
    context = make_context()
    digest = operator.execute(context)
    return digest, context["ti"].xcom


@pytest.mark.parametrize("kind", ["docker", "oci", "oci-no-mediatype", "oci-index", "docker-list"])
def test_promotion_keeps_the_digest_with_one_read_and_one_put_per_tag(ecr, kind):
    image = build_image(kind, "app")
    digest = ecr.push(REPO, image, ["sha-1"])
    images_before = set(ecr.images(REPO))
    ecr.reset_calls()

    returned, xcom = run()

    assert returned == digest == image.digest
    assert ecr.tags(REPO) == {"sha-1": digest, "v1.4.2": digest, "prod": digest}
    assert dict(ecr.calls) == {"BatchGetImage": 1, "PutImage": 2}
    assert set(ecr.images(REPO)) == images_before  # no new image, every platform child kept
    [read] = ecr.requests_for("BatchGetImage")
    assert read["imageIds"] == [{"imageTag": "sha-1"}, {"imageTag": "v1.4.2"}, {"imageTag": "prod"}]
    assert len(read["acceptedMediaTypes"]) == 4
    for put in ecr.requests_for("PutImage"):
        assert put["imageManifest"] == image.manifest
        assert put["imageDigest"] == digest
        assert put["imageManifestMediaType"] == image.media_type
    promotion = xcom["promotion"]
    assert promotion == {
        "repository_name": REPO,
        "registry_id": "123456789012",
        "digest": digest,
        "media_type": image.media_type,
        "image_uri": f"123456789012.dkr.ecr.us-east-1.amazonaws.com/{REPO}@{digest}",
        "added": ["v1.4.2", "prod"],
        "unchanged": [],
        "moved": {},
        "source_tag_removed": False,
    }


def test_rerun_makes_one_call_and_no_put(ecr):
    digest = ecr.push(REPO, build_image("oci-index"), ["sha-1"])
    run()
    ecr.reset_calls()
    returned, xcom = run()
    assert returned == digest
    assert dict(ecr.calls) == {"BatchGetImage": 1}
    assert xcom["promotion"]["unchanged"] == ["v1.4.2", "prod"]
    assert xcom["promotion"]["added"] == []


def test_moved_tags_report_their_previous_digest(ecr):
    old = ecr.push(REPO, build_image("oci", "old"), ["prod"])
    new = ecr.push(REPO, build_image("oci", "new"), ["sha-1"])
    _, xcom = run()
    assert xcom["promotion"]["moved"] == {"prod": old}
    assert ecr.tags(REPO)["prod"] == new
    assert old in ecr.images(REPO)  # left untagged, not deleted


def test_retry_after_partial_failure_finishes_the_job(ecr):
    digest = ecr.push(REPO, build_image("oci"), ["sha-1"])
    ecr.inject("PutImage", Fault.ACCESS_DENIED, call=2, times=None)
    with pytest.raises(EcrPermanentError):
        run(target_tags=["a", "b", "c"])
    assert ecr.tags(REPO) == {"sha-1": digest, "a": digest}
    ecr.clear_faults()
    ecr.reset_calls()
    _, xcom = run(target_tags=["a", "b", "c"])
    assert dict(ecr.calls) == {"BatchGetImage": 1, "PutImage": 2}
    assert xcom["promotion"]["unchanged"] == ["a"] and xcom["promotion"]["added"] == ["b", "c"]


def test_image_already_exists_from_a_concurrent_attempt_is_success(ecr):
    digest = ecr.push(REPO, build_image("oci"), ["sha-1"])
    ecr.before_call("PutImage", lambda d: d.move_tag(REPO, "prod", digest))
    _, xcom = run(target_tags=["prod"])
    assert ecr.tags(REPO)["prod"] == digest
    assert xcom["promotion"]["unchanged"] == ["prod"]


def test_immutable_tag_already_at_the_digest_is_success(ecr):
    ecr.create_repository("locked", mutability="IMMUTABLE")
    digest = ecr.push("locked", build_image("oci"), ["sha-1", "v1"])
    ecr.reset_calls()
    _, xcom = run(repository_name="locked", target_tags=["v1"])
    assert dict(ecr.calls) == {"BatchGetImage": 1}
    assert xcom["promotion"]["unchanged"] == ["v1"]
    # ... and when it appears between our read and our write (ImageTagAlreadyExistsException):
    ecr.before_call("PutImage", lambda d: d.move_tag("locked", "v2", digest))
    _, xcom = run(repository_name="locked", target_tags=["v2"])
    assert xcom["promotion"]["unchanged"] == ["v2"]


def test_immutable_tag_on_another_digest_names_it(ecr):
    ecr.create_repository("locked", mutability="IMMUTABLE")
    other = ecr.push("locked", build_image("oci", "other"), ["v1"])
    ecr.push("locked", build_image("oci", "new"), ["sha-1"])
    with pytest.raises(ImmutableTagError) as error:
        run(repository_name="locked", target_tags=["v1"])
    assert "immutable" in str(error.value) and other in str(error.value)
    assert ecr.tags("locked")["v1"] == other


def test_source_digest_promotes_exactly_that_image(ecr):
    first = ecr.push(REPO, build_image("oci", "first"), ["sha-1"])
    second = ecr.push(REPO, build_image("oci", "second"))
    returned, _ = run(source_tag=None, source_digest=second, target_tags="prod")
    assert returned == second
    assert ecr.tags(REPO) == {"sha-1": first, "prod": second}
    assert ecr.requests_for("BatchGetImage")[0]["imageIds"][0] == {"imageDigest": second}


def test_guard_fails_with_nothing_written_when_the_tag_moved(ecr):
    tested = ecr.push(REPO, build_image("oci", "tested"))
    ecr.push(REPO, build_image("oci", "newer"), ["sha-1"])
    with pytest.raises(GuardFailedError) as error:
        run(source_digest=tested)
    assert tested in str(error.value)
    assert ecr.write_calls == 0


def test_guard_holds(ecr):
    tested = ecr.push(REPO, build_image("oci", "tested"), ["sha-1"])
    returned, _ = run(source_digest=tested)
    assert returned == tested


def test_overwrite_false_refuses_a_target_on_another_image_before_any_write(ecr):
    old = ecr.push(REPO, build_image("oci", "old"), ["prod"])
    ecr.push(REPO, build_image("oci", "new"), ["sha-1"])
    with pytest.raises(TargetExistsError) as error:
        run(overwrite=False, target_tags=["v9", "prod"])
    assert "prod" in str(error.value) and old in str(error.value)
    assert ecr.write_calls == 0
    assert "v9" not in ecr.tags(REPO)


def test_overwrite_false_accepts_a_target_already_at_the_image(ecr):
    digest = ecr.push(REPO, build_image("oci"), ["sha-1", "prod"])
    _, xcom = run(overwrite=False, target_tags=["prod", "v2"])
    assert xcom["promotion"]["added"] == ["v2"] and ecr.tags(REPO)["v2"] == digest


def test_move_removes_the_source_tag_after_the_targets(ecr):
    digest = ecr.push(REPO, build_image("oci-index"), ["rc"])
    _, xcom = run(source_tag="rc", target_tags=["v1"], remove_source_tag=True)
    assert ecr.tags(REPO) == {"v1": digest}
    assert xcom["promotion"]["source_tag_removed"] is True
    assert [call.operation for call in ecr.requests] == [
        "BatchGetImage",
        "PutImage",
        "DescribeImages",
        "BatchDeleteImage",
    ]
    assert ecr.requests_for("BatchDeleteImage")[0]["imageIds"] == [{"imageTag": "rc"}]
    assert digest in ecr.images(REPO)


def test_move_rerun_converges(ecr):
    digest = ecr.push(REPO, build_image("oci"), ["rc"])
    run(source_tag="rc", target_tags=["v1"], remove_source_tag=True)
    ecr.reset_calls()
    returned, xcom = run(source_tag="rc", target_tags=["v1"], remove_source_tag=True)
    assert returned == digest
    assert dict(ecr.calls) == {"BatchGetImage": 1}
    assert xcom["promotion"]["unchanged"] == ["v1"]


def test_move_leaves_a_source_tag_pushed_meanwhile(ecr):
    digest = ecr.push(REPO, build_image("oci", "old"), ["rc"])
    fresh = ecr.push(REPO, build_image("oci", "fresh"))
    ecr.before_call("DescribeImages", lambda d: d.move_tag(REPO, "rc", fresh))
    _, xcom = run(source_tag="rc", target_tags=["v1"], remove_source_tag=True)
    assert ecr.tags(REPO) == {"rc": fresh, "v1": digest}
    assert xcom["promotion"]["source_tag_removed"] is False
    assert ecr.calls["BatchDeleteImage"] == 0


def test_move_never_removes_the_last_tag(ecr):
    digest = ecr.push(REPO, build_image("oci", "old"), ["rc"])
    other = ecr.push(REPO, build_image("oci", "other"))
    ecr.before_call("DescribeImages", lambda d: d.move_tag(REPO, "v1", other))
    _, xcom = run(source_tag="rc", target_tags=["v1"], remove_source_tag=True)
    assert ecr.tags(REPO)["rc"] == digest
    assert digest in ecr.images(REPO)
    assert xcom["promotion"]["source_tag_removed"] is False


def test_manifest_that_does_not_hash_to_its_digest_is_never_written(ecr):
    image = build_image("oci")
    ecr.push(REPO, image, ["sha-1"])
    client = ecr.client()

    def reserialise(parsed, **_):
        for entry in parsed.get("images", []):
            entry["imageManifest"] = json.dumps(json.loads(entry["imageManifest"]))

    client.meta.events.register("after-call.ecr.BatchGetImage", reserialise)
    request = PromotionRequest.validated(repository_name=REPO, source_tag="sha-1", target_tags=["prod"])
    with pytest.raises(core_errors.DigestMismatchError):  # the core's own error: no operator here
        promote(client, request, region_name="us-east-1")
    assert ecr.write_calls == 0


def test_missing_repository_fails_without_retries(ecr):
    with pytest.raises(EcrPermanentError) as error:
        run(repository_name="missing/repo")
    assert error.value.code == "RepositoryNotFoundException"
    assert isinstance(error.value, AirflowFailException)


def test_missing_source_fails_without_retries(ecr):
    with pytest.raises(ImageNotFoundError) as error:
        run(source_tag="sha-nope")
    assert "sha-nope" in str(error.value)
    assert ecr.write_calls == 0


def test_throttled_put_is_retried_by_botocore(ecr):
    digest = ecr.push(REPO, build_image("oci"), ["sha-1"])
    ecr.inject("PutImage", Fault.THROTTLE)
    run(target_tags=["prod"], botocore_config={"retries": {"mode": "standard", "max_attempts": 3}})
    assert ecr.tags(REPO)["prod"] == digest
    assert ecr.calls["PutImage"] == 2


def test_retry_mode_is_configurable_through_botocore_config(ecr):
    ecr.push(REPO, build_image("oci"), ["sha-1"])
    ecr.inject("PutImage", Fault.THROTTLE, times=None)
    with pytest.raises(Exception, match="ThrottlingException"):
        run(target_tags=["prod"], botocore_config={"retries": {"mode": "standard", "max_attempts": 2}})
    assert ecr.calls["PutImage"] == 3  # botocore's max_attempts counts retries: 1 + 2


def task_log(capsys, caplog) -> str:
    # The operator logs through Airflow's structlog task logger, which writes to stdout here.
    return capsys.readouterr().out + caplog.text


def test_one_log_line_per_tag(ecr, capsys, caplog):
    old = ecr.push(REPO, build_image("oci", "old"), ["prod"])
    digest = ecr.push(REPO, build_image("oci", "new"), ["sha-1", "v1"])
    with caplog.at_level(logging.INFO):
        run(target_tags=["v1", "v2", "prod"])
    text = task_log(capsys, caplog)
    assert f"Tag v1: already at {digest}" in text
    assert f"Tag v2: added at {digest}" in text
    assert f"Tag prod: moved from {old} to {digest}" in text


def test_console_link_is_persisted(ecr):
    digest = ecr.push(REPO, build_image("oci"), ["sha-1"])
    _, xcom = run()
    link = EcrImageLink().format_link(**xcom["ecr_image"])
    assert link == (
        "https://console.aws.amazon.com/ecr/repositories/private/123456789012/team/app/_/image/"
        f"{digest}/details?region=us-east-1"
    )


def test_the_link_exists_before_the_work_so_a_failure_leaves_no_link_without_its_xcom(ecr):
    """The Task Runner renders every extra link after the task; a link with no XCom logs an error."""
    operator = EcrRetagOperator(task_id="promote", repository_name=REPO, source_tag="sha-9", target_tags="v1", **AWS)
    context = make_context()
    with pytest.raises(ImageNotFoundError):
        operator.execute(context)
    xcom = context["ti"].xcom
    assert list(xcom) == ["ecr_image"]  # nothing else: the work never got that far
    # The caller's account is not known before a call answers: the registry's repositories.
    assert EcrImageLink().format_link(**xcom["ecr_image"]) == (
        "https://console.aws.amazon.com/ecr/private-registry/repositories?region=us-east-1"
    )
    pinned = EcrRetagOperator(
        task_id="promote", repository_name=REPO, source_tag="sha-9", target_tags="v1", registry_id="123456789012", **AWS
    )
    context = make_context()
    with pytest.raises(ImageNotFoundError):
        pinned.execute(context)
    assert EcrImageLink().format_link(**context["ti"].xcom["ecr_image"]) == (
        "https://console.aws.amazon.com/ecr/repositories/private/123456789012/team/app?region=us-east-1"
    )


def test_templated_fields_and_lazy_validation():
    operator = EcrRetagOperator(task_id="t", repository_name="{{ params.repo }}", source_tag="BAD TAG", target_tags=[])
    assert {
        "repository_name",
        "source_tag",
        "source_digest",
        "target_tags",
        "registry_id",
        "aws_conn_id",
        "region_name",
    } <= set(operator.template_fields)


BAD_INPUTS = [
    ({"repository_name": "Team/App"}, "repository_name"),
    ({"repository_name": "/team/app"}, "repository_name"),
    ({"repository_name": "team/../app"}, "repository_name"),
    ({"repository_name": ""}, "repository_name"),
    ({"source_tag": None, "source_digest": None}, "source_tag"),
    ({"source_tag": " sha-1"}, "source_tag"),
    ({"source_tag": "t" * 129}, "source_tag"),
    ({"source_tag": "t" * 301}, "source_tag"),
    ({"source_tag": "täg"}, "source_tag"),
    ({"source_digest": "sha256:" + "a" * 63}, "source_digest"),
    ({"source_digest": "sha256:" + "a" * 65}, "source_digest"),
    ({"source_digest": "sha256:" + "A" * 64}, "source_digest"),
    ({"target_tags": []}, "target_tags"),
    ({"target_tags": ["prod", "prod"]}, "target_tags"),
    ({"target_tags": [f"t{i}" for i in range(100)]}, "target_tags"),
    ({"target_tags": ["ok", ""]}, "target_tags[1]"),
    ({"target_tags": ["sha-1"], "remove_source_tag": True}, "target_tags"),
    ({"registry_id": "12345678901"}, "registry_id"),
    ({"overwrite": "yes"}, "overwrite"),
]


@pytest.mark.parametrize(("overrides", "field"), BAD_INPUTS)
def test_bad_input_is_refused_before_any_call(ecr, overrides, field):
    with pytest.raises(InvalidInputError) as error:
        run(**overrides)
    assert error.value.field == field
    assert str(error.value).startswith(f"{field}: ")
    assert isinstance(error.value, AirflowFailException)
    assert ecr.total_calls == 0


def test_target_tags_rendered_as_text_by_a_template_are_parsed_back(ecr):
    from airflow.sdk.definitions.param import ParamsDict

    digest = ecr.push(REPO, build_image("oci"), ["sha-1"])
    operator = EcrRetagOperator(
        task_id="p", repository_name=REPO, source_tag="sha-1", target_tags="{{ params.tags }}", **AWS
    )
    context = {**make_context(), "params": ParamsDict({"tags": ["v3", "prod"]})}
    operator.render_template_fields(context)
    assert operator.target_tags == "['v3', 'prod']"  # what non-native Jinja renders
    operator.execute(context)
    assert ecr.tags(REPO)["v3"] == ecr.tags(REPO)["prod"] == digest


def test_immutable_conflict_fails_before_any_new_tag_is_written(ecr):
    ecr.create_repository("locked", mutability="IMMUTABLE")
    other = ecr.push("locked", build_image("oci", "other"), ["prod"])
    ecr.push("locked", build_image("oci", "new"), ["sha-1"])
    with pytest.raises(ImmutableTagError, match=other):
        run(repository_name="locked", target_tags=["v5", "v6", "prod"])
    assert set(ecr.tags("locked")) == {"prod", "sha-1"}  # v5 and v6 were not written
    assert ecr.calls["PutImage"] == 1


def test_cross_account_registry_id_reaches_every_call_and_the_uri(ecr):
    ecr.create_repository("shared/app", registry_id="222222222222")
    digest = ecr.push("shared/app", build_image("oci-index", "x"), ["sha-1"], registry_id="222222222222")
    returned, xcom = run(repository_name="shared/app", registry_id="222222222222", target_tags=["prod"])
    assert returned == digest
    assert ecr.tags("shared/app", registry_id="222222222222")["prod"] == digest
    assert xcom["promotion"]["image_uri"] == f"222222222222.dkr.ecr.us-east-1.amazonaws.com/shared/app@{digest}"
    assert all(call.params.get("registryId") == "222222222222" for call in ecr.requests)


def test_each_asset_outlet_event_carries_the_promoted_image_and_keeps_the_users_own_extra(ecr):
    from airflow.sdk import Asset, AssetAlias
    from airflow.sdk.execution_time.context import OutletEventAccessors

    from airflow_ecr_retag import ecr_image_asset

    digest = ecr.push(REPO, build_image("oci-index", "app"), ["sha-1"])
    old = ecr.push(REPO, build_image("oci", "old"), ["prod"])
    prod, other, alias = Asset(ecr_image_asset(REPO, "prod")), Asset("s3://bucket/releases"), AssetAlias("promotions")
    operator = EcrRetagOperator(
        task_id="promote", repository_name=REPO, source_tag="sha-1", target_tags=["v1.4.2", "prod"],
        outlets=[prod, other, alias], **AWS,
    )  # fmt: skip
    context = make_context()
    context["outlet_events"] = events = OutletEventAccessors()
    events[prod].extra["ticket"] = "REL-42"  # set by the user's own code
    operator.execute(context)
    promoted = {
        "digest": digest,
        "image_uri": f"123456789012.dkr.ecr.us-east-1.amazonaws.com/{REPO}@{digest}",
        "tags": ["v1.4.2", "prod"],
        "moved": {"prod": old},
    }
    assert events[prod].extra == {"ticket": "REL-42", **promoted}
    assert events[other].extra == promoted
    assert events[alias].extra == {} and events[alias].asset_alias_events == []  # an alias names its own assets


@pytest.mark.parametrize(
    ("arguments", "name"),
    [
        (("team/app", "prod"), "ecr://team/app:prod"),
        (("team/app", "v1.4.2", "123456789012"), "ecr://123456789012/team/app:v1.4.2"),
    ],
)
def test_the_asset_name_of_a_tag(arguments, name):
    from airflow_ecr_retag import ecr_image_asset

    assert ecr_image_asset(*arguments) == name


@pytest.mark.parametrize(
    ("arguments", "field"),
    [
        (("Team/App", "prod"), "repository_name"),
        (("team/app", "v*"), "tag"),
        (("team/app", "prod", "42"), "registry_id"),
    ],
)
def test_the_asset_name_of_a_bad_tag_is_refused_naming_the_field(arguments, field):
    from airflow_ecr_retag import ecr_image_asset

    with pytest.raises(InvalidInputError) as error:
        ecr_image_asset(*arguments)
    assert error.value.field == field
