"""The sensors (the Airflow layer over :mod:`airflow_ecr_retag.core`); imported on first use."""

from __future__ import annotations

from typing import TYPE_CHECKING

from airflow_ecr_retag._lazy import lazy_exports

EXPORTS = {
    "EcrTagSensor": "airflow_ecr_retag.sensors.tag_sensor",
    "EcrImageScanSensor": "airflow_ecr_retag.sensors.image_scan_sensor",
}
__all__ = list(EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, EXPORTS)

if TYPE_CHECKING:
    from airflow_ecr_retag.sensors.image_scan_sensor import EcrImageScanSensor
    from airflow_ecr_retag.sensors.tag_sensor import EcrTagSensor
