"""Copying an image between repositories, accounts and Regions (EcrCopyImageOperator): every
platform, its referrers and signatures, byte for byte, so the digest never changes.

ECR has no copy call. :func:`copy_image` is four steps:

1. :func:`read_source`: the image (promotion's own :func:`~airflow_ecr_retag.core.promotion.read`
   and :func:`~airflow_ecr_retag.core.promotion.plan`, so a missing image and a failed guard fail as
   in a promotion), an index's children, and with ``copy_referrers`` every OCI 1.1 referrer of every
   manifest (ListImageReferrers, recursively) and cosign's tag-based signatures, attestations and
   SBOMs (``sha256-<hex>.sig``, ``.att``, ``.sbom``);
2. :func:`read_target`: one BatchGetImage (promotion's ``read`` with the manifests and signature
   tags added) tells which manifests the target has and where the target tags point; the tags are
   planned by promotion's ``plan`` (``overwrite``) and, if one would move, one DescribeRepositories
   checks immutability: every refusal comes before the first byte moves;
3. BatchCheckLayerAvailability for the blobs of the manifests the target lacks, and only the missing
   blobs move (:mod:`~airflow_ecr_retag.core.blob_transfer`);
4. the missing manifests by digest, untagged: children before their index, the image before its
   referrers, each referrer after its subject; signature tags with their manifests; then the target
   tags through promotion's ``write``, exactly as EcrRetagOperator sets them. A target tag never
   points at an image whose blobs or children are missing.

A re-run after success makes reads only. Source and target the same repository of the same registry
and Region: exactly EcrRetagOperator's promotion (:func:`~airflow_ecr_retag.core.promotion.promote`).
Nothing is ever deleted, in either registry.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
from dataclasses import dataclass, field
from typing import Any

from airflow_ecr_retag.core import blob_transfer, ecr, validation
from airflow_ecr_retag.core.errors import EcrPermanentError, ImageNotFoundError, error_code
from airflow_ecr_retag.core.limits import MAX_LAYER_PART_BYTES, MAX_LAYER_PARTS
from airflow_ecr_retag.core.manifests import blob_descriptors, child_digests, cosign_tags, parsed
from airflow_ecr_retag.core.promotion import (
    PromotionPlan,
    PromotionRequest,
    image_uri,
    immutable_conflict,
    plan,
    promote,
    read,
    write,
)

_module_log = logging.getLogger(__name__)

#: The fields of EcrRetagOperator's ``promotion`` report that a copy's report carries (for the target).
PROMOTION_FIELDS = (
    "repository_name",
    "registry_id",
    "digest",
    "media_type",
    "image_uri",
    "added",
    "unchanged",
    "moved",
)


@dataclass(frozen=True)
class CopyRequest:
    """Validated copy inputs. Build with :meth:`validated` from rendered values."""

    source_repository_name: str
    source_tag: str | None
    source_digest: str | None
    source_registry_id: str | None
    repository_name: str
    target_tags: list[str]
    registry_id: str | None
    overwrite: bool
    copy_referrers: bool
    create_repository: bool
    max_concurrency: int

    @classmethod
    def validated(
        cls,
        *,
        source_repository_name: Any,
        source_tag: Any = None,
        source_digest: Any = None,
        source_registry_id: Any = None,
        repository_name: Any,
        target_tags: Any,
        registry_id: Any = None,
        overwrite: Any = True,
        copy_referrers: Any = True,
        create_repository: Any = False,
        max_concurrency: Any = 4,
    ) -> CopyRequest:
        source_repository = validation.repository_name(source_repository_name, "source_repository_name")
        source_tag = validation.optional(validation.tag, source_tag, "source_tag")
        source_digest = validation.optional(validation.digest, source_digest, "source_digest")
        validation.source(source_tag, source_digest)
        return cls(
            source_repository_name=source_repository,
            source_tag=source_tag,
            source_digest=source_digest,
            source_registry_id=validation.registry_id(source_registry_id, "source_registry_id"),
            repository_name=validation.repository_name(repository_name),
            target_tags=validation.tag_list(target_tags, "target_tags", max_items=validation.MAX_TARGET_TAGS),
            registry_id=validation.registry_id(registry_id),
            overwrite=validation.flag(overwrite, "overwrite"),
            copy_referrers=validation.flag(copy_referrers, "copy_referrers"),
            create_repository=validation.flag(create_repository, "create_repository"),
            max_concurrency=validation.bounded_int(
                max_concurrency, "max_concurrency", minimum=1, maximum=validation.MAX_COPY_CONCURRENCY
            ),
        )

    @property
    def source_read(self) -> PromotionRequest:
        """The source image, read and checked (present, guard, manifest) as a promotion's source is."""
        return PromotionRequest(
            self.source_repository_name, self.source_tag, self.source_digest, [], self.source_registry_id, True, False
        )

    def tagging(self, digest: str) -> PromotionRequest:
        """The target tags, set on the copied image (by digest) as EcrRetagOperator sets them."""
        return PromotionRequest(
            self.repository_name, None, digest, self.target_tags, self.registry_id, self.overwrite, False
        )

    @property
    def in_place(self) -> PromotionRequest:
        """The promotion EcrRetagOperator makes when source and target are one repository."""
        return PromotionRequest(
            self.repository_name,
            self.source_tag,
            self.source_digest,
            self.target_tags,
            self.registry_id,
            self.overwrite,
            False,
        )

    def is_in_place(self, *, same_credentials: bool, source_region_name: str, region_name: str) -> bool:
        """Whether source and target are one repository of one registry in one Region.

        Registry ids decide when both are given; when neither is, the same credentials mean the same
        account. Otherwise (one id given, or two connections without ids) the accounts are not known
        without another call, and the copy runs: it finds everything present and only sets tags.
        """
        if self.source_repository_name != self.repository_name or source_region_name != region_name:
            return False
        if self.source_registry_id and self.registry_id:
            return self.source_registry_id == self.registry_id
        return same_credentials and self.source_registry_id is None and self.registry_id is None


