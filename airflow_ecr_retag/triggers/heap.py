"""The triggerer's ``[ecr_retag] freeze_settled_heap`` setting (see :mod:`airflow_ecr_retag.core.heap_freeze`)."""

from __future__ import annotations

import functools
import logging

log = logging.getLogger(__name__)

#: The provider's configuration section and the option (``AIRFLOW__ECR_RETAG__FREEZE_SETTLED_HEAP``).
SECTION = "ecr_retag"
OPTION = "freeze_settled_heap"


@functools.cache
def freeze_settled_heap() -> bool:
    """Whether the waits of this triggerer process are kept out of full garbage collections: read once per process.

    A value that is not a boolean turns the freeze off with one error in the log: a tuning knob
    must not end every tag wait of the deployment.
    """
    from airflow.configuration import conf
    from airflow.exceptions import AirflowConfigException

    try:
        return conf.getboolean(SECTION, OPTION, fallback=False)
    except AirflowConfigException as error:
        log.error("[%s] %s is ignored (off): %s", SECTION, OPTION, error)
        return False
