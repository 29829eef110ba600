"""The AWS connection a trigger's ECR client comes from: its four fields in one place.

Every trigger of this package takes ``aws_conn_id``, ``region_name``, ``verify`` and
``botocore_config`` as the Amazon provider's triggers do, serializes them, builds its
``EcrHook`` from them and keys the shared async client by them. This module imports nothing at
the top: the asset watcher's module is imported in the triggerer's event loop and must stay cheap.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from airflow.providers.amazon.aws.hooks.ecr import EcrHook


class AwsConnectionFields:
    """Mixin of the triggers: the connection fields set, serialized and turned into a hook."""

    aws_conn_id: str | None
    region_name: str | None
    verify: bool | str | None
    botocore_config: dict | None

    def _set_connection(
        self,
        aws_conn_id: str | None,
        region_name: str | None,
        verify: bool | str | None,
        botocore_config: dict | None,
    ) -> None:
        self.aws_conn_id = aws_conn_id
        self.region_name = region_name
        self.verify = verify
        self.botocore_config = botocore_config

    def connection_kwargs(self) -> dict[str, Any]:
        """The fields as ``serialize()`` gives them back to ``__init__`` (always the same keys)."""
        return {
            "aws_conn_id": self.aws_conn_id,
            "region_name": self.region_name,
            "verify": self.verify,
            "botocore_config": self.botocore_config,
        }

    def hook(self) -> EcrHook:
        from airflow.providers.amazon.aws.hooks.ecr import EcrHook

        return EcrHook(
            aws_conn_id=self.aws_conn_id, region_name=self.region_name, verify=self.verify, config=self.botocore_config
        )
