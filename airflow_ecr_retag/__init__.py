"""airflow-ecr-retag: promote, wait for and clean up Amazon ECR image tags as Airflow tasks.

``import airflow_ecr_retag`` stays cheap (no boto3, no Amazon provider) because DAG files are
parsed often: the operators and the sensor are imported on first use.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

_EXPORTS = {
    "EcrRetagOperator": "airflow_ecr_retag.operators.retag",
    "EcrTagHygieneOperator": "airflow_ecr_retag.operators.hygiene",
    "EcrTagSensor": "airflow_ecr_retag.sensors.tag",
}

__all__ = [*_EXPORTS, "get_provider_info", "__version__"]

if TYPE_CHECKING:
    from airflow_ecr_retag.operators.hygiene import EcrTagHygieneOperator
    from airflow_ecr_retag.operators.retag import EcrRetagOperator
    from airflow_ecr_retag.sensors.tag import EcrTagSensor


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)


def get_provider_info() -> dict[str, Any]:
    """Provider metadata for Airflow's ProvidersManager (entry point ``apache_airflow_provider``)."""
    return {
        "package-name": "airflow-ecr-retag",
        "name": "Amazon ECR Retag",
        "description": "Promote, wait for and clean up Amazon ECR image tags without moving a layer.",
        "versions": [__version__],
        "integrations": [
            {
                "integration-name": "Amazon ECR Retag",
                "external-doc-url": "https://docs.aws.amazon.com/AmazonECR/latest/userguide/image-retag.html",
                "tags": ["aws"],
            }
        ],
        "operators": [
            {
                "integration-name": "Amazon ECR Retag",
                "python-modules": [m for m in _EXPORTS.values() if ".operators." in m],
            }
        ],
        "sensors": [
            {
                "integration-name": "Amazon ECR Retag",
                "python-modules": [m for m in _EXPORTS.values() if ".sensors." in m],
            }
        ],
        "triggers": [
            {
                "integration-name": "Amazon ECR Retag",
                "python-modules": ["airflow_ecr_retag.triggers.tag"],
            }
        ],
        "extra-links": [
            "airflow_ecr_retag.links.EcrImageLink",
            "airflow_ecr_retag.links.EcrRepositoryLink",
        ],
    }
