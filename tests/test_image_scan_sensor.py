"""EcrImageScanSensor: poke mode (in-process double) and deferrable mode (the double's server, real aiobotocore).

Each scan status, each threshold outcome (within, over, ignored, fixable-only), pagination past the
first page, start_scan and its limits, multi-arch images, and the trigger's events.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time

import pytest
from airflow.providers.common.compat.sdk import AirflowFailException, AirflowSensorTimeout
from helpers import AWS, make_context

from airflow_ecr_retag import EcrImageScanSensor, EcrTagSensor
from airflow_ecr_retag.core import ecr as ecr_calls
from airflow_ecr_retag.core.image_scan import BLOCKING_TABLE_ROWS, ScanGate, scan_targets
from airflow_ecr_retag.core.manifests import OCI_INDEX
from airflow_ecr_retag.core.tag_poller import loop_state
from airflow_ecr_retag.exceptions import (
    EcrPermanentError,
    ImageNotFoundError,
    InvalidInputError,
    ScanFailedError,
    ScanLimitExceededError,
    ScanThresholdExceededError,
)
from airflow_ecr_retag.testing import Fault, Vulnerability, build_image, build_referrer
from airflow_ecr_retag.triggers.image_scan_trigger import EcrImageScanTrigger
from airflow_ecr_retag.triggers.tag import EcrTagTrigger

REPO = "team/app"
NO_CRITICAL_OR_HIGH = {"CRITICAL": 0, "HIGH": 0}


class FakeClock:
    """The double's clock, moved by the test: scans finish without anyone sleeping."""

    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def gate(**kwargs):
    params = {
        "repository_name": REPO,
        "image_tag": "v1",
        "max_findings": NO_CRITICAL_OR_HIGH,
        "poke_interval": 0.01,
        "timeout": 30,
        **AWS,
        **kwargs,
    }
    return EcrImageScanSensor(task_id="scan_gate", **params)


def vulns(severity, count, start=0, **kwargs):
    return [Vulnerability(f"CVE-2024-{i:05d}", severity, **kwargs) for i in range(start, start + count)]


@pytest.fixture
def ecr(ecr_double):
    ecr_double.create_repository(REPO)
    return ecr_double


def scanned(ecr, findings=(), status=None, name="app", **kwargs):
    """An image tagged v1 with a scan in ``status`` (finished by default) and ``findings``."""
    digest = ecr.push(REPO, build_image("oci", name), ["v1"])
    ecr.add_findings(REPO, digest, findings)
    ecr.set_scan(REPO, digest, status, **kwargs)
    ecr.reset_calls()
    return digest


# ---------------------------------------------------------------- finished scans and their statuses
def test_a_clean_finished_scan_opens_the_gate_with_the_report(ecr):
    digest = scanned(ecr)
    report = gate().execute(make_context())
    assert report["digest"] == digest and report["image_tag"] == "v1" and report["passed"] is True
    assert report["severity_counts"] == dict.fromkeys(
        ["CRITICAL", "HIGH", "MEDIUM", "LOW", "INFORMATIONAL", "UNDEFINED"], 0
    )
    assert report["images"][0]["scan_status"] == "COMPLETE" and report["images"][0]["platform"] is None
    assert dict(ecr.calls) == {"BatchGetImage": 1, "DescribeImageScanFindings": 1}
    assert ecr.requests_for("DescribeImageScanFindings")[0]["maxResults"] == 1000
    json.dumps(report)  # an XCom


def test_poke_returns_the_report_when_done_and_nothing_before(ecr):
    digest = scanned(ecr, status="IN_PROGRESS")
    sensor = gate()
    first = sensor.poke(make_context())
    assert not first.is_done and first.xcom_value is None
    ecr.set_scan(REPO, digest, "COMPLETE")
    second = sensor.poke(make_context())
    assert second.is_done and second.xcom_value["digest"] == digest


