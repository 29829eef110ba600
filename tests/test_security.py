"""Security: the README's IAM policy matches the code, secrets stay out of logs, no shell-outs or stray writes."""

from __future__ import annotations

import json
import logging
import os
import sys
import tempfile
from pathlib import Path

import pytest
from conftest import readme_policy_actions, readme_policy_statements
from scenarios import REPO, SCENARIOS, seed_retag

import airflow_ecr_retag
from airflow_ecr_retag.testing import EcrDouble, Fault, build_image

PACKAGE = Path(airflow_ecr_retag.__file__).parent


def run_every_scenario():
    operations: set[str] = set()
    for scenario in SCENARIOS:
        with EcrDouble() as ecr:
            scenario.seed(ecr)
            ecr.reset_calls()
            scenario.run()
            operations |= {c.operation for c in ecr.requests if "Airflow/" in c.user_agent}
    return operations


def test_iam_policy_lists_exactly_the_operations_the_code_calls():
    called = run_every_scenario()
    assert (
        called
        == readme_policy_actions()
        == {
            "BatchGetImage",
            "PutImage",
            "DescribeImages",
            "BatchDeleteImage",
            "DescribeRepositories",
            "DescribeImageScanFindings",
            "StartImageScan",
            # the copy (EcrCopyImageOperator)
            "ListImageReferrers",
            "GetDownloadUrlForLayer",
            "BatchCheckLayerAvailability",
            "InitiateLayerUpload",
            "UploadLayerPart",
            "CompleteLayerUpload",
            "CreateRepository",
        }
    )


def test_a_copys_source_and_target_credentials_call_exactly_their_statements_actions(monkeypatch):
    """Two connections, two accounts: each side's calls, counted on its own client, are its statement's."""
    from helpers import make_context

    from airflow_ecr_retag import EcrCopyImageOperator
    from airflow_ecr_retag.core.manifests import cosign_tags
    from airflow_ecr_retag.testing import build_referrer

    with EcrDouble() as ecr:
        prod = "210987654321"
        key, secret = ecr.caller_credentials(registry_id=prod)
        monkeypatch.setenv("AIRFLOW_CONN_AWS_BUILD", json.dumps({"conn_type": "aws"}))
        monkeypatch.setenv("AIRFLOW_CONN_AWS_PROD", json.dumps({"conn_type": "aws", "login": key, "password": secret}))
        ecr.create_repository(REPO)
        image = build_image("oci-index", "app")
        digest = ecr.push(REPO, image, ["sha-1"])
        ecr.push(REPO, build_referrer(image))
        ecr.push(REPO, build_image("oci", "signature"), [cosign_tags(digest)[0]])
        ecr.create_repository("team/other", registry_id=prod)
        ecr.push("team/other", build_image("oci", "old"), ["prod"], registry_id=prod)  # a tag moves: mutability read
        sides: dict[str, set[str]] = {"source": set(), "target": set()}
        task = EcrCopyImageOperator(
            task_id="copy",
            source_repository_name=REPO,
            source_tag="sha-1",
            source_aws_conn_id="aws_build",
            repository_name="team/other",
            target_tags=["prod"],
            aws_conn_id="aws_prod",
            region_name="us-east-1",
        )
        for side, hook in (("source", task.source_hook), ("target", task.hook)):
            hook.conn.meta.events.register(
                "before-call.ecr", lambda model, _side=side, **_: sides[_side].add(model.name)
            )
        task.execute(make_context())
        assert ecr.tags("team/other", registry_id=prod)["prod"] == digest
        task.repository_name, task.create_repository = "team/new", True
        task.execute(make_context())
    statements = readme_policy_statements()
    assert sides["source"] == statements["AirflowEcrCopySource"]
    assert sides["target"] == statements["AirflowEcrCopyTarget"]


SECRET = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYSECRETKEY"


def test_the_aws_secret_key_never_appears_in_task_logs(monkeypatch, capsys, caplog):
    monkeypatch.setenv(
        "AIRFLOW_CONN_AWS_SECRET_TEST",
        json.dumps(
            {
                "conn_type": "aws",
                "login": "AKIAEXAMPLEKEYID1234",
                "password": SECRET,
                "extra": {"region_name": "us-east-1"},
            }
        ),
    )
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    caplog.set_level(logging.DEBUG)
    for logger in ("botocore", "boto3", "airflow", "urllib3", "airflow.task"):
        logging.getLogger(logger).setLevel(logging.DEBUG)
    from helpers import make_context

    from airflow_ecr_retag import EcrRetagOperator, EcrTagHygieneOperator, EcrTagSensor

    conn = {"aws_conn_id": "aws_secret_test"}
    with EcrDouble() as ecr:
        seed_retag(ecr)
        ecr.push(REPO, build_image("oci", "x"), ["sha-1"])
        EcrRetagOperator(
            task_id="p", repository_name=REPO, source_tag="rc", target_tags=["v2"], remove_source_tag=True, **conn
        ).execute(make_context())
        EcrTagSensor(task_id="s", repository_name=REPO, tag="sha-1", **conn).execute(make_context())
        EcrTagHygieneOperator(task_id="h", repository_name=REPO, rules=[{"tag_pattern": "sha-*"}], **conn).execute(
            make_context()
        )
        ecr.inject("*", Fault.ACCESS_DENIED, times=None)  # error paths log too
        with pytest.raises(Exception, match="AccessDenied"):
            EcrRetagOperator(task_id="f", repository_name=REPO, source_tag="v2", target_tags=["v3"], **conn).execute(
                make_context()
            )
        assert ecr.total_calls > 5
    captured = capsys.readouterr()
    everything = captured.out + captured.err + caplog.text
    assert "botocore" in everything  # debug logging really was on
    assert SECRET not in everything
    assert SECRET[:20] not in everything


def test_package_code_never_shells_out():
    offenders = []
    for path in PACKAGE.rglob("*.py"):
        if "testing" in path.relative_to(PACKAGE).parts:
            continue  # the double's CLI is for users' test setups, not task code
        text = path.read_text()
        for needle in ("subprocess", "os.system", "os.popen", "Popen", "os.exec", "pty.spawn"):
            if needle in text:
                offenders.append(f"{path.name}: {needle}")
    assert offenders == []


def test_tasks_spawn_nothing_and_write_only_in_temp_dirs():
    events: list[tuple[str, tuple]] = []
    active = {"on": False}

    def audit(event, args):
        if not active["on"]:
            return
        if event in ("subprocess.Popen", "os.system", "os.exec", "os.posix_spawn", "os.spawn", "os.fork"):
            events.append((event, args))
        elif event == "open" and len(args) >= 2:
            path, mode = args[0], args[1]
            writing = (
                (isinstance(mode, str) and any(c in mode for c in "wax+"))
                or (isinstance(mode, int) and mode & (os.O_WRONLY | os.O_RDWR | os.O_CREAT))
                or (len(args) > 2 and isinstance(args[2], int) and args[2] & (os.O_WRONLY | os.O_RDWR | os.O_CREAT))
            )
            if writing and isinstance(path, (str, bytes, os.PathLike)):
                resolved = os.path.realpath(os.fsdecode(path))
                if not resolved.startswith((os.path.realpath(tempfile.gettempdir()), "/dev/")):
                    events.append((event, (resolved, mode)))

    sys.addaudithook(audit)
    active["on"] = True
    try:
        audit("open", ("/etc/not-really-opened", "w", 0))  # the hook's own check: this is flagged
        assert events == [("open", ("/etc/not-really-opened", "w"))]
        events.clear()
        run_every_scenario()
    finally:
        active["on"] = False
    assert events == []
