"""``make bench``: every benchmark against the ECR double's HTTP server; writes benchmarks/RESULTS.md."""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import os
import platform
from importlib import metadata
from pathlib import Path

from benchmarks import blob_throughput, hygiene, parse_cost, promotion, waiting, watching
from benchmarks.common import served_double, use_double

RESULTS = Path(__file__).resolve().parent / "RESULTS.md"
SECTIONS = ("promotion", "hygiene", "hygiene-large", "hygiene-many", "waiting", "parse", "blobs", "watching")
PACKAGES = [
    "airflow-ecr-retag",
    "apache-airflow",
    "apache-airflow-providers-amazon",
    "boto3",
    "botocore",
    "aiobotocore",
    "moto",
    "awscli",
]


def machine() -> str:
    try:
        memory = next(line for line in Path("/proc/meminfo").read_text().splitlines() if line.startswith("MemTotal"))
        memory = f"{int(memory.split()[1]) / 2**20:.0f} GiB"
    except (OSError, StopIteration):
        memory = "?"
    cpu = "?"
    with contextlib.suppress(OSError, StopIteration):
        cpu = next(
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        )
    system = f"{platform.system()} {platform.machine()}"
    return f"{system}, {os.cpu_count()} cores ({cpu}), {memory}, Python {platform.python_version()}"


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true", help="small sizes, for a smoke run")
    parser.add_argument("--output", default=str(RESULTS))
    parser.add_argument("--render-only", action="store_true", help="re-render the .md from the .json of the last run")
    parser.add_argument(
        "--only",
        action="append",
        choices=SECTIONS,
        help="run only these sections (repeatable), keeping the others' figures from the last RESULTS.json",
    )
    args = parser.parse_args()
    if args.render_only:
        Path(args.output).write_text(render(json.loads(Path(args.output).with_suffix(".json").read_text())))
        return 0
    sizes = (
        {
            "repeats": 2,
            "images": 1000,
            "large_images": 10_000,
            "many": (20, 100),
            "waits": (1, 100),
            "layer_mib": 128,
            "upload_mib": 64,
        }
        if args.quick
        else {
            "repeats": 5,
            "images": 10_000,
            "large_images": 100_000,
            "many": (200, 500),
            "waits": (1, 100, 1000),
            "layer_mib": 1024,
            "upload_mib": 256,
        }
    )
    wanted = set(args.only or SECTIONS)
    previous = Path(args.output).with_suffix(".json")
    sections = json.loads(previous.read_text()) if args.only and previous.exists() else {}
    with served_double() as (endpoint, remote):
        use_double(endpoint)
        if "promotion" in wanted:
            print("promotion ...", flush=True)
            sections["promotion"] = promotion.run(endpoint, remote, repeats=sizes["repeats"])
        if "hygiene" in wanted:
            print("hygiene ...", flush=True)
            repeats = 3 if not args.quick else 1
            sections["hygiene"] = hygiene.run(endpoint, remote, images=sizes["images"], repeats=repeats)
        if "hygiene-large" in wanted:
            print("hygiene, one large repository ...", flush=True)
            sections["hygiene-large"] = hygiene.run_large(endpoint, remote, images=sizes["large_images"])
        if "hygiene-many" in wanted:
            print("hygiene, many repositories ...", flush=True)
            repositories, images = sizes["many"]
            sections["hygiene-many"] = hygiene.run_many(endpoint, remote, repositories=repositories, images=images)
        if "waiting" in wanted:
            print("waiting ...", flush=True)
            sections["waiting"] = waiting.run(endpoint, sizes=sizes["waits"])
        if "watching" in wanted:
            print("asset watchers' loop stalls ...", flush=True)
            sections["watching"] = watching.run(endpoint, repeats=sizes["repeats"] if not args.quick else 1)
        if "blobs" in wanted:
            print("blob throughput ...", flush=True)
            sections["blobs"] = blob_throughput.run(
                endpoint, remote, layer_mib=sizes["layer_mib"], upload_mib=sizes["upload_mib"]
            )
    if "parse" in wanted:
        print("parse cost ...", flush=True)
        sections["parse"] = parse_cost.run(repeats=7 if not args.quick else 3)
    Path(args.output).with_suffix(".json").write_text(json.dumps(sections, indent=1, default=str))
    Path(args.output).write_text(render(sections))
    print(f"wrote {args.output}")
    return 0


