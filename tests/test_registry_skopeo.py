"""A client nobody here wrote: skopeo pushes into the double over ``/v2/``, the operator promotes,
skopeo pulls back by each new tag, and copies a multi-arch index between repositories; and skopeo
pulls what EcrCopyImageOperator copied into another account's registry.

skopeo is Debian's package, installed by ``make test`` (the Makefile's ``skopeo`` target) where
it is missing. Where it cannot be installed these tests skip, and ``-ra`` prints why. skopeo is
pointed only at the double's registry listeners on 127.0.0.1, over plain HTTP
(``--*-tls-verify=false``), with a throwaway HOME, policy (accept anything: the images are the
test's own), registries.conf and auth file, so nothing of the machine's configuration is read
or written.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
from pathlib import Path

import pytest
from helpers import AWS, make_context

from airflow_ecr_retag import EcrCopyImageOperator, EcrRetagOperator
from airflow_ecr_retag.testing import build_image, write_oci_layout
from airflow_ecr_retag.testing.blob_store import read_all

REPO = "team/app"
SKOPEO = shutil.which("skopeo")

pytestmark = pytest.mark.skipif(
    SKOPEO is None,
    reason="skopeo is not installed (make test installs Debian's skopeo with apt-get; it could not here)",
)


class Skopeo:
    """skopeo with its configuration confined to a temporary directory."""

    def __init__(self, home: Path, registry: str, creds: str):
        self.home, self.registry, self.creds = home, registry.removeprefix("http://"), creds
        (home / "registries.d").mkdir(parents=True)
        (home / "registries.conf").write_text("")
        (home / "policy.json").write_text(json.dumps({"default": [{"type": "insecureAcceptAnything"}]}))
        self.env = {
            "HOME": str(home),
            "PATH": "/usr/bin:/bin",
            "TMPDIR": str(home),
            "CONTAINERS_REGISTRIES_CONF": str(home / "registries.conf"),
            "REGISTRY_AUTH_FILE": str(home / "auth.json"),
        }

    def ref(self, name_and_tag: str) -> str:
        return f"docker://{self.registry}/{name_and_tag}"

    def run(self, *args: str) -> str:
        command = [
            SKOPEO,
            "--policy",
            str(self.home / "policy.json"),
            "--registries.d",
            str(self.home / "registries.d"),
        ]
        done = subprocess.run([*command, *args], env=self.env, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, f"skopeo {' '.join(args)} failed:\n{done.stderr}"
        return done.stdout

    def copy(self, source: str, destination: str, *options: str) -> None:
        tls = []
        if source.startswith("docker://"):
            tls += ["--src-tls-verify=false", "--src-creds", self.creds]
        if destination.startswith("docker://"):
            tls += ["--dest-tls-verify=false", "--dest-creds", self.creds]
        self.run("copy", "--retry-times", "0", *tls, *options, source, destination)


@pytest.fixture
def skopeo(ecr_double, tmp_path):
    ecr_double.create_repository(REPO)
    user, password = ecr_double.registry_credentials()
    return Skopeo(tmp_path / "skopeo", ecr_double.registry_endpoint(), f"{user}:{password}")


def pushed_with_skopeo(skopeo, tmp_path, image, tag):
    layout = write_oci_layout(image, tmp_path / f"layout-{tag}", tag)
    skopeo.copy(f"oci:{layout}:{tag}", skopeo.ref(f"{REPO}:{tag}"), "--preserve-digests", "--all")


def test_skopeo_push_promote_and_pull_back_by_each_new_tag(ecr_double, skopeo, tmp_path):
    image = build_image("oci", "skopeo-app")
    pushed_with_skopeo(skopeo, tmp_path, image, "sha-1")
    assert ecr_double.tags(REPO) == {"sha-1": image.digest}
    assert ecr_double.calls["V2PutManifest"] == 1 and ecr_double.calls["PutImage"] == 0

    operator = EcrRetagOperator(
        task_id="promote", repository_name=REPO, source_tag="sha-1", target_tags=["v1.0.0", "prod"], **AWS
    )
    assert operator.execute(make_context()) == image.digest

    for tag in ("v1.0.0", "prod"):
        pulled = tmp_path / f"pulled-{tag}"
        skopeo.copy(skopeo.ref(f"{REPO}:{tag}"), f"dir:{pulled}", "--preserve-digests")
        manifest = (pulled / "manifest.json").read_bytes()
        assert "sha256:" + hashlib.sha256(manifest).hexdigest() == image.digest
        for digest, blob in image.blobs.items():
            assert (pulled / digest.split(":", 1)[1]).read_bytes() == read_all(blob)
        inspected = json.loads(
            skopeo.run("inspect", "--tls-verify=false", "--creds", skopeo.creds, skopeo.ref(f"{REPO}:{tag}"))
        )
        assert inspected["Digest"] == image.digest


def test_skopeo_copy_all_of_a_multi_arch_index_keeps_the_digest(ecr_double, skopeo, tmp_path):
    index = build_image("oci-index", "skopeo-multi")
    ecr_double.push(REPO, index, ["multi"])
    ecr_double.create_repository("team/copy")
    skopeo.copy(skopeo.ref(f"{REPO}:multi"), skopeo.ref("team/copy:multi"), "--all", "--preserve-digests")
    assert ecr_double.tags("team/copy") == {"multi": index.digest}
    assert set(ecr_double.images("team/copy")) == {index.digest, *(child.digest for child in index.children)}
    copied = {d for child in index.children for d in child.blobs}
    assert copied <= set(ecr_double.blobs_of("team/copy"))


def test_skopeo_pulls_the_copy_from_the_other_accounts_registry(ecr_double, skopeo, tmp_path):
    prod, prod_region = "210987654321", "eu-west-1"
    index = build_image("oci-index", "skopeo-copied")
    ecr_double.push(REPO, index, ["sha-1"])
    ecr_double.create_repository(REPO, registry_id=prod, region_name=prod_region)
    EcrCopyImageOperator(
        task_id="copy",
        source_repository_name=REPO,
        source_tag="sha-1",
        source_region_name="us-east-1",
        repository_name=REPO,
        registry_id=prod,
        target_tags=["prod"],
        aws_conn_id=None,
        region_name=prod_region,
    ).execute(make_context())

    user, password = ecr_double.registry_credentials(region_name=prod_region)
    endpoint = ecr_double.registry_endpoint(registry_id=prod, region_name=prod_region)
    assert endpoint != ecr_double.registry_endpoint()  # the other account's registry, its own address
    theirs = Skopeo(tmp_path / "skopeo-prod", endpoint, f"{user}:{password}")
    layout = tmp_path / "pulled"
    theirs.copy(theirs.ref(f"{REPO}:prod"), f"oci:{layout}:prod", "--all", "--preserve-digests")

    [entry] = json.loads((layout / "index.json").read_text())["manifests"]
    assert entry["digest"] == index.digest  # the same digest: every platform, byte for byte
    blobs = layout / "blobs" / "sha256"
    for part in (*index.children, index):
        assert (blobs / part.digest.split(":", 1)[1]).read_text() == part.manifest
        for digest, blob in part.blobs.items():
            assert (blobs / digest.split(":", 1)[1]).read_bytes() == read_all(blob)
    inspected = json.loads(
        theirs.run("inspect", "--tls-verify=false", "--creds", theirs.creds, theirs.ref(f"{REPO}:prod"))
    )
    assert inspected["Digest"] == index.digest
