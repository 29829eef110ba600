"""Bad input table: across every operator and sensor, rendered through Jinja as in a DAG run.

Each case names the expected error class and the field its message must start with, and
asserts that the double saw zero ECR write calls (zero calls at all for input errors).
"""

from __future__ import annotations

import json

import pytest
from airflow.providers.common.compat.sdk import AirflowFailException
from helpers import AWS, make_context

from airflow_ecr_retag import (
    EcrCopyImageOperator,
    EcrImageScanSensor,
    EcrReleaseOperator,
    EcrRetagOperator,
    EcrRollbackOperator,
    EcrTagHygieneOperator,
    EcrTagSensor,
)
from airflow_ecr_retag.exceptions import InvalidInputError
from airflow_ecr_retag.testing import build_image

REPO = "team/app"
HEX = "0123456789abcdef" * 4

RETAG = {"repository_name": REPO, "source_tag": "sha-1", "target_tags": ["v1", "prod"]}
SENSOR = {"repository_name": REPO, "tag": "sha-1", "poke_interval": 0.01, "timeout": 5}
HYGIENE = {"repository_name": REPO, "rules": [{"tag_pattern": "latest"}]}
RELEASE = {"images": [{"repository_name": REPO, "source_tag": "sha-1"}], "target_tags": ["v1", "prod"]}
PROMOTION = {
    "repository_name": REPO,
    "registry_id": "123456789012",
    "digest": "sha256:" + HEX,
    "added": ["v1", "prod"],
    "moved": {"prod": "sha256:" + HEX[::-1]},
}
ROLLBACK = {"promotions": [PROMOTION]}
COPY = {"source_repository_name": REPO, "source_tag": "sha-1", "repository_name": "team/prod", "target_tags": ["v1"]}
SCAN_GATE = {"repository_name": REPO, "image_tag": "sha-1", "max_findings": {"CRITICAL": 0}, "timeout": 5}
KINDS = {
    "retag": (EcrRetagOperator, RETAG),
    "sensor": (EcrTagSensor, SENSOR),
    "hygiene": (EcrTagHygieneOperator, HYGIENE),
    "release": (EcrReleaseOperator, RELEASE),
    "rollback": (EcrRollbackOperator, ROLLBACK),
    "copy": (EcrCopyImageOperator, COPY),
    "scan_gate": (EcrImageScanSensor, SCAN_GATE),
}

