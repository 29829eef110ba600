"""Shared test helpers: a minimal task context and operator construction."""

from __future__ import annotations

from typing import Any


class RecordingTaskInstance:
    """Stands in for the task instance in ``context["ti"]``: records XCom pushes."""

    def __init__(self) -> None:
        self.xcom: dict[str, Any] = {}

    def xcom_push(self, key: str, value: Any) -> None:
        self.xcom[key] = value


def make_context() -> dict[str, Any]:
    return {"ti": RecordingTaskInstance()}


AWS = {"aws_conn_id": None, "region_name": "us-east-1"}
