"""The double's image scanning behaves as ECR documents it and users report it (one test each).

Sources: the botocore model (DescribeImageScanFindings: shapes, ScanStatus, FindingSeverity,
maxResults 1-1000 default 100; its paginator; the ImageScanComplete waiter), the StartImageScan
documentation (a basic scan once per image per 24 hours, a scan on push included; 100,000 basic
scans per 24 hours) and ECR-NOTES "Scanning"; the issue threads named in testing/scan_rules.py.
"""

from __future__ import annotations

import pytest
from botocore.exceptions import ClientError, WaiterError

from airflow_ecr_retag.core.limits import BASIC_SCAN_INTERVAL_SECONDS, FINDING_SEVERITIES
from airflow_ecr_retag.testing import WRITE_OPERATIONS, Vulnerability, build_image, build_referrer, push_image

REPO = "team/app"


class FakeClock:
    """A clock for the double that moves only when told to."""

    def __init__(self, start: float = 1_800_000_000.0):
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def code(error: pytest.ExceptionInfo) -> str:
    return error.value.response["Error"]["Code"]


@pytest.fixture
def clock(ecr_double):
    ecr_double.clock = FakeClock()
    return ecr_double.clock


@pytest.fixture
def client(ecr_double):
    return ecr_double.client()


def findings_of(client, digest, repo=REPO, **kwargs):
    return client.describe_image_scan_findings(repositoryName=repo, imageId={"imageDigest": digest}, **kwargs)


# ---------------------------------------------------------------- which scans run
def test_an_image_without_a_scan_has_none_to_describe(ecr_double, client):
    ecr_double.create_repository(REPO)
    digest = ecr_double.push(REPO, build_image("oci"), ["v1"])
    with pytest.raises(ClientError) as error:
        client.describe_image_scan_findings(repositoryName=REPO, imageId={"imageTag": "v1"})
    assert code(error) == "ScanNotFoundException"
    assert error.value.response["Error"]["Message"] == (
        f"Image scan does not exist for the image with '{{imageDigest:'null', imageTag:'v1'}}' in the repository "
        f"with name '{REPO}' in the registry with id '123456789012'"
    )
    assert ecr_double.scan_status(REPO, digest) is None


def test_missing_image_and_repository(ecr_double, client):
    ecr_double.create_repository(REPO)
    with pytest.raises(ClientError) as error:
        client.describe_image_scan_findings(repositoryName=REPO, imageId={"imageTag": "nope"})
    assert code(error) == "ImageNotFoundException"
    with pytest.raises(ClientError) as error:
        client.start_image_scan(repositoryName="nope/repo", imageId={"imageTag": "v1"})
    assert code(error) == "RepositoryNotFoundException"


def test_scan_on_push_runs_in_progress_then_complete_on_the_doubles_clock(ecr_double, client, clock):
    ecr_double.create_repository(REPO, scan_on_push=True)
    ecr_double.scan_seconds = 30
    digest = ecr_double.push(REPO, build_image("oci"), ["v1"])
    ecr_double.add_findings(REPO, digest, [Vulnerability("CVE-2024-0001", "HIGH", "openssl", "3.0.2")])
    running = findings_of(client, digest)
    assert running["imageScanStatus"] == {"status": "IN_PROGRESS"}
    assert "imageScanFindings" not in running
    clock.advance(30)
    done = findings_of(client, digest)
    assert done["imageScanStatus"] == {"status": "COMPLETE", "description": "The scan was completed successfully."}
    assert done["imageScanFindings"]["imageScanCompletedAt"].timestamp() == clock.now
    assert done["imageScanFindings"]["findingSeverityCounts"] == {"HIGH": 1}
    assert [f["name"] for f in done["imageScanFindings"]["findings"]] == ["CVE-2024-0001"]


def test_a_clean_image_reports_an_empty_finished_scan(ecr_double, client):
    ecr_double.create_repository(REPO, scan_on_push=True)
    digest = ecr_double.push(REPO, build_image("oci"))
    found = findings_of(client, digest)["imageScanFindings"]
    assert found["findings"] == [] and "findingSeverityCounts" not in found
    assert "imageScanCompletedAt" in found


def test_without_scan_on_push_a_push_starts_no_scan(ecr_double, client):
    ecr_double.create_repository(REPO)
    digest = ecr_double.push(REPO, build_image("oci"))
    assert ecr_double.scan_status(REPO, digest) is None


