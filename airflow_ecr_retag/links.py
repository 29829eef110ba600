"""Operator extra links to the Amazon ECR console, in the Amazon provider's ``BaseAwsLink`` style.

Each link is persisted at the start of ``execute``, before any ECR call, with what is known then,
as the Amazon provider's operators persist theirs before the work: after the task, the Task
Runner renders every extra link from its XCom, and a link without one makes it log
``XCom not found ... key='ecr_image'``, which reads like a second failure. So a link always
has its XCom, and points as far as is known: the registry's repositories, then the
repository, then (once promoted) the image.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from airflow.providers.amazon.aws.links.base_aws import BASE_AWS_CONSOLE_LINK, BaseAwsLink

if TYPE_CHECKING:
    from airflow.providers.amazon.aws.operators.base_aws import AwsBaseOperator
    from airflow.sdk import Context

_REPOSITORIES = BASE_AWS_CONSOLE_LINK + "/ecr/private-registry/repositories?region={region_name}"
_REPOSITORY = BASE_AWS_CONSOLE_LINK + "/ecr/repositories/private/{registry_id}/{repository_name}?region={region_name}"
_IMAGE = (
    BASE_AWS_CONSOLE_LINK
    + "/ecr/repositories/private/{registry_id}/{repository_name}/_/image/{digest}/details?region={region_name}"
)


def _console_link(**values: Any) -> str:
    """The most precise page the values allow: an image, a repository, or the registry's repositories."""
    if not values.get("aws_domain") or not values.get("region_name"):
        return ""
    name = values.get("repository_name")
    one_repository = isinstance(name, str) and name and not any(c in name for c in "*?[")  # not a glob
    if not (values.get("registry_id") and one_repository):
        return _REPOSITORIES.format(**values)
    if not values.get("digest"):
        return _REPOSITORY.format(**values)
    return _IMAGE.format(**values)


class EcrImageLink(BaseAwsLink):
    """The promoted image's page in the ECR console (persisted with registry, repository, digest);
    until the image is known, its repository's page (persisted with registry and repository)."""

    name = "ECR Image"
    key = "ecr_image"
    format_str = _IMAGE

    def format_link(self, **kwargs: Any) -> str:
        return _console_link(**kwargs)


class EcrRepositoryLink(BaseAwsLink):
    """The repository's image list in the ECR console; the registry's repositories when a task
    works on many, or before the registry is known."""

    name = "ECR Repository"
    key = "ecr_repository"
    format_str = _REPOSITORY

    def format_link(self, **kwargs: Any) -> str:
        return _console_link(**{key: value for key, value in kwargs.items() if key != "digest"})


def persist_before_the_work(
    link: type[BaseAwsLink], context: Context, operator: AwsBaseOperator, **values: Any
) -> None:
    """Persist ``link`` at the start of ``execute``, before any ECR call, with the values known then
    (the client's Region and partition, no call made), so that it has its XCom whatever follows."""
    link.persist(
        context=context,
        operator=operator,
        region_name=operator.hook.conn_region_name,
        aws_partition=operator.hook.conn_partition,
        **values,
    )
