from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, ClassVar

from airflow.providers.amazon.aws.hooks.ecr import EcrHook
from airflow.providers.amazon.aws.operators.base_aws import AwsBaseOperator
from airflow.providers.amazon.aws.utils.mixins import aws_template_fields

from airflow_ecr_retag.assets import emit_image_events
from airflow_ecr_retag.core.promotion import PromotionRequest, promote
from airflow_ecr_retag.exceptions import fail_fast
from airflow_ecr_retag.links import EcrImageLink, persist_before_the_work

if TYPE_CHECKING:
    from airflow.sdk import Context


class EcrRetagOperator(AwsBaseOperator[EcrHook]):
    """
    Promote an existing Amazon ECR image to new tags by re-putting its manifest, byte for byte.

    No layer moves. One BatchGetImage reads the source and every target, then one PutImage
    runs per target that does not point at the image yet; a run that changes nothing makes
    one call, and a retry converges. The digest is returned (XCom ``return_value``) and the
    XCom ``promotion`` holds ``repository_name``, ``registry_id``, ``digest``, ``media_type``,
    ``image_uri`` (by digest), ``added`` (tags this run set, moved ones included),
    ``unchanged``, ``moved`` (tag -> previous digest, for roll-back) and
    ``source_tag_removed``. With ``outlets=[Asset(ecr_image_asset(...))]`` each ``Asset``
    outlet's event carries the extra ``digest``, ``image_uri``, ``tags`` (the target tags) and
    ``moved``.

    :param repository_name: The repository, e.g. ``team/app``. (templated)
    :param target_tags: The tag or tags to set, at most 99. (templated)
    :param source_tag: The tag of the image to promote. (templated)
    :param source_digest: The digest of the image to promote, ``sha256:<64 hex>``. With
        ``source_tag`` too, the task fails with nothing written unless the tag still points
        at this digest ("promote what was tested"). (templated)
    :param registry_id: The 12-digit account id of the registry, for cross-account
        promotion; defaults to the caller's registry. (templated)
    :param overwrite: Whether a target tag that points at another image may be moved to this
        one. With False such a tag fails the task before any write.
    :param remove_source_tag: Rename: after every target is set, remove the source tag, if
        it still points at the promoted image and is not its last tag. Never deletes an image.
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
    template_fields: Sequence[str] = aws_template_fields(
        "repository_name", "source_tag", "source_digest", "target_tags", "registry_id"
    )
    template_fields_renderers: ClassVar[dict[str, str]] = {"target_tags": "json"}
    operator_extra_links = (EcrImageLink(),)
    ui_color = "#f7a35c"

    def __init__(
        self,
        *,
        repository_name: str,
        target_tags: str | list[str],
        source_tag: str | None = None,
        source_digest: str | None = None,
        registry_id: str | None = None,
        overwrite: bool = True,
        remove_source_tag: bool = False,
        aws_conn_id: str | None = "aws_default",
        **kwargs,
    ):
        super().__init__(aws_conn_id=aws_conn_id, **kwargs)
        self.repository_name = repository_name
        self.target_tags = target_tags
        self.source_tag = source_tag
        self.source_digest = source_digest
        self.registry_id = registry_id
        self.overwrite = overwrite
        self.remove_source_tag = remove_source_tag

    def execute(self, context: Context) -> str:
        persist_before_the_work(
            EcrImageLink, context, self, registry_id=self.registry_id, repository_name=self.repository_name
        )
        with fail_fast():
            request = PromotionRequest.validated(
                repository_name=self.repository_name,
                source_tag=self.source_tag,
                source_digest=self.source_digest,
                target_tags=self.target_tags,
                registry_id=self.registry_id,
                overwrite=self.overwrite,
                remove_source_tag=self.remove_source_tag,
            )
            self.log.info(
                "Promoting %s in %s to %s",
                request.source_label,
                request.repository_name,
                ", ".join(request.target_tags),
            )
            client = self.hook.conn
            promotion = promote(client, request, region_name=client.meta.region_name, log=self.log)
        context["ti"].xcom_push(key="promotion", value=promotion)
        emit_image_events(
            context,
            self.outlets,
            digest=promotion["digest"],
            image_uri=promotion["image_uri"],
            tags=request.target_tags,
            moved=promotion["moved"],
        )
        EcrImageLink.persist(
            context=context,
            operator=self,
            region_name=client.meta.region_name,
            aws_partition=client.meta.partition,
            registry_id=promotion["registry_id"],
            repository_name=promotion["repository_name"],
            digest=promotion["digest"],
        )
        self.log.info("Promoted %s", promotion["image_uri"])
        return promotion["digest"]
