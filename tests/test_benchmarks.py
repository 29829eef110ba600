"""Tiny-size runs of every benchmark, so `make bench` keeps working. Asserts call counts, never times."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from benchmarks import hygiene, parse_cost, promotion, run, waiting
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
