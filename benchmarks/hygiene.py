"""Benchmark 2: tag hygiene at scale.

- :func:`run`: one repository of 10,000 images carrying 30,000 tags, dry run and real;
- :func:`run_large`: one repository of 100,000 images and 300,000 tags (ECR's default quota);
- :func:`run_many`: 200 repositories of 500 images each, through a glob, one repository at a
  time and ``max_concurrent_repositories`` at a time.

Each measured run is a fresh child process (``python -m benchmarks.hygiene child <json>``), so
its peak memory is its own; the parent counts the ECR calls on the double's server. The
repositories are seeded with ``seed_many`` (one shared blob set, distinct manifests) and
deleted after their run, so the server holds one benchmark's images at a time.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import time
from collections import Counter

from benchmarks.common import ROOT, environ, fmt, table

RULES = [
    {"tag_pattern": "latest"},
    {"tag_pattern": "sha-*", "keep_latest": 20},
    {"tag_pattern": "pr-*", "older_than_days": 14},
]
PROTECT = ["v*", "prod", "stable"]
SPAN_DAYS = 60
SEED_BATCH = 10_000


def seed(remote, repo: str, images: int) -> dict[str, int]:
    """``images`` images over 60 days: sha-<i>, build-<i>, and pr-<i> or ci-<i> each; latest on the newest."""
    now = time.time()
    remote.create_repository(repo)
    specs = []
    for i in range(images):
        tags = [f"sha-{i:06d}", f"build-{i:06d}", f"pr-{i:06d}" if i % 2 == 0 else f"ci-{i:06d}"]
        if i == images - 1:
            tags.append("latest")
        specs.append(
            {"name": f"{repo}-{i}", "tags": tags, "pushed_at": now - (images - i) * SPAN_DAYS * 86400 / images}
        )
    for start in range(0, len(specs), SEED_BATCH):
        remote.seed_many(repo, specs[start : start + SEED_BATCH])
    # ">=": an image pushed exactly 14 days before seeding is older than that by the time hygiene runs.
    old_pr = sum(1 for i in range(0, images, 2) if (images - i) * SPAN_DAYS / images >= 14)
    removals = 1 + max(0, images - 20) + old_pr
    return {"images": images, "tags": sum(len(s["tags"]) for s in specs), "removals": removals}


def delete_repositories(endpoint: str, names: list[str]) -> None:
    import boto3

    client = boto3.client("ecr", endpoint_url=endpoint, region_name="us-east-1")
    for name in names:
        client.delete_repository(repositoryName=name, force=True)


def child(arguments: dict) -> None:
    import resource

    import psutil

    from airflow_ecr_retag import EcrTagHygieneOperator

    class TaskInstance:
        def xcom_push(self, key, value):
            pass

    rss_before = psutil.Process(os.getpid()).memory_info().rss
    operator = EcrTagHygieneOperator(
        task_id="hygiene", rules=RULES, protect=PROTECT, aws_conn_id=None, region_name="us-east-1", **arguments
    )
    started, cpu_before = time.perf_counter(), time.process_time()
    report = operator.execute({"ti": TaskInstance()})
    wall, cpu_after = time.perf_counter() - started, time.process_time()
    usage = resource.getrusage(resource.RUSAGE_SELF)
    peak = usage.ru_maxrss * 1024
    reports = list(report["repositories"].values()) if "repositories" in report else [report]
    outcome = {
        "wall": wall,
        "cpu": cpu_after - cpu_before,
        "peak_rss": peak,
        "rss_before": rss_before,
        "removed": sum(len(r["removed"]) for r in reports),
        "skipped": sum(len(r["skipped_last_tag"]) for r in reports),
        "failed": sum(len(r["failed"]) for r in reports),
        "repositories": len(reports),
    }
    print("RESULT=" + json.dumps(outcome))


def run_child(endpoint: str, arguments: dict) -> dict:
    out = subprocess.run(
        [sys.executable, "-m", "benchmarks.hygiene", "child", json.dumps(arguments)],
        env={**os.environ, **environ(endpoint)},
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=3600,
    )
    if out.returncode != 0:
        raise RuntimeError(out.stderr[-3000:] or out.stdout[-3000:])
    line = next(line for line in out.stdout.splitlines() if line.startswith("RESULT="))
    return json.loads(line[len("RESULT=") :])


def _measure(endpoint: str, remote, arguments: dict) -> dict:
    """One run in a child process: its report's counts, wall and CPU time, peak memory; the
    server's CPU time and calls; the machine's load average (1 minute) before and after."""
    remote.reset_calls()
    load_before, server_cpu = os.getloadavg()[0], remote.cpu_seconds()
    result = run_child(endpoint, arguments)
    result["server_cpu"] = remote.cpu_seconds() - server_cpu
    result["load"] = [load_before, os.getloadavg()[0]]
    result["calls"] = dict(remote.calls)
    return result


def run(endpoint: str, remote, images: int = 10_000, repeats: int = 3) -> dict:
    """One repository of ``images`` images, dry run and real, ``repeats`` times each."""
    results = {}
    for mode in ("dry run", "real"):
        samples = []
        for r in range(repeats):
            repo = f"bench/hygiene-{images}-{mode.replace(' ', '')}-{r}"
            expected = seed(remote, repo, images)
            result = _measure(endpoint, remote, {"repository_name": repo, "dry_run": mode == "dry run"})
            result["expected"] = expected
            if mode == "real":
                result["tags_left"] = len(remote.tags(repo))
            delete_repositories(endpoint, [repo])
            samples.append(result)
        results[mode] = samples
    return results


def run_large(endpoint: str, remote, images: int = 100_000) -> dict:
    """ECR's default quota in one repository: ``images`` images, 3 tags each; dry run, then real."""
    return run(endpoint, remote, images=images, repeats=1)


