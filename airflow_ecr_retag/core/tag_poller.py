"""Shared clients and coalesced polls for the tag triggers running in one triggerer.

A triggerer runs every trigger in one event loop. Giving each waiting trigger its own hook,
aiobotocore client and poll loop costs ~40 ms of CPU per client and one call per trigger per
interval, which at 1,000 waits puts the loop minutes behind. Here, per event loop:

- one async ECR client per :class:`ClientKey` (connection id, region, verify, endpoint,
  botocore config), shared by every trigger with that key and closed by the last to leave;
- one :class:`RepositoryPoller` per (client, registry, repository): each round it asks for
  the due triggers' tags in BatchGetImage calls of at most 100 references, and hands each
  trigger its own outcome. A trigger is never polled later than its own ``poke_interval``
  (triggers due soon ride along early), throttling backs off the whole poller, and the
  poller stops when its last trigger leaves.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import logging
import os
import time
import weakref
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from airflow_ecr_retag.core import ecr
from airflow_ecr_retag.core.errors import EcrPermanentError, error_code, is_permanent
from airflow_ecr_retag.core.tag_wait import TagCheck, TagWait, evaluate

log = logging.getLogger(__name__)

#: The longest pause between polls while ECR keeps failing transiently (throttling, 5xx).
MAX_BACKOFF_SECONDS = 60.0
#: A trigger due within this share of its interval rides along with the current poll.
RIDE_ALONG_SHARE = 0.25
#: A joining trigger's first poll waits this long, so triggers joining together share it
#: (a triggerer starting or resuming hundreds of waits at once makes one call, not hundreds).
JOIN_GATHER_SECONDS = 0.05


@dataclass(frozen=True)
class ClientKey:
    """What makes two triggers' clients interchangeable: same credentials, region, endpoint and config."""

    aws_conn_id: str | None
    region_name: str | None
    verify: bool | str | None
    endpoint_url: str | None
    botocore_config: str

    @classmethod
    def of(
        cls, aws_conn_id: str | None, region_name: str | None, verify: bool | str | None, botocore_config: dict | None
    ) -> ClientKey:
        endpoint = os.environ.get("AWS_ENDPOINT_URL_ECR") or os.environ.get("AWS_ENDPOINT_URL")
        return cls(
            aws_conn_id, region_name, verify, endpoint, json.dumps(botocore_config or {}, sort_keys=True, default=str)
        )


@dataclass
class _SharedClient:
    ready: asyncio.Future
    users: int = 0
    context: Any = None


@dataclass
class Waiter:
    """One trigger's membership in a poller."""

    wait: TagWait
    poke_interval: float
    outcome: asyncio.Future
    next_due: float = 0.0
    ident: int = field(default_factory=itertools.count().__next__)


