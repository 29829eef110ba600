"""Tiny-size runs of every benchmark, so `make bench` keeps working. Asserts call counts, never times."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from benchmarks import blob_throughput, cross_account_copy, hygiene, parse_cost, promotion, run, waiting
from benchmarks.common import ROOT, served_double


@pytest.fixture(scope="module")
def server():
    with served_double() as (endpoint, remote):
        yield endpoint, remote


@pytest.fixture
def double_env(server, monkeypatch):
    from benchmarks.common import environ

    for name, value in environ(server[0]).items():
        monkeypatch.setenv(name, value)
    return server


def by(results, case, impl):
    return next(r for r in results if r["case"] == case and r["impl"] == impl)


def test_promotion_benchmark_counts(double_env):
    endpoint, remote = double_env
    cases = [c for c in promotion.CASES if c.targets == 3 or c.move]
    results = promotion.run(endpoint, remote, repeats=1, cases=cases)
    for impl in promotion.IMPLEMENTATIONS:
        assert by(results, "promote to 3 tags", impl)["calls"] == [4]
        assert by(results, "promote to 3 tags", impl)["puts"] == [3]
        assert by(results, "promote to 3 tags", impl)["digest_kept"]
    again = "the same promotion again (3 tags)"
    assert by(results, again, "EcrRetagOperator")["calls"] == [1]
    assert by(results, again, "EcrRetagOperator")["puts"] == [0]
    assert by(results, again, "AWS CLI recipe")["outcome"] == "fails: ImageAlreadyExistsException"
    move = "move (add the new tag, remove the old)"
    assert by(results, move, "AWS CLI recipe")["calls"] == [3]
    assert by(results, move, "EcrRetagOperator")["calls"] == [4]
    assert "| promote to 3 tags | EcrRetagOperator | 4 | 3 |" in promotion.report(results)


def test_hygiene_benchmark_counts(double_env):
    endpoint, remote = double_env
    results = hygiene.run(endpoint, remote, images=60, repeats=1)
    [dry], [real] = results["dry run"], results["real"]
    expected = dry["expected"]
    assert dry["calls"] == {"DescribeImages": 1}
    assert dry["removed"] == real["removed"] == expected["removals"]
    assert real["calls"]["BatchDeleteImage"] == math.ceil(expected["removals"] / 100)
    assert real["tags_left"] == expected["tags"] - expected["removals"]
    assert "lower bound" in hygiene.report(results)


def test_large_hygiene_benchmark_stays_within_the_lower_bound_plus_the_recheck(double_env):
    endpoint, remote = double_env
    results = hygiene.run_large(endpoint, remote, images=2500)
    [dry], [real] = results["dry run"], results["real"]
    expected = real["expected"]
    assert expected["images"] == 2500 and expected["tags"] == 7501
    assert dry["calls"] == {"DescribeImages": 3}  # ceil(2,500 / 1000) pages, the lower bound
    deletes = math.ceil(expected["removals"] / 100)
    # The re-check reads the 3 pages again: cheaper than ceil(affected images / 100) by digest.
    assert real["calls"] == {"DescribeImages": 3 + 3, "BatchDeleteImage": deletes}
    assert sum(real["calls"].values()) == hygiene.lower_bound(expected, False) + hygiene.recheck_bound(expected)
    assert dry["removed"] == real["removed"] == expected["removals"]
    assert real["tags_left"] == expected["tags"] - expected["removals"]
    assert real["server_cpu"] > 0 and len(real["load"]) == 2
    assert "lower bound + re-check" in hygiene.report(results)


def test_many_repositories_benchmark_counts(double_env):
    endpoint, remote = double_env
    results = hygiene.run_many(endpoint, remote, repositories=5, images=30, concurrency=(1, 3))
    for workers in ("1", "3"):
        result = results[workers]
        expected = result["expected"]
        assert result["repositories"] == 5 and result["removed"] == expected["removals"]
        per_repository = expected["removals"] // 5
        # One DescribeRepositories page; per repository its page, the re-check (1 call) and its batches.
        assert result["calls"] == {
            "DescribeRepositories": 1,
            "DescribeImages": 5 * 2,
            "BatchDeleteImage": 5 * math.ceil(per_repository / 100),
        }
        assert result["tags_left"] == expected["tags"] - expected["removals"]
    assert "| 3 | 5 x 30 |" in hygiene.report_many(results)


@pytest.mark.timing
def test_waiting_benchmark_outcomes(double_env):
    endpoint, _ = double_env
    results = waiting.run(endpoint, sizes=(6,), interval=0.5)
    assert {r["design"] for r in results} == set(waiting.DESIGNS)
    for r in results:
        assert r["fired"] == 6 and r["not_fired"] == 0 and r["fired_before_push"] == 0
    shared = next(r for r in results if r["design"].startswith("shared"))
    assert shared["planned_calls_per_interval"] == 6  # 6 repositories, one wait each
    assert "push -> last wait fired" in waiting.report(results)


@pytest.mark.timing
def test_loop_benchmark_outcomes(double_env):
    endpoint, _ = double_env
    results = waiting.run_loop(endpoint, cases=((8, 2, False), (8, 1, True)), interval=0.5, waiting_intervals=2)
    for r in results:
        assert r["fired"] == 8 and r["not_fired"] == 0 and r["fired_before_push"] == 0
        assert set(r["stall_max"]) == set(r["stall_max_without_full_collection"]) == set(waiting.PHASES)
        assert all(r["stall_max"][phase] is not None for phase in waiting.PHASES)  # the probe woke in each phase
    assert [r["planned_calls_per_interval"] for r in results] == [2, 1]  # 4 waits on each of 2 repos; 8 on 1
    assert [r["frozen_heap"] for r in results] == [False, True]
    assert {r["package"] for r in results} == {str(ROOT / "airflow_ecr_retag")}
    assert "leaving out stalls with a full collection" in waiting.report_loop(results)


@pytest.mark.timing
def test_loop_benchmark_sets_freeze_settled_heap_for_the_triggers_it_runs(double_env):
    endpoint, _ = double_env
    off, on = waiting.run_loop(endpoint, cases=((120, 1, False, False), (120, 1, False, True)), waiting_intervals=1)
    for r in (off, on):
        assert r["fired"] == 120 and r["not_fired"] == 0 and r["fired_before_push"] == 0
    assert (off["freeze_settled_heap"], on["freeze_settled_heap"]) == (False, True)
    # The triggers read the setting from Airflow's configuration, as in a triggerer: frozen at 100 waits.
    assert off["frozen_objects_waiting"] == 0 and on["frozen_objects_waiting"] > 0
    assert "`freeze_settled_heap`" in waiting.report_loop([on])


@pytest.mark.timing
def test_loop_benchmark_runs_an_earlier_revision_with_this_harness(double_env):
    endpoint, _ = double_env
    with waiting.revision_tree("HEAD") as (root, commit):
        assert (Path(root) / "benchmarks" / "waiting.py").read_text() == Path(waiting.__file__).read_text()
        [result] = waiting.run_loop(
            endpoint, cases=((4, 1, False),), interval=0.5, waiting_intervals=1, package_root=root
        )
    assert len(commit) == 40
    assert result["package"] == str(Path(root) / "airflow_ecr_retag")  # that tree's package, not the installed one
    assert result["fired"] == 4 and result["fired_before_push"] == 0


def test_a_section_run_alone_keeps_the_whole_runs_date_and_says_when_it_ran():
    whole = run.stamped(None, None)
    assert whole["only"] == {}
    alone = run.stamped({**whole, "date": "2026-01-01 00:00 UTC"}, ["waiting-loop"])
    assert alone["date"] == "2026-01-01 00:00 UTC" and set(alone["only"]) == {"waiting-loop"}
    header = run.provenance(alone)
    assert header.startswith("Produced by `make bench` (`python -m benchmarks.run`) on 2026-01-01 00:00 UTC.")
    assert (
        f"Section `waiting-loop` re-run alone (`--only waiting-loop`) on {alone['only']['waiting-loop']['date']}"
        in (header)
    )


def test_parse_cost_benchmark_runs():
    results = parse_cost.run(repeats=1)
    assert set(results["imports"]) == set(parse_cost.IMPORTS)
    assert len(results["dagbag"]) == 1
    assert "DagBag" in parse_cost.report(results)


def test_blob_throughput_benchmark_moves_every_byte(double_env):
    endpoint, remote = double_env
    results = blob_throughput.run(endpoint, remote, layer_mib=2, upload_mib=11)
    transfers = {name: outcome for name, outcome in results.items() if isinstance(outcome, dict)}
    assert len(transfers) == 4
    for name, outcome in transfers.items():
        assert outcome["digest_ok"], name
        expected = results["layer_bytes"] if "GET" in name or "URL" in name else 11 * 2**20
        assert outcome["bytes"] == expected, name
    assert remote.calls["UploadLayerPart"] == 2  # 11 MiB in 10 MiB parts
    assert "| GetDownloadUrlForLayer URL | 2 MiB |" in blob_throughput.report(results)


def test_copy_benchmark_moves_exactly_the_missing_blobs_beside_skopeo(double_env):
    endpoint, remote = double_env
    results = cross_account_copy.run(endpoint, remote, scale=1 / 256, fresh_process=False)
    cases = results["cases"]
    ours = [r for r in cases if r["tool"] == "EcrCopyImageOperator"]
    assert len(ours) == 8  # 3 images x (empty, re-run) + 2 images x (8 of 10 layers present)
    for r in cases:
        assert r["digest_kept"], r
    for r in ours:
        report = r["report"]
        assert r["bytes_uploaded_ecr"] == r["bytes_arrived"] == report["bytes_copied"], r
        if r["case"] == cross_account_copy.CASES[0]:
            assert report["blobs_copied"] == report["blobs"] and report["blobs_present"] == 0
        elif r["case"] == cross_account_copy.CASES[1]:  # the 8 shared layers stay, per platform
            platforms = 2 if "index" in r["image"] else 1
            assert report["blobs_present"] == 8 * platforms and report["blobs_copied"] == 3 * platforms
        else:
            assert r["bytes_arrived"] == 0 and report["blobs_copied"] == 0
            assert set(r["calls"]) == {"BatchGetImage", "ListImageReferrers"}  # reads only
            if "index" not in r["image"]:
                assert r["ecr_calls"] <= 4
    if cross_account_copy.SKOPEO:
        theirs = {(r["image"], r["case"]): r for r in cases if r["tool"] == "skopeo"}
        assert len(theirs) == 8
        for r in ours:
            assert theirs[(r["image"], r["case"])]["bytes_arrived"] == r["bytes_arrived"]
    rendered = cross_account_copy.report(results)
    assert "| 1 GiB single layer | a re-run | EcrCopyImageOperator |" in rendered
    assert "Bytes uploaded equal the missing blobs exactly: yes" in cross_account_copy.notes(results)


def test_watching_benchmark_announces_every_move(double_env):
    pytest.importorskip("airflow.triggers.shared_stream", reason="the benchmark runs watchers as Airflow 3.3 does")
    from benchmarks import watching

    endpoint, _ = double_env
    case = next(c for c in watching.CASES if c["watchers"] == 1 and not c.get("glob") and not c.get("cold"))
    [result] = watching.run(endpoint, repeats=1, cases=[{**case, "quiet_intervals": 1}])
    [sample] = result["samples"]
    assert sample["events"] == 1
    assert sample["quiet_calls"].get("DescribeImages") == 1  # the push time of the one digest, read once
    assert set(sample["stall"]) == {"start-up", "polling", "change"}
