"""What every workload driver shares: the credentials it hands the application, redaction, the health probe.

The local and quadlet runtimes both give the application the Project's connection
Secret and ``secretRefs`` as environment, both compare a digest of those credentials
with what is running (a rotation is drift), both must keep credentials out of every
message, and both probe ``monitoring.healthPath`` over real HTTP.
"""

from __future__ import annotations

import asyncio
import base64
import functools
import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Protocol
from urllib.parse import quote, quote_plus

import httpx

from controller.errors import RetryableError
from controller.loop.naming import ProjectKey
from controller.loop.planner import State
from schemas.project import App, HookRun


class SecretReader(Protocol):
    """Reads a Secret a Project references; ``project`` is checked to be allowed it (`KubeClient.read_secret`)."""

    async def __call__(self, namespace: str, name: str, project: str | None = None) -> dict[str, str] | None: ...


# Shorter values are too common to redact without mangling unrelated text.
REDACT_MIN_LENGTH = 6


@dataclass(frozen=True)
class Credentials:
    values: dict[str, str]
    digest: str  # what a rotation changes
    secret_values: frozenset[str]

    def redact(self, text: str, cut: bool = False) -> str:
        return redact(text, self.secret_values, cut)


async def read_credentials(read_secret: SecretReader, key: ProjectKey, wanted: State, missing_ok: bool) -> Credentials:
    """The connection Secret, then each of ``secretRefs`` in order (a later key wins).

    ``missing_ok`` is for observing: a Secret that vanished reads as a changed digest.
    Applying without a required Secret is refused with the field to fix.
    """
    merged: dict[str, str] = {}
    sources: list[tuple[str | None, bool]] = [(wanted.get("connectionSecret"), False)]
    sources += [(name, name in wanted.get("optionalSecretRefs", [])) for name in wanted.get("secretRefs", [])]
    for name, optional in sources:
        if not name:
            continue
        data = await read_secret(key.namespace, name, key.name)
        if data is None and not (optional or missing_ok or name == wanted.get("connectionSecret")):
            raise RetryableError(
                f"Secret {key.namespace}/{name} (spec.environment.secretRefs) does not exist; create it or mark it "
                "optional",
                reason="SecretMissing",
                delay=30,
            )
        merged.update(data or {})
    digest = hashlib.sha256(json.dumps(merged, sort_keys=True).encode()).hexdigest()[:32]
    return Credentials(merged, digest, frozenset(v for v in merged.values() if len(v) >= REDACT_MIN_LENGTH))


def secret_forms(value: str) -> set[str]:
    """How a secret can appear in text: as it is, URL-encoded (a URL's password) and base64 (a header, a dump)."""
    raw = value.encode()
    encoded = {base64.b64encode(raw).decode(), base64.urlsafe_b64encode(raw).decode()}
    return {value, quote(value, safe=""), quote_plus(value)} | encoded | {e.rstrip("=") for e in encoded}


@functools.lru_cache(maxsize=256)
def _all_forms(secret_values: frozenset[str]) -> tuple[str, ...]:
    """Every form of every secret, longest first; one Project's set is redacted in many texts (each log line)."""
    return tuple(sorted({form for value in secret_values for form in secret_forms(value)}, key=len, reverse=True))


def redact(text: str, secret_values: frozenset[str], cut: bool = False) -> str:
    """Every form of every secret replaced. ``cut``: the text is what a bounded read kept (its head or its
    tail lay beyond the read), so a part of a secret at either edge goes too."""
    forms = _all_forms(secret_values)
    for form in forms:
        text = text.replace(form, "***")
    if not cut:
        return text
    shortest = REDACT_MIN_LENGTH // 2
    for form in forms:
        head = next((n for n in range(len(form) - 1, shortest - 1, -1) if text.startswith(form[-n:])), 0)
        tail = next((n for n in range(len(form) - 1, shortest - 1, -1) if text.endswith(form[:n])), 0)
        text = ("***" if head else "") + text[head : len(text) - tail] + ("***" if tail else "")
    return text


