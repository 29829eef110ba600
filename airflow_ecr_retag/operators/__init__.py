"""The operators (the Airflow layer over :mod:`airflow_ecr_retag.core`); imported on first use."""

from __future__ import annotations

from typing import TYPE_CHECKING

from airflow_ecr_retag._lazy import lazy_exports

EXPORTS = {
    "EcrRetagOperator": "airflow_ecr_retag.operators.retag",
    "EcrCopyImageOperator": "airflow_ecr_retag.operators.copy_image",
    "EcrReleaseOperator": "airflow_ecr_retag.operators.release",
    "EcrRollbackOperator": "airflow_ecr_retag.operators.rollback",
    "EcrTagHygieneOperator": "airflow_ecr_retag.operators.hygiene",
}
__all__ = list(EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, EXPORTS)

if TYPE_CHECKING:
    from airflow_ecr_retag.operators.copy_image import EcrCopyImageOperator
    from airflow_ecr_retag.operators.hygiene import EcrTagHygieneOperator
    from airflow_ecr_retag.operators.release import EcrReleaseOperator
    from airflow_ecr_retag.operators.retag import EcrRetagOperator
    from airflow_ecr_retag.operators.rollback import EcrRollbackOperator
