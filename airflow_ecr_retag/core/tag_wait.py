"""What "the tag is there" means, shared by the poke-mode sensor and the deferrable trigger's poller.

One check is one BatchGetImage: the digest comes back in ``imageId`` and a
missing tag is a per-item ``ImageNotFound`` failure, not an exception. :func:`evaluate`
judges one answer, whoever asked.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from airflow_ecr_retag.core import ecr, validation
from airflow_ecr_retag.core.errors import EcrPermanentError

#: Per-item failures that will not go away by waiting.
PERMANENT_FAILURE_CODES = frozenset({"InvalidImageTag", "InvalidImageDigest", "MissingDigestAndTag"})


@dataclass(frozen=True, slots=True)
class TagWait:
    """A validated wait: ``tag`` in ``repository_name``, optionally at ``expected_digest``."""

    repository_name: str
    tag: str
    expected_digest: str | None = None
    registry_id: str | None = None

    @classmethod
    def validated(
        cls, *, repository_name: Any, tag: Any, expected_digest: Any = None, registry_id: Any = None
    ) -> TagWait:
        return cls(
            validation.repository_name(repository_name),
            validation.tag(tag),
            validation.optional(validation.digest, expected_digest, "expected_digest"),
            validation.registry_id(registry_id),
        )


@dataclass(frozen=True)
class TagCheck:
    """The outcome of one check: ``done`` with the digest, or not yet with the reason."""

    done: bool
    digest: str | None
    message: str


def evaluate(wait: TagWait, image: ecr.FetchedImage | None, failure: dict[str, Any] | None) -> TagCheck:
    """Judge one BatchGetImage answer for ``wait``. Raises for failures that waiting cannot fix."""
    if image is None:
        code = (failure or {}).get("failureCode", "ImageNotFound")
        if code in PERMANENT_FAILURE_CODES:
            raise EcrPermanentError(code, (failure or {}).get("failureReason", f"tag {wait.tag!r} refused"))
        return TagCheck(False, None, f"tag {wait.tag!r} not in {wait.repository_name} yet ({code})")
    if wait.expected_digest and image.digest != wait.expected_digest:
        return TagCheck(
            False, image.digest, f"tag {wait.tag!r} points at {image.digest}, waiting for {wait.expected_digest}"
        )
    return TagCheck(True, image.digest, f"tag {wait.tag!r} in {wait.repository_name} points at {image.digest}")


def check_tag(client: Any, wait: TagWait) -> TagCheck:
    """One synchronous check: one ECR call."""
    found, failures = ecr.fetch_images(client, wait.repository_name, [ecr.ref(tag=wait.tag)], wait.registry_id)
    key = ("tag", wait.tag)
    return evaluate(wait, found.get(key), failures.get(key))
