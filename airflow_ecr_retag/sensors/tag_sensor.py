from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from airflow.providers.amazon.aws.hooks.ecr import EcrHook
from airflow.providers.amazon.aws.sensors.base_aws import AwsBaseSensor
from airflow.providers.amazon.aws.utils.mixins import aws_template_fields
from airflow.providers.common.compat.sdk import PokeReturnValue, conf

from airflow_ecr_retag.core.tag_wait import TagCheck, TagWait, check_tag
from airflow_ecr_retag.exceptions import EcrPermanentError, fail_fast
from airflow_ecr_retag.sensors.deferral import poke_result, settled_event, trigger_arguments
from airflow_ecr_retag.triggers.tag import EcrTagTrigger

if TYPE_CHECKING:
    from airflow.sdk import Context


class EcrTagSensor(AwsBaseSensor[EcrHook]):
    """
    Wait until a tag exists in an Amazon ECR repository, optionally at an expected digest.

    One poke is one BatchGetImage. The XCom ``return_value`` is the digest the tag points at.
    A tag at another digest is "not yet". A missing repository, bad input or access denied
    fails the task at once (``AirflowFailException``) instead of waiting out the timeout.

    In deferrable mode the sensor checks once, then defers to
    :class:`~airflow_ecr_retag.triggers.tag.EcrTagTrigger`, which polls with aiobotocore in
    the triggerer (install the ``async`` extra); the worker slot is released meanwhile.

    :param repository_name: The repository, e.g. ``team/app``. (templated)
    :param tag: The tag to wait for. (templated)
    :param expected_digest: If set, wait until the tag points at this digest. (templated)
    :param registry_id: The registry's 12-digit account id. (templated)
    :param deferrable: Wait in the triggerer rather than in a worker slot.
        Defaults to the ``operators.default_deferrable`` setting.
    :param aws_conn_id: The Airflow connection used for AWS credentials.
        If this is ``None`` or empty then the default boto3 behaviour is used.
    :param region_name: AWS region_name. If not specified then the default boto3 behaviour is used.
    :param verify: Whether or not to verify SSL certificates. See:
        https://boto3.amazonaws.com/v1/documentation/api/latest/reference/core/session.html
    :param botocore_config: Configuration dictionary (key-values) for botocore client. See:
        https://botocore.amazonaws.com/v1/documentation/api/latest/reference/config.html
    """

    aws_hook_class = EcrHook
    template_fields: Sequence[str] = aws_template_fields("repository_name", "tag", "expected_digest", "registry_id")
    ui_color = "#f7a35c"

    def __init__(
        self,
        *,
        repository_name: str,
        tag: str,
        expected_digest: str | None = None,
        registry_id: str | None = None,
        deferrable: bool = conf.getboolean("operators", "default_deferrable", fallback=False),
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.repository_name = repository_name
        self.tag = tag
        self.expected_digest = expected_digest
        self.registry_id = registry_id
        self.deferrable = deferrable

    def _validated(self) -> TagWait:
        with fail_fast():
            return TagWait.validated(
                repository_name=self.repository_name,
                tag=self.tag,
                expected_digest=self.expected_digest,
                registry_id=self.registry_id,
            )

    def _check(self, wait: TagWait) -> TagCheck:
        with fail_fast():
            check = check_tag(self.hook.conn, wait)
        self.log.info("%s", check.message)
        return check

    def execute(self, context: Context) -> Any:
        wait = self._validated()
        if not self.deferrable:
            return super().execute(context=context)
        check = self._check(wait)
        if check.done:
            return check.digest
        self.defer(
            trigger=EcrTagTrigger(
                repository_name=wait.repository_name,
                tag=wait.tag,
                expected_digest=wait.expected_digest,
                registry_id=wait.registry_id,
                **trigger_arguments(self),
            ),
            method_name="execute_complete",
        )

    def poke(self, context: Context) -> PokeReturnValue:
        check = self._check(self._validated())
        return poke_result(check.done, check.digest)

    def execute_complete(self, context: Context, event: dict[str, Any] | None = None) -> str:
        event = settled_event(event)
        if event.get("status") == "success" and event.get("digest"):
            self.log.info("Tag %s points at %s", event.get("tag", self.tag), event["digest"])
            return event["digest"]
        raise EcrPermanentError(str(event.get("code") or "TriggerError"), str(event.get("message") or event))