def clip(text: str, secret_values: frozenset[str], limit: int, tail: bool = False) -> str:
    """Redacted first, then cut to ``limit`` characters: a cut never leaves part of a secret behind."""
    clean = redact(text, secret_values, cut=True)  # what is clipped comes from a bounded read
    return clean[-limit:] if tail else clean[:limit]


@dataclass(frozen=True)
class Probe:
    """One health probe: healthy, why not in words, and whether the application answered at all."""

    healthy: bool
    detail: str | None = None
    # An HTTP status came back (or the process exited). False: refused or timed out, i.e. still starting.
    answered: bool = True


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
    try:
        status, body = await read_bounded(client, "GET", f"http://{address}:{port}{path}", timeout,
                                          read_body=lambda code: not 200 <= code < 300)  # fmt: skip
    except httpx.TimeoutException:
        return Probe(False, f"{target} timed out", answered=False)
    except httpx.TransportError:
        return Probe(False, f"{target} was refused: nothing listens on the port", answered=False)
    if 200 <= status < 300:
        return Probe(True)
    return Probe(False, f"{target} answered {status}: {clip(body.strip(), secret_values, 200)}")


# The most of a tenant's answer the operator reads: enough to say why, never enough to exhaust it.
BODY_BYTES = 64 * 1024


async def read_bounded(
    client: httpx.AsyncClient, method: str, url: str, timeout: float | None, read_body: Callable[[int], bool],
    json_body: object = None,
) -> tuple[int, str]:  # fmt: skip
    """One request to an endpoint a Project controls: its status, and at most `BODY_BYTES` of its body
    (when ``read_body(status)``), all within ``timeout`` (the client's own when None)."""
    total = timeout if timeout is not None else (client.timeout.read or 30.0)

    async def request() -> tuple[int, str]:
        # Raw bytes, asked for uncompressed: a compressed answer could be small on the wire and huge in memory.
        headers = {"Accept-Encoding": "identity"}
        async with client.stream(method, url, json=json_body, timeout=total, headers=headers) as response:
            if not read_body(response.status_code):
                return response.status_code, ""
            chunks, size = [], 0
            async for chunk in response.aiter_raw():
                chunks.append(chunk)
                size += len(chunk)
                if size >= BODY_BYTES:
                    break
            return response.status_code, b"".join(chunks)[:BODY_BYTES].decode(errors="replace")

    try:
        return await asyncio.wait_for(request(), total)
    except TimeoutError:
        raise httpx.ReadTimeout(f"no whole answer within {total:g} s") from None


# Where an app from features.apps is installed: the application's own app-store endpoint.
APPS_PATH = "/api/apps/install"
OUTPUT_CHARS = 1500


def hook_run(name: str, ok: bool, output: str, secret_values: frozenset[str]) -> HookRun:
    """A hook's outcome with the tail of its output, credentials redacted."""
    tail = clip(output.strip(), secret_values, OUTPUT_CHARS, tail=True)
    return HookRun(name=name, result="Succeeded" if ok else "Failed", finished_at=datetime.now(UTC), message=tail)


async def install_app(
    client: httpx.AsyncClient, endpoint: str, app: App, secret_values: frozenset[str], timeout: float = 300
) -> HookRun:
    """POST the app to the new colour's ``/api/apps/install``; 2xx installed it (idempotent: the app's to ensure)."""
    name = f"app-{app.name}"
    body = {"name": app.name, "version": app.version, "settings": app.settings}
    try:
        status, text = await read_bounded(client, "POST", f"http://{endpoint}{APPS_PATH}", timeout,
                                          read_body=lambda _: True, json_body=body)  # fmt: skip
    except httpx.HTTPError as exc:
        return hook_run(name, False, f"POST {APPS_PATH} on {endpoint} failed: {type(exc).__name__}", secret_values)
    said = f"POST {APPS_PATH} on {endpoint} answered {status}: {clip(text, secret_values, 500)}"
    return hook_run(name, 200 <= status < 300, said, secret_values)
