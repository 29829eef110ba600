"""What the sensors share around a deferral: the trigger's connection, the poke's answer, the event back.

Both sensors check once, defer to a trigger of the same connection with an absolute deadline,
and turn the trigger's event back into their result or their exception; the steps that do not
depend on what is waited for live here.
"""

from __future__ import annotations

import time
from typing import Any

from airflow.providers.amazon.aws.utils import validate_execute_complete_event
from airflow.providers.common.compat.sdk import AirflowSensorTimeout, PokeReturnValue


def trigger_arguments(sensor: Any) -> dict[str, Any]:
    """The trigger's schedule and connection: the sensor's interval, a deadline ``timeout`` from now,
    and the four connection fields the trigger's client is made from."""
    return {
        "poke_interval": sensor.poke_interval,
        "timeout_at": time.time() + float(sensor.timeout),
        "aws_conn_id": sensor.aws_conn_id,
        "region_name": sensor.region_name,
        "verify": sensor.verify,
        "botocore_config": sensor.botocore_config,
    }


def poke_result(done: bool, value: Any) -> PokeReturnValue:
    """A poke's answer: the value goes to XCom only once the wait is over."""
    return PokeReturnValue(is_done=done, xcom_value=value if done else None)


def settled_event(event: dict[str, Any] | None) -> dict[str, Any]:
    """The trigger's event, checked; a timeout event raises the sensor timeout (no retry waits again)."""
    event = validate_execute_complete_event(event)
    if event.get("status") == "timeout":
        raise AirflowSensorTimeout(event.get("message", "timed out"))
    return event
