"""Where credentials live: only in Secrets, never in status, Events, logs or exceptions.

Drivers write a project's credentials into its connection Secret *before* they
create the account that uses them, so a crash between the two leaves a Secret
whose password the next pass will give to the account — never an account whose
password nobody knows.
"""

from __future__ import annotations

import base64
import functools
import secrets as _random
from typing import Protocol
from urllib.parse import quote, quote_plus

from controller.errors import PermanentError
from controller.loop.interface import DriverContext

# Label naming the Project a connection Secret belongs to (in the Project's namespace).
OWNER_LABEL = "codeb.dev/project"


class SecretStore(Protocol):
    """A Project's connection Secret (``ctx.allocations.connection_secret`` in its namespace).

    ``merge`` refuses a Secret of that name that is not this Project's (`not_owned`).
    """

    async def read(self, ctx: DriverContext) -> dict[str, str] | None: ...

    async def merge(self, ctx: DriverContext, data: dict[str, str]) -> None: ...


def not_owned(namespace: str, name: str) -> PermanentError:
    return PermanentError(
        f"Secret {namespace}/{name} exists but was not created by the operator for this Project; "
        "rename or delete it, or change spec.project.slug",
        reason="SecretNotOwned",
    )


class MemorySecrets:
    """A SecretStore in memory, for driver tests."""

    def __init__(self) -> None:
        self.data: dict[tuple[str, str], dict[str, str]] = {}
        self.owners: dict[tuple[str, str], str] = {}

    async def read(self, ctx: DriverContext) -> dict[str, str] | None:
        return self.stored(*_where(ctx))

    def stored(self, namespace: str, name: str) -> dict[str, str] | None:
        """What a test reads back: the Secret by namespace and name."""
        found = self.data.get((namespace, name))
        return dict(found) if found is not None else None

    async def merge(self, ctx: DriverContext, data: dict[str, str]) -> None:
        where = _where(ctx)
        if self.owners.setdefault(where, ctx.key.name) != ctx.key.name:
            raise not_owned(*where)
        self.data.setdefault(where, {}).update(data)


def _where(ctx: DriverContext) -> tuple[str, str]:
    return ctx.key.namespace, ctx.allocations.connection_secret or ""


def new_password() -> str:
    return _random.token_urlsafe(24)


async def ensure_password(store: SecretStore, ctx: DriverContext, key: str) -> str:
    """The password stored under ``key``, generating and storing one first if absent."""
    current = (await store.read(ctx)) or {}
    if current.get(key):
        return current[key]
    password = new_password()
    await store.merge(ctx, {key: password})
    return password


# Shorter values are too common to redact without mangling unrelated text.
REDACT_MIN_LENGTH = 6


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