class RepositoryPoller:
    """Polls one repository, through one shared client, for every trigger waiting on it."""

    def __init__(self, client: Any, registry_id: str | None, repository_name: str, on_empty: Callable[[], None]):
        self.client = client
        self.registry_id = registry_id
        self.repository_name = repository_name
        self.waiters: dict[int, Waiter] = {}
        self._wake = asyncio.Event()
        self._on_empty = on_empty
        self._failures_in_a_row = 0
        self._task = asyncio.get_running_loop().create_task(self._run(), name=f"ecr-tag-poller:{repository_name}")
        self._task.add_done_callback(self._crashed)

    def _crashed(self, task: asyncio.Task) -> None:
        # A poller that dies of a bug must not leave its triggers waiting forever.
        if task.cancelled() or task.exception() is None:
            return
        error = task.exception()
        for waiter in list(self.waiters.values()):
            _settle(waiter, {"status": "error", "code": type(error).__name__, "message": f"poller failed: {error}"})

    def add(self, waiter: Waiter) -> None:
        waiter.next_due = time.monotonic() + JOIN_GATHER_SECONDS
        self.waiters[waiter.ident] = waiter
        self._wake.set()

    def remove(self, waiter: Waiter) -> None:
        self.waiters.pop(waiter.ident, None)
        if not self.waiters:
            self._task.cancel()
            self._on_empty()

    async def _run(self) -> None:
        while self.waiters:
            now = time.monotonic()
            due = [w for w in self.waiters.values() if w.next_due - RIDE_ALONG_SHARE * w.poke_interval <= now]
            if not any(w.next_due <= now for w in due):
                self._wake.clear()
                soonest = min(w.next_due for w in self.waiters.values())
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), max(0.0, soonest - now))
                continue
            await self._poll(due)

    async def _poll(self, due: list[Waiter]) -> None:
        tags = list(dict.fromkeys(w.wait.tag for w in due))
        started = time.monotonic()
        try:
            answers = await asyncio.gather(*(self._batch(chunk) for chunk in ecr.chunks(tags)))
        except Exception as error:
            if is_permanent(error):
                code = getattr(error, "code", None) or error_code(error) or type(error).__name__
                for waiter in due:
                    _settle(waiter, {"status": "error", "code": code, "message": str(error)})
                return
            self._failures_in_a_row += 1
            backoff = min(
                min(w.poke_interval for w in due) * 2 ** (self._failures_in_a_row - 1),
                max(max(w.poke_interval for w in due), MAX_BACKOFF_SECONDS),
            )
            log.warning(
                "Transient error polling %s (%s); whole poller backs off %.1f s", self.repository_name, error, backoff
            )
            for waiter in self.waiters.values():
                waiter.next_due = max(waiter.next_due, started + backoff)
            return
        self._failures_in_a_row = 0
        found: dict = {}
        failures: dict = {}
        for batch_found, batch_failures in answers:
            found.update(batch_found)
            failures.update(batch_failures)
        log.debug(
            "Polled %s: %d tags in %d calls for %d due triggers",
            self.repository_name,
            len(tags),
            len(answers),
            len(due),
        )
        for waiter in due:
            key = ("tag", waiter.wait.tag)
            try:
                check = evaluate(waiter.wait, found.get(key), failures.get(key))
            except EcrPermanentError as error:
                _settle(waiter, {"status": "error", "code": error.code, "message": str(error)})
                continue
            if check.done:
                _settle(waiter, _success(waiter.wait, check))
            else:
                waiter.next_due = started + waiter.poke_interval

    async def _batch(self, tags: list[str]) -> tuple[dict, dict]:
        return await ecr.fetch_images_async(
            self.client, self.repository_name, [ecr.ref(tag=t) for t in tags], self.registry_id
        )


def _success(wait: TagWait, check: TagCheck) -> dict[str, Any]:
    return {"status": "success", "digest": check.digest, "tag": wait.tag, "repository_name": wait.repository_name}


def _settle(waiter: Waiter, event: dict[str, Any]) -> None:
    if not waiter.outcome.done():
        waiter.outcome.set_result(event)


class _LoopState:
    """Everything shared by the triggers of one event loop."""

    def __init__(self) -> None:
        self.clients: dict[ClientKey, _SharedClient] = {}
        self.pollers: dict[tuple, RepositoryPoller] = {}


_states: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _LoopState] = weakref.WeakKeyDictionary()


def loop_state() -> _LoopState:
    loop = asyncio.get_running_loop()
    state = _states.get(loop)
    if state is None:
        state = _states[loop] = _LoopState()
    return state


@contextlib.asynccontextmanager
async def shared_client(key: ClientKey, make_context: Callable[[], Awaitable[Any]]) -> AsyncIterator[Any]:
    """The loop's client for ``key``, created on first use and closed when the last user leaves."""
    state = loop_state()
    entry = state.clients.get(key)
    if entry is None:
        entry = state.clients[key] = _SharedClient(ready=asyncio.get_running_loop().create_future())
        try:
            entry.context = await make_context()
            entry.ready.set_result(await entry.context.__aenter__())
        except BaseException as error:
            del state.clients[key]
            entry.ready.set_exception(error)
            entry.ready.exception()  # retrieved: others waiting get it through their own await
            raise
    entry.users += 1
    try:
        yield await asyncio.shield(entry.ready)
    finally:
        entry.users -= 1
        if entry.users == 0 and state.clients.get(key) is entry:
            del state.clients[key]
            await entry.context.__aexit__(None, None, None)


@contextlib.asynccontextmanager
async def joined(key: ClientKey, client: Any, wait: TagWait, poke_interval: float) -> AsyncIterator[Waiter]:
    """Join (or start) the poller of ``wait``'s repository; leave it on exit, however it ends."""
    state = loop_state()
    poller_key = (key, wait.registry_id, wait.repository_name)
    poller = state.pollers.get(poller_key)
    if poller is None:
        poller = state.pollers[poller_key] = RepositoryPoller(
            client,
            wait.registry_id,
            wait.repository_name,
            on_empty=lambda: state.pollers.pop(poller_key, None),
        )
    waiter = Waiter(wait, poke_interval, asyncio.get_running_loop().create_future())
    poller.add(waiter)
    try:
        yield waiter
    finally:
        poller.remove(waiter)