@pytest.mark.parametrize(
    ("status", "available"),
    [("IN_PROGRESS", True), ("PENDING", True), ("COMPLETE", False), ("ACTIVE", False)],
    ids=["in-progress", "pending", "complete-without-findings-yet", "active-without-findings-yet"],
)
def test_statuses_that_are_not_finished_yet(ecr, status, available):
    digest = scanned(ecr, vulns("LOW", 1), status=status, findings_available=available)
    sensor = gate()
    assert not sensor.poke(make_context()).is_done
    assert not sensor.poke(make_context()).is_done
    assert dict(ecr.calls) == {"BatchGetImage": 1, "DescribeImageScanFindings": 2}  # one read a poke
    ecr.set_scan(REPO, digest, "ACTIVE" if status == "ACTIVE" else "COMPLETE")
    assert sensor.poke(make_context()).xcom_value["severity_counts"]["LOW"] == 1


@pytest.mark.parametrize(
    "status",
    [
        "FAILED",
        "UNSUPPORTED_IMAGE",
        "SCAN_ELIGIBILITY_EXPIRED",
        "FINDINGS_UNAVAILABLE",
        "LIMIT_EXCEEDED",
        "IMAGE_ARCHIVED",
    ],
)
def test_statuses_that_fail_at_once(ecr, status):
    scanned(ecr, status=status, description=f"{status} for a reason")
    with pytest.raises(ScanFailedError) as error:
        gate(timeout=600).execute(make_context())
    assert isinstance(error.value, AirflowFailException)
    assert error.value.status == status
    assert f"is {status}: {status} for a reason" in str(error.value)
    assert ecr.calls["DescribeImageScanFindings"] == 1  # no waiting for the timeout


def test_a_scan_in_progress_finishes_on_the_doubles_clock(ecr_double):
    clock = ecr_double.clock = FakeClock()
    ecr_double.scan_seconds = 90
    ecr_double.create_repository(REPO, scan_on_push=True)
    digest = ecr_double.push(REPO, build_image("oci"), ["v1"])
    sensor = gate()
    assert not sensor.poke(make_context()).is_done
    clock.advance(89)
    assert not sensor.poke(make_context()).is_done
    clock.advance(1)
    assert sensor.poke(make_context()).xcom_value["digest"] == digest
    assert ecr_double.calls["BatchGetImage"] == 1 and ecr_double.calls["DescribeImageScanFindings"] == 3


@pytest.mark.timing
def test_execute_waits_for_the_scan_to_finish(ecr_double):
    clock = ecr_double.clock = FakeClock()
    ecr_double.scan_seconds = 600
    ecr_double.create_repository(REPO, scan_on_push=True)
    digest = ecr_double.push(REPO, build_image("oci"), ["v1"])
    # The scan finishes after the sensor's second poke and before its third.
    ecr_double.before_call("DescribeImageScanFindings", lambda d: clock.advance(600), call=3)
    assert gate().execute(make_context())["digest"] == digest
    assert ecr_double.calls["DescribeImageScanFindings"] == 3


def test_enhanced_continuous_scanning_is_finished_at_active(ecr_double):
    ecr_double.set_registry_scanning("ENHANCED")
    ecr_double.create_repository(REPO)
    digest = ecr_double.push(REPO, build_image("oci"), ["v1"])
    ecr_double.add_findings(REPO, digest, vulns("MEDIUM", 2) + vulns("UNDEFINED", 1, start=9))
    report = gate().execute(make_context())
    assert report["images"][0]["scan_status"] == "ACTIVE"
    assert report["severity_counts"]["MEDIUM"] == 2 and report["severity_counts"]["UNDEFINED"] == 1  # UNTRIAGED


# ---------------------------------------------------------------- thresholds
def test_within_the_thresholds_the_gate_opens(ecr):
    scanned(ecr, vulns("HIGH", 2) + vulns("LOW", 50, start=100))
    report = gate(max_findings={"CRITICAL": 0, "HIGH": 2}).execute(make_context())
    assert report["severity_counts"]["HIGH"] == 2 and report["severity_counts"]["LOW"] == 50  # LOW: no limit
    assert report["max_findings"] == {"CRITICAL": 0, "HIGH": 2}


