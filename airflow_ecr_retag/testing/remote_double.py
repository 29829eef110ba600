""":class:`RemoteEcrDouble`: the double served by another process, driven with the API of :class:`EcrDouble`.

Every helper here has the name, the arguments and the return type of :class:`EcrDouble`'s
(``tests/test_double_api.py`` runs the same assertions through both, and compares their
signatures); each is one request to the server's control API (:mod:`~airflow_ecr_retag.testing.server`),
its arguments and result encoded by :mod:`~airflow_ecr_retag.testing.wire`.

What cannot cross a process boundary, and what to use instead:

- ``before_call(operation, action)`` with a Python function: pass a
  :class:`~airflow_ecr_retag.testing.recording.StagedCall` (``StagedCall("move_tag", repo, tag,
  digest)``), which the server runs just as a function; ``inject`` takes a :class:`Fault` as usual.
- ``clock`` (a function): :meth:`advance_clock` moves the served double's clock forward.
- ``EcrDouble.registry()`` (moto's backend objects): :meth:`registry_endpoint` and
  :meth:`registry_credentials`; here :meth:`registry` returns the endpoint, user and password at once.
- ``observers`` and the double's internals (``blobs``, ``uploads``, ``listeners``) stay in the
  serving process.
"""

from __future__ import annotations

import builtins
import json
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable
from datetime import datetime
from typing import TYPE_CHECKING, Any

from airflow_ecr_retag.testing import wire
from airflow_ecr_retag.testing.recording import CallCounter, Fault, RecordedCall, StagedCall

if TYPE_CHECKING:
    from airflow_ecr_retag.testing.blob_store import Blob
    from airflow_ecr_retag.testing.images import BuiltImage
    from airflow_ecr_retag.testing.scan_rules import Vulnerability
    from airflow_ecr_retag.testing.store import StoredImage

#: Errors a served double's helper raises that come back as themselves; any other as RemoteDoubleError.
_BUILTIN_ERRORS = (KeyError, IndexError, LookupError, ValueError, TypeError, AttributeError, RuntimeError)


class RemoteDoubleError(RuntimeError):
    """A served double's helper failed with an error of the double's own (the message names its type)."""


def _shared_setting(name: str, doc: str) -> property:
    """A setting of the served double (``wire.SHARED_SETTINGS``), read and written through the control API."""

    def read(self: RemoteEcrDouble) -> Any:
        return self._call(name)

    def write(self: RemoteEcrDouble, value: Any) -> None:
        self._post("set", name=name, value=wire.encode(value))

    return property(read, write, doc=doc)


