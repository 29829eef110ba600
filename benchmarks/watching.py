"""Benchmark 6 (issue 13): the longest stall EcrTagEventTrigger watchers cause in the triggerer's event loop.

Each case runs in a child process that has imported what a triggerer's runner has
(``airflow.jobs.triggerer_job_runner``) and runs the watchers the way Airflow 3.3's triggerer
does: the class imported by its path and each trigger built from its serialized kwargs in the
loop, every trigger subscribed to its ack-mode shared stream (``SharedStreamManager``), its
events bound and confirmed persisted a second later, as the runner and the supervisor do (the
asset state store is an in-memory stand-in). A probe callback re-armed every millisecond
measures how late the loop runs it: a stall is the longest such delay, per phase:

- start-up: from importing the class until every watcher has taken its baseline (client made,
  first poll, push times read);
- polling: five quiet intervals;
- change: every watched tag moved at once, until every event is out and its memory written.

The double's server is another process.
"""

from __future__ import annotations

import asyncio
import gc
import json
import os
import subprocess
import sys
import time
from typing import Any

from benchmarks.common import ROOT, environ, table

CLASSPATH = "airflow_ecr_retag.triggers.tag_event_trigger.EcrTagEventTrigger"
INTERVAL = 1.0
CASES = [
    {"name": "no watcher: the probe alone (the machine's own noise)", "watchers": 0, "repositories": 1, "images": 2},
    {
        "name": "1 watcher of 1 tag, the first AWS client of the process",
        "watchers": 1,
        "repositories": 1,
        "images": 2,
        "cold": True,
    },
    {"name": "1 watcher of 1 tag", "watchers": 1, "repositories": 1, "images": 2, "glob": False},
    {"name": "100 watchers of 1 tag each, 10 repositories", "watchers": 100, "repositories": 10, "images": 2},
    {"name": "1 glob watcher (v*), 1,000 images", "watchers": 1, "repositories": 1, "images": 1000, "glob": True},
    {
        "name": "the same with 1,000-image pages (not shipped)",
        "watchers": 1,
        "repositories": 1,
        "images": 1000,
        "glob": True,
        "page_size": 1000,
    },
]


class LoopProbe:
    """A callback re-armed every millisecond; how late the loop runs it is the loop's stall."""

    def __init__(self, period: float = 0.001):
        self.period = period
        self.phase = "start-up"
        self.worst: dict[str, float] = {}
        self._loop = asyncio.get_running_loop()
        self._due = self._loop.time() + period
        self._handle = self._loop.call_at(self._due, self._tick)

    def _tick(self) -> None:
        now = self._loop.time()
        late = now - self._due
        if late > self.worst.get(self.phase, 0.0):
            self.worst[self.phase] = late
        self._due = now + self.period
        self._handle = self._loop.call_at(self._due, self._tick)

    def stop(self) -> None:
        self._handle.cancel()


class GcPauses:
    """The longest garbage collection per phase (a stall that any Python code in the process may bring on)."""

    def __init__(self, probe: LoopProbe):
        self.probe = probe
        self.worst: dict[str, float] = {}
        self._started = 0.0
        gc.callbacks.append(self._callback)

    def _callback(self, phase: str, info: dict) -> None:
        if phase == "start":
            self._started = time.perf_counter()
        else:
            pause = time.perf_counter() - self._started
            if pause > self.worst.get(self.probe.phase, 0.0):
                self.worst[self.probe.phase] = pause

    def stop(self) -> None:
        gc.callbacks.remove(self._callback)


class StateStore:
    def __init__(self) -> None:
        self.values: dict[str, Any] = {}

    async def aget(self, key: str, default: Any = None) -> Any:
        return self.values.get(key, default)

    async def aset(self, key: str, value: Any) -> None:
        self.values[key] = value


def layout(case: dict) -> list[tuple[str, list[str]]]:
    """(repository, tags) of each watcher."""
    if case.get("glob"):
        return [("bench/w0", ["v*"])]
    return [(f"bench/w{w % case['repositories']}", [f"t{w // case['repositories']}"]) for w in range(case["watchers"])]


