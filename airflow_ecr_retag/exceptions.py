"""The errors tasks raise: each core error's ``AirflowFailException`` twin, and the one place that maps them.

The core (:mod:`airflow_ecr_retag.core.errors`) raises plain exceptions. Every operator,
sensor and trigger runs core code inside :func:`fail_fast`, which re-raises each core error
as its twin here: an ``AirflowFailException``, so Airflow fails the task at once instead of
burning retries, and still an instance of the core class, so either can be caught. ECR errors
a retry cannot fix (``core.errors.PERMANENT_ERROR_CODES``) become :class:`EcrPermanentError`.
Transient ones (throttling, 5xx, dropped connections) pass through for botocore's retry modes
and Airflow's retries.

In tests: ``pytest.raises(GuardFailedError)`` with the class from this module.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from airflow.providers.common.compat.sdk import AirflowFailException

from airflow_ecr_retag.core import errors as core


class EcrRetagError(core.EcrRetagError, AirflowFailException):
    """Base class: a failure a retry cannot fix."""


class InvalidInputError(EcrRetagError, core.InvalidInputError):
    """A parameter breaks a rule (``field``, ``rule``). Raised before any ECR call."""


class EcrPermanentError(EcrRetagError, core.EcrPermanentError):
    """ECR refused the request in a way a retry cannot fix (``code``: the ECR error code)."""


class ImageNotFoundError(EcrRetagError, core.ImageNotFoundError):
    """The source image (tag or digest) is not in the repository."""


class GuardFailedError(EcrRetagError, core.GuardFailedError):
    """The source tag no longer points at the expected digest ("promote what was tested")."""


class TargetExistsError(EcrRetagError, core.TargetExistsError):
    """A target tag points at another image and ``overwrite=False``."""


class ImmutableTagError(EcrRetagError, core.ImmutableTagError):
    """A target tag exists on another image in an immutable repository."""


class DigestMismatchError(EcrRetagError, core.DigestMismatchError):
    """The manifest's bytes do not hash to the digest ECR reported or the user expected."""


class BlobDigestMismatchError(EcrRetagError, core.BlobDigestMismatchError):
    """A blob's bytes do not hash to its digest: the copy stopped before completing it; nothing was tagged."""


class ManifestTooLargeError(EcrRetagError, core.ManifestTooLargeError):
    """A manifest over ECR's PutImage limit: re-putting it would fail, so nothing is written."""


class HygieneFailedError(EcrRetagError, core.HygieneFailedError):
    """Some tag removals failed (or, over several repositories, some repositories); the report names them."""


class RemovalCapExceededError(EcrRetagError, core.RemovalCapExceededError):
    """Hygiene planned more removals than ``max_removals`` allows: nothing was removed."""


class ReleaseCheckFailedError(EcrRetagError, core.ReleaseCheckFailedError):
    """A release's checks failed in at least one repository (``problems``), so nothing was written in any."""


class ReleaseFailedError(EcrRetagError, core.ReleaseFailedError):
    """A release write failed in a way a retry cannot fix; what the run wrote was rolled back (``rollback``)."""


class RollbackIncompleteError(EcrRetagError, core.RollbackIncompleteError):
    """Some tags could not be put back (immutable, previous image gone, ...); the report names them."""


class ScanFailedError(EcrRetagError, core.ScanFailedError):
    """The image's scan ended without findings to judge, or cannot be run (``status``)."""


class ScanLimitExceededError(EcrRetagError, core.ScanLimitExceededError):
    """StartImageScan refused: a basic scan runs once per image per 24 hours, a scan on push included."""


class ScanThresholdExceededError(EcrRetagError, core.ScanThresholdExceededError):
    """The scan found more findings of a severity than allowed (``report``; the message has the table)."""


#: Each core error class and its twin (a core class without one fails the suite's check).
TWINS: dict[type[core.EcrRetagError], type[EcrRetagError]] = {
    base: twin
    for twin in (EcrRetagError, *EcrRetagError.__subclasses__())
    for base in twin.__bases__
    if issubclass(base, core.EcrRetagError) and not issubclass(base, EcrRetagError)
}


def airflow_error(error: core.EcrRetagError) -> EcrRetagError:
    """The twin of a core error, with the same message and attributes (``field``, ``code``, ...)."""
    if isinstance(error, EcrRetagError):
        return error
    twin_class = next(TWINS[cls] for cls in type(error).__mro__ if cls in TWINS)
    twin = twin_class.__new__(twin_class)
    twin.args = error.args
    twin.__dict__.update(error.__dict__)
    return twin


@contextlib.contextmanager
def fail_fast() -> Iterator[None]:
    """Run core code for a task: what a retry cannot fix is raised as an ``AirflowFailException``."""
    try:
        yield
    except EcrRetagError:
        raise
    except Exception as error:
        failure = core.as_core_error(error)
        if failure is None:
            raise
        twin = airflow_error(failure).with_traceback(error.__traceback__)
        # A botocore error stays attached as the cause; a core error's twin carries its traceback.
        raise twin from (None if failure is error else error)
