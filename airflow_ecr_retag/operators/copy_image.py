from __future__ import annotations

from collections.abc import Sequence
from functools import cached_property
from typing import TYPE_CHECKING, Any, ClassVar

from airflow.providers.amazon.aws.hooks.ecr import EcrHook
from airflow.providers.amazon.aws.operators.base_aws import AwsBaseOperator
from airflow.providers.amazon.aws.utils.mixins import aws_template_fields

from airflow_ecr_retag.assets import emit_image_events
from airflow_ecr_retag.core.image_copy import CopyRequest, copy_image
from airflow_ecr_retag.exceptions import fail_fast
from airflow_ecr_retag.links import EcrImageLink, persist_before_the_work

if TYPE_CHECKING:
    from airflow.sdk import Context


class EcrCopyImageOperator(AwsBaseOperator[EcrHook]):
    """
    Copy an Amazon ECR image to another repository, account or Region, every platform, referrer and
    signature included, byte for byte: the digest never changes.

    Only what the target lacks moves: BatchCheckLayerAvailability finds the missing blobs, which are
    streamed from GetDownloadUrlForLayer's URL (checked against their sha256 while they stream) into
    InitiateLayerUpload / UploadLayerPart / CompleteLayerUpload, ``max_concurrency`` at a time. Then the
    missing manifests go in by digest (an index's children first, each referrer after its subject), and
    the target tags last, exactly as :class:`~airflow_ecr_retag.operators.retag.EcrRetagOperator` sets
    them. A re-run after success makes reads only; nothing is ever deleted. Source and target the same
    repository of the same registry and Region: EcrRetagOperator's promotion, call for call.

    The digest is returned (XCom ``return_value``). XCom ``copy`` holds the target's ``repository_name``,
    ``registry_id``, ``digest``, ``media_type``, ``image_uri`` (by digest), ``added``, ``unchanged`` and
    ``moved`` (as EcrRetagOperator's ``promotion``, so EcrRollbackOperator can undo the tags), plus
    ``source_image_uri``, ``blobs``, ``blobs_copied``, ``blobs_present``, ``bytes_copied``,
    ``manifests_copied`` (an index's children included) and ``referrers_copied``.

    :param source_repository_name: The repository to copy from, e.g. ``team/app``. (templated)
    :param source_tag: The tag of the image to copy. (templated)
    :param source_digest: The digest of the image to copy, ``sha256:<64 hex>``; to copy one platform of
        a multi-arch image, its child's digest. With ``source_tag`` too, nothing is written unless the
        tag still points at this digest ("copy what was tested"). (templated)
    :param source_registry_id: The 12-digit account id of the source registry; defaults to the source
        credentials' account. (templated)
    :param source_region_name: The source's AWS Region; defaults to ``region_name``. (templated)
    :param source_aws_conn_id: The Airflow connection for the source; defaults to ``aws_conn_id``
        (the same credentials). (templated)
    :param repository_name: The target repository. (templated)
    :param target_tags: The tag or tags to set on the copy, at most 99. (templated)
    :param registry_id: The 12-digit account id of the target registry; defaults to the target
        credentials' account. (templated)
    :param overwrite: Whether a target tag that points at another image may be moved to this one. With
        False such a tag fails the task before any byte moves.
    :param copy_referrers: Also copy every OCI 1.1 referrer (signatures, SBOMs, attestations) of every
        copied manifest, and cosign's ``sha256-<hex>.sig`` / ``.att`` / ``.sbom`` tags.
    :param create_repository: Create the target repository (ECR's defaults) if it does not exist;
        otherwise a missing target repository fails the task.
    :param max_concurrency: Blobs in flight at once, 1 to 32; each holds up to one 10 MiB part (and
        botocore's base64 of it) in memory. Above 10, raise ``max_pool_connections`` in
        ``botocore_config`` too.
    :param aws_conn_id: The Airflow connection used for AWS credentials of the target.
        If this is ``None`` or empty then the default boto3 behaviour is used.
    :param region_name: The target's AWS region_name. If not specified then the default boto3 behaviour
        is used.
    :param verify: Whether or not to verify SSL certificates (ECR's endpoints and the presigned blob
        URLs). See: https://boto3.amazonaws.com/v1/documentation/api/latest/reference/core/session.html
    :param botocore_config: Configuration dictionary (key-values) for both botocore clients, e.g.
        ``{"retries": {"mode": "adaptive", "max_attempts": 10}}`` to respect PutImage's 10-a-second
        quota. See: https://botocore.amazonaws.com/v1/documentation/api/latest/reference/config.html
    """

    aws_hook_class = EcrHook
    template_fields: Sequence[str] = aws_template_fields(
        "source_repository_name",
        "source_tag",
        "source_digest",
        "source_registry_id",
        "source_region_name",
        "source_aws_conn_id",
        "repository_name",
        "target_tags",
        "registry_id",
    )
    template_fields_renderers: ClassVar[dict[str, str]] = {"target_tags": "json"}
    operator_extra_links = (EcrImageLink(),)
    ui_color = "#f7a35c"

    def __init__(
        self,
        *,
        source_repository_name: str,
        repository_name: str,
        target_tags: str | list[str],
        source_tag: str | None = None,
        source_digest: str | None = None,
        source_registry_id: str | None = None,
        source_region_name: str | None = None,
        source_aws_conn_id: str | None = None,
        registry_id: str | None = None,
        overwrite: bool = True,
        copy_referrers: bool = True,
        create_repository: bool = False,
        max_concurrency: int = 4,
        aws_conn_id: str | None = "aws_default",
        **kwargs,
    ):
        super().__init__(aws_conn_id=aws_conn_id, **kwargs)
        self.source_repository_name = source_repository_name
        self.source_tag = source_tag
        self.source_digest = source_digest
        self.source_registry_id = source_registry_id
        self.source_region_name = source_region_name
        self.source_aws_conn_id = source_aws_conn_id
        self.repository_name = repository_name
        self.target_tags = target_tags
        self.registry_id = registry_id
        self.overwrite = overwrite
        self.copy_referrers = copy_referrers
        self.create_repository = create_repository
        self.max_concurrency = max_concurrency

    @property
    def _source_hook_parameters(self) -> dict[str, Any]:
        return {
            **self._hook_parameters,
            "aws_conn_id": self.source_aws_conn_id or self.aws_conn_id,
            "region_name": self.source_region_name or self.region_name,
        }

    @cached_property
    def source_hook(self) -> EcrHook:
        """The source's hook: the target's own when the connection and Region are the same."""
        if self._source_hook_parameters == self._hook_parameters:
            return self.hook
        return self.aws_hook_class(**self._source_hook_parameters)

    def execute(self, context: Context) -> str:
        # The target's repository until the copy knows the image: a failed copy logs no missing link.
        persist_before_the_work(
            EcrImageLink, context, self, registry_id=self.registry_id, repository_name=self.repository_name
        )
        with fail_fast():
            request = CopyRequest.validated(
                source_repository_name=self.source_repository_name,
                source_tag=self.source_tag,
                source_digest=self.source_digest,
                source_registry_id=self.source_registry_id,
                repository_name=self.repository_name,
                target_tags=self.target_tags,
                registry_id=self.registry_id,
                overwrite=self.overwrite,
                copy_referrers=self.copy_referrers,
                create_repository=self.create_repository,
                max_concurrency=self.max_concurrency,
            )
            target, source = self.hook.conn, self.source_hook.conn
            self.log.info(
                "Copying %s from %s (%s) to %s (%s) as %s",
                request.source_tag or request.source_digest,
                request.source_repository_name,
                source.meta.region_name,
                request.repository_name,
                target.meta.region_name,
                ", ".join(request.target_tags),
            )
            report = copy_image(
                source,
                target,
                request,
                source_region_name=source.meta.region_name,
                region_name=target.meta.region_name,
                same_credentials=self._source_hook_parameters["aws_conn_id"] == self.aws_conn_id,
                verify=self.verify,
                log=self.log,
            )
        context["ti"].xcom_push(key="copy", value=report)
        emit_image_events(
            context,
            self.outlets,
            digest=report["digest"],
            image_uri=report["image_uri"],
            tags=request.target_tags,
            moved=report["moved"],
        )
        EcrImageLink.persist(
            context=context,
            operator=self,
            region_name=target.meta.region_name,
            aws_partition=target.meta.partition,
            registry_id=report["registry_id"],
            repository_name=report["repository_name"],
            digest=report["digest"],
        )
        return report["digest"]