def test_over_a_threshold_fails_with_a_table_of_the_blocking_findings(ecr, capsys):
    digest = scanned(
        ecr,
        [
            Vulnerability("CVE-2024-1111", "CRITICAL", "openssl", "3.0.2", fixed_in="3.0.13", score=9.8),
            Vulnerability("CVE-2024-2222", "HIGH", "zlib", "1.2.11", score=7.5),
            Vulnerability("CVE-2024-3333", "MEDIUM", "bash", "5.1"),
        ],
    )
    with pytest.raises(ScanThresholdExceededError) as error:
        gate().execute(make_context())
    assert isinstance(error.value, AirflowFailException)  # no retries burnt
    message = str(error.value)
    assert message.startswith(f"Scan gate closed for {REPO}@{digest}: CRITICAL 1 > 0, HIGH 1 > 0 (2 blocking findings)")
    header, critical, high = message.splitlines()[1:]
    assert header.split() == ["name", "severity", "package", "fixed", "in"]
    assert critical.split() == ["CVE-2024-1111", "CRITICAL", "openssl", "3.0.2", "-"]  # basic scans name no fix
    assert high.split() == ["CVE-2024-2222", "HIGH", "zlib", "1.2.11", "-"]
    assert "CVE-2024-3333" not in message  # MEDIUM has no threshold
    assert error.value.report["passed"] is False and error.value.report["blocking_total"] == 2
    assert error.value.report["severity_counts"]["MEDIUM"] == 1
    assert "CVE-2024-1111  CRITICAL" in capsys.readouterr().out  # the table is in the log too


def test_enhanced_findings_show_the_fixed_in_version(ecr_double):
    ecr_double.set_registry_scanning("ENHANCED")
    ecr_double.create_repository(REPO)
    digest = ecr_double.push(REPO, build_image("oci"), ["v1"])
    ecr_double.add_findings(REPO, digest, [Vulnerability("CVE-2024-1111", "CRITICAL", "openssl", "3.0.2", "3.0.13")])
    with pytest.raises(ScanThresholdExceededError) as error:
        gate().execute(make_context())
    assert str(error.value).splitlines()[2].split() == ["CVE-2024-1111", "CRITICAL", "openssl", "3.0.2", "3.0.13"]


def test_ignored_findings_do_not_count(ecr):
    scanned(ecr, vulns("CRITICAL", 2) + vulns("HIGH", 1, start=5))
    report = gate(ignore_findings=["CVE-2024-00000", "CVE-2024-00001", "CVE-2024-00005"]).execute(make_context())
    assert report["severity_counts"]["CRITICAL"] == 0 and report["severity_counts"]["HIGH"] == 0
    assert report["ignored"] == ["CVE-2024-00000", "CVE-2024-00001", "CVE-2024-00005"]
    with pytest.raises(
        ScanThresholdExceededError, match=r"CRITICAL 1 > 0 \(1 blocking finding; ignoring CVE-2024-00000"
    ):
        gate(ignore_findings=["CVE-2024-00000", "CVE-2024-00005"]).execute(make_context())


def test_only_fixable_counts_only_findings_with_a_fix(ecr_double):
    ecr_double.set_registry_scanning("ENHANCED")
    ecr_double.create_repository(REPO)
    digest = ecr_double.push(REPO, build_image("oci"), ["v1"])
    no_fix = [
        Vulnerability("CVE-2024-0001", "CRITICAL", "glibc", "2.36"),
        Vulnerability("CVE-2024-0002", "HIGH", "perl", "5.36"),
    ]
    ecr_double.add_findings(REPO, digest, no_fix)
    report = gate(only_fixable=True).execute(make_context())
    assert report["severity_counts"]["CRITICAL"] == 0 and report["images"][0]["not_fixable"] == 2
    with pytest.raises(ScanThresholdExceededError):
        gate().execute(make_context())  # without only_fixable they count
    ecr_double.add_findings(REPO, digest, [Vulnerability("CVE-2024-0003", "HIGH", "curl", "7.88", fixed_in="7.88.1")])
    with pytest.raises(ScanThresholdExceededError) as error:
        gate(only_fixable=True).execute(make_context())
    [row] = str(error.value).splitlines()[2:]
    assert row.split() == ["CVE-2024-0003", "HIGH", "curl", "7.88", "7.88.1"]


def test_only_fixable_still_counts_basic_findings_which_name_no_fix(ecr, capsys):
    scanned(ecr, vulns("HIGH", 1, package="zlib", version="1.2"))
    with pytest.raises(ScanThresholdExceededError, match="HIGH 1 > 0"):
        gate(only_fixable=True).execute(make_context())
    assert "ECR reports no fix information for 1 findings" in capsys.readouterr().out


