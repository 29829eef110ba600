"""A faithful Amazon ECR double for tests of this package and of your own DAGs.

Needs the ``testing`` extra (``pip install airflow-ecr-retag[testing]``).

- :class:`EcrDouble`: in-process (``with EcrDouble() as ecr``) or as a server on 127.0.0.1
  (``EcrDouble(server=True)``, reached by other processes through ``AWS_ENDPOINT_URL_ECR``).
- :class:`Vulnerability`: what an image's scans find (``ecr.add_findings(repo, digest, [...])``).
- :func:`build_image` / :func:`push_image`: realistic Docker, OCI and multi-arch images, with
  their blobs; :func:`build_referrer` (OCI 1.1 artifacts) and :func:`write_oci_layout` (for
  ``skopeo copy oci:...``).
- :class:`RemoteEcrDouble`: the same API for a double served by another process; :class:`StagedCall`
  stages another actor there (``before_call``).
- pytest fixtures ``ecr_double``, ``ecr_double_server`` and ``run_dag`` (a whole DAG with
  ``dag.test()`` in a throwaway Airflow home: :mod:`~airflow_ecr_retag.testing.dag_runner`): add
  ``pytest_plugins = ["airflow_ecr_retag.testing.pytest_plugin"]`` to your top-level ``conftest.py``.
- ``ecr-double serve`` (``python -m airflow_ecr_retag.testing serve``): a server in its own process.
"""

from __future__ import annotations

from airflow_ecr_retag.testing.double import (
    WRITE_OPERATIONS,
    EcrDouble,
    Fault,
    RecordedCall,
    RemoteEcrDouble,
    StoredImage,
)
from airflow_ecr_retag.testing.images import (
    IMAGE_KINDS,
    BuiltImage,
    build_image,
    build_referrer,
    push_image,
    write_oci_layout,
)
from airflow_ecr_retag.testing.recording import StagedCall
from airflow_ecr_retag.testing.scan_rules import Vulnerability

__all__ = [
    "IMAGE_KINDS",
    "WRITE_OPERATIONS",
    "BuiltImage",
    "EcrDouble",
    "Fault",
    "RecordedCall",
    "RemoteEcrDouble",
    "StagedCall",
    "StoredImage",
    "Vulnerability",
    "build_image",
    "build_referrer",
    "push_image",
    "write_oci_layout",
]
