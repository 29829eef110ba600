from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, ClassVar

from airflow.providers.amazon.aws.hooks.ecr import EcrHook
from airflow.providers.amazon.aws.operators.base_aws import AwsBaseOperator
from airflow.providers.amazon.aws.utils.mixins import aws_template_fields

from airflow_ecr_retag.core.release_set import ReleaseRequest, release
from airflow_ecr_retag.exceptions import fail_fast

if TYPE_CHECKING:
    from airflow.sdk import Context


class EcrReleaseOperator(AwsBaseOperator[EcrHook]):
    """
    Promote one image in each of several Amazon ECR repositories to the same tags, as one release.

    Every repository is read first (one BatchGetImage each, for its source and every target)
    and every guard, ``overwrite`` and immutability conflict is checked (one DescribeRepositories,
    only if a tag would move) before the first write: if any check fails, nothing is written
    anywhere. Then each image is promoted exactly as :class:`~airflow_ecr_retag.operators.retag.EcrRetagOperator`
    does (one PutImage per tag to set, manifest byte for byte). If a write fails, the task rolls
    back what this run wrote (moved tags back to their previous digest, added tags removed, never
    an image's last tag) and fails, saying what was rolled back. No image is ever deleted.

    XCom ``release``: the list of per-repository promotion reports (EcrRetagOperator's ``promotion``
    report), pushed whether the task succeeds or fails (on a failed write: the reports of every
    repository the run wrote to, so EcrRollbackOperator can finish a roll-back; on a failed check:
    an empty list). ``return_value``: repository name -> the promoted digest.

    :param images: The images, one per repository: a list of dicts with ``repository_name`` and
        ``source_tag``, ``source_digest`` or both (with both, nothing is written anywhere unless
        the tag still points at the digest), or its JSON text. (templated)
    :param target_tags: The tag or tags to set on every image, at most 99. (templated)
    :param registry_id: The 12-digit account id of the registry holding every repository;
        defaults to the caller's registry. (templated)
    :param overwrite: Whether a target tag that points at another image may be moved. With
        False such a tag, in any repository, fails the task before any write.
    :param aws_conn_id: The Airflow connection used for AWS credentials.
        If this is ``None`` or empty then the default boto3 behaviour is used.
    :param region_name: AWS region_name. If not specified then the default boto3 behaviour is used.
    :param verify: Whether or not to verify SSL certificates. See:
        https://boto3.amazonaws.com/v1/documentation/api/latest/reference/core/session.html
    :param botocore_config: Configuration dictionary (key-values) for botocore client, e.g.
        ``{"retries": {"mode": "adaptive", "max_attempts": 10}}`` for PutImage throttling. See:
        https://botocore.amazonaws.com/v1/documentation/api/latest/reference/config.html
    """

    aws_hook_class = EcrHook
    template_fields: Sequence[str] = aws_template_fields("images", "target_tags", "registry_id")
    template_fields_renderers: ClassVar[dict[str, str]] = {"images": "json", "target_tags": "json"}
    ui_color = "#f7a35c"

    def __init__(
        self,
        *,
        images: list[dict[str, str]] | str,
        target_tags: str | list[str],
        registry_id: str | None = None,
        overwrite: bool = True,
        aws_conn_id: str | None = "aws_default",
        **kwargs,
    ):
        super().__init__(aws_conn_id=aws_conn_id, **kwargs)
        self.images = images
        self.target_tags = target_tags
        self.registry_id = registry_id
        self.overwrite = overwrite

    def execute(self, context: Context) -> dict[str, str]:
        written: list[dict[str, Any]] = []
        try:
            with fail_fast():
                request = ReleaseRequest.validated(
                    images=self.images,
                    target_tags=self.target_tags,
                    registry_id=self.registry_id,
                    overwrite=self.overwrite,
                )
                self.log.info(
                    "Releasing %s to %s",
                    ", ".join(f"{p.repository_name} ({p.source_label})" for p in request.promotions),
                    ", ".join(request.target_tags),
                )
                client = self.hook.conn
                reports = release(client, request, region_name=client.meta.region_name, log=self.log, written=written)
        finally:
            context["ti"].xcom_push(key="release", value=written)
        for report in reports:
            self.log.info("Released %s", report["image_uri"])
        return {report["repository_name"]: report["digest"] for report in reports}
