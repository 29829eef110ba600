"""What an asset watcher of ECR tags announces: its memory of the watched tags, and the polls that feed it.

A watch is one repository and its entries: tag names (``prod``) and globs (``v*``). Each entry
has a memory, the digest of every tag it covers as last announced (the Airflow layer keeps it
in the asset state store, one key per entry: :meth:`TagWatch.memory_key`). An
:class:`Observation` is what one poll shows for some entries, and :func:`judge` compares it
with the memory:

- a covered tag at a digest the memory does not hold for it is a :class:`Change`: a tag that
  moved, or one that appeared (``previous_digest`` None);
- a tag that is gone is dropped from the memory without an announcement, so its return is an
  appearance;
- an entry without a memory (its first poll ever) is remembered, not announced: the first
  observation is the baseline.

Where observations come from (:func:`observe`), per interval:

- a watch of tag names only: the loop's shared poller (:mod:`tag_poller`), so every name of
  the repository, those of other watchers and the waits of ``EcrTagTrigger`` included, is
  asked for in one BatchGetImage; a digest not seen before (a change, or the first poll) costs
  one DescribeImages more, for its push time;
- a watch with a glob: one DescribeImages page set, which lists every tag with its push time.

Transient errors back off and retry (inside the poller for names); errors a retry cannot fix
(a missing repository, access denied) are logged and retried at the longest backoff: a watcher
has no task to fail and must not stop watching because a repository is created late.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import weakref
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from airflow_ecr_retag.core import ecr, validation
from airflow_ecr_retag.core.backoff import MAX_BACKOFF_SECONDS, backoff_seconds
from airflow_ecr_retag.core.errors import EcrPermanentError, is_permanent
from airflow_ecr_retag.core.limits import MAX_IMAGE_IDS
from airflow_ecr_retag.core.promotion import image_uri
from airflow_ecr_retag.core.tag_poller import (
    JOIN_GATHER_SECONDS,
    ClientKey,
    Waiter,
    joined,
    loop_state,
    shared_client,
)
from airflow_ecr_retag.core.tag_wait import TagWait, evaluate

#: The asset state store key of an entry's memory is this prefix, the registry, repository and entry.
MEMORY_KEY_PREFIX = "airflow_ecr_retag.tags:"
#: DescribeImages page size of a glob watch's listing. botocore parses a page in one piece of CPU
#: in the event loop: 100 ImageDetails is a few milliseconds, 1,000 tens of milliseconds (a loop
#: stall of its own), so a listing takes ten calls per 1,000 images, never one long parse.
LISTING_PAGE_SIZE = 100
#: Push-time details kept per event loop (a few hundred bytes each), shared by its watchers.
PUSH_TIMES_KEPT = 4096


@dataclass(frozen=True, slots=True)
class TagWatch:
    """A watch of ``entries`` (tag names and globs, checked by ``validation.watched_tags``) in ``repository_name``."""

    repository_name: str
    entries: tuple[str, ...]
    registry_id: str | None = None

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(e for e in self.entries if not validation.is_glob(e))

    @property
    def globs(self) -> tuple[str, ...]:
        return tuple(e for e in self.entries if validation.is_glob(e))

    def covering(self, tag: str) -> list[str]:
        """The entries that cover ``tag``: its name, and every glob that matches it (``fnmatch``, case-sensitive)."""
        covered = [tag] if tag in self.entries else []
        return covered + [entry for entry in self.globs if validation.glob_matcher(entry)(tag)]

    def memory_key(self, entry: str) -> str:
        return f"{MEMORY_KEY_PREFIX}{self.registry_id or '-'}/{self.repository_name}:{entry}"

    def describe(self) -> str:
        registry = f"{self.registry_id}/" if self.registry_id else ""
        return f"{registry}{self.repository_name}:{','.join(self.entries)}"


@dataclass(frozen=True, slots=True)
class TagRecord:
    """Where a tag points, as a poll saw it."""

    digest: str
    registry_id: str
    image_uri: str
    pushed_at: str | None


@dataclass(frozen=True, slots=True)
class Observation:
    """What one poll saw: for each entry polled, every tag it covers that exists (``{}``: none)."""

    seen: dict[str, dict[str, TagRecord]]


@dataclass(frozen=True, slots=True)
class Change:
    """A watched tag at a digest its memory does not hold: the event to announce."""

    tag: str
    previous_digest: str | None
    record: TagRecord

    def payload(self, watch: TagWatch) -> dict[str, Any]:
        return {
            "repository_name": watch.repository_name,
            "registry_id": self.record.registry_id,
            "tag": self.tag,
            "digest": self.record.digest,
            "previous_digest": self.previous_digest,
            "image_uri": self.record.image_uri,
            "image_pushed_at": self.record.pushed_at,
        }


#: The one per-image failure of BatchGetImage that means the tag is not there; any other (an
#: upstream registry of a pull-through cache unavailable, a KMS error) says nothing about the tag.
ABSENT_FAILURE_CODE = "ImageNotFound"

#: An entry's memory: covered tag -> the digest last announced (or taken as the baseline).
Memory = dict[str, dict[str, str]]


def judge(memory: Memory, observation: Observation) -> tuple[list[Change], Memory]:
    """The changes ``observation`` shows against ``memory``, and the entries whose memory it updates.

    A tag covered by two entries (``prod`` and ``p*``) is announced once.
    """
    changes: dict[str, Change] = {}
    updated: Memory = {}
    for entry, tags in observation.seen.items():
        now = {tag: record.digest for tag, record in tags.items()}
        before = memory.get(entry)
        if before is not None:
            for tag, record in tags.items():
                if before.get(tag) != record.digest and tag not in changes:
                    changes[tag] = Change(tag, before.get(tag), record)
        if now != before:
            updated[entry] = now
    return list(changes.values()), updated


def _pushed_at(detail: dict[str, Any]) -> str | None:
    pushed = detail.get("imagePushedAt")
    return pushed.isoformat() if hasattr(pushed, "isoformat") else pushed


async def observe(
    watch: TagWatch,
    *,
    poke_interval: float,
    key: ClientKey,
    connect: Callable[[], Awaitable[Any]],
    log: logging.Logger,
) -> AsyncIterator[Observation]:
    """Observations of ``watch``, forever: the first covers every entry, later ones only what changed since."""
    failures = 0
    source = _listed if watch.globs else _polled
    while True:
        try:
            async for observation in source(watch, poke_interval, key, connect):
                failures = 0
                yield observation
        except Exception as error:
            failures += 1
            backoff = backoff_seconds(poke_interval, failures, cap=MAX_BACKOFF_SECONDS)
            if is_permanent(error):
                backoff = max(poke_interval, MAX_BACKOFF_SECONDS)
                log.error("Watching %s failed: %s; trying again in %.0f s", watch.describe(), error, backoff)
            else:
                log.warning(
                    "Watching %s: transient error (%s); trying again in %.1f s", watch.describe(), error, backoff
                )
            await asyncio.sleep(backoff)


class _Sighting(Waiter):
    """A member of the repository's shared poller that reports its tag's digest whenever it changes."""

    __slots__ = ("_reported", "_sightings")
    once = False

    def __init__(self, wait: TagWait, poke_interval: float, sightings: asyncio.Queue):
        super().__init__(wait, poke_interval)
        self._sightings = sightings
        self._reported: Any = self  # nothing reported yet: not a digest, not None

    def receive(self, image: ecr.FetchedImage | None, failure: dict[str, Any] | None) -> dict[str, Any] | None:
        try:
            check = evaluate(self.wait, image, failure)
        except EcrPermanentError as error:
            return {"status": "error", "code": error.code, "message": str(error)}
        if image is None and (failure or {}).get("failureCode", ABSENT_FAILURE_CODE) != ABSENT_FAILURE_CODE:
            # A sensor may take UpstreamUnavailable or KmsError for "not yet"; a watcher must not take
            # it for a tag that went away, or the next good poll announces the same digest again.
            return None
        digest = check.digest if check.done else None
        if digest == self._reported:
            return None
        self._reported = digest
        return {"status": "seen", "tag": self.wait.tag, "digest": digest, "registry_id": image and image.registry_id}

    def deliver(self, event: dict[str, Any]) -> None:
        self._sightings.put_nowait(event)

    def forget(self) -> None:
        """Report the tag again at the next poll, even if it has not moved."""
        self._reported = self


class _PushTimes:
    """The details (push time, registry) of digests, read for every watcher of a repository at once.

    A tag moved for 100 watchers of one repository is 100 sightings in one poll round, handed over
    over a few turns of the loop: the first request of a repository waits :data:`JOIN_GATHER_SECONDS`
    for the others, then one DescribeImages (per 100 digests) answers them all. The details of the
    :data:`PUSH_TIMES_KEPT` digests read last are kept, so a watcher that starts later reads none again.
    """

    def __init__(self) -> None:
        self.known: collections.OrderedDict[tuple[Any, str | None, str, str], dict[str, Any]] = (
            collections.OrderedDict()
        )
        self._pending: dict[tuple[Any, str | None, str], tuple[set[str], asyncio.Future]] = {}

    async def read(self, client: Any, watch: TagWatch, digests: set[str]) -> dict[str, dict[str, Any]]:
        where = (client, watch.registry_id, watch.repository_name)
        missing = {d for d in digests if (*where, d) not in self.known}
        while missing:
            batch = self._pending.get(where)
            if batch is None:
                batch = self._pending[where] = (set(), asyncio.get_running_loop().create_future())
                asyncio.get_running_loop().create_task(self._describe(where, watch), name="ecr-tag-push-times")
            batch[0].update(missing)
            await asyncio.shield(batch[1])
            # A digest ECR could not describe (the image went) stays missing: judged at the next poll.
            missing = {d for d in missing if (*where, d) not in self.known and d not in batch[0]}
        return {d: self.known[(*where, d)] for d in digests if (*where, d) in self.known}

    async def _describe(self, where: tuple[Any, str | None, str], watch: TagWatch) -> None:
        await asyncio.sleep(JOIN_GATHER_SECONDS)
        digests, done = self._pending.pop(where)
        client = where[0]
        try:
            ordered = sorted(digests)
            for start in range(0, len(ordered), MAX_IMAGE_IDS):
                batch = ordered[start : start + MAX_IMAGE_IDS]
                await loop_state().work.take(len(batch))
                details = await ecr.describe_images_async(client, watch.repository_name, batch, watch.registry_id)
                for digest, detail in details.items():
                    self.known[(*where, digest)] = detail
                    digests.discard(digest)
                while len(self.known) > PUSH_TIMES_KEPT:
                    self.known.popitem(last=False)
        except Exception as error:
            done.set_exception(error)
            done.exception()  # retrieved: each reader gets it through its own await
            return
        done.set_result(None)


_push_times: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _PushTimes] = weakref.WeakKeyDictionary()


def push_times() -> _PushTimes:
    loop = asyncio.get_running_loop()
    if loop not in _push_times:
        _push_times[loop] = _PushTimes()
    return _push_times[loop]


async def _polled(
    watch: TagWatch, poke_interval: float, key: ClientKey, connect: Callable[[], Awaitable[Any]]
) -> AsyncIterator[Observation]:
    sightings: asyncio.Queue = asyncio.Queue()
    waiters = {
        name: _Sighting(TagWait(watch.repository_name, name, None, watch.registry_id), poke_interval, sightings)
        for name in watch.names
    }
    async with shared_client(key, connect) as client, contextlib.AsyncExitStack() as members:
        for waiter in waiters.values():
            await members.enter_async_context(joined(key, connect, waiter))
        region = client.meta.region_name
        while True:
            batch = [await sightings.get()]
            while not sightings.empty():
                batch.append(sightings.get_nowait())
            for sighting in batch:
                if sighting["status"] == "error":
                    raise EcrPermanentError(sighting["code"], sighting["message"])
            details = await push_times().read(client, watch, {s["digest"] for s in batch if s["digest"]})
            seen: dict[str, dict[str, TagRecord]] = {}
            for sighting in batch:
                tag, digest = sighting["tag"], sighting["digest"]
                if digest is None:
                    seen[tag] = {}
                elif digest in details:
                    registry = details[digest].get("registryId") or sighting["registry_id"]
                    uri = image_uri(registry, region, watch.repository_name, digest)
                    seen[tag] = {tag: TagRecord(digest, registry, uri, _pushed_at(details[digest]))}
                else:
                    waiters[tag].forget()  # the image went between the two reads: judged at the next poll
            if seen:
                yield Observation(seen)


async def _listed(
    watch: TagWatch, poke_interval: float, key: ClientKey, connect: Callable[[], Awaitable[Any]]
) -> AsyncIterator[Observation]:
    loop = asyncio.get_running_loop()
    async with shared_client(key, connect) as client:
        region = client.meta.region_name
        last: dict[str, dict[str, TagRecord]] | None = None
        while True:
            started = loop.time()
            seen: dict[str, dict[str, TagRecord]] = {entry: {} for entry in watch.entries}
            async for page in ecr.describe_pages_async(
                client, watch.repository_name, watch.registry_id, page_size=LISTING_PAGE_SIZE
            ):
                for detail in page.get("imageDetails", []):
                    record = None
                    for tag in detail.get("imageTags", ()):
                        for entry in watch.covering(tag):
                            if record is None:
                                digest, registry = detail["imageDigest"], detail["registryId"]
                                uri = image_uri(registry, region, watch.repository_name, digest)
                                record = TagRecord(digest, registry, uri, _pushed_at(detail))
                            seen[entry][tag] = record
            if seen != last:
                last = seen
                yield Observation(seen)
            await asyncio.sleep(max(0.0, started + poke_interval - loop.time()))
