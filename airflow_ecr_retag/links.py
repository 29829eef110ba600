"""Operator extra links to the Amazon ECR console, in the Amazon provider's ``BaseAwsLink`` style."""

from __future__ import annotations

from airflow.providers.amazon.aws.links.base_aws import BASE_AWS_CONSOLE_LINK, BaseAwsLink


class EcrImageLink(BaseAwsLink):
    """The promoted image's page in the ECR console (persisted with registry, repository, digest)."""

    name = "ECR Image"
    key = "ecr_image"
    format_str = (
        BASE_AWS_CONSOLE_LINK
        + "/ecr/repositories/private/{registry_id}/{repository_name}/_/image/{digest}/details?region={region_name}"
    )


class EcrRepositoryLink(BaseAwsLink):
    """The repository's image list in the ECR console."""

    name = "ECR Repository"
    key = "ecr_repository"
    format_str = (
        BASE_AWS_CONSOLE_LINK + "/ecr/repositories/private/{registry_id}/{repository_name}?region={region_name}"
    )