def seed(remote: Any, case: dict, run_id: str) -> dict[str, list[str]]:
    """Each repository: its images, the watched tags on the first; returns repository -> digests."""
    digests = {}
    watched: dict[str, list[str]] = {}
    for repository, tags in layout(case):
        watched.setdefault(f"{repository}-{run_id}", []).extend(tags)
    for repository, tags in watched.items():
        remote.create_repository(repository)
        if case.get("glob"):
            images = [{"name": f"{run_id}-{i}", "tags": [f"v1.{i}"]} for i in range(case["images"])]
        else:
            images = [{"name": f"{run_id}-{i}", "tags": tags if i == 0 else []} for i in range(case["images"])]
        digests[repository] = remote.seed_many(repository, images)
    return digests


async def child_main(case: dict, endpoint: str, run_id: str) -> dict:
    # What a triggerer's runner has loaded: it is forked from the `airflow triggerer` process.
    import airflow.jobs.triggerer_job_runner  # noqa: F401
    from airflow._shared.module_loading import import_string  # what the triggerer imports triggers with
    from airflow.configuration import conf
    from airflow.triggers.shared_stream import SharedStreamManager

    from airflow_ecr_retag.testing import RemoteEcrDouble

    conf.get("core", "executor")
    remote = RemoteEcrDouble(endpoint)
    digests = await asyncio.to_thread(seed, remote, case, run_id)
    if case.get("page_size"):
        from airflow_ecr_retag.core import tag_watch

        tag_watch.LISTING_PAGE_SIZE = case["page_size"]
    if not case.get("cold"):
        # Another AWS trigger ran first: the process has made an aiobotocore client before (imports,
        # OpenSSL's CA store, botocore's endpoint data), the one-time cost shown by the "cold" case.
        await asyncio.to_thread(_throwaway_client)
    await asyncio.to_thread(remote.reset_calls)
    manager = SharedStreamManager()
    stores: list[StateStore] = []
    events: list[dict] = []
    pending: list[int] = []

    probe = LoopProbe()
    collections = GcPauses(probe)
    started = time.monotonic()
    trigger_class = import_string(CLASSPATH)  # as the triggerer does, in the loop
    await asyncio.sleep(0)
    runners = []
    for index, (repository, tags) in enumerate(layout(case)):
        trigger = trigger_class(
            repository_name=f"{repository}-{run_id}",
            tags=tags,
            poke_interval=INTERVAL,
            aws_conn_id=None,
            region_name="us-east-1",
        )
        store = StateStore()
        trigger.asset_state_store = store
        stores.append(store)
        key = trigger.shared_stream_key()

        async def run(trigger=trigger, key=key, trigger_id=index) -> None:
            stream = manager.subscribe(trigger_id=trigger_id, trigger=trigger, key=key)
            async for event in trigger.filter_shared_stream(stream):
                events.append(event.payload)
                pending.append(manager.bind_pending_event(trigger_id=trigger_id, key=key))

        runners.append(asyncio.ensure_future(run()))
        await asyncio.sleep(0)

    async def confirm_persisted() -> None:  # the supervisor stores events; the next sync confirms them
        while True:
            await asyncio.sleep(1.0)
            confirmed = [seq for seq in pending if seq is not None]
            pending.clear()
            manager.confirm_persisted(confirmed)

    confirmer = asyncio.ensure_future(confirm_persisted())
    while not all(store.values for store in stores) or (not stores and time.monotonic() < started + INTERVAL):
        await asyncio.sleep(0.01)
    start_up = time.monotonic() - started
    probe.phase = "polling"
    await asyncio.sleep(INTERVAL * case.get("quiet_intervals", 5))
    calls = await asyncio.to_thread(remote.calls)
    probe.phase = "change"
    moved = 0
    for repository, repo_digests in digests.items():
        tags = sorted({t for r, ts in layout(case) if f"{r}-{run_id}" == repository for t in ts})
        if case.get("glob"):
            tags = [f"v1.{i}" for i in range(10)]
        moves = [{"tag": tag, "digest": repo_digests[-1]} for tag in tags]
        await asyncio.to_thread(remote.move_tags, repository, moves)
        moved += len(moves)
    change_started = time.monotonic()
    if not moved:  # the control: as long a window as a change takes
        await asyncio.sleep(INTERVAL * 2)
    while len(events) < moved or pending:
        await asyncio.sleep(0.01)
    changed = time.monotonic() - change_started
    probe.stop()
    collections.stop()
    for task in [*runners, confirmer]:
        task.cancel()
    await asyncio.gather(*runners, confirmer, return_exceptions=True)
    await manager.stop_all()
    return {
        "case": case["name"],
        "watchers": len(layout(case)),
        "events": len(events),
        "start_up_seconds": start_up,
        "change_seconds": changed,
        "stall": probe.worst,
        "gc_pause": collections.worst,
        "quiet_calls": dict(calls),
    }


