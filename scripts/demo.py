"""The main job: the example DAGs in a real Airflow, against the ECR double's HTTP server.

1. start the ECR double as a server on 127.0.0.1;
2. seed ``team/app`` (scan on push): a multi-arch OCI index built by "CI" as ``sha-<commit>``,
   with a few MEDIUM and LOW findings on its platform images, the previous release, a history
   of ``sha-*`` builds, ``latest`` and old ``pr-*`` tags;
3. set up a throwaway Airflow home with SQLite (``airflow db migrate``);
4. run ``airflow dags test`` on the release DAG (its scan gate passes: no CRITICAL or HIGH
   finding), the deferrable prod gate and the hygiene DAG, with ``AWS_ENDPOINT_URL_ECR`` pointing
   at the double; the release DAG ends by copying the tested digest into the production account
   (another account of the double, in another Region, reached with that account's own credentials
   as the ``aws_prod`` connection), which already holds the previous release: only the missing
   blobs move;
5. print the tags and digests before and after, and the hygiene report;
6. run the release-set DAG (``team/api``, ``team/worker``, ``team/migrate`` as one release) with
   a deploy that fails, and show its roll-back to exactly the previous digests.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path

from airflow_ecr_retag.testing import EcrDouble, Vulnerability, build_image, build_referrer

ROOT = Path(__file__).resolve().parent.parent
REPO = "team/app"
COMMIT = "9f3c2e1"
VERSION = "v1.4.2"
RELEASE_SET = ["team/api", "team/worker", "team/migrate"]
#: The production account and its Region: the release DAG's copy_to_prod lands there.
PROD, PROD_REGION = "210987654321", "eu-west-1"
IN_PROD = {"registry_id": PROD, "region_name": PROD_REGION}
#: The release's layers: 4 MiB each, made on the fly; production's previous release shares the base one.
LAYER_BYTES = 4 << 20


def seed(ecr: EcrDouble) -> dict[str, str]:
    now = datetime.now(UTC)
    ecr.create_repository(REPO, scan_on_push=True)
    ecr.push(REPO, build_image("oci", "v1.4.1"), ["v1.4.1", "prod", "stable"], pushed_at=now - timedelta(days=30))
    for i in range(24):
        ecr.push(
            REPO,
            build_image("oci", f"build-{i}"),
            [f"sha-{i:07x}", f"ci-{1000 + i}"],
            pushed_at=now - timedelta(days=24 - i),
        )
    ecr.push(REPO, build_image("docker", "pr-81"), ["pr-81"], pushed_at=now - timedelta(days=21))
    ecr.push(REPO, build_image("oci", "pr-93"), ["pr-93", "sha-00000pr"], pushed_at=now - timedelta(days=16))
    ecr.push(REPO, build_image("oci", "pr-97"), ["pr-97"], pushed_at=now - timedelta(days=2))
    release = build_image("oci-index", "release", layer_bytes=LAYER_BYTES)
    ecr.push(REPO, release, [f"sha-{COMMIT}", "latest"], pushed_at=now - timedelta(minutes=5))
    # What the scans on push of its two platform images found: nothing the release gate blocks.
    amd64, arm64 = (child.digest for child in release.children)
    ecr.add_findings(REPO, amd64, [Vulnerability("CVE-2023-4039", "LOW", "gcc-12", "12.2.0-14")])
    ecr.add_findings(
        REPO,
        arm64,
        [
            Vulnerability("CVE-2023-4039", "LOW", "gcc-12", "12.2.0-14"),
            Vulnerability("CVE-2024-2236", "MEDIUM", "libgcrypt20", "1.10.1-3", score=5.9),
            Vulnerability("CVE-2023-50495", "MEDIUM", "ncurses", "6.4-4", fixed_in="6.4-4+deb12u1", score=6.5),
        ],
    )
    ecr.push(REPO, build_referrer(release, name="ci-signature"), pushed_at=now - timedelta(minutes=4))
    # Production: its own account and Region, holding the previous release (the same base layer).
    ecr.create_repository(REPO, **IN_PROD)
    previous = build_image("oci-index", "release", layers=1, layer_bytes=LAYER_BYTES)
    ecr.push(REPO, previous, ["v1.4.1", "prod"], pushed_at=now - timedelta(days=30), **IN_PROD)
    for i, repo in enumerate(RELEASE_SET):
        ecr.create_repository(repo)
        ecr.push(repo, build_image("oci", f"{repo}-v1.4.1"), ["v1.4.1", "prod"], pushed_at=now - timedelta(days=30))
        kind = "oci-index" if i == 0 else "oci"
        ecr.push(repo, build_image(kind, f"{repo}-{COMMIT}"), [f"sha-{COMMIT}"], pushed_at=now - timedelta(minutes=5))
    return {"release": release.digest}


def table(stages: list[tuple[str, dict[str, str]]]) -> str:
    """Tags whose digest changed across the stages, one column per stage; the rest summarised."""
    names = [name for name, _ in stages]
    every = sorted({t for _, tags in stages for t in tags})
    changed = [t for t in every if len({tags.get(t) for _, tags in stages}) > 1]
    width = max([len(t) for t in changed] + [3])
    lines = ["  " + "tag".ljust(width) + "".join(f"  {n:<19}" for n in names)]
    lines.append("  " + "-" * width + "".join(f"  {'-' * 19}" for _ in names))
    for tag in changed:
        lines.append("  " + tag.ljust(width) + "".join(f"  {short(tags.get(tag)):<19}" for _, tags in stages))
    lines.append(f"  ({len(every) - len(changed)} other tags unchanged throughout)")
    return "\n".join(lines)


def short(digest: str | None) -> str:
    return "-" if digest is None else digest[:19]


def counts_text(counts: dict[str, int]) -> str:
    return ", ".join(f"{n} {severity}" for severity, n in counts.items() if n) or "no findings"


def airflow_env(ecr: EcrDouble, home: Path) -> dict[str, str]:
    home.mkdir(parents=True, exist_ok=True)
    env = {
        **os.environ,
        **ecr.environ(),
        "AIRFLOW_HOME": str(home),
        "AIRFLOW__CORE__DAGS_FOLDER": str(ROOT / "example_dags"),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW_CONN_AWS_DEFAULT": json.dumps({"conn_type": "aws"}),
        # The release DAG's copy: the build account (the default credentials) and production (its own).
        "AIRFLOW_CONN_AWS_BUILD": json.dumps({"conn_type": "aws"}),
        "AIRFLOW_CONN_AWS_PROD": json.dumps(prod_connection(ecr)),
    }
    env.pop("AWS_PROFILE", None)
    return env


def prod_connection(ecr: EcrDouble) -> dict:
    """An Airflow connection whose credentials are the production account's own (and its Region)."""
    key, secret = ecr.caller_credentials(registry_id=PROD)
    return {"conn_type": "aws", "login": key, "password": secret, "extra": {"region_name": PROD_REGION}}


