"""Airflow assets for ECR tags: the documented asset name of a tag, and the asset events promotions emit.

``ecr_image_asset("team/app", "prod")`` is the name both directions use: an ``Asset`` with an
``EcrTagEventTrigger`` watcher, and the ``outlets`` of the task that promotes to ``prod``. Every
operator that puts an image at tags calls :func:`emit_image_events` after its write, so each
``Asset`` outlet's event carries the extra ``digest``, ``image_uri``, ``tags`` (the target tags)
and ``moved`` (tag -> previous digest), which a downstream DAG reads from
``triggering_asset_events``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from airflow_ecr_retag.core import validation
from airflow_ecr_retag.exceptions import fail_fast

#: The URI scheme of the asset names :func:`ecr_image_asset` builds.
ASSET_SCHEME = "ecr"


def ecr_image_asset(repository_name: str, tag: str, registry_id: str | None = None) -> str:
    """The asset name of ``tag`` in ``repository_name``: ``ecr://<registry_id>/<repository>:<tag>``.

    Without ``registry_id`` (the caller's own registry) it is ``ecr://<repository>:<tag>``; give
    the account id when the same repository name exists in several registries you watch.

    :param repository_name: The repository, e.g. ``team/app``.
    :param tag: The tag, e.g. ``prod``.
    :param registry_id: The registry's 12-digit account id.
    """
    with fail_fast():
        repository = validation.repository_name(repository_name)
        name = validation.tag(tag)
        registry = validation.registry_id(registry_id)
    return f"{ASSET_SCHEME}://{registry + '/' if registry else ''}{repository}:{name}"


def emit_image_events(
    context: Mapping[str, Any],
    outlets: Iterable[Any],
    *,
    digest: str,
    image_uri: str,
    tags: Sequence[str],
    moved: Mapping[str, str],
) -> None:
    """Attach the image a task put at ``tags`` to the event of each of its ``Asset`` outlets.

    The extra gets ``digest``, ``image_uri``, ``tags`` and ``moved``; keys a user's own code set on
    the same event are kept. Asset aliases are left to the user (their events name an asset).
    """
    from airflow.sdk import Asset

    outlet_events = context.get("outlet_events")
    if outlet_events is None:
        return
    extra = {"digest": digest, "image_uri": image_uri, "tags": list(tags), "moved": dict(moved)}
    for outlet in outlets or ():
        if isinstance(outlet, Asset):
            outlet_events[outlet].extra.update(extra)
