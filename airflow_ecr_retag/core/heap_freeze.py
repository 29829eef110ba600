"""Short full garbage collections in a triggerer that holds thousands of waits (opt-in).

CPython's full collection (generation 2) walks every object the collector tracks, stopping
the event loop until it is done. A triggerer with Airflow, the Amazon provider and botocore's
models loaded tracks about 226,000 objects before any trigger runs, and 10,000 waits add about
170,000 more: each full collection then stopped the loop for 91-136 ms on the 2-core benchmark
machine (150-332 ms on a slower one; ``benchmarks/RESULTS.md``, section 3), whatever the
triggers' code does. Waits are long-lived: they stay until their tag appears, and a collection
finds nothing to free among them.

:class:`SettledHeapFreezer` moves what is alive out of the collector's sight with
:func:`gc.freeze` each time the waits of this package in the loop reach a new high by a
quarter (close to the collector's own rule: a full collection comes when long-lived objects
grew by a quarter), so a full collection walks only what came after the last freeze. A
collection of the young generations first (a few milliseconds at most) keeps their garbage out
of the freeze; ``gc.freeze()`` itself is a constant-time splice of the collector's lists.

Frozen objects are still freed when their last reference goes (a finished wait's are). What a
freeze keeps is garbage only a full collection would free: reference cycles among frozen
objects that became garbage after it, and younger objects reachable only from such cycles.
Nothing is unfrozen: :func:`gc.unfreeze` would hand every frozen object back to the next full
collection, the very stall this avoids. The freezes come at new highs only (100 waits, then
each quarter more: 21 up to 10,000 waits, whatever the uptime). The benchmark measures what is
kept once 10,000 waits have ended: about 0.3 objects per wait.

The collector is process-wide, so this is the deployment's choice, off unless asked for
(``[ecr_retag] freeze_settled_heap`` in the triggerer, read by the trigger layer).
"""

from __future__ import annotations

import gc
import logging
from typing import Protocol

log = logging.getLogger(__name__)

#: Waits of this package in one loop before the first freeze. Fewer waits make a short
#: collection; the first freeze also takes the start-up heap (Airflow's modules) out of sight.
FREEZE_FROM_WAITS = 100
#: Frozen again once the waits have grown by this share over the most there were at a freeze.
REFREEZE_GROWTH = 0.25


class Collector(Protocol):
    """What the freezer uses of :mod:`gc` (a test passes a recorder)."""

    def collect(self, generation: int) -> int: ...

    def freeze(self) -> None: ...


class SettledHeapFreezer:
    """Freezes the collector's heap each time the waits of one event loop reach a new high by a quarter.

    :param enabled: Whether to touch the collector at all.
    :param collector: The collector (:mod:`gc`).
    """

    __slots__ = ("_collector", "enabled", "freezes", "frozen_at_waits")

    def __init__(self, *, enabled: bool = False, collector: Collector | None = None):
        self.enabled = enabled
        self._collector = collector or gc
        #: The waits at the last freeze, the most there have been at one; 0 before the first.
        self.frozen_at_waits = 0
        self.freezes = 0

    def waits_changed(self, waits: int) -> None:
        """Called with the loop's number of waits whenever one joins or leaves; at a new high, freezes."""
        if not self.enabled or waits < max(FREEZE_FROM_WAITS, self.frozen_at_waits * (1 + REFREEZE_GROWTH)):
            return
        self._collector.collect(1)
        self._collector.freeze()
        self.frozen_at_waits = waits
        self.freezes += 1
        # Not gc.get_freeze_count(): it walks every frozen object.
        log.info(
            "%d waits: freeze %d, what is alive is out of the garbage collector's full collections", waits, self.freezes
        )
