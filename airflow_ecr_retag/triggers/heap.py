"""The triggerer's ``[ecr_retag] freeze_settled_heap`` setting (see :mod:`airflow_ecr_retag.core.heap_freeze`)."""

from __future__ import annotations

import functools

#: The provider's configuration section and the option (``AIRFLOW__ECR_RETAG__FREEZE_SETTLED_HEAP``).
SECTION = "ecr_retag"
OPTION = "freeze_settled_heap"


@functools.cache
def freeze_settled_heap() -> bool:
    """Whether the waits of this triggerer process are kept out of full garbage collections: read once per process."""
    from airflow.configuration import conf

    return conf.getboolean(SECTION, OPTION, fallback=False)
