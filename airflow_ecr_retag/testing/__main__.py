"""``ecr-double serve`` (or ``python -m airflow_ecr_retag.testing serve``): run the ECR double as a local server.

Prints the endpoint, the default registry's ``/v2/`` address and the environment to reach it,
then serves until interrupted (Ctrl-C or SIGTERM). ``--endpoint-file`` also writes the endpoint to a file, for scripts.
"""

from __future__ import annotations

import argparse
import contextlib
import signal
import sys
import threading


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="ecr-double", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser("serve", help="serve the ECR double on 127.0.0.1 with a free port")
    serve.add_argument("--region", default="us-east-1")
    serve.add_argument("--repository", action="append", default=[], help="create this repository (repeatable)")
    serve.add_argument(
        "--seed",
        action="append",
        default=[],
        metavar="REPO:TAG:KIND",
        help="push an image of KIND (docker, oci, oci-no-mediatype, oci-index, docker-list)",
    )
    serve.add_argument("--endpoint-file", help="also write the endpoint URL to this file")
    args = parser.parse_args(argv)

    from airflow_ecr_retag.testing.double import EcrDouble
    from airflow_ecr_retag.testing.images import build_image

    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    with EcrDouble(server=True, region_name=args.region) as ecr:
        for name in args.repository:
            ecr.create_repository(name)
        for spec in args.seed:
            repo, tag, kind = spec.split(":")
            if repo not in args.repository:
                ecr.create_repository(repo)
                args.repository.append(repo)
            print(f"seeded {repo}:{tag} {ecr.push(repo, build_image(kind, name=f'{repo}-{tag}'), tags=[tag])}")
        # Written before anything is printed: a reader of the output may look for it at once.
        if args.endpoint_file:
            with open(args.endpoint_file, "w") as handle:
                handle.write(ecr.endpoint_url or "")
        print(f"ECR double listening on {ecr.endpoint_url}")
        registry = ecr.registry()
        print(f"OCI registry (/v2/) of {registry.account} in {registry.region}: {ecr.registry_endpoint()}")
        for name, value in ecr.environ().items():
            print(f"export {name}={value}")
        sys.stdout.flush()
        with contextlib.suppress(KeyboardInterrupt):
            stop.wait()
    return 0


if __name__ == "__main__":
    sys.exit(main())