@dataclass(frozen=True)
class SourceManifest:
    """A manifest of the source to copy, with what it is to the image."""

    image: ecr.FetchedImage
    #: ``image`` (the image or a manifest of its index), ``referrer`` or ``signature tag`` (cosign's).
    kind: str
    #: The tag a cosign signature, attestation or SBOM is copied with.
    tag: str | None = None

    @property
    def digest(self) -> str:
        return self.image.digest

    @functools.cached_property
    def children(self) -> list[str]:
        return child_digests(parsed(self.image.manifest), self.image.media_type)

    @functools.cached_property
    def blobs(self) -> dict[str, int]:
        return {
            d["digest"]: int(d.get("size", 0))
            for d in blob_descriptors(parsed(self.image.manifest), self.image.media_type)
        }


@dataclass
class SourceImage:
    """Everything of the source a copy puts into the target, by digest, in discovery order."""

    top: ecr.FetchedImage
    registry_id: str
    manifests: dict[str, SourceManifest] = field(default_factory=dict)

    def of_kind(self, kind: str) -> list[SourceManifest]:
        return [m for m in self.manifests.values() if m.kind == kind]

    def put_order(self, digests: set[str]) -> list[SourceManifest]:
        """The manifests among ``digests`` in an order PutImage accepts: every index after its children,
        the image (and its children) first, then the referrers, each after its subject."""
        order: list[SourceManifest] = []
        placed: set[str] = set()

        def place(digest: str) -> None:
            manifest = self.manifests.get(digest)
            if manifest is None or digest in placed:
                return
            placed.add(digest)
            for child in manifest.children:
                place(child)
            if digest in digests:
                order.append(manifest)

        place(self.top.digest)
        for manifest in self.manifests.values():
            place(manifest.digest)
        return order


@dataclass
class CopyCounts:
    """The copy's own figures in the report."""

    blobs: int = 0
    blobs_copied: int = 0
    blobs_present: int = 0
    bytes_copied: int = 0
    manifests_copied: int = 0
    referrers_copied: int = 0


