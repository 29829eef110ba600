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

from benchmarks import blob_throughput, cross_account_copy, hygiene, parse_cost, promotion, waiting, watching
from benchmarks.common import served_double, use_double

RESULTS = Path(__file__).resolve().parent / "RESULTS.md"
SECTIONS = (
    "promotion",
    "hygiene",
    "hygiene-large",
    "hygiene-many",
    "waiting",
    "waiting-loop",
    "parse",
    "blobs",
    "copy",
    "watching",
)
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
    parser.add_argument(
        "--loop-before",
        metavar="REVISION",
        help="waiting-loop: also measure this git revision's airflow_ecr_retag with the same harness, for comparison",
    )
    args = parser.parse_args()
    previous = Path(args.output).with_suffix(".json")
    if args.render_only:
        Path(args.output).write_text(render(json.loads(previous.read_text())))
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
            "copy_scale": 1 / 16,
            "loop": ((1000, 10, False, False), (1000, 10, False, True)),
            "loop_runs": 1,
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
            "copy_scale": 1.0,
            "loop": waiting.LOOP_CASES,
            "loop_runs": waiting.LOOP_RUNS,
        }
    )
    wanted = set(args.only or SECTIONS)
    sections = json.loads(previous.read_text()) if args.only and previous.exists() else {}
    sections["meta"] = stamped(sections.get("meta"), sorted(wanted) if args.only else None)
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
        if "waiting-loop" in wanted:
            print("waiting: the event loop ...", flush=True)
            last = sections.get("waiting-loop")
            sections["waiting-loop"] = waiting.run_loop_section(
                endpoint,
                sizes["loop"],
                sizes["loop_runs"],
                before_revision=args.loop_before,
                before=(last or {}).get("before"),
                earlier=last,
            )
        if "watching" in wanted:
            print("asset watchers' loop stalls ...", flush=True)
            sections["watching"] = watching.run(endpoint, repeats=sizes["repeats"] if not args.quick else 1)
        if "blobs" in wanted:
            print("blob throughput ...", flush=True)
            sections["blobs"] = blob_throughput.run(
                endpoint, remote, layer_mib=sizes["layer_mib"], upload_mib=sizes["upload_mib"]
            )
        if "copy" in wanted:
            print("cross-account copy ...", flush=True)
            sections["copy"] = cross_account_copy.run(endpoint, remote, scale=sizes["copy_scale"])
    if "parse" in wanted:
        print("parse cost ...", flush=True)
        sections["parse"] = parse_cost.run(repeats=7 if not args.quick else 3)
    previous.write_text(json.dumps(sections, indent=1, default=str))
    Path(args.output).write_text(render(sections))
    print(f"wrote {args.output}")
    return 0


def stamped(meta: dict | None, only: list[str] | None) -> dict:
    """When and where the figures were made: the whole run's, and each section re-run alone since."""
    now = {"date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"), "machine": machine()}
    if only is None:
        return {**now, "only": {}}
    meta = meta or {"date": "an earlier run (not recorded)", "machine": "not recorded"}
    return {**meta, "only": {**meta.get("only", {}), **dict.fromkeys(only, now)}}


def provenance(meta: dict) -> str:
    lines = [
        f"Produced by `make bench` (`python -m benchmarks.run`) on {meta['date']}.",
        f"Machine: {meta['machine']}.",
    ]
    for section, run in sorted(meta.get("only", {}).items()):
        lines.append(
            f"Section `{section}` re-run alone (`--only {section}`) on {run['date']}, on {run['machine']};"
            " the other sections' figures are from the run above."
        )
    return "\n".join(lines)


def render(sections: dict) -> str:
    versions = ", ".join(f"{p} {metadata.version(p)}" for p in PACKAGES)
    loop = sections.get("waiting-loop") or {"cases": [], "before": None, "uptime": ["-"], "baseline": None}
    return TEMPLATE.format(
        provenance=provenance(sections["meta"]),
        versions=versions,
        promotion=promotion.report(sections["promotion"]),
        promotion_notes=promotion.notes(sections["promotion"]),
        hygiene=hygiene.report(sections["hygiene"]),
        hygiene_large=hygiene.report(sections["hygiene-large"]) if "hygiene-large" in sections else "(not run)",
        hygiene_many=hygiene.report_many(sections["hygiene-many"]) if "hygiene-many" in sections else "(not run)",
        waiting=waiting.report(sections["waiting"]),
        waiting_loop_conditions=waiting.conditions_loop(loop),
        waiting_loop=waiting.report_loop(loop["cases"]),
        waiting_loop_notes=waiting.notes_loop(loop["cases"]),
        waiting_loop_before=waiting.report_before(loop),
        waiting_loop_earlier=waiting.report_earlier(loop),
        parse=parse_cost.report(sections["parse"]),
        blobs=blob_throughput.report(sections["blobs"]) if "blobs" in sections else "(not run)",
        copy=cross_account_copy.report(sections["copy"]) if "copy" in sections else "(not run)",
        copy_notes=cross_account_copy.notes(sections["copy"], sections.get("blobs")) if "copy" in sections else "",
        watching=WATCHING.format(watching=watching.report(sections["watching"])) if "watching" in sections else "",
    )


