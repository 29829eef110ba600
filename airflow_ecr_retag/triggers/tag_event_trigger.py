"""An asset watcher of ECR tags: one event each time a watched tag points at a new digest.

Airflow 3.3 runs it through its shared-stream machinery in ack mode, one stream per trigger,
for one reason: the ack tells the trigger when its events are stored in the metadata database.
The trigger writes its memory (the asset state store) only then, so a triggerer stopped at any
moment never loses a change: what was not yet stored is announced again by the next triggerer.
The polling itself is this package's shared poller (:mod:`airflow_ecr_retag.core.tag_watch`),
which Airflow's streams cannot replace: a stream is opened from one trigger's arguments, so
watchers of different tags in one repository could not share a BatchGetImage, nor share it with
the deferred waits of ``EcrTagTrigger``.

Before Airflow 3.3 (no shared streams, no asset state store) ``run()`` does the same with a
memory held in the triggerer: each start takes a new baseline, so a change made while no
triggerer ran is not announced, and nothing is announced twice.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import gzip
import heapq
import importlib
import json
import os
import threading
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

from airflow.triggers.base import BaseEventTrigger, TriggerEvent

try:  # Airflow 3.3+
    from airflow.triggers.shared_stream import SharedStreamProducer
except ImportError:  # before 3.3 the triggerer never asks for a producer
    SharedStreamProducer = object  # type: ignore[assignment,misc]

from airflow_ecr_retag.triggers.connection import AwsConnectionFields

if TYPE_CHECKING:
    from airflow.providers.amazon.aws.hooks.ecr import EcrHook

    from airflow_ecr_retag.core.tag_watch import Memory, Observation, TagWatch

#: Imported in a worker thread when a trigger starts: the triggerer imports a trigger's module
#: and builds the trigger in its event loop, so this module keeps its own imports to what the
#: triggerer has loaded already (importing the watch, the poller and the Amazon provider's hook
#: takes 50-250 ms of CPU, a stall for every trigger in the loop). The input rules are imported
#: by the first trigger built, a step of their own.
_WATCH_MODULE = "airflow_ecr_retag.core.tag_watch"


class EcrTagEventTrigger(AwsConnectionFields, BaseEventTrigger):
    """
    Watch tags of an ECR repository for an ``AssetWatcher``: one event each time a tag points at a new digest.

    A tag that appears counts; a tag that disappears starts nothing but is remembered, so its
    return counts. The first poll of a tag with no memory is its baseline (it is remembered, not
    announced). Events: ``{"repository_name", "registry_id", "tag", "digest", "previous_digest",
    "image_uri", "image_pushed_at"}`` (``previous_digest`` None for a tag that appeared).

    The last announced digest of each tag is kept in the asset state store (Airflow 3.3), one key
    per entry of ``tags``, written once the event is stored in the metadata database: a change
    made while no triggerer ran is announced when one runs again, and a restart with nothing
    changed announces nothing. Watchers of tag names in one repository share one BatchGetImage
    per interval with each other and with ``EcrTagTrigger``; a watch with a glob lists the
    repository (DescribeImages pages) each interval.

    :param repository_name: The repository.
    :param tags: Tag names or globs (``fnmatch``, case-sensitive), e.g. ``["prod"]`` or ``["v*"]``.
    :param registry_id: The registry's 12-digit account id; defaults to the caller's registry.
    :param poke_interval: Seconds between polls.
    :param aws_conn_id: The Airflow connection used for AWS credentials.
    :param region_name: AWS region_name.
    :param verify: Whether or not to verify SSL certificates.
    :param botocore_config: Configuration dictionary (key-values) for the botocore client.
    """

    def __init__(
        self,
        *,
        repository_name: str,
        tags: list[str],
        registry_id: str | None = None,
        poke_interval: float = 30.0,
        aws_conn_id: str | None = "aws_default",
        region_name: str | None = None,
        verify: bool | str | None = None,
        botocore_config: dict | None = None,
    ):
        super().__init__()
        from airflow_ecr_retag.core import validation
        from airflow_ecr_retag.exceptions import fail_fast

        # A watcher is declared in a DAG file and never templated: bad input fails the DAG's import.
        with fail_fast():
            self.repository_name = validation.repository_name(repository_name)
            self.tags = validation.watched_tags(tags, "tags")
            self.registry_id = validation.registry_id(registry_id)
            self.poke_interval = validation.positive_seconds(poke_interval, "poke_interval")
        self._set_connection(aws_conn_id, region_name, verify, botocore_config)

    def serialize(self) -> tuple[str, dict[str, Any]]:
        # Airflow identifies a watcher by the hash of these: plain values, always the same keys.
        return (
            f"{self.__class__.__module__}.{self.__class__.__qualname__}",
            {
                "repository_name": self.repository_name,
                "tags": list(self.tags),
                "registry_id": self.registry_id,
                "poke_interval": self.poke_interval,
                **self.connection_kwargs(),
            },
        )

    def _prepared_hook(self) -> EcrHook:
        hook = self.hook()
        _load_endpoint_data_yielding()
        return hook

    async def _connect(self) -> Any:
        # Called by the first trigger of a client key in the triggerer; the hook is built off the loop.
        hook = await asyncio.to_thread(self._prepared_hook)
        return await hook.get_async_conn()

    async def _watch(self) -> tuple[Any, TagWatch]:
        tag_watch = await asyncio.to_thread(importlib.import_module, _WATCH_MODULE)
        return tag_watch, tag_watch.TagWatch(self.repository_name, tuple(self.tags), self.registry_id)

    async def observations(self) -> AsyncIterator[Observation]:
        """What the registry shows, forever (see :func:`airflow_ecr_retag.core.tag_watch.observe`)."""
        tag_watch, watch = await self._watch()
        key = tag_watch.ClientKey.of(**self.connection_kwargs())
        async for observation in tag_watch.observe(
            watch, poke_interval=self.poke_interval, key=key, connect=self._connect, log=self.log
        ):
            yield observation

    # Airflow 3.3: one ack-mode shared stream per trigger, for its persistence confirmations.
    def shared_stream_key(self) -> tuple[str, str]:
        classpath, kwargs = self.serialize()
        return classpath, json.dumps(kwargs, sort_keys=True, default=str)

    @classmethod
    def create_shared_stream_producer(cls, kwargs: dict[str, Any]) -> _SightingsProducer:
        return _SightingsProducer(cls(**kwargs))

    async def filter_shared_stream(self, shared_stream: AsyncIterator[Any]) -> AsyncIterator[TriggerEvent]:
        async for event in self._announce(shared_stream, confirmed_by_airflow=True):
            yield event

    async def run(self) -> AsyncIterator[TriggerEvent]:
        async def sightings() -> AsyncIterator[_Sighted]:
            async for observation in self.observations():
                yield _Sighted(observation)

        async for event in self._announce(sightings(), confirmed_by_airflow=False):
            yield event

    async def _announce(
        self, sightings: AsyncIterator[Any], *, confirmed_by_airflow: bool
    ) -> AsyncIterator[TriggerEvent]:
        tag_watch, watch = await self._watch()
        memory = _StateStore(getattr(self, "asset_state_store", None), watch)
        remembered = await memory.load(self.log, backoff_limit=tag_watch.MAX_BACKOFF_SECONDS)
        self.log.info("Watching %s every %g s; %s", watch.describe(), self.poke_interval, memory.describe(remembered))
        writes = _InOrderWrites(memory, self.log)
        try:
            async for sighted in sightings:
                changes, updated = tag_watch.judge(remembered, sighted.observation)
                for entry, tags in updated.items():
                    if entry not in remembered:
                        self.log.info("Baseline of %s: %s", entry, _listing(tags))
                remembered.update(updated)
                if updated:
                    writes.after(sighted.persisted, updated)
                for change in changes:
                    payload = change.payload(watch)
                    self.log.info(
                        "Tag %s in %s now points at %s (was %s)",
                        change.tag,
                        self.repository_name,
                        payload["digest"],
                        payload["previous_digest"] or "absent",
                    )
                    yield TriggerEvent(payload)
                if not changes:
                    self.log.info("Polled %s: nothing to announce (%s)", watch.describe(), memory.describe(remembered))
                if not confirmed_by_airflow:
                    sighted.settle(True)
        finally:
            await writes.close()


def _load_endpoint_data_yielding() -> None:
    """Decode botocore's endpoint data into the Amazon provider's shared loader, letting the loop run meanwhile.

    The first aiobotocore client of a process decodes botocore's ``endpoints.json`` (1.2 MB) with
    ``json.loads(..., object_pairs_hook=OrderedDict)``: one C call that holds the GIL for 60-80 ms
    (hundreds on a loaded machine), so the event loop's thread stalls even though the client is
    made in a worker thread. Decoded here with a Python hook, the decoder calls back into Python
    for every object and the loop's thread takes the GIL every switch interval. The provider's
    async sessions share one loader (``base_aws._loader``), whose cache then holds the data; where
    it has none, nothing is done and botocore decodes as usual.
    """
    base_aws = importlib.import_module("airflow.providers.amazon.aws.hooks.base_aws")
    loader = getattr(base_aws, "_loader", None)
    if loader is None or not hasattr(loader, "file_loader"):
        return
    # Two first connections (two connection keys) in two worker threads: one swap at a time, or the
    # second would save the first's stand-in as the default and put it back for good.
    with _SHARED_LOADER_SWAP:
        default = loader.file_loader
        loader.file_loader = _YieldingJSONFileLoader()
        try:
            loader.load_data_with_path("endpoints")
        finally:
            loader.file_loader = default


_SHARED_LOADER_SWAP = threading.Lock()


class _YieldingJSONFileLoader:
    """botocore's file-loader interface (``exists``, ``load_file``), decoding JSON with a Python object hook."""

    @staticmethod
    def _object(pairs: list[tuple[str, Any]]) -> collections.OrderedDict:
        return collections.OrderedDict(pairs)

    def exists(self, file_path: str) -> bool:
        return any(os.path.isfile(file_path + ext) for ext in (".json", ".json.gz"))

    def load_file(self, file_path: str) -> Any:
        for ext, opener in ((".json", open), (".json.gz", gzip.open)):
            if os.path.isfile(file_path + ext):
                with opener(file_path + ext, "rb") as handle:
                    return json.loads(handle.read().decode("utf-8"), object_pairs_hook=self._object)
        return None


