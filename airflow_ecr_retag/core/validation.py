"""Input rules shared by every operator and the sensor: one home for them and their messages.

Each check raises :class:`~airflow_ecr_retag.core.errors.InvalidInputError` naming the field
and the rule, and runs on rendered values in ``execute`` before any ECR call.
"""

from __future__ import annotations

import ast
import fnmatch
import functools
import json
import math
import re
from collections.abc import Callable
from typing import Any

from airflow_ecr_retag.core.errors import InvalidInputError
from airflow_ecr_retag.core.limits import (
    FINDING_SEVERITIES,
    MAX_IMAGE_IDS,
    MAX_REPOSITORY_NAME_CHARS,
    MAX_TAG_CHARS,
    MIN_REPOSITORY_NAME_CHARS,
)

REPOSITORY_NAME_RE = re.compile(r"[a-z0-9]+(?:(?:\.|_|__|-+)[a-z0-9]+)*(?:/[a-z0-9]+(?:(?:\.|_|__|-+)[a-z0-9]+)*)*")
#: The OCI distribution-spec tag grammar (at most 128 characters).
TAG_RE = re.compile(r"[a-zA-Z0-9_][a-zA-Z0-9._-]{0,127}")
DIGEST_RE = re.compile(r"sha256:[0-9a-f]{64}")
REGISTRY_ID_RE = re.compile(r"[0-9]{12}")
#: One BatchGetImage takes 100 references: the source plus at most 99 targets.
MAX_TARGET_TAGS = MAX_IMAGE_IDS - 1


def _text(field: str, value: Any) -> str:
    if not isinstance(value, str):
        raise InvalidInputError(field, f"must be a string, not {type(value).__name__}", value)
    if value == "":
        raise InvalidInputError(field, "must not be empty", value)
    if value != value.strip() or any(c.isspace() for c in value):
        raise InvalidInputError(field, "must not contain whitespace (check the rendered template)", value)
    return value


def repository_name(value: Any, field: str = "repository_name") -> str:
    value = _text(field, value)
    length_ok = MIN_REPOSITORY_NAME_CHARS <= len(value) <= MAX_REPOSITORY_NAME_CHARS
    if not length_ok or not REPOSITORY_NAME_RE.fullmatch(value):
        raise InvalidInputError(
            field,
            f"must be an ECR repository name: {MIN_REPOSITORY_NAME_CHARS}-{MAX_REPOSITORY_NAME_CHARS} characters "
            "of lower-case letters, digits and '.', '_', '-' separators, with '/' between path components "
            "(no leading '/', no '..')",
            value,
        )
    return value


def tag(value: Any, field: str = "tag") -> str:
    value = _text(field, value)
    if len(value) > MAX_TAG_CHARS:
        raise InvalidInputError(
            field, f"ECR tags are 1-{MAX_TAG_CHARS} characters, got {len(value)}", show_value=False, value=None
        )
    if not TAG_RE.fullmatch(value):
        raise InvalidInputError(
            field,
            "must follow the OCI tag grammar [a-zA-Z0-9_][a-zA-Z0-9._-]{0,127} "
            f"(ASCII letters, digits, '_', '.', '-'; at most 128 characters; got {len(value)})",
            value if len(value) <= 140 else value[:40] + "...",
        )
    return value


def digest(value: Any, field: str = "digest") -> str:
    value = _text(field, value)
    if not DIGEST_RE.fullmatch(value):
        raise InvalidInputError(field, "must be 'sha256:' followed by 64 lower-case hex characters", value)
    return value


def registry_id(value: Any, field: str = "registry_id") -> str | None:
    if value is None:
        return None
    if isinstance(value, int) and not isinstance(value, bool):
        value = str(value)
    value = _text(field, value)
    if not REGISTRY_ID_RE.fullmatch(value):
        raise InvalidInputError(field, "must be a 12-digit AWS account id", value)
    return value


