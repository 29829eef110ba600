"""Tag hygiene: decide from one repository snapshot which tags to remove, then remove them safely.

Airflow-free. Calls: the DescribeImages paginator (1000 images a page) once; for a real
run, a re-check of the affected images' current tags (one DescribeImages per 100 of them, or
the paginator again when that is fewer calls), then one BatchDeleteImage per 100 tags. Tags are only ever removed by tag. With
``allow_image_deletion=False`` an image's last tag is never removed, so no image is deleted.
"""

from __future__ import annotations

import fnmatch
import json
import logging
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any

from airflow_ecr_retag import ecr, validation
from airflow_ecr_retag.exceptions import InvalidInputError, error_code

_module_log = logging.getLogger(__name__)

RULE_KEYS = frozenset({"tag_pattern", "keep_latest", "older_than_days"})


@dataclass(frozen=True)
class Rule:
    """Select tags matching ``tag_pattern``; with ``keep_latest`` spare those of the N newest
    images; with ``older_than_days`` only those of images pushed longer ago. Both: both must hold."""

    tag_pattern: str
    keep_latest: int | None = None
    older_than_days: float | None = None


def parse_rules(value: Any) -> list[Rule]:
    """Validate ``rules`` (a list of dicts, or its JSON text from a template)."""
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except ValueError:
            raise InvalidInputError("rules", "must be a list of rule dicts (or its JSON text)", value) from None
    if not isinstance(value, (list, tuple)):
        raise InvalidInputError("rules", "must be a list of rule dicts", value)
    if not value:
        raise InvalidInputError("rules", "must contain at least one rule", value)
    rules = []
    for i, raw in enumerate(value):
        where = f"rules[{i}]"
        if not isinstance(raw, dict):
            raise InvalidInputError(where, "must be a dict", raw)
        unknown = sorted(set(raw) - RULE_KEYS)
        if unknown:
            raise InvalidInputError(where, f"unknown keys {', '.join(map(repr, unknown))}; allowed: {', '.join(sorted(RULE_KEYS))}", raw)
        pattern = raw.get("tag_pattern")
        if not isinstance(pattern, str) or not pattern.strip() or pattern != pattern.strip():
            raise InvalidInputError(f"{where}.tag_pattern", "is required: a non-empty glob without surrounding whitespace", pattern)
        keep = raw.get("keep_latest")
        if keep is not None and (isinstance(keep, bool) or not isinstance(keep, int) or keep < 0):
            raise InvalidInputError(f"{where}.keep_latest", "must be a non-negative integer", keep)
        days = raw.get("older_than_days")
        if days is not None and (isinstance(days, bool) or not isinstance(days, (int, float)) or days < 0 or math.isnan(days)):
            raise InvalidInputError(f"{where}.older_than_days", "must be a non-negative number of days", days)
        rules.append(Rule(pattern, keep, days))
    return rules


@dataclass(frozen=True)
class HygieneRequest:
    repository_name: str
    registry_id: str | None
    rules: list[Rule]
    protect: list[str]
    allow_image_deletion: bool
    dry_run: bool

    @classmethod
    def validated(cls, *, repository_name: Any, rules: Any, registry_id: Any = None, protect: Any = None,
                  allow_image_deletion: Any = False, dry_run: Any = False) -> HygieneRequest:
        repository = validation.repository_name(repository_name)
        registry = validation.registry_id(registry_id)
        parsed = parse_rules(rules)
        protected = validation.patterns(protect, "protect")
        for name, flag in (("allow_image_deletion", allow_image_deletion), ("dry_run", dry_run)):
            if not isinstance(flag, bool):
                raise InvalidInputError(name, "must be True or False", flag)
        return cls(repository, registry, parsed, protected, allow_image_deletion, dry_run)


@dataclass
class Snapshot:
    """The repository as one DescribeImages pass saw it."""

    images: dict[str, dict[str, Any]] = field(default_factory=dict)  # digest -> detail
    pages: int = 0

    @property
    def tag_count(self) -> int:
        return sum(len(d.get("imageTags", [])) for d in self.images.values())


def read_snapshot(client: Any, request: HygieneRequest, log: Any = _module_log) -> Snapshot:
    snapshot = Snapshot()
    for page in ecr.describe_all(client, request.repository_name, request.registry_id):
        snapshot.pages += 1
        for detail in page:
            snapshot.images[detail["imageDigest"]] = detail
        log.info("Read %d images (%d DescribeImages pages)", len(snapshot.images), snapshot.pages)
    return snapshot


