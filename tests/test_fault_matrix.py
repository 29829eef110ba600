"""Fault matrix: every ECR call each task makes x every kind of fault, generated from clean runs.

The calls are not written out here: a clean run of each scenario records them, and the matrix
is every (scenario, n-th call of an operation, fault). Transient faults (throttle, server
error, dropped connection) once must end in success through botocore's retries; a permanent
failure (access denied on every call from that one on) must fail the task. After each run:
no image was deleted, every tag has its old digest or its new one, and a clean re-run reaches
the clean run's end state.
"""

from __future__ import annotations

from collections import Counter

import pytest
from airflow.providers.common.compat.sdk import AirflowFailException
from scenarios import SCENARIOS

from airflow_ecr_retag.testing import EcrDouble, Fault

TRANSIENT = [Fault.THROTTLE, Fault.SERVER_ERROR, Fault.DROPPED_CONNECTION]


def _located(entry):
    """A scenario's repository: a name in the caller's registry, or (name, registry_id, region_name)."""
    if isinstance(entry, str):
        return entry, {}
    name, registry_id, region_name = entry
    return name, {"registry_id": registry_id, "region_name": region_name}


def _state(ecr, entry, read):
    """What ``read`` gives for a repository; empty while it does not exist (a task may create it)."""
    from moto.ecr.exceptions import RepositoryNotFoundException

    name, where = _located(entry)
    try:
        return read(name, **where)
    except RepositoryNotFoundException:
        return {}


def tags(ecr, scenario):
    """Every tag of the scenario's repositories: (repository, tag) -> digest."""
    return {
        (entry, tag): digest for entry in scenario.repositories for tag, digest in _state(ecr, entry, ecr.tags).items()
    }


def images(ecr, scenario):
    return {(entry, digest) for entry in scenario.repositories for digest in _state(ecr, entry, ecr.images)}


def clean_run(scenario):
    with EcrDouble() as ecr:
        scenario.seed(ecr)
        before_tags, before_images = tags(ecr, scenario), images(ecr, scenario)
        ecr.reset_calls()
        scenario.run()
        calls = [c.operation for c in ecr.requests]
        return {
            "calls": calls,
            "before_tags": before_tags,
            "before_images": before_images,
            "end_tags": tags(ecr, scenario),
            "end_images": images(ecr, scenario),
        }


def _call_points(calls):
    """Each operation's first and last call. The calls between are the same loop over another blob,
    platform, repository or batch (the copy makes 6 uploads of 5 calls each): the same code meets
    the fault there, so they would add minutes to the suite, not paths."""
    totals = Counter(calls)
    seen = Counter()
    points = []
    for operation in calls:
        seen[operation] += 1
        if seen[operation] in (1, totals[operation]):
            points.append((operation, seen[operation]))
    return points


def _matrix():
    import os

    os.environ.setdefault("AWS_ACCESS_KEY_ID", "testing")
    os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "testing")
    cases, baselines = [], {}
    for scenario in SCENARIOS:
        baseline = clean_run(scenario)
        baselines[scenario.name] = baseline
        for operation, nth in _call_points(baseline["calls"]):
            for fault in [*TRANSIENT, Fault.ACCESS_DENIED]:
                cases.append(
                    pytest.param(scenario, operation, nth, fault, id=f"{scenario.name}-{operation}#{nth}-{fault.value}")
                )
    return cases, baselines


CASES, BASELINES = _matrix()


def test_matrix_covers_every_operation_the_package_calls():
    operations = {case.values[1] for case in CASES}
    assert operations == {
        "BatchGetImage",
        "PutImage",
        "DescribeImages",
        "BatchDeleteImage",
        "DescribeRepositories",
        "DescribeImageScanFindings",
        "StartImageScan",
        # the copy: its reads, the repository it creates, the presigned download and the layer upload
        "ListImageReferrers",
        "CreateRepository",
        "BatchCheckLayerAvailability",
        "GetDownloadUrlForLayer",
        "LayerDownload",
        "InitiateLayerUpload",
        "UploadLayerPart",
        "CompleteLayerUpload",
    }
    # Every operation of every clean run meets every fault at its first and at its last call.
    expected = {
        (name, operation, nth, fault)
        for name, baseline in BASELINES.items()
        for operation, total in Counter(baseline["calls"]).items()
        for nth in {1, total}
        for fault in [*TRANSIENT, Fault.ACCESS_DENIED]
    }
    cases = [(case.values[0].name, *case.values[1:]) for case in CASES]
    calls = {name: len(b["calls"]) for name, b in BASELINES.items()}
    print(f"fault matrix: {len(CASES)} cases from {calls} calls (each operation's first and last) x 4 faults")
    assert len(cases) == len(set(cases)) and set(cases) == expected


@pytest.mark.parametrize(("scenario", "operation", "nth", "fault"), CASES)
def test_fault(scenario, operation, nth, fault, monkeypatch):
    # Botocore's backoff sleeps are skipped: they only slow the suite, the retry count is the point.
    monkeypatch.setattr("botocore.retries.standard.ExponentialBackoff.delay_amount", lambda self, context: 0)
    baseline = BASELINES[scenario.name]
    with EcrDouble() as ecr:
        scenario.seed(ecr)
        ecr.inject(operation, fault, call=nth, times=1 if fault in TRANSIENT else None)
        if fault in TRANSIENT:
            scenario.run()
            assert tags(ecr, scenario) == baseline["end_tags"]
        else:
            with pytest.raises(AirflowFailException, match="AccessDenied"):
                scenario.run()
        assert images(ecr, scenario) >= baseline["before_images"], "an image was deleted"
        now = tags(ecr, scenario)
        for tag in set(now) | set(baseline["before_tags"]) | set(baseline["end_tags"]):
            assert now.get(tag) in {baseline["before_tags"].get(tag), baseline["end_tags"].get(tag)}, tag
        ecr.clear_faults()
        scenario.run()
        assert tags(ecr, scenario) == baseline["end_tags"]
        assert images(ecr, scenario) == baseline["end_images"]
