"""Registry authentication as ECR does it: GetAuthorizationToken, and the ``/v2/`` credentials check.

GetAuthorizationToken returns, per registry, base64 ``AWS:<password>``, its expiry (12 hours
on) and the registry's ``proxyEndpoint`` (its listener, see
:mod:`~airflow_ecr_retag.testing.registry_listeners`). ``docker login``, ``skopeo --creds`` and
``crane auth login`` use the user ``AWS`` and that password with HTTP Basic auth. The password is
signed by the double and names its Region, so a made-up password, another Region's or an expired
one is refused, as ECR refuses them; any account's registry in the Region accepts it (the token
stands for the caller's IAM identity, and the double models no cross-account policies).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from moto.core.responses import ActionResult
from moto.ecr.responses import ECRResponse

from airflow_ecr_retag.core.limits import AUTHORIZATION_TOKEN_SECONDS, MAX_AUTHORIZATION_REGISTRY_IDS
from airflow_ecr_retag.testing.registries import Registry, check_registry_id
from airflow_ecr_retag.testing.request_rules import EcrError

if TYPE_CHECKING:
    from airflow_ecr_retag.testing.double import EcrDouble

#: The user name of every ECR registry credential.
REGISTRY_USER = "AWS"


class AuthorizationHandlers(ECRResponse):
    """GetAuthorizationToken, installed on ``ECRResponse`` while a double is active."""

    double: EcrDouble

    def get_authorization_token(self) -> ActionResult:
        registry_ids = self._get_param("registryIds")
        if registry_ids is not None and not 1 <= len(registry_ids) <= MAX_AUTHORIZATION_REGISTRY_IDS:
            raise EcrError(
                "InvalidParameterException",
                "Invalid parameter at 'registryIds' failed to satisfy constraint: "
                f"'Member must have length between 1 and {MAX_AUTHORIZATION_REGISTRY_IDS}'",
            )
        accounts = [check_registry_id(r, "registryIds") for r in registry_ids or [self.current_account]]
        expires_at = self.double.clock() + AUTHORIZATION_TOKEN_SECONDS
        password = issue_password(self.double, self.region, expires_at)
        token = base64.b64encode(f"{REGISTRY_USER}:{password}".encode()).decode()
        data = [
            {
                "authorizationToken": token,
                "expiresAt": datetime.fromtimestamp(expires_at, tz=UTC),
                "proxyEndpoint": self.double.registry_endpoint(registry_id=account, region_name=self.region),
            }
            for account in accounts
        ]
        return ActionResult({"authorizationData": data})


def issue_password(double: EcrDouble, region: str, expires_at: float) -> str:
    claims = base64.urlsafe_b64encode(json.dumps({"region": region, "expires": int(expires_at)}).encode()).decode()
    return f"{claims}.{_sign(double, claims)}"


def _sign(double: EcrDouble, claims: str) -> str:
    return hmac.new(double.url_secret, b"registry-token:" + claims.encode(), hashlib.sha256).hexdigest()


def check_credentials(double: EcrDouble, registry: Registry, authorization: str | None) -> str | None:
    """Why a ``/v2/`` request's ``Authorization`` header is refused (None: it is accepted):
    ``"missing"``, ``"invalid"`` or ``"expired"``."""
    if not authorization or not authorization.startswith("Basic "):
        return "missing"
    try:
        user, password = base64.b64decode(authorization[6:], validate=True).decode().split(":", 1)
        claims, signature = password.rsplit(".", 1)
        decoded: dict[str, Any] = json.loads(base64.urlsafe_b64decode(claims))
    except (ValueError, UnicodeDecodeError, binascii.Error):
        return "invalid"
    if user != REGISTRY_USER or not hmac.compare_digest(signature, _sign(double, claims)):
        return "invalid"
    if decoded.get("region") != registry.region:
        return "invalid"
    if double.clock() > decoded.get("expires", 0):
        return "expired"
    return None


def registry_password(double: EcrDouble, region: str) -> str:
    """A fresh password for the registries of ``region`` (what ``aws ecr get-login-password`` prints)."""
    return issue_password(double, region, double.clock() + AUTHORIZATION_TOKEN_SECONDS)