def test_put_image_and_the_repository_setting_through_the_api(ecr_double, client):
    client.create_repository(repositoryName=REPO, imageScanningConfiguration={"scanOnPush": False})
    client.put_image_scanning_configuration(repositoryName=REPO, imageScanningConfiguration={"scanOnPush": True})
    image = build_image("oci", "pushed")
    digest = push_image(client, REPO, image, ["v1"])
    scanned = findings_of(client, digest)
    assert scanned["imageScanStatus"]["status"] == "COMPLETE"
    # A retag of the same image is not a new image: its scan stays the one of its first push.
    ecr_double.clock = lambda: scanned["imageScanFindings"]["imageScanCompletedAt"].timestamp() + 3600
    client.put_image(repositoryName=REPO, imageManifest=image.manifest, imageTag="v2")
    rescanned = findings_of(client, digest)["imageScanFindings"]["imageScanCompletedAt"]
    assert rescanned == scanned["imageScanFindings"]["imageScanCompletedAt"]
    assert {"StartImageScan", "PutImageScanningConfiguration", "PutRegistryScanningConfiguration"} <= WRITE_OPERATIONS


def test_registry_rules_scan_on_push_with_wildcard_filters(ecr_double, client):
    client.put_registry_scanning_configuration(
        scanType="BASIC",
        rules=[
            {"scanFrequency": "SCAN_ON_PUSH", "repositoryFilters": [{"filter": "team/*", "filterType": "WILDCARD"}]}
        ],
    )
    assert client.get_registry_scanning_configuration()["scanningConfiguration"]["scanType"] == "BASIC"
    ecr_double.create_repository(REPO)
    ecr_double.create_repository("other/app")
    matched = ecr_double.push(REPO, build_image("oci", "a"))
    unmatched = ecr_double.push("other/app", build_image("oci", "b"))
    assert ecr_double.scan_status(REPO, matched) == "COMPLETE"
    assert ecr_double.scan_status("other/app", unmatched) is None


def test_an_index_is_never_scanned_but_its_platform_images_are(ecr_double, client):
    ecr_double.create_repository(REPO, scan_on_push=True)
    index = build_image("oci-index", "multi")
    digest = ecr_double.push(REPO, index, ["v1"])
    assert ecr_double.scan_status(REPO, digest) is None
    assert [ecr_double.scan_status(REPO, c.digest) for c in index.children] == ["COMPLETE", "COMPLETE"]
    with pytest.raises(ClientError) as error:
        client.start_image_scan(repositoryName=REPO, imageId={"imageDigest": digest})
    assert code(error) == "UnsupportedImageTypeException"
    assert error.value.response["Error"]["Message"] == (
        "An artifact with media type 'application/vnd.oci.image.index.v1+json' cannot be scanned. "
        "For more information, see the Amazon ECR documentation."
    )


def test_an_artifact_cannot_be_scanned(ecr_double, client):
    ecr_double.create_repository(REPO, scan_on_push=True)
    subject = build_image("oci", "app")
    ecr_double.push(REPO, subject)
    signature = ecr_double.push(REPO, build_referrer(subject))
    assert ecr_double.scan_status(REPO, signature) is None
    with pytest.raises(ClientError) as error:
        client.start_image_scan(repositoryName=REPO, imageId={"imageDigest": signature})
    assert code(error) == "UnsupportedImageTypeException"


# ---------------------------------------------------------------- StartImageScan and its limits
def test_start_image_scan_once_per_24_hours_scan_on_push_included(ecr_double, client, clock):
    ecr_double.create_repository(REPO)
    manual = ecr_double.push(REPO, build_image("oci", "manual"))
    answer = client.start_image_scan(repositoryName=REPO, imageId={"imageDigest": manual})
    assert answer["imageScanStatus"] == {"status": "IN_PROGRESS"} and answer["imageId"] == {"imageDigest": manual}
    assert findings_of(client, manual)["imageScanStatus"]["status"] == "COMPLETE"
    with pytest.raises(ClientError) as error:
        client.start_image_scan(repositoryName=REPO, imageId={"imageDigest": manual})
    assert code(error) == "LimitExceededException"
    assert error.value.response["Error"]["Message"] == "The scan quota per image has been exceeded. Wait and try again."
    clock.advance(BASIC_SCAN_INTERVAL_SECONDS)
    client.start_image_scan(repositoryName=REPO, imageId={"imageDigest": manual})  # a day later: allowed

    client.put_image_scanning_configuration(repositoryName=REPO, imageScanningConfiguration={"scanOnPush": True})
    on_push = ecr_double.push(REPO, build_image("oci", "on-push"))
    with pytest.raises(ClientError) as error:
        client.start_image_scan(repositoryName=REPO, imageId={"imageDigest": on_push})
    assert code(error) == "LimitExceededException"