def is_copy_call(call) -> bool:
    """A call of the release DAG's copy_to_prod: its clients' calls, and the presigned downloads."""
    return "Caller/EcrCopyImageOperator" in call.user_agent or call.operation == "LayerDownload"


def start_airflow(env: dict[str, str], log: Path, *args: str) -> subprocess.Popen:
    handle = log.open("w")
    return subprocess.Popen([sys.executable, "-m", "airflow", *args], env=env, stdout=handle, stderr=subprocess.STDOUT)


def is_prod_poll(call) -> bool:
    return call.operation == "BatchGetImage" and call.params.get("imageIds") == [{"imageTag": "prod"}]


def prod_polls(ecr: EcrDouble) -> int:
    return sum(1 for c in ecr.requests if is_prod_poll(c))


def wait_for(condition, process: subprocess.Popen, what: str, limit: float = 180.0) -> None:
    deadline = time.monotonic() + limit
    while not condition():
        if process.poll() is not None or time.monotonic() > deadline:
            raise SystemExit(f"gave up waiting for {what}")
        time.sleep(0.2)


def airflow(env: dict[str, str], log: Path, *args: str, run_fails: bool = False) -> None:
    """Run an airflow command; with ``run_fails``, a DAG run that ends failed is what is expected."""
    with log.open("a") as handle:
        handle.write(f"\n$ airflow {' '.join(args)}\n")
        handle.flush()
        result = subprocess.run(
            [sys.executable, "-m", "airflow", *args], env=env, stdout=handle, stderr=subprocess.STDOUT, timeout=900
        )
    if run_fails and result.returncode != 0 and log.read_text().rstrip().endswith("DagRun failed"):
        return
    if result.returncode != 0 or run_fails:
        print(log.read_text()[-6000:])
        raise SystemExit(f"airflow {' '.join(args)} failed (exit {result.returncode}); full log: {log}")