def _throwaway_client() -> None:
    from airflow.providers.amazon.aws.hooks.ecr import EcrHook

    async def make() -> None:
        context = await EcrHook(aws_conn_id=None, region_name="us-east-1").get_async_conn()
        async with context as client:
            await client.describe_repositories(maxResults=1)

    asyncio.run(make())


def run_child(case: dict, endpoint: str, run_id: str) -> dict:
    out = subprocess.run(
        [sys.executable, "-m", "benchmarks.watching", "child", json.dumps(case), endpoint, run_id],
        env={**os.environ, **environ(endpoint)},
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=900,
    )
    if out.returncode != 0:
        raise RuntimeError(out.stderr[-3000:])
    line = next(line for line in out.stdout.splitlines() if line.startswith("RESULT="))
    return json.loads(line[len("RESULT=") :])


def run(endpoint: str, repeats: int = 3, cases: list[dict] = CASES) -> list[dict]:
    results = []
    for case in cases:
        samples = [run_child(case, endpoint, f"{case['watchers']}-{i}-{time.time_ns()}") for i in range(repeats)]
        results.append({"case": case["name"], "samples": samples})
    return results


def report(results: list[dict]) -> str:
    rows = []
    for result in results:
        samples = result["samples"]
        worst = {phase: max(s["stall"].get(phase, 0.0) for s in samples) for phase in ("start-up", "polling", "change")}
        gc_worst = max((max(s.get("gc_pause", {}).values(), default=0.0) for s in samples), default=0.0)
        first = samples[0]
        calls = ", ".join(f"{op} {n}" for op, n in sorted(first["quiet_calls"].items()))
        rows.append(
            [
                result["case"],
                len(samples),
                f"{worst['start-up'] * 1000:.1f} ms",
                f"{worst['polling'] * 1000:.1f} ms",
                f"{worst['change'] * 1000:.1f} ms",
                f"{max(worst.values()) * 1000:.1f} ms",
                f"{gc_worst * 1000:.1f} ms",
                f"{first['events']}",
                calls,
            ]
        )
    return table(
        [
            "case",
            "runs",
            "longest stall: start-up",
            "polling",
            "change",
            "overall",
            "longest garbage collection",
            "events per run",
            "ECR calls, start-up and 5 quiet intervals (1 s)",
        ],
        rows,
    )


if __name__ == "__main__" and len(sys.argv) > 1 and sys.argv[1] == "child":
    result = asyncio.run(child_main(json.loads(sys.argv[2]), sys.argv[3], sys.argv[4]))
    print("RESULT=" + json.dumps(result))
elif __name__ == "__main__":
    from benchmarks.common import served_double, use_double

    with served_double() as (endpoint, _):
        use_double(endpoint)
        results = run(endpoint, repeats=int(os.environ.get("REPEATS", "3")))
    print(json.dumps(results, indent=1))
    print(report(results))