def flag(value: Any, field: str) -> bool:
    """A boolean parameter: True or False, never a truthy string from a template."""
    if not isinstance(value, bool):
        raise InvalidInputError(field, "must be True or False", value)
    return value


#: Blobs a copy moves at once, at most: each holds up to one upload part (10 MiB) and botocore's
#: base64 of it in memory while it is sent.
MAX_COPY_CONCURRENCY = 32


def bounded_int(value: Any, field: str, *, minimum: int, maximum: int) -> int:
    """A whole number within [minimum, maximum] (never a bool, never a string from a template)."""
    if not isinstance(value, int) or isinstance(value, bool):
        raise InvalidInputError(field, f"must be a whole number from {minimum} to {maximum}", value)
    if not minimum <= value <= maximum:
        raise InvalidInputError(field, f"must be from {minimum} to {maximum}", value)
    return value


def optional(check: Any, value: Any, field: str) -> Any:
    """Apply ``check`` unless the value is None."""
    return None if value is None else check(value, field)


def _rendered(value: Any, *, kinds: tuple[type, ...] = (list,)) -> Any:
    """A list (or dict) rendered to text by a non-native Jinja template, parsed back.

    Jinja renders ``['v1', 'prod']`` or ``[{'digest': ...}]`` as Python-literal text; a template
    may also produce JSON. Both are parsed safely (``json.loads``, then ``ast.literal_eval``,
    which evaluates no code). No tag or glob starts with '[' or '{', so such a string is never
    a single value.
    """
    openers = {list: "[", dict: "{"}
    if isinstance(value, str) and value.strip()[:1] in {openers[kind] for kind in kinds}:
        for parse in (json.loads, ast.literal_eval):
            try:
                parsed = parse(value)
            except (ValueError, SyntaxError, RecursionError):
                continue
            if isinstance(parsed, kinds):
                return parsed
    return value


def source(source_tag: str | None, source_digest: str | None, field: str = "source_tag") -> None:
    """An image to promote is named by its tag, its digest, or both (then the tag must point at the digest)."""
    if source_tag is None and source_digest is None:
        raise InvalidInputError(field, "give source_tag, source_digest, or both (guard)", None)


def tag_list(value: Any, field: str, *, max_items: int | None = None) -> list[str]:
    """One tag or a list of tags: non-empty, valid, without repeats."""
    value = _rendered(value)
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, (list, tuple)):
        raise InvalidInputError(field, "must be a tag or a list of tags", value)
    if not items:
        raise InvalidInputError(field, "must name at least one tag", value)
    if max_items is not None and len(items) > max_items:
        raise InvalidInputError(field, f"at most {max_items} tags per task (got {len(items)})", show_value=False)
    checked = [tag(item, f"{field}[{i}]") for i, item in enumerate(items)]
    repeats = sorted({t for t in checked if checked.count(t) > 1})
    if repeats:
        raise InvalidInputError(field, f"must not repeat a tag: {', '.join(repeats)}", value)
    return checked


def patterns(value: Any, field: str) -> list[str]:
    """A glob or a list of globs (possibly empty)."""
    if value is None:
        return []
    value = _rendered(value)
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, (list, tuple)) or not all(isinstance(p, str) and p for p in items):
        raise InvalidInputError(field, "must be a glob pattern or a list of non-empty glob patterns", value)
    return list(items)


#: A tag glob: the characters of tags and the shell wildcards ``* ? [ ] !``.
TAG_GLOB_RE = re.compile(r"[a-zA-Z0-9._*?\[\]!-]+")