def xcom(env: dict[str, str], dag_id: str, task_id: str, key: str = "return_value") -> object:
    code = (
        "import json, sys\n"
        "from airflow.models.xcom import XComModel\n"
        "from airflow.utils.session import create_session\n"
        "with create_session() as s:\n"
        f"    row = s.query(XComModel).filter_by(dag_id={dag_id!r}, task_id={task_id!r}, key={key!r})"
        ".order_by(XComModel.timestamp.desc()).first()\n"
        "    print('XCOM=' + json.dumps(XComModel.deserialize_value(row)))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True, timeout=300)
    line = next(line for line in out.stdout.splitlines() if line.startswith("XCOM="))
    return json.loads(line[len("XCOM=") :])


def show_copy(ecr: EcrDouble, env: dict[str, str], calls: Counter) -> None:
    """The release DAG's last step: the tested digest copied into the production account."""
    report = xcom(env, "example_ecr_release", "copy_to_prod", "copy")
    assert isinstance(report, dict)
    print(f"   copy_to_prod: {report['source_image_uri']}")
    print(f"              -> {report['image_uri']}  (aws_build -> aws_prod, another account and Region)")
    mib = report["bytes_copied"] / (1 << 20)
    print(
        f"   moved {report['blobs_copied']} of {report['blobs']} blobs ({mib:.1f} MiB; production already had "
        f"{report['blobs_present']}: the previous release's base layers), {report['manifests_copied']} manifests "
        f"(the index and both platforms, by digest), {report['referrers_copied']} referrer (CI's signature); "
        f"tags added {report['added']}, moved {list(report['moved'])}"
    )
    uploaded = sum(p["partLastByte"] - p["partFirstByte"] + 1 for p in ecr.requests_for("UploadLayerPart"))
    print(
        f"   bytes uploaded (the double's UploadLayerPart ranges): {uploaded:,}; "
        f"bytes_copied: {report['bytes_copied']:,}"
    )
    print(f"   ECR calls of the copy: {dict(calls)}")
    prod = ecr.tags(REPO, **IN_PROD)
    print(f"   production {REPO}: prod -> {short(prod['prod'])}, {VERSION} -> {short(prod[VERSION])}")
    if uploaded != report["bytes_copied"] or prod["prod"] != report["digest"]:
        raise SystemExit("the copy to production did not move exactly the missing blobs")


def release_set_with_a_failed_deploy(ecr: EcrDouble, env: dict[str, str], log: Path) -> list:
    """Step 6: one release over three repositories, a deploy that fails, the roll-back."""
    print(
        f"6. Release team: airflow dags test example_ecr_release_set  ({', '.join(RELEASE_SET)} to {VERSION} "
        "and prod as one release; the deploy fails)"
    )

    def state(double: EcrDouble) -> dict[str, str]:
        return {f"{repo}:{tag}": digest for repo in RELEASE_SET for tag, digest in double.tags(repo).items()}

    before, images_before = state(ecr), {repo: set(ecr.images(repo)) for repo in RELEASE_SET}
    first = len(ecr.requests)
    released: dict = {}

    def after_release(double: EcrDouble) -> None:
        # Just before the roll-back's first read (the release reads each repository once, the deploy not at all).
        released.update(at=len(double.requests) - 1, tags=state(double))

    ecr.before_call("BatchGetImage", after_release, call=len(RELEASE_SET) + 1)
    conf = {"sha": COMMIT, "version": VERSION, "fail_deploy": True}
    airflow(env, log, "dags", "test", "example_ecr_release_set", "-c", json.dumps(conf), run_fails=True)
    if "tags" not in released:
        raise SystemExit("the release set's roll-back never ran")
    for report in xcom(env, "example_ecr_release_set", "release", "release"):
        moved = ", ".join(f"{t} from {short(d)}" for t, d in report["moved"].items())
        print(f"   {report['repository_name']}: {short(report['digest'])} added {report['added']}, moved {moved}")
    calls = [c.operation for c in ecr.requests[first:]]
    split = released["at"] - first
    print(
        f"   ECR calls of the release: {dict(Counter(calls[:split]))} "
        "(every repository read and checked before the first write)"
    )
    print("   deploy failed (simulated) -> rollback ran (trigger_rule one_failed) -> deploy_failed failed the run")
    rollback = xcom(env, "example_ecr_release_set", "rollback", "rollback")
    assert isinstance(rollback, dict)
    restored = [f"{e['repository_name']}:{e['tag']} to {short(e['digest'])}" for e in rollback["restored"]]
    print(f"   rolled back: restored {restored}")
    print(
        f"   removed {[e['repository_name'] + ':' + e['tag'] for e in rollback['removed']]}; "
        f"left alone {len(rollback['left_alone'])}; failed {len(rollback['failed'])}"
    )
    print(f"   ECR calls of the roll-back: {dict(Counter(calls[split:]))}")
    after = state(ecr)
    lost = sum(len(images_before[repo] - set(ecr.images(repo))) for repo in RELEASE_SET)
    print(f"   every tag back at its digest from before the release: {after == before}; images lost: {lost}")
    if after != before or lost:
        raise SystemExit("the roll-back did not restore the release set")
    return [("before", before), ("after release", released["tags"]), ("after rollback", after)]


def main() -> int:
    home = Path(tempfile.mkdtemp(prefix="ecr-retag-demo-"))
    log = home / "airflow-dags-test.log"
    with EcrDouble(server=True) as ecr:
        digests = seed(ecr)
        before, prod_before = ecr.tags(REPO), ecr.tags(REPO, **IN_PROD)
        print(
            f"1. ECR double serving on {ecr.endpoint_url}; seeded {REPO} with {len(ecr.images(REPO))} images "
            f"(release {VERSION} is the multi-arch index {short(digests['release'])}, tagged sha-{COMMIT})"
        )
        env = airflow_env(ecr, home / "release-team")
        gate_env = airflow_env(ecr, home / "other-team")
        print(f"2. Two Airflow homes under {home} (SQLite each): airflow db migrate")
        airflow(env, log, "db", "migrate")
        airflow(gate_env, log, "db", "migrate")
        print(
            "3. Other team: airflow dags test example_ecr_wait_for_prod, expecting prod at "
            f"{short(digests['release'])} (deferrable: the trigger polls with aiobotocore)"
        )
        ecr.reset_calls()
        gate = start_airflow(
            gate_env,
            home / "gate.log",
            "dags",
            "test",
            "example_ecr_wait_for_prod",
            "-c",
            json.dumps({"expected_digest": digests["release"]}),
        )
        wait_for(lambda: prod_polls(ecr) >= 2, gate, "the gate's trigger to poll")
        print(f"   deferred and polling: prod still at {short(ecr.tags(REPO)['prod'])}")
        print(f"4. Release team: airflow dags test example_ecr_release  (sha={COMMIT}, version={VERSION})")
        first_request = len(ecr.requests)
        airflow(env, log, "dags", "test", "example_ecr_release", "-c", json.dumps({"sha": COMMIT, "version": VERSION}))
        print(f"   sensor found sha-{COMMIT} at {short(str(xcom(env, 'example_ecr_release', 'wait_for_build')))}")
        gate_report = xcom(env, "example_ecr_release", "scan_gate")
        assert isinstance(gate_report, dict)
        platforms = "; ".join(
            f"{i['platform']} {i['scan_status']}: {counts_text(i['severity_counts'])}" for i in gate_report["images"]
        )
        print(
            f"   scan gate passed for {short(gate_report['digest'])} within {gate_report['max_findings']}: {platforms}"
        )
        promotion = xcom(env, "example_ecr_release", "promote", "promotion")
        moved = [f"{t} from {short(d)}" for t, d in promotion["moved"].items()]
        print(f"   promoted: added {promotion['added']}, moved {moved}")
        print(f"   deploy used {xcom(env, 'example_ecr_release', 'deploy')}")
        run_calls = [c for c in ecr.requests[first_request:] if not is_prod_poll(c)]
        release_calls = Counter(c.operation for c in run_calls if not is_copy_call(c))
        print(
            f"   ECR calls made by the release DAG run: {dict(release_calls)} "
            "(BatchGetImage: sensor, test, gate, promote; a DescribeImageScanFindings per platform; 2 PutImage)"
        )
        show_copy(ecr, env, Counter(c.operation for c in run_calls if is_copy_call(c)))
        after_release, prod_after = ecr.tags(REPO), ecr.tags(REPO, **IN_PROD)
        if gate.wait(timeout=120) != 0:
            print((home / "gate.log").read_text()[-6000:])
            raise SystemExit("the gate DAG failed")
        print(
            "   the other team's gate opened: prod_ready -> "
            f"{short(str(xcom(gate_env, 'example_ecr_wait_for_prod', 'prod_ready')))} "
            f"after {prod_polls(ecr)} polls of prod (one BatchGetImage each)"
        )
        print("5. Release team: airflow dags test example_ecr_tag_hygiene  (dry run, then for real)")
        airflow(env, log, "dags", "test", "example_ecr_tag_hygiene")
        report = xcom(env, "example_ecr_tag_hygiene", "clean_up")
        images_after = ecr.images(REPO)
        after = ecr.tags(REPO)
        assert isinstance(report, dict)
        print(f"   removed {sorted(r['tag'] for r in report['removed'])}")
        print(
            f"   kept as an image's last tag: {sorted(s['tag'] for s in report['skipped_last_tag'])}; "
            f"kept_count {report['kept_count']}; images deleted {len(report['images_deleted'])}; "
            f"failed {len(report['failed'])}"
        )
        print(f"   images before {len(ecr.images(REPO))}, after {len(images_after)}: none lost")
        set_stages = release_set_with_a_failed_deploy(ecr, env, log)
    print("\nTags whose digest changed (digests shortened; '-' = no such tag):")
    print(table([("before", before), ("after release", after_release), ("after hygiene", after)]))
    print(f"\nProduction ({PROD}, {PROD_REGION}) {REPO}, tags whose digest changed:")
    print(table([("before", prod_before), ("after release", prod_after)]))
    print(f"\nThe release set ({', '.join(RELEASE_SET)}), tags whose digest changed:")
    print(table(set_stages))
    print(
        "Against a real AWS account: unset AWS_ENDPOINT_URL_ECR and give Airflow an `aws_default` connection, e.g.\n"
        '  airflow connections add aws_default --conn-type aws --conn-extra \'{"region_name": "eu-west-1"}\'\n'
        "(credentials from the usual AWS chain or the connection), `aws_build` for the same build account and\n"
        "`aws_prod` for the production account, then trigger example_ecr_release with "
        '{"repository": "<your repo>", "sha": "<commit>", "version": "<version>"}.'
    )
    if os.environ.get("DEMO_KEEP_HOME") == "1":
        print(f"\nAirflow homes and the full `airflow dags test` output ({log.name}, gate.log) kept in {home}")
    else:
        shutil.rmtree(home, ignore_errors=True)
        print(
            "\n(Airflow homes removed; DEMO_KEEP_HOME=1 make demo keeps them, with the full `airflow dags test` output)"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
