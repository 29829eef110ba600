"""Shared test helpers: a minimal task context, operator arguments, and a recorder of poller decisions."""

from __future__ import annotations

import contextlib
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
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


def tag_trigger(repository_name: str, tag: str, **overrides: Any) -> Any:
    """An EcrTagTrigger for the double's server: a 0.5 s interval, a minute to time out, no connection."""
    from airflow_ecr_retag.triggers.tag import EcrTagTrigger

    params = {"poke_interval": 0.5, "timeout_at": time.time() + 60, **AWS}
    return EcrTagTrigger(**{**params, "repository_name": repository_name, "tag": tag, **overrides})


@contextlib.asynccontextmanager
async def client_made(sample_trigger: Any) -> AsyncIterator[None]:
    """Hold the shared async client of ``sample_trigger``'s connection, made before the scenario's clock runs.

    The first client of a process is built in a worker thread (botocore's models): 0.1 s on an
    idle machine, over 1.5 s with both cores busy. A test of when the poller polls must not count
    that; the triggers that join meanwhile share this client and keep it once the hold ends.
    """
    from airflow_ecr_retag.core.tag_poller import shared_client

    async with shared_client(sample_trigger._client_key(), sample_trigger._connect):
        yield


async def first_event(trigger: Any) -> dict[str, Any]:
    """Run ``trigger`` to its first event; its payload."""
    async for event in trigger.run():
        return event.payload
    raise AssertionError("the trigger ended without an event")


@dataclass
class PollEvent:
    """What a repository poller did, on its own monotonic clock: ``start``/``end`` of a poll, or ``leave``."""

    kind: str
    at: float
    waiters: int
    repository: str


class PollRecorder:
    """Records what the triggers' pollers decide (when polls start and end, when triggers leave).

    Timing tests assert on these, not on when requests reach the server: transport delays
    (connection set-up, a loaded machine) move arrival times, never the poller's decisions.
    """

    def __init__(self, monkeypatch: Any) -> None:
        from airflow_ecr_retag.core import tag_poller as polling

        self.events: list[PollEvent] = []
        poll, remove = polling.RepositoryPoller._poll, polling.RepositoryPoller.remove
        recorder = self

        async def recorded_poll(poller: Any, due: list) -> None:
            recorder.events.append(PollEvent("start", time.monotonic(), len(due), poller.repository_name))
            try:
                await poll(poller, due)
            finally:
                recorder.events.append(PollEvent("end", time.monotonic(), len(due), poller.repository_name))

        def recorded_remove(poller: Any, waiter: Any) -> None:
            remove(poller, waiter)
            recorder.events.append(PollEvent("leave", time.monotonic(), len(poller.waiters), poller.repository_name))

        monkeypatch.setattr(polling.RepositoryPoller, "_poll", recorded_poll)
        monkeypatch.setattr(polling.RepositoryPoller, "remove", recorded_remove)

    def times(self, kind: str, repository: str | None = None) -> list[float]:
        return [e.at for e in self.events if e.kind == kind and repository in (None, e.repository)]