def copy_image(
    source_client: Any,
    target_client: Any,
    request: CopyRequest,
    *,
    source_region_name: str,
    region_name: str,
    same_credentials: bool,
    verify: bool | str | None = None,
    log: logging.Logger | Any = _module_log,
) -> dict[str, Any]:
    """Copy the source image into the target repository and set the target tags; returns the ``copy`` report.

    :param same_credentials: whether both clients use the same credentials (one Airflow connection).
    :param verify: TLS verification of the presigned blob URLs, as botocore's ``verify``.
    :param log: where the per-blob, per-manifest and per-tag lines go (the operator's task logger).
    """
    if request.is_in_place(
        same_credentials=same_credentials, source_region_name=source_region_name, region_name=region_name
    ):
        log.info("Source and target are one repository: promoting in place, as EcrRetagOperator does (no blob moves)")
        promotion = promote(target_client, request.in_place, region_name=region_name, log=log)
        return copy_report(promotion, source_image_uri=promotion["image_uri"], counts=CopyCounts())

    source = read_source(source_client, request, log=log)
    target = read_target(target_client, request, source, log=log)
    counts = CopyCounts()
    wanted = [m for m in source.manifests.values() if m.digest not in target.skipped]
    every_blob = {digest: size for m in wanted for digest, size in m.blobs.items()}
    missing = [m for m in wanted if m.digest not in target.present]
    needed = {digest: size for m in missing for digest, size in m.blobs.items()}
    available = ecr.available_layers(target_client, request.repository_name, list(needed), request.registry_id)
    to_copy = [blob_transfer.Blob(d, size) for d, size in needed.items() if d not in available]
    _check_part_count(to_copy)
    counts.blobs = len(every_blob)
    log.info(
        "Target %s: has %d of %d manifests; %d of %d blobs to copy (%s)",
        request.repository_name,
        len(wanted) - len(missing),
        len(wanted),
        len(to_copy),
        len(every_blob),
        blob_transfer.mib(sum(b.size for b in to_copy)),
    )
    outcomes = blob_transfer.copy_blobs(
        blob_transfer.Repository(source_client, request.source_repository_name, request.source_registry_id),
        blob_transfer.Repository(target_client, request.repository_name, request.registry_id),
        to_copy,
        max_concurrency=request.max_concurrency,
        verify=verify,
        log=log,
    )
    counts.blobs_copied = sum(1 for o in outcomes if o.copied)
    counts.bytes_copied = sum(o.size for o in outcomes if o.copied)
    counts.blobs_present = counts.blobs - counts.blobs_copied

    registry_id = target.registry_id
    for manifest in source.put_order({m.digest for m in missing}):
        answered = _put(target_client, request, manifest, log)
        if answered is None:
            continue
        registry_id = registry_id or answered or None
        if manifest.kind == "image":
            counts.manifests_copied += 1
        else:
            counts.referrers_copied += 1
    tag_plan = target.tag_plan
    if not tag_plan.image.registry_id:
        registry_id = registry_id or _registry_of(target_client, request)
        tag_plan = dataclasses.replace(tag_plan, image=dataclasses.replace(tag_plan.image, registry_id=registry_id))
    promotion = write(target_client, tag_plan, region_name=region_name, log=log)
    report = copy_report(
        promotion,
        source_image_uri=image_uri(
            source.registry_id, source_region_name, request.source_repository_name, source.top.digest
        ),
        counts=counts,
    )
    log.info(
        "Copied %s to %s: %d of %d blobs moved (%s), %d manifests, %d referrers and signatures; tags added %s",
        report["source_image_uri"],
        report["image_uri"],
        counts.blobs_copied,
        counts.blobs,
        blob_transfer.mib(counts.bytes_copied),
        counts.manifests_copied,
        counts.referrers_copied,
        ", ".join(report["added"]) or "none",
    )
    return report


def copy_report(promotion: dict[str, Any], *, source_image_uri: str, counts: CopyCounts) -> dict[str, Any]:
    """The ``copy`` report: the target's promotion report (EcrRetagOperator's fields) and the copy's figures.

    The one place it is built: what a copy returns, pushes and hands to asset events comes from here.
    """
    return {
        **{name: promotion[name] for name in PROMOTION_FIELDS},
        "source_image_uri": source_image_uri,
        **dataclasses.asdict(counts),
    }