# (operator, overrides, params for Jinja, field the message names)
CASES = [
    # Jinja-rendered values, empty strings and whitespace
    ("retag", {"repository_name": "{{ params.repo }}"}, {"repo": ""}, "repository_name"),
    ("retag", {"repository_name": "{{ params.repo }}"}, {"repo": " team/app"}, "repository_name"),
    ("retag", {"source_tag": "sha-{{ params.sha }}"}, {"sha": "abc def"}, "source_tag"),
    ("retag", {"target_tags": ["{{ params.version }}", "prod"]}, {"version": ""}, "target_tags[0]"),
    ("retag", {"target_tags": ["{{ params.version }}", "prod"]}, {"version": "v1\n"}, "target_tags[0]"),
    ("sensor", {"tag": "{{ params.tag }}"}, {"tag": "   "}, "tag"),
    ("sensor", {"repository_name": "{{ params.repo }}"}, {"repo": "team/app "}, "repository_name"),
    ("hygiene", {"repository_name": "{{ params.repo }}"}, {"repo": ""}, "repository_name"),
    ("hygiene", {"rules": "{{ params.rules }}"}, {"rules": "[]"}, "rules"),
    ("hygiene", {"rules": "{{ params.rules }}"}, {"rules": '[{"tag_pattern": "x", "keep": 1}]'}, "rules[0]"),
    # digests: 63 or 65 hex characters, upper case
    ("retag", {"source_digest": "sha256:" + HEX[:63]}, {}, "source_digest"),
    ("retag", {"source_digest": "sha256:" + HEX + "0"}, {}, "source_digest"),
    ("retag", {"source_digest": "sha256:" + HEX.upper()}, {}, "source_digest"),
    ("retag", {"source_digest": "sha512:" + HEX + HEX}, {}, "source_digest"),
    ("sensor", {"expected_digest": "sha256:" + HEX[:63]}, {}, "expected_digest"),
    ("sensor", {"expected_digest": "sha256:" + HEX.upper()}, {}, "expected_digest"),
    # tags of 129 and 301 characters, non-ASCII tags
    ("retag", {"source_tag": "a" * 129}, {}, "source_tag"),
    ("retag", {"target_tags": ["b" * 301]}, {}, "target_tags[0]"),
    ("retag", {"target_tags": ["prod", "prød"]}, {}, "target_tags[1]"),
    ("sensor", {"tag": "c" * 129}, {}, "tag"),
    ("sensor", {"tag": "d" * 301}, {}, "tag"),
    ("sensor", {"tag": "タグ"}, {}, "tag"),
    ("retag", {"target_tags": [".hidden"]}, {}, "target_tags[0]"),
    # repository names: upper case, leading slash, '..'
    ("retag", {"repository_name": "Team/app"}, {}, "repository_name"),
    ("sensor", {"repository_name": "/team/app"}, {}, "repository_name"),
    ("hygiene", {"repository_name": "team/../app"}, {}, "repository_name"),
    ("hygiene", {"repository_name": "team//app"}, {}, "repository_name"),
    # registry ids
    ("retag", {"registry_id": "12345678901"}, {}, "registry_id"),
    ("sensor", {"registry_id": "1234567890123"}, {}, "registry_id"),
    ("hygiene", {"registry_id": "12345678901a"}, {}, "registry_id"),
    # targets that repeat, the target-list limits, the move rules
    ("retag", {"target_tags": ["v1", "prod", "v1"]}, {}, "target_tags"),
    ("retag", {"target_tags": "{{ params.targets }}"}, {"targets": []}, "target_tags"),
    ("retag", {"target_tags": [f"t{i}" for i in range(100)]}, {}, "target_tags"),
    ("retag", {"source_tag": None, "source_digest": None}, {}, "source_tag"),
    ("retag", {"target_tags": ["sha-1"], "remove_source_tag": True}, {}, "target_tags"),
    (
        "retag",
        {"source_tag": None, "source_digest": "sha256:" + HEX, "remove_source_tag": True},
        {},
        "remove_source_tag",
    ),
    # hygiene rules
    ("hygiene", {"rules": [{"keep_latest": 2}]}, {}, "rules[0].tag_pattern"),
    ("hygiene", {"rules": [{"tag_pattern": "sha-*", "keep_latest": -2}]}, {}, "rules[0].keep_latest"),
    ("hygiene", {"rules": [{"tag_pattern": "sha-*", "keep_latest": "20"}]}, {}, "rules[0].keep_latest"),
    ("hygiene", {"rules": [{"tag_pattern": "pr-*", "older_than_days": -0.5}]}, {}, "rules[0].older_than_days"),
    ("hygiene", {"protect": ["v*", 3]}, {}, "protect"),
    ("hygiene", {"allow_image_deletion": "yes"}, {}, "allow_image_deletion"),
    # release sets: malformed entries, an empty list, repeated repositories
    ("release", {"images": "{{ params.images }}"}, {"images": []}, "images"),
    ("release", {"images": "{{ params.images }}"}, {"images": "team/app"}, "images"),
    ("release", {"images": ["{{ params.repo }}"]}, {"repo": REPO}, "images[0]"),
    (
        "release",
        {"images": [{"repository_name": "{{ params.repo }}", "source_tag": "sha-1"}]},
        {"repo": ""},
        "images[0].repository_name",
    ),
    ("release", {"images": [{"repository_name": REPO}]}, {}, "images[0].source_tag"),
    ("release", {"images": [{"source_tag": "sha-1"}]}, {}, "images[0].repository_name"),
    ("release", {"images": [{"repository_name": REPO, "source_tag": "sha-1", "target": "prod"}]}, {}, "images[0]"),
    (
        "release",
        {"images": [{"repository_name": REPO, "source_digest": "sha256:" + HEX[:63]}]},
        {},
        "images[0].source_digest",
    ),
    (
        "release",
        {"images": "{{ params.images }}"},
        {
            "images": [
                {"repository_name": REPO, "source_tag": "sha-1"},
                {"repository_name": REPO, "source_tag": "sha-2"},
            ]
        },
        "images",
    ),
    ("release", {"target_tags": "{{ params.targets }}"}, {"targets": []}, "target_tags"),
    # promotion reports that are not one
    ("rollback", {"promotions": "{{ params.release }}"}, {"release": None}, "promotions"),
    ("rollback", {"promotions": "{{ params.release }}"}, {"release": [{"repository_name": REPO}]}, "promotions[0]"),
    ("rollback", {"promotions": "{{ params.release }}"}, {"release": ["sha256:" + HEX]}, "promotions[0]"),
    (
        "rollback",
        {"promotions": {**PROMOTION, "digest": "{{ params.digest }}"}},
        {"digest": "prod"},
        "promotions.digest",
    ),
    ("rollback", {"promotions": {**PROMOTION, "moved": {"v2": "sha256:" + HEX}}}, {}, "promotions.moved"),
    ("rollback", {"promotions": [PROMOTION, PROMOTION]}, {}, "promotions"),
    ("rollback", {"remove_added_tags": "true"}, {}, "remove_added_tags"),
    # the scan gate: severities, counts, the image reference, the filters
    ("scan_gate", {"max_findings": {"CRTICAL": 0}}, {}, "max_findings"),
    ("scan_gate", {"max_findings": {"critical": 0}}, {}, "max_findings"),
    ("scan_gate", {"max_findings": {"HIGH": -1}}, {}, "max_findings.HIGH"),
    ("scan_gate", {"max_findings": {"HIGH": 1.5}}, {}, "max_findings.HIGH"),
    ("scan_gate", {"max_findings": {"HIGH": True}}, {}, "max_findings.HIGH"),
    ("scan_gate", {"max_findings": {"HIGH": "{{ params.n }}"}}, {"n": "0"}, "max_findings.HIGH"),
    ("scan_gate", {"max_findings": "{{ params.max }}"}, {"max": '{"LOW": -3}'}, "max_findings.LOW"),
    ("scan_gate", {"max_findings": ["CRITICAL"]}, {}, "max_findings"),
    ("scan_gate", {"image_digest": "sha256:" + HEX}, {}, "image_tag"),
    ("scan_gate", {"image_tag": None}, {}, "image_digest"),
    ("scan_gate", {"image_tag": None, "image_digest": "sha256:" + HEX[:63]}, {}, "image_digest"),
    (
        "scan_gate",
        {"image_tag": None, "image_digest": "{{ params.d }}"},
        {"d": "sha256:" + HEX.upper()},
        "image_digest",
    ),
    ("scan_gate", {"image_tag": "{{ params.tag }}"}, {"tag": "sha 1"}, "image_tag"),
    ("scan_gate", {"ignore_findings": ["CVE-2024-0001", ""]}, {}, "ignore_findings[1]"),
    ("scan_gate", {"only_fixable": "yes"}, {}, "only_fixable"),
    ("scan_gate", {"start_scan": 1}, {}, "start_scan"),
    # hygiene on real registries: the removal cap, pull times, the survivor, several repositories
    ("hygiene", {"max_removals": -1}, {}, "max_removals"),
    ("hygiene", {"max_removals": "{{ params.cap }}"}, {"cap": "-5"}, "max_removals"),
    ("hygiene", {"max_removals": "120%"}, {}, "max_removals"),
    ("hygiene", {"max_removals": "lots"}, {}, "max_removals"),
    ("hygiene", {"max_removals": 2.5}, {}, "max_removals"),
    ("hygiene", {"max_removals": True}, {}, "max_removals"),
    ("hygiene", {"protect_pulled_within_days": -1}, {}, "protect_pulled_within_days"),
    ("hygiene", {"protect_pulled_within_days": "30"}, {}, "protect_pulled_within_days"),
    ("hygiene", {"last_tag_preference": [3]}, {}, "last_tag_preference"),
    ("hygiene", {"last_tag_preference": {"v*": 1}}, {}, "last_tag_preference"),
    ("hygiene", {"last_tag_preference": ["v*", ""]}, {}, "last_tag_preference"),
    ("hygiene", {"include_archived": "yes"}, {}, "include_archived"),
    ("hygiene", {"repository_name": "Team/*"}, {}, "repository_name"),
    ("hygiene", {"repository_name": ["team/app", "Team/App"]}, {}, "repository_name[1]"),
    ("hygiene", {"repository_name": ["team/app", "team/app"]}, {}, "repository_name"),
    ("hygiene", {"repository_name": "{{ params.repos }}"}, {"repos": "[]"}, "repository_name"),
    ("hygiene", {"max_concurrent_repositories": 0}, {}, "max_concurrent_repositories"),
    # copies: the source's fields as the target's, rendered through Jinja, and the copy's own
    ("copy", {"source_repository_name": "{{ params.repo }}"}, {"repo": ""}, "source_repository_name"),
    ("copy", {"source_repository_name": "{{ params.repo }}"}, {"repo": "Team/App"}, "source_repository_name"),
    ("copy", {"source_tag": "sha-{{ params.sha }}"}, {"sha": "a b"}, "source_tag"),
    ("copy", {"source_digest": "{{ params.digest }}"}, {"digest": "sha256:" + HEX[:63]}, "source_digest"),
    ("copy", {"source_registry_id": "{{ params.account }}"}, {"account": "12345678901"}, "source_registry_id"),
    ("copy", {"source_tag": None, "source_digest": None}, {}, "source_tag"),
    ("copy", {"repository_name": "{{ params.repo }}"}, {"repo": "team//prod"}, "repository_name"),
    ("copy", {"target_tags": "{{ params.targets }}"}, {"targets": []}, "target_tags"),
    ("copy", {"target_tags": ["{{ params.version }}"]}, {"version": "v1 "}, "target_tags[0]"),
    ("copy", {"registry_id": "{{ params.prod }}"}, {"prod": "prod-account"}, "registry_id"),
    ("copy", {"max_concurrency": 0}, {}, "max_concurrency"),
    ("copy", {"max_concurrency": "4"}, {}, "max_concurrency"),
    ("copy", {"copy_referrers": "yes"}, {}, "copy_referrers"),
    ("copy", {"create_repository": 1}, {}, "create_repository"),
]

