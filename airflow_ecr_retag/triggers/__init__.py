"""The triggers, run by Airflow's triggerer; imported on first use.

A deferred task's trigger row stores the trigger's class path, so a trigger module never
moves: ``airflow_ecr_retag.triggers.tag.EcrTagTrigger`` stays where it is.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from airflow_ecr_retag._lazy import lazy_exports

EXPORTS = {
    "EcrTagTrigger": "airflow_ecr_retag.triggers.tag",
    "EcrImageScanTrigger": "airflow_ecr_retag.triggers.image_scan_trigger",
    "EcrTagEventTrigger": "airflow_ecr_retag.triggers.tag_event_trigger",
}
__all__ = list(EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, EXPORTS)

if TYPE_CHECKING:
    from airflow_ecr_retag.triggers.image_scan_trigger import EcrImageScanTrigger
    from airflow_ecr_retag.triggers.tag import EcrTagTrigger
    from airflow_ecr_retag.triggers.tag_event_trigger import EcrTagEventTrigger
