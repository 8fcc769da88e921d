"""What one namespace may take of a Platform (`Platform.spec.quotas`), checked before anything is claimed.

Projects without a Platform are counted the same way against the operator's own limits
(``CODEB_QUOTA_PROJECTS``, ``CODEB_QUOTA_DOMAINS``): they too claim names, domains and ports.

The rule is pure (`refusal`): the namespace's Projects on the Platform, oldest first (by
creation, then name), are admitted while they fit; a newer one past the limit is refused
with ``QuotaExceeded`` and admitted once an older one goes. Order by creation, never by
who reconciled first, so two replicas, a restart or a burst always agree on who is in.
`NamespaceQuotas` reads the Projects from the API server (one list, briefly cached).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from controller.clients.kube import KubeClient
from controller.errors import RetryableError
from controller.loop import naming
from controller.loop.naming import ProjectKey
from schemas.platform import NamespaceQuotas

# A namespace's Projects are listed again after this long (or at once when the one asking is not in the list).
LIST_SECONDS = 10.0
PAGE = 500


@dataclass(frozen=True)
class Member:
    """A Project of the namespace on the Platform, as the quota counts it."""

    name: str
    uid: str
    created: str  # RFC 3339, as the API server writes it: sorts as time
    domains: int


def refusal(
    quotas: NamespaceQuotas, platform: str | None, namespace: str, uid: str, members: list[Member]
) -> str | None:
    """Why the Project ``uid`` is past a quota of ``platform`` (None: no Platform) in ``namespace``, if it is
    (pure)."""
    ordered = sorted(members, key=lambda m: (m.created, m.name))
    place = next((i for i, m in enumerate(ordered) if m.uid == uid), None)
    if place is None:
        return None  # not counted (yet): it is asked about again once the list shows it
    where, admin = ("without a Platform", "the operator's admin")
    if platform:
        where, admin = f"on Platform {platform}", "the Platform's admin"
    if quotas.projects is not None and place >= quotas.projects:
        return (f"namespace {namespace} may have {quotas.projects} Projects {where} "
                f"({_setting(platform, 'projects')}) and {ordered[place].name} is number {place + 1}; delete an "
                f"older one, or ask {admin} for more")  # fmt: skip
    used = sum(m.domains for m in ordered[: place + 1])
    if quotas.domains is not None and used > quotas.domains:
        return (f"namespace {namespace} may route {quotas.domains} domains {where} "
                f"({_setting(platform, 'domains')}); with {ordered[place].name}'s it would be {used}; route fewer, "
                f"or ask {admin} for more")  # fmt: skip
    return None


def _setting(platform: str | None, limit: str) -> str:
    """Where the limit is set: the Platform's spec, or the operator's environment."""
    return f"spec.quotas.{limit}" if platform else f"CODEB_QUOTA_{limit.upper()}"


class QuotaCheck:
    """`refusal` against the namespace's Projects as the API server lists them."""

    def __init__(self, kube: KubeClient) -> None:
        self._kube = kube
        self._listed: dict[tuple[str, str | None], tuple[float, list[Member]]] = {}

    async def check(self, quotas: NamespaceQuotas | None, platform: str | None, key: ProjectKey,
                    names_domain: bool = False) -> None:  # fmt: skip
        """Raises ``QuotaExceeded`` (retried: an older Project may go) when ``key`` is past a quota.
        ``names_domain``: the Platform gives a Project without domains one of its own, which counts."""
        if quotas is None or (quotas.projects is None and quotas.domains is None):
            return
        members = await self._members(platform, key, names_domain, fresh=False)
        if not any(m.uid == key.uid for m in members):
            members = await self._members(platform, key, names_domain, fresh=True)  # newer than the list
        why = refusal(quotas, platform, key.namespace, key.uid, members)
        if why is not None:
            raise RetryableError(why, reason="QuotaExceeded", delay=60)

    async def _members(self, platform: str | None, key: ProjectKey, names_domain: bool, fresh: bool) -> list[Member]:
        cached = self._listed.get((key.namespace, platform))
        if not fresh and cached is not None and time.monotonic() - cached[0] < LIST_SECONDS:
            return cached[1]
        members: list[Member] = []
        more: dict[str, str] = {}
        while True:
            page = await self._kube.request(
                "GET", f"/apis/codeb.dev/v1alpha1/namespaces/{key.namespace}/projects", limit=str(PAGE), **more
            )
            items: list[dict[str, Any]] = (page or {}).get("items") or []
            members += [member for item in items if (member := _member(item, platform, names_domain)) is not None]
            token = ((page or {}).get("metadata") or {}).get("continue")
            if not token:
                break
            more = {"continue": str(token)}
        self._listed[(key.namespace, platform)] = (time.monotonic(), members)
        return members


def _member(item: dict[str, Any], platform: str | None, names_domain: bool = False) -> Member | None:
    spec = item.get("spec") or {}
    if ((spec.get("servers") or {}).get("platform") or None) != platform:
        return None
    meta = item.get("metadata") or {}
    environment = spec.get("environment") or {}
    named = [str(d) for d in environment.get("domains") or []]
    routed = len(named) or (1 if names_domain else 0)
    # With redirectWww each www name is routed too (a derived name has one; a wildcard has none).
    wwws = (len(naming.www_redirects(named)) if named else routed) if environment.get("redirectWww") else 0
    domains = routed + wwws
    return Member(str(meta.get("name")), str(meta.get("uid")), str(meta.get("creationTimestamp")), domains)
