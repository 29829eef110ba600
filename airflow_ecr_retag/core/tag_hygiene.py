"""Tag hygiene: decide from one repository snapshot which tags to remove, then remove them safely.

Calls: the DescribeImages paginator (1000 images a page) once; for a real run, a re-check of
the affected images' current tags (one DescribeImages per 100 of them, or the paginator again
when that is fewer calls), then one BatchDeleteImage per 100 tags. Tags are only ever removed
by tag. With ``allow_image_deletion=False`` an image's last tag is never removed, so no image
is deleted. Over several repositories (a glob or a list), DescribeRepositories pages first when
a glob is given, then the same per repository, a bounded number of repositories at a time.

:func:`run_hygiene` cleans one repository with :func:`clean_repository`, which runs the steps in
order, each a function of its own: :func:`read_snapshot`, :func:`select`, :func:`apply_protection`,
:func:`spare_recently_pulled`, :func:`recheck`, :func:`plan`, :func:`check_cap`,
:func:`remove_planned`, :func:`build_report`; or several with :func:`clean_repositories`:
:func:`resolve_repositories`, :func:`clean_repository` for each, :func:`combine_reports`. What
makes the task fail is :func:`hygiene_failure` of the report.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Iterable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import Any, NamedTuple

from airflow_ecr_retag.core import ecr, validation
from airflow_ecr_retag.core.errors import (
    EcrRetagError,
    HygieneFailedError,
    InvalidInputError,
    RemovalCapExceededError,
    as_core_error,
    error_code,
)

_module_log = logging.getLogger(__name__)

RULE_KEYS = frozenset({"tag_pattern", "keep_latest", "older_than_days"})
#: Repositories cleaned at once over a glob or a list: within botocore's default pool of 10
#: connections per client, so no request waits for a connection.
DEFAULT_MAX_CONCURRENT_REPOSITORIES = 8
MAX_CONCURRENT_REPOSITORIES = 64


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
        keep = validation.optional(validation.non_negative_int, raw.get("keep_latest"), f"{where}.keep_latest")
        days = validation.optional(validation.days, raw.get("older_than_days"), f"{where}.older_than_days")
        rules.append(Rule(pattern, keep, days))
    return rules


@dataclass(frozen=True)
class RemovalCap:
    """``max_removals``: at most ``number`` removals, or ``number`` percent of the tags scanned."""

    number: float
    percent: bool

    @property
    def given(self) -> str | int:
        return f"{self.number:g}%" if self.percent else int(self.number)

    def limit(self, tags_scanned: int) -> int:
        """The most removals allowed in a repository of ``tags_scanned`` tags (a share rounds down)."""
        return math.floor(tags_scanned * self.number / 100) if self.percent else int(self.number)


@dataclass(frozen=True)
class RepositorySelection:
    """Several repositories: exact ``names`` and ``globs`` (DescribeRepositories), as the user gave them."""

    names: tuple[str, ...]
    globs: tuple[str, ...]
    given: str | list[str]


@dataclass(frozen=True)
class HygieneRequest:
    repository_name: str
    registry_id: str | None
    rules: list[Rule]
    protect: list[str]
    allow_image_deletion: bool
    dry_run: bool
    include_archived: bool = False
    protect_pulled_within_days: float | None = None
    max_removals: RemovalCap | None = None
    last_tag_preference: list[str] = field(default_factory=list)
    #: Several repositories (a glob or a list); None: ``repository_name`` alone.
    repositories: RepositorySelection | None = None
    max_concurrent_repositories: int = DEFAULT_MAX_CONCURRENT_REPOSITORIES

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
        include_archived: Any = False,
        protect_pulled_within_days: Any = None,
        max_removals: Any = None,
        last_tag_preference: Any = None,
        max_concurrent_repositories: Any = DEFAULT_MAX_CONCURRENT_REPOSITORIES,
    ) -> HygieneRequest:
        items, single = validation.repositories(repository_name)
        names = [item for item in items if not validation.is_glob(item)]
        globs = [item for item in items if validation.is_glob(item)]
        selection = None if single else RepositorySelection(tuple(names), tuple(globs), _given(repository_name, items))
        cap = validation.optional(validation.removal_cap, max_removals, "max_removals")
        return cls(
            repository_name=items[0] if single else ", ".join(items),
            registry_id=validation.registry_id(registry_id),
            rules=parse_rules(rules),
            protect=validation.patterns(protect, "protect"),
            allow_image_deletion=validation.flag(allow_image_deletion, "allow_image_deletion"),
            dry_run=validation.flag(dry_run, "dry_run"),
            include_archived=validation.flag(include_archived, "include_archived"),
            protect_pulled_within_days=validation.optional(
                validation.days, protect_pulled_within_days, "protect_pulled_within_days"
            ),
            max_removals=RemovalCap(*cap) if cap is not None else None,
            last_tag_preference=validation.patterns(last_tag_preference, "last_tag_preference"),
            repositories=selection,
            max_concurrent_repositories=validation.bounded_int(
                max_concurrent_repositories,
                "max_concurrent_repositories",
                minimum=1,
                maximum=MAX_CONCURRENT_REPOSITORIES,
            ),
        )

    def for_repository(self, name: str) -> HygieneRequest:
        """This request for one repository of its selection."""
        return replace(self, repository_name=name, repositories=None)


def _given(value: Any, items: list[str]) -> str | list[str]:
    """The selection as the user wrote it: the glob, or the list (parsed back if a template rendered it)."""
    return value if isinstance(value, str) and items == [value] else items


# ---------------------------------------------------------------------- the snapshot
class ImageRecord(NamedTuple):
    """What the rules need of one ImageDetail, and nothing else: a snapshot of 100,000 images
    keeps these, not the details botocore parsed."""

    tags: tuple[str, ...]
    pushed_at: float
    pulled_at: float | None
    status: str


_STATUSES = {s: s for s in (ecr.IMAGE_ACTIVE, ecr.IMAGE_ARCHIVED, ecr.IMAGE_ACTIVATING)}


def _timestamp(value: Any) -> float | None:
    if value is None:
        return None
    if isinstance(value, datetime):
        return (value if value.tzinfo else value.replace(tzinfo=UTC)).timestamp()
    return float(value)


def image_record(detail: dict[str, Any]) -> ImageRecord:
    status = detail.get("imageStatus", ecr.IMAGE_ACTIVE)
    return ImageRecord(
        tags=tuple(detail.get("imageTags", ())),
        pushed_at=_timestamp(detail.get("imagePushedAt")) or 0.0,
        pulled_at=_timestamp(detail.get("lastRecordedPullTime")),
        status=_STATUSES.get(status, status),
    )


@dataclass
class Snapshot:
    """The repository as one DescribeImages pass saw it."""

    images: dict[str, ImageRecord] = field(default_factory=dict)  # digest -> record
    pages: int = 0
    registry_id: str | None = None

    @property
    def tag_count(self) -> int:
        return sum(len(record.tags) for record in self.images.values())

    @property
    def archived_count(self) -> int:
        """Images seen ARCHIVED or ACTIVATING (only read with ``include_archived``)."""
        return sum(1 for record in self.images.values() if record.status != ecr.IMAGE_ACTIVE)


def _status_filter(request: HygieneRequest) -> str | None:
    return ecr.ANY_IMAGE_STATUS if request.include_archived else None


def read_snapshot(client: Any, request: HygieneRequest, log: Any = _module_log) -> Snapshot:
    snapshot = Snapshot()
    pages = ecr.describe_all(client, request.repository_name, request.registry_id, _status_filter(request))
    for page in pages:
        snapshot.pages += 1
        for detail in page:
            snapshot.images[detail["imageDigest"]] = image_record(detail)
            snapshot.registry_id = snapshot.registry_id or detail.get("registryId")
        log.info("Read %d images (%d DescribeImages pages)", len(snapshot.images), snapshot.pages)
    return snapshot


# ---------------------------------------------------------------------- deciding
def select(snapshot: Snapshot, rules: Sequence[Rule], now: datetime) -> dict[str, str]:
    """Every tag some rule selects, with its digest (protection is applied afterwards)."""
    selected: dict[str, str] = {}
    for rule in rules:
        matches = validation.glob_matcher(rule.tag_pattern)
        carriers = []  # (digest, record, its tags matching the rule)
        for digest, record in snapshot.images.items():
            matching = [t for t in record.tags if matches(t)]
            if matching:
                carriers.append((digest, record, matching))
        # Newest first; ties broken by digest, so the ranking is stable.
        carriers.sort(key=lambda c: (-c[1].pushed_at, c[0]))
        cutoff = (now - timedelta(days=rule.older_than_days)).timestamp() if rule.older_than_days is not None else None
        for rank, (digest, record, matching) in enumerate(carriers):
            if rule.keep_latest is not None and rank < rule.keep_latest:
                continue
            if cutoff is not None and record.pushed_at >= cutoff:
                continue
            for tag in matching:
                selected[tag] = digest
    return selected


def _protected(tag: str, patterns: Iterable[str]) -> bool:
    return any(validation.glob_matcher(p)(tag) for p in patterns)


def apply_protection(selected: dict[str, str], patterns: Sequence[str]) -> tuple[dict[str, list[str]], list[str]]:
    """Split the selected tags: candidates for removal (digest -> tags) and the protected ones (sorted)."""
    protected = sorted(t for t in selected if _protected(t, patterns))
    shielded = set(protected)
    candidates: dict[str, list[str]] = {}
    for tag, digest in selected.items():
        if tag not in shielded:
            candidates.setdefault(digest, []).append(tag)
    return candidates, protected


def spare_recently_pulled(
    candidates: dict[str, list[str]],
    snapshot: Snapshot,
    within_days: float | None,
    now: datetime,
    log: Any = _module_log,
) -> tuple[dict[str, list[str]], int]:
    """Drop the candidates of images pulled within ``within_days`` (``lastRecordedPullTime``):
    the candidates left, and how many tags were spared."""
    if within_days is None:
        return candidates, 0
    cutoff = (now - timedelta(days=within_days)).timestamp()
    kept: dict[str, list[str]] = {}
    spared = 0
    for digest, tags in candidates.items():
        pulled_at = snapshot.images[digest].pulled_at
        if pulled_at is not None and pulled_at >= cutoff:
            spared += len(tags)
            when = datetime.fromtimestamp(pulled_at, tz=UTC).isoformat(timespec="seconds")
            log.info("Kept %s on %s: pulled at %s, within %g days", ", ".join(sorted(tags)), digest, when, within_days)
        else:
            kept[digest] = tags
    return kept, spared


@dataclass
class Plan:
    remove: dict[str, list[str]] = field(default_factory=dict)  # digest -> tags to remove
    skipped_last_tag: list[dict[str, str]] = field(default_factory=list)
    images_deleted: list[str] = field(default_factory=list)

    @property
    def tag_to_digest(self) -> dict[str, str]:
        return {t: d for d, tags in self.remove.items() for t in tags}

    @property
    def removal_count(self) -> int:
        return sum(len(tags) for tags in self.remove.values())


def survivor(tags: Sequence[str], preference: Sequence[str] = ()) -> str:
    """The tag an image keeps: one matching the first ``preference`` glob that any tag matches,
    else any; among those the highest-sorting, which is stable across runs."""
    for pattern in preference:
        matching = [t for t in tags if validation.glob_matcher(pattern)(t)]
        if matching:
            return max(matching)
    return max(tags)


def plan(
    current_tags: dict[str, Sequence[str]],
    candidates: dict[str, list[str]],
    allow_image_deletion: bool,
    preference: Sequence[str] = (),
) -> Plan:
    """Per image, which candidate tags go. Without deletion allowed, one tag always stays
    (see :func:`survivor`)."""
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
                kept = survivor(going, preference)
                going.remove(kept)
                result.skipped_last_tag.append({"tag": kept, "digest": digest})
        if going:
            result.remove[digest] = sorted(going)
    return result


def current_tags(
    client: Any, request: HygieneRequest, digests: Sequence[str], snapshot: Snapshot
) -> dict[str, Sequence[str]]:
    """The images' tags now, by the cheaper of two reads. Images gone are absent.

    DescribeImages by digest takes 100 images a call; the paginator reads 1000 a page. When most
    of the repository is affected, re-reading all of it is fewer calls (10 pages instead of 100
    calls at 10,000 images) and tells the same. (By digest, ECR describes an image whatever its
    status; the paginator reads the statuses the snapshot read.) An image whose tags did not
    change gets the snapshot's own tags back, so a re-read of 100,000 images holds no second copy.
    """
    wanted = {digest: digest for digest in digests}
    if math.ceil(len(snapshot.images) / ecr.DESCRIBE_PAGE_SIZE) < math.ceil(len(digests) / ecr.MAX_IMAGE_IDS):
        pages = ecr.describe_all(client, request.repository_name, request.registry_id, _status_filter(request))
        details = (detail for page in pages for detail in page if detail["imageDigest"] in wanted)
    else:
        details = iter(ecr.describe_images(client, request.repository_name, digests, request.registry_id).values())
    tags: dict[str, Sequence[str]] = {}
    for detail in details:
        digest = wanted.get(detail["imageDigest"], detail["imageDigest"])
        now, before = tuple(detail.get("imageTags", ())), snapshot.images[digest].tags
        tags[digest] = before if now == before else now
    return tags


def recheck(
    client: Any, request: HygieneRequest, snapshot: Snapshot, candidates: dict[str, list[str]], log: Any = _module_log
) -> tuple[dict[str, Sequence[str]], list[dict[str, str]]]:
    """The tags to plan from (those of the candidates' images), and the candidates that moved
    since the snapshot.

    A real run re-reads the affected images right before deleting, so a tag moved meanwhile is
    left alone; a dry run (or nothing to remove) plans from the snapshot and makes no call.
    """
    if request.dry_run or not candidates:
        return {d: snapshot.images[d].tags for d in candidates}, []
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


def check_cap(request: HygieneRequest, snapshot: Snapshot, decided: Plan) -> dict[str, Any] | None:
    """``max_removals`` against the plan: the report's ``removal_cap`` (None when no cap is set)."""
    if request.max_removals is None:
        return None
    limit = request.max_removals.limit(snapshot.tag_count)
    planned = decided.removal_count
    return {"max_removals": request.max_removals.given, "limit": limit, "planned": planned, "exceeded": planned > limit}


# ---------------------------------------------------------------------- removing
@dataclass
class Removal:
    """What removing the plan's tags did (or, in a dry run, would do)."""

    removed: list[dict[str, str]] = field(default_factory=list)
    failed: list[dict[str, str]] = field(default_factory=list)
    already_absent: list[dict[str, str]] = field(default_factory=list)
    images_deleted: list[str] = field(default_factory=list)


def log_planned(tags: Sequence[str], why: str, log: Any = _module_log) -> None:
    """Planned removals (sorted tags), one line per BatchDeleteImage they take: what a dry run logs."""
    batches = math.ceil(len(tags) / ecr.MAX_IMAGE_IDS)
    for number, batch in enumerate(ecr.chunks(tags), start=1):
        log.info("%s, batch %d/%d: %s", why, number, batches, ", ".join(batch))


def remove_planned(client: Any, request: HygieneRequest, decided: Plan, log: Any = _module_log) -> Removal:
    """BatchDeleteImage by tag, 100 a call, reporting per-item failures and going on; a dry run only reports."""
    tag_to_digest = decided.tag_to_digest
    ordered = sorted(tag_to_digest)
    if request.dry_run:
        log_planned(ordered, "Would remove (dry run)", log)
        return Removal(
            removed=[{"tag": t, "digest": tag_to_digest[t]} for t in ordered],
            images_deleted=list(decided.images_deleted),
        )
    outcome = Removal()
    batches = math.ceil(len(ordered) / ecr.MAX_IMAGE_IDS)
    removals = ecr.remove_tags(client, request.repository_name, ordered, request.registry_id)
    for number, (batch, (ids, failures)) in enumerate(zip(ecr.chunks(ordered), removals, strict=True), start=1):
        # The plan's own strings where ECR answers with the same ones (140,000 removals: no copies).
        sent = {tag: tag for tag in batch}
        for image_id in ids:
            if "imageTag" in image_id:
                tag = sent.get(image_id["imageTag"], image_id["imageTag"])
                planned = tag_to_digest.get(tag, "")
                digest = image_id.get("imageDigest", planned)
                outcome.removed.append({"tag": tag, "digest": planned if digest == planned else digest})
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


@dataclass(frozen=True)
class Scanned:
    """What the report needs of the snapshot once the plan is made, so the snapshot can go."""

    images: int
    tags: int
    archived: int
    registry_id: str | None

    @classmethod
    def of(cls, snapshot: Snapshot) -> Scanned:
        return cls(len(snapshot.images), snapshot.tag_count, snapshot.archived_count, snapshot.registry_id)


def build_report(
    request: HygieneRequest,
    scanned: Scanned,
    protected: list[str],
    decided: Plan,
    moved: list[dict[str, str]],
    removal: Removal,
    *,
    protected_by_pull_time: int = 0,
    removal_cap: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The report: see the operator's docstring and the README for each field."""
    return {
        "repository_name": request.repository_name,
        "registry_id": request.registry_id or scanned.registry_id,
        "dry_run": request.dry_run,
        "removed": removal.removed,
        "kept_count": scanned.tags - len(removal.removed) - len(removal.already_absent),
        "skipped_last_tag": decided.skipped_last_tag,
        "images_deleted": removal.images_deleted if request.allow_image_deletion else [],
        "failed": removal.failed,
        "protected": protected,
        "skipped_moved": moved,
        "already_absent": removal.already_absent,
        "images_scanned": scanned.images,
        "tags_scanned": scanned.tags,
        "images_archived_seen": scanned.archived,
        "protected_by_pull_time": protected_by_pull_time,
        "removal_cap": removal_cap,
    }


def clean_repository(client: Any, request: HygieneRequest, *, now: datetime, log: Any = _module_log) -> dict[str, Any]:
    """The steps for one repository; returns its report (over the cap: nothing removed)."""
    snapshot = read_snapshot(client, request, log)
    selected = select(snapshot, request.rules, now)
    candidates, protected = apply_protection(selected, request.protect)
    candidates, pulled = spare_recently_pulled(candidates, snapshot, request.protect_pulled_within_days, now, log)
    now_tags, moved = recheck(client, request, snapshot, candidates, log)
    decided = plan(now_tags, candidates, request.allow_image_deletion, request.last_tag_preference)
    cap = check_cap(request, snapshot, decided)
    to_remove = decided.removal_count
    log.info(
        "%d tags selected by rules, %d protected by pattern, %d by pull time, %d to remove in %d batches%s",
        len(selected),
        len(protected),
        pulled,
        to_remove,
        math.ceil(to_remove / ecr.MAX_IMAGE_IDS),
        " (dry run: nothing is removed)" if request.dry_run else "",
    )
    scanned = Scanned.of(snapshot)
    # At 100,000 images these are most of the memory; the removals need only the plan.
    del snapshot, selected, candidates, now_tags
    if cap is not None and cap["exceeded"]:
        log_planned(sorted(decided.tag_to_digest), "Not removed (over max_removals)", log)
        log.error(
            "%d removals planned, over max_removals=%s (at most %d here): nothing is removed",
            cap["planned"],
            cap["max_removals"],
            cap["limit"],
        )
        removal = Removal()
    else:
        removal = remove_planned(client, request, decided, log)
    report = build_report(
        request, scanned, protected, decided, moved, removal, protected_by_pull_time=pulled, removal_cap=cap
    )
    log.info("%s", summary_table(report))
    return report


# ---------------------------------------------------------------------- several repositories
def resolve_repositories(client: Any, request: HygieneRequest, log: Any = _module_log) -> list[str]:
    """The repositories a selection names, sorted: its names, and what each glob matches among
    the registry's repositories (DescribeRepositories pages, only when there is a glob). A glob
    that matches nothing is an input error."""
    selection = request.repositories
    assert selection is not None
    names = set(selection.names)
    if selection.globs:
        existing = [r["repositoryName"] for page in ecr.list_repositories(client, request.registry_id) for r in page]
        log.info("Read %d repositories of the registry", len(existing))
        for pattern in selection.globs:
            matched = [name for name in existing if validation.glob_matcher(pattern)(name)]
            if not matched:
                where = f"registry {request.registry_id}" if request.registry_id else "the registry"
                raise InvalidInputError(
                    "repository_name",
                    f"a glob must match a repository; none of the {len(existing)} repositories of {where} matches",
                    pattern,
                )
            names.update(matched)
    return sorted(names)


class _RepositoryLog:
    """A log whose lines name the repository, for runs over several repositories at once."""

    def __init__(self, log: Any, repository_name: str):
        self._log, self._prefix = log, f"[{repository_name}] "

    def info(self, message: str, *args: Any) -> None:
        self._log.info(self._prefix + message, *args)

    def warning(self, message: str, *args: Any) -> None:
        self._log.warning(self._prefix + message, *args)

    def error(self, message: str, *args: Any) -> None:
        self._log.error(self._prefix + message, *args)


def clean_repositories(
    client: Any, request: HygieneRequest, *, now: datetime, log: Any = _module_log
) -> dict[str, Any]:
    """Every repository of the selection, ``max_concurrent_repositories`` at a time on threads
    sharing ``client`` (boto3 clients are thread-safe). A repository that fails is reported and
    the others go on."""
    names = resolve_repositories(client, request, log)
    workers = min(len(names), request.max_concurrent_repositories)
    log.info("Cleaning %d repositories, %d at a time", len(names), workers)
    reports: dict[str, dict[str, Any]] = {}
    errors: dict[str, BaseException] = {}
    pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="ecr-hygiene")
    try:
        futures: dict[str, Future] = {
            name: pool.submit(
                clean_repository, client, request.for_repository(name), now=now, log=_RepositoryLog(log, name)
            )
            for name in names
        }
        for name, future in futures.items():
            try:
                reports[name] = future.result()
            except Exception as error:  # reported per repository; the task fails at the end
                errors[name] = error
                log.error("[%s] failed: %s", name, error)
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
    report = combine_reports(request, names, reports, errors)
    log.info("%s", totals_table(report))
    return report


def repository_failure(report: dict[str, Any] | None, error: BaseException | None) -> dict[str, Any] | None:
    """Why one repository's run makes the task fail (``code``, ``message``, ``retryable``), or None."""
    if error is not None:
        core = as_core_error(error)
        code = getattr(core, "code", None) or error_code(error) or type(core or error).__name__
        return {"code": code, "message": str(error), "retryable": core is None}
    assert report is not None
    failure = single_failure(report)
    if failure is None:
        return None
    return {"code": type(failure).__name__, "message": str(failure), "retryable": False}


_TOTALLED_LISTS = (
    "removed",
    "skipped_last_tag",
    "images_deleted",
    "failed",
    "protected",
    "skipped_moved",
    "already_absent",
)
_TOTALLED_COUNTS = ("kept_count", "images_scanned", "tags_scanned", "images_archived_seen", "protected_by_pull_time")


def combine_reports(
    request: HygieneRequest,
    names: Sequence[str],
    reports: dict[str, dict[str, Any]],
    errors: dict[str, BaseException],
) -> dict[str, Any]:
    """The report over several repositories: each repository's report, the failed ones, totals."""
    assert request.repositories is not None
    failed = {
        name: failure
        for name in names
        if (failure := repository_failure(reports.get(name), errors.get(name))) is not None
    }
    totals: dict[str, int] = {"repositories": len(names), "failed_repositories": len(failed)}
    totals.update({key: sum(len(r[key]) for r in reports.values()) for key in _TOTALLED_LISTS})
    totals.update({key: sum(r[key] for r in reports.values()) for key in _TOTALLED_COUNTS})
    registry_id = request.registry_id or next((r["registry_id"] for r in reports.values() if r["registry_id"]), None)
    return {
        "repository_name": request.repositories.given,
        "registry_id": registry_id,
        "dry_run": request.dry_run,
        "repositories": {name: reports[name] for name in names if name in reports},
        "failed_repositories": failed,
        "totals": totals,
    }


# ---------------------------------------------------------------------- the outcome
class RepositoriesIncompleteError(Exception):
    """Some repositories failed with errors a retry may fix (throttling, 5xx, dropped
    connections, after botocore's own retries): not a core error, so Airflow retries the task,
    which converges."""


def single_failure(report: dict[str, Any]) -> EcrRetagError | None:
    """The error one repository's report makes the task fail with, or None."""
    cap = report.get("removal_cap")
    if cap and cap["exceeded"]:
        return RemovalCapExceededError(
            f"max_removals: {cap['planned']:,} tag removals planned in {report['repository_name']}, over the cap of "
            f"{cap['limit']:,} (max_removals={cap['max_removals']}, {report['tags_scanned']:,} tags scanned); "
            "nothing was removed, the planned removals are in the task log"
        )
    if report["failed"]:
        names = ", ".join(f"{f['tag']} ({f['code']})" for f in report["failed"])
        return HygieneFailedError(f"{len(report['failed'])} tag removals failed: {names}; the rest was done")
    return None


def hygiene_failure(report: dict[str, Any]) -> Exception | None:
    """The error a run's report makes the task fail with, or None: over several repositories
    it names the failed ones, and is retryable when any of them failed with a transient error."""
    if "repositories" not in report:
        return single_failure(report)
    failed = report["failed_repositories"]
    if not failed:
        return None
    names = ", ".join(f"{name} ({failure['code']})" for name, failure in failed.items())
    message = f"{len(failed)} of {report['totals']['repositories']} repositories failed: {names}; the others were done"
    if any(failure["retryable"] for failure in failed.values()):
        return RepositoriesIncompleteError(message)
    return HygieneFailedError(message)


def run_hygiene(
    client: Any, request: HygieneRequest, *, now: datetime | None = None, log: Any = _module_log
) -> dict[str, Any]:
    """Apply ``request`` to its repository (or repositories) and return the report; what makes
    the task fail is :func:`hygiene_failure` of it."""
    now = now or datetime.now(UTC)
    if request.repositories is None:
        return clean_repository(client, request, now=now, log=log)
    return clean_repositories(client, request, now=now, log=log)


def _table(title: str, rows: list[tuple[str, int]]) -> str:
    width = max(len(name) for name, _ in rows)
    return "\n".join([title, *(f"  {name.ljust(width)}  {value:>7}" for name, value in rows)])


def summary_table(report: dict[str, Any]) -> str:
    rows = [
        ("images scanned", report["images_scanned"]),
        ("tags scanned", report["tags_scanned"]),
        ("tags removed" + (" (dry run)" if report["dry_run"] else ""), len(report["removed"])),
        ("tags kept", report["kept_count"]),
        ("protected by pattern", len(report["protected"])),
        ("protected by pull time", report["protected_by_pull_time"]),
        ("kept as an image's last tag", len(report["skipped_last_tag"])),
        ("moved since the snapshot", len(report["skipped_moved"])),
        ("already absent", len(report["already_absent"])),
        ("images deleted", len(report["images_deleted"])),
        ("archived images seen", report["images_archived_seen"]),
        ("failed", len(report["failed"])),
    ]
    cap = report.get("removal_cap")
    if cap:
        rows.append((f"removal cap (max_removals={cap['max_removals']})", cap["limit"]))
    lines = [_table(f"Tag hygiene of {report['repository_name']}:", rows)]
    if cap and cap["exceeded"]:
        lines.append(f"  over the cap: {cap['planned']} removals planned, none made")
    lines += [f"  failed: {f['tag']} ({f['code']}: {f['reason']})" for f in report["failed"]]
    return "\n".join(lines)


def totals_table(report: dict[str, Any]) -> str:
    totals = report["totals"]
    rows = [(name.replace("_", " "), value) for name, value in totals.items()]
    lines = [_table(f"Tag hygiene of {totals['repositories']} repositories ({report['repository_name']}):", rows)]
    lines += [f"  failed: {name} ({f['code']}: {f['message']})" for name, f in report["failed_repositories"].items()]
    return "\n".join(lines)
