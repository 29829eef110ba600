"""What the double counts, logs and injects: the call counter, the request log and faults.

Tests assert on these (``ecr.calls["PutImage"] == 0``) and stage failures and concurrent actors
with them (``ecr.inject("PutImage", Fault.THROTTLE)``), so their semantics are part of the
double's public API: every request is counted and logged, retries included, before any
injection for it runs.
"""

from __future__ import annotations

import json
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum
from typing import TYPE_CHECKING, Any

from botocore.exceptions import ConnectionClosedError

if TYPE_CHECKING:
    from airflow_ecr_retag.testing.double import EcrDouble

#: Operations that change registry state; read-only callers must make none of these.
WRITE_OPERATIONS = frozenset(
    {
        "PutImage",
        "BatchDeleteImage",
        "InitiateLayerUpload",
        "UploadLayerPart",
        "CompleteLayerUpload",
        "CreateRepository",
        "DeleteRepository",
        "PutImageTagMutability",
        "PutAccountSetting",
        # Scanning: a scan started, a repository's or the registry's scanning changed.
        "StartImageScan",
        "PutImageScanningConfiguration",
        "PutRegistryScanningConfiguration",
        "UpdateImageStorageClass",
        # The OCI distribution API (see distribution_api.OPERATIONS).
        "V2PutManifest",
        "V2DeleteManifest",
        "V2StartUpload",
        "V2PatchUpload",
        "V2FinishUpload",
        "V2CancelUpload",
    }
)

#: An injected error as moto's ``call_action`` returns a response: status, headers, body.
FaultResponse = tuple[int, dict[str, Any], str]


class Fault(str, Enum):
    """Kinds of injected failure."""

    #: ``ThrottlingException`` (HTTP 400): botocore retries it as throttling.
    THROTTLE = "throttle"
    #: ``ServerException`` (HTTP 500): botocore retries it as a transient error.
    SERVER_ERROR = "server_error"
    #: The connection is closed with no response: botocore retries it.
    DROPPED_CONNECTION = "dropped_connection"
    #: ``AccessDeniedException``: not retryable.
    ACCESS_DENIED = "access_denied"


_FAULT_ERRORS = {
    Fault.THROTTLE: (400, "ThrottlingException", "Rate exceeded"),
    Fault.SERVER_ERROR: (500, "ServerException", "Injected server error"),
    Fault.ACCESS_DENIED: (
        400,
        "AccessDeniedException",
        "User: arn:aws:iam::123456789012:user/test is not authorized to perform this action",
    ),
}


@dataclass(frozen=True)
class RecordedCall:
    """One ECR request as the double received it (retries are separate calls).

    ``user_agent`` tells who called: the Amazon provider's hooks add ``Airflow/<version>`` and
    ``Caller/<operator class>``.
    """

    operation: str
    params: dict[str, Any]
    user_agent: str = ""
    #: When the double received it (``time.time()``).
    at: float = 0.0


class CallCounter(Counter[str]):
    """The calls per operation, retries included: a ``Counter`` (``calls["PutImage"]``, ``dict(calls)``).

    Calling it returns it, so ``remote.calls()``, from when :class:`RemoteEcrDouble`'s ``calls`` was
    a method, still works: ``calls`` reads the same on both front doors.
    """

    def __call__(self) -> CallCounter:
        return self


class StagedCall:
    """One call of a double's helper, as data: what another actor does, staged with ``before_call``.

    ``StagedCall("move_tag", "team/app", "sha-1", digest)`` is ``double.move_tag("team/app", "sha-1",
    digest)`` run later. It works on both front doors: :class:`EcrDouble` calls it like any action,
    and :class:`RemoteEcrDouble` sends it to the served double, which a Python function cannot
    cross to. Any helper of the shared API may be staged (seeding and staging, ``inject``, ...);
    its arguments travel as the remote helpers' do (images, bytes, datetimes, vulnerabilities).
    """

    def __init__(self, method: str, /, *args: Any, **kwargs: Any):
        self.method, self.args, self.kwargs = method, args, kwargs

    def __call__(self, double: Any) -> None:
        getattr(double, self.method)(*self.args, **self.kwargs)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, StagedCall):
            return NotImplemented
        return (self.method, self.args, self.kwargs) == (other.method, other.args, other.kwargs)

    def __repr__(self) -> str:
        arguments = [repr(a) for a in self.args] + [f"{k}={v!r}" for k, v in self.kwargs.items()]
        return f"StagedCall({', '.join([repr(self.method), *arguments])})"


