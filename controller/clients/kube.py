"""The Kubernetes API edge for objects the operator owns (claims, namespaces).

kopf talks to the API server for Projects themselves; this module covers the rest
with the official client. The client is blocking, so every call runs in a thread
pool; its ApiException is translated into our errors here and nowhere else.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import functools
import json
import os
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, TypeVar, cast

import kubernetes.client
import kubernetes.config
from kubernetes.client.exceptions import ApiException
from urllib3.exceptions import HTTPError

from controller.errors import PermanentError, RetryableError
from controller.loop.interface import DriverContext
from controller.loop.secrets import OWNER_LABEL, not_owned

T = TypeVar("T")
SERVICE_ACCOUNT_TOKEN = "kubernetes.io/service-account-token"
MANAGED_BY = "app.kubernetes.io/managed-by"
RECORD_LABEL = "codeb.dev/record"  # what one of the operator's own objects in its namespace records


class Conflict(Exception):
    """409: the name is taken, or the resourceVersion we wrote against is stale."""


class NotFound(Exception):
    """The object does not exist (any more)."""


@dataclass(frozen=True)
class StoredConfigMap:
    resource_version: str
    data: dict[str, str]


def api_client_from_environment(pool_size: int = 32, config_file: str | None = None) -> kubernetes.client.ApiClient:
    """In-cluster service account if there is one, else KUBECONFIG (read now, not at import)."""
    configuration = kubernetes.client.Configuration()
    try:
        if config_file is not None:
            raise kubernetes.config.ConfigException("explicit kubeconfig")
        kubernetes.config.load_incluster_config(client_configuration=configuration)  # type: ignore[no-untyped-call]
    except kubernetes.config.ConfigException:
        kubernetes.config.load_kube_config(  # type: ignore[no-untyped-call]
            config_file=config_file or os.environ.get("KUBECONFIG"), client_configuration=configuration
        )
    # One connection per worker thread, or urllib3 discards and reconnects under load.
    configuration.connection_pool_maxsize = pool_size
    return kubernetes.client.ApiClient(configuration)


def _translate(exc: ApiException, what: str) -> Exception:
    if exc.status == 409:
        return Conflict(what)
    if exc.status == 404:
        return NotFound(what)
    if exc.status in (429, 500, 502, 503, 504) or exc.status is None:
        return RetryableError(f"{what}: API server answered {exc.status} {exc.reason}", reason="APIUnavailable")
    return PermanentError(f"{what}: API server refused ({exc.status} {exc.reason})", reason="APIRefused")


class KubeClient:
    def __init__(
        self,
        api: kubernetes.client.ApiClient,
        executor: ThreadPoolExecutor,
        timeout: float = 30.0,
        cluster: str | None = None,
        deadline: float | None = None,
        max_bytes: int | None = None,
    ) -> None:
        """``cluster`` names a cluster other than the operator's own in every error message.

        A cluster a Project names is bounded further: ``deadline`` is the most one call may take in all
        (the per-read ``timeout`` never ends a server that drips a byte at a time), ``max_bytes`` the most
        of an answer read.
        """
        self._api = api
        self._cluster = cluster
        self._deadline, self._max_bytes = deadline, max_bytes
        self._core = kubernetes.client.CoreV1Api(api)
        self._custom = kubernetes.client.CustomObjectsApi(api)
        self._executor = executor
        self._timeout = timeout

    @property
    def executor(self) -> ThreadPoolExecutor:
        return self._executor

    def close(self) -> None:
        self._api.close()  # type: ignore[no-untyped-call]
        if self._cluster is not None:
            self._executor.shutdown(wait=False)  # another cluster's pool is its own (`TargetClusters`)

    async def _call(self, what: str, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """The one translation for this transport, with a timeout on every request."""
        kwargs.setdefault("_request_timeout", self._timeout)
        if self._cluster:
            what = f"{self._cluster}: {what}"
        loop = asyncio.get_running_loop()
        try:
            running = loop.run_in_executor(self._executor, functools.partial(fn, *args, **kwargs))
            return await (asyncio.wait_for(running, self._deadline) if self._deadline else running)
        except TimeoutError:
            raise RetryableError(f"{what}: no whole answer within {self._deadline:g} s", reason="APIUnavailable",
                                 delay=30) from None  # fmt: skip
        except ApiException as exc:
            raise _translate(exc, what) from exc
        except HTTPError:
            raise RetryableError(f"{what}: API server unreachable or slow", reason="APIUnavailable") from None

    async def request(
        self, method: str, path: str, body: Any = None, *, content_type: str = "application/json", **query: str
    ) -> dict[str, Any] | None:
        """Any API path, JSON in and out; None for 404 on a read.

        For the workload's objects (apps/v1, autoscaling/v2, policy/v1): one generic path
        instead of four typed clients whose models we would only turn back into dicts.
        Server-side apply sends ``application/apply-patch+yaml`` (JSON is YAML).
        """

        def send(_request_timeout: float) -> dict[str, Any] | None:
            # The client's REST layer encodes a body itself for a JSON content type (a string would be sent
            # as a JSON string); any other type (apply-patch+yaml) it sends as it is, so that one is encoded here.
            data = body if body is None or "json" in content_type else json.dumps(body)
            raw = self._send(method, path, data, content_type, "application/json", query, _request_timeout)
            return cast(dict[str, Any], json.loads(raw)) if raw else None

        try:
            return await self._call(f"{method} {path}", send)
        except NotFound:
            if method == "GET" or method == "DELETE":
                return None
            raise

    async def read_text(self, path: str, **query: str) -> str | None:
        """A GET whose answer is text, not JSON (a Pod's log); None for 404."""

        def send(_request_timeout: float) -> str:
            return self._send("GET", path, None, "application/json", "text/plain", query, _request_timeout).decode(
                errors="replace"
            )

        try:
            return await self._call(f"GET {path}", send)
        except NotFound:
            return None

    def _send(self, method: str, path: str, data: object, content_type: str, accept: str,
              query: dict[str, str], request_timeout: float) -> bytes:  # fmt: skip
        headers = {"Content-Type": content_type, "Accept": accept}
        prepared = self._api.param_serialize(method, path, query_params=list(query.items()), header_params=headers,
                                             body=data, auth_settings=["BearerToken"])  # fmt: skip
        response = self._api.call_api(*prepared, _request_timeout=request_timeout)
        bounded = self._max_bytes is not None  # a cluster a Project names
        answer = self._read_bounded(response.response) if bounded else self._read_all(response)
        if response.status >= 400:
            raise ApiException(status=response.status, reason=response.reason)
        return answer

    @staticmethod
    def _read_all(response: Any) -> bytes:
        return bytes(response.read() or b"")

    def _read_bounded(self, raw: Any) -> bytes:
        """An answer of a cluster a Project names: at most ``max_bytes``, and within ``deadline`` by the clock.

        One read at a time (``read1``: what has arrived), so a server that drips a byte now and then is cut at
        the deadline here, in this thread, and the thread is free again; a per-read timeout never ends it.
        """
        assert self._max_bytes is not None
        ends = time.monotonic() + (self._deadline or self._timeout)
        chunks, size = [], 0
        while chunk := raw.read1(65536):
            chunks.append(chunk)
            size += len(chunk)
            if size > self._max_bytes or time.monotonic() > ends:
                raw.close()  # the rest unread: this connection is not reused
                # The same words as the deadline on the whole call, whichever of the two ends it first.
                late = f"no whole answer within {self._deadline or self._timeout:g} s"
                why = f"an answer larger than {self._max_bytes} bytes" if size > self._max_bytes else late
                raise ApiException(status=502 if size > self._max_bytes else 504, reason=why)
        raw.release_conn()
        return b"".join(chunks)

    async def namespace_labels(self, name: str) -> dict[str, str] | None:
        """A namespace's labels, or None when it does not exist."""
        found = await self.request("GET", f"/api/v1/namespaces/{name}")
        return None if found is None else dict((found.get("metadata") or {}).get("labels") or {})

    async def namespace_terminating(self, name: str) -> bool:
        """Whether the namespace is being deleted (or is gone): what is in it is going too."""
        found = await self.request("GET", f"/api/v1/namespaces/{name}")
        return found is None or bool((found.get("metadata") or {}).get("deletionTimestamp"))

    async def ensure_namespace(self, name: str) -> None:
        """Create the namespace if it is missing; an operator allowed to read but not create it still starts."""
        # Through `request`, like every call that may reach a cluster a Project names: its answer is bounded.
        if await self.request("GET", f"/api/v1/namespaces/{name}") is not None:
            return
        body = {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}}
        with contextlib.suppress(Conflict):
            await self.request("POST", "/api/v1/namespaces", body)

    async def read_project(self, namespace: str, name: str) -> dict[str, Any] | None:
        try:
            response = await self._call(
                f"project {namespace}/{name}", self._custom.get_namespaced_custom_object,
                "codeb.dev", "v1alpha1", namespace, "projects", name, _preload_content=False,
            )  # fmt: skip
        except NotFound:
            return None
        return cast(dict[str, Any], json.loads(cast(Any, response).data))

    async def patch_project_status(self, namespace: str, name: str, changes: dict[str, Any]) -> None:
        """A merge patch of status (the same shape kopf sends): only the keys that changed."""
        with contextlib.suppress(NotFound):  # deleted meanwhile: nothing to report on
            await self._call(
                f"project {namespace}/{name}", self._custom.patch_namespaced_custom_object_status,
                "codeb.dev", "v1alpha1", namespace, "projects", name, {"status": changes}, _preload_content=False,
            )  # fmt: skip

    async def patch_project(self, namespace: str, name: str, patch: dict[str, Any]) -> None:
        """A merge patch of the Project (a resourceVersion in it makes it conditional: Conflict when stale)."""
        await self._call(
            f"project {namespace}/{name}", self._custom.patch_namespaced_custom_object,
            "codeb.dev", "v1alpha1", namespace, "projects", name, patch, field_manager="codeb-push",
            _preload_content=False,
        )  # fmt: skip

    async def read_config_map(self, namespace: str, name: str) -> StoredConfigMap | None:
        try:
            # Raw JSON: the client's model deserialisation costs more than the request itself.
            response = await self._call(
                f"configmap {namespace}/{name}", self._core.read_namespaced_config_map, name, namespace,
                _preload_content=False,
            )  # fmt: skip
        except NotFound:
            return None
        return _stored_config_map(response)

    async def project_uids(self) -> set[str]:
        """The uid of every Project in the cluster."""
        return {uid for uid, _, _ in await self.projects_listed()}

    async def projects_listed(self) -> set[tuple[str, str, str]]:
        """(uid, namespace, name) of every Project in the cluster (a page at a time: a fleet's list is large)."""
        found: set[tuple[str, str, str]] = set()
        more: dict[str, str] = {}
        while True:
            page: Any = await self._call(
                "projects", self._custom.list_cluster_custom_object, "codeb.dev", "v1alpha1", "projects",
                limit=500, _preload_content=False, **more,
            )  # fmt: skip
            listed = json.loads(page.data)
            found.update((m["uid"], m["namespace"], m["name"]) for m in (i["metadata"] for i in listed["items"]))
            if not listed["metadata"].get("continue"):
                return found
            more = {"_continue": listed["metadata"]["continue"]}

    async def list_config_maps(self, namespace: str, label: str) -> dict[str, tuple[str, StoredConfigMap]]:
        """Every ConfigMap in ``namespace`` with ``label``: name -> (the label's value, what it holds)."""
        response = await self._call(
            f"configmaps {namespace} -l {label}", self._core.list_namespaced_config_map, namespace,
            label_selector=label, _preload_content=False,
        )  # fmt: skip
        items = json.loads(response.data)["items"]  # type: ignore[attr-defined]  # raw: _preload_content
        return {
            item["metadata"]["name"]: (item["metadata"]["labels"][label], _stored_config_map_item(item))
            for item in items
        }

    async def write_config_map(
        self, namespace: str, name: str, data: dict[str, str], labels: dict[str, str], resource_version: str | None
    ) -> str:
        """Create (no version) or replace (at that version); Conflict if someone wrote first. The new version."""
        body = {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {"name": name, "labels": labels, "resourceVersion": resource_version},
            "data": data,
        }
        what = f"configmap {namespace}/{name}"
        if resource_version is None:
            response = await self._call(
                what, self._core.create_namespaced_config_map, namespace, body, _preload_content=False
            )
        else:
            response = await self._call(
                what, self._core.replace_namespaced_config_map, name, namespace, body, _preload_content=False
            )
        return _stored_config_map(response).resource_version

    async def read_platform(self, name: str) -> dict[str, Any] | None:
        try:
            found = await self._call(
                f"platform {name}", self._custom.get_cluster_custom_object, "codeb.dev", "v1alpha1", "platforms", name
            )
        except NotFound:
            return None
        return cast(dict[str, Any], found)

    async def read_secret(self, namespace: str, name: str, project: str | None = None) -> dict[str, str] | None:
        """A Secret's data; ``project`` names the Project that references it, which it must be allowed to."""
        found = await self._read_secret(namespace, name)
        if found is None:
            return None
        if project is not None:
            _check_referable(found, namespace, name, project)
        return _decoded(found)

    async def _read_secret(self, namespace: str, name: str) -> dict[str, Any] | None:
        """The Secret as the API server stores it (base64 data), None when absent; bounded on another cluster."""
        return await self.request("GET", f"/api/v1/namespaces/{namespace}/secrets/{name}")

    async def merge_secret(self, namespace: str, name: str, data: dict[str, str], owner: str) -> None:
        """Set these keys in the Secret ``owner`` owns, creating it if needed; other keys are kept.

        A Secret of that name that another Project, or a person, made is never taken over.
        """
        existing = await self._read_secret(namespace, name)
        labels = {MANAGED_BY: "codeb", OWNER_LABEL: owner}
        what = f"secret {namespace}/{name}"
        if existing is None:
            body = {"apiVersion": "v1", "kind": "Secret", "type": "Opaque",
                    "metadata": {"name": name, "labels": labels}, "stringData": data}  # fmt: skip
            await self._call(what, self._core.create_namespaced_secret, namespace, body)
            return
        if _labels(existing).get(OWNER_LABEL) != owner:
            raise not_owned(namespace, name)
        # Guarded by the version we checked: an owner swapped in between makes this fail, not overwrite.
        patch = {"metadata": {"resourceVersion": existing["metadata"]["resourceVersion"]}, "stringData": data}
        try:
            await self._call(what, self._core.patch_namespaced_secret, name, namespace, patch)
        except Conflict:
            raise RetryableError(f"{what} changed while being updated", reason="APIConflict", delay=1) from None

    async def create_secret(self, namespace: str, name: str, data: dict[str, str], record: str) -> bool:
        """Make one of the operator's own Secrets unless one of that name exists (then False): of two that race,
        one makes it. It names no Project as its owner, so no Project may reference it (`_check_referable`)."""
        labels = {MANAGED_BY: "codeb", RECORD_LABEL: record}
        body = {"apiVersion": "v1", "kind": "Secret", "type": "Opaque",
                "metadata": {"name": name, "labels": labels}, "stringData": data}  # fmt: skip
        try:
            await self._call(f"secret {namespace}/{name}", self._core.create_namespaced_secret, namespace, body)
        except Conflict:
            return False
        return True

    async def delete_secret(self, namespace: str, name: str, owner: str) -> bool:
        """Delete the Secret if ``owner`` owns it; False when it is absent or someone else's."""
        existing = await self._read_secret(namespace, name)
        if existing is None or _labels(existing).get(OWNER_LABEL) != owner:
            return False
        options = {"preconditions": {"uid": existing["metadata"]["uid"]}}
        with contextlib.suppress(NotFound):  # already gone
            await self._call(f"secret {namespace}/{name}", self._core.delete_namespaced_secret, name, namespace,
                             body=options)  # fmt: skip
        return True


