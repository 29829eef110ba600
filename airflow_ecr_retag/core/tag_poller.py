"""Shared clients and coalesced polls for the tag triggers running in one triggerer.

A triggerer runs every trigger in one event loop. Giving each waiting trigger its own hook,
aiobotocore client and poll loop costs ~40 ms of CPU per client and one call per trigger per
interval, which at 1,000 waits puts the loop minutes behind. Here, per event loop:

- one async ECR client per :class:`ClientKey` (connection id, region, verify, endpoint,
  botocore config), shared by every trigger with that key and closed by the last to leave.
  It is built in a worker thread, so its service model and client class (15-160 ms of CPU)
  never block the loop;
- one :class:`RepositoryPoller` per (client, registry, repository): each round it asks for
  the due waiters' tags in BatchGetImage calls of at most 100 references, and hands each
  waiter its own outcome. A waiter is never polled later than its own ``poke_interval``
  (waiters due soon ride along early, and a joining waiter is first polled with the poller's
  next round), throttling backs off the whole poller, and the poller stops when its last
  waiter leaves.

Nothing here blocks the loop for long, whatever the number of waiters (10,000 in one
triggerer are measured in ``benchmarks/RESULTS.md``). The CPU-heavy steps share a budget per
turn of the loop, loop-wide: building a request (botocore validates, serializes and signs it)
and parsing an answer, each one 100-reference call's worth a turn, and handing outcomes to
waiters, 25 a turn, so a thousand triggers finishing at once do not all wake in the same turn.
Each answer is judged as soon as it arrives. A waiting trigger holds one future; deadlines
are one heap and one timer per poller.

A waiter asks for one tag and receives outcomes (:class:`Waiter`); the tag trigger's waiter
ends with its first outcome, and a waiter that wants every change of a tag (an asset watcher)
overrides :meth:`Waiter.receive` / :meth:`Waiter.deliver` and sets ``once = False``.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import heapq
import itertools
import json
import logging
import math
import os
import time
import weakref
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from airflow_ecr_retag.core import ecr
from airflow_ecr_retag.core.backoff import backoff_seconds
from airflow_ecr_retag.core.errors import EcrPermanentError, error_code, is_permanent
from airflow_ecr_retag.core.heap_freeze import SettledHeapFreezer
from airflow_ecr_retag.core.limits import MAX_IMAGE_IDS
from airflow_ecr_retag.core.tag_wait import TagWait, evaluate

log = logging.getLogger(__name__)

#: A waiter due within this share of its interval rides along with the current poll.
RIDE_ALONG_SHARE = 0.25
#: A new poller's first poll waits this long, so waiters joining together share it (a
#: triggerer starting or resuming hundreds of waits at once makes one call, not hundreds).
#: Waiters joining a poller that already has a round planned within their interval join that
#: round instead, so waits started over a few seconds still share one call per round.
JOIN_GATHER_SECONDS = 0.05
#: The work of this module that may run in one turn of the event loop, loop-wide, in units of
#: one BatchGetImage reference built (validated, serialized, signed) or parsed: a turn builds
#: one 100-reference request, or parses one 100-reference answer (each 3-10 ms of CPU on a
#: loaded 2-core machine), or hands over a batch of outcomes.
WORK_PER_TURN = MAX_IMAGE_IDS
#: Handing over one outcome, in those units: it wakes a trigger that logs and yields its event
#: and leaves its poller (0.1-0.3 ms, about four references' worth).
HAND_OVER_WORK = 4
#: Waiters one call's answer is judged for in one turn of the event loop (many waiters on
#: one tag share a reference).
JUDGED_PER_TURN = 500


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
        config = json.dumps(botocore_config, sort_keys=True, default=str) if botocore_config else "{}"
        return cls(aws_conn_id, region_name, verify, endpoint, config)


class _TurnBudget:
    """At most about ``per_turn`` units of work start in one turn of the event loop.

    A turn is one pass of the loop over its ready callbacks: whatever one turn runs, the loop
    runs without a break. Work over the budget waits, in order, for a later turn. (Work taken
    in a turn before the previous turn's reset ran counts against that turn, so a turn may
    run up to twice the budget in small pieces; two full pieces never share a turn.)

    Work taken at once runs in the turn that takes it, and the budget resets in the next one.
    Work released from the queue runs a turn later than its release, when its task wakes: the
    budget is reserved for it until then and resets in the turn after that, so work asking in
    the turn the released work runs in waits too.
    """

    def __init__(self, per_turn: int):
        self.per_turn = per_turn
        self._used = 0
        self._turn_ending = False
        self._queue: collections.deque[tuple[int, asyncio.Future]] = collections.deque()

    async def take(self, units: int) -> None:
        if not self._queue and self._fits(units):
            self._spend(units)
            return
        turn = asyncio.get_running_loop().create_future()
        self._queue.append((units, turn))
        await turn

    def _fits(self, units: int) -> bool:
        return not self._used or self._used + units <= self.per_turn

    def _spend(self, units: int) -> None:
        self._used += units
        if not self._turn_ending:
            self._turn_ending = True
            asyncio.get_running_loop().call_soon(self._next_turn)

    def _next_turn(self) -> None:
        self._turn_ending = False
        self._used = 0
        released = False
        while self._queue and self._fits(self._queue[0][0]):
            units, turn = self._queue.popleft()
            if not turn.done():
                turn.set_result(None)
                self._used += units
                released = True
        if released:
            # The released work runs in the next turn (its task's wake-up is scheduled now), so
            # the reset comes in the turn after that one.
            self._turn_ending = True
            loop = asyncio.get_running_loop()
            loop.call_soon(loop.call_soon, self._next_turn)


class _SharedClient:
    """One loop's client for one :class:`ClientKey`: made once, used by pollers, closed by the last."""

    def __init__(self, connect: Callable[[], Awaitable[Any]]):
        loop = asyncio.get_running_loop()
        self.ready: asyncio.Future = loop.create_future()
        self.users = 0
        self.context: Any = None
        self._opening = loop.create_task(self._open(connect), name="ecr-client")

    async def _open(self, connect: Callable[[], Awaitable[Any]]) -> None:
        try:
            context = await connect()
            # Entering an aiobotocore client context builds the client (service model, endpoint
            # rules, client class): CPU the loop must not spend. Its HTTP session and connector
            # are made on first use, in the loop that uses them, so none belongs to the thread's.
            client = await asyncio.to_thread(asyncio.run, context.__aenter__())
        except asyncio.CancelledError:
            self.ready.cancel()
            raise
        except Exception as error:
            self.ready.set_exception(error)
            self.ready.exception()  # retrieved: its users get it through their own await
            return
        # Parsing an answer is the other big piece of CPU a call costs: it waits for its turn too.
        client.meta.events.register(f"before-parse.ecr.{_PACED_OPERATION}", _paced_parse)
        self.context = context
        self.ready.set_result(client)

    def failed(self) -> bool:
        return self.ready.done() and (self.ready.cancelled() or self.ready.exception() is not None)

    async def close(self) -> None:
        if not self.ready.done():
            await asyncio.wait([self.ready])  # a client still being made is closed once it is made
        if not self.failed():
            await self.context.__aexit__(None, None, None)