# ---------------------------------------------------------------------- source
def read_source(client: Any, request: CopyRequest, *, log: logging.Logger | Any = _module_log) -> SourceImage:
    """The image, its index's children and, with ``copy_referrers``, its referrers and cosign tags.

    Calls: one BatchGetImage for the image (its cosign tags too when ``source_digest`` names it);
    one for its children and the cosign tags of every manifest of the image (100 references a
    call; again for nested indexes); per manifest of the image and per referrer found, one
    ListImageReferrers (every page), and one BatchGetImage for each round of new referrers.
    """
    repo, registry = request.source_repository_name, request.source_registry_id
    first_signatures = cosign_tags(request.source_digest) if request.copy_referrers and request.source_digest else []
    try:
        found, failures = read(client, request.source_read, [ecr.ref(tag=t) for t in first_signatures])
    except Exception as error:
        if error_code(error) != "RepositoryNotFoundException":
            raise
        raise _missing_repository("source", repo, registry) from error
    top = plan(request.source_read, found, failures).image
    source = SourceImage(top, top.registry_id or registry or "")
    source.manifests[top.digest] = SourceManifest(top, "image")
    looked_up = set()
    if first_signatures:
        looked_up.add(top.digest)
        _add_signatures(source, found, top.digest)

    # The index's children (and theirs), and each image manifest's cosign tags.
    while True:
        unread = [c for m in source.of_kind("image") for c in m.children if c not in source.manifests]
        signatures = [
            (m.digest, t)
            for m in source.of_kind("image")
            if request.copy_referrers and m.digest not in looked_up
            for t in cosign_tags(m.digest)
        ]
        signatures += [(c, t) for c in unread if request.copy_referrers for t in cosign_tags(c)]
        if not unread and not signatures:
            break
        refs = [ecr.ref(digest=c) for c in dict.fromkeys(unread)] + [ecr.ref(tag=t) for _, t in signatures]
        found, _ = ecr.fetch_images(client, repo, refs, registry)
        for child in dict.fromkeys(unread):
            image = found.get(("digest", child))
            if image is None:
                raise ImageNotFoundError(
                    f"{child}, a manifest of the index {top.digest}, is missing from source repository {repo!r}: "
                    "an index is copied whole or not at all; nothing was written"
                )
            image.verify(f"index manifest {child} of source repository {repo!r}")
            source.manifests[child] = SourceManifest(image, "image")
        for subject in dict.fromkeys(s for s, _ in signatures):
            looked_up.add(subject)
            _add_signatures(source, found, subject)

    if request.copy_referrers:
        _add_referrers(client, request, source, log)
    log.info(
        "Source %s@%s: %s, %d manifests (%d of the image, %d referrers, %d signature tags), %d blobs",
        repo,
        top.digest,
        top.media_type,
        len(source.manifests),
        len(source.of_kind("image")),
        len(source.of_kind("referrer")),
        len(source.of_kind("signature tag")),
        len({d for m in source.manifests.values() for d in m.blobs}),
    )
    return source


def _add_signatures(source: SourceImage, found: dict[tuple[str, str], ecr.FetchedImage], subject: str) -> None:
    for tag in cosign_tags(subject):
        image = found.get(("tag", tag))
        if image is not None and image.digest not in source.manifests:
            image.verify(f"signature tag {tag!r}")
            source.manifests[image.digest] = SourceManifest(image, "signature tag", tag=tag)


def _add_referrers(client: Any, request: CopyRequest, source: SourceImage, log: Any) -> None:
    """Every referrer of every manifest of the image, and of every referrer, recursively (a signature
    of an SBOM); a referrer that is an index comes with its children."""
    repo, registry = request.source_repository_name, request.source_registry_id
    subjects = [m.digest for m in source.of_kind("image")]
    while subjects:
        new = list(
            dict.fromkeys(
                entry["digest"]
                for subject in subjects
                for entry in ecr.list_referrers(client, repo, subject, registry)
                if entry.get("digest") not in source.manifests
            )
        )
        added = []
        while new:
            found, _ = ecr.fetch_images(client, repo, [ecr.ref(digest=d) for d in new], registry)
            children = []
            for digest in new:
                image = found.get(("digest", digest))
                if image is None:
                    # Listed, then deleted before the read: nothing to copy.
                    log.warning("Referrer %s: listed but no longer in source repository %r: skipped", digest, repo)
                    continue
                image.verify(f"referrer {digest} of source repository {repo!r}")
                manifest = source.manifests[digest] = SourceManifest(image, "referrer")
                added.append(digest)
                children += [c for c in manifest.children if c not in source.manifests]
            new = list(dict.fromkeys(children))
        subjects = added


# ---------------------------------------------------------------------- target
@dataclass(frozen=True)
class TargetState:
    """What the target has, and the tags' plan, from one read."""

    #: Manifests of the source the target already has.
    present: set[str]
    #: cosign manifests not copied: their tag holds another manifest in the target.
    skipped: set[str]
    tag_plan: PromotionPlan
    registry_id: str | None


