"""Installing a double into moto: while it is active, moto's ``ECRResponse`` serves through it.

moto has no hook for replacing an operation, so the double patches the class: every function and
property that the classes of :data:`HANDLER_CLASSES` define, the active double, and a
``call_action`` that counts, logs and injects before moto dispatches. A new ECR operation is a
method named as moto names it (``list_image_referrers``) on one of those classes, or on a new
``ECRResponse`` subclass added to :data:`HANDLER_CLASSES`. Patching the class
(not an instance) is what reaches both in-process clients and the HTTP server, which build a
new ``ECRResponse`` per request. One double at a time: the patch is process-wide.
"""

from __future__ import annotations

import contextlib
import inspect
import json
import threading
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

from moto.ecr.responses import ECRResponse

from airflow_ecr_retag.testing.handlers import ImageOperationHandlers
from airflow_ecr_retag.testing.image_status import ImageStatusHandlers
from airflow_ecr_retag.testing.layer_transfer import LayerTransferHandlers
from airflow_ecr_retag.testing.referrers import ReferrerHandlers
from airflow_ecr_retag.testing.registries import RegistryHandlers
from airflow_ecr_retag.testing.registry_auth import AuthorizationHandlers
from airflow_ecr_retag.testing.repository_listing import RepositoryListingHandlers
from airflow_ecr_retag.testing.scanning import ScanningHandlers

if TYPE_CHECKING:
    from airflow_ecr_retag.testing.double import EcrDouble

#: The classes whose functions and properties replace or add to moto's ``ECRResponse``.
HANDLER_CLASSES: tuple[type[ECRResponse], ...] = (
    RegistryHandlers,
    ImageOperationHandlers,
    LayerTransferHandlers,
    ReferrerHandlers,
    AuthorizationHandlers,
    ScanningHandlers,
    ImageStatusHandlers,
    RepositoryListingHandlers,
)

_install_lock = threading.Lock()
# Marks an attribute ECRResponse did not have itself: restoring it means deleting it.
_ABSENT = object()


@contextlib.contextmanager
def installed(double: EcrDouble) -> Iterator[None]:
    """Route moto's ECR image operations, counting and faults through ``double``."""
    with _install_lock:
        if getattr(ECRResponse, "_double_installed", False):
            raise RuntimeError("another EcrDouble is already active in this process")
        patches = _patches(double, ECRResponse.call_action)
        saved = {name: ECRResponse.__dict__.get(name, _ABSENT) for name in patches}
        for name, value in patches.items():
            setattr(ECRResponse, name, value)
    try:
        yield
    finally:
        with _install_lock:
            for name, value in saved.items():
                if value is _ABSENT:
                    delattr(ECRResponse, name)
                else:
                    setattr(ECRResponse, name, value)


def _patches(double: EcrDouble, original_call_action: Callable[[ECRResponse], Any]) -> dict[str, Any]:
    """Every attribute set on ``ECRResponse`` while ``double`` is active: the one list both
    installing and restoring read, so nothing set can be left behind."""

    def call_action(handler: ECRResponse) -> Any:
        injected = double._on_request(*_request(handler))
        return injected if injected is not None else original_call_action(handler)

    handler_functions = {
        name: value
        for handlers in HANDLER_CLASSES
        for name, value in vars(handlers).items()
        if inspect.isfunction(value) or isinstance(value, property)
    }
    return {**handler_functions, "double": double, "call_action": call_action, "_double_installed": True}


def _request(handler: ECRResponse) -> tuple[str, dict[str, Any], str, str]:
    """The operation, parameters, user agent and endpoint of the request moto is handling."""
    operation = handler._get_action()
    try:
        params = json.loads(handler.body) if handler.body else {}
    except ValueError:
        params = {}
    if isinstance(params, dict) and isinstance(params.get("layerPartBlob"), str):
        # Up to 20 MiB of base64 a part: the log keeps its size, not the bytes (uploads stream).
        params["layerPartBlob"] = f"<{len(params['layerPartBlob']) * 3 // 4} bytes, not logged>"
    return operation, params, str(handler.headers.get("User-Agent", "")), handler.uri or "ecr"
