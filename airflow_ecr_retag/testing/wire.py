"""What crosses between :class:`RemoteEcrDouble` and a served double: the shared API's names, the encoding.

Both front doors, :class:`~airflow_ecr_retag.testing.double.EcrDouble` in the test's process and
:class:`~airflow_ecr_retag.testing.remote_double.RemoteEcrDouble` for a double served by another
process, offer the helpers named here with the same arguments and return types; ``tests/test_double_api.py``
runs the same assertions through both. The remote one sends each call to the server's control
API as JSON; what JSON cannot carry (bytes, datetimes, tuples, images with their blobs, stored
images, recorded calls, vulnerabilities, faults, staged calls) travels as a tagged object and comes
back as the same type. A Python function cannot cross: ``before_call`` takes a
:class:`~airflow_ecr_retag.testing.recording.StagedCall` there.
"""

from __future__ import annotations

import base64
import dataclasses
from datetime import datetime
from typing import Any

from airflow_ecr_retag.testing.blob_store import Blob, BytesBlob, GeneratedBlob, read_all
from airflow_ecr_retag.testing.images import BuiltImage
from airflow_ecr_retag.testing.recording import Fault, RecordedCall, StagedCall
from airflow_ecr_retag.testing.scan_rules import ImageScan, Vulnerability
from airflow_ecr_retag.testing.store import StoredImage

CONTROL_PREFIX = "/_ecr_double/"

#: The helpers both front doors offer, with the same arguments and return types; a served double
#: runs these for a RemoteEcrDouble (and no others), and a StagedCall may name any of them.
SHARED_METHODS = frozenset(
    {
        # seeding and staging
        "create_repository",
        "push",
        "seed",
        "seed_many",
        "put_blob",
        "move_tag",
        "move_tags",
        "delete_tag",
        "set_pushed_at",
        "set_last_pulled",
        "set_image_status",
        "set_account_setting",
        "advance_clock",
        # scanning
        "set_registry_scanning",
        "add_findings",
        "set_scan",
        "scan_status",
        # reading the state
        "tags",
        "images",
        "blobs_of",
        "blob_bytes",
        "registry_endpoint",
        "registry_credentials",
        # what was called, and faults
        "reset_calls",
        "requests_for",
        "inject",
        "before_call",
        "clear_faults",
    }
)
#: Read-only attributes both offer (``calls`` is a CallCounter on both).
SHARED_PROPERTIES = frozenset({"calls", "requests", "write_calls", "total_calls", "region_name"})
#: Attributes both offer that a test may also set (``double.scan_seconds = 5``).
SHARED_SETTINGS = frozenset({"scan_seconds", "basic_scan_quota", "activation_seconds", "download_url_seconds"})

_TAG = "__wire__"
_RECORDS: dict[str, type] = {
    "stored_image": StoredImage,
    "image_scan": ImageScan,
    "vulnerability": Vulnerability,
    "recorded_call": RecordedCall,
}
_RECORD_NAMES = {cls: name for name, cls in _RECORDS.items()}


def client_environ(endpoint_url: str, region_name: str) -> dict[str, str]:
    """The environment that points a process (Airflow, boto3, the AWS CLI) at a served double."""
    return {
        "AWS_ENDPOINT_URL_ECR": endpoint_url,
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": region_name,
    }


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def _unb64(text: str) -> bytes:
    return base64.b64decode(text)


def _encode_blob(blob: Blob) -> dict[str, Any]:
    if isinstance(blob, GeneratedBlob):
        # Only the recipe travels: a 1 GiB generated layer is a few bytes on the wire.
        return {
            _TAG: "generated_blob",
            "seed": _b64(blob.seed),
            "body_size": blob.body_size,
            "prefix": _b64(blob.prefix),
            "suffix": _b64(blob.suffix),
        }
    return {_TAG: "bytes_blob", "data": _b64(read_all(blob))}


def encode(value: Any) -> Any:
    """``value`` as JSON can carry it; :func:`decode` gives it back."""
    if isinstance(value, Fault):  # before str: a Fault is one
        return {_TAG: "fault", "value": value.value}
    if value is None or isinstance(value, bool | int | float | str):
        return value
    if isinstance(value, bytes):
        return {_TAG: "bytes", "data": _b64(value)}
    if isinstance(value, datetime):
        return {_TAG: "datetime", "iso": value.isoformat()}
    if isinstance(value, tuple):
        return {_TAG: "tuple", "items": [encode(item) for item in value]}
    if isinstance(value, list):
        return [encode(item) for item in value]
    if isinstance(value, dict):
        return {str(key): encode(item) for key, item in value.items()}
    if isinstance(value, BuiltImage):
        return {
            _TAG: "image",
            "manifest": value.manifest,
            "media_type": value.media_type,
            "blobs": [_encode_blob(blob) for blob in value.blobs.values()],
            "children": [encode(child) for child in value.children],
        }
    if isinstance(value, StagedCall):
        return {_TAG: "staged_call", "method": value.method, "args": encode(value.args), "kwargs": encode(value.kwargs)}
    if type(value) in _RECORD_NAMES:
        fields = {f.name: encode(getattr(value, f.name)) for f in dataclasses.fields(value)}
        return {_TAG: _RECORD_NAMES[type(value)], "fields": fields}
    if isinstance(value, BytesBlob | GeneratedBlob):
        return _encode_blob(value)
    raise TypeError(f"a {type(value).__name__} cannot cross to a served double")


def decode(value: Any) -> Any:
    """What :func:`encode` made, back as the type it was."""
    if isinstance(value, list):
        return [decode(item) for item in value]
    if not isinstance(value, dict):
        return value
    tag = value.get(_TAG)
    if tag is None:
        return {key: decode(item) for key, item in value.items()}
    if tag == "fault":
        return Fault(value["value"])
    if tag == "bytes":
        return _unb64(value["data"])
    if tag == "datetime":
        return datetime.fromisoformat(value["iso"])
    if tag == "tuple":
        return tuple(decode(item) for item in value["items"])
    if tag == "bytes_blob":
        return BytesBlob(_unb64(value["data"]))
    if tag == "generated_blob":
        parts = {name: _unb64(value[name]) for name in ("seed", "prefix", "suffix")}
        return GeneratedBlob(parts["seed"], value["body_size"], parts["prefix"], parts["suffix"])
    if tag == "image":
        blobs = [decode(blob) for blob in value["blobs"]]
        return BuiltImage(
            manifest=value["manifest"],
            media_type=value["media_type"],
            blobs={blob.digest: blob for blob in blobs},
            children=tuple(decode(child) for child in value["children"]),
        )
    if tag == "staged_call":
        if value["method"] not in SHARED_METHODS:
            raise ValueError(f"a staged call names one of the shared helpers, not {value['method']!r}")
        return StagedCall(value["method"], *decode(value["args"]), **decode(value["kwargs"]))
    if tag in _RECORDS:
        return _RECORDS[tag](**{name: decode(item) for name, item in value["fields"].items()})
    raise ValueError(f"unknown wire tag {tag!r}")
