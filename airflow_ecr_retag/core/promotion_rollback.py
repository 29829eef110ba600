"""Roll back promotions from their reports: moved tags back to their previous digest, added tags removed.

Everything is conditional on the registry's state now, so a roll-back never undoes someone
else's change and a re-run changes nothing:

- a ``moved`` tag is put back at its previous digest (PutImage of that image's manifest, byte
  for byte) only if it still points at the promoted digest; a tag moved or removed since is
  left alone, and a previous image that no longer exists is reported, never guessed;
- with ``remove_added_tags``, a tag the promotion newly added is removed, by tag, only if it
  still points at the promoted digest (re-read right before the delete) and is not the image's
  last tag. No image is ever deleted.

Calls per repository: one BatchGetImage for every moved and added tag and every previous
digest; one PutImage per tag to put back; to remove tags, one DescribeImages (the re-read of
the promoted images) and one BatchDeleteImage per 100 tags. A finished roll-back re-run makes
one call per repository.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from airflow_ecr_retag.core import ecr, validation
from airflow_ecr_retag.core.errors import DigestMismatchError, ImmutableTagError, ManifestTooLargeError

_module_log = logging.getLogger(__name__)

#: Why a tag was left as it is (``left_alone``): the registry changed since the promotion, or
#: the change would delete an image, or it was not asked for.
MOVED_SINCE = "moved_since"
REMOVED_SINCE = "removed_since"
LAST_TAG = "last_tag"
NOT_ASKED = "remove_added_tags=False"
#: Why a tag could not be put back (``failed``): the task fails, naming them.
PREVIOUS_IMAGE_GONE = "previous_image_gone"
IMMUTABLE = "immutable"
MANIFEST_UNUSABLE = "manifest_unusable"


@dataclass(frozen=True)
class RecordedPromotion:
    """What a promotion report records: enough to undo it."""

    repository_name: str
    registry_id: str | None
    digest: str
    added: list[str]
    moved: dict[str, str]

    @property
    def new_tags(self) -> list[str]:
        """The tags the promotion added that did not exist before it."""
        return [t for t in self.added if t not in self.moved]


@dataclass(frozen=True)
class RollbackRequest:
    promotions: list[RecordedPromotion]
    remove_added_tags: bool

    @classmethod
    def validated(cls, *, promotions: Any, remove_added_tags: Any = True) -> RollbackRequest:
        reports = validation.promotion_reports(promotions)
        remove_added_tags = validation.flag(remove_added_tags, "remove_added_tags")
        return cls([RecordedPromotion(**report) for report in reports], remove_added_tags)


def empty_report() -> dict[str, list[dict[str, Any]]]:
    return {"restored": [], "removed": [], "unchanged": [], "left_alone": [], "failed": []}


def roll_back(client: Any, request: RollbackRequest, *, log: logging.Logger | Any = _module_log) -> dict[str, Any]:
    """Undo each recorded promotion as far as the registry's state now allows; returns the report.

    Report lists, each of ``{repository_name, tag, digest, ...}``: ``restored`` (put back at
    ``digest``, off ``from_digest``), ``removed`` (taken off ``digest``), ``unchanged`` (already
    at the previous digest, or already absent: a re-run lands here), ``left_alone`` (with a
    ``reason`` and ``detail``: moved or removed since, an image's last tag, not asked) and
    ``failed`` (with a ``reason`` and ``detail``: previous image gone, immutable, ECR refused).
    """
    report = empty_report()
    repositories: dict[tuple[str | None, str], list[RecordedPromotion]] = {}
    for promotion in request.promotions:
        repositories.setdefault((promotion.registry_id, promotion.repository_name), []).append(promotion)
    for (registry, repo), promotions in repositories.items():
        _roll_back_repository(client, repo, registry, promotions, request.remove_added_tags, report, log)
    return report


def _roll_back_repository(
    client: Any,
    repo: str,
    registry: str | None,
    promotions: list[RecordedPromotion],
    remove_added_tags: bool,
    report: dict[str, list[dict[str, Any]]],
    log: Any,
) -> None:
    def entry(kind: str, tag: str, digest: str | None, **extra: Any) -> None:
        report[kind].append({"repository_name": repo, "tag": tag, "digest": digest, **extra})

    refs: dict[tuple[str, str], dict[str, str]] = {}
    for promotion in promotions:
        tags = list(promotion.moved) + (promotion.new_tags if remove_added_tags else [])
        for ref in [ecr.ref(tag=t) for t in tags] + [ecr.ref(digest=d) for d in promotion.moved.values()]:
            refs.setdefault(ecr.ref_key(ref), ref)
    found, failures = ecr.fetch_images(client, repo, list(refs.values()), registry) if refs else ({}, {})

    to_remove: dict[str, list[str]] = {}  # promoted digest -> its added tags that still point at it
    for promotion in promotions:
        for tag, previous in promotion.moved.items():
            _restore(client, repo, registry, promotion, tag, previous, found, failures, entry, log)
        for tag in promotion.new_tags:
            if not remove_added_tags:
                log.info("%s: Tag %s: left at %s (remove_added_tags=False)", repo, tag, promotion.digest)
                entry("left_alone", tag, promotion.digest, reason=NOT_ASKED, detail="remove_added_tags=False")
                continue
            current = found.get(("tag", tag))
            if current is None:
                log.info("%s: Tag %s: already absent", repo, tag)
                entry("unchanged", tag, None)
            elif current.digest != promotion.digest:
                detail = f"now points at {current.digest}, not the promoted {promotion.digest}: moved since"
                log.warning("%s: Tag %s: left alone: %s", repo, tag, detail)
                entry("left_alone", tag, current.digest, reason=MOVED_SINCE, detail=detail)
            else:
                to_remove.setdefault(promotion.digest, []).append(tag)
    if to_remove:
        _remove_added(client, repo, registry, to_remove, entry, log)


def _restore(
    client: Any,
    repo: str,
    registry: str | None,
    promotion: RecordedPromotion,
    tag: str,
    previous: str,
    found: dict[tuple[str, str], ecr.FetchedImage],
    failures: dict[tuple[str, str], dict[str, Any]],
    entry: Any,
    log: Any,
) -> None:
    """Put ``tag`` back at ``previous`` if it still points at the promoted digest."""
    current = found.get(("tag", tag))
    if current is not None and current.digest == previous:
        log.info("%s: Tag %s: already at %s", repo, tag, previous)
        entry("unchanged", tag, previous)
        return
    if current is None:
        detail = f"no longer exists (removed since the promotion); not re-created at {previous}"
        log.warning("%s: Tag %s: left alone: %s", repo, tag, detail)
        entry("left_alone", tag, None, reason=REMOVED_SINCE, detail=detail)
        return
    if current.digest != promotion.digest:
        detail = f"now points at {current.digest}, not the promoted {promotion.digest}: moved since"
        log.warning("%s: Tag %s: left alone: %s", repo, tag, detail)
        entry("left_alone", tag, current.digest, reason=MOVED_SINCE, detail=detail)
        return
    image = found.get(("digest", previous))
    if image is None:
        failure = failures.get(("digest", previous), {})
        detail = (
            f"its previous image {previous} is no longer in the repository "
            f"({failure.get('failureCode', 'ImageNotFound')}); left at {promotion.digest}"
        )
        log.error("%s: Tag %s: not restored: %s", repo, tag, detail)
        entry("failed", tag, promotion.digest, reason=PREVIOUS_IMAGE_GONE, detail=detail)
        return
    try:
        image.verify(f"previous image of tag {tag!r}")
        restored = ecr.put_tag(client, repo, image, tag, registry)
    except ImmutableTagError as error:
        log.error("%s: Tag %s: not restored: %s", repo, tag, error)
        entry("failed", tag, promotion.digest, reason=IMMUTABLE, detail=str(error))
        return
    except (DigestMismatchError, ManifestTooLargeError) as error:
        log.error("%s: Tag %s: not restored: %s", repo, tag, error)
        entry("failed", tag, promotion.digest, reason=MANIFEST_UNUSABLE, detail=str(error))
        return
    if restored:
        log.info("%s: Tag %s: restored to %s (was at the promoted %s)", repo, tag, previous, promotion.digest)
        entry("restored", tag, previous, from_digest=promotion.digest)
    else:
        # Put back by a concurrent or earlier attempt between our read and our write.
        log.info("%s: Tag %s: already at %s", repo, tag, previous)
        entry("unchanged", tag, previous)


def _remove_added(
    client: Any, repo: str, registry: str | None, to_remove: dict[str, list[str]], entry: Any, log: Any
) -> None:
    """Remove the added tags, by tag, after re-reading each promoted image's tags: never its last one."""
    details = ecr.describe_images(client, repo, list(to_remove), registry)
    removable: dict[str, str] = {}  # tag -> promoted digest
    for digest, tags in to_remove.items():
        now = details.get(digest, {}).get("imageTags", [])
        still = [t for t in tags if t in now]
        for tag in tags:
            if tag not in still:
                detail = f"no longer on the promoted {digest} when re-read before removing: moved or removed since"
                log.warning("%s: Tag %s: left alone: %s", repo, tag, detail)
                entry("left_alone", tag, None, reason=MOVED_SINCE, detail=detail)
        if still and not set(now) - set(still):
            kept, still = still[0], still[1:]
            detail = f"the last tag of {digest}: removing it would delete the image"
            log.warning("%s: Tag %s: left in place: %s", repo, kept, detail)
            entry("left_alone", kept, digest, reason=LAST_TAG, detail=detail)
        removable.update(dict.fromkeys(still, digest))
    # The window between this re-read and the delete is ECR's: BatchDeleteImage has no condition.
    for removed_ids, failed in ecr.remove_tags(client, repo, list(removable), registry):
        for image_id in removed_ids:
            tag = image_id.get("imageTag", "")
            log.info("%s: Tag %s: removed from %s", repo, tag, removable.get(tag))
            entry("removed", tag, removable.get(tag))
        for failure in failed:
            tag = failure.get("imageId", {}).get("imageTag", "")
            code, reason = failure.get("failureCode", ""), failure.get("failureReason", "")
            if code == "ImageNotFound":
                log.info("%s: Tag %s: already absent", repo, tag)
                entry("unchanged", tag, None)
            else:
                log.error("%s: Tag %s: not removed: %s %s", repo, tag, code, reason)
                entry("failed", tag, removable.get(tag), reason=code, detail=reason)


def summary(report: dict[str, list[dict[str, Any]]]) -> str:
    """One line for a log or an error message: what was put back, removed, left alone, not undone."""

    def listing(kind: str, show: Any) -> str:
        return ", ".join(f"{e['repository_name']}:{e['tag']}{show(e)}" for e in report[kind]) or "none"

    return (
        f"restored {listing('restored', lambda e: ' -> ' + e['digest'])}; "
        f"removed {listing('removed', lambda e: '')}; "
        f"left alone {listing('left_alone', lambda e: ' (' + e['reason'] + ')')}; "
        f"not undone {listing('failed', lambda e: ' (' + e['reason'] + ')')}"
    )
