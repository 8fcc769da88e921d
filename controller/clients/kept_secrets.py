"""The Secrets a Project's teardown needs, kept by the operator in its own namespace.

Deleting a namespace deletes its Secrets at once, and its Projects' finalizers run after:
a Project on hosts or in a cluster of its own would then be torn down without the SSH key,
cloud credentials or kubeconfig that reach them. So each such Secret, once read and found
referable (`KubeClient.read_secret`), is copied to ``codeb-kept-<digest>`` in the operator's
namespace, where no tenant reads or writes. The copy is read only when the tenant's Secret
is gone *and* its namespace is being deleted: while the namespace lives, a deleted Secret
stays deleted (its Project says so). Copies go when their Project does (`forget`), and
`collect` removes those of Projects that vanished without their finalizer.
"""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Awaitable, Callable
from typing import Any

import structlog

from controller.clients.kube import MANAGED_BY, KubeClient
from controller.errors import CodebError
from controller.loop.naming import ProjectKey

log = structlog.get_logger("codeb.secrets")

KEPT_FOR = "codeb.dev/kept-for"  # label: the digest of the Project's namespace/name
PROJECT_ANNOTATION = "codeb.dev/project"  # namespace/name, for people and for `collect`
SOURCE_ANNOTATION = "codeb.dev/source"  # the Secret it copies, namespace/name


def _digest(*parts: str) -> str:
    return hashlib.sha256("/".join(parts).encode()).hexdigest()[:40]


class KeptSecrets:
    def __init__(self, kube: KubeClient, namespace: str, leaving: Callable[[str], Awaitable[bool]] | None = None
                 ) -> None:  # fmt: skip
        self._kube = kube
        self._namespace = namespace
        self._leaving = leaving or kube.namespace_terminating
        self._written: dict[str, str] = {}  # copy's name: digest of the data last written by this process

    def _path(self, name: str = "") -> str:
        return f"/api/v1/namespaces/{self._namespace}/secrets" + (f"/{name}" if name else "")

    async def read(self, namespace: str, name: str, project: str | None = None) -> dict[str, str] | None:
        """A `SecretReader`: the Secret, kept as it is read; its copy only once the namespace is going."""
        data = await self._kube.read_secret(namespace, name, project)
        if project is None:
            return data  # not read for a Project: nothing of a Project's teardown
        copy = f"codeb-kept-{_digest(namespace, project, name)}"
        if data is not None:
            try:
                await self._keep(copy, namespace, project, name, data)
            except CodebError as exc:  # the read stands; the copy is tried again next read
                log.warning("could not keep a copy of a Secret teardown needs", secret=f"{namespace}/{name}",
                            project=project, error=exc.message)  # fmt: skip
            return data
        if not await self._leaving(namespace):
            return None
        kept = await self._kube.request("GET", self._path(copy))
        return {k: base64.b64decode(v).decode() for k, v in ((kept or {}).get("data") or {}).items()} or None

    async def _keep(self, copy: str, namespace: str, project: str, name: str, data: dict[str, str]) -> None:
        digest = _digest(*(f"{k}={v}" for k, v in sorted(data.items())))
        if self._written.get(copy) == digest:
            return
        body = {
            "apiVersion": "v1", "kind": "Secret", "type": "Opaque",
            "metadata": {"name": copy, "labels": {MANAGED_BY: "codeb", KEPT_FOR: _digest(namespace, project)},
                         "annotations": {PROJECT_ANNOTATION: f"{namespace}/{project}",
                                         SOURCE_ANNOTATION: f"{namespace}/{name}"}},
            "data": {k: base64.b64encode(v.encode()).decode() for k, v in data.items()},
        }  # fmt: skip
        await self._kube.request("PATCH", self._path(copy), body, content_type="application/apply-patch+yaml",
                                 fieldManager="codeb-kept", force="true")  # fmt: skip
        self._written[copy] = digest

    async def forget(self, key: ProjectKey) -> int:
        """Remove the copies kept for this Project (its teardown is done)."""
        listed = await self._kube.request("GET", self._path(), labelSelector=f"{KEPT_FOR}={_digest(*_id(key))}")
        return await self._remove(_items(listed))

    async def collect(self) -> int:
        """Remove the copies of Projects that no longer exist (a finalizer removed by hand, say)."""
        listed = await self._kube.request("GET", self._path(), labelSelector=KEPT_FOR)
        alive = {f"{namespace}/{name}" for _, namespace, name in await self._kube.projects_listed()}
        gone = [i for i in _items(listed) if i["metadata"].get("annotations", {}).get(PROJECT_ANNOTATION) not in alive]
        return await self._remove(gone)

    async def _remove(self, items: list[dict[str, Any]]) -> int:
        for item in items:
            name = item["metadata"]["name"]
            await self._kube.request("DELETE", self._path(name))
            self._written.pop(name, None)
        return len(items)


def _id(key: ProjectKey) -> tuple[str, str]:
    return key.namespace, key.name


def _items(listed: dict[str, Any] | None) -> list[dict[str, Any]]:
    return list((listed or {}).get("items") or [])