def test_the_registrys_basic_scans_a_day_are_limited(ecr_double, client, clock):
    ecr_double.basic_scan_quota = 1
    ecr_double.create_repository(REPO, scan_on_push=True)
    first = ecr_double.push(REPO, build_image("oci", "first"))
    second = ecr_double.push(REPO, build_image("oci", "second"))
    assert ecr_double.scan_status(REPO, first) == "COMPLETE"
    assert ecr_double.scan_status(REPO, second) == "LIMIT_EXCEEDED"
    ecr_double.create_repository("team/manual")
    third = ecr_double.push("team/manual", build_image("oci", "third"))
    with pytest.raises(ClientError) as error:
        client.start_image_scan(repositoryName="team/manual", imageId={"imageDigest": third})
    assert code(error) == "LimitExceededException"
    clock.advance(BASIC_SCAN_INTERVAL_SECONDS)
    client.start_image_scan(repositoryName="team/manual", imageId={"imageDigest": third})


# ---------------------------------------------------------------- enhanced scanning
def test_enhanced_continuous_scanning_stays_active_with_enhanced_findings(ecr_double, client):
    ecr_double.set_registry_scanning("ENHANCED")
    ecr_double.create_repository(REPO)
    digest = ecr_double.push(REPO, build_image("oci"), ["v1"])
    ecr_double.add_findings(
        REPO,
        digest,
        [
            Vulnerability("CVE-2024-0001", "CRITICAL", "openssl", "3.0.2", fixed_in="3.0.13", score=9.8),
            Vulnerability("CVE-2024-0002", "UNDEFINED", "zlib", "1.2.13", exploit_available=True),
        ],
    )
    answer = findings_of(client, digest)
    assert answer["imageScanStatus"] == {"status": "ACTIVE", "description": "Continuous scan is selected for image."}
    found = answer["imageScanFindings"]
    assert "findings" not in found
    assert found["findingSeverityCounts"] == {"CRITICAL": 1, "UNTRIAGED": 1}
    fixed, untriaged = found["enhancedFindings"]
    assert fixed["fixAvailable"] == "YES" and fixed["score"] == 9.8 and fixed["severity"] == "CRITICAL"
    details = fixed["packageVulnerabilityDetails"]
    assert details["vulnerabilityId"] == "CVE-2024-0001"
    assert details["vulnerablePackages"] == [
        {"name": "openssl", "version": "3.0.2", "packageManager": "OS", "fixedInVersion": "3.0.13"}
    ]
    assert fixed["resources"][0]["details"]["awsEcrContainerImage"]["imageHash"] == digest
    assert untriaged["severity"] == "UNTRIAGED" and untriaged["fixAvailable"] == "NO"
    assert untriaged["exploitAvailable"] == "YES"
    assert untriaged["packageVulnerabilityDetails"]["vulnerablePackages"][0]["fixedInVersion"] == "NotAvailable"


def test_botocores_waiter_never_finishes_an_enhanced_scan(ecr_double, client):
    # aws/aws-sdk#288: ImageScanComplete waits for COMPLETE, which continuous scanning never reaches.
    ecr_double.set_registry_scanning("ENHANCED")
    ecr_double.create_repository(REPO)
    digest = ecr_double.push(REPO, build_image("oci"))
    waiter = client.get_waiter("image_scan_complete")
    with pytest.raises(WaiterError, match="Max attempts exceeded"):
        waiter.wait(repositoryName=REPO, imageId={"imageDigest": digest}, WaiterConfig={"Delay": 0, "MaxAttempts": 3})
    assert ecr_double.calls["DescribeImageScanFindings"] == 3


def test_enhanced_scan_on_push_completes_and_unmatched_repositories_are_not_scanned(ecr_double, client):
    def rule(frequency, pattern):
        return {"scanFrequency": frequency, "repositoryFilters": [{"filter": pattern, "filterType": "WILDCARD"}]}

    ecr_double.set_registry_scanning("ENHANCED", [rule("SCAN_ON_PUSH", "team/*"), rule("CONTINUOUS_SCAN", "*/live")])
    for name in (REPO, "team/live"):
        ecr_double.create_repository(name)
    ecr_double.create_repository("other/app", scan_on_push=True)  # ignored under enhanced scanning
    assert ecr_double.scan_status(REPO, ecr_double.push(REPO, build_image("oci", "a"))) == "COMPLETE"
    # Both filters match: continuous scanning wins (the user guide's "Enhanced scanning").
    assert ecr_double.scan_status("team/live", ecr_double.push("team/live", build_image("oci", "c"))) == "ACTIVE"
    assert ecr_double.scan_status("other/app", ecr_double.push("other/app", build_image("oci", "b"))) is None


def test_start_image_scan_is_basic_scanning_only(ecr_double, client):
    ecr_double.set_registry_scanning("ENHANCED", [])
    ecr_double.create_repository(REPO)
    digest = ecr_double.push(REPO, build_image("oci"))
    with pytest.raises(ClientError) as error:
        client.start_image_scan(repositoryName=REPO, imageId={"imageDigest": digest})
    assert code(error) == "ValidationException"


