"""Promotion: add tags to an existing image by re-putting its manifest.

Calls, in order: one BatchGetImage for the source and every target; one PutImage per
target that does not point at the image yet; with ``remove_source_tag``, one DescribeImages
and one BatchDeleteImage. A run that changes nothing makes exactly one call.

:func:`promote` is three steps, which a release (:mod:`~airflow_ecr_retag.core.release_set`)
runs separately so that every repository is read and checked before the first write:
:func:`read` (the one BatchGetImage), :func:`plan` (every check, no call) and :func:`write`.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from airflow_ecr_retag.core import ecr, validation
from airflow_ecr_retag.core.errors import (
    GuardFailedError,
    ImageNotFoundError,
    ImmutableTagError,
    InvalidInputError,
    TargetExistsError,
)

_module_log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PromotionRequest:
    """Validated promotion inputs. Build with :meth:`validated` from rendered values."""

    repository_name: str
    source_tag: str | None
    source_digest: str | None
    target_tags: list[str]
    registry_id: str | None
    overwrite: bool
    remove_source_tag: bool

    @classmethod
    def validated(
        cls,
        *,
        repository_name: Any,
        source_tag: Any = None,
        source_digest: Any = None,
        target_tags: Any,
        registry_id: Any = None,
        overwrite: Any = True,
        remove_source_tag: Any = False,
    ) -> PromotionRequest:
        repository_name = validation.repository_name(repository_name)
        source_tag = validation.optional(validation.tag, source_tag, "source_tag")
        source_digest = validation.optional(validation.digest, source_digest, "source_digest")
        validation.source(source_tag, source_digest)
        targets = validation.tag_list(target_tags, "target_tags", max_items=validation.MAX_TARGET_TAGS)
        registry_id = validation.registry_id(registry_id)
        overwrite = validation.flag(overwrite, "overwrite")
        remove_source_tag = validation.flag(remove_source_tag, "remove_source_tag")
        if remove_source_tag:
            if source_tag is None:
                raise InvalidInputError("remove_source_tag", "needs source_tag: there is no tag to remove", None)
            if source_tag in targets:
                raise InvalidInputError(
                    "target_tags",
                    f"must not contain the source tag {source_tag!r} when remove_source_tag=True",
                    targets,
                )
        return cls(repository_name, source_tag, source_digest, targets, registry_id, overwrite, remove_source_tag)

    @property
    def source_ref(self) -> dict[str, str]:
        # By tag when there is one: the guard compares digests itself, for a precise message.
        return ecr.ref(tag=self.source_tag) if self.source_tag else ecr.ref(digest=self.source_digest)

    @property
    def source_label(self) -> str:
        return f"source_tag {self.source_tag!r}" if self.source_tag else f"source_digest {self.source_digest}"


def image_uri(registry_id: str, region_name: str, repository_name: str, digest: str) -> str:
    return f"{registry_id}.dkr.ecr.{region_name}.amazonaws.com/{repository_name}@{digest}"


def promote(
    client: Any, request: PromotionRequest, *, region_name: str, log: logging.Logger | Any = _module_log
) -> dict[str, Any]:
    """Promote the source image to every target tag and return the ``promotion`` report.

    :func:`read`, then :func:`plan` (every check, nothing written), then :func:`write`.

    :param log: where the per-tag lines go (the operator passes its task logger).
    """
    return write(client, plan(request, *read(client, request)), region_name=region_name, log=log)


@dataclass(frozen=True)
class PromotionPlan:
    """What :func:`write` will do, decided from one read: every check has passed."""

    request: PromotionRequest
    #: The image to promote (for an already-completed move: the image every target points at).
    image: ecr.FetchedImage
    unchanged: list[str]
    #: Tags to put, in write order: moves first.
    to_set: list[str]
    #: Tag -> the digest it points at now, for each tag the write moves.
    moved: dict[str, str]
    #: An earlier attempt finished this move (source tag gone, every target at one digest).
    already_moved: bool = False


def read(
    client: Any, request: PromotionRequest, extra: Sequence[dict[str, str]] = ()
) -> tuple[dict[tuple[str, str], ecr.FetchedImage], dict[tuple[str, str], dict[str, Any]]]:
    """One BatchGetImage for the source and every target (and ``extra`` references, which a copy
    reads in the same call: the manifests and signature tags it may have to put)."""
    target_refs = [ecr.ref(tag=t) for t in request.target_tags]
    refs = [request.source_ref, *target_refs, *extra]
    return ecr.fetch_images(client, request.repository_name, refs, request.registry_id)


def plan(
    request: PromotionRequest,
    found: dict[tuple[str, str], ecr.FetchedImage],
    failures: dict[tuple[str, str], dict[str, Any]],
) -> PromotionPlan:
    """Check a :func:`read` against the request (source present, guard, manifest, ``overwrite``); no call."""
    source_key = ecr.ref_key(request.source_ref)
    source = found.get(source_key)
    if source is None:
        failure = failures.get(source_key, {})
        if request.remove_source_tag and request.source_tag and _targets_converged(found, request):
            image = found[("tag", request.target_tags[0])]
            return PromotionPlan(request, image, list(request.target_tags), [], {}, already_moved=True)
        raise ImageNotFoundError(
            f"{request.source_label} not found in repository {request.repository_name!r}: "
            f"{failure.get('failureCode', 'ImageNotFound')} {failure.get('failureReason', '')}".rstrip()
        )
    if request.source_digest and source.digest != request.source_digest:
        raise GuardFailedError(
            f"source_tag {request.source_tag!r} now points at {source.digest}, not source_digest "
            f"{request.source_digest}: the image changed since it was tested; nothing was written"
        )
    source.verify(request.source_label)

    unchanged, to_set, moved = [], [], {}
    for tag in request.target_tags:
        current = found.get(("tag", tag))
        if current is not None and current.digest == source.digest:
            unchanged.append(tag)
            continue
        if current is not None:
            moved[tag] = current.digest
        to_set.append(tag)
    if moved and not request.overwrite:
        listing = ", ".join(f"{t} -> {d}" for t, d in moved.items())
        raise TargetExistsError(
            f"overwrite=False and target tags already point at other images: {listing}; nothing was written"
        )
    # Moves first: in an immutable repository the first move fails before any new tag is written.
    return PromotionPlan(request, source, unchanged, sorted(to_set, key=lambda t: t not in moved), moved)


def write(
    client: Any, plan: PromotionPlan, *, region_name: str, log: logging.Logger | Any = _module_log
) -> dict[str, Any]:
    """Carry out a :func:`plan`: one PutImage per tag to set, then the rename; returns the report."""
    request, source = plan.request, plan.image
    if plan.already_moved:
        return _already_moved(plan, region_name, log)
    repo, registry = request.repository_name, request.registry_id
    unchanged, moved = list(plan.unchanged), dict(plan.moved)
    for tag in unchanged:
        log.info("Tag %s: already at %s", tag, source.digest)
    added = []
    for tag in plan.to_set:
        if ecr.put_tag(client, repo, source, tag, registry):
            added.append(tag)
            if tag in moved:
                log.info("Tag %s: moved from %s to %s", tag, moved[tag], source.digest)
            else:
                log.info("Tag %s: added at %s", tag, source.digest)
        else:
            # Set by a concurrent or earlier attempt between our read and our write.
            moved.pop(tag, None)
            unchanged.append(tag)
            log.info("Tag %s: already at %s", tag, source.digest)

    removed = _remove_source_tag(client, request, source.digest, log) if request.remove_source_tag else False
    in_target_order = request.target_tags.index
    return _report(
        request,
        source,
        region_name,
        added=sorted(added, key=in_target_order),
        unchanged=sorted(unchanged, key=in_target_order),
        moved=moved,
        source_tag_removed=removed,
    )


def immutable_conflict(plan: PromotionPlan, repository: dict[str, Any]) -> ImmutableTagError | None:
    """The refusal ECR would give the plan's moves, decided from the target repository's
    DescribeRepositories entry (its tag mutability and exclusion filters), or None: lets a caller
    fail before its first write rather than at the first move."""
    repo, digest = plan.request.repository_name, plan.image.digest
    frozen = [t for t in plan.moved if ecr.tag_is_immutable(repository, t)]
    if not frozen:
        return None
    return ImmutableTagError("; ".join(str(ecr.immutable_tag_error(repo, t, plan.moved[t], digest)) for t in frozen))


def planned_report(plan: PromotionPlan, region_name: str) -> dict[str, Any]:
    """The report :func:`write` returns if every planned write lands, without writing anything.

    A roll-back of it is safe whatever part of the plan was written: a tag the write never
    reached is still at its previous digest (or absent), which a roll-back leaves as it is.
    """
    in_target_order = plan.request.target_tags.index
    return _report(
        plan.request,
        plan.image,
        region_name,
        added=sorted(plan.to_set, key=in_target_order),
        unchanged=list(plan.unchanged),
        moved=dict(plan.moved),
        source_tag_removed=False,
    )


def _remove_source_tag(client: Any, request: PromotionRequest, digest: str, log: Any) -> bool:
    """Remove the source tag if it still points at ``digest`` and is not the image's last tag."""
    repo, registry, tag = request.repository_name, request.registry_id, request.source_tag
    assert tag is not None
    detail = ecr.describe_image(client, repo, digest, registry)
    tags = (detail or {}).get("imageTags", [])
    if tag not in tags:
        log.warning("Source tag %s no longer points at %s (moved or removed meanwhile): left as it is", tag, digest)
        return False
    if len(tags) < 2:
        log.warning("Source tag %s is the last tag of %s: left in place so the image is not deleted", tag, digest)
        return False
    # The window between this re-read and the delete is ECR's: BatchDeleteImage has no condition.
    for removed, failures in ecr.remove_tags(client, repo, [tag], registry):
        if removed:
            log.info("Source tag %s: removed from %s", tag, digest)
            return True
        for failure in failures:
            log.warning(
                "Source tag %s not removed: %s %s", tag, failure.get("failureCode"), failure.get("failureReason")
            )
    return False


def _targets_converged(found: dict, request: PromotionRequest) -> bool:
    digests = {found[("tag", t)].digest for t in request.target_tags if ("tag", t) in found}
    return (
        len(digests) == 1
        and all(("tag", t) in found for t in request.target_tags)
        and (request.source_digest is None or digests == {request.source_digest})
    )


def _already_moved(plan: PromotionPlan, region_name: str, log: Any) -> dict[str, Any]:
    request, image = plan.request, plan.image
    log.info(
        "Source tag %s is gone and every target already points at %s: an earlier attempt completed this move",
        request.source_tag,
        image.digest,
    )
    for tag in request.target_tags:
        log.info("Tag %s: already at %s", tag, image.digest)
    return _report(
        request, image, region_name, added=[], unchanged=list(request.target_tags), moved={}, source_tag_removed=False
    )


def _report(request: PromotionRequest, image: ecr.FetchedImage, region_name: str, **outcome: Any) -> dict[str, Any]:
    registry = image.registry_id or request.registry_id or ""
    return {
        "repository_name": request.repository_name,
        "registry_id": registry,
        "digest": image.digest,
        "media_type": image.media_type,
        "image_uri": image_uri(registry, region_name, request.repository_name, image.digest),
        **outcome,
    }
