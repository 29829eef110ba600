"""pytest fixtures for the ECR double.

Enable with ``pytest_plugins = ["airflow_ecr_retag.testing.pytest_plugin"]`` in a conftest.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from airflow_ecr_retag.testing.double import EcrDouble


@pytest.fixture
def ecr_double(monkeypatch: pytest.MonkeyPatch) -> Iterator[EcrDouble]:
    """An in-process ECR double with fake credentials; boto3 clients reach it with no change."""
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.delenv("AWS_ENDPOINT_URL_ECR", raising=False)
    monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)
    with EcrDouble() as double:
        yield double


@pytest.fixture
def ecr_double_server(monkeypatch: pytest.MonkeyPatch) -> Iterator[EcrDouble]:
    """The ECR double served on 127.0.0.1; ``AWS_ENDPOINT_URL_ECR`` points at it for the test."""
    with EcrDouble(server=True) as double:
        for name, value in double.environ().items():
            monkeypatch.setenv(name, value)
        yield double
