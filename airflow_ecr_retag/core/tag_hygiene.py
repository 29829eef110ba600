"""Tag hygiene: decide from one repository snapshot which tags to remove, then remove them safely.

Calls: the DescribeImages paginator (1000 images a page) once; for a real run, a re-check of
the affected images' current tags (one DescribeImages per 100 of them, or the paginator again
when that is fewer calls), then one BatchDeleteImage per 100 tags. Tags are only ever removed
by tag. With ``allow_image_deletion=False`` an image's last tag is never removed, so no image
is deleted.

:func:`run_hygiene` runs the steps in order, each a function of its own: :func:`read_snapshot`,
:func:`select`, :func:`apply_protection`, :func:`recheck`, :func:`plan`, :func:`remove_planned`,
:func:`build_report`.
"""

from __future__ import annotations

import fnmatch
import json
import logging
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from airflow_ecr_retag.core import ecr, validation
from airflow_ecr_retag.core.errors import InvalidInputError

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
            raise InvalidInputError(
                where, f"unknown keys {', '.join(map(repr, unknown))}; allowed: {', '.join(sorted(RULE_KEYS))}", raw
            )
        pattern = raw.get("tag_pattern")
        if not isinstance(pattern, str) or not pattern.strip() or pattern != pattern.strip():
            raise InvalidInputError(
                f"{where}.tag_pattern", "is required: a non-empty glob without surrounding whitespace", pattern
            )
        keep = raw.get("keep_latest")
        if keep is not None and (isinstance(keep, bool) or not isinstance(keep, int) or keep < 0):
            raise InvalidInputError(f"{where}.keep_latest", "must be a non-negative integer", keep)
        days = raw.get("older_than_days")
        if days is not None and (
            isinstance(days, bool) or not isinstance(days, (int, float)) or days < 0 or math.isnan(days)
        ):
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
    def validated(
        cls,
        *,
        repository_name: Any,
        rules: Any,
        registry_id: Any = None,
        protect: Any = None,
        allow_image_deletion: Any = False,
        dry_run: Any = False,
    ) -> HygieneRequest:
        repository = validation.repository_name(repository_name)
        registry = validation.registry_id(registry_id)
        parsed = parse_rules(rules)
        protected = validation.patterns(protect, "protect")
        allow_image_deletion = validation.flag(allow_image_deletion, "allow_image_deletion")
        dry_run = validation.flag(dry_run, "dry_run")
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
        return value if value.tzinfo else value.replace(tzinfo=UTC)
    return datetime.fromtimestamp(float(value or 0), tz=UTC)


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


def apply_protection(selected: dict[str, str], patterns: Sequence[str]) -> tuple[dict[str, list[str]], list[str]]:
    """Split the selected tags: candidates for removal (digest -> tags) and the protected ones (sorted)."""
    protected = sorted(t for t in selected if _protected(t, patterns))
    candidates: dict[str, list[str]] = {}
    for tag, digest in selected.items():
        if tag not in protected:
            candidates.setdefault(digest, []).append(tag)
    return candidates, protected


@dataclass
class Plan:
    remove: dict[str, list[str]] = field(default_factory=dict)  # digest -> tags to remove
    skipped_last_tag: list[dict[str, str]] = field(default_factory=list)
    images_deleted: list[str] = field(default_factory=list)

    @property
    def tag_to_digest(self) -> dict[str, str]:
        return {t: d for d, tags in self.remove.items() for t in tags}


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


def current_tags(
    client: Any, request: HygieneRequest, digests: Sequence[str], snapshot: Snapshot
) -> dict[str, list[str]]:
    """The images' tags now, by the cheaper of two reads. Images gone are absent.

    DescribeImages by digest takes 100 images a call; the paginator reads 1000 a page. When most
    of the repository is affected, re-reading all of it is fewer calls (10 pages instead of 100
    calls at 10,000 images) and tells the same.
    """
    if math.ceil(len(snapshot.images) / ecr.DESCRIBE_PAGE_SIZE) < math.ceil(len(digests) / ecr.MAX_IMAGE_IDS):
        wanted = set(digests)
        tags: dict[str, list[str]] = {}
        for page in ecr.describe_all(client, request.repository_name, request.registry_id):
            tags.update({d["imageDigest"]: list(d.get("imageTags", [])) for d in page if d["imageDigest"] in wanted})
        return tags
    details = ecr.describe_images(client, request.repository_name, digests, request.registry_id)
    return {digest: list(detail.get("imageTags", [])) for digest, detail in details.items()}