# Input errors only a read can find: refused before any write, after the reads that found them.
# (operator, overrides, params for Jinja, field the message names, the calls made)
READ_CASES = [
    ("hygiene", {"repository_name": "nothing/*"}, {}, "repository_name", {"DescribeRepositories": 1}),
    ("hygiene", {"repository_name": ["team/app", "nothing/*"]}, {}, "repository_name", {"DescribeRepositories": 1}),
]


@pytest.fixture
def ecr(ecr_double):
    ecr_double.create_repository(REPO)
    ecr_double.push(REPO, build_image("oci", "app"), ["sha-1", "latest"])
    ecr_double.reset_calls()
    return ecr_double


def build(kind, overrides):
    cls, defaults = KINDS[kind]
    return cls(task_id=f"bad_{kind}", **{**defaults, **AWS, **overrides})


def render(operator, params):
    from airflow.sdk.definitions.param import ParamsDict

    context = {**make_context(), "params": ParamsDict(params)}
    operator.render_template_fields(context)
    return context


def test_the_table_is_big_enough_and_covers_every_task_type():
    assert len(CASES) >= 30
    assert {kind for kind, *_ in CASES} == set(KINDS)


@pytest.mark.parametrize(
    ("kind", "overrides", "params", "field"), CASES, ids=[f"{c[0]}-{c[3]}-{i}" for i, c in enumerate(CASES)]
)
def test_bad_input(ecr, kind, overrides, params, field):
    operator = build(kind, overrides)
    context = render(operator, params)
    with pytest.raises(InvalidInputError) as error:
        operator.execute(context)
    assert isinstance(error.value, AirflowFailException)  # no retries burnt
    assert error.value.field == field
    assert str(error.value).startswith(f"{field}: ")
    assert ecr.total_calls == 0


