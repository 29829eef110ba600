from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, ClassVar

from airflow.providers.amazon.aws.hooks.ecr import EcrHook
from airflow.providers.amazon.aws.operators.base_aws import AwsBaseOperator
from airflow.providers.amazon.aws.utils.mixins import aws_template_fields

from airflow_ecr_retag.core.promotion_rollback import RollbackRequest, roll_back, summary
from airflow_ecr_retag.exceptions import RollbackIncompleteError, fail_fast

if TYPE_CHECKING:
    from airflow.sdk import Context


class EcrRollbackOperator(AwsBaseOperator[EcrHook]):
    """
    Undo Amazon ECR promotions from their reports, without touching what others changed since.

    For each report (EcrRetagOperator's ``promotion`` XCom, or each entry of EcrReleaseOperator's
    ``release`` XCom), every ``moved`` tag is put back at its previous digest (PutImage of that
    image's manifest, byte for byte) **only if it still points at the promoted digest**: a tag
    moved or removed since is left alone and reported, and a previous image that no longer exists
    is reported, not guessed. With ``remove_added_tags``, each tag the promotion newly added is
    removed, by tag, only if it still points at the promoted digest when re-read right before the
    delete and is not the image's last tag. It never deletes an image. Re-running a finished
    roll-back changes nothing (one BatchGetImage per repository).

    In an immutable repository (or for a tag an exclusion filter makes immutable) ECR refuses to
    move a tag back: such a tag is reported in ``failed`` with reason ``immutable``.

    The report is XCom ``rollback`` (and ``return_value`` when the task succeeds): lists of
    ``{repository_name, tag, digest, ...}``: ``restored`` (with ``from_digest``), ``removed``,
    ``unchanged`` (already at the previous digest, or already absent), ``left_alone`` and
    ``failed`` (each with ``reason`` and ``detail``). The task fails, after pushing the report,
    if any tag is in ``failed``.

    :param promotions: One promotion report, a list of them, or their JSON / Python-literal text
        as a template renders them, e.g. ``"{{ ti.xcom_pull(task_ids='release', key='release') }}"``.
        A tag may appear in one report per repository only. (templated)
    :param remove_added_tags: Whether the tags a promotion newly added (those that did not exist
        before it) are removed; never an image's last tag.
    :param aws_conn_id: The Airflow connection used for AWS credentials.
        If this is ``None`` or empty then the default boto3 behaviour is used.
    :param region_name: AWS region_name. If not specified then the default boto3 behaviour is used.
    :param verify: Whether or not to verify SSL certificates. See:
        https://boto3.amazonaws.com/v1/documentation/api/latest/reference/core/session.html
    :param botocore_config: Configuration dictionary (key-values) for botocore client. See:
        https://botocore.amazonaws.com/v1/documentation/api/latest/reference/config.html
    """

    aws_hook_class = EcrHook
    template_fields: Sequence[str] = aws_template_fields("promotions")
    template_fields_renderers: ClassVar[dict[str, str]] = {"promotions": "json"}
    ui_color = "#f7a35c"

    def __init__(
        self,
        *,
        promotions: dict[str, Any] | list[dict[str, Any]] | str,
        remove_added_tags: bool = True,
        aws_conn_id: str | None = "aws_default",
        **kwargs,
    ):
        super().__init__(aws_conn_id=aws_conn_id, **kwargs)
        self.promotions = promotions
        self.remove_added_tags = remove_added_tags

    def execute(self, context: Context) -> dict[str, Any]:
        with fail_fast():
            request = RollbackRequest.validated(promotions=self.promotions, remove_added_tags=self.remove_added_tags)
            self.log.info(
                "Rolling back %d promotions: %s",
                len(request.promotions),
                ", ".join(f"{p.repository_name}@{p.digest}" for p in request.promotions) or "none",
            )
            client = self.hook.conn
            report = roll_back(client, request, log=self.log)
        context["ti"].xcom_push(key="rollback", value=report)
        self.log.info("Roll-back: %s", summary(report))
        if report["failed"]:
            names = ", ".join(f"{f['repository_name']}:{f['tag']} ({f['reason']})" for f in report["failed"])
            raise RollbackIncompleteError(
                f"{len(report['failed'])} tags could not be put back: {names}; the rest was done"
            )
        return report