def recheck(
    client: Any, request: HygieneRequest, snapshot: Snapshot, candidates: dict[str, list[str]], log: Any = _module_log
) -> tuple[dict[str, list[str]], list[dict[str, str]]]:
    """The tags to plan from, and the candidates that moved since the snapshot.

    A real run re-reads the affected images right before deleting, so a tag moved meanwhile is
    left alone; a dry run (or nothing to remove) plans from the snapshot and makes no call.
    """
    if request.dry_run or not candidates:
        return {d: list(detail.get("imageTags", [])) for d, detail in snapshot.images.items()}, []
    now_tags = current_tags(client, request, list(candidates), snapshot)
    moved = [
        {"tag": tag, "digest": digest}
        for digest, tags in candidates.items()
        for tag in tags
        if tag not in now_tags.get(digest, [])
    ]
    for entry in moved:
        log.info("Tag %s no longer on %s since the snapshot: left untouched", entry["tag"], entry["digest"])
    return now_tags, moved


@dataclass
class Removal:
    """What removing the plan's tags did (or, in a dry run, would do)."""

    removed: list[dict[str, str]] = field(default_factory=list)
    failed: list[dict[str, str]] = field(default_factory=list)
    already_absent: list[dict[str, str]] = field(default_factory=list)
    images_deleted: list[str] = field(default_factory=list)


def remove_planned(client: Any, request: HygieneRequest, decided: Plan, log: Any = _module_log) -> Removal:
    """BatchDeleteImage by tag, 100 a call, reporting per-item failures and going on; a dry run only reports."""
    tag_to_digest = decided.tag_to_digest
    if request.dry_run:
        return Removal(
            removed=[{"tag": t, "digest": d} for t, d in sorted(tag_to_digest.items())],
            images_deleted=list(decided.images_deleted),
        )
    outcome = Removal()
    batches = math.ceil(len(tag_to_digest) / ecr.MAX_IMAGE_IDS)
    removals = ecr.remove_tags(client, request.repository_name, sorted(tag_to_digest), request.registry_id)
    for number, (ids, failures) in enumerate(removals, start=1):
        outcome.removed.extend(
            {"tag": i["imageTag"], "digest": i.get("imageDigest", tag_to_digest.get(i["imageTag"], ""))}
            for i in ids
            if "imageTag" in i
        )
        for failure in failures:
            tag = failure.get("imageId", {}).get("imageTag", "")
            entry = {
                "tag": tag,
                "digest": tag_to_digest.get(tag, ""),
                "code": failure.get("failureCode", ""),
                "reason": failure.get("failureReason", ""),
            }
            (outcome.already_absent if entry["code"] == "ImageNotFound" else outcome.failed).append(entry)
        log.info("Batch %d/%d done: %d removed so far", number, batches, len(outcome.removed))
    gone_tags = {r["tag"] for r in outcome.removed}
    outcome.images_deleted = [d for d in decided.images_deleted if set(decided.remove.get(d, [])) <= gone_tags]
    return outcome


def build_report(
    request: HygieneRequest,
    snapshot: Snapshot,
    protected: list[str],
    decided: Plan,
    moved: list[dict[str, str]],
    removal: Removal,
) -> dict[str, Any]:
    """The report: see the operator's docstring and the README for each field."""
    return {
        "repository_name": request.repository_name,
        "registry_id": request.registry_id or next((d.get("registryId") for d in snapshot.images.values()), None),
        "dry_run": request.dry_run,
        "removed": removal.removed,
        "kept_count": snapshot.tag_count - len(removal.removed) - len(removal.already_absent),
        "skipped_last_tag": decided.skipped_last_tag,
        "images_deleted": removal.images_deleted if request.allow_image_deletion else [],
        "failed": removal.failed,
        "protected": protected,
        "skipped_moved": moved,
        "already_absent": removal.already_absent,
        "images_scanned": len(snapshot.images),
        "tags_scanned": snapshot.tag_count,
    }


def run_hygiene(
    client: Any, request: HygieneRequest, *, now: datetime | None = None, log: Any = _module_log
) -> dict[str, Any]:
    """Apply ``request`` to the repository and return the report."""
    snapshot = read_snapshot(client, request, log)
    selected = select(snapshot, request.rules, now or datetime.now(UTC))
    candidates, protected = apply_protection(selected, request.protect)
    now_tags, moved = recheck(client, request, snapshot, candidates, log)
    decided = plan(now_tags, candidates, request.allow_image_deletion)
    to_remove = len(decided.tag_to_digest)
    log.info(
        "%d tags selected by rules, %d protected, %d to remove in %d batches%s",
        len(selected),
        len(protected),
        to_remove,
        math.ceil(to_remove / ecr.MAX_IMAGE_IDS),
        " (dry run: nothing is removed)" if request.dry_run else "",
    )
    removal = remove_planned(client, request, decided, log)
    report = build_report(request, snapshot, protected, decided, moved, removal)
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
