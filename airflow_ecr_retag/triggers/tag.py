"""The deferrable half of EcrTagSensor: a trigger that polls ECR with aiobotocore."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from airflow.triggers.base import BaseTrigger, TriggerEvent

from airflow_ecr_retag.core.errors import error_code
from airflow_ecr_retag.core.tag_poller import ClientKey, Waiter, joined
from airflow_ecr_retag.core.tag_wait import TagWait
from airflow_ecr_retag.triggers.connection import AwsConnectionFields
from airflow_ecr_retag.triggers.heap import freeze_settled_heap


class EcrTagTrigger(AwsConnectionFields, BaseTrigger):
    """
    Wait in the triggerer until ``tag`` exists in the repository (at ``expected_digest``, if given).

    Triggers in one triggerer share their async ECR clients and, per repository, one poller
    (:mod:`airflow_ecr_retag.core.tag_poller`): each round asks for every due trigger's tag
    in BatchGetImage calls of at most 100 references. Throttling, server errors and dropped
    connections are logged and retried with backoff; the trigger does not die of them. A
    missing repository, access denied or another error a retry cannot fix ends the wait at
    once with an error event. With ``[ecr_retag] freeze_settled_heap`` set in the triggerer,
    the waits' objects are kept out of the interpreter's full garbage collections
    (:mod:`airflow_ecr_retag.core.heap_freeze`).

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
        self._set_connection(aws_conn_id, region_name, verify, botocore_config)

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
                **self.connection_kwargs(),
            },
        )

    @property
    def wait(self) -> TagWait:
        return TagWait(self.repository_name, self.tag, self.expected_digest, self.registry_id)

    async def _connect(self) -> Any:
        # Called only by the first trigger of a ClientKey in this triggerer: one hook (and one
        # connection lookup, in get_async_conn's worker thread) per shared client, not per trigger.
        return await self.hook().get_async_conn()

    def _client_key(self) -> ClientKey:
        return ClientKey.of(**self.connection_kwargs())

    async def run(self) -> AsyncIterator[TriggerEvent]:
        # What a waiting trigger holds, 10,000 of them at once: this frame, one waiter, one future.
        waiter = Waiter(self.wait, self.poke_interval, timeout_at=self.timeout_at)
        try:
            async with joined(self._client_key(), self._connect, waiter, freeze_heap=freeze_settled_heap()):
                event = await waiter.outcome
        except Exception as error:
            event = {"status": "error", "code": error_code(error) or type(error).__name__, "message": str(error)}
        if event["status"] == "success":
            self.log.info("Tag %s in %s points at %s", self.tag, self.repository_name, event["digest"])
        else:
            self.log.warning("Wait for tag %s in %s ended: %s", self.tag, self.repository_name, event)
        yield TriggerEvent(event)
