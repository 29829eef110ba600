"""Prove the timing-sensitive tests: run every test marked ``timing`` N times in a row with both cores busy.

``make prove-timing`` (or ``python scripts/prove_timing.py --runs 30``). The load is one busy
process per core for the whole run; each round is a fresh pytest process. Prints, per test,
how many rounds it passed, and exits non-zero if any test failed once.
"""

from __future__ import annotations

import argparse
import collections
import os
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def busy_cores(count: int) -> list[subprocess.Popen]:
    spin = "while True: pass"
    return [subprocess.Popen([sys.executable, "-c", spin]) for _ in range(count)]


def one_round(junit: Path, extra: list[str]) -> tuple[dict[str, str], dict[str, str]]:
    subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-m", "timing", "-p", "no:cacheprovider", f"--junitxml={junit}", *extra],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        check=False,
    )
    outcomes, messages = {}, {}
    for case in ET.parse(junit).getroot().iter("testcase"):
        name = f"{case.get('classname')}::{case.get('name')}"
        problem = case.find("failure") if case.find("failure") is not None else case.find("error")
        outcomes[name] = (
            "failed" if problem is not None else ("skipped" if case.find("skipped") is not None else "passed")
        )
        if problem is not None:
            messages[name] = (problem.text or problem.get("message") or "")[-3000:]
    return outcomes, messages


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=30)
    parser.add_argument("--load", type=int, default=os.cpu_count() or 2, help="busy processes (default: one per core)")
    parser.add_argument("pytest_args", nargs="*", help="extra pytest arguments, e.g. a -k expression")
    args = parser.parse_args()
    passed: collections.Counter[str] = collections.Counter()
    failed: collections.Counter[str] = collections.Counter()
    load = busy_cores(args.load)
    started = time.monotonic()
    try:
        with tempfile.TemporaryDirectory() as tmp:
            for number in range(1, args.runs + 1):
                outcomes, messages = one_round(Path(tmp) / f"round{number}.xml", args.pytest_args)
                for name, outcome in outcomes.items():
                    (failed if outcome == "failed" else passed)[name] += outcome != "skipped"
                bad = [n for n, o in outcomes.items() if o == "failed"]
                print(f"round {number}/{args.runs}: {len(outcomes)} tests, {len(bad)} failed {bad or ''}", flush=True)
                for name, message in messages.items():
                    print(f"--- {name} (round {number})\n{message}\n---", flush=True)
    finally:
        for process in load:
            process.kill()
    print(
        f"\n{args.runs} rounds with {args.load} busy processes on {os.cpu_count()} cores, "
        f"{time.monotonic() - started:.0f} s"
    )
    for name in sorted(set(passed) | set(failed)):
        print(f"  {passed[name]:>3} passed {failed[name]:>3} failed  {name}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