def test_the_blocking_table_is_capped(ecr):
    scanned(ecr, vulns("CRITICAL", BLOCKING_TABLE_ROWS + 25))
    with pytest.raises(ScanThresholdExceededError) as error:
        gate().execute(make_context())
    lines = str(error.value).splitlines()
    assert len(lines) == 1 + 1 + BLOCKING_TABLE_ROWS + 1
    assert lines[-1] == "... and 25 more blocking findings"
    assert error.value.report["blocking_total"] == BLOCKING_TABLE_ROWS + 25


def test_no_thresholds_only_waits_for_the_scan(ecr):
    scanned(ecr, vulns("CRITICAL", 3))
    assert gate(max_findings={}).execute(make_context())["severity_counts"]["CRITICAL"] == 3


# ---------------------------------------------------------------- every page
@pytest.mark.parametrize(
    ("kwargs", "blocked"),
    [({}, True), ({"ignore_findings": ["CVE-2024-01200"]}, False)],
    ids=["blocking-finding-on-page-2", "ignored-finding-on-page-2"],
)
def test_every_page_is_read(ecr, kwargs, blocked):
    scanned(ecr, vulns("LOW", 1200) + vulns("CRITICAL", 1, start=1200))
    if blocked:
        with pytest.raises(ScanThresholdExceededError, match="CRITICAL 1 > 0"):
            gate(**kwargs).execute(make_context())
    else:
        report = gate(**kwargs).execute(make_context())
        assert report["severity_counts"]["LOW"] == 1200 and report["ignored"] == ["CVE-2024-01200"]
    first, second = ecr.requests_for("DescribeImageScanFindings")
    assert "nextToken" not in first and second["nextToken"] and second["maxResults"] == 1000


def test_only_fixable_applies_past_the_first_page(ecr_double):
    ecr_double.set_registry_scanning("ENHANCED")
    ecr_double.create_repository(REPO)
    digest = ecr_double.push(REPO, build_image("oci"), ["v1"])
    ecr_double.add_findings(REPO, digest, vulns("LOW", 1100, fixed_in="2") + vulns("HIGH", 1, start=1100))
    ecr_double.reset_calls()
    report = gate(only_fixable=True).execute(make_context())
    assert report["severity_counts"]["LOW"] == 1100 and report["images"][0]["not_fixable"] == 1
    assert ecr_double.calls["DescribeImageScanFindings"] == 2


def test_a_scan_that_is_not_finished_costs_one_call_whatever_its_size(ecr):
    scanned(ecr, vulns("LOW", 2500), status="IN_PROGRESS")
    assert not gate().poke(make_context()).is_done
    assert ecr.calls["DescribeImageScanFindings"] == 1


# ---------------------------------------------------------------- start_scan
def test_without_a_scan_the_gate_waits_and_says_how_to_get_one(ecr, capsys):
    ecr.push(REPO, build_image("oci"), ["v1"])
    ecr.reset_calls()
    assert not gate().poke(make_context()).is_done
    assert "has no scan yet (ScanNotFoundException)" in (out := capsys.readouterr().out) and "start_scan=True" in out
    assert ecr.calls["StartImageScan"] == 0


def test_start_scan_starts_a_basic_scan_where_there_is_none(ecr):
    digest = ecr.push(REPO, build_image("oci"), ["v1"])
    ecr.add_findings(REPO, digest, vulns("MEDIUM", 1))
    ecr.reset_calls()
    sensor = gate(start_scan=True)
    assert not sensor.poke(make_context()).is_done  # started now: IN_PROGRESS
    assert sensor.poke(make_context()).xcom_value["severity_counts"]["MEDIUM"] == 1
    assert ecr.calls["StartImageScan"] == 1
    assert ecr.requests_for("StartImageScan") == [{"repositoryName": REPO, "imageId": {"imageDigest": digest}}]


def test_start_scan_leaves_an_existing_scan_alone(ecr):
    scanned(ecr)
    gate(start_scan=True).execute(make_context())
    assert ecr.calls["StartImageScan"] == 0


