"""The deferrable half of EcrTagSensor: a trigger that polls ECR with aiobotocore."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

from airflow.providers.amazon.aws.hooks.ecr import EcrHook
from airflow.triggers.base import BaseTrigger, TriggerEvent

from airflow_ecr_retag.exceptions import EcrPermanentError, error_code, is_permanent
from airflow_ecr_retag.waiting import TagWait, check_tag_async

#: The longest pause between polls while ECR keeps failing transiently (throttling, 5xx).
MAX_BACKOFF_SECONDS = 60.0


class EcrTagTrigger(BaseTrigger):
    """
    Wait in the triggerer until ``tag`` exists in the repository (at ``expected_digest``, if given).

    Each poll is one BatchGetImage. Throttling, server errors and dropped connections are
    logged and retried (with backoff); the trigger does not die of them. A missing repository,
    access denied or another error a retry cannot fix ends the wait at once with an error event.

    Events: ``{"status": "success", "digest", "tag", "repository_name"}``,
    ``{"status": "error", "code", "message"}`` or ``{"status": "timeout", "message"}``.

    :param repository_name: The repository.
    :param tag: The tag to wait for.
    :param expected_digest: Wait until the tag points at this digest.
    :param registry_id: The registry's 12-digit account id.
    :param poke_interval: Seconds between polls.
    :param timeout_at: Epoch seconds after which the wait ends with a timeout event. Absolute,
        so a trigger resumed by another triggerer keeps the original deadline.
    :param aws_conn_id: The Airflow connection used for AWS credentials.
    :param region_name: AWS region_name.
    :param verify: Whether or not to verify SSL certificates.
    :param botocore_config: Configuration dictionary (key-values) for the botocore client.
    """

    def __init__(
        self,
        *,
        repository_name: str,
        tag: str,
        expected_digest: str | None = None,
        registry_id: str | None = None,
        poke_interval: float = 30.0,
        timeout_at: float | None = None,
        aws_conn_id: str | None = "aws_default",
        region_name: str | None = None,
        verify: bool | str | None = None,
        botocore_config: dict | None = None,
    ):
        super().__init__()
        self.repository_name = repository_name
        self.tag = tag
        self.expected_digest = expected_digest
        self.registry_id = registry_id
        self.poke_interval = float(poke_interval)
        self.timeout_at = timeout_at
        self.aws_conn_id = aws_conn_id
        self.region_name = region_name
        self.verify = verify
        self.botocore_config = botocore_config

    def serialize(self) -> tuple[str, dict[str, Any]]:
        return (
            f"{self.__class__.__module__}.{self.__class__.__qualname__}",
            {
                "repository_name": self.repository_name,
                "tag": self.tag,
                "expected_digest": self.expected_digest,
                "registry_id": self.registry_id,
                "poke_interval": self.poke_interval,
                "timeout_at": self.timeout_at,
                "aws_conn_id": self.aws_conn_id,
                "region_name": self.region_name,
                "verify": self.verify,
                "botocore_config": self.botocore_config,
            },
        )

    @property
    def wait(self) -> TagWait:
        return TagWait(self.repository_name, self.tag, self.expected_digest, self.registry_id)

    def hook(self) -> EcrHook:
        return EcrHook(aws_conn_id=self.aws_conn_id, region_name=self.region_name, verify=self.verify, config=self.botocore_config)

    def _timed_out(self) -> bool:
        return self.timeout_at is not None and time.time() >= self.timeout_at

    def _timeout_event(self) -> TriggerEvent:
        return TriggerEvent({"status": "timeout", "message": f"tag {self.tag!r} in {self.repository_name} did not appear in time"})

    async def run(self) -> AsyncIterator[TriggerEvent]:
        wait = self.wait
        try:
            client_context = await self.hook().get_async_conn()
        except Exception as error:
            yield TriggerEvent({"status": "error", "code": type(error).__name__, "message": str(error)})
            return
        async with client_context as client:
            failures_in_a_row = 0
            while True:
                delay = self.poke_interval
                try:
                    check = await check_tag_async(client, wait)
                except EcrPermanentError as error:
                    yield TriggerEvent({"status": "error", "code": error.code, "message": str(error)})
                    return
                except Exception as error:
                    if is_permanent(error):
                        yield TriggerEvent({"status": "error", "code": error_code(error), "message": str(error)})
                        return
                    failures_in_a_row += 1
                    delay = min(self.poke_interval * 2 ** (failures_in_a_row - 1), max(self.poke_interval, MAX_BACKOFF_SECONDS))
                    self.log.warning("Transient error polling %s (%s); next poll in %.1f s", self.repository_name, error, delay)
                else:
                    failures_in_a_row = 0
                    if check.done:
                        self.log.info("%s", check.message)
                        yield TriggerEvent(
                            {"status": "success", "digest": check.digest, "tag": self.tag, "repository_name": self.repository_name}
                        )
                        return
                    self.log.info("%s; next poll in %.1f s", check.message, delay)
                if self._timed_out():
                    yield self._timeout_event()
                    return
                if self.timeout_at is not None:
                    delay = max(0.0, min(delay, self.timeout_at - time.time()))
                await asyncio.sleep(delay)