_PACED_OPERATION = "BatchGetImage"


async def _paced_parse(response_dict: dict[str, Any], **kwargs: Any) -> None:
    body = response_dict.get("body") or b""
    references = body.count(b'"imageId"') if isinstance(body, bytes) else WORK_PER_TURN
    await loop_state().work.take(min(WORK_PER_TURN, max(1, references)))


class Waiter:
    """One member of a repository's poller: asks for ``wait.tag`` every ``poke_interval``, receives outcomes.

    The poller hands each answer for the tag to :meth:`receive`, which returns an outcome (the
    event dict) or None to keep waiting; outcomes reach :meth:`deliver`, here the ``outcome``
    future. With ``once`` (the default) the first outcome ends the wait; a waiter that reports
    every change of its tag overrides both methods and sets ``once = False``. Errors a retry
    cannot fix, a poller failure and the deadline always end the wait.

    :param wait: The tag (and expected digest) asked for.
    :param poke_interval: Seconds between polls of this waiter, at most.
    :param timeout_at: Epoch seconds after which the wait ends with a timeout outcome.
    """

    __slots__ = ("deadline", "ident", "next_due", "outcome", "poke_interval", "settled", "timeout_at", "wait")
    once = True
    _idents = itertools.count()

    def __init__(self, wait: TagWait, poke_interval: float, *, timeout_at: float | None = None):
        self.wait = wait
        self.poke_interval = poke_interval
        self.timeout_at = timeout_at
        self.outcome: asyncio.Future = asyncio.get_running_loop().create_future()
        self.next_due = 0.0
        self.ident = next(self._idents)
        self.settled = False
        #: ``timeout_at`` on the poller's monotonic clock, once joined.
        self.deadline = math.inf

    def receive(self, image: ecr.FetchedImage | None, failure: dict[str, Any] | None) -> dict[str, Any] | None:
        try:
            check = evaluate(self.wait, image, failure)
        except EcrPermanentError as error:
            return _error(error.code, str(error))
        if check.done:
            return {
                "status": "success",
                "digest": check.digest,
                "tag": self.wait.tag,
                "repository_name": self.wait.repository_name,
            }
        return None

    def deliver(self, event: dict[str, Any]) -> None:
        if not self.outcome.done():
            self.outcome.set_result(event)

    def timed_out(self) -> dict[str, Any]:
        return {
            "status": "timeout",
            "message": f"tag {self.wait.tag!r} in {self.wait.repository_name} did not appear in time",
        }