def test_start_scan_racing_a_scan_on_push_waits_for_that_scan(ecr):
    digest = ecr.push(REPO, build_image("oci"), ["v1"])
    ecr.reset_calls()
    # A scan on push begins between the sensor's read and its StartImageScan: ECR refuses the second.
    ecr.before_call("StartImageScan", lambda d: d.set_scan(REPO, digest, "IN_PROGRESS"))
    assert not gate(start_scan=True).poke(make_context()).is_done
    assert ecr.calls["StartImageScan"] == 1 and ecr.calls["DescribeImageScanFindings"] == 2


def test_a_scan_start_cannot_start_fails_at_once(ecr):
    ecr.basic_scan_quota = 1
    other = ecr.push(REPO, build_image("oci", "other"))
    ecr.client().start_image_scan(repositoryName=REPO, imageId={"imageDigest": other})  # the day's one scan
    ecr.push(REPO, build_image("oci"), ["v1"])
    ecr.reset_calls()
    with pytest.raises(ScanLimitExceededError, match="there is no scan to wait for") as error:
        gate(start_scan=True, timeout=600).execute(make_context())
    assert isinstance(error.value, AirflowFailException)
    assert ecr.calls["StartImageScan"] == 1  # legacy retry mode: LimitExceededException is not retried


def test_start_scan_on_an_image_ecr_cannot_scan(ecr):
    subject = build_image("oci", "app")
    ecr.push(REPO, subject)
    ecr.push(REPO, build_referrer(subject), ["v1"])
    with pytest.raises(ScanFailedError, match="ECR cannot scan") as error:
        gate(start_scan=True).execute(make_context())
    assert error.value.status == "UNSUPPORTED_IMAGE"


def test_start_scan_under_enhanced_scanning_fails_at_once(ecr_double):
    ecr_double.set_registry_scanning("ENHANCED", [])
    ecr_double.create_repository(REPO)
    ecr_double.push(REPO, build_image("oci"), ["v1"])
    with pytest.raises(EcrPermanentError) as error:
        gate(start_scan=True).execute(make_context())
    assert error.value.code == "ValidationException"


# ---------------------------------------------------------------- what is gated
def test_a_tag_is_resolved_once_so_the_gate_judges_one_image(ecr):
    digest = scanned(ecr, status="IN_PROGRESS")
    sensor = gate()
    assert not sensor.poke(make_context()).is_done
    clean = ecr.push(REPO, build_image("oci", "clean"))
    ecr.set_scan(REPO, clean, "COMPLETE")
    ecr.move_tag(REPO, "v1", clean)  # v1 moves to a clean, scanned image: not what this gate judges
    assert not sensor.poke(make_context()).is_done
    ecr.set_scan(REPO, digest, "COMPLETE")
    assert sensor.poke(make_context()).xcom_value["digest"] == digest
    assert ecr.calls["BatchGetImage"] == 1


def test_a_multi_arch_image_is_gated_on_every_platform_image(ecr_double):
    ecr_double.create_repository(REPO, scan_on_push=True)
    index = build_image("oci-index", "release")
    digest = ecr_double.push(REPO, index, ["v1"])
    amd64, arm64 = (child.digest for child in index.children)
    ecr_double.add_findings(REPO, amd64, vulns("HIGH", 1))
    ecr_double.add_findings(REPO, arm64, vulns("HIGH", 1) + vulns("MEDIUM", 3, start=10))
    ecr_double.reset_calls()
    report = gate(max_findings={"HIGH": 1}).execute(make_context())
    assert report["digest"] == digest
    assert [(i["platform"], i["digest"]) for i in report["images"]] == [("linux/amd64", amd64), ("linux/arm64", arm64)]
    # Each platform image is held to the thresholds; the summary is each severity's worst platform.
    assert report["severity_counts"]["HIGH"] == 1 and report["severity_counts"]["MEDIUM"] == 3
    assert dict(ecr_double.calls) == {"BatchGetImage": 1, "DescribeImageScanFindings": 2}
    ecr_double.add_findings(REPO, arm64, vulns("HIGH", 1, start=20))
    with pytest.raises(ScanThresholdExceededError) as error:
        gate(max_findings={"HIGH": 1}).execute(make_context())
    assert str(error.value).splitlines()[1].split()[0] == "platform"
    assert {line.split()[0] for line in str(error.value).splitlines()[2:]} == {"linux/arm64"}


