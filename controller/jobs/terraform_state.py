"""Where a Project's Terraform state lives: a Secret and its lock Lease in the operator's namespace.

The ``kubernetes`` backend names them ``tfstate-default-<suffix>`` and
``lock-tfstate-default-<suffix>`` (`controller.specs.terraform.state_suffix`). Terraform writes
them; the operator reads the state for the names its resources were made with, reads the
lock to tell a live run from a dead one, and drops both once the resources are destroyed.
"""

from __future__ import annotations

from typing import Any

from controller.clients.kube import KubeClient
from controller.errors import RetryableError
from controller.loop.naming import ProjectKey
from controller.specs import terraform as tf


class StateStore:
    def __init__(self, kube: KubeClient, namespace: str) -> None:
        self._kube = kube
        self._namespace = namespace
        self._names: dict[ProjectKey, str] = {}  # each Project's resource prefix, read from its state once

    def _secret_path(self, key: ProjectKey) -> str:
        return f"/api/v1/namespaces/{self._namespace}/secrets/tfstate-default-{tf.state_suffix(key)}"

    def _lease_path(self, key: ProjectKey) -> str:
        return (f"/apis/coordination.k8s.io/v1/namespaces/{self._namespace}/leases/"
                f"lock-tfstate-default-{tf.state_suffix(key)}")  # fmt: skip

    async def lock(self, key: ProjectKey) -> tf.LockInfo | None:
        """The state's lock, or None when it is free."""
        lease: dict[str, Any] | None = await self._kube.request("GET", self._lease_path(key))
        return tf.lock_info(lease)

    async def resource_name(self, key: ProjectKey) -> str:
        """The prefix the Project's resources were made with (`tf.name_in_state`)."""
        if key not in self._names:
            secret = await self._kube.request("GET", self._secret_path(key))
            try:
                state = tf.stored_state(secret)
            except ValueError as exc:
                where = f"tfstate-default-{tf.state_suffix(key)} in {self._namespace}"
                raise RetryableError(f"{exc} ({where}): its resources' names are unknown, so nothing is planned",
                                     reason="StateUnreadable", delay=60) from None  # fmt: skip
            self._names[key] = tf.name_in_state(key, state)
        return self._names[key]

    async def kubeconfig(self, key: ProjectKey) -> str | None:
        """The kubeconfig of the cluster the Project's state made (`tf.kubeconfig_in_state`), or None."""
        secret = await self._kube.request("GET", self._secret_path(key))
        try:
            return tf.kubeconfig_in_state(tf.stored_state(secret))
        except ValueError:
            return None

    async def drop(self, key: ProjectKey) -> None:
        """The state and its lock gone (after a destroy): a Project made again under the name starts afresh."""
        await self._kube.request("DELETE", self._secret_path(key))
        await self._kube.request("DELETE", self._lease_path(key))
        self.forget(key)

    def forget(self, key: ProjectKey) -> None:
        self._names.pop(key, None)