def _pushed_at(detail: dict[str, Any]) -> datetime:
    value = detail.get("imagePushedAt")
    if isinstance(value, datetime):
        return value if value.tzinfo else value.replace(tzinfo=timezone.utc)
    return datetime.fromtimestamp(float(value or 0), tz=timezone.utc)


def select(snapshot: Snapshot, rules: Sequence[Rule], now: datetime) -> dict[str, str]:
    """Every tag some rule selects, with its digest (protection is applied afterwards)."""
    selected: dict[str, str] = {}
    for rule in rules:
        carriers = []  # (image detail, its tags matching the rule)
        for digest, detail in snapshot.images.items():
            matching = [t for t in detail.get("imageTags", []) if fnmatch.fnmatchcase(t, rule.tag_pattern)]
            if matching:
                carriers.append((digest, detail, matching))
        # Newest first; ties broken by digest, so the ranking is stable.
        carriers.sort(key=lambda c: (-_pushed_at(c[1]).timestamp(), c[0]))
        cutoff = now - timedelta(days=rule.older_than_days) if rule.older_than_days is not None else None
        for rank, (digest, detail, matching) in enumerate(carriers):
            if rule.keep_latest is not None and rank < rule.keep_latest:
                continue
            if cutoff is not None and _pushed_at(detail) >= cutoff:
                continue
            for tag in matching:
                selected[tag] = digest
    return selected


def _protected(tag: str, patterns: Iterable[str]) -> bool:
    return any(fnmatch.fnmatchcase(tag, p) for p in patterns)


@dataclass
class Plan:
    remove: dict[str, list[str]] = field(default_factory=dict)  # digest -> tags to remove
    skipped_last_tag: list[dict[str, str]] = field(default_factory=list)
    protected: list[str] = field(default_factory=list)
    images_deleted: list[str] = field(default_factory=list)


def plan(current_tags: dict[str, list[str]], candidates: dict[str, list[str]], allow_image_deletion: bool) -> Plan:
    """Per image, which candidate tags go. Without deletion allowed, one tag always stays."""
    result = Plan()
    for digest, tags in candidates.items():
        present = current_tags.get(digest, [])
        going = [t for t in tags if t in present]
        if not going:
            continue
        if len(going) == len(present):
            if allow_image_deletion:
                result.images_deleted.append(digest)
            else:
                # Keep one tag so the image survives: the highest-sorting, which is stable across runs.
                kept = max(going)
                going.remove(kept)
                result.skipped_last_tag.append({"tag": kept, "digest": digest})
        if going:
            result.remove[digest] = sorted(going)
    return result


def current_tags(client: Any, request: HygieneRequest, digests: Sequence[str], snapshot: Snapshot) -> dict[str, list[str]]:
    """The images' tags now, by the cheaper of two reads. Images gone are absent.

    DescribeImages by digest takes 100 images a call; the paginator reads 1000 a page. When most
    of the repository is affected, re-reading all of it is fewer calls (10 pages instead of 100
    calls at 10,000 images) and tells the same.
    """
    tags: dict[str, list[str]] = {}
    if math.ceil(len(snapshot.images) / ecr.DESCRIBE_PAGE_SIZE) < math.ceil(len(digests) / ecr.MAX_IMAGE_IDS):
        wanted = set(digests)
        for page in ecr.describe_all(client, request.repository_name, request.registry_id):
            tags.update({d["imageDigest"]: list(d.get("imageTags", [])) for d in page if d["imageDigest"] in wanted})
        return tags

    def read(batch: Sequence[str]) -> None:
        try:
            response = client.describe_images(
                **ecr.pruned(registryId=request.registry_id, repositoryName=request.repository_name,
                             imageIds=[ecr.ref(digest=d) for d in batch])
            )
        except Exception as error:
            if error_code(error) != "ImageNotFoundException":
                raise
            # One id in the batch is gone and ECR fails the whole call: find it by halving.
            if len(batch) > 1:
                middle = len(batch) // 2
                read(batch[:middle])
                read(batch[middle:])
            return
        for detail in response.get("imageDetails", []):
            tags[detail["imageDigest"]] = list(detail.get("imageTags", []))

    for batch in ecr.chunks(list(digests)):
        read(batch)
    return tags


