"""Several accounts and Regions in one double: which registry a request means, and its settings.

moto keeps one ECR backend per account and Region (``ecr_backends[account][region]``), each with
its own repositories; a registry of the double is exactly one of those. ECR picks it the same way:

- the account is the request's ``registryId``, or the caller's own account when it is absent
  (moto's default ``123456789012``, unless the credentials map to another);
- the Region is the client's Region (for ``/v2/``, the registry listener's, see
  :mod:`~airflow_ecr_retag.testing.registry_listeners`).

The caller's own account is moto's rule: an access key that moto's IAM backend of an account issued
(:func:`caller_credentials`) calls as that account, any other key as ``123456789012``. So two clients
(two Airflow connections) with different keys are callers in two accounts, each reaching its own
registry without a ``registryId``, as with two AWS accounts' credentials.

Account settings (GetAccountSetting / PutAccountSetting) are kept per registry. A new setting
is a line of :data:`ACCOUNT_SETTINGS`; code that depends on one reads :func:`account_setting`.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from moto.core import DEFAULT_ACCOUNT_ID
from moto.core.responses import ActionResult, BaseResponse
from moto.ecr.models import ECRBackend, ecr_backends
from moto.ecr.responses import ECRResponse

from airflow_ecr_retag.testing.request_rules import EcrError

if TYPE_CHECKING:
    from airflow_ecr_retag.testing.double import EcrDouble

#: The caller's own account when the credentials name no other (moto's default).
CALLER_ACCOUNT = DEFAULT_ACCOUNT_ID
_REGISTRY_ID = re.compile(r"^[0-9]{12}$")

#: Each account setting ECR documents: its default and the values PutAccountSetting accepts
#: (the botocore model's documentation of ``name`` and ``value``).
ACCOUNT_SETTINGS: dict[str, tuple[str, frozenset[str]]] = {
    "BLOB_MOUNTING": ("DISABLED", frozenset({"ENABLED", "DISABLED"})),
    "BASIC_SCAN_TYPE_VERSION": ("AWS_NATIVE", frozenset({"AWS_NATIVE", "CLAIR"})),
    "REGISTRY_POLICY_SCOPE": ("V2", frozenset({"V1", "V2"})),
}


@dataclass(frozen=True)
class Registry:
    """One account's registry in one Region."""

    account: str
    region: str

    @property
    def backend(self) -> ECRBackend:
        return ecr_backends[self.account][self.region]

    @property
    def host(self) -> str:
        """The registry's host name in ECR (what image URIs carry)."""
        return f"{self.account}.dkr.ecr.{self.region}.amazonaws.com"

    def repository(self, name: str) -> Any:
        """The repository, or moto's RepositoryNotFoundException."""
        return self.backend._get_repository(name, self.account)


def caller_credentials(account: str) -> tuple[str, str]:
    """A new access key id and secret whose requests are ``account``'s own (as the caller's
    account, with no ``registryId``): a key moto's IAM backend of that account issued."""
    from moto.iam.models import iam_backends

    key = iam_backends[check_registry_id(account, "registry_id")]["aws"].create_temp_access_key()
    return key.access_key_id, key.secret_access_key


def check_registry_id(registry_id: Any, where: str = "registryId") -> str:
    """A registry id is an account id: twelve digits (the botocore model's pattern)."""
    if not isinstance(registry_id, str) or not _REGISTRY_ID.match(registry_id):
        raise EcrError(
            "InvalidParameterException",
            f"Invalid parameter at '{where}' failed to satisfy constraint: "
            "'must satisfy regular expression '[0-9]{12}''",
        )
    return registry_id


def account_setting(registry: Registry, name: str) -> str:
    """A setting's value in ``registry`` (its default until PutAccountSetting changes it)."""
    return _settings(registry.backend).get(name, ACCOUNT_SETTINGS[name][0])


def set_account_setting(registry: Registry, name: str, value: str) -> None:
    """Change a setting of ``registry`` (the caller holds the double's lock)."""
    _settings(registry.backend)[name] = value


def scanning_configuration(registry: Registry) -> dict[str, Any]:
    """The registry's scanning configuration (``scanType`` BASIC or ENHANCED, ``rules``), kept by
    moto's PutRegistryScanningConfiguration."""
    return registry.backend.registry_scanning_configuration


def basic_scans_started(registry: Registry) -> list[float]:
    """When the registry's basic scans started (the double's clock), for ECR's quota of scans a day."""
    starts = getattr(registry.backend, "_double_basic_scans", None)
    if starts is None:
        starts = registry.backend._double_basic_scans = []
    return starts


def _settings(backend: ECRBackend) -> dict[str, str]:
    settings = getattr(backend, "_double_account_settings", None)
    if settings is None:
        settings = backend._double_account_settings = {}
    return settings


class RegistryHandlers(ECRResponse):
    """Which backend a request reaches, and the account settings calls. Installed on
    ``ECRResponse`` with the other handler classes (see :mod:`~airflow_ecr_retag.testing.moto_install`)."""

    double: EcrDouble

    def _get_param(self, param_name: str, if_none: Any = None) -> Any:
        """moto's, with the JSON body parsed once per request: moto parses it again on every call,
        which for a 20 MiB UploadLayerPart is most of the request's cost."""
        if self.automated_parameter_parsing or self.querystring.get(param_name) is not None:
            return BaseResponse._get_param(self, param_name, if_none)
        parsed = self.__dict__.get("_double_parsed_body")
        if parsed is None:
            try:
                parsed = json.loads(self.body) if self.body else {}
            except (ValueError, TypeError):
                parsed = {}
            self._double_parsed_body = parsed
        if isinstance(parsed, dict) and param_name in parsed:
            return parsed[param_name]
        return (self.uri_match or {}).get(param_name, if_none)

    @property
    def ecr_backend(self) -> ECRBackend:
        """moto's backend of the registry the request names: every operation, moto's own included,
        goes to the ``registryId`` account's registry in the client's Region."""
        return self.registry.backend

    @property
    def registry(self) -> Registry:
        registry_id = self._get_param("registryId")
        account = check_registry_id(registry_id) if registry_id is not None else self.current_account
        return Registry(account, self.region)

    def get_account_setting(self) -> ActionResult:
        name = _setting_name(self._get_param("name"))
        return ActionResult({"name": name, "value": account_setting(self.registry, name)})

    def put_account_setting(self) -> ActionResult:
        name, value = _setting_name(self._get_param("name")), self._get_param("value")
        allowed = ACCOUNT_SETTINGS[name][1]
        if value not in allowed:
            raise EcrError(
                "InvalidParameterException",
                f"Invalid parameter at 'value' failed to satisfy constraint: "
                f"'must be one of {', '.join(sorted(allowed))} for {name}'",
            )
        with self.double._lock:
            set_account_setting(self.registry, name, value)
        return ActionResult({"name": name, "value": value})


def _setting_name(name: Any) -> str:
    if name not in ACCOUNT_SETTINGS:
        raise EcrError(
            "InvalidParameterException",
            f"Invalid parameter at 'name' failed to satisfy constraint: "
            f"'must be one of {', '.join(sorted(ACCOUNT_SETTINGS))}'",
        )
    return name