# ---------------------------------------------------------------- findings and pages
def test_findings_paginate_with_max_results_and_next_token(ecr_double, client):
    ecr_double.create_repository(REPO, scan_on_push=True)
    digest = ecr_double.push(REPO, build_image("oci"))
    ecr_double.add_findings(REPO, digest, [Vulnerability(f"CVE-2024-{i:04d}", "LOW") for i in range(250)])
    first = findings_of(client, digest)
    assert len(first["imageScanFindings"]["findings"]) == 100  # the default page
    assert first["imageScanFindings"]["findingSeverityCounts"] == {"LOW": 250}  # all of them, on every page
    second = findings_of(client, digest, maxResults=1000, nextToken=first["nextToken"])
    assert len(second["imageScanFindings"]["findings"]) == 150 and "nextToken" not in second
    pages = list(
        client.get_paginator("describe_image_scan_findings").paginate(
            repositoryName=REPO, imageId={"imageDigest": digest}, PaginationConfig={"PageSize": 100}
        )
    )
    names = [f["name"] for page in pages for f in page["imageScanFindings"]["findings"]]
    assert len(pages) == 3 and names == [f"CVE-2024-{i:04d}" for i in range(250)]
    with pytest.raises(ClientError) as error:
        findings_of(client, digest, maxResults=1001)
    assert code(error) == "InvalidParameterException"


def test_basic_findings_name_the_package_in_attributes(ecr_double, client):
    ecr_double.create_repository(REPO, scan_on_push=True)
    digest = ecr_double.push(REPO, build_image("oci"))
    ecr_double.add_findings(REPO, digest, [{"name": "CVE-2024-0001", "severity": "MEDIUM", "package": "bash"}])
    [finding] = findings_of(client, digest)["imageScanFindings"]["findings"]
    assert finding["severity"] == "MEDIUM"
    assert {a["key"]: a["value"] for a in finding["attributes"]} == {"package_name": "bash", "package_version": ""}
    with pytest.raises(ValueError, match="severity must be one of"):
        Vulnerability("CVE-1", "SEVERE")
    assert set(FINDING_SEVERITIES) == {"CRITICAL", "HIGH", "MEDIUM", "LOW", "INFORMATIONAL", "UNDEFINED"}


@pytest.mark.parametrize(
    ("status", "description"),
    [
        ("FAILED", "UnsupportedImageError: The operating system and/or package manager are not supported."),
        ("UNSUPPORTED_IMAGE", None),
        ("SCAN_ELIGIBILITY_EXPIRED", None),
        ("FINDINGS_UNAVAILABLE", None),
        ("PENDING", "Pending start of the image scan."),
        ("IN_PROGRESS", None),
    ],
)
def test_set_scan_seeds_every_status(ecr_double, client, status, description):
    ecr_double.create_repository(REPO)
    digest = ecr_double.push(REPO, build_image("oci"))
    ecr_double.add_findings(REPO, digest, [Vulnerability("CVE-1", "HIGH")])
    ecr_double.set_scan(REPO, digest, status)
    answer = findings_of(client, digest)
    assert answer["imageScanStatus"] == {"status": status, **({"description": description} if description else {})}
    assert "imageScanFindings" not in answer  # no findings to judge in any of these


def test_a_finished_scan_can_lag_its_findings(ecr_double, client):
    # aws/aws-sdk#289: COMPLETE with no findings, counts or completion time, findings arriving later.
    ecr_double.create_repository(REPO)
    digest = ecr_double.push(REPO, build_image("oci"))
    ecr_double.add_findings(REPO, digest, [Vulnerability("CVE-1", "HIGH")])
    ecr_double.set_scan(REPO, digest, "COMPLETE", findings_available=False)
    assert findings_of(client, digest)["imageScanFindings"] == {"findings": []}
    ecr_double.set_scan(REPO, digest, "COMPLETE")
    assert findings_of(client, digest)["imageScanFindings"]["findingSeverityCounts"] == {"HIGH": 1}


def test_scanning_over_http(ecr_double_server):
    ecr_double_server.create_repository(REPO, scan_on_push=True)
    digest = ecr_double_server.push(REPO, build_image("oci"))
    ecr_double_server.add_findings(REPO, digest, [Vulnerability("CVE-1", "CRITICAL", "openssl", "3.0.2")])
    client = ecr_double_server.client()
    answer = client.describe_image_scan_findings(repositoryName=REPO, imageId={"imageDigest": digest})
    assert answer["imageScanFindings"]["findings"][0]["name"] == "CVE-1"
    assert answer["imageScanFindings"]["imageScanCompletedAt"].year >= 2024
