"""The double used outside this repository: a user's project, tested against the built wheel.

tests/user_project/ is a small project written from the README alone (a release DAG, its tasks
tested in-process with ``ecr_double``, the whole DAG with ``run_dag`` through a fault and a race).
Here it is copied out of the source tree and its tests run in a clean venv that holds the wheel
with the ``testing`` extra, pytest, and nothing else (``built_package.install_wheel``: offline,
from this environment's installed distributions): not the source tree, not the test extra.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
from built_package import install_wheel, offline_env, run

from airflow_ecr_retag.testing import RemoteEcrDouble

USER_PROJECT = Path(__file__).resolve().parent / "user_project"


@pytest.fixture(scope="module")
def testing_venv(built_distributions, tmp_path_factory):
    """`pip install "airflow-ecr-retag[testing]" pytest` in a clean venv; its python."""
    venv = tmp_path_factory.mktemp("venv") / "testing"
    return install_wheel(built_distributions.wheel, venv, extras=["testing"], also=["pytest"])


def test_a_users_project_passes_its_tests_against_the_installed_wheel(testing_venv, tmp_path):
    project = shutil.copytree(USER_PROJECT, tmp_path / "project")
    where = run([testing_venv, "-I", "-c", "import airflow_ecr_retag; print(airflow_ecr_retag.__file__)"], cwd=project)
    assert Path(where.stdout.strip()).is_relative_to(testing_venv.parent.parent)  # the wheel's copy
    # No AIRFLOW_HOME from this suite: the user's session gets its throwaway home from the plugin.
    env = {name: value for name, value in offline_env().items() if name != "AIRFLOW_HOME"}
    out = run([testing_venv, "-I", "-m", "pytest", "-p", "no:cacheprovider", "-q"], cwd=project, env=env)
    summary = out.stdout.strip().splitlines()[-1]
    assert re.match(r"8 passed\b", summary), out.stdout[-4000:]


def test_the_installed_ecr_double_script_serves_a_seeded_double(testing_venv, tmp_path):
    script = testing_venv.parent / "ecr-double"
    command = [script, "serve", "--seed", "shop/web:v1:oci-index"]
    with subprocess.Popen(command, stdout=subprocess.PIPE, text=True, cwd=tmp_path, env=offline_env()) as server:
        try:
            exports = {}
            for line in server.stdout:  # it prints the exports once it serves, then nothing
                if line.startswith("export "):
                    name, _, value = line[len("export ") :].strip().partition("=")
                    exports[name] = value
                if "AWS_DEFAULT_REGION" in exports:
                    break
            remote = RemoteEcrDouble(exports["AWS_ENDPOINT_URL_ECR"])
            [digest] = remote.tags("shop/web").values()
            listed = remote.client().describe_images(repositoryName="shop/web", imageIds=[{"imageTag": "v1"}])
            assert listed["imageDetails"][0]["imageDigest"] == digest
            assert dict(remote.calls) == {"DescribeImages": 1}
            assert exports["AWS_ACCESS_KEY_ID"] == "testing" and exports["AWS_DEFAULT_REGION"] == "us-east-1"
        finally:
            server.terminate()