class _Sighted:
    """An observation on its way through Airflow's shared stream, and whether its events were stored."""

    __slots__ = ("observation", "persisted")

    def __init__(self, observation: Observation):
        self.observation = observation
        self.persisted: asyncio.Future = asyncio.get_running_loop().create_future()

    def settle(self, stored: bool) -> None:
        if not self.persisted.done():
            self.persisted.set_result(stored)


class _SightingsProducer(SharedStreamProducer):
    """The ack-mode producer: observations out; Airflow's advance tells which ones' events are stored."""

    def __init__(self, trigger: EcrTagEventTrigger):
        self._trigger = trigger

    async def open_stream(self) -> AsyncIterator[tuple[_Sighted, _Sighted]]:
        async for observation in self._trigger.observations():
            sighted = _Sighted(observation)
            yield sighted, sighted

    async def advance(self, batch: Any) -> None:
        # Every event judged from these observations is in the metadata database (or failed to get there).
        for item in batch:
            item.broker_payload.settle(item.outcome.is_clean)


class _StateStore:
    """The watch's memory in the asset state store: one key per entry, ``{"tags": {tag: digest}}``."""

    def __init__(self, store: Any, watch: TagWatch):
        self.watch = watch
        self.accessors = _accessors(store)

    async def load(self, log: Any, *, backoff_limit: float) -> Memory:
        """The memory as stored, read again until it can be: starting without it would take a new
        baseline and never announce a change made while no triggerer ran."""
        failures = 0
        while True:
            try:
                return await self._read()
            except Exception as error:
                failures += 1
                delay = min(2.0**failures, backoff_limit)
                log.warning(
                    "Could not read the memory of %s from the asset state store (%s); trying again in %.0f s",
                    self.watch.describe(),
                    error,
                    delay,
                )
                await asyncio.sleep(delay)

    async def _read(self) -> Memory:
        remembered: Memory = {}
        for entry in self.watch.entries:
            for accessor in self.accessors:
                value = await accessor.aget(self.watch.memory_key(entry))
                if isinstance(value, dict) and isinstance(value.get("tags"), dict):
                    remembered[entry] = dict(value["tags"])
                    break
        return remembered

    async def store(self, updated: Memory) -> None:
        for entry, tags in updated.items():
            for accessor in self.accessors:
                await accessor.aset(self.watch.memory_key(entry), {"tags": tags})

    def describe(self, remembered: Memory) -> str:
        if not self.accessors:
            where = "memory held in this triggerer only (no asset state store: Airflow before 3.3, or no asset)"
        else:
            where = "memory in the asset state store"
        known = "; ".join(
            f"{entry}: {_listing(remembered[entry])}" for entry in self.watch.entries if entry in remembered
        )
        return f"{where}; remembered {known or 'nothing yet (the first poll is the baseline)'}"