def _error(code: str, message: str) -> dict[str, Any]:
    return {"status": "error", "code": code, "message": message}


def _error_event(error: BaseException) -> dict[str, Any]:
    return _error(getattr(error, "code", None) or error_code(error) or type(error).__name__, str(error))


class RepositoryPoller:
    """Polls one repository, through one shared client, for every waiter waiting on it."""

    def __init__(
        self, client: _SharedClient, registry_id: str | None, repository_name: str, on_empty: Callable[[], None]
    ):
        self.shared_client = client
        self.client: Any = None
        self.registry_id = registry_id
        self.repository_name = repository_name
        self.waiters: dict[int, Waiter] = {}
        self._state = loop_state()
        self._wake = asyncio.Event()
        self._next_round: float | None = None
        self._deadlines: list[tuple[float, int]] = []
        self._deadline_timer: asyncio.TimerHandle | None = None
        self._on_empty = on_empty
        #: Set when the last waiter left: the shared client's close, for that waiter to await.
        self.closing: Awaitable[None] | None = None
        self._failures_in_a_row = 0
        self._task = asyncio.get_running_loop().create_task(self._run(), name=f"ecr-tag-poller:{repository_name}")
        self._task.add_done_callback(self._crashed)

    def _crashed(self, task: asyncio.Task) -> None:
        # A poller that dies of a bug must not leave its waiters waiting forever.
        if task.cancelled() or task.exception() is None:
            return
        error = task.exception()
        self._on_empty()  # joiners from now on get a new poller
        for waiter in list(self.waiters.values()):
            self._hand_over(waiter, _error(type(error).__name__, f"poller failed: {error}"), final=True)

    def add(self, waiter: Waiter) -> None:
        now = time.monotonic()
        planned = self._next_round
        if planned is not None and now <= planned <= now + waiter.poke_interval:
            waiter.next_due = planned
        else:
            waiter.next_due = now + JOIN_GATHER_SECONDS
            if planned is None or waiter.next_due < planned:
                self._next_round = waiter.next_due
                self._wake.set()
        self.waiters[waiter.ident] = waiter
        if waiter.timeout_at is not None:
            waiter.deadline = now + max(0.0, waiter.timeout_at - time.time())
            # One heap of plain (deadline, ident) pairs and one timer per poller, not a timer per
            # waiter: each timer would be four more objects for the garbage collector to walk.
            heapq.heappush(self._deadlines, (waiter.deadline, waiter.ident))
            if self._deadlines[0][1] == waiter.ident:
                self._arm_deadline_timer()

    def remove(self, waiter: Waiter) -> None:
        self.waiters.pop(waiter.ident, None)
        if not self.waiters:
            self._task.cancel()
            self._deadlines.clear()
            self._arm_deadline_timer()
            self._on_empty()
        elif len(self._deadlines) > 2 * len(self.waiters) + 64:
            # Deadlines of waiters that left are dropped lazily; keep the heap from growing.
            self._deadlines = [(w.deadline, w.ident) for w in self.waiters.values() if w.deadline != math.inf]
            heapq.heapify(self._deadlines)

    def _arm_deadline_timer(self) -> None:
        if self._deadline_timer is not None:
            self._deadline_timer.cancel()
            self._deadline_timer = None
        if self._deadlines:
            delay = max(0.0, self._deadlines[0][0] - time.monotonic())
            self._deadline_timer = asyncio.get_running_loop().call_later(delay, self._expire)

    def _expire(self) -> None:
        self._deadline_timer = None
        now = time.monotonic()
        while self._deadlines and self._deadlines[0][0] <= now:
            _, ident = heapq.heappop(self._deadlines)
            waiter = self.waiters.get(ident)
            if waiter is not None and not waiter.settled:
                self._hand_over(waiter, waiter.timed_out(), final=True)
        self._arm_deadline_timer()

    def _hand_over(self, waiter: Waiter, event: dict[str, Any], *, final: bool) -> None:
        if waiter.settled:
            return
        if final:
            waiter.settled = True
            waiter.next_due = math.inf
        self._state.hand_over(waiter, event)

    async def _run(self) -> None:
        try:
            self.client = await asyncio.shield(self.shared_client.ready)
        except Exception as error:
            self._on_empty()  # joiners from now on get a new poller, which tries a new client
            for waiter in list(self.waiters.values()):
                self._hand_over(waiter, _error_event(error), final=True)
            return
        while self.waiters:
            now = time.monotonic()
            due = [w for w in self.waiters.values() if w.next_due - RIDE_ALONG_SHARE * w.poke_interval <= now]
            if not any(w.next_due <= now for w in due):
                soonest = min(w.next_due for w in self.waiters.values())
                self._next_round = None if soonest == math.inf else soonest
                self._wake.clear()
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), None if soonest == math.inf else max(0.0, soonest - now))
                continue
            await self._poll(due)

    async def _poll(self, due: list[Waiter]) -> None:
        started = time.monotonic()
        # Waiters joining while this round is on the wire are first polled with the next one.
        self._next_round = started + min(w.poke_interval for w in due)
        batches = _batches(due)
        results = await asyncio.gather(*(self._batch(batch, started) for batch in batches), return_exceptions=True)
        errors = [result for result in results if isinstance(result, BaseException)]
        log.debug(
            "Polled %s: %d calls (%d failed) for %d due waiters",
            self.repository_name,
            len(batches),
            len(errors),
            len(due),
        )
        if not errors:
            self._failures_in_a_row = 0
            return
        if not all(isinstance(error, Exception) for error in errors):
            raise next(error for error in errors if not isinstance(error, Exception))
        self._failures_in_a_row += 1
        backoff = backoff_seconds(
            min(w.poke_interval for w in due),
            self._failures_in_a_row,
            longest_interval=max(w.poke_interval for w in due),
        )
        log.warning(
            "Transient error polling %s (%s); whole poller backs off %.1f s", self.repository_name, errors[0], backoff
        )
        for waiter in self.waiters.values():
            waiter.next_due = max(waiter.next_due, started + backoff)

    async def _batch(self, waiters: list[Waiter], started: float) -> None:
        """One BatchGetImage for ``waiters``' tags; each waiter is judged as soon as its answer is in.

        Judging per call, not per round, keeps no round's worth of answers alive: 10,000 answers
        held until a round's last call returns outlive the young garbage collections, and
        every object promoted to the oldest generation brings the next full collection (a
        pause of the whole loop, as long as the process is big) nearer.
        """
        tags = list(dict.fromkeys(w.wait.tag for w in waiters))
        await self._state.work.take(len(tags))
        try:
            found, failures = await ecr.fetch_images_async(
                self.client, self.repository_name, [ecr.ref(tag=t) for t in tags], self.registry_id
            )
        except Exception as error:
            if not is_permanent(error):
                raise
            for waiter in waiters:
                self._hand_over(waiter, _error_event(error), final=True)
            return
        for judged, waiter in enumerate(waiters, start=1):
            if not waiter.settled:
                key = ("tag", waiter.wait.tag)
                event = waiter.receive(found.get(key), failures.get(key))
                if event is not None:
                    self._hand_over(waiter, event, final=waiter.once or event["status"] == "error")
                if not waiter.settled:
                    waiter.next_due = started + waiter.poke_interval
            if judged % JUDGED_PER_TURN == 0:
                await asyncio.sleep(0)