def test_an_index_skips_attestation_manifests():
    manifest = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": OCI_INDEX,
            "manifests": [
                {"digest": "sha256:" + "a" * 64, "platform": {"os": "linux", "architecture": "arm", "variant": "v7"}},
                {
                    "digest": "sha256:" + "b" * 64,
                    "platform": {"os": "unknown", "architecture": "unknown"},
                    "annotations": {"vnd.docker.reference.type": "attestation-manifest"},
                },
            ],
        }
    )
    image = ecr_calls.FetchedImage("sha256:" + "c" * 64, manifest, OCI_INDEX, "123456789012")
    assert [(t.digest[-4:], t.platform) for t in scan_targets(image)] == [("aaaa", "linux/arm/v7")]


@pytest.mark.parametrize("kwargs", [{"image_tag": "nope"}, {"image_tag": None, "image_digest": "sha256:" + "0" * 64}])
def test_a_missing_image_fails_at_once(ecr, kwargs):
    with pytest.raises(ImageNotFoundError, match="there is no image to gate"):
        gate(**kwargs).execute(make_context())
    assert dict(ecr.calls) == {"BatchGetImage": 1}


def test_a_missing_repository_fails_at_once(ecr):
    with pytest.raises(EcrPermanentError) as error:
        gate(repository_name="nope/repo").execute(make_context())
    assert error.value.code == "RepositoryNotFoundException"


def test_access_denied_fails_at_once(ecr):
    scanned(ecr)
    ecr.inject("DescribeImageScanFindings", Fault.ACCESS_DENIED, times=None)
    with pytest.raises(AirflowFailException, match="AccessDeniedException"):
        gate(timeout=600).execute(make_context())
    assert ecr.calls["DescribeImageScanFindings"] == 1


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"max_findings": {"critical": 0}}, "max_findings"),
        ({"max_findings": {"HIGH": -1}}, "max_findings.HIGH"),
        ({"max_findings": {"HIGH": "0"}}, "max_findings.HIGH"),
        ({"image_digest": "sha256:" + "0" * 64}, "image_tag"),
        ({"image_tag": None}, "image_digest"),
        ({"image_tag": None, "image_digest": "sha256:0"}, "image_digest"),
        ({"ignore_findings": [3]}, "ignore_findings[0]"),
    ],
)
def test_bad_input_fails_before_any_call(ecr, overrides, field):
    with pytest.raises(InvalidInputError) as error:
        gate(**overrides).execute(make_context())
    assert error.value.field == field
    assert ecr.total_calls == 0


def test_thresholds_and_names_may_come_rendered_as_text():
    parsed = ScanGate.validated(
        repository_name=REPO, image_tag="v1", max_findings='{"CRITICAL": 0, "HIGH": 2}', ignore_findings="['CVE-1']"
    )
    assert parsed.max_findings == {"CRITICAL": 0, "HIGH": 2} and parsed.ignore_findings == ("CVE-1",)


def test_poke_mode_does_not_import_aiobotocore():
    code = "import sys; import airflow_ecr_retag.sensors.image_scan_sensor; print('aiobotocore' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120)
    assert out.stdout.strip().splitlines()[-1] == "False"


# ---------------------------------------------------------------- deferrable mode
@pytest.fixture
def served(ecr_double_server):
    ecr_double_server.create_repository(REPO)
    return ecr_double_server


def first_event(trigger, limit=30):
    async def run():
        async for event in trigger.run():
            return event.payload
        return None

    return asyncio.run(asyncio.wait_for(run(), limit))


def deferred_trigger(served, **kwargs):
    from airflow.providers.common.compat.sdk import TaskDeferred

    with pytest.raises(TaskDeferred) as deferred:
        gate(deferrable=True, timeout=600, **kwargs).execute(make_context())
    assert deferred.value.method_name == "execute_complete"
    return deferred.value.trigger


def with_fast_polls(trigger, **changes):
    """The trigger as a triggerer would rebuild it from its row, polling faster."""
    _, kwargs = trigger.serialize()
    return EcrImageScanTrigger(**{**kwargs, "poke_interval": 0.05, "timeout_at": time.time() + 30, **changes})


