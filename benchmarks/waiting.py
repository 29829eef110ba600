"""Benchmark 3 (issues 8 and 19): N deferrable-mode tag waits in one asyncio event loop, as in one triggerer.

Run as a child process per case so resident memory is measured cleanly. The double's server is
another process. Two designs: "one client per trigger" is the obvious trigger (its own hook,
aiobotocore client and poll loop per wait, as this package had before the shared poller); the
package design is ``EcrTagTrigger`` as shipped, inflated from its serialized row the way Airflow's
triggerer does it.

Every run has a loop-lag probe: a task that sleeps :data:`PROBE_PERIOD` over and over and records
how late it wakes. A late wake-up is time the loop spent running something else without
yielding: every other trigger of the triggerer (and its heartbeat) waited that long. The run has
three phases, and the probe keeps the longest stall of each:

- **start**: every trigger inflated and started, the way the triggerer does after a restart or a
  burst of deferrals, including each trigger's own set-up (hook, shared client), then two
  intervals in which the first polls happen;
- **waiting**: intervals of poll rounds in which no tag exists yet (three, or twenty in the event-loop
  section; the calls are counted);
- **firing**: every tag pushed, in four waves a quarter interval apart, until every wait fired.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import gc
import importlib
import io
import json
import math
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from pathlib import Path

from benchmarks.common import ROOT, environ, table

INTERVAL = 2.0
REPOSITORIES = 10
#: The loop-lag probe's sleep: short, so a stall is seen to within about this much.
PROBE_PERIOD = 0.01
#: The goal of issue 19: no phase blocks the loop longer than this. Airflow's triggerer warns at
#: 0.2 s (``[triggerer] blocked_main_thread_warning_threshold``); its watchdog wakes every 0.1 s.
STALL_GOAL = 0.1
PHASES = ("start", "waiting", "firing")
#: (waits, repositories, start-up heap frozen by the harness, ``[ecr_retag] freeze_settled_heap``) of the
#: event-loop section.
LOOP_CASES = (
    (1_000, 10, False, False),
    (10_000, 10, False, False),
    (10_000, 1, False, False),
    (10_000, 10, False, True),
    (10_000, 1, False, True),
)
#: Runs of each event-loop case, interleaved (every case once, then again): the machine is shared,
#: and a stall that only one run shows is the machine's, not the code's. Every run is reported.
LOOP_RUNS = 2
#: Intervals of the waiting phase: three to count calls; the event-loop section waits longer,
#: long enough to see the full garbage collections that steady polling brings on.
WAITING_INTERVALS = 3
LOOP_WAITING_INTERVALS = 20


class LoopLagProbe:
    """How long the loop was blocked: the lateness of a short sleep, the longest per phase.

    Two things block a loop besides the triggers' own work, and the probe tells them apart:
    the interpreter's full garbage collections (generation 2), which walk every object of the
    process (Airflow's modules, every trigger's task) and are timed through ``gc.callbacks``;
    and the machine, when other processes leave the loop's thread waiting for a core, which
    shows as a stall in which the thread itself ran little (``time.thread_time``).
    """

    def __init__(self) -> None:
        self.phase = "setup"
        #: phase -> the longest lateness; the longest without a full collection in it; the
        #: most CPU the loop's thread ran between two wake-ups without a full collection.
        self.longest: dict[str, float] = {}
        self.longest_without_collection: dict[str, float] = {}
        #: phase -> the CPU the loop's thread ran during that longest stall (the rest it waited for a core).
        self.cpu_of_longest_without_collection: dict[str, float] = {}
        self.busiest_without_collection: dict[str, float] = {}
        self.over_goal: dict[str, int] = {}
        #: phase -> (wall, CPU) seconds of each full collection.
        self.full_collections: dict[str, list[tuple[float, float]]] = {}
        self._collected = 0
        self._collecting_since: tuple[float, float] | None = None

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        gc.callbacks.append(self._collection)
        try:
            while True:
                phase, collected = self.phase, self._collected
                asleep_at, cpu_at = loop.time(), time.thread_time()
                await asyncio.sleep(PROBE_PERIOD)
                late = loop.time() - asleep_at - PROBE_PERIOD
                busy = time.thread_time() - cpu_at
                # A stall is charged to the phase in which it began.
                self.longest[phase] = max(self.longest.get(phase, 0.0), late)
                self.over_goal[phase] = self.over_goal.get(phase, 0) + (late > STALL_GOAL)
                if self._collected == collected:
                    if late >= self.longest_without_collection.get(phase, 0.0):
                        self.longest_without_collection[phase] = late
                        self.cpu_of_longest_without_collection[phase] = busy
                    self.busiest_without_collection[phase] = max(self.busiest_without_collection.get(phase, 0.0), busy)
        finally:
            gc.callbacks.remove(self._collection)

    def _collection(self, stage: str, info: dict) -> None:
        if info["generation"] != 2:
            return
        if stage == "start":
            self._collecting_since = (time.perf_counter(), time.thread_time())
        elif self._collecting_since is not None:
            self._collected += 1
            wall, cpu = self._collecting_since
            pause = (time.perf_counter() - wall, time.thread_time() - cpu)
            self.full_collections.setdefault(self.phase, []).append(pause)


async def one_client_per_trigger(repo: str, tag: str, interval: float) -> dict:
    from airflow.providers.amazon.aws.hooks.ecr import EcrHook

    from airflow_ecr_retag.core import ecr

    hook = EcrHook(aws_conn_id=None, region_name="us-east-1")
    async with await hook.get_async_conn() as client:
        while True:
            response = await client.batch_get_image(**ecr.batch_get_params(repo, [ecr.ref(tag=tag)]))
            found, _ = ecr.parse_batch_get(response, {("tag", tag)})
            if ("tag", tag) in found:
                return {"status": "success", "digest": found[("tag", tag)].digest}
            await asyncio.sleep(interval)


def before_design(repo: str, tag: str, interval: float) -> Callable[[], Awaitable[dict]]:
    return lambda: one_client_per_trigger(repo, tag, interval)


def package_design(repo: str, tag: str, interval: float) -> Callable[[], Awaitable[dict]]:
    """The trigger row as the metadata DB stores it; the returned step inflates and runs it."""
    from airflow_ecr_retag.triggers.tag import EcrTagTrigger

    classpath, kwargs = EcrTagTrigger(
        repository_name=repo,
        tag=tag,
        poke_interval=interval,
        timeout_at=time.time() + 3600,
        aws_conn_id=None,
        region_name="us-east-1",
    ).serialize()
    kwargs = json.loads(json.dumps(kwargs))

    def inflate() -> Awaitable[dict]:
        module, _, name = classpath.rpartition(".")
        trigger = getattr(importlib.import_module(module), name)(**kwargs)
        return first_event(trigger)

    return inflate


async def first_event(trigger) -> dict:
    async for event in trigger.run():
        return event.payload
    raise RuntimeError("trigger ended without an event")


DESIGNS = {"one client per trigger (before)": before_design, "shared poller (package)": package_design}
PACKAGE = "shared poller (package)"


async def start_like_the_triggerer(starts: Sequence[Callable[[], Awaitable[None]]]) -> list[asyncio.Task]:
    """Start every wait the way ``TriggerRunner.create_triggers`` does (airflow/jobs/triggerer_job_runner.py).

    It drains its queue of new triggers in one pass: per trigger it yields to the loop
    (``await asyncio.sleep(0)``) before and after loading the class, inflates the trigger from its
    kwargs and creates its task. Its own per-trigger work (logging, spans, greenback's portal) is
    left out: it is the same for every trigger, whichever package it comes from.
    """
    tasks = []
    for start in starts:
        await asyncio.sleep(0)
        await asyncio.sleep(0)
        tasks.append(asyncio.create_task(start()))
    return tasks


def waits_for(n: int, repositories: int, run_id: str) -> list[tuple[str, str]]:
    repositories = min(repositories, n)
    return [(f"bench/wait-{run_id}-{i % repositories}", f"wait-{i:05d}") for i in range(n)]


async def warm_up(repo: str) -> None:
    """Imports, botocore's loaders, one client made and used and closed: what any triggerer has already paid.

    So the memory figure is the waits' own, and a full collection walks what a triggerer's does.
    """
    from airflow.providers.amazon.aws.hooks.ecr import EcrHook

    import airflow_ecr_retag.triggers.tag  # noqa: F401

    async with await EcrHook(aws_conn_id=None, region_name="us-east-1").get_async_conn() as warm:
        await warm.batch_get_image(repositoryName=repo, imageIds=[{"imageTag": "base"}])


async def child_baseline(endpoint: str) -> dict:
    """What one full garbage collection of the warmed-up process costs before any wait starts."""
    from airflow_ecr_retag.testing import RemoteEcrDouble

    repo = f"bench/baseline-{os.getpid()}"
    RemoteEcrDouble(endpoint).create_repository(repo)
    RemoteEcrDouble(endpoint).seed(repo, [{"kind": "oci", "name": "baseline", "tags": ["base"]}])
    await warm_up(repo)
    pauses = []
    for _ in range(3):
        wall, cpu = time.perf_counter(), time.thread_time()
        gc.collect()
        pauses.append((time.perf_counter() - wall, time.thread_time() - cpu))
    return {
        "objects": len(gc.get_objects()),
        "full_collection": sorted(pauses)[1],  # the median of three, by wall time
        "load_average": os.getloadavg(),
    }


async def child_main(case: dict, endpoint: str) -> dict:
    import psutil

    from airflow_ecr_retag.testing import RemoteEcrDouble

    design, n, interval, limit = case["design"], case["n"], case["interval"], case["limit"]
    repositories = case.get("repositories", REPOSITORIES)
    remote = RemoteEcrDouble(endpoint)
    process = psutil.Process(os.getpid())
    load_before = os.getloadavg()
    waits = waits_for(n, repositories, f"{list(DESIGNS).index(design)}-{n}-{os.getpid()}")
    repos = sorted({r for r, _ in waits})
    digests = {}
    for repo in repos:
        remote.create_repository(repo)
        [digests[repo]] = remote.seed(repo, [{"kind": "oci", "name": f"{repo}-image", "tags": ["base"]}])
    await warm_up(repos[0])
    inflaters = [DESIGNS[design](repo, tag, interval) for repo, tag in waits]
    if case.get("frozen_heap"):
        # What an operator can do for a big triggerer: move everything alive after start-up
        # (modules, the provider, botocore's models) out of the garbage collector's sight, so a
        # full collection walks only what came later (gc.freeze(), the docs' advice before fork).
        gc.collect()
        gc.freeze()

    probe = LoopLagProbe()
    probe_task = asyncio.ensure_future(probe.run())
    await asyncio.sleep(PROBE_PERIOD * 5)
    rss_before = process.memory_info().rss
    cpu_before = sum(process.cpu_times()[:2])
    remote.reset_calls()
    fired: dict[str, float] = {}
    early: list[str] = []
    pushed: dict[str, float] = {}

    all_fired = asyncio.Event()

    async def run_one(tag: str, waiting: Awaitable[dict]) -> None:
        event = await waiting
        fired[tag] = time.time()
        if tag not in pushed or event.get("status") != "success":
            early.append(tag)
        if len(fired) == n:
            all_fired.set()

    def start_of(tag: str, inflate: Callable[[], Awaitable[dict]]) -> Callable[[], Awaitable[None]]:
        return lambda: run_one(tag, inflate())

    # Frozen objects are out of gc.get_objects(), still tracked: counted apart (freeze_settled_heap freezes the waits).
    objects_before = len(gc.get_objects()) + gc.get_freeze_count()
    probe.phase = "start"
    started = time.monotonic()
    tasks = await start_like_the_triggerer(
        [start_of(tag, inflate) for (_, tag), inflate in zip(waits, inflaters, strict=True)]
    )
    inflated = time.monotonic() - started
    # Settle: every wait has started polling; then measure three intervals of waiting.
    await asyncio.sleep(interval * 2)
    probe.phase = "waiting"
    rss_waiting = process.memory_info().rss
    # The double's control calls block: in a thread, so the probe measures the triggers, not them.
    calls_start = sum((await asyncio.to_thread(lambda: remote.calls)).values())
    window_start, cpu_window_start = time.monotonic(), sum(process.cpu_times()[:2])
    await asyncio.sleep(interval * case.get("waiting_intervals", WAITING_INTERVALS))
    calls_in_window = sum((await asyncio.to_thread(lambda: remote.calls)).values()) - calls_start
    window = time.monotonic() - window_start
    cpu_share_waiting = (sum(process.cpu_times()[:2]) - cpu_window_start) / window
    # Counting every tracked object stops the loop: charged to no phase (the probe's sleeps
    # around it start after the phase ended and end before the next one starts).
    probe.phase = "census"
    await asyncio.sleep(PROBE_PERIOD * 3)
    objects_waiting = len(gc.get_objects()) + gc.get_freeze_count()
    frozen_waiting = gc.get_freeze_count()
    await asyncio.sleep(PROBE_PERIOD * 3)
    probe.phase = "firing"
    # Push every tag, in four waves a quarter interval apart.
    for wave in (waits[i::4] for i in range(4)):
        by_repo: dict[str, list] = {}
        for repo, tag in wave:
            by_repo.setdefault(repo, []).append(tag)
        for repo, tags in by_repo.items():
            for tag in tags:
                pushed[tag] = time.time()  # set before the push lands, so "fired before push" is impossible to hide
            at = await asyncio.to_thread(remote.move_tags, repo, [{"tag": t, "digest": digests[repo]} for t in tags])
            for tag in tags:
                pushed[tag] = at
        await asyncio.sleep(interval / 4)
    # Not asyncio.wait(tasks): it would add and then remove a callback on every task in one go.
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(all_fired.wait(), limit)
    pending = [task for task in tasks if not task.done()]
    await asyncio.sleep(PROBE_PERIOD * 5)  # the probe's last wake-up of the phase
    probe_task.cancel()
    _ = [task.cancel() for task in pending]  # (a loop's variable would keep the last task alive)
    # What gc.freeze() kept that a full collection would have freed: the unreachable objects a
    # collection finds once they are back in its sight (after one that frees everything else).
    await asyncio.gather(*tasks, return_exceptions=True)
    not_fired = len(pending)
    del tasks, pending, inflaters  # as a triggerer drops its finished triggers
    gc.collect()
    frozen_after = gc.get_freeze_count()
    gc.unfreeze()
    garbage_kept_frozen = gc.collect()
    latencies = [fired[t] - pushed[t] for t in fired if t in pushed]
    per_repo = [sum(1 for r, _ in waits if r == repo) for repo in repos]
    return {
        "design": design,
        "waits": n,
        "repositories": len(repos),
        "interval": interval,
        "rss_per_wait_kib": (rss_waiting - rss_before) / n / 1024,
        "calls_per_interval": calls_in_window / (window / interval),
        "planned_calls_per_interval": sum(math.ceil(w / 100) for w in per_repo) if design == PACKAGE else n,
        "fired": len(fired),
        "not_fired": not_fired,
        "fired_before_push": len(early),
        "latency_max": max(latencies) if latencies else None,
        "latency_median": sorted(latencies)[len(latencies) // 2] if latencies else None,
        "cpu_seconds": sum(process.cpu_times()[:2]) - cpu_before,
        "cpu_share_waiting": cpu_share_waiting,
        "inflate_seconds": inflated,
        "tracked_objects_per_wait": (objects_waiting - objects_before) / n,
        #: Objects out of the collector's sight while waiting (gc.freeze()).
        "frozen_objects_waiting": frozen_waiting,
        #: Once every wait ended: objects still frozen, and of those the garbage only a full collection frees.
        "frozen_objects_after": frozen_after,
        "garbage_kept_frozen": garbage_kept_frozen,
        #: (1, 5, 15-minute) load averages when the case started and when it ended.
        "load_average": [load_before, os.getloadavg()],
        "package": os.path.dirname(importlib.import_module("airflow_ecr_retag").__file__),
        "stall_max": {phase: probe.longest.get(phase) for phase in PHASES},
        "stall_max_without_full_collection": {
            phase: probe.longest_without_collection.get(phase, 0.0) for phase in PHASES
        },
        "loop_cpu_of_longest_stall_without_full_collection": {
            phase: probe.cpu_of_longest_without_collection.get(phase, 0.0) for phase in PHASES
        },
        "loop_cpu_max_without_full_collection": {
            phase: probe.busiest_without_collection.get(phase, 0.0) for phase in PHASES
        },
        "stalls_over_goal": {phase: probe.over_goal.get(phase, 0) for phase in PHASES},
        "full_collections": {phase: probe.full_collections.get(phase, []) for phase in PHASES},
    }


def run_child(case: dict, endpoint: str, package_root: str | None = None, mode: str = "child") -> dict:
    """Run ``case`` in a child process, in ``package_root`` (a :func:`revision_tree`) to run another revision."""
    case = {"interval": INTERVAL, "repositories": REPOSITORIES, "limit": 240.0, **case}
    out = subprocess.run(
        [sys.executable, "-m", "benchmarks.waiting", mode, json.dumps(case), endpoint],
        env={
            **os.environ,
            **environ(endpoint),
            # The setting as a deployment sets it: the triggers read it through Airflow's configuration.
            "AIRFLOW__ECR_RETAG__FREEZE_SETTLED_HEAP": str(bool(case.get("freeze_settled_heap"))),
        },
        cwd=package_root or ROOT,  # ``-m`` puts the working directory first on the child's path
        capture_output=True,
        text=True,
        timeout=case["limit"] + 600,
    )
    if out.returncode != 0:
        raise RuntimeError(out.stderr[-3000:])
    line = next(line for line in out.stdout.splitlines() if line.startswith("RESULT="))
    return {
        **json.loads(line[len("RESULT=") :]),
        "frozen_heap": bool(case.get("frozen_heap")),
        "freeze_settled_heap": bool(case.get("freeze_settled_heap")),
    }


def run(endpoint: str, sizes: tuple[int, ...] = (1, 100, 1000), interval: float = INTERVAL) -> list[dict]:
    """Both designs at each size, over up to 10 repositories."""
    return [run_child({"design": design, "n": n, "interval": interval}, endpoint) for n in sizes for design in DESIGNS]


def run_loop(
    endpoint: str,
    cases: tuple[tuple, ...] = LOOP_CASES,
    interval: float = INTERVAL,
    waiting_intervals: int = LOOP_WAITING_INTERVALS,
    package_root: str | None = None,
) -> list[dict]:
    """The package design for each (waits, repositories, frozen start-up heap, freeze_settled_heap), with each
    phase's stalls."""
    return [
        run_child(
            {
                "design": PACKAGE,
                "n": n,
                "repositories": repositories,
                "interval": interval,
                "frozen_heap": frozen,
                "freeze_settled_heap": settled,
                "waiting_intervals": waiting_intervals,
            },
            endpoint,
            package_root,
        )
        for n, repositories, frozen, settled in map(_loop_case, cases)
    ]


def _loop_case(case: tuple) -> tuple[int, int, bool, bool]:
    """(waits, repositories, frozen start-up heap[, freeze_settled_heap]): the setting is off unless given."""
    n, repositories, frozen, *settled = case
    return n, repositories, frozen, bool(settled and settled[0])


def uptime() -> str:
    return subprocess.run(["uptime"], capture_output=True, text=True, check=False).stdout.strip()


@contextlib.contextmanager
def revision_tree(revision: str) -> Iterator[tuple[str, str]]:
    """A temporary directory with ``revision``'s airflow_ecr_retag and this harness: (that directory, the commit id)."""
    commit = subprocess.run(
        ["git", "rev-parse", "--verify", f"{revision}^{{commit}}"], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout.strip()
    with tempfile.TemporaryDirectory() as root:
        archive = subprocess.run(
            ["git", "archive", commit, "airflow_ecr_retag"], cwd=ROOT, capture_output=True, check=True
        ).stdout
        with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
            tar.extractall(root, filter="data")
        shutil.copytree(Path(__file__).resolve().parent, Path(root) / "benchmarks")
        yield root, commit


def run_loop_section(
    endpoint: str,
    cases: tuple[tuple, ...] = LOOP_CASES,
    runs: int = LOOP_RUNS,
    before_revision: str | None = None,
    before: dict | None = None,
    earlier: dict | None = None,
) -> dict:
    """The event-loop section: the baseline collection, every case ``runs`` times, and (with ``before_revision``)
    that revision's figures from the same harness, once each; without it, ``before`` (the last run's) is kept.

    ``earlier``, the last run's section, is kept beside (its own earlier and before dropped): the
    machine is shared, and a re-run at another load must not hide the figures it replaces.
    """
    date = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    section = {"date": date, "uptime": [uptime()], "baseline": run_child({}, endpoint, mode="baseline"), "cases": []}
    for number in range(1, runs + 1):
        section["cases"] += [{**result, "run": number} for result in run_loop(endpoint, cases)]
    section["cases"].sort(
        key=lambda r: (r["waits"], r.get("freeze_settled_heap", False), -r["repositories"], r["frozen_heap"], r["run"])
    )
    if before_revision:
        with revision_tree(before_revision) as (root, commit):
            # A frozen heap is a harness option and the setting is new: neither is in the revision before.
            before_cases = tuple(case for case in map(_loop_case, cases) if not case[2] and not case[3])
            before = {"commit": commit, "cases": run_loop(endpoint, before_cases, package_root=root)}
    section["uptime"].append(uptime())
    section["before"] = before
    section["earlier"] = {k: v for k, v in earlier.items() if k not in ("earlier", "before")} if earlier else None
    return section


def within_interval(r: dict) -> bool:
    return r["latency_max"] is not None and r["latency_max"] <= r["interval"] + 2 and r["not_fired"] == 0


def _latency(r: dict) -> str:
    if r["latency_max"] is None:
        return "-"
    return f"{r['latency_max']:.2f} s (median {r['latency_median']:.2f} s)"


def _calls(r: dict) -> str:
    return f"{r['calls_per_interval']:.1f} (plan {r['planned_calls_per_interval']})"


def report(results: list[dict]) -> str:
    rows = [
        [
            r["design"],
            f"{r['waits']:,} on {r['repositories']} repos",
            f"{r['rss_per_wait_kib']:.0f} KiB",
            _calls(r),
            _latency(r),
            f"{r['fired']:,} / {r['waits']:,}",
            r["fired_before_push"],
            f"{r['cpu_seconds']:.1f} s",
            "yes" if within_interval(r) else "no",
        ]
        for r in results
    ]
    return table(
        [
            "design",
            "waits",
            "resident memory per wait",
            f"ECR calls per {INTERVAL:.0f} s interval",
            "push -> last wait fired",
            "fired",
            "fired before its tag existed",
            "CPU of the loop process",
            "every wait within interval + 2 s",
        ],
        rows,
    )


def _case(r: dict) -> str:
    repos = f"{r['repositories']} repo{'s' if r['repositories'] > 1 else ''}"
    frozen = ", start-up heap frozen" if r.get("frozen_heap") else ""
    settled = ", `freeze_settled_heap`" if r.get("freeze_settled_heap") else ""
    return f"{r['waits']:,} over {repos}{frozen}{settled}" + (f", run {r['run']}" if "run" in r else "")


def _ms(seconds: float) -> str:
    return f"{seconds * 1000:.0f}"


def report_loop(results: list[dict]) -> str:
    """Two tables: how long the loop was blocked in each phase, and what the waits cost."""
    return stall_table(results) + "\n\n" + cost_table(results)


def stall_table(results: list[dict]) -> str:
    def per_phase(values: dict) -> str:
        return " / ".join(_ms(values[p] or 0.0) for p in PHASES)

    def collections(r: dict) -> str:
        pauses = r["full_collections"]
        return " / ".join(
            f"{len(pauses[p])} ({_ms(max(w for w, _ in pauses[p]))}, CPU {_ms(max(c for _, c in pauses[p]))})"
            if pauses[p]
            else "0"
            for p in PHASES
        )

    return table(
        [
            "waits",
            "longest stall, ms: start / waiting / firing",
            "the same, leaving out stalls with a full collection",
            "CPU the loop ran in one stretch, longest, ms (no full collection)",
            "full garbage collections: count (longest ms, its CPU ms)",
            f"stalls over {_ms(STALL_GOAL)} ms: start / waiting / firing",
            "load average (2 cores), start -> end",
        ],
        [
            [
                _case(r),
                per_phase(r["stall_max"]),
                per_phase(r["stall_max_without_full_collection"]),
                per_phase(r["loop_cpu_max_without_full_collection"]),
                collections(r),
                " / ".join(str(r["stalls_over_goal"][p]) for p in PHASES),
                f"{r['load_average'][0][0]:.1f} -> {r['load_average'][1][0]:.1f}",
            ]
            for r in results
        ],
    )


def cost_table(results: list[dict]) -> str:
    return table(
        [
            "waits",
            "resident memory per wait",
            "objects for the collector per wait",
            f"ECR calls per {INTERVAL:.0f} s interval",
            "push -> last wait fired",
            "fired",
            "all triggers started in",
            "CPU of the loop process: whole run (while waiting, share of a core)",
        ],
        [
            [
                _case(r),
                f"{r['rss_per_wait_kib']:.1f} KiB",
                f"{r['tracked_objects_per_wait']:.0f}",
                _calls(r),
                _latency(r),
                f"{r['fired']:,} / {r['waits']:,}",
                f"{r['inflate_seconds']:.1f} s",
                f"{r['cpu_seconds']:.1f} s ({r['cpu_share_waiting']:.0%})",
            ]
            for r in results
        ],
    )


def conditions_loop(section: dict) -> str:
    baseline = section["baseline"]
    if baseline is None:
        return "(not run)"
    wall, cpu = baseline["full_collection"]
    when = f"Measured {section['date']}. " if section.get("date") else ""
    return "\n".join(
        [
            f"{when}`uptime` when the section started and ended: `{section['uptime'][0]}`; `{section['uptime'][-1]}`."
            " Each case's load averages are in its row (1-minute load when it started -> when it ended); two of the"
            " load's units are the benchmark itself (the loop process and the double's server).",
            f"A full collection of the warmed-up process before any wait starts ({baseline['objects']:,} tracked"
            f" objects: Airflow, the Amazon provider, botocore's models, one client made): {_ms(wall)} ms"
            f" ({_ms(cpu)} ms of CPU).",
        ]
    )


def _over_goal(values: dict) -> list[str]:
    return [phase for phase in PHASES if (values[phase] or 0.0) > STALL_GOAL]


def notes_loop(results: list[dict]) -> str:
    """Whether each run at 10,000 waits met the goal, phase by phase, computed from this run."""
    lines = []
    for r in results:
        if r["waits"] < 10_000:
            continue
        goal = f"{_ms(STALL_GOAL)} ms"
        over = _over_goal(r["stall_max"])
        over_without = _over_goal(r["stall_max_without_full_collection"])
        outside = " / ".join(_ms(r["stall_max_without_full_collection"][p]) for p in PHASES)
        if not over:
            verdict = f"every phase under {goal}"
        elif not over_without:
            verdict = (
                f"over {goal} in {' and '.join(over)}, only in stalls with a full collection in them;"
                f" outside those every phase under it ({outside} ms)"
            )
        else:
            cpu_of = r.get("loop_cpu_of_longest_stall_without_full_collection")
            ran = (
                "; in "
                + ", ".join(
                    f"the {p} one the loop's thread ran {_ms(cpu_of[p])} ms of CPU, the rest it waited for a core"
                    for p in over_without
                )
                if cpu_of
                else ""
            )
            verdict = (
                f"over {goal} in {' and '.join(over)}; outside full collections still over in"
                f" {' and '.join(over_without)} ({outside} ms{ran})"
            )
        cpu = max(r["loop_cpu_max_without_full_collection"].values())
        pauses = [pause for phase in PHASES for pause in r["full_collections"][phase]]
        collected = (
            f"{len(pauses)} full collections of {_ms(min(w for w, _ in pauses))}-{_ms(max(w for w, _ in pauses))} ms"
            f" ({_ms(min(c for _, c in pauses))}-{_ms(max(c for _, c in pauses))} ms of CPU)"
            if pauses
            else "no full collection"
        )
        kept = (
            f" {r['frozen_objects_waiting']:,} objects frozen while waiting; once every wait had ended,"
            f" {r['frozen_objects_after']:,} still frozen, of which {r['garbage_kept_frozen']:,} garbage that only a"
            f" full collection frees ({r['garbage_kept_frozen'] / r['waits']:.2f} per wait): what the freezes keep."
            if r.get("freeze_settled_heap") and "garbage_kept_frozen" in r
            else ""
        )
        lines.append(
            f"- {_case(r)} (load {r['load_average'][0][0]:.1f} -> {r['load_average'][1][0]:.1f}): {verdict}."
            f" The most CPU the loop ran in one stretch outside collections: {_ms(cpu)} ms; {collected};"
            f" {r['rss_per_wait_kib']:.1f} KiB per wait; {r['calls_per_interval']:.1f} calls per interval"
            f" (plan {r['planned_calls_per_interval']}).{kept}"
        )
    return "\n".join(lines)


def report_earlier(section: dict) -> str:
    """The last run of this section before this one: its conditions, stalls and verdicts."""
    earlier = section.get("earlier")
    if not earlier:
        return "(none kept)"
    return "\n\n".join([conditions_loop(earlier), stall_table(earlier["cases"]), notes_loop(earlier["cases"])])


def report_before(section: dict) -> str:
    """The previous revision's figures from the same harness, in the same columns as the current ones."""
    before = section.get("before")
    if not before:
        return "(not measured)"
    return f"Commit {before['commit'][:7]}, the same harness, one run each:\n\n" + report_loop(before["cases"])


if __name__ == "__main__" and len(sys.argv) > 1 and sys.argv[1] in ("child", "baseline"):
    case, endpoint = json.loads(sys.argv[2]), sys.argv[3]
    outcome = child_main(case, endpoint) if sys.argv[1] == "child" else child_baseline(endpoint)
    print("RESULT=" + json.dumps(asyncio.run(outcome)))