def run_hygiene(client: Any, request: HygieneRequest, *, now: datetime | None = None, log: Any = _module_log) -> dict[str, Any]:
    """Apply ``request`` to the repository and return the report."""
    now = now or datetime.now(timezone.utc)
    snapshot = read_snapshot(client, request, log)
    selected = select(snapshot, request.rules, now)
    protected = sorted(t for t in selected if _protected(t, request.protect))
    candidates: dict[str, list[str]] = {}
    for tag, digest in selected.items():
        if tag not in protected:
            candidates.setdefault(digest, []).append(tag)

    snapshot_tags = {d: list(detail.get("imageTags", [])) for d, detail in snapshot.images.items()}
    moved: list[dict[str, str]] = []
    if request.dry_run or not candidates:
        decided = plan(snapshot_tags, candidates, request.allow_image_deletion)
    else:
        now_tags = current_tags(client, request, list(candidates), snapshot)
        for digest, tags in candidates.items():
            for tag in tags:
                if tag not in now_tags.get(digest, []):
                    moved.append({"tag": tag, "digest": digest})
        decided = plan(now_tags, candidates, request.allow_image_deletion)
    for entry in moved:
        log.info("Tag %s no longer on %s since the snapshot: left untouched", entry["tag"], entry["digest"])

    tag_to_digest = {t: d for d, tags in decided.remove.items() for t in tags}
    batches = math.ceil(len(tag_to_digest) / ecr.MAX_IMAGE_IDS)
    log.info(
        "%d tags selected by rules, %d protected, %d to remove in %d batches%s",
        len(selected), len(protected), len(tag_to_digest), batches, " (dry run: nothing is removed)" if request.dry_run else "",
    )
    removed, failed, already_absent, deleted = [], [], [], []
    if request.dry_run:
        removed = [{"tag": t, "digest": d} for t, d in sorted(tag_to_digest.items())]
        deleted = list(decided.images_deleted)
    else:
        for number, (ids, failures) in enumerate(
            ecr.remove_tags(client, request.repository_name, sorted(tag_to_digest), request.registry_id), start=1
        ):
            removed.extend({"tag": i["imageTag"], "digest": i.get("imageDigest", tag_to_digest.get(i["imageTag"], ""))} for i in ids if "imageTag" in i)
            for failure in failures:
                tag = failure.get("imageId", {}).get("imageTag", "")
                entry = {"tag": tag, "digest": tag_to_digest.get(tag, ""), "code": failure.get("failureCode", ""),
                         "reason": failure.get("failureReason", "")}
                (already_absent if entry["code"] == "ImageNotFound" else failed).append(entry)
            log.info("Batch %d/%d done: %d removed so far", number, batches, len(removed))
        gone_tags = {r["tag"] for r in removed}
        deleted = [d for d in decided.images_deleted if set(decided.remove.get(d, [])) <= gone_tags]
    report = {
        "repository_name": request.repository_name,
        "registry_id": request.registry_id or next((d.get("registryId") for d in snapshot.images.values()), None),
        "dry_run": request.dry_run,
        "removed": removed,
        "kept_count": snapshot.tag_count - len(removed) - len(already_absent),
        "skipped_last_tag": decided.skipped_last_tag,
        "images_deleted": deleted if request.allow_image_deletion else [],
        "failed": failed,
        "protected": protected,
        "skipped_moved": moved,
        "already_absent": already_absent,
        "images_scanned": len(snapshot.images),
        "tags_scanned": snapshot.tag_count,
    }
    log.info("%s", summary_table(report))
    return report


def summary_table(report: dict[str, Any]) -> str:
    rows = [
        ("images scanned", report["images_scanned"]),
        ("tags scanned", report["tags_scanned"]),
        ("tags removed" + (" (dry run)" if report["dry_run"] else ""), len(report["removed"])),
        ("tags kept", report["kept_count"]),
        ("protected by pattern", len(report["protected"])),
        ("kept as an image's last tag", len(report["skipped_last_tag"])),
        ("moved since the snapshot", len(report["skipped_moved"])),
        ("already absent", len(report["already_absent"])),
        ("images deleted", len(report["images_deleted"])),
        ("failed", len(report["failed"])),
    ]
    width = max(len(name) for name, _ in rows)
    lines = [f"Tag hygiene of {report['repository_name']}:"]
    lines += [f"  {name.ljust(width)}  {value:>7}" for name, value in rows]
    lines += [f"  failed: {f['tag']} ({f['code']}: {f['reason']})" for f in report["failed"]]
    return "\n".join(lines)
