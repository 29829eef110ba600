"""Benchmark 3 (and issue 8's goals): N deferrable-mode tag waits in one asyncio event loop.

Run as a child process per (design, N) so resident memory is measured cleanly. The double's
server is another process. The "one client per trigger" design is the obvious trigger: its
own hook, aiobotocore client and poll loop per wait, as this package had before the shared
poller. The package design is ``EcrTagTrigger`` as shipped.
"""

from __future__ import annotations

import asyncio
import json
import math
import os
import subprocess
import sys
import time

from benchmarks.common import ROOT, environ, table

INTERVAL = 2.0
REPOSITORIES = 10


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


async def package_trigger(repo: str, tag: str, interval: float) -> dict:
    from airflow_ecr_retag.triggers.tag import EcrTagTrigger

    trigger = EcrTagTrigger(
        repository_name=repo,
        tag=tag,
        poke_interval=interval,
        timeout_at=time.time() + 3600,
        aws_conn_id=None,
        region_name="us-east-1",
    )
    async for event in trigger.run():
        return event.payload
    raise RuntimeError("trigger ended without an event")


DESIGNS = {"one client per trigger (before)": one_client_per_trigger, "shared poller (package)": package_trigger}


def waits_for(n: int, run_id: str) -> list[tuple[str, str]]:
    repositories = min(REPOSITORIES, n)
    return [(f"bench/wait-{run_id}-{i % repositories}", f"wait-{i:04d}") for i in range(n)]


async def child_main(design: str, n: int, endpoint: str, interval: float, limit: float) -> dict:
    import psutil

    from airflow_ecr_retag.testing import RemoteEcrDouble

    remote = RemoteEcrDouble(endpoint)
    process = psutil.Process(os.getpid())
    waits = waits_for(n, f"{list(DESIGNS).index(design)}-{n}-{os.getpid()}")
    repos = sorted({r for r, _ in waits})
    digests = {}
    for repo in repos:
        remote.create_repository(repo)
        [digests[repo]] = remote.seed(repo, [{"kind": "oci", "name": f"{repo}-image", "tags": ["base"]}])
    # Warm up (imports, botocore's loaders, one client made and closed) so the memory figure
    # is the waits' own, not one-time costs that any triggerer has already paid.
    from airflow.providers.amazon.aws.hooks.ecr import EcrHook

    import airflow_ecr_retag.triggers.tag  # noqa: F401

    async with await EcrHook(aws_conn_id=None, region_name="us-east-1").get_async_conn() as warm:
        await warm.batch_get_image(repositoryName=repos[0], imageIds=[{"imageTag": "base"}])

    rss_before = process.memory_info().rss
    cpu_before = sum(process.cpu_times()[:2])
    remote.reset_calls()
    fired: dict[str, float] = {}
    early: list[str] = []
    pushed: dict[str, float] = {}
    wait_fn = DESIGNS[design]

    async def run_one(repo: str, tag: str) -> None:
        event = await wait_fn(repo, tag, interval)
        fired[tag] = time.time()
        if tag not in pushed or event.get("status") != "success":
            early.append(tag)

    tasks = [asyncio.ensure_future(run_one(repo, tag)) for repo, tag in waits]
    # Settle: every wait has started polling; then measure three intervals of waiting.
    await asyncio.sleep(interval * 2)
    rss_waiting = process.memory_info().rss
    calls_start = sum(remote.calls.values())
    window_start = time.monotonic()
    await asyncio.sleep(interval * 3)
    calls_in_window = sum(remote.calls.values()) - calls_start
    window = time.monotonic() - window_start
    # Push every tag, in four waves a quarter interval apart.
    waves = [waits[i::4] for i in range(4)]
    for wave in waves:
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
    _, pending = await asyncio.wait(tasks, timeout=limit)
    for task in pending:
        task.cancel()
    latencies = [fired[t] - pushed[t] for t in fired if t in pushed]
    return {
        "design": design,
        "waits": n,
        "repositories": len(repos),
        "interval": interval,
        "rss_per_wait_kib": (rss_waiting - rss_before) / n / 1024,
        "calls_per_interval": calls_in_window / (window / interval),
        "planned_calls_per_interval": sum(math.ceil(sum(1 for r, _ in waits if r == repo) / 100) for repo in repos)
        if design.startswith("shared")
        else n,
        "fired": len(fired),
        "not_fired": len(pending),
        "fired_before_push": len(early),
        "latency_max": max(latencies) if latencies else None,
        "latency_median": sorted(latencies)[len(latencies) // 2] if latencies else None,
        "cpu_seconds": sum(process.cpu_times()[:2]) - cpu_before,
    }


def run_child(design: str, n: int, endpoint: str, interval: float = INTERVAL, limit: float = 240.0) -> dict:
    out = subprocess.run(
        [sys.executable, "-m", "benchmarks.waiting", "child", design, str(n), endpoint, str(interval), str(limit)],
        env={**os.environ, **environ(endpoint)},
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=limit + 600,
    )
    if out.returncode != 0:
        raise RuntimeError(out.stderr[-3000:])
    line = next(line for line in out.stdout.splitlines() if line.startswith("RESULT="))
    return json.loads(line[len("RESULT=") :])


def run(endpoint: str, sizes: tuple[int, ...] = (1, 100, 1000), interval: float = INTERVAL) -> list[dict]:
    return [run_child(design, n, endpoint, interval) for n in sizes for design in DESIGNS]


def report(results: list[dict]) -> str:
    rows = []
    for r in results:
        within = r["latency_max"] is not None and r["latency_max"] <= r["interval"] + 2 and r["not_fired"] == 0
        rows.append(
            [
                r["design"],
                f"{r['waits']:,} on {r['repositories']} repos",
                f"{r['rss_per_wait_kib']:.0f} KiB",
                f"{r['calls_per_interval']:.1f} (plan {r['planned_calls_per_interval']})",
                "-" if r["latency_max"] is None else f"{r['latency_max']:.2f} s (median {r['latency_median']:.2f} s)",
                f"{r['fired']:,} / {r['waits']:,}",
                r["fired_before_push"],
                f"{r['cpu_seconds']:.1f} s",
                "yes" if within else "no",
            ]
        )
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


if __name__ == "__main__" and len(sys.argv) > 1 and sys.argv[1] == "child":
    design, n, endpoint, interval, limit = (
        sys.argv[2],
        int(sys.argv[3]),
        sys.argv[4],
        float(sys.argv[5]),
        float(sys.argv[6]),
    )
    print("RESULT=" + json.dumps(asyncio.run(child_main(design, n, endpoint, interval, limit))))