def test_deferrable_defers_with_a_serializable_trigger(served):
    digest = scanned(served, status="IN_PROGRESS")
    trigger = deferred_trigger(served, poke_interval=5, ignore_findings=["CVE-1"])
    assert isinstance(trigger, EcrImageScanTrigger)
    classpath, kwargs = trigger.serialize()
    assert classpath == "airflow_ecr_retag.triggers.image_scan_trigger.EcrImageScanTrigger"
    assert EcrImageScanTrigger(**kwargs).serialize() == (classpath, kwargs)
    json.dumps(kwargs)
    assert kwargs["image"] == {"digest": digest, "targets": [{"digest": digest, "platform": None}]}
    assert kwargs["max_findings"] == NO_CRITICAL_OR_HIGH and kwargs["ignore_findings"] == ["CVE-1"]
    assert kwargs["poke_interval"] == 5 and kwargs["timeout_at"] > time.time() + 500
    assert dict(served.calls) == {"BatchGetImage": 1, "DescribeImageScanFindings": 1}  # the check before deferring


def test_deferrable_returns_at_once_when_the_scan_is_finished(served):
    digest = scanned(served)
    assert gate(deferrable=True).execute(make_context())["digest"] == digest


@pytest.mark.timing
def test_trigger_succeeds_when_the_scan_finishes_while_it_polls(served):
    clock = served.clock = FakeClock()
    served.scan_seconds = 600
    served.create_repository("team/scanned", scan_on_push=True)
    digest = served.push("team/scanned", build_image("oci"), ["v1"])
    served.add_findings("team/scanned", digest, vulns("LOW", 2))
    trigger = with_fast_polls(deferred_trigger(served, repository_name="team/scanned"))
    # The scan on push finishes after the trigger's second poll and before its third.
    served.before_call("DescribeImageScanFindings", lambda d: clock.advance(600), call=3)
    event = first_event(trigger)
    assert event["status"] == "success" and event["report"]["digest"] == digest
    assert event["report"]["severity_counts"]["LOW"] == 2
    assert served.calls["DescribeImageScanFindings"] == 4  # the worker's check, then three polls
    assert gate(deferrable=True).execute_complete(make_context(), event) == event["report"]


@pytest.mark.timing
def test_trigger_reads_every_page_and_reports_blocking_findings(served, capsys):
    digest = scanned(served, [*vulns("LOW", 1200), Vulnerability("CVE-2024-9999", "CRITICAL", "openssl", "3.0.2")])
    served.set_scan(REPO, digest, "IN_PROGRESS")
    trigger = with_fast_polls(deferred_trigger(served))
    served.before_call("DescribeImageScanFindings", lambda d: d.set_scan(REPO, digest, "COMPLETE"), call=2)
    served.reset_calls()
    event = first_event(trigger)
    assert event["status"] == "error" and event["error"] == "ScanThresholdExceededError"
    assert served.calls["DescribeImageScanFindings"] == 3  # not finished (1), then both pages (2)
    with pytest.raises(ScanThresholdExceededError) as error:
        gate(deferrable=True).execute_complete(make_context(), event)
    assert isinstance(error.value, AirflowFailException)
    assert error.value.report["severity_counts"]["CRITICAL"] == 1
    assert str(error.value).splitlines()[2].split() == ["CVE-2024-9999", "CRITICAL", "openssl", "3.0.2", "-"]
    assert "CVE-2024-9999  CRITICAL" in capsys.readouterr().out


def test_trigger_error_event_for_a_failed_scan(served):
    digest = scanned(served, status="IN_PROGRESS")
    trigger = with_fast_polls(deferred_trigger(served))
    served.set_scan(REPO, digest, "SCAN_ELIGIBILITY_EXPIRED")
    event = first_event(trigger)
    assert event["status"] == "error" and event["attributes"] == {"status": "SCAN_ELIGIBILITY_EXPIRED"}
    with pytest.raises(ScanFailedError) as error:
        gate(deferrable=True).execute_complete(make_context(), event)
    assert error.value.status == "SCAN_ELIGIBILITY_EXPIRED"


def test_trigger_error_event_for_a_missing_repository(served):
    digest = scanned(served, status="IN_PROGRESS")
    trigger = with_fast_polls(deferred_trigger(served), repository_name="nope/repo")
    event = first_event(trigger)
    assert event["status"] == "error" and event["code"] == "RepositoryNotFoundException"
    with pytest.raises(EcrPermanentError, match="RepositoryNotFoundException"):
        gate(deferrable=True).execute_complete(make_context(), event)
    assert digest


