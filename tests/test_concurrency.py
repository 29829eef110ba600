"""Races against the double's HTTP server: two promotions of one tag at once, and a move racing a push."""

from __future__ import annotations

import threading

import pytest
from helpers import make_context

from airflow_ecr_retag import EcrRetagOperator
from airflow_ecr_retag.testing import build_image, push_image

# Sleeps, measures time or races threads: proven under load by scripts/prove_timing.py.
pytestmark = pytest.mark.timing

REPO = "team/app"
AWS = {"aws_conn_id": None, "region_name": "us-east-1"}


def promote_in_threads(*operators):
    barrier = threading.Barrier(len(operators))
    results: list[dict] = [{} for _ in operators]

    def run(index, operator):
        context = make_context()
        barrier.wait()
        try:
            results[index]["digest"] = operator.execute(context)
            results[index]["promotion"] = context["ti"].xcom["promotion"]
        except Exception as error:  # reported and asserted on below
            results[index]["error"] = error

    threads = [threading.Thread(target=run, args=(i, op)) for i, op in enumerate(operators)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    return results


def test_two_promotions_of_different_digests_to_one_tag(ecr_double_server):
    ecr = ecr_double_server
    ecr.create_repository(REPO)
    original = ecr.push(REPO, build_image("oci", "original"), ["prod"])
    a = ecr.push(REPO, build_image("oci-index", "a"), ["sha-a"])
    b = ecr.push(REPO, build_image("docker-list", "b"), ["sha-b"])
    for _ in range(5):
        ecr.move_tag(REPO, "prod", original)
        results = promote_in_threads(
            EcrRetagOperator(task_id="a", repository_name=REPO, source_tag="sha-a", target_tags=["prod"], **AWS),
            EcrRetagOperator(task_id="b", repository_name=REPO, source_tag="sha-b", target_tags=["prod"], **AWS),
        )
        assert all("error" not in r for r in results), results
        final = ecr.tags(REPO)["prod"]
        assert final in {a, b}
        for result, digest in zip(results, (a, b), strict=True):
            promotion = result["promotion"]
            assert result["digest"] == promotion["digest"] == digest
            # Truthful: it set prod (moving it from what it read) or found it already there.
            assert promotion["added"] + promotion["unchanged"] == ["prod"]
            if promotion["added"]:
                assert promotion["moved"]["prod"] in {original, a, b} - {digest}
        # The winner is the one whose PutImage landed last; nothing else was lost.
        assert {original, a, b} <= set(ecr.images(REPO))


def test_move_racing_an_external_push_of_the_source_tag(ecr_double_server):
    ecr = ecr_double_server
    ecr.create_repository(REPO)
    candidate = ecr.push(REPO, build_image("oci", "candidate"), ["rc"])
    fresh = build_image("oci", "fresh")
    pusher_client = ecr.client()

    def ci_pushes_a_new_rc(double):
        # Another process (CI) pushes a new image as "rc" while the move is between its writes.
        push_image(pusher_client, REPO, fresh, ["rc"])

    ecr.before_call("DescribeImages", ci_pushes_a_new_rc)
    context = make_context()
    EcrRetagOperator(
        task_id="move", repository_name=REPO, source_tag="rc", target_tags=["v1"], remove_source_tag=True, **AWS
    ).execute(context)
    tags = ecr.tags(REPO)
    assert tags["rc"] == fresh.digest  # the freshly pushed image keeps its tag
    assert tags["v1"] == candidate
    assert context["ti"].xcom["promotion"]["source_tag_removed"] is False
    assert ecr.calls["BatchDeleteImage"] == 0
