"""Benchmark 2: tag hygiene on a repository of 10,000 images carrying 30,000 tags, dry run and real.

Each measured run is a fresh child process (``python -m benchmarks.hygiene child``), so its
peak memory is its own; the parent counts the ECR calls on the double's server.
"""

from __future__ import annotations

import json
import math
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


def seed(remote, repo: str, images: int) -> dict[str, int]:
    """``images`` images over 60 days: sha-<i>, build-<i>, and pr-<i> or ci-<i> each; latest on the newest."""
    now = time.time()
    remote.create_repository(repo)
    specs = []
    for i in range(images):
        tags = [f"sha-{i:05d}", f"build-{i:05d}", f"pr-{i:05d}" if i % 2 == 0 else f"ci-{i:05d}"]
        if i == images - 1:
            tags.append("latest")
        specs.append(
            {
                "kind": "oci",
                "name": f"{repo}-{i}",
                "tags": tags,
                "pushed_at": now - (images - i) * SPAN_DAYS * 86400 / images,
            }
        )
    for start in range(0, len(specs), 2000):
        remote.seed(repo, specs[start : start + 2000])
    # ">=": an image pushed exactly 14 days before seeding is older than that by the time hygiene runs.
    old_pr = sum(1 for i in range(0, images, 2) if (images - i) * SPAN_DAYS / images >= 14)
    removals = 1 + max(0, images - 20) + old_pr
    return {"images": images, "tags": sum(len(s["tags"]) for s in specs), "removals": removals}


def child(repo: str, dry_run: bool) -> None:
    import os

    import psutil

    from airflow_ecr_retag import EcrTagHygieneOperator

    class TaskInstance:
        def xcom_push(self, key, value):
            pass

    rss_before = psutil.Process(os.getpid()).memory_info().rss
    operator = EcrTagHygieneOperator(
        task_id="hygiene",
        repository_name=repo,
        rules=RULES,
        protect=PROTECT,
        dry_run=dry_run,
        aws_conn_id=None,
        region_name="us-east-1",
    )
    started = time.perf_counter()
    report = operator.execute({"ti": TaskInstance()})
    wall = time.perf_counter() - started
    import resource

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    print(
        "RESULT="
        + json.dumps(
            {
                "wall": wall,
                "peak_rss": peak,
                "rss_before": rss_before,
                "removed": len(report["removed"]),
                "skipped": len(report["skipped_last_tag"]),
                "failed": len(report["failed"]),
            }
        )
    )


def run_child(endpoint: str, repo: str, dry_run: bool) -> dict:
    out = subprocess.run(
        [sys.executable, "-m", "benchmarks.hygiene", "child", repo, "1" if dry_run else "0"],
        env={**__import__("os").environ, **environ(endpoint)},
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=1800,
    )
    if out.returncode != 0:
        raise RuntimeError(out.stderr[-3000:] or out.stdout[-3000:])
    line = next(line for line in out.stdout.splitlines() if line.startswith("RESULT="))
    return json.loads(line[len("RESULT=") :])


def run(endpoint: str, remote, images: int = 10_000, repeats: int = 3) -> dict:
    results = {}
    for mode in ("dry run", "real"):
        samples = []
        for r in range(repeats):
            repo = f"bench/hygiene-{images}-{mode.replace(' ', '')}-{r}"
            expected = seed(remote, repo, images)
            remote.reset_calls()
            result = run_child(endpoint, repo, dry_run=mode == "dry run")
            result["calls"] = dict(remote.calls())
            result["expected"] = expected
            if mode == "real":
                result["tags_left"] = len(remote.tags(repo))
            samples.append(result)
        results[mode] = samples
    return results


def report(results: dict) -> str:
    rows = []
    for mode, samples in results.items():
        first = samples[0]
        calls = Counter(first["calls"])
        expected = first["expected"]
        bound = math.ceil(expected["images"] / 1000) + (
            0 if mode == "dry run" else math.ceil(expected["removals"] / 100)
        )
        rows.append(
            [
                mode,
                f"{expected['images']:,} / {expected['tags']:,}",
                f"{first['removed']:,}",
                ", ".join(f"{op} {n}" for op, n in sorted(calls.items())),
                sum(calls.values()),
                bound,
                fmt([s["wall"] for s in samples]),
                fmt([(s["peak_rss"] - s["rss_before"]) for s in samples], "MiB", 1 / 2**20, 1),
                fmt([s["peak_rss"] for s in samples], "MiB", 1 / 2**20, 0),
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
            "wall time, median [min-max]",
            "peak RSS added by execute",
            "peak RSS of the task process",
        ],
        rows,
    )


if __name__ == "__main__" and len(sys.argv) > 1 and sys.argv[1] == "child":
    child(sys.argv[2], sys.argv[3] == "1")
