"""The registry's token issuer: ``GET /registry/token`` on the operator's inbound listener.

A Platform's registry (``spec.registry``, distribution with ``auth.token``) sends every client here for
a token (`controller.specs.registry` says what is granted and why), signed with the issuer's key
(`controller.clients.registry_issuer`: one Secret in the operator's own namespace).

Whoever reaches the listener may ask anything: at most `IN_FLIGHT` requests are looked at at once, the
credential is compared in constant time, and every refusal is one answer, whether the Project does not
exist, the password is wrong, or the Project's Platform has no registry of that service or does not allow
the Project's namespace. What a valid credential gets is never more than its own repository; a scope
naming another is left out of the token, which the registry then refuses. No credential or token is
logged.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hmac
import uuid
from datetime import UTC, datetime
from typing import Any, Protocol

import structlog
from aiohttp import web
from pydantic import ValidationError

from controller.clients.registry_issuer import RegistryIssuer
from controller.errors import CodebError
from controller.specs import registry
from schemas.platform import PlatformSpec

log = structlog.get_logger("codeb.registry")

IN_FLIGHT = 8
HEADER_BYTES = 1024
REFUSED = "a Project's registry credential is needed\n"


class TokenSource(Protocol):
    async def read_project(self, namespace: str, name: str) -> dict[str, Any] | None: ...

    async def read_platform(self, name: str) -> dict[str, Any] | None: ...

    async def namespace_labels(self, name: str) -> dict[str, str] | None: ...


def basic_credentials(header: str) -> tuple[str, str] | None:
    """(user, password) of an ``Authorization: Basic …`` header; None for anything else."""
    scheme, _, encoded = header.partition(" ")
    if scheme.lower() != "basic" or len(header) > HEADER_BYTES:
        return None
    try:
        user, colon, password = base64.b64decode(encoded.strip(), validate=True).decode().partition(":")
    except (binascii.Error, UnicodeDecodeError):
        return None
    return (user, password) if colon else None


class RegistryTokens:
    def __init__(self, kube: TokenSource, issuer: RegistryIssuer) -> None:
        self._kube, self.issuer = kube, issuer
        self._in_flight = asyncio.Semaphore(IN_FLIGHT)

    async def handle(self, request: web.Request) -> web.Response:
        async with self._in_flight:
            try:
                return await self._answer(request)
            except CodebError as exc:
                log.warning("registry token not issued", reason=exc.message)
                return web.Response(status=503, text="the issuer cannot answer now; try again\n")

    async def _answer(self, request: web.Request) -> web.Response:
        refused = web.Response(status=401, text=REFUSED, headers={"WWW-Authenticate": 'Basic realm="codeb"'})
        given = basic_credentials(request.headers.get("Authorization", ""))
        project = registry.project_of(given[0]) if given else None
        if given is None or project is None:
            return refused
        service = request.query.get("service", "")
        raw = await self._kube.read_project(*project)
        uid = (raw or {}).get("metadata", {}).get("uid")
        if not uid or not hmac.compare_digest(given[1].encode(), (await self.issuer.password(*project, uid)).encode()):
            return refused
        if service != await self._platform_service(project[0], raw or {}):
            return refused
        access = registry.granted(registry.requested(request.query.getall("scope", [])), *project)
        now = datetime.now(UTC)
        issuer = await self.issuer.data()
        claimed = registry.claims(service, given[0], access, now, uuid.uuid4().hex)
        token = registry.sign(claimed, issuer[registry.SIGNING_KEY], issuer[registry.CERTIFICATE])
        log.info("registry token issued", namespace=project[0], project=project[1],
                 access=[f"{a.name}:{','.join(a.actions)}" for a in access])  # fmt: skip
        return web.json_response({"token": token, "access_token": token, "expires_in": registry.TOKEN_SECONDS,
                                  "issued_at": now.isoformat()})  # fmt: skip

    async def _platform_service(self, namespace: str, raw: dict[str, Any]) -> str | None:
        """The service of the registry of the Project's Platform, if that Platform allows its namespace."""
        name = ((raw.get("spec") or {}).get("servers") or {}).get("platform")
        body = await self._kube.read_platform(name) if isinstance(name, str) and name else None
        try:
            platform = PlatformSpec.model_validate((body or {}).get("spec") or {})
        except ValidationError:
            return None  # the Platform's own status says why
        allowed = platform.namespaces
        if platform.registry is None or allowed is None:
            return None
        selector = allowed.selector
        labels = await self._kube.namespace_labels(namespace) if selector and selector.match_labels else None
        return platform.registry.service if allowed.allows(namespace, labels) else None