def _batches(waiters: list[Waiter]) -> list[list[Waiter]]:
    """``waiters`` split for BatchGetImage: each part asks for at most 100 distinct tags, each tag in one part."""
    batches: list[list[Waiter]] = []
    batch_of: dict[str, list[Waiter]] = {}
    distinct = MAX_IMAGE_IDS
    for waiter in waiters:
        batch = batch_of.get(waiter.wait.tag)
        if batch is None:
            if distinct == MAX_IMAGE_IDS:
                batches.append([])
                distinct = 0
            batch = batch_of[waiter.wait.tag] = batches[-1]
            distinct += 1
        batch.append(waiter)
    return batches


class _LoopState:
    """Everything shared by the triggers of one event loop."""

    def __init__(self) -> None:
        self.clients: dict[ClientKey, _SharedClient] = {}
        self.pollers: dict[tuple, RepositoryPoller] = {}
        self.work = _TurnBudget(WORK_PER_TURN)
        self._outbox: collections.deque[tuple[Waiter, dict[str, Any]]] = collections.deque()
        self._handing_over: asyncio.Task | None = None
        #: Waiters joined to this loop's pollers, and the opt-in freezer that follows their number.
        self.waits = 0
        self.heap = SettledHeapFreezer()

    def count_wait(self, change: int) -> None:
        self.waits += change
        self.heap.waits_changed(self.waits)

    def hand_over(self, waiter: Waiter, event: dict[str, Any]) -> None:
        """Queue ``event`` for ``waiter``; outcomes are delivered a batch per loop turn."""
        self._outbox.append((waiter, event))
        if self._handing_over is None:
            self._handing_over = asyncio.get_running_loop().create_task(self._deliver(), name="ecr-tag-outcomes")

    async def _deliver(self) -> None:
        try:
            while self._outbox:
                count = min(WORK_PER_TURN // HAND_OVER_WORK, len(self._outbox))
                await self.work.take(count * HAND_OVER_WORK)
                for _ in range(count):
                    waiter, event = self._outbox.popleft()
                    waiter.deliver(event)
                await asyncio.sleep(0)
        finally:
            self._handing_over = None

    def acquire(self, key: ClientKey, connect: Callable[[], Awaitable[Any]]) -> _SharedClient:
        """The loop's client for ``key`` (being made with ``connect`` if it is new), with one more user."""
        entry = self.clients.get(key)
        if entry is None:
            entry = self.clients[key] = _SharedClient(connect)
            entry.ready.add_done_callback(lambda ready: self._forget_failed(key, entry))
        entry.users += 1
        return entry

    def _forget_failed(self, key: ClientKey, entry: _SharedClient) -> None:
        # The next user of the key tries again (a connection fixed meanwhile, a transient error).
        if entry.failed() and self.clients.get(key) is entry:
            del self.clients[key]

    def release(self, key: ClientKey, entry: _SharedClient) -> Awaitable[None] | None:
        """One user fewer; the close to await if that was the last one."""
        entry.users -= 1
        if entry.users == 0 and self.clients.get(key) is entry:
            del self.clients[key]
            return entry.close()
        return None


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
    entry = state.acquire(key, make_context)
    try:
        yield await asyncio.shield(entry.ready)
    finally:
        closing = state.release(key, entry)
        if closing is not None:
            await closing


class joined:
    """Join (or start) the poller of ``waiter``'s repository; leave it on exit, however it ends.

    The poller uses the loop's shared client for ``key``, made with ``connect`` (an awaitable
    of an async context manager that gives the client, such as an Amazon provider hook's
    ``get_async_conn``) if there is none yet. Joining does not wait for the client: a failure
    to make it is the waiter's outcome, an error event. ``freeze_heap`` turns on the loop's
    :class:`~airflow_ecr_retag.core.heap_freeze.SettledHeapFreezer` (it stays on).
    """

    __slots__ = ("_connect", "_freeze_heap", "_key", "_poller", "_waiter")

    def __init__(
        self, key: ClientKey, connect: Callable[[], Awaitable[Any]], waiter: Waiter, *, freeze_heap: bool = False
    ):
        self._key, self._connect, self._waiter = key, connect, waiter
        self._freeze_heap = freeze_heap
        self._poller: RepositoryPoller | None = None

    async def __aenter__(self) -> Waiter:
        state = loop_state()
        if self._freeze_heap:
            state.heap.enabled = True
        wait = self._waiter.wait
        poller_key = (self._key, wait.registry_id, wait.repository_name)
        poller = state.pollers.get(poller_key)
        if poller is None:
            key, client = self._key, state.acquire(self._key, self._connect)

            def on_empty() -> None:
                if state.pollers.get(poller_key) is poller:
                    del state.pollers[poller_key]
                if not poller.waiters:
                    poller.closing = state.release(key, client)

            poller = state.pollers[poller_key] = RepositoryPoller(
                client, wait.registry_id, wait.repository_name, on_empty=on_empty
            )
        poller.add(self._waiter)
        self._poller = poller
        self._key = self._connect = None  # a waiting trigger holds as little as it can
        state.count_wait(+1)
        return self._waiter

    async def __aexit__(self, *exc_info: object) -> None:
        poller, self._poller = self._poller, None
        try:
            poller.remove(self._waiter)
        finally:
            loop_state().count_wait(-1)
        closing, poller.closing = poller.closing, None
        if closing is not None:
            await closing
