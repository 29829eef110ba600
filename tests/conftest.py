"""Suite-wide setup: fake AWS credentials and no network but loopback.

The throwaway Airflow home (its own SQLite DB and config, unit-test mode, no example DAGs, the
DAGs folder ``example_dags``) comes from the shipped pytest plugin, as it does in users' suites:
``-p airflow_ecr_retag.testing.pytest_plugin`` and ``ecr_retag_dags_folder`` in pyproject.toml.
"""

from __future__ import annotations

import ipaddress
import os
import socket

import pytest

# A user's project, run from the built wheel by test_user_project.py: never collected here.
collect_ignore = ["user_project"]

for _name, _value in {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_SESSION_TOKEN": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
}.items():
    os.environ[_name] = _value
# The opt-in heap freeze would call gc.freeze() in pytest's own process: tests that want it set it.
for _name in ("AWS_PROFILE", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_ECR", "AIRFLOW__ECR_RETAG__FREEZE_SETTLED_HEAP"):
    os.environ.pop(_name, None)


class NetworkAccessError(RuntimeError):
    """A test tried to reach a host other than loopback."""


def _is_loopback(address: object) -> bool:
    if not isinstance(address, tuple):
        return True  # AF_UNIX paths
    host = address[0]
    if host in ("localhost", ""):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


_real_connect = socket.socket.connect
_real_connect_ex = socket.socket.connect_ex


def _guarded_connect(self: socket.socket, address: object) -> None:
    if not _is_loopback(address):
        raise NetworkAccessError(f"tests run offline: connection to {address!r} refused (only 127.0.0.1)")
    return _real_connect(self, address)


def _guarded_connect_ex(self: socket.socket, address: object) -> int:
    if not _is_loopback(address):
        raise NetworkAccessError(f"tests run offline: connection to {address!r} refused (only 127.0.0.1)")
    return _real_connect_ex(self, address)


socket.socket.connect = _guarded_connect  # type: ignore[method-assign]
socket.socket.connect_ex = _guarded_connect_ex  # type: ignore[method-assign]


@pytest.fixture
def offline_guard() -> type[NetworkAccessError]:
    return NetworkAccessError


# Every ECR operation that package code (calls through the Amazon provider's hooks, whose user
# agent says "Airflow/") makes anywhere in the suite; checked against the README's IAM policy.
from airflow_ecr_retag.testing.double import EcrDouble  # noqa: E402

PACKAGE_OPERATIONS: set[str] = set()
EcrDouble.observers.append(
    lambda call: PACKAGE_OPERATIONS.add(call.operation) if "Airflow/" in call.user_agent else None
)


def readme_policy_statements() -> dict[str, set[str]]:
    """Every statement of the README's IAM policy blocks (``json`` blocks whose statements have an
    ``AirflowEcr...`` Sid): Sid -> its ECR actions. The operators' policy is ``AirflowEcrRetag``; a
    copy's source and target credentials have ``AirflowEcrCopySource`` and ``AirflowEcrCopyTarget``."""
    import json
    import re
    from pathlib import Path

    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    statements: dict[str, set[str]] = {}
    for block in re.findall(r"```json\n(.*?)```", readme, re.S):
        if '"AirflowEcr' not in block:
            continue
        for statement in json.loads(block)["Statement"]:
            assert statement["Sid"].startswith("AirflowEcr") and statement["Sid"] not in statements, statement["Sid"]
            actions = statement["Action"]
            statements[statement["Sid"]] = {
                a.split(":", 1)[1] for a in ([actions] if isinstance(actions, str) else actions)
            }
    assert "AirflowEcrRetag" in statements, "the README's IAM policy block is gone"
    return statements


def readme_policy_actions() -> set[str]:
    """Every ECR action the README's IAM policies list, in any statement."""
    return set().union(*readme_policy_statements().values())


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    extra = PACKAGE_OPERATIONS - readme_policy_actions()
    if extra:
        print(f"\nThe suite saw package code call ECR operations missing from the README's IAM policy: {sorted(extra)}")
        session.exitstatus = 1


@pytest.fixture(scope="session")
def built_distributions(tmp_path_factory: pytest.TempPathFactory):
    """The sdist and the wheel, built once a session; ``built_package.install_wheel`` puts the wheel in a clean venv."""
    from built_package import build

    return build(tmp_path_factory.mktemp("dist"))