@dataclass
class Injection:
    """A fault or an action waiting for the calls of one operation (or ``"*"``, every operation)."""

    operation: str
    action: Fault | Callable[[EcrDouble], None]
    first_call: int
    times: int | None
    seen: int = 0
    fired: int = 0

    def due(self) -> bool:
        """Count one more matching call; whether this injection fires for it."""
        self.seen += 1
        if self.seen < self.first_call or (self.times is not None and self.fired >= self.times):
            return False
        self.fired += 1
        return True

    def fire(self, double: EcrDouble) -> Fault | None:
        """Run the action (None), or name the fault the call fails with: each protocol renders it
        its own way (:func:`ecr_fault_response`; ``/v2/`` and the blob URLs have theirs)."""
        if callable(self.action) and not isinstance(self.action, Fault):
            self.action(double)
            return None
        return self.action


def first_fault(due: list[Injection], double: EcrDouble) -> Fault | None:
    """Fire the injections due for one call in order; the first fault ends the call."""
    for injection in due:
        fault = injection.fire(double)
        if fault is not None:
            return fault
    return None


def ecr_fault_response(fault: Fault, endpoint_url: str) -> FaultResponse:
    """A fault as the ECR API answers it, or ``ConnectionClosedError`` for a dropped connection
    (the server shuts the socket on it)."""
    if fault is Fault.DROPPED_CONNECTION:
        raise ConnectionClosedError(endpoint_url=endpoint_url)
    status, code, message = _FAULT_ERRORS[fault]
    body = json.dumps({"__type": code, "message": message})
    return status, {"status": status, "Content-Type": "application/x-amz-json-1.1", "x-amzn-ErrorType": code}, body


class CallRecording:
    """The counter, the request log and the injections of :class:`EcrDouble` (a base class of it).

    ``_lock`` is the double's lock, which also guards its store: a call is counted, logged and
    matched against injections in one step.
    """

    _lock: threading.RLock

    def __init__(self) -> None:
        self.calls = CallCounter()
        self.requests: list[RecordedCall] = []
        self._injections: list[Injection] = []

    # ------------------------------------------------------------------ counter
    @property
    def write_calls(self) -> int:
        """How many calls changed or could have changed registry state."""
        return sum(n for op, n in self.calls.items() if op in WRITE_OPERATIONS)

    @property
    def total_calls(self) -> int:
        return sum(self.calls.values())

    def reset_calls(self) -> None:
        """Forget counted calls and recorded requests (seeding through the API counts too)."""
        with self._lock:
            self.calls.clear()
            self.requests.clear()

    def requests_for(self, operation: str) -> list[dict[str, Any]]:
        return [call.params for call in self.requests if call.operation == operation]

    def _record(self, operation: str, params: dict[str, Any], user_agent: str) -> tuple[RecordedCall, list[Injection]]:
        """Count and log one request; the injections that fire for it."""
        recorded = RecordedCall(operation, params, user_agent, time.time())
        with self._lock:
            self.calls[operation] += 1
            self.requests.append(recorded)
            due = [i for i in self._injections if i.operation in (operation, "*") and i.due()]
        return recorded, due

    # ------------------------------------------------------------------ faults
    def inject(self, operation: str, fault: Fault | str, *, call: int = 1, times: int | None = 1) -> None:
        """Make calls of ``operation`` fail.

        :param operation: the operation name as :attr:`calls` counts it (``"PutImage"``,
            ``"V2GetManifest"``, ``"LayerDownload"``), or ``"*"`` for every operation.
        :param fault: a :class:`Fault` (or its value).
        :param call: the first failing call, counted from now among the calls of ``operation``
            (1 = the next one).
        :param times: how many calls fail from then on; ``None`` makes every later call fail.
        """
        with self._lock:
            self._injections.append(Injection(operation, Fault(fault), call, times))

    def before_call(
        self, operation: str, action: Callable[[EcrDouble], None], *, call: int = 1, times: int | None = 1
    ) -> None:
        """Run ``action(double)`` just before the Nth call of ``operation`` is served.

        This is how tests stage a concurrent actor: a tag moved by someone else between a
        task's read and its write. The call is counted first, then the action runs (on the
        thread serving the call; it may use any helper), then the call is served and sees what
        the action did. Injections due for one call fire in the order they were made; a fault
        ends the call there.

        :param operation: as for :meth:`inject`, ``"*"`` included.
        :param action: any callable taking the double, or a :class:`StagedCall` (which also
            crosses to a served double through :class:`RemoteEcrDouble`).
        :param call: the first call it runs before, counted from now (1 = the next one).
        :param times: how many calls it runs before from then on; ``None``: every later call.
        """
        with self._lock:
            self._injections.append(Injection(operation, action, call, times))

    def clear_faults(self) -> None:
        with self._lock:
            self._injections.clear()
