"""The whole release DAG, run with run_dag against the served double: a clean run, a fault, a race."""

from __future__ import annotations

from airflow_ecr_retag.testing import Fault, build_image

REPO = "shop/web"


def seed(ecr):
    ecr.create_repository(REPO)
    old = ecr.push(REPO, build_image("oci", "previous"), ["v0.9.0", "prod"])
    new = ecr.push(REPO, build_image("oci-index", "candidate"), ["sha-1a2b"])
    return old, new


def test_a_throttled_put_is_retried_and_the_release_succeeds(ecr_double_server, run_dag):
    old, new = seed(ecr_double_server)
    ecr_double_server.inject("PutImage", Fault.THROTTLE)  # the first PutImage, once
    result = run_dag("release", run_conf={"sha": "1a2b", "version": "v1.0.0"})
    assert result.state == "success"
    assert result.states == {"wait_for_build": "success", "promote": "success", "announce": "success"}
    assert result.xcom("promote") == new
    assert result.xcom("promote", "promotion")["moved"] == {"prod": old}
    assert result.xcom("announce").endswith(f"/shop/web@{new}")
    assert ecr_double_server.tags(REPO) == {"v0.9.0": old, "sha-1a2b": new, "v1.0.0": new, "prod": new}
    assert ecr_double_server.calls["PutImage"] == 3  # two tags, one retry


def test_a_ci_tag_re_pushed_after_the_wait_is_not_promoted(ecr_double_server, run_dag):
    old, new = seed(ecr_double_server)
    sneaky = ecr_double_server.push(REPO, build_image("oci", "sneaky"))
    # Call 1 is the sensor's poke; just before call 2 (the promotion's read) CI re-pushes the tag.
    ecr_double_server.before_call("BatchGetImage", lambda double: double.move_tag(REPO, "sha-1a2b", sneaky), call=2)
    result = run_dag("release", run_conf={"sha": "1a2b", "version": "v1.0.0"})
    assert result.state == "failed"
    assert result.states == {"wait_for_build": "success", "promote": "failed", "announce": "upstream_failed"}
    assert result.xcom("wait_for_build") == new
    assert ecr_double_server.calls["PutImage"] == 0
    assert ecr_double_server.tags(REPO)["prod"] == old and "v1.0.0" not in ecr_double_server.tags(REPO)
