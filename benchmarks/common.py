"""Shared benchmark plumbing: the ECR double's server in its own process, and repeated timings."""

from __future__ import annotations

import contextlib
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from airflow_ecr_retag.testing import RemoteEcrDouble

ROOT = Path(__file__).resolve().parent.parent


@contextlib.contextmanager
def served_double() -> Iterator[tuple[str, RemoteEcrDouble]]:
    """Start ``python -m airflow_ecr_retag.testing serve`` in another process; yield its endpoint."""
    with tempfile.TemporaryDirectory() as tmp:
        endpoint_file = Path(tmp) / "endpoint"
        process = subprocess.Popen(
            [sys.executable, "-m", "airflow_ecr_retag.testing", "serve", "--endpoint-file", str(endpoint_file)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            deadline = time.monotonic() + 120
            while not endpoint_file.exists() or not endpoint_file.read_text():
                if process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("the ECR double's server did not start")
                time.sleep(0.05)
            yield endpoint_file.read_text(), RemoteEcrDouble(endpoint_file.read_text())
        finally:
            process.terminate()
            process.wait(timeout=30)


def environ(endpoint: str) -> dict[str, str]:
    """The environment that points boto3, aiobotocore and the aws CLI at the double."""
    return {
        "AWS_ENDPOINT_URL_ECR": endpoint,
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
    }


def use_double(endpoint: str) -> None:
    os.environ.update(environ(endpoint))
    for name in ("AWS_PROFILE", "AWS_ENDPOINT_URL", "AWS_SESSION_TOKEN"):
        os.environ.pop(name, None)


def spread(samples: list[float]) -> tuple[float, float, float]:
    return statistics.median(samples), min(samples), max(samples)


def fmt(samples: list[float], unit: str = "s", scale: float = 1.0, digits: int = 3) -> str:
    median, low, high = spread([s * scale for s in samples])
    return f"{median:.{digits}f} {unit} [{low:.{digits}f}-{high:.{digits}f}]"


def table(header: list[str], rows: list[list[object]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)
