"""The core's errors, and the one mapping from ECR error codes to them.

Every class here is a failure a retry cannot fix: bad input, a missing repository, a guard
that does not hold. The Airflow layer turns each into its ``AirflowFailException`` twin
(:mod:`airflow_ecr_retag.exceptions`), so Airflow fails the task at once instead of burning
retries. Transient ECR errors (throttling, 5xx, dropped connections) are not mapped: botocore
retries them (``botocore_config``), then Airflow's own retries apply.
"""

from __future__ import annotations


class EcrRetagError(Exception):
    """Base class: a failure a retry cannot fix."""


class InvalidInputError(EcrRetagError, ValueError):
    """A parameter breaks a rule. Raised before any ECR call.

    :param field: the parameter's name, as the user wrote it.
    :param rule: what the value must satisfy.
    """

    def __init__(self, field: str, rule: str, value: object = None, *, show_value: bool = True):
        self.field = field
        self.rule = rule
        shown = f" (got {value!r})" if show_value else ""
        super().__init__(f"{field}: {rule}{shown}")


class EcrPermanentError(EcrRetagError):
    """ECR refused the request in a way a retry cannot fix (missing repository, access denied, ...).

    :param code: the ECR error code.
    """

    def __init__(self, code: str, message: str):
        self.code = code
        super().__init__(f"{code}: {message}")


class ImageNotFoundError(EcrRetagError):
    """The source image (tag or digest) is not in the repository."""


class GuardFailedError(EcrRetagError):
    """The source tag no longer points at the expected digest ("promote what was tested")."""


class TargetExistsError(EcrRetagError):
    """A target tag points at another image and ``overwrite=False``."""


class ImmutableTagError(EcrRetagError):
    """A target tag exists on another image in an immutable repository."""


class DigestMismatchError(EcrRetagError):
    """The manifest's bytes do not hash to the digest ECR reported or the user expected."""


class BlobDigestMismatchError(EcrRetagError):
    """A blob's bytes, as the source served them, do not hash to its digest (or are not its size):
    the copy stops before the blob is completed, and nothing is tagged."""


class ManifestTooLargeError(EcrRetagError):
    """A manifest over ECR's PutImage limit: re-putting it would fail, so nothing is written."""


class HygieneFailedError(EcrRetagError):
    """Some tag removals failed (or, over several repositories, some repositories); the report names them."""


class RemovalCapExceededError(EcrRetagError):
    """Hygiene planned more removals than ``max_removals`` allows: nothing was removed."""


class ReleaseCheckFailedError(EcrRetagError):
    """A release's checks failed in at least one repository, so nothing was written in any.

    :param problems: repository name -> the check's error, for every repository that failed one.
    """

    def __init__(self, message: str, problems: dict[str, Exception] | None = None):
        self.problems = dict(problems or {})
        super().__init__(message)


class ReleaseFailedError(EcrRetagError):
    """A release write failed in a way a retry cannot fix; what the run wrote was rolled back.

    :param rollback: the roll-back report (``restored``, ``removed``, ``left_alone``, ``failed``, ...).
    """

    def __init__(self, message: str, rollback: dict | None = None):
        self.rollback = rollback
        super().__init__(message)


class RollbackIncompleteError(EcrRetagError):
    """Some tags could not be put back (immutable, previous image gone, ...); the report names them."""


class ScanFailedError(EcrRetagError):
    """The image's scan ended without findings to judge, or cannot be run (FAILED, UNSUPPORTED_IMAGE, ...).

    :param status: the scan status ECR reported (or the status the error stands for).
    """

    def __init__(self, status: str, message: str):
        self.status = status
        super().__init__(message)


class ScanLimitExceededError(EcrRetagError):
    """StartImageScan refused: a basic scan runs once per image per 24 hours, a scan on push included."""


class ScanThresholdExceededError(EcrRetagError):
    """The scan found more findings of a severity than allowed; the message has the blocking findings.

    :param report: what was evaluated (the sensor's ``return_value`` had it passed).
    """

    def __init__(self, message: str, report: dict):
        self.report = report
        super().__init__(message)


#: ECR (and IAM/STS) error codes a retry cannot fix.
PERMANENT_ERROR_CODES = frozenset(
    {
        "RepositoryNotFoundException",
        "InvalidParameterException",
        "ValidationException",
        "AccessDeniedException",
        "AccessDenied",
        "UnrecognizedClientException",
        "InvalidSignatureException",
        "LayersNotFoundException",
        "ReferencedImagesNotFoundException",
        "ImageDigestDoesNotMatchException",
        "KmsException",
        "RepositoryPolicyNotFoundException",
        # Layer transfer: a layer no image references, bytes that are not the digest, parts that
        # break ECR's rules. A retry sends the same request again.
        "LayerInaccessibleException",
        "InvalidLayerException",
        "EmptyUploadException",
        "LayerPartTooSmallException",
    }
)


def error_code(error: BaseException) -> str | None:
    """The ECR error code of a botocore ``ClientError`` (or None for anything else)."""
    response = getattr(error, "response", None)
    if isinstance(response, dict):
        return response.get("Error", {}).get("Code")
    return None


def is_permanent(error: BaseException) -> bool:
    return isinstance(error, EcrRetagError) or error_code(error) in PERMANENT_ERROR_CODES


def as_core_error(error: BaseException) -> EcrRetagError | None:
    """``error`` as a core error if a retry cannot fix it, else None (let botocore or Airflow retry)."""
    if isinstance(error, EcrRetagError):
        return error
    code = error_code(error)
    if code in PERMANENT_ERROR_CODES:
        message = getattr(error, "response", {}).get("Error", {}).get("Message", str(error))
        return EcrPermanentError(code, message)
    return None