TEMPLATE = """# Benchmark results

{provenance}
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
- With one wait, "push -> fired" is wherever the push falls between two polls: anything from 0
  to one interval. Memory per wait at 1 and 100 waits is mostly one-off allocations (the client,
  threads) divided by few waits.

For contrast, 1,000 poke-mode sensors hold 1,000 worker slots for as long as they wait
(reschedule mode frees them between pokes but still takes a slot per poke); deferrable waits
hold none.

### The triggerer's event loop at 10,000 waits

Issue 19: no stall of the loop over 0.1 s at 10,000 waits, in any phase. The same harness with
a loop-lag probe (a task that sleeps 10 ms over and over and records how late it wakes: the loop
was blocked that long, for every trigger of the triggerer and its heartbeat; Airflow's triggerer
warns at 0.2 s). The triggers are inflated from their serialized rows the way
`TriggerRunner.create_triggers` does it (two `await asyncio.sleep(0)` per trigger), all queued at
once as after a triggerer restart. Phases: **start** (every trigger inflated and started, its
hook and the shared client made, then two intervals of first polls), **waiting** (20 intervals of
poll rounds, no tag there yet; calls counted over them), **firing** (every tag pushed in four
waves a quarter interval apart, until the last wait fired). The probe also times the
interpreter's full garbage collections (generation 2), which stop the loop too: "leaving out"
drops the stalls in which one ran. "CPU the loop ran in one stretch" is the loop thread's own CPU
time between two wake-ups of the probe: a stall much longer than that was the machine (other
processes on the two cores, the double's server among them), not code holding the loop.
"Start-up heap frozen" (earlier runs): the harness called `gc.freeze()` after start-up
(imports, one client made), before the waits start. "`freeze_settled_heap`": the triggerer's
setting `[ecr_retag] freeze_settled_heap = True` (`AIRFLOW__ECR_RETAG__FREEZE_SETTLED_HEAP`),
read by the triggers from Airflow's configuration: the package calls `gc.freeze()` at 100 waits
and at each new high by a quarter (`airflow_ecr_retag/core/heap_freeze.py`).

{waiting_loop_conditions}

{waiting_loop}

Notes:
{waiting_loop_notes}
- The run of this section before this one (the machine is shared: a re-run at another load
  does not hide what it replaces):

{waiting_loop_earlier}

- Before issue 19, the same harness on the shared poller as it was (`--loop-before`):

{waiting_loop_before}

  The stalls came from every poller's requests being built in the same turn (a 100-reference
  BatchGetImage is 3-10 ms of CPU to validate, serialize and sign), a round's answers parsed
  and judged together, every trigger woken in one turn when its client was ready or its tag
  appeared, and triggers started over more than a quarter interval polling in separate rounds.
- The figures issue 19 was filed with (its own harness, on main before the change):

  | waits | KiB each | calls / 2 s interval (plan) | last fired after pushes | longest stall: start / waiting / firing |
  |---|---|---|---|---|
  | 1,000 over 10 repos | 6.3 | 10 (10) | 1.04 s | 187 ms overall |
  | 10,000 over 10 repos | 6.3 | 100 (100) | 1.91 s | 1,432 / 394 / 323 ms |

- Full collections are the interpreter's, not the triggers' work: CPython walks every tracked
  object of the process, Airflow's modules included (the warmed-up process above, before any
  wait, already pays that much for one), so a triggerer of that size pauses for them whatever
  its triggers are. They come when enough objects have lived long (a quarter of what the last
  one kept): a few times while 10,000 waits start, then every few tens of seconds of polling at
  a 2 s interval. A waiting trigger with its task (and the harness's coroutine around it, as a
  triggerer's own) holds the "objects for the collector per wait" above, about a third of what
  it held before, so its share of each collection is smaller and collections come less often.
- With the start-up heap frozen a collection walks only what came later: at 10,000 waits that
  is the waits themselves, so it is shorter, and more frequent. With `freeze_settled_heap` the
  waits are frozen too, as their number grows, so a collection walks only what a poll round
  left alive: a few milliseconds. `gc.freeze()` is process-wide (Airflow calls it in its DAG
  processor manager and LocalExecutor before they fork, not in the triggerer), so the setting is
  off unless a deployment sets it. Frozen objects are still freed when their last reference
  goes; a reference cycle that became garbage after a freeze is kept, and the notes above count
  what that came to once every wait had ended. Nothing is unfrozen (an unfreeze hands every
  frozen object back to the next full collection: the stall again), and the freezes come only
  at new highs, 21 up to 10,000 waits, so what is kept stays bounded however long the triggerer
  runs.

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

## 6. EcrCopyImageOperator across accounts and Regions, beside skopeo

From the build account (us-east-1) to the production account (eu-west-1), both registries of the
double's one server: an image of 10 layers of 20 MiB; a multi-arch index of two such images (the
platforms' layers differ); an image of one 1 GiB layer (every layer generated on the fly). Each into
an empty repository, into one already holding an earlier build with 8 of the 10 layers, and again
once done (a re-run). Beside it, in the same run, `skopeo copy --all --preserve-digests` between
the same two registries over the double's `/v2/` API, into repositories of its own. The operator
runs in a fresh process per copy, with its defaults (`max_concurrency=4`, `copy_referrers=True`,
parts of 5 MiB); its wall time is `execute()`'s (its two clients' creation included), skopeo's
the whole command's. "calls": the operator's ECR calls (the presigned downloads not counted),
skopeo's `/v2/` requests. The machine is shared: the load average before and after each copy is
in the table.

{copy}

Notes:
{copy_notes}

{watching}"""

WATCHING = """
## 7. Asset watchers: the longest stall of the triggerer's event loop

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
