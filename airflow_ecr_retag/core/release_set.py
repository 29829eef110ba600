"""Release sets: promote one image in each of several repositories to the same tags, as one release.

Every repository is read and checked before the first write, with promotion's own steps
(:func:`~airflow_ecr_retag.core.promotion.read` and :func:`~airflow_ecr_retag.core.promotion.plan`):
one BatchGetImage per repository for its source and every target, then, only if a tag would
move, one DescribeRepositories for those repositories (a tag's mutability is known from nowhere
else). If any guard, ``overwrite`` or immutability check fails anywhere, nothing is written
anywhere. Then the writes, repository by repository
(:func:`~airflow_ecr_retag.core.promotion.write`: one PutImage per tag to set, moves first).
If a write fails, what this run wrote is rolled back from the same promotion reports
EcrRetagOperator returns (:mod:`~airflow_ecr_retag.core.promotion_rollback`), and the release
fails saying what was rolled back.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from airflow_ecr_retag.core import ecr, validation
from airflow_ecr_retag.core.errors import ReleaseCheckFailedError, ReleaseFailedError, as_core_error
from airflow_ecr_retag.core.promotion import (
    PromotionPlan,
    PromotionRequest,
    immutable_conflict,
    plan,
    planned_report,
    read,
    write,
)
from airflow_ecr_retag.core.promotion_rollback import RollbackRequest, roll_back, summary

_module_log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ReleaseRequest:
    """Validated release inputs: one promotion per repository, all to the same target tags."""

    promotions: list[PromotionRequest]
    target_tags: list[str]
    registry_id: str | None
    overwrite: bool

    @classmethod
    def validated(
        cls, *, images: Any, target_tags: Any, registry_id: Any = None, overwrite: Any = True
    ) -> ReleaseRequest:
        entries = validation.release_images(images)
        targets = validation.tag_list(target_tags, "target_tags", max_items=validation.MAX_TARGET_TAGS)
        registry = validation.registry_id(registry_id)
        overwrite = validation.flag(overwrite, "overwrite")
        promotions = [
            PromotionRequest(
                repository_name=entry["repository_name"],
                source_tag=entry["source_tag"],
                source_digest=entry["source_digest"],
                target_tags=targets,
                registry_id=registry,
                overwrite=overwrite,
                remove_source_tag=False,
            )
            for entry in entries
        ]
        return cls(promotions, targets, registry, overwrite)


def release(
    client: Any,
    request: ReleaseRequest,
    *,
    region_name: str,
    log: logging.Logger | Any = _module_log,
    written: list[dict[str, Any]] | None = None,
) -> list[dict[str, Any]]:
    """Check every repository, then promote each; returns the promotion reports, in request order.

    :param written: a list this function keeps equal to the reports of every repository it has
        started writing to, whatever happens (for a repository whose write failed: the report
        as planned). The operator pushes it as XCom ``release`` even when the release fails, so
        an EcrRollbackOperator can finish a roll-back the release could not.
    """
    plans = check(client, request, log=log)
    reports = written if written is not None else []
    for promotion_plan in plans:
        repo = promotion_plan.request.repository_name
        reports.append(planned_report(promotion_plan, region_name))
        try:
            reports[-1] = write(client, promotion_plan, region_name=region_name, log=RepositoryLog(log, repo))
        except Exception as error:
            failure = _roll_back_this_run(client, error, repo, reports, log)
            if failure is error:
                raise
            raise failure from error
    log.info("Released %d images to %s", len(reports), ", ".join(request.target_tags))
    return list(reports)


def check(client: Any, request: ReleaseRequest, *, log: logging.Logger | Any = _module_log) -> list[PromotionPlan]:
    """Read every repository and check every guard, ``overwrite`` and immutability conflict; no write.

    Raises :class:`ReleaseCheckFailedError` naming every repository whose check failed.
    """
    plans: list[PromotionPlan] = []
    problems: dict[str, Exception] = {}
    for promotion in request.promotions:
        try:
            plans.append(plan(promotion, *read(client, promotion)))
        except Exception as error:
            failure = as_core_error(error)
            if failure is None:
                raise  # transient: botocore has retried; Airflow's retries may still succeed
            problems[promotion.repository_name] = failure
    moving = {p.request.repository_name: p for p in plans if p.moved}
    if moving:
        repositories = ecr.describe_repositories(client, list(moving), request.registry_id)
        for repo, moving_plan in moving.items():
            conflict = immutable_conflict(moving_plan, repositories.get(repo, {}))
            if conflict is not None:
                problems[repo] = conflict
    if problems:
        order = [p.repository_name for p in request.promotions]
        listing = "; ".join(f"{repo}: {problems[repo]}" for repo in sorted(problems, key=order.index))
        raise ReleaseCheckFailedError(
            f"release checks failed in {len(problems)} of {len(order)} repositories, so nothing was written "
            f"in any: {listing}",
            problems,
        )
    to_set = sum(len(p.to_set) for p in plans)
    log.info(
        "Checked %d repositories: %d tags to set (%d of them moved), %d already in place",
        len(plans),
        to_set,
        sum(len(p.moved) for p in plans),
        sum(len(p.unchanged) for p in plans),
    )
    return plans


def _roll_back_this_run(
    client: Any, error: Exception, repo: str, reports: list[dict[str, Any]], log: Any
) -> BaseException:
    """Roll back what this run wrote; the error to raise (the original one if a retry may fix it)."""
    log.error("Writing %s failed (%s): rolling back this run's writes", repo, error)
    rollback = None
    try:
        rollback = roll_back(client, RollbackRequest.validated(promotions=list(reports)), log=log)
        outcome = summary(rollback)
    except Exception as rollback_error:
        outcome = (
            f"the roll-back itself failed ({rollback_error}); XCom release lists what was written: "
            "roll it back with EcrRollbackOperator"
        )
    message = f"release failed writing {repo}: {error}; rolled back this run's writes: {outcome}"
    log.error("%s", message)
    if as_core_error(error) is None:
        # Transient (botocore's retries are spent): the release is undone and Airflow's retries may redo it.
        error.add_note(message)
        return error
    return ReleaseFailedError(message, rollback)


class RepositoryLog:
    """A logger whose lines start with the repository's name, for the per-tag lines of a release."""

    def __init__(self, log: logging.Logger | Any, repository_name: str):
        self._log = log
        self._repository_name = repository_name

    def _line(self, level: str, message: str, *args: Any) -> None:
        getattr(self._log, level)("%s: " + message, self._repository_name, *args)

    def debug(self, message: str, *args: Any) -> None:
        self._line("debug", message, *args)

    def info(self, message: str, *args: Any) -> None:
        self._line("info", message, *args)

    def warning(self, message: str, *args: Any) -> None:
        self._line("warning", message, *args)

    def error(self, message: str, *args: Any) -> None:
        self._line("error", message, *args)