class KubeSecrets:
    """The SecretStore on the API server: one connection Secret per Project."""

    def __init__(self, kube: KubeClient) -> None:
        self._kube = kube

    async def read(self, ctx: DriverContext) -> dict[str, str] | None:
        return await self._kube.read_secret(ctx.key.namespace, ctx.allocations.connection_secret or "")

    async def merge(self, ctx: DriverContext, data: dict[str, str]) -> None:
        await self._kube.merge_secret(ctx.key.namespace, ctx.allocations.connection_secret or "", data, ctx.key.name)


def _labels(obj: dict[str, Any]) -> dict[str, str]:
    return dict((obj.get("metadata") or {}).get("labels") or {})


def _check_referable(secret: dict[str, Any], namespace: str, name: str, project: str) -> None:
    """A Project reads its own Secrets and its author's: never a ServiceAccount's token (which its author may
    not be allowed to read), nor a Secret the operator manages for another Project (its credentials)."""
    labels = _labels(secret)
    why = None
    if secret.get("type") == SERVICE_ACCOUNT_TOKEN:
        why = "it holds a ServiceAccount's token"
    elif labels.get(MANAGED_BY) == "codeb" and labels.get(OWNER_LABEL) != project:
        why = f"the operator keeps it for Project {labels.get(OWNER_LABEL) or 'another'}"
    if why is not None:
        raise PermanentError(f"Secret {namespace}/{name} may not be referenced by Project {project}: {why}; "
                             "reference a Secret of your own", reason="SecretNotAllowed")  # fmt: skip


def _decoded(secret: dict[str, Any]) -> dict[str, str]:
    return {k: base64.b64decode(v).decode() for k, v in (secret.get("data") or {}).items()}


def _stored_config_map(response: Any) -> StoredConfigMap:
    return _stored_config_map_item(json.loads(response.data))


def _stored_config_map_item(raw: dict[str, Any]) -> StoredConfigMap:
    return StoredConfigMap(raw["metadata"]["resourceVersion"], dict(raw.get("data") or {}))
