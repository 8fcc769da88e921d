"""What every workload driver shares: the credentials it hands the application, redaction, the health probe.

The local and quadlet runtimes both give the application the Project's connection
Secret and ``secretRefs`` as environment, both compare a digest of those credentials
with what is running (a rotation is drift), both must keep credentials out of every
message, and both probe ``monitoring.healthPath`` over real HTTP.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import httpx

from controller.errors import RetryableError
from controller.planner import State

SecretReader = Callable[[str, str], Awaitable[dict[str, str] | None]]
# Shorter values are too common to redact without mangling unrelated text.
REDACT_MIN_LENGTH = 6


@dataclass(frozen=True)
class Credentials:
    values: dict[str, str]
    digest: str  # what a rotation changes
    secret_values: frozenset[str]

    def redact(self, text: str) -> str:
        return redact(text, self.secret_values)


async def read_credentials(read_secret: SecretReader, namespace: str, wanted: State, missing_ok: bool) -> Credentials:
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
        data = await read_secret(namespace, name)
        if data is None and not (optional or missing_ok or name == wanted.get("connectionSecret")):
            raise RetryableError(
                f"Secret {namespace}/{name} (spec.environment.secretRefs) does not exist; create it or mark it "
                "optional",
                reason="SecretMissing",
                delay=30,
            )
        merged.update(data or {})
    digest = hashlib.sha256(json.dumps(merged, sort_keys=True).encode()).hexdigest()[:32]
    return Credentials(merged, digest, frozenset(v for v in merged.values() if len(v) >= REDACT_MIN_LENGTH))


def redact(text: str, secret_values: frozenset[str]) -> str:
    for value in secret_values:
        text = text.replace(value, "***")
    return text


async def probe_http(
    client: httpx.AsyncClient, address: str, port: int, path: str, secret_values: frozenset[str]
) -> tuple[bool, str | None]:
    """GET ``path`` (no redirects followed): healthy on 2xx, otherwise why not, in words."""
    target = f"GET {path} on {address}:{port}"
    try:
        response = await client.get(f"http://{address}:{port}{path}")
    except httpx.TimeoutException:
        return False, f"{target} timed out"
    except httpx.TransportError:
        return False, f"{target} was refused: nothing listens on the port"
    if response.is_success:
        return True, None
    body = redact(response.text[:200].strip(), secret_values)
    return False, f"{target} answered {response.status_code}: {body}"