@pytest.mark.parametrize(
    ("kind", "overrides", "params", "field", "calls"),
    READ_CASES,
    ids=[f"{c[0]}-{c[3]}-{i}" for i, c in enumerate(READ_CASES)],
)
def test_bad_input_found_by_a_read(ecr, kind, overrides, params, field, calls):
    operator = build(kind, overrides)
    context = render(operator, params)
    with pytest.raises(InvalidInputError) as error:
        operator.execute(context)
    assert isinstance(error.value, AirflowFailException)
    assert error.value.field == field
    assert str(error.value).startswith(f"{field}: ")
    assert ecr.write_calls == 0 and dict(ecr.calls) == calls


def test_manifest_over_4_mib_from_the_registry_is_never_re_put(ecr):
    client = ecr.client()
    image = build_image("oci", "app")
    # ECR itself refuses such a manifest (the double does too) ...
    oversized = json.loads(image.manifest) | {"annotations": {"pad": "x" * 4_194_304}}
    with pytest.raises(client.exceptions.InvalidParameterException, match="imageManifest"):
        client.put_image(repositoryName=REPO, imageManifest=json.dumps(oversized), imageTag="big")
    ecr.reset_calls()
    # ... and if a read ever returned one, the operator refuses before writing.
    from airflow_ecr_retag.core import errors as core_errors
    from airflow_ecr_retag.core.manifests import manifest_digest
    from airflow_ecr_retag.core.promotion import PromotionRequest, promote

    def inflate(parsed, **_):
        for entry in parsed.get("images", []):
            entry["imageManifest"] = json.dumps(oversized)
            entry["imageId"]["imageDigest"] = manifest_digest(entry["imageManifest"])

    client.meta.events.register("after-call.ecr.BatchGetImage", inflate)
    with pytest.raises(core_errors.ManifestTooLargeError, match=r"^imageManifest: "):  # the core's own error
        promote(
            client,
            PromotionRequest.validated(repository_name=REPO, source_tag="sha-1", target_tags=["v2"]),
            region_name="us-east-1",
        )
    assert ecr.write_calls == 0
