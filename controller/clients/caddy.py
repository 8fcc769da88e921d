"""Caddy's admin API: one client without keep-alive, a retry only where nothing was reached, one translation.

Every config change replaces Caddy's admin server and closes the old one's idle
connections (caddy.go, replaceLocalAdminServer), so a pooled connection can die under the
next request, and just after a change a connection can be refused for a moment. A
refused connection reached nothing, so it is the one failure tried again.
"""

from __future__ import annotations

import asyncio
from typing import Any

import httpx

from controller.errors import PermanentError, RetryableError

ADMIN_CONNECT_ATTEMPTS = 6
ADMIN_CONNECT_PAUSE_SECONDS = 0.1


def admin_client(timeout: float) -> httpx.AsyncClient:
    """A client for Caddy's admin API, without keep-alive (see the module's docstring)."""
    return httpx.AsyncClient(timeout=timeout, limits=httpx.Limits(max_keepalive_connections=0))


class CaddyAdmin:
    """Requests to one Caddy's admin API at ``admin_url``."""

    def __init__(self, admin_url: str, client: httpx.AsyncClient) -> None:
        # Caddy's admin API checks Origin/Host; a plain client with our base URL passes.
        self.url, self._client = admin_url.rstrip("/"), client

    async def request(self, method: str, path: str, body: Any = None) -> httpx.Response:
        """The answer, unless Caddy is unreachable or failing (retryable) or refused the body (permanent)."""
        try:
            response = await self._send(method, path, body)
        except httpx.TransportError:
            raise RetryableError(f"Caddy admin API at {self.url} is unreachable", reason="RouteUnavailable") from None
        if response.status_code >= 500 and "unknown object ID" not in response.text:
            raise RetryableError(_failed(response, method, path), reason="RouteUnavailable")
        if response.status_code == 400:
            raise PermanentError(f"Caddy refused the route: {response.text[:300]}", reason="RouteRejected")
        return response

    async def checked(self, method: str, path: str, body: Any) -> None:
        """A change that must succeed: any answer but 2xx is retryable."""
        response = await self.request(method, path, body)
        if response.status_code >= 300:
            raise RetryableError(_failed(response, method, path), reason="RouteUnavailable")

    async def _send(self, method: str, path: str, body: Any) -> httpx.Response:
        for _ in range(ADMIN_CONNECT_ATTEMPTS - 1):
            try:
                return await self._client.request(method, f"{self.url}{path}", json=body)
            except httpx.ConnectError:
                await asyncio.sleep(ADMIN_CONNECT_PAUSE_SECONDS)
        return await self._client.request(method, f"{self.url}{path}", json=body)


def _failed(response: httpx.Response, method: str, path: str) -> str:
    """What Caddy said, e.g. that a listener's address is in use: the one clue to why a change failed."""
    try:
        said = str(response.json().get("error", ""))
    except (ValueError, AttributeError):
        said = ""
    return f"Caddy answered {response.status_code} to {method} {path}" + (f": {said[:300]}" if said else "")
