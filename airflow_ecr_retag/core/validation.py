"""Input rules shared by every operator and the sensor: one home for them and their messages.

Each check raises :class:`~airflow_ecr_retag.core.errors.InvalidInputError` naming the field
and the rule, and runs on rendered values in ``execute`` before any ECR call.
"""

from __future__ import annotations

import ast
import json
import math
import re
from typing import Any

from airflow_ecr_retag.core.errors import InvalidInputError
from airflow_ecr_retag.core.limits import (
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


def optional(check: Any, value: Any, field: str) -> Any:
    """Apply ``check`` unless the value is None."""
    return None if value is None else check(value, field)


def _rendered_list(value: Any) -> Any:
    """A list rendered to text by a non-native Jinja template ("['v1', 'prod']" or JSON), parsed back.

    No tag can start with '[', so such a string is never a single tag.
    """
    if isinstance(value, str) and value.strip().startswith("["):
        for parse in (json.loads, ast.literal_eval):
            try:
                parsed = parse(value)
            except (ValueError, SyntaxError):
                continue
            if isinstance(parsed, list):
                return parsed
    return value


def tag_list(value: Any, field: str, *, max_items: int | None = None) -> list[str]:
    """One tag or a list of tags: non-empty, valid, without repeats."""
    value = _rendered_list(value)
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
    value = _rendered_list(value)
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, (list, tuple)) or not all(isinstance(p, str) and p for p in items):
        raise InvalidInputError(field, "must be a glob pattern or a list of non-empty glob patterns", value)
    return list(items)


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


def bounded_int(value: Any, field: str, low: int, high: int) -> int:
    """An integer from ``low`` to ``high`` (not a bool)."""
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise InvalidInputError(field, f"must be an integer from {low} to {high}", value)
    return value


#: A repository glob: the characters of repository names and the shell wildcards ``* ? [ ] !``.
REPOSITORY_GLOB_RE = re.compile(r"[a-z0-9._/*?\[\]!-]+")
GLOB_CHARACTERS = frozenset("*?[")


def is_glob(value: str) -> bool:
    """Whether a repository name is a glob (no repository name has a wildcard)."""
    return any(c in GLOB_CHARACTERS for c in value)


def repository_glob(value: Any, field: str = "repository_name") -> str:
    value = _text(field, value)
    if len(value) > MAX_REPOSITORY_NAME_CHARS or not REPOSITORY_GLOB_RE.fullmatch(value):
        raise InvalidInputError(
            field,
            "must be a glob of repository names: lower-case letters, digits, '.', '_', '-', '/' and the "
            f"wildcards '*', '?', '[...]', at most {MAX_REPOSITORY_NAME_CHARS} characters",
            value,
        )
    return value


def repositories(value: Any, field: str = "repository_name") -> tuple[list[str], bool]:
    """A repository name, a glob of names, or a list of names and globs: the items in order, and
    whether a single name was given (not a glob, not a list). :func:`is_glob` tells them apart."""
    value = _rendered_list(value)
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