@pytest.mark.timing
@pytest.mark.parametrize("fault", [Fault.THROTTLE, Fault.SERVER_ERROR, Fault.DROPPED_CONNECTION])
def test_trigger_survives_transient_errors(served, fault):
    digest = scanned(served, status="IN_PROGRESS")
    trigger = with_fast_polls(
        deferred_trigger(served), botocore_config={"retries": {"mode": "standard", "total_max_attempts": 1}}
    )
    served.set_scan(REPO, digest, "COMPLETE")
    served.reset_calls()
    served.inject("DescribeImageScanFindings", fault, times=3)
    event = first_event(trigger)
    assert event["status"] == "success" and event["report"]["digest"] == digest
    assert served.calls["DescribeImageScanFindings"] == 4


@pytest.mark.timing
def test_trigger_times_out(served):
    scanned(served, status="IN_PROGRESS")
    trigger = with_fast_polls(deferred_trigger(served), timeout_at=time.time() + 0.5)
    event = first_event(trigger)
    assert event["status"] == "timeout" and "IN_PROGRESS" in event["message"]
    with pytest.raises(AirflowSensorTimeout):
        gate(deferrable=True).execute_complete(make_context(), event)


@pytest.mark.timing
def test_trigger_starts_a_scan_where_there_is_none(served):
    served.push(REPO, build_image("oci"), ["v1"])
    trigger = with_fast_polls(deferred_trigger(served))  # start_scan off: deferred without one
    served.reset_calls()
    event = first_event(with_fast_polls(trigger, start_scan=True))
    assert event["status"] == "success"
    assert served.calls["StartImageScan"] == 1


@pytest.mark.timing
def test_scan_and_tag_triggers_share_one_client(served):
    digest = scanned(served, status="IN_PROGRESS")
    scan_trigger = with_fast_polls(deferred_trigger(served))
    tag_trigger = EcrTagTrigger(
        repository_name=REPO, tag="sha-1", poke_interval=0.05, timeout_at=time.time() + 30, **AWS
    )

    async def scenario():
        async def first(trigger):
            async for event in trigger.run():
                return event.payload

        tasks = [asyncio.ensure_future(first(t)) for t in (scan_trigger, tag_trigger)]
        deadline = time.monotonic() + 20
        while not (served.calls["DescribeImageScanFindings"] >= 3 and served.calls["BatchGetImage"] >= 3):
            assert time.monotonic() < deadline
            await asyncio.sleep(0.02)
        shared = len(loop_state().clients)
        served.set_scan(REPO, digest, "COMPLETE")
        served.push(REPO, build_image("oci", "tagged"), ["sha-1"])
        events = await asyncio.gather(*tasks)
        return shared, events, len(loop_state().clients)

    shared, (scan_event, tag_event), left = asyncio.run(asyncio.wait_for(scenario(), 30))
    assert shared == 1 and left == 0  # one client for both while they wait, closed by the last to leave
    assert scan_event["status"] == "success" and tag_event["status"] == "success"


def test_execute_complete_maps_each_event():
    sensor = gate(deferrable=True)
    report = {"repository_name": REPO, "digest": "sha256:" + "a" * 64}
    assert sensor.execute_complete(make_context(), {"status": "success", "report": report}) == report
    with pytest.raises(ImageNotFoundError, match="gone"):
        sensor.execute_complete(make_context(), {"status": "error", "error": "ImageNotFoundError", "message": "gone"})
    with pytest.raises(EcrPermanentError) as error:
        sensor.execute_complete(make_context(), {"status": "error", "error": "KeyError", "message": "a bug"})
    assert error.value.code == "KeyError"
    with pytest.raises(Exception, match="event is None"):
        sensor.execute_complete(make_context(), None)
    with pytest.raises(EcrPermanentError):
        sensor.execute_complete(make_context(), {"status": "success"})  # no report: not a valid event


def test_the_tag_sensor_and_the_gate_chain_on_the_digest(ecr):
    # What the release DAG does: the tag sensor's digest is what the gate judges.
    digest = scanned(ecr)
    found = EcrTagSensor(task_id="wait", repository_name=REPO, tag="v1", **AWS).execute(make_context())
    assert gate(image_tag=None, image_digest=found).execute(make_context())["digest"] == digest == found