def watched_tags(value: Any, field: str = "tags") -> list[str]:
    """Tag names or globs to watch: a non-empty list, each a valid tag or a glob of tag characters, no repeats."""
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, (list, tuple)):
        raise InvalidInputError(field, "must be a list of tag names or globs", value)
    if not items:
        raise InvalidInputError(field, "must name at least one tag or glob", value)
    checked = []
    for i, item in enumerate(items):
        where = f"{field}[{i}]"
        if isinstance(item, str) and is_glob(item):
            checked.append(
                _glob(item, where, TAG_GLOB_RE, "tag characters: ASCII letters, digits, '_', '.', '-'", MAX_TAG_CHARS)
            )
        else:
            checked.append(tag(item, where))
    repeats = sorted({t for t in checked if checked.count(t) > 1})
    if repeats:
        raise InvalidInputError(field, f"must not repeat a tag or glob: {', '.join(repeats)}", value)
    return checked


def positive_seconds(value: Any, field: str) -> float:
    """A number of seconds greater than zero (an interval)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
        raise InvalidInputError(field, "must be a number of seconds greater than 0", value)
    return float(value)


#: The keys of an ``images`` entry of a release.
RELEASE_IMAGE_KEYS = ("repository_name", "source_tag", "source_digest")


def release_images(value: Any, field: str = "images") -> list[dict[str, str | None]]:
    """The images of a release: a non-empty list of ``{repository_name, source_tag and/or source_digest}``
    (or its JSON text), one per repository."""
    value = _rendered(value)
    if not isinstance(value, (list, tuple)):
        raise InvalidInputError(
            field, "must be a list of dicts with repository_name and source_tag and/or source_digest", value
        )
    if not value:
        raise InvalidInputError(field, "must name at least one image", value)
    entries = []
    for i, raw in enumerate(value):
        where = f"{field}[{i}]"
        if not isinstance(raw, dict):
            raise InvalidInputError(
                where, "must be a dict with repository_name and source_tag and/or source_digest", raw
            )
        unknown = sorted(map(str, set(raw) - set(RELEASE_IMAGE_KEYS)))
        if unknown:
            raise InvalidInputError(
                where,
                f"unknown keys {', '.join(map(repr, unknown))}; allowed: {', '.join(RELEASE_IMAGE_KEYS)}",
                raw,
            )
        if "repository_name" not in raw:
            raise InvalidInputError(f"{where}.repository_name", "is required", raw)
        entry = {
            "repository_name": repository_name(raw["repository_name"], f"{where}.repository_name"),
            "source_tag": optional(tag, raw.get("source_tag"), f"{where}.source_tag"),
            "source_digest": optional(digest, raw.get("source_digest"), f"{where}.source_digest"),
        }
        source(entry["source_tag"], entry["source_digest"], f"{where}.source_tag")
        entries.append(entry)
    names = [e["repository_name"] for e in entries]
    repeats = sorted({n for n in names if names.count(n) > 1})
    if repeats:
        raise InvalidInputError(
            field, f"must name each repository once (one image per repository): {', '.join(repeats)} repeated", value
        )
    return entries


#: What makes a dict a promotion report (EcrRetagOperator's ``promotion`` XCom) for a roll-back.
PROMOTION_REPORT_KEYS = ("repository_name", "digest", "added", "moved")


def promotion_reports(value: Any, field: str = "promotions") -> list[dict[str, Any]]:
    """One promotion report or a list of them (or their JSON / Python-literal text, as a non-native
    Jinja template renders an XCom), each checked to be a report; no tag of a repository in two."""
    value = _rendered(value, kinds=(list, dict))
    if value is None or value == "None":
        raise InvalidInputError(
            field,
            "is empty: no promotion report arrived (check the task_ids and key of the xcom_pull that renders it)",
            value,
        )
    single = isinstance(value, dict)
    if not single and not isinstance(value, (list, tuple)):
        raise InvalidInputError(
            field,
            "must be a promotion report (EcrRetagOperator's promotion XCom), a list of them "
            "(EcrReleaseOperator's release XCom), or their JSON text",
            value,
        )
    reports = [
        _promotion_report(raw, field if single else f"{field}[{i}]")
        for i, raw in enumerate([value] if single else value)
    ]
    first_seen: dict[tuple[str | None, str, str], int] = {}
    for i, report in enumerate(reports):
        for tag_name in report["added"]:
            key = (report["registry_id"], report["repository_name"], tag_name)
            if key in first_seen:
                raise InvalidInputError(
                    field,
                    f"tag {tag_name!r} of {report['repository_name']} is in promotions[{first_seen[key]}] and "
                    f"promotions[{i}]: roll back one promotion of a tag at a time, the latest first",
                    show_value=False,
                )
            first_seen[key] = i
    return reports


def _promotion_report(raw: Any, where: str) -> dict[str, Any]:
    if not isinstance(raw, dict):
        raise InvalidInputError(where, "is not a promotion report: must be a dict", raw)
    missing = [key for key in PROMOTION_REPORT_KEYS if key not in raw]
    if missing:
        raise InvalidInputError(
            where,
            f"is not a promotion report: missing {', '.join(map(repr, missing))} "
            f"(it has {', '.join(map(repr, sorted(map(str, raw)))) or 'no keys'})",
            show_value=False,
        )
    added, moved = raw["added"], raw["moved"]
    if not isinstance(added, (list, tuple)):
        raise InvalidInputError(f"{where}.added", "must be a list of the tags the promotion set", added)
    if not isinstance(moved, dict):
        raise InvalidInputError(f"{where}.moved", "must map each moved tag to its previous digest", moved)
    added = [tag(t, f"{where}.added[{j}]") for j, t in enumerate(added)]
    for tag_name, previous in moved.items():
        tag(tag_name, f"{where}.moved")
        digest(previous, f"{where}.moved[{tag_name}]")
        if tag_name not in added:
            raise InvalidInputError(
                f"{where}.moved",
                f"names {tag_name!r}, which is not in added: a moved tag is one the promotion set",
                moved,
            )
    return {
        "repository_name": repository_name(raw["repository_name"], f"{where}.repository_name"),
        "registry_id": registry_id(raw.get("registry_id") or None, f"{where}.registry_id"),
        "digest": digest(raw["digest"], f"{where}.digest"),
        "added": added,
        "moved": dict(moved),
    }


def exactly_one(first: tuple[str, Any], second: tuple[str, Any]) -> None:
    """Exactly one of two alternative parameters is set (``(name, value)`` each); names the one to fix."""
    (first_name, first_value), (second_name, second_value) = first, second
    if first_value is None and second_value is None:
        raise InvalidInputError(first_name, f"give {first_name} or {second_name}", None)
    if first_value is not None and second_value is not None:
        raise InvalidInputError(second_name, f"give {first_name} or {second_name}, not both", second_value)


def severity_thresholds(value: Any, field: str = "max_findings") -> dict[str, int]:
    """Severity -> allowed count (a dict, or its JSON text from a template): ECR's severities,
    counts that are whole numbers of at least 0."""
    value = _rendered(value, kinds=(dict,))
    if not isinstance(value, dict):
        raise InvalidInputError(field, "must be a dict of severity -> allowed count, e.g. {'CRITICAL': 0}", value)
    thresholds: dict[str, int] = {}
    for severity, count in value.items():
        if severity not in FINDING_SEVERITIES:
            raise InvalidInputError(
                field, f"unknown severity {severity!r}: the severities are {', '.join(FINDING_SEVERITIES)}", value
            )
        if isinstance(count, bool) or not isinstance(count, int) or count < 0:
            raise InvalidInputError(f"{field}.{severity}", "must be a whole number of findings, 0 or more", count)
        thresholds[severity] = count
    return thresholds


def finding_names(value: Any, field: str) -> tuple[str, ...]:
    """Finding names (CVE ids): one, a list (or its rendered text), or None for none."""
    if value is None:
        return ()
    value = _rendered(value)
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, (list, tuple, set, frozenset)):
        raise InvalidInputError(field, "must be a finding name (a CVE id) or a list of them", value)
    return tuple(_text(f"{field}[{i}]", item) for i, item in enumerate(items))


def non_negative_int(value: Any, field: str) -> int:
    """An integer, zero or more (not a bool)."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise InvalidInputError(field, "must be a non-negative integer", value)
    return value