def render(sections: dict) -> str:
    versions = ", ".join(f"{p} {metadata.version(p)}" for p in PACKAGES)
    return TEMPLATE.format(
        date=datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        machine=machine(),
        versions=versions,
        promotion=promotion.report(sections["promotion"]),
        promotion_notes=promotion.notes(sections["promotion"]),
        hygiene=hygiene.report(sections["hygiene"]),
        hygiene_large=hygiene.report(sections["hygiene-large"]) if "hygiene-large" in sections else "(not run)",
        hygiene_many=hygiene.report_many(sections["hygiene-many"]) if "hygiene-many" in sections else "(not run)",
        waiting=waiting.report(sections["waiting"]),
        parse=parse_cost.report(sections["parse"]),
        blobs=blob_throughput.report(sections["blobs"]) if "blobs" in sections else "(not run)",
        watching=WATCHING.format(watching=watching.report(sections["watching"])) if "watching" in sections else "",
    )


TEMPLATE = """# Benchmark results

Produced by `make bench` (`python -m benchmarks.run`) on {date} (a run with `--only` keeps the other
sections' figures from the run before).
Machine: {machine}.
Versions: {versions}.

Everything runs against the ECR double's HTTP server on 127.0.0.1, in its own process. Timings
are the median and [min-max] of repeated runs in this one session; every ratio compares figures
from the same run. ECR call counts come from the double's counter and are deterministic.

## 1. Promotion: EcrRetagOperator vs the AWS CLI recipe

The recipe is the seed article's: `batch-get-image`, one `put-image` per tag, and for a move
`batch-delete-image` (the `aws` CLI from PyPI, one process per command), and its line-by-line
boto3 transcription. The image is a multi-arch OCI index.

{promotion}

Notes:
{promotion_notes}
- The CLI's wall time is dominated by starting one `aws` process per call.
- "The same promotion again": the recipe fails (`ImageAlreadyExistsException`) on the first
  `put-image`; the operator makes 1 call and succeeds.
- The move costs the operator one call more than the recipe (4 vs 3): the DescribeImages that
  re-reads the source tag's image before deleting, so it never removes a tag that moved or an
  image's last tag. That call is the safety, not overhead to remove.

## 2. Hygiene at scale

Rules: remove `latest`, keep the 20 newest `sha-*`, drop `pr-*` older than 14 days (images
spread over 60 days; every image also carries a `build-*` tag, so no removal is blocked by
last-tag protection). Lower bound: ceil(images / 1000) DescribeImages pages, plus, for the real
run, ceil(removals / 100) BatchDeleteImage calls.

{hygiene}

Notes:
- Dry run meets the lower bound exactly.
- The real run is above the lower bound by the re-check of the affected images' current tags
  right before deleting, so that a tag moved since the snapshot is never removed: the cheaper of
  ceil(affected images / 100) DescribeImages by digest and ceil(images / 1000) pages, here the
  10 pages. Dropping it would give up that protection, which this package does not do.
- The machine is shared: "load average" is the 1-minute load (2 cores) before and after each run.
  Wall time stretches with it; CPU time (of the task process, and of the double's server, the
  other half of every round trip) does much less, and their sum is what an idle machine's wall
  time would be.

### 100,000 images and 300,000 tags in one repository

ECR's default quota of images per repository, seeded the same way (60 days, 3 tags an image,
`latest` on the newest); one run each. The bar: calls at most the lower bound plus the re-check,
at most 60 s on 2 cores, at most 150 MiB of resident memory added by the task (the snapshot keeps
only the tags, push time, pull time and status of each image, not botocore's ImageDetails).

{hygiene_large}

Notes:
- The real run's re-check reads the 100 pages again: every image is affected, so that is 10 times
  fewer calls than by digest (1,000 calls of 100 ids).
- The snapshot holds each image's tags, push and pull times and status; the re-check hands the
  snapshot's own tag tuples back for images whose tags did not change, and the removal report
  reuses the plan's strings, so the re-check and the report add little to the peak.
- Most of the wall time is the round trips' CPU: botocore parsing 1,000 ImageDetails a page in the
  task, the double serialising them in its server.

### 200 repositories of 500 images, through one glob

`repository_name="many/*"`: one DescribeRepositories page (1,000 repositories a page), then per
repository its DescribeImages page, its re-check and its BatchDeleteImage batches, one
repository at a time and then 8 at a time (`max_concurrent_repositories`, threads sharing one
boto3 client). Lower bound: the DescribeRepositories page plus, per repository, its page and
batches.

{hygiene_many}

Notes:
- Each repository's re-check is one DescribeImages page (cheaper than its 500 affected images by
  digest), hence the 200 calls over the lower bound.
- Repositories in flight overlap one repository's round trip with another's work (the task parses
  while the server serves): that overlap is the wall time saved on 2 cores; the calls are the same.

## 3. Waiting at scale: deferrable tag waits in one event loop

N waits on N distinct tags over up to 10 repositories, `poke_interval` 2 s, in one asyncio loop
(as in one triggerer) against the server in another process. Resident memory is the loop
process's growth once every wait is polling, divided by N. Calls per interval are counted on
the server over three intervals. The tags are pushed in four waves half a second apart; latency
is from each tag's push to its wait firing.

{waiting}

Notes:
- The "one client per trigger" design spends about 40 ms of CPU creating each aiobotocore
  client, so at 1,000 waits the loop falls behind: far fewer polls than planned, and pushed tags
  are seen tens of seconds late. Its memory per wait at 1,000 is read while clients are still
  being created, so it understates the final figure.
- The shared poller stays on plan: ceil(waits per repository / 100) x repositories calls per
  interval.

For contrast, 1,000 poke-mode sensors hold 1,000 worker slots for as long as they wait
(reschedule mode frees them between pokes but still takes a slot per poke); deferrable waits
hold none.

## 4. DAG parse cost

{parse}

`import airflow_ecr_retag` alone is lazy; importing the three classes loads the Amazon
provider's base operator and hook, the same cost a DAG using the provider's own ECR operators
pays.

## 5. The ECR double's blob throughput on loopback

One image seeded with a generated 1 GiB layer (`build_image(layer_bytes=...)`: made on the fly,
never held), downloaded through GetDownloadUrlForLayer's presigned URL and through `/v2/` (a 307
to that URL, followed as registry clients follow it); then a generated blob uploaded through the
ECR layer calls (10 MiB parts) and through `/v2/` (POST, then one streamed PUT). The client
hashes every byte it reads, as a registry client does. "Server peak RSS growth" is the server
process's peak resident memory during the transfer over its resident memory just before
(`/proc/self/clear_refs`, `VmHWM`).

{blobs}

Notes:
- These figures bound every copy benchmark run against the double: a copy is no faster than
  the double serves and takes blobs.
- Downloads stream in 1 MiB pieces, so serving a 1 GiB layer adds almost nothing to the server's
  memory, through either path.
- The ECR layer calls are slow by construction: each part travels as base64 inside a JSON body,
  which botocore builds and moto parses whole; each part costs the server about 14 times its
  size while it is parsed (bounded by the part, 10 MiB, not by the layer). `/v2/` uploads stream
  to the spill file.
{watching}"""

