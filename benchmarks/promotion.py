"""Benchmark 1: promotion with EcrRetagOperator vs the AWS CLI recipe and its plain boto3 transcription."""

from __future__ import annotations

import re
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from benchmarks.common import environ, fmt, table

RECIPE = r"""
set -euo pipefail
MANIFEST=$(aws ecr batch-get-image --repository-name "$REPO" --image-ids imageTag="$SOURCE" \
  --output text --query 'images[].imageManifest')
for TAG in $TARGETS; do
  aws ecr put-image --repository-name "$REPO" --image-tag "$TAG" --image-manifest "$MANIFEST" > /dev/null
done
if [ "$MOVE" = 1 ]; then
  aws ecr batch-delete-image --repository-name "$REPO" --image-ids imageTag="$SOURCE" > /dev/null
fi
"""


@dataclass(frozen=True)
class Case:
    name: str
    targets: int
    again: bool = False
    move: bool = False


CASES = [
    Case("promote to 1 tag", 1),
    Case("promote to 3 tags", 3),
    Case("promote to 10 tags", 10),
    Case("the same promotion again (3 tags)", 3, again=True),
    Case("move (add the new tag, remove the old)", 1, move=True),
]


def cli_recipe(endpoint: str, repo: str, targets: list[str], move: bool) -> None:
    bin_dir = str(Path(sys.executable).parent)
    env = {
        "PATH": f"{bin_dir}:/usr/bin:/bin",
        **environ(endpoint),
        "REPO": repo,
        "SOURCE": "rc",
        "TARGETS": " ".join(targets),
        "MOVE": "1" if move else "0",
    }
    result = subprocess.run(["bash", "-c", RECIPE], env=env, capture_output=True, text=True, timeout=600)
    if result.returncode != 0:
        raise RuntimeError(
            result.stderr.strip().splitlines()[-1] if result.stderr.strip() else f"exit {result.returncode}"
        )


def boto3_recipe(endpoint: str, repo: str, targets: list[str], move: bool) -> None:
    import boto3

    client = boto3.client("ecr", endpoint_url=endpoint, region_name="us-east-1")
    manifest = client.batch_get_image(repositoryName=repo, imageIds=[{"imageTag": "rc"}])["images"][0]["imageManifest"]
    for tag in targets:
        client.put_image(repositoryName=repo, imageTag=tag, imageManifest=manifest)
    if move:
        client.batch_delete_image(repositoryName=repo, imageIds=[{"imageTag": "rc"}])


def operator(endpoint: str, repo: str, targets: list[str], move: bool) -> None:
    from airflow_ecr_retag import EcrRetagOperator

    class TaskInstance:
        def xcom_push(self, key, value):
            pass

    EcrRetagOperator(
        task_id="promote",
        repository_name=repo,
        source_tag="rc",
        target_tags=targets,
        remove_source_tag=move,
        aws_conn_id=None,
        region_name="us-east-1",
    ).execute({"ti": TaskInstance()})


IMPLEMENTATIONS: dict[str, Callable[[str, str, list[str], bool], None]] = {
    "AWS CLI recipe": cli_recipe,
    "boto3 recipe": boto3_recipe,
    "EcrRetagOperator": operator,
}


def measure(endpoint: str, remote, case: Case, name: str, run: Callable, repeats: int, serial: list[int]) -> dict:
    times, calls, puts, outcomes, kept = [], [], [], set(), True
    for _ in range(repeats):
        serial[0] += 1
        repo = f"bench/promo{serial[0]}"
        remote.create_repository(repo)
        [digest] = remote.seed(repo, [{"kind": "oci-index", "name": f"release-{serial[0]}", "tags": ["rc"]}])
        targets = [f"v1.{i}" for i in range(case.targets)]
        if case.again:
            operator(endpoint, repo, targets, False)
        remote.reset_calls()
        started = time.perf_counter()
        try:
            run(endpoint, repo, targets, case.move)
            outcomes.add("ok")
        except Exception as error:  # the recipe's failures are results, not crashes
            code = re.search(r"\((\w+Exception)\)", str(error))
            outcomes.add(f"fails: {code.group(1) if code else str(error)[-80:]}")
        times.append(time.perf_counter() - started)
        counted = remote.calls
        calls.append(sum(counted.values()))
        puts.append(counted.get("PutImage", 0))
        tags = remote.tags(repo)
        kept = kept and all(tags.get(t) == digest for t in targets)
    return {
        "case": case.name,
        "impl": name,
        "times": times,
        "calls": calls,
        "puts": puts,
        "outcome": "; ".join(sorted(outcomes)),
        "digest_kept": kept,
    }


def run(endpoint: str, remote, repeats: int = 5, cases: list[Case] = CASES) -> list[dict]:
    serial = [0]
    return [
        measure(endpoint, remote, case, name, impl, repeats, serial)
        for case in cases
        for name, impl in IMPLEMENTATIONS.items()
    ]


def median(values: list[float]) -> float:
    return sorted(values)[len(values) // 2]


def notes(results: list[dict]) -> str:
    """The figures worth explaining, computed from this run."""

    def of(case: str, impl: str) -> dict:
        return next(r for r in results if r["case"] == case and r["impl"] == impl)

    lines = []
    cases = sorted({r["case"] for r in results}, key=[r["case"] for r in results].index)
    overheads = [median(of(c, "EcrRetagOperator")["times"]) - median(of(c, "boto3 recipe")["times"]) for c in cases]
    lines.append(
        f"- EcrRetagOperator takes {median(overheads) * 1000:.0f} ms (median over the cases) more than the bare boto3 "
        "transcription: the Amazon provider's hook setup (connection lookup, session and client creation) that every "
        "Airflow task pays, plus the local sha256 check. It makes the same number of calls or fewer, "
        "except the move (below)."
    )
    return "\n".join(lines)


def report(results: list[dict]) -> str:
    rows = []
    for result in results:
        recipe = next(r for r in results if r["case"] == result["case"] and r["impl"] == "AWS CLI recipe")
        median = sorted(result["times"])[len(result["times"]) // 2]
        recipe_median = sorted(recipe["times"])[len(recipe["times"]) // 2]
        calls = sorted(result["calls"])[len(result["calls"]) // 2]
        recipe_calls = sorted(recipe["calls"])[len(recipe["calls"]) // 2]
        rows.append(
            [
                result["case"],
                result["impl"],
                calls,
                sorted(result["puts"])[len(result["puts"]) // 2],
                fmt(result["times"]),
                f"{median / recipe_median:.3f}",
                f"{calls / recipe_calls:.2f}" if recipe_calls else "-",
                "yes" if result["digest_kept"] else "no",
                result["outcome"],
            ]
        )
    return table(
        [
            "case",
            "implementation",
            "ECR calls",
            "PutImage",
            "wall time, median [min-max]",
            "time / recipe",
            "calls / recipe",
            "tags at the source digest",
            "outcome",
        ],
        rows,
    )
