from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, ClassVar

from airflow.providers.amazon.aws.hooks.ecr import EcrHook
from airflow.providers.amazon.aws.operators.base_aws import AwsBaseOperator
from airflow.providers.amazon.aws.utils.mixins import aws_template_fields

from airflow_ecr_retag.core.tag_hygiene import (
    DEFAULT_MAX_CONCURRENT_REPOSITORIES,
    HygieneRequest,
    hygiene_failure,
    run_hygiene,
)
from airflow_ecr_retag.exceptions import fail_fast
from airflow_ecr_retag.links import EcrRepositoryLink, persist_before_the_work

if TYPE_CHECKING:
    from airflow.sdk import Context


class EcrTagHygieneOperator(AwsBaseOperator[EcrHook]):
    """
    Remove Amazon ECR tags by rule, on a schedule, without deleting an image unless asked.

    The repository is read once (DescribeImages paginator, 1000 images a page) and every
    decision is taken from that snapshot. A real run re-reads the affected images' tags (one
    DescribeImages per 100 images) and skips any tag that moved since, then removes tags with
    BatchDeleteImage by tag, 100 a call. With ``allow_image_deletion=False`` (the default) an
    image always keeps at least one tag, so no image is deleted. Per-item failures are
    reported, the rest goes on, and the task fails at the end naming them.

    The report is XCom ``hygiene_report`` whether the task succeeds or fails (and also
    ``return_value`` when it succeeds). It holds ``removed`` (``{tag, digest}``), ``kept_count``,
    ``skipped_last_tag``, ``images_deleted``, ``failed`` (with the ECR code), ``dry_run``,
    and also ``protected``, ``skipped_moved``, ``already_absent``, ``images_scanned``,
    ``tags_scanned``, ``images_archived_seen``, ``protected_by_pull_time`` and ``removal_cap``.
    With several repositories (a glob or a list) it is ``repositories`` (name -> that report),
    ``failed_repositories`` (name -> ``{code, message, retryable}``), ``totals``, ``dry_run``,
    ``registry_id`` and ``repository_name`` (as given).

    :param repository_name: The repository; or a glob of names (``"team/*"``, matched against
        the registry's repositories with DescribeRepositories; matching none is an error) or a
        list of names and globs, each repository cleaned on its own. (templated)
    :param rules: A list of rules (dicts, or their JSON text). Each has ``tag_pattern`` (a
        case-sensitive shell glob) and optionally ``keep_latest`` (spare the tags of the N
        newest images carrying a matching tag, by ``imagePushedAt``, ties by digest) and
        ``older_than_days`` (only images pushed more than this many days ago). A tag is
        removed if any rule selects it and no ``protect`` pattern matches it. (templated)
    :param protect: Globs of tags never removed, whatever the rules say. (templated)
    :param registry_id: The registry's 12-digit account id. (templated)
    :param allow_image_deletion: Whether removing an image's last tag, which deletes the
        image, is allowed. Default False: such a tag is kept and reported in ``skipped_last_tag``.
    :param dry_run: Only read and report what would be removed.
    :param include_archived: Also read archived images (DescribeImages ``filter.imageStatus``
        ANY: ARCHIVED and ACTIVATING too); their tags follow the rules like any other. Default
        False: ECR's listing, ACTIVE images only.
    :param protect_pulled_within_days: Never remove a tag of an image whose
        ``lastRecordedPullTime`` is within this many days (ECR refreshes it at least daily).
    :param max_removals: At most this many removals per repository: an integer, or a share of
        the repository's tags scanned such as ``"20%"``. A plan over it removes nothing, logs
        the planned removals as a dry run does, and fails the task. (templated)
    :param last_tag_preference: Globs in order choosing which tag an image keeps when every tag
        of it is selected (``["v*", "sha-*"]``); default, and among a glob's matches, the
        highest-sorting. (templated)
    :param max_concurrent_repositories: Over several repositories, how many are cleaned at once
        (threads sharing one client; botocore's default pool holds 10 connections).
    :param aws_conn_id: The Airflow connection used for AWS credentials.
        If this is ``None`` or empty then the default boto3 behaviour is used.
    :param region_name: AWS region_name. If not specified then the default boto3 behaviour is used.
    :param verify: Whether or not to verify SSL certificates. See:
        https://boto3.amazonaws.com/v1/documentation/api/latest/reference/core/session.html
    :param botocore_config: Configuration dictionary (key-values) for botocore client. See:
        https://botocore.amazonaws.com/v1/documentation/api/latest/reference/config.html
    """

    aws_hook_class = EcrHook
    template_fields: Sequence[str] = aws_template_fields(
        "repository_name", "registry_id", "rules", "protect", "max_removals", "last_tag_preference"
    )
    template_fields_renderers: ClassVar[dict[str, str]] = {
        "rules": "json",
        "protect": "json",
        "last_tag_preference": "json",
    }
    operator_extra_links = (EcrRepositoryLink(),)
    ui_color = "#f7a35c"

    def __init__(
        self,
        *,
        repository_name: str | list[str],
        rules: list[dict[str, Any]] | str,
        protect: list[str] | str | None = None,
        registry_id: str | None = None,
        allow_image_deletion: bool = False,
        dry_run: bool = False,
        include_archived: bool = False,
        protect_pulled_within_days: float | None = None,
        max_removals: int | str | None = None,
        last_tag_preference: list[str] | str | None = None,
        max_concurrent_repositories: int = DEFAULT_MAX_CONCURRENT_REPOSITORIES,
        aws_conn_id: str | None = "aws_default",
        **kwargs,
    ):
        super().__init__(aws_conn_id=aws_conn_id, **kwargs)
        self.repository_name = repository_name
        self.rules = rules
        self.protect = protect
        self.registry_id = registry_id
        self.allow_image_deletion = allow_image_deletion
        self.dry_run = dry_run
        self.include_archived = include_archived
        self.protect_pulled_within_days = protect_pulled_within_days
        self.max_removals = max_removals
        self.last_tag_preference = last_tag_preference
        self.max_concurrent_repositories = max_concurrent_repositories

    def execute(self, context: Context) -> dict[str, Any]:
        persist_before_the_work(
            EcrRepositoryLink, context, self, registry_id=self.registry_id, repository_name=self.repository_name
        )
        with fail_fast():
            request = HygieneRequest.validated(
                repository_name=self.repository_name,
                rules=self.rules,
                registry_id=self.registry_id,
                protect=self.protect,
                allow_image_deletion=self.allow_image_deletion,
                dry_run=self.dry_run,
                include_archived=self.include_archived,
                protect_pulled_within_days=self.protect_pulled_within_days,
                max_removals=self.max_removals,
                last_tag_preference=self.last_tag_preference,
                max_concurrent_repositories=self.max_concurrent_repositories,
            )
            client = self.hook.conn
            report = run_hygiene(client, request, log=self.log)
            if request.repositories is None:
                EcrRepositoryLink.persist(
                    context=context,
                    operator=self,
                    region_name=client.meta.region_name,
                    aws_partition=client.meta.partition,
                    registry_id=report["registry_id"],
                    repository_name=request.repository_name,
                )
            context["ti"].xcom_push(key="hygiene_report", value=report)
            failure = hygiene_failure(report)
            if failure is not None:
                raise failure
        return report
