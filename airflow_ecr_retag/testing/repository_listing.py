"""DescribeRepositories, paginated as ECR does (moto's ignores ``maxResults`` and ``nextToken``).

The botocore model: ``maxResults`` 1-1000, 100 when not given, then ``nextToken``; neither may
be combined with ``repositoryNames`` (at most 100 names, each of which must exist:
RepositoryNotFoundException). Repositories come in creation order, the order moto keeps.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from moto.core.responses import ActionResult
from moto.ecr.responses import ECRResponse

from airflow_ecr_retag.core.limits import DEFAULT_REPOSITORY_RESULTS, MAX_REPOSITORY_NAMES, MAX_REPOSITORY_RESULTS
from airflow_ecr_retag.testing import request_rules as rules
from airflow_ecr_retag.testing.request_rules import EcrError

if TYPE_CHECKING:
    from airflow_ecr_retag.testing.double import EcrDouble


class RepositoryListingHandlers(ECRResponse):
    """DescribeRepositories, installed on ``ECRResponse`` while a double is active."""

    double: EcrDouble

    def describe_repositories(self) -> ActionResult:
        names = self._get_param("repositoryNames")
        max_results, next_token = self._get_param("maxResults"), self._get_param("nextToken")
        if names is not None and (max_results is not None or next_token is not None):
            raise EcrError(
                "InvalidParameterException",
                "Invalid parameter: repositoryNames cannot be combined with nextToken or maxResults",
            )
        if names is not None and len(names) > MAX_REPOSITORY_NAMES:
            raise EcrError(
                "InvalidParameterException",
                "Invalid parameter at 'repositoryNames' failed to satisfy constraint: "
                f"'Member must have length less than or equal to {MAX_REPOSITORY_NAMES}'",
            )
        with self.double._lock:
            repositories = self.ecr_backend.describe_repositories(
                registry_id=self._get_param("registryId"), repository_names=names
            )
        if names is not None:
            return ActionResult({"repositories": repositories})
        page, token = rules.paginate(
            repositories, max_results, next_token, limit=MAX_REPOSITORY_RESULTS, default=DEFAULT_REPOSITORY_RESULTS
        )
        return ActionResult({"repositories": page, **({"nextToken": token} if token else {})})
