"""Several accounts and Regions in one double: ``registryId`` selects the account, the client's
Region the Region, each registry with its own repositories, blobs and ``/v2/`` address."""

from __future__ import annotations

import subprocess
import sys

import pytest
from botocore.exceptions import ClientError

from airflow_ecr_retag.testing import EcrDouble, RemoteEcrDouble, build_image, push_image
from tests.oci_client import OciClient

REPO = "team/app"
OTHER = "210987654321"


def test_registry_id_selects_the_account(ecr_double):
    ecr = ecr_double
    mine, theirs = build_image("oci", "mine"), build_image("oci", "theirs")
    ecr.create_repository(REPO)
    ecr.create_repository(REPO, registry_id=OTHER)  # the same name in another account
    client = ecr.client()
    push_image(client, REPO, mine, ["v1"])
    push_image(client, REPO, theirs, ["v1"], registry_id=OTHER)
    assert ecr.tags(REPO) == {"v1": mine.digest}
    assert ecr.tags(REPO, registry_id=OTHER) == {"v1": theirs.digest}
    assert set(ecr.blobs_of(REPO, registry_id=OTHER)) == set(theirs.blobs)
    [repository] = client.describe_repositories(registryId=OTHER)["repositories"]
    assert repository["registryId"] == OTHER and repository["repositoryUri"].startswith(f"{OTHER}.dkr.ecr.us-east-1.")
    got = client.batch_get_image(registryId=OTHER, repositoryName=REPO, imageIds=[{"imageTag": "v1"}])
    assert got["images"][0]["imageId"]["imageDigest"] == theirs.digest


def test_the_client_region_selects_the_region(ecr_double):
    ecr = ecr_double
    ecr.create_repository(REPO, region_name="eu-west-1")
    image = build_image("oci", "eu")
    push_image(ecr.client(region_name="eu-west-1"), REPO, image, ["v1"])
    assert ecr.tags(REPO, region_name="eu-west-1") == {"v1": image.digest}
    with pytest.raises(ClientError) as error:
        ecr.client().describe_images(repositoryName=REPO)  # us-east-1 has no such repository
    assert error.value.response["Error"]["Code"] == "RepositoryNotFoundException"


def test_a_malformed_registry_id_is_invalid_parameter(ecr_double):
    with pytest.raises(ClientError) as error:
        ecr_double.client().describe_repositories(registryId="not-an-account")
    assert error.value.response["Error"]["Code"] == "InvalidParameterException"


def test_each_registry_has_its_own_v2_address_and_store(ecr_double):
    ecr = ecr_double
    ecr.create_repository(REPO)
    ecr.create_repository(REPO, registry_id=OTHER, region_name="eu-west-1")
    data = ecr.client(region_name="eu-west-1").get_authorization_token(registryIds=[OTHER])["authorizationData"]
    [theirs] = data
    assert theirs["proxyEndpoint"] == ecr.registry_endpoint(registry_id=OTHER, region_name="eu-west-1")
    assert theirs["proxyEndpoint"] != ecr.registry_endpoint()
    image = build_image("oci", "eu")
    assert OciClient.for_token(theirs).push_image(REPO, image, "v1").status == 201
    assert ecr.tags(REPO, registry_id=OTHER, region_name="eu-west-1") == {"v1": image.digest}
    assert ecr.tags(REPO) == {}
    # A password is a Region's: the us-east-1 registry refuses the eu-west-1 one.
    eu_user, eu_password = ecr.registry_credentials(region_name="eu-west-1")
    assert OciClient(ecr.registry_endpoint(), eu_user, eu_password).request("GET", "/v2/").status == 401


def test_blob_mounts_stay_within_one_account_and_region(ecr_double):
    ecr = ecr_double
    ecr.create_repository("team/base", registry_id=OTHER)
    base = build_image("oci", "base")
    ecr.push("team/base", base, ["v1"], registry_id=OTHER)
    ecr.create_repository(REPO)
    ecr.set_account_setting("BLOB_MOUNTING", "ENABLED")
    ecr.set_account_setting("BLOB_MOUNTING", "ENABLED", registry_id=OTHER)
    [data] = ecr.client().get_authorization_token()["authorizationData"]
    layer = next(iter(base.blobs))
    answer = OciClient.for_token(data).request("POST", f"/v2/{REPO}/blobs/uploads/?mount={layer}&from=team/base")
    assert answer.status == 202 and layer not in ecr.blobs_of(REPO)  # team/base is another account's


def test_one_server_holds_every_registry_and_another_process_reaches_them():
    with EcrDouble(server=True) as ecr:
        remote = RemoteEcrDouble(ecr.endpoint_url)
        remote.create_repository(REPO, registry_id=OTHER, region_name="ap-northeast-1")
        [digest] = remote.seed(
            REPO, [{"kind": "oci", "name": "remote", "tags": ["v1"]}], registry_id=OTHER, region_name="ap-northeast-1"
        )
        assert remote.tags(REPO, registry_id=OTHER, region_name="ap-northeast-1") == {"v1": digest}
        endpoint, user, password = remote.registry(registry_id=OTHER, region_name="ap-northeast-1")
        script = (
            "import sys; sys.path.insert(0, '.'); from tests.oci_client import OciClient;"
            f"c = OciClient({endpoint!r}, {user!r}, {password!r});"
            f"print(c.request('GET', '/v2/{REPO}/manifests/v1').headers['Docker-Content-Digest'])"
        )
        out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120, check=True)
        assert out.stdout.strip() == digest
