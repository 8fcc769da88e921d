"""HTTP to endpoints a Project controls: every answer bounded in time and in bytes.

An application, its health endpoint or its app store is the tenant's: it may never answer,
drip a byte at a time or send gigabytes. `read_bounded` is the one way the operator reads
such an answer; `probe_http` is the health check built on it.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import httpx

from controller.loop.secrets import clip


@dataclass(frozen=True)
class Probe:
    """One health probe: healthy, why not in words, and whether the application answered at all."""

    healthy: bool
    detail: str | None = None
    # An HTTP status came back (or the process exited). False: refused or timed out, i.e. still starting.
    answered: bool = True
    status: int | None = None  # the HTTP status, when one came back
    seconds: float | None = None  # how long the request took (to its answer, or to the timeout)


def probe_sample(probes: Sequence[Probe]) -> dict[str, float | int | None]:
    """What the operator's metrics keep of one look at a colour (`Metrics.record_probe`): its HTTP status
    (a failing host's, where one fails) and its slowest probe."""
    failing = [p for p in probes if not p.healthy]
    status = next((p.status for p in (failing or probes) if p.status is not None), None)
    timed = [p.seconds for p in probes if p.seconds is not None]
    return {"httpStatus": status, "probeSeconds": max(timed) if timed else None}


async def probe_http(
    client: httpx.AsyncClient,
    address: str,
    port: int,
    path: str,
    secret_values: frozenset[str],
    timeout: float | None = None,
) -> Probe:
    """GET ``path`` (no redirects followed): healthy on 2xx, otherwise why not, in words.

    ``timeout`` overrides the client's own (the Project's healthCheck.timeoutSeconds) and bounds the
    whole probe, not each read: an application dripping a byte at a time is timed out too. Of the body,
    only the first `BODY_BYTES` are read (a 2xx: none).
    """
    target = f"GET {path} on {address}:{port}"
    started = time.monotonic()
    try:
        status, body = await read_bounded(client, "GET", f"http://{address}:{port}{path}", timeout,
                                          read_body=lambda code: not 200 <= code < 300)  # fmt: skip
    except httpx.TimeoutException:
        return Probe(False, f"{target} timed out", answered=False, seconds=time.monotonic() - started)
    except httpx.TransportError:
        return Probe(False, f"{target} was refused: nothing listens on the port", answered=False)
    took = time.monotonic() - started
    if 200 <= status < 300:
        return Probe(True, status=status, seconds=took)
    detail = f"{target} answered {status}: {clip(body.strip(), secret_values, 200)}"
    return Probe(False, detail, status=status, seconds=took)


# The most of a tenant's answer the operator reads: enough to say why, never enough to exhaust it.
BODY_BYTES = 64 * 1024


async def read_bounded(
    client: httpx.AsyncClient, method: str, url: str, timeout: float | None, read_body: Callable[[int], bool],
    json_body: object = None, headers: dict[str, str] | None = None, limit: int = BODY_BYTES, sni: str | None = None,
) -> tuple[int, str]:  # fmt: skip
    """One request to an endpoint a Project controls: its status, and at most ``limit`` bytes of its body
    (when ``read_body(status)``), all within ``timeout`` (the client's own when None). ``sni``: the name TLS
    sends and verifies when the URL names the address it was resolved to (`resolve_target`)."""
    total = timeout if timeout is not None else (client.timeout.read or 30.0)

    async def request() -> tuple[int, str]:
        # Raw bytes, asked for uncompressed: a compressed answer could be small on the wire and huge in memory.
        sent = {**(headers or {}), "Accept-Encoding": "identity"}
        extensions = {"sni_hostname": sni} if sni else None
        async with client.stream(method, url, json=json_body, timeout=total, headers=sent,
                                 extensions=extensions) as response:  # fmt: skip
            if not read_body(response.status_code):
                return response.status_code, ""
            chunks, size = [], 0
            async for chunk in response.aiter_raw():
                chunks.append(chunk)
                size += len(chunk)
                if size >= limit:
                    break
            return response.status_code, b"".join(chunks)[:limit].decode(errors="replace")

    try:
        return await asyncio.wait_for(request(), total)
    except TimeoutError:
        raise httpx.ReadTimeout(f"no whole answer within {total:g} s") from None