def days(value: Any, field: str) -> float:
    """A number of days, zero or more (not a bool, not NaN)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or math.isnan(value) or value < 0:
        raise InvalidInputError(field, "must be a non-negative number of days", value)
    return value


#: A repository glob: the characters of repository names and the shell wildcards ``* ? [ ] !``.
REPOSITORY_GLOB_RE = re.compile(r"[a-z0-9._/*?\[\]!-]+")
GLOB_CHARACTERS = frozenset("*?[")


def is_glob(value: str) -> bool:
    """Whether a repository name or a tag is a glob (no repository name or tag has a wildcard)."""
    return any(c in GLOB_CHARACTERS for c in value)


@functools.lru_cache(maxsize=1024)
def glob_matcher(pattern: str) -> Callable[[str], Any]:
    """``fnmatch.fnmatchcase`` against ``pattern`` (case-sensitive), compiled once: a run matches millions of tags."""
    return re.compile(fnmatch.translate(pattern)).match


def repository_glob(value: Any, field: str = "repository_name") -> str:
    names = "repository names: lower-case letters, digits, '.', '_', '-', '/'"
    return _glob(value, field, REPOSITORY_GLOB_RE, names, MAX_REPOSITORY_NAME_CHARS)


def _glob(value: Any, field: str, grammar: re.Pattern, characters: str, max_chars: int) -> str:
    value = _text(field, value)
    if len(value) > max_chars or not grammar.fullmatch(value):
        raise InvalidInputError(
            field,
            f"must be a glob of {characters} and the wildcards '*', '?', '[...]', at most {max_chars} characters",
            value,
        )
    return value


def repositories(value: Any, field: str = "repository_name") -> tuple[list[str], bool]:
    """A repository name, a glob of names, or a list of names and globs: the items in order, and
    whether a single name was given (not a glob, not a list). :func:`is_glob` tells them apart."""
    value = _rendered(value)
    if isinstance(value, str):
        if is_glob(value):
            return [repository_glob(value, field)], False
        return [repository_name(value, field)], True
    if not isinstance(value, (list, tuple)):
        raise InvalidInputError(field, "must be a repository name, a glob of names, or a list of them", value)
    if not value:
        raise InvalidInputError(field, "must name at least one repository", value)
    items = [
        repository_glob(item, f"{field}[{i}]")
        if isinstance(item, str) and is_glob(item)
        else repository_name(item, f"{field}[{i}]")
        for i, item in enumerate(value)
    ]
    repeats = sorted({item for item in items if items.count(item) > 1})
    if repeats:
        raise InvalidInputError(field, f"must not repeat a repository: {', '.join(repeats)}", value)
    return items, False


_PERCENT_RE = re.compile(r"(\d+(?:\.\d+)?)\s*%")


def removal_cap(value: Any, field: str = "max_removals") -> tuple[float, bool]:
    """A cap on removals: an integer (or its text), or a share of the tags scanned such as
    ``"20%"`` (0-100%). Returns (number, is_percentage)."""
    if isinstance(value, str) and value.strip().startswith("-"):
        raise InvalidInputError(field, "must not be negative", value)
    if isinstance(value, str) and value.strip().isdigit():
        value = int(value.strip())
    if isinstance(value, int) and not isinstance(value, bool):
        if value < 0:
            raise InvalidInputError(field, "must not be negative", value)
        return value, False
    if isinstance(value, str):
        match = _PERCENT_RE.fullmatch(value.strip())
        if match is None:
            raise InvalidInputError(field, "must be an integer or a percentage such as '20%'", value)
        share = float(match.group(1))
        if share > 100:
            raise InvalidInputError(field, "must be a percentage from 0% to 100%", value)
        return share, True
    raise InvalidInputError(field, "must be an integer or a percentage such as '20%'", value)