def read_target(
    client: Any, request: CopyRequest, source: SourceImage, *, log: logging.Logger | Any = _module_log
) -> TargetState:
    """One BatchGetImage for the image, every target tag, every other manifest and every signature tag
    (100 references a call); a missing repository is created with ``create_repository``. Raises
    before any write for ``overwrite=False`` conflicts, a missing target repository, and (one
    DescribeRepositories, only if a tag would move) an immutable tag on another image."""
    top = source.top
    tagging = request.tagging(top.digest)
    others = [m for m in source.manifests.values() if m.digest != top.digest]
    extra = [ecr.ref(digest=m.digest) for m in others] + [ecr.ref(tag=m.tag) for m in others if m.tag]
    registry_id = request.registry_id
    try:
        found, failures = read(client, tagging, extra)
    except Exception as error:
        if error_code(error) != "RepositoryNotFoundException":
            raise
        if not request.create_repository:
            advice = ": create it, or set create_repository=True"
            raise _missing_repository("target", request.repository_name, request.registry_id, advice) from error
        registry_id = ecr.create_repository(client, request.repository_name, request.registry_id) or registry_id
        log.info("Target repository %s: created (create_repository=True)", request.repository_name)
        found, failures = {}, {}
    present = {m.digest for m in source.manifests.values() if ("digest", m.digest) in found}
    registry_id = registry_id or next((image.registry_id for image in found.values() if image.registry_id), None)

    skipped = set()
    for manifest in source.of_kind("signature tag"):
        holder = found.get(("tag", manifest.tag or ""))
        if holder is not None and holder.digest != manifest.digest:
            log.warning(
                "Signature tag %s: points at %s in the target, not the source's %s; left as it is",
                manifest.tag,
                holder.digest,
                manifest.digest,
            )
            skipped.add(manifest.digest)
        elif holder is None:
            present.discard(manifest.digest)  # the manifest may be there, its tag is not: put both

    image = found.get(("digest", top.digest)) or dataclasses.replace(top, registry_id=registry_id or "")
    tag_plan = plan(tagging, {**found, ("digest", top.digest): image}, failures)
    if tag_plan.moved:
        repositories = ecr.describe_repositories(client, [request.repository_name], request.registry_id)
        repository = repositories.get(request.repository_name, {})
        registry_id = registry_id or repository.get("registryId")
        conflict = immutable_conflict(tag_plan, repository)
        if conflict is not None:
            raise type(conflict)(f"{conflict}; nothing was copied")
    return TargetState(present, skipped, tag_plan, registry_id)


def _put(client: Any, request: CopyRequest, manifest: SourceManifest, log: Any) -> str | None:
    """Put one manifest into the target (with its tag for a signature tag). Returns the registry id
    ECR answered with ("" if none), or None if the target had it already."""
    repo, registry = request.repository_name, request.registry_id
    if manifest.tag:
        if not ecr.put_tag(client, repo, manifest.image, manifest.tag, registry):
            return None
        log.info("Signature tag %s: copied at %s", manifest.tag, manifest.digest)
        return ""
    answered = ecr.put_manifest(client, repo, manifest.image, registry)
    if answered is not None:
        log.info("Manifest %s (%s, %s): copied", manifest.digest, manifest.kind, manifest.image.media_type)
    return answered


def _missing_repository(side: str, repo: str, registry_id: str | None, advice: str = "") -> EcrPermanentError:
    """A missing repository, in a message that says which side of the copy it is."""
    return EcrPermanentError(
        "RepositoryNotFoundException",
        f"{side} repository {repo!r} does not exist in registry {registry_id or f'of the {side} credentials'}"
        f"{advice}; nothing was written",
    )


def _registry_of(client: Any, request: CopyRequest) -> str:
    """The target registry's id when no answer gave it (DescribeRepositories)."""
    details = ecr.describe_repositories(client, [request.repository_name], request.registry_id)
    return details.get(request.repository_name, {}).get("registryId", "")


def _check_part_count(blobs: list[blob_transfer.Blob]) -> None:
    """ECR takes at most MAX_LAYER_PARTS parts of at most MAX_LAYER_PART_BYTES: refuse before any write."""
    limit = MAX_LAYER_PARTS * MAX_LAYER_PART_BYTES
    too_big = [b for b in blobs if b.size > limit]
    if too_big:
        listing = ", ".join(f"{b.digest} ({b.size:,} bytes)" for b in too_big)
        raise EcrPermanentError(
            "LimitExceededException",
            f"blobs over the {limit:,} bytes ECR's upload quotas allow ({MAX_LAYER_PARTS:,} parts of at most "
            f"{MAX_LAYER_PART_BYTES:,} bytes): {listing}; nothing was written",
        )
