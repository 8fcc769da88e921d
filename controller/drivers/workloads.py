"""What every workload driver shares: the credentials it hands the application, redaction, the health probe.

The local and quadlet runtimes both give the application the Project's connection
Secret and ``secretRefs`` as environment, both compare a digest of those credentials
with what is running (a rotation is drift), both must keep credentials out of every
message, and both probe ``monitoring.healthPath`` over real HTTP.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Protocol

import httpx

from controller.clients.http import read_bounded
from controller.errors import RetryableError
from controller.jobs.hookruns import hook_run
from controller.loop.naming import ProjectKey
from controller.loop.planner import State
from controller.loop.secrets import REDACT_MIN_LENGTH, clip, redact
from controller.specs.builds import credential_files
from schemas.project import App, GitSource, HookRun


class SecretReader(Protocol):
    """Reads a Secret a Project references; ``project`` is checked to be allowed it (`KubeClient.read_secret`)."""

    async def __call__(self, namespace: str, name: str, project: str | None = None) -> dict[str, str] | None: ...


@dataclass(frozen=True)
class Credentials:
    values: dict[str, str]
    digest: str  # what a rotation changes
    secret_values: frozenset[str]

    def redact(self, text: str, cut: bool = False) -> str:
        return redact(text, self.secret_values, cut)


async def read_git_credentials(read_secret: SecretReader, key: ProjectKey, git: GitSource) -> dict[str, str]:
    """The files a build's git reads a private repository with (`credential_files`; none without
    ``source.git.credentialsSecretRef``), from the Secret the Project names."""
    name = git.credentials_secret_ref
    if name is None:
        return {}
    return credential_files(git, await read_secret(key.namespace, name, key.name), f"Secret {key.namespace}/{name}")


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


# Where an app from features.apps is installed: the application's own app-store endpoint.
APPS_PATH = "/api/apps/install"


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