def run_many(
    endpoint: str, remote, repositories: int = 200, images: int = 500, concurrency: tuple[int, ...] = (1, 8)
) -> dict:
    """``repositories`` repositories of ``images`` images under ``many/``, cleaned through the glob
    ``many/*``, for each ``max_concurrent_repositories`` in ``concurrency`` (fresh seeds each)."""
    results = {}
    for workers in concurrency:
        names = [f"many/r{i:03d}" for i in range(repositories)]
        expected = [seed(remote, name, images) for name in names]
        result = _measure(endpoint, remote, {"repository_name": "many/*", "max_concurrent_repositories": workers})
        result["expected"] = {key: sum(e[key] for e in expected) for key in ("images", "tags", "removals")}
        result["expected"]["repositories"] = repositories
        result["tags_left"] = sum(len(remote.tags(name)) for name in names)
        delete_repositories(endpoint, names)
        results[str(workers)] = result
    return results


def lower_bound(expected: dict, dry_run: bool, repositories: int = 1) -> int:
    """ceil(images / 1000) DescribeImages pages per repository, plus for a real run ceil(removals / 100)
    BatchDeleteImage calls (per repository)."""
    per_repository = {key: expected[key] / repositories for key in ("images", "removals")}
    pages = math.ceil(per_repository["images"] / 1000)
    deletes = 0 if dry_run else math.ceil(per_repository["removals"] / 100)
    return repositories * (pages + deletes)


def recheck_bound(expected: dict, repositories: int = 1) -> int:
    """The re-check a real run adds: per repository the cheaper of its pages again and
    ceil(affected images / 100) by digest; at most the pages."""
    return repositories * math.ceil(expected["images"] / repositories / 1000)


def _load(samples: list[dict]) -> str:
    loads = [value for s in samples for value in s.get("load", [])]
    return f"{min(loads):.1f}-{max(loads):.1f}" if loads else "?"


def report(results: dict) -> str:
    rows = []
    for mode, samples in results.items():
        first = samples[0]
        calls = Counter(first["calls"])
        expected = first["expected"]
        dry = mode == "dry run"
        bound = lower_bound(expected, dry)
        rows.append(
            [
                mode,
                f"{expected['images']:,} / {expected['tags']:,}",
                f"{first['removed']:,}",
                ", ".join(f"{op} {n}" for op, n in sorted(calls.items())),
                sum(calls.values()),
                bound,
                bound if dry else bound + recheck_bound(expected),
                fmt([s["wall"] for s in samples]),
                fmt([s.get("cpu", 0) for s in samples], digits=1),
                fmt([s.get("server_cpu", 0) for s in samples], digits=1),
                fmt([(s["peak_rss"] - s["rss_before"]) for s in samples], "MiB", 1 / 2**20, 1),
                fmt([s["peak_rss"] for s in samples], "MiB", 1 / 2**20, 0),
                _load(samples),
            ]
        )
    return table(
        [
            "mode",
            "images / tags",
            "tags removed",
            "ECR calls by operation",
            "calls",
            "lower bound",
            "lower bound + re-check",
            "wall time, median [min-max]",
            "CPU of the task",
            "CPU of the double's server",
            "peak RSS added by execute",
            "peak RSS of the task process",
            "load average (1 min)",
        ],
        rows,
    )


def report_many(results: dict) -> str:
    rows = []
    for workers, result in results.items():
        calls = Counter(result["calls"])
        expected = result["expected"]
        repositories = expected["repositories"]
        bound = 1 + lower_bound(expected, dry_run=False, repositories=repositories)
        rows.append(
            [
                workers,
                f"{repositories} x {expected['images'] // repositories:,}",
                f"{result['removed']:,}",
                ", ".join(f"{op} {n}" for op, n in sorted(calls.items())),
                sum(calls.values()),
                bound,
                bound + recheck_bound(expected, repositories),
                f"{result['wall']:.1f} s",
                f"{result.get('cpu', 0):.1f} s",
                f"{result.get('server_cpu', 0):.1f} s",
                f"{(result['peak_rss'] - result['rss_before']) / 2**20:.1f} MiB",
                _load([result]),
            ]
        )
    return table(
        [
            "repositories in flight",
            "repositories x images",
            "tags removed",
            "ECR calls by operation",
            "calls",
            "lower bound",
            "lower bound + re-checks",
            "wall time",
            "CPU of the task",
            "CPU of the double's server",
            "peak RSS added by execute",
            "load average (1 min)",
        ],
        rows,
    )


if __name__ == "__main__" and len(sys.argv) > 1 and sys.argv[1] == "child":
    child(json.loads(sys.argv[2]))
