"""The Kubernetes API edge for objects the operator owns (claims, namespaces).

kopf talks to the API server for Projects themselves; this module covers the rest
with the official client. The client is blocking, so every call runs in a thread
pool; its ApiException is translated into our errors here and nowhere else.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, TypeVar

import kubernetes.client
import kubernetes.config
from kubernetes.client.exceptions import ApiException
from urllib3.exceptions import HTTPError

from controller.errors import PermanentError, RetryableError

T = TypeVar("T")


class AlreadyExists(Exception):
    """The object exists: for claims, someone holds that value."""


@dataclass(frozen=True)
class LeaseInfo:
    name: str
    holder: str
    labels: dict[str, str]
    annotations: dict[str, str]


def api_client_from_environment() -> kubernetes.client.ApiClient:
    """In-cluster service account if there is one, else KUBECONFIG (read now, not at import)."""
    try:
        kubernetes.config.load_incluster_config()  # type: ignore[no-untyped-call]
        return kubernetes.client.ApiClient()
    except kubernetes.config.ConfigException:
        config_file = os.environ.get("KUBECONFIG")
        return kubernetes.config.new_client_from_config(config_file=config_file)  # type: ignore[no-untyped-call,no-any-return]


def _translate(exc: ApiException, what: str) -> Exception:
    if exc.status == 409:
        return AlreadyExists(what)
    if exc.status in (429, 500, 502, 503, 504) or exc.status is None:
        return RetryableError(f"{what}: API server answered {exc.status} {exc.reason}", reason="APIUnavailable")
    return PermanentError(f"{what}: API server refused ({exc.status} {exc.reason})", reason="APIRefused")


class KubeClient:
    def __init__(self, api: kubernetes.client.ApiClient, executor: ThreadPoolExecutor) -> None:
        self._core = kubernetes.client.CoreV1Api(api)
        self._coordination = kubernetes.client.CoordinationV1Api(api)
        self._executor = executor

    async def _call(self, what: str, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(self._executor, functools.partial(fn, *args, **kwargs))
        except ApiException as exc:
            raise _translate(exc, what) from exc
        except HTTPError as exc:
            raise RetryableError(f"{what}: API server unreachable", reason="APIUnavailable") from exc

    async def ensure_namespace(self, name: str) -> None:
        body = {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}}
        with contextlib.suppress(AlreadyExists):
            await self._call(f"namespace {name}", self._core.create_namespace, body)

    async def create_lease(
        self, namespace: str, name: str, holder: str, labels: dict[str, str], annotations: dict[str, str]
    ) -> None:
        """Create the lease; raises AlreadyExists when the name is taken (the atomic claim)."""
        body = {
            "apiVersion": "coordination.k8s.io/v1",
            "kind": "Lease",
            "metadata": {"name": name, "labels": labels, "annotations": annotations},
            "spec": {"holderIdentity": holder},
        }
        await self._call(f"claim {name}", self._coordination.create_namespaced_lease, namespace, body)

    async def read_lease(self, namespace: str, name: str) -> LeaseInfo | None:
        try:
            lease = await self._call(f"claim {name}", self._coordination.read_namespaced_lease, name, namespace)
        except PermanentError:
            return None  # 404: released meanwhile
        return _lease_info(lease)

    async def list_leases(self, namespace: str, selector: str) -> list[LeaseInfo]:
        result = await self._call(
            "claims", self._coordination.list_namespaced_lease, namespace, label_selector=selector
        )
        return [_lease_info(item) for item in result.items]

    async def delete_lease(self, namespace: str, name: str) -> None:
        try:
            await self._call(f"claim {name}", self._coordination.delete_namespaced_lease, name, namespace)
        except PermanentError as exc:
            if "404" not in exc.message:
                raise


def _lease_info(lease: Any) -> LeaseInfo:
    meta = lease.metadata
    return LeaseInfo(
        name=meta.name,
        holder=(lease.spec.holder_identity if lease.spec else "") or "",
        labels=dict(meta.labels or {}),
        annotations=dict(meta.annotations or {}),
    )
