"""Push webhooks from Git hosts: a push to a Project's ``source.git`` ref sets its revision to the commit.

GitHub and GitLab post a push to ``POST /push/<namespace>/<name>`` on the operator's inbound listener
(`controller.operator.inbound`). The Project names the Secret shared with its webhook
(``source.git.webhookSecretRef``, key ``secret``): GitHub signs each delivery's body with it
(``X-Hub-Signature-256``, HMAC-SHA256), GitLab sends it as its token (``X-Gitlab-Token``); both are
compared in constant time, and anything else is refused before the body is read as JSON.

A push to the Project's ref becomes one merge patch of ``spec.project.revision`` (the build and the
rollout follow from it, as from any change), conditional on the Project's resourceVersion, with the
delivery's id kept in an annotation beside it: a replayed delivery is refused, and so is a GitHub
delivery older than `FRESH_SECONDS` (its signed ``repository.pushed_at``), so a captured old push
cannot set an old revision again. Each outcome is counted (``codeb_push_deliveries_total``).
Whoever reaches the port may post anything: bodies are capped by the listener, at most `IN_FLIGHT`
deliveries are looked at at once, and what is answered never says whether a Project exists.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import re
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

import structlog
from aiohttp import web
from prometheus_client import Counter

from controller.clients.kube import Conflict
from controller.errors import CodebError
from schemas.base import DNS_LABEL

log = structlog.get_logger("codeb.pushes")

DELIVERIES_ANNOTATION = "codeb.dev/push-deliveries"
KEPT_DELIVERIES = 50  # ids of recent deliveries kept on the Project: a replay of any of them is refused
FRESH_SECONDS = 600  # a GitHub push older than this (by its signed pushed_at) is refused
IN_FLIGHT = 8
NAME = re.compile(DNS_LABEL)
OBJECT_NAME = re.compile(r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$")
COMMIT = re.compile(r"^[0-9a-f]{40}$")
DELIVERY = re.compile(r"^[A-Za-z0-9-]{8,64}$")
NOT_HERE = "no push webhook here\n"  # one answer whether or not the Project, its git source or its Secret exist


class PushTarget(Protocol):
    async def read_project(self, namespace: str, name: str) -> dict[str, Any] | None: ...

    async def read_secret(self, namespace: str, name: str, project: str | None = None) -> dict[str, str] | None: ...

    async def patch_project(self, namespace: str, name: str, patch: dict[str, Any]) -> None: ...


@dataclass(frozen=True)
class Push:
    delivery: str
    ref: str
    commit: str
    pushed_at: float | None  # GitHub's repository.pushed_at (signed with the body); GitLab sends none


def signed_by(headers: Mapping[str, str], body: bytes, secret: str) -> str | None:
    """Which host sent it ("github", "gitlab") when it proves it knows ``secret``; None: forged."""
    signature = headers.get("X-Hub-Signature-256")
    if signature is not None:
        expected = "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()
        return "github" if hmac.compare_digest(signature.encode(), expected.encode()) else None
    token = headers.get("X-Gitlab-Token")
    if token is not None:
        return "gitlab" if hmac.compare_digest(token.encode(), secret.encode()) else None
    return None


def read_push(host: str, headers: Mapping[str, str], payload: object) -> Push | str:
    """The push a delivery carries, or why it carries none the operator acts on."""
    event = headers.get("X-GitHub-Event" if host == "github" else "X-Gitlab-Event", "")
    if event not in ("push", "Push Hook", "Tag Push Hook"):
        return f"not a push event ({event[:40] or 'none'})"
    delivery = headers.get("X-GitHub-Delivery") or headers.get("X-Gitlab-Event-UUID") or ""
    if not DELIVERY.match(delivery) or not isinstance(payload, dict):
        return "no delivery id, or no JSON object"
    ref, commit = payload.get("ref"), payload.get("checkout_sha") or payload.get("after")
    if not isinstance(ref, str) or not isinstance(commit, str) or not COMMIT.match(commit) or commit == "0" * 40:
        return "no pushed commit (a deleted branch?)"
    repository = payload.get("repository")
    pushed_at = repository.get("pushed_at") if isinstance(repository, dict) else None
    return Push(delivery, ref, commit, float(pushed_at) if isinstance(pushed_at, int | float) else None)


class Pushes:
    """The ``/push/{namespace}/{name}`` route of the inbound listener."""

    def __init__(self, kube: PushTarget, counted: Counter | None = None,
                 clock: Callable[[], float] = time.time) -> None:  # fmt: skip
        self._kube, self._counted, self._clock = kube, counted, clock
        self._in_flight = asyncio.Semaphore(IN_FLIGHT)

    async def handle(self, request: web.Request) -> web.Response:
        if self._in_flight.locked():
            return self._answer("busy", 429, "too many deliveries at once; deliver again\n")
        async with self._in_flight:
            return await self._handle(request)

    async def _handle(self, request: web.Request) -> web.Response:
        namespace, name = request.match_info["namespace"], request.match_info["name"]
        if not NAME.match(namespace) or not OBJECT_NAME.match(name) or len(name) > 253:
            return web.Response(status=404, text=NOT_HERE)
        body = await request.read()
        try:
            project = await self._kube.read_project(namespace, name)
            git = _git(project)
            ref_name = git.get("webhookSecretRef") if git else None
            ref_name = ref_name if isinstance(ref_name, str) and NAME.match(ref_name) else None
            secret = (await self._kube.read_secret(namespace, ref_name, name) or {}) if ref_name else {}
        except CodebError as exc:
            log.warning("push not read", namespace=namespace, project=name, reason=exc.message)
            return web.Response(status=404 if exc.reason == "SecretNotAllowed" else 503, text=NOT_HERE)
        if project is None or git is None or not secret.get("secret"):
            return web.Response(status=404, text=NOT_HERE)
        host = signed_by(request.headers, body, secret["secret"])
        if host is None:
            return self._answer("forged", 401, "not signed with the Project's webhook secret\n", namespace, name)
        try:
            payload = json.loads(body)
        except ValueError:
            return self._answer("ignored", 400, "the body is not JSON\n", namespace, name)
        push = read_push(host, request.headers, payload)
        if isinstance(push, str):
            return self._answer("ignored", 202, push + "\n", namespace, name)
        return await self._take(namespace, name, project, str(git.get("ref") or "main"), push)

    async def _take(self, namespace: str, name: str, project: dict[str, Any], ref: str, push: Push) -> web.Response:
        if push.ref not in (f"refs/heads/{ref}", f"refs/tags/{ref}"):
            return self._answer("ignored", 202, f"a push to another ref than {ref}\n", namespace, name)
        if push.pushed_at is not None and abs(self._clock() - push.pushed_at) > FRESH_SECONDS:
            return self._answer("stale", 409, "pushed too long ago: a replayed delivery?\n", namespace, name)
        metadata = project.get("metadata") or {}
        seen = _seen(metadata)
        if push.delivery in seen:
            return self._answer("replayed", 409, "this delivery was taken already\n", namespace, name)
        kept = json.dumps([*seen, push.delivery][-KEPT_DELIVERIES:])
        patch = {"metadata": {"resourceVersion": metadata.get("resourceVersion"),
                              "annotations": {DELIVERIES_ANNOTATION: kept}},
                 "spec": {"project": {"revision": push.commit}}}  # fmt: skip
        try:
            await self._kube.patch_project(namespace, name, patch)
        except Conflict:
            return self._answer("conflict", 503, "the Project changed meanwhile; deliver again\n", namespace, name)
        except CodebError as exc:
            log.warning("push not taken", namespace=namespace, project=name, reason=exc.message)
            return self._answer("failed", 503, "the Project could not be changed; deliver again\n")
        log.info("push taken", namespace=namespace, project=name, revision=push.commit, delivery=push.delivery)
        return self._answer("accepted", 202, json.dumps({"revision": push.commit}) + "\n", namespace, name)

    def _answer(self, result: str, status: int, text: str, namespace: str = "", name: str = "") -> web.Response:
        if self._counted is not None:
            self._counted.labels(result).inc()
        if result in ("forged", "replayed", "stale"):
            log.warning("push refused", result=result, namespace=namespace, project=name)
        return web.Response(status=status, text=text)


def _git(project: dict[str, Any] | None) -> dict[str, Any] | None:
    source = (((project or {}).get("spec") or {}).get("project") or {}).get("source") or {}
    git = source.get("git")
    return git if isinstance(git, dict) else None


def _seen(metadata: dict[str, Any]) -> list[str]:
    try:
        seen = json.loads((metadata.get("annotations") or {}).get(DELIVERIES_ANNOTATION) or "[]")
    except ValueError:
        return []
    return [str(s) for s in seen][-KEPT_DELIVERIES:] if isinstance(seen, list) else []
