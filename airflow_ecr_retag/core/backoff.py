"""How long a poll loop pauses after failures in a row: one rule for the tag poller, the watchers and the scan wait."""

from __future__ import annotations

#: The longest pause between polls while ECR keeps failing transiently (throttling, 5xx).
MAX_BACKOFF_SECONDS = 60.0


def backoff_seconds(
    interval: float, failures: int, *, longest_interval: float | None = None, cap: float = MAX_BACKOFF_SECONDS
) -> float:
    """``interval`` doubled for each failure in a row after the first, up to ``cap``.

    A loop never pauses longer than the cap unless its own (``longest_interval``, else
    ``interval``) is longer: then it pauses at most that.
    """
    return min(interval * 2 ** (failures - 1), max(interval if longest_interval is None else longest_interval, cap))