class RemoteEcrDouble:
    """Drive a double served by another process (``ecr-double serve``) as you would an :class:`EcrDouble`.

    :param endpoint_url: the server's endpoint, as ``serve`` prints it (``http://127.0.0.1:<port>``).

    .. code-block:: python

        remote = RemoteEcrDouble(os.environ["AWS_ENDPOINT_URL_ECR"])
        remote.create_repository("team/app")
        digest = remote.push("team/app", build_image("oci-index"), ["sha-1"])
        remote.before_call("PutImage", StagedCall("move_tag", "team/app", "prod", digest))
        ...
        assert remote.calls["PutImage"] == 1 and remote.tags("team/app")["prod"] == digest
    """

    def __init__(self, endpoint_url: str):
        self.endpoint_url = endpoint_url.rstrip("/")

    # ------------------------------------------------------------------ transport
    def _post(self, action: str, **body: Any) -> Any:
        request = urllib.request.Request(
            f"{self.endpoint_url}{wire.CONTROL_PREFIX}{action}",
            data=json.dumps(body).encode(),
            headers={"Content-Type": "application/json"},
            method="POST",
        )
        try:
            with urllib.request.urlopen(request, timeout=600) as response:
                return json.loads(response.read())
        except urllib.error.HTTPError as failure:
            raise _remote_error(failure) from None

    def _call(self, name: str, *args: Any, **kwargs: Any) -> Any:
        answer = self._post("call", name=name, args=wire.encode(list(args)), kwargs=wire.encode(kwargs))
        return wire.decode(answer["result"])

    # ------------------------------------------------------------------ clients
    @property
    def region_name(self) -> str:
        """The served double's default Region."""
        return self._call("region_name")

    def client(self, region_name: str | None = None, **kwargs: Any) -> Any:
        """A boto3 ECR client bound to the served double (fake credentials unless given)."""
        import boto3

        kwargs.setdefault("endpoint_url", self.endpoint_url)
        kwargs.setdefault("aws_access_key_id", "testing")
        kwargs.setdefault("aws_secret_access_key", "testing")
        return boto3.client("ecr", region_name=region_name or self.region_name, **kwargs)

    def environ(self) -> dict[str, str]:
        """Environment variables that point another process at the served double."""
        return wire.client_environ(self.endpoint_url, self.region_name)

    # ------------------------------------------------------------------ what was called
    @property
    def calls(self) -> CallCounter:
        """The calls per operation so far (a Counter; calling it, ``remote.calls()``, gives the same)."""
        return CallCounter(self._call("calls"))

    @property
    def requests(self) -> list[RecordedCall]:
        """Every request so far, in order, as the served double recorded it."""
        return self._call("requests")

    @property
    def write_calls(self) -> int:
        """How many calls changed or could have changed registry state (``WRITE_OPERATIONS``)."""
        return self._call("write_calls")

    @property
    def total_calls(self) -> int:
        return self._call("total_calls")

    def reset_calls(self) -> None:
        self._call("reset_calls")

    def requests_for(self, operation: str) -> list[dict[str, Any]]:
        return self._call("requests_for", operation)

    # ------------------------------------------------------------------ faults and staged actors
    def inject(self, operation: str, fault: Fault | str, *, call: int = 1, times: int | None = 1) -> None:
        """As :meth:`EcrDouble.inject`."""
        self._call("inject", operation, Fault(fault), call=call, times=times)

    def before_call(self, operation: str, action: Callable[..., None], *, call: int = 1, times: int | None = 1) -> None:
        """As :meth:`EcrDouble.before_call`, with a :class:`StagedCall` as the action: a Python function
        cannot cross to the served double."""
        if not isinstance(action, StagedCall):
            raise TypeError(
                "a served double runs in another process: stage the action as data, "
                'for example StagedCall("move_tag", "team/app", "prod", digest), not a Python function'
            )
        self._call("before_call", operation, action, call=call, times=times)

    def clear_faults(self) -> None:
        self._call("clear_faults")

    # ------------------------------------------------------------------ settings and the clock
    scan_seconds = _shared_setting("scan_seconds", "How long a scan stays IN_PROGRESS, in seconds of the clock.")
    basic_scan_quota = _shared_setting("basic_scan_quota", "Basic scans a registry may start in 24 hours.")
    activation_seconds = _shared_setting("activation_seconds", "How long a restored image stays ACTIVATING.")
    download_url_seconds = _shared_setting("download_url_seconds", "How long a blob URL stays valid, in seconds.")

    def advance_clock(self, seconds: float) -> float:
        """As :meth:`EcrDouble.advance_clock`: the served double's clock moves forward."""
        return self._call("advance_clock", seconds)

    # ------------------------------------------------------------------ seeding and staging
    def create_repository(
        self,
        name: str,
        *,
        mutability: str = "MUTABLE",
        exclusion_filters: Iterable[str] = (),
        scan_on_push: bool = False,
        registry_id: str | None = None,
        region_name: str | None = None,
    ) -> None:
        self._call(
            "create_repository",
            name,
            mutability=mutability,
            exclusion_filters=list(exclusion_filters),
            scan_on_push=scan_on_push,
            registry_id=registry_id,
            region_name=region_name,
        )

    def push(
        self,
        repository_name: str,
        image: BuiltImage,
        tags: Iterable[str] = (),
        *,
        pushed_at: datetime | float | None = None,
        registry_id: str | None = None,
        region_name: str | None = None,
    ) -> str:
        """As :meth:`EcrDouble.push`: the image travels with its blobs (a generated layer as its recipe)."""
        return self._call(
            "push",
            repository_name,
            image,
            list(tags),
            pushed_at=pushed_at,
            registry_id=registry_id,
            region_name=region_name,
        )

    def seed(self, repository_name: str, images: Iterable[dict[str, Any]], **where: Any) -> list[str]:
        """Build and push images on the server (not counted): each ``{"kind", "name", "tags", "pushed_at",
        "layer_bytes"}``."""
        return self._call("seed", repository_name, list(images), **where)

    def seed_many(self, repository_name: str, images: Iterable[dict[str, Any]], **where: Any) -> list[str]:
        """Store many small images fast (not counted), as :meth:`EcrDouble.seed_many`: each
        ``{"name", "tags", "pushed_at", "last_pulled", "status"}``."""
        return self._call("seed_many", repository_name, list(images), **where)

    def put_blob(self, repository_name: str, content: bytes | Blob, **where: Any) -> str:
        return self._call("put_blob", repository_name, content, **where)

    def move_tag(self, repository_name: str, tag: str, digest: str, **where: Any) -> None:
        self._call("move_tag", repository_name, tag, digest, **where)

    def move_tags(self, repository_name: str, moves: Iterable[dict[str, str]], **where: Any) -> float:
        """Point tags at digests directly; returns the server's time after the moves."""
        return self._call("move_tags", repository_name, list(moves), **where)

    def delete_tag(self, repository_name: str, tag: str, **where: Any) -> None:
        self._call("delete_tag", repository_name, tag, **where)

    def set_pushed_at(self, repository_name: str, digest: str, pushed_at: datetime | float, **where: Any) -> None:
        self._call("set_pushed_at", repository_name, digest, pushed_at, **where)

    def set_last_pulled(
        self, repository_name: str, digest: str, pulled_at: datetime | float | None, **where: Any
    ) -> None:
        self._call("set_last_pulled", repository_name, digest, pulled_at, **where)

    def set_image_status(self, repository_name: str, digest: str, status: str, **where: Any) -> None:
        self._call("set_image_status", repository_name, digest, status, **where)

    def set_account_setting(
        self, name: str, value: str, *, registry_id: str | None = None, region_name: str | None = None
    ) -> None:
        self._call("set_account_setting", name, value, registry_id=registry_id, region_name=region_name)

    # ------------------------------------------------------------------ scanning
    def set_registry_scanning(
        self,
        scan_type: str = "BASIC",
        rules: list[dict[str, Any]] | None = None,
        *,
        registry_id: str | None = None,
        region_name: str | None = None,
    ) -> None:
        self._call("set_registry_scanning", scan_type, rules, registry_id=registry_id, region_name=region_name)

    def add_findings(
        self, repository_name: str, digest: str, vulnerabilities: Iterable[Vulnerability | dict[str, Any]], **where: Any
    ) -> None:
        self._call("add_findings", repository_name, digest, list(vulnerabilities), **where)

    def set_scan(
        self,
        repository_name: str,
        digest: str,
        status: str | None = None,
        *,
        description: str | None = None,
        findings_available: bool = True,
        scan_type: str | None = None,
        **where: Any,
    ) -> None:
        self._call(
            "set_scan",
            repository_name,
            digest,
            status,
            description=description,
            findings_available=findings_available,
            scan_type=scan_type,
            **where,
        )

    def scan_status(self, repository_name: str, digest: str, **where: Any) -> str | None:
        return self._call("scan_status", repository_name, digest, **where)

    # ------------------------------------------------------------------ the state
    def tags(self, repository_name: str, **where: Any) -> dict[str, str]:
        """The repository's tags, each with the digest it points at."""
        return self._call("tags", repository_name, **where)

    def images(self, repository_name: str, **where: Any) -> dict[str, StoredImage]:
        """The repository's images by digest (copies: changing one changes nothing on the server)."""
        return self._call("images", repository_name, **where)

    def blobs_of(self, repository_name: str, **where: Any) -> dict[str, int]:
        return self._call("blobs_of", repository_name, **where)

    def blob_bytes(self, digest: str) -> bytes:
        return self._call("blob_bytes", digest)

    def registry_endpoint(self, *, registry_id: str | None = None, region_name: str | None = None) -> str:
        return self._call("registry_endpoint", registry_id=registry_id, region_name=region_name)

    def registry_credentials(self, *, region_name: str | None = None) -> tuple[str, str]:
        return self._call("registry_credentials", region_name=region_name)

    def caller_credentials(self, *, registry_id: str) -> tuple[str, str]:
        return self._call("caller_credentials", registry_id=registry_id)

    # ------------------------------------------------------------------ only here
    def registry(self, **where: str) -> tuple[str, str, str]:
        """A registry's ``/v2/`` endpoint, user and password at once (``where``: ``registry_id``,
        ``region_name``). Not :meth:`EcrDouble.registry`, which returns moto's backend objects."""
        answer = self._post("registry", **where)
        return answer["endpoint"], answer["user"], answer["password"]

    def memory(self, *, reset_peak: bool = False) -> dict[str, int | None]:
        """The server's resident memory (``rss``) and its peak (``peak``), in bytes."""
        return self._post("memory", reset_peak=reset_peak)

    def cpu_seconds(self) -> float:
        """The CPU time the server process has used so far, in seconds."""
        return self._post("cpu")["seconds"]


def _remote_error(failure: urllib.error.HTTPError) -> Exception:
    """The error the served double's helper raised, as the same builtin type where it is one."""
    try:
        answer = json.loads(failure.read())
    except ValueError:
        return RemoteDoubleError(f"the served double answered {failure.code} {failure.reason}")
    kind = getattr(builtins, answer.get("type", ""), None)
    if isinstance(kind, type) and issubclass(kind, _BUILTIN_ERRORS):
        return kind(*wire.decode(answer.get("args", [answer["error"]])))
    kind_name, message = answer.get("type", "Error"), answer["error"]
    return RemoteDoubleError(message if message.startswith(kind_name) else f"{kind_name}: {message}")