WATCHING = """
## 6. Asset watchers: the longest stall of the triggerer's event loop

`EcrTagEventTrigger` run as Airflow 3.3's triggerer runs a watcher, in a child process that has
loaded what a triggerer's runner has (`airflow.jobs.triggerer_job_runner`, the configuration): the
class imported by its path and each trigger built in the loop, each subscribed to its ack-mode
shared stream (`SharedStreamManager`), its events bound and confirmed persisted a second later as
the runner and the supervisor do (the asset state store is an in-memory stand-in). A probe
callback re-armed every millisecond measures how late the loop runs it; the longest delay is the
stall. Start-up runs from importing the class until every watcher has its baseline (client made,
first poll, push times read); polling is five quiet 1 s intervals; change is every watched tag
moved at once, until every event is out and remembered. Airflow warns above 0.2 s; the target is
0.05 s. Figures are the worst of the runs.

{watching}

Notes:
- "No watcher" is the probe alone in the same kind of process: what the loaded machine itself adds.
- "The first AWS client of the process": the first aiobotocore client a triggerer makes, whatever
  trigger makes it, imports aiohttp and aiobotocore and allocates enough to bring on a full garbage
  collection of the process's heap (Airflow's modules): one pause of the whole loop while the
  worker thread that makes the client collects, holding the GIL (the "longest garbage collection"
  column). A process that has made a client before (every other row, as a triggerer running any
  other AWS trigger) does not pay it again. The watcher decodes botocore's 1.2 MB `endpoints.json`
  itself with a Python object hook, so the loop runs between objects (botocore's own decode holds
  the GIL 60-80 ms on an idle core).
- The watcher's module imports only what the triggerer has loaded; its core and the Amazon
  provider's hook are imported in a worker thread. Push times are read once per repository for
  every watcher that saw a digest in the same round (10 DescribeImages for 100 watchers over 10
  repositories), after the loop-wide turn budget of the shared poller.
- A glob watch lists its repository in pages of 100 images: botocore parses a page in one piece
  in the loop, and pages of 1,000 (last row, not shipped) stall it for about 0.1 s per page.
- The machine is shared (a load average of 4-6 on 2 cores during the runs): every figure includes
  the loop's thread waiting for a core, and garbage collections that any Python code in the
  process may bring on.
"""

if __name__ == "__main__":
    raise SystemExit(main())