def _accessors(store: Any) -> list[Any]:
    """The per-asset accessors of the trigger's ``asset_state_store``.

    Identical watchers of several assets are one trigger with one accessor per asset; Airflow's
    ``AssetStateStoreAccessors`` hands them out only by Asset, which the trigger is not told, so
    they are read from the mapping it keeps.
    """
    if store is None:
        return []
    by_name, by_uri = getattr(store, "_by_name", None), getattr(store, "_by_uri", None)
    if isinstance(by_name, dict) and isinstance(by_uri, dict):
        return [*by_name.values(), *by_uri.values()]
    return [store]


#: How many tags a log line lists; a glob may cover thousands, and the line is built in the loop.
_LISTED_TAGS = 10


def _listing(tags: dict[str, str]) -> str:
    shown = ", ".join(f"{tag} at {digest}" for tag, digest in heapq.nsmallest(_LISTED_TAGS, tags.items())) or "no tag"
    return shown if len(tags) <= _LISTED_TAGS else f"{shown} and {len(tags) - _LISTED_TAGS:,} more"


class _InOrderWrites:
    """Memory writes, each once its observation's events are stored, in the order of the observations."""

    def __init__(self, memory: _StateStore, log: Any):
        self._memory = memory
        self._log = log
        self._queue: asyncio.Queue = asyncio.Queue()
        self._task: asyncio.Task | None = None

    def after(self, persisted: asyncio.Future, updated: Memory) -> None:
        self._queue.put_nowait((persisted, updated))
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._write(), name="ecr-tag-watch-memory")

    async def _write(self) -> None:
        while True:
            persisted, updated = await self._queue.get()
            if not await persisted:
                continue  # Airflow did not store the events: the next triggerer announces them again
            try:
                await self._memory.store(updated)
            except Exception as error:
                self._log.warning("Could not remember %s (%s): a restart announces it again", updated, error)

    async def close(self) -> None:
        # Writes still waiting for their confirmation are dropped: their changes are announced
        # again by the next triggerer (at least once, never lost).
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
