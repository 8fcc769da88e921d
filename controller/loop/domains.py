"""Which domains a Project may route, decided purely: overlaps between Projects and public suffixes.

A route matches by host, and Caddy's ``*.example.com`` matches every name one label
below ``example.com``. So two Projects overlap not only on the same name but also when
one holds ``*.apps.example.com`` and the other ``shop.apps.example.com``: whichever
route came first would receive the other's decrypted requests. The domain ledger
(`controller.claims.store`) refuses such a pair both ways, whoever came first.

A wildcard over a public suffix (``*.co.uk``, ``*.github.io``) or a public suffix
itself (``com``) is nobody's to route. The suffixes come from the Public Suffix List as
Debian's ``publicsuffix`` package installs it; where the file is missing, a short list
of the most common multi-label suffixes stands in (and any single label is one).
"""

from __future__ import annotations

import functools
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

PUBLIC_SUFFIX_LIST = Path("/usr/share/publicsuffix/public_suffix_list.dat")
# Used only where the list is not installed: not complete, and said so in docs/security.md.
_FALLBACK_SUFFIXES = "co.uk org.uk ac.uk gov.uk co.jp ne.jp or.jp co.kr or.kr com.au net.au org.au com.br com.cn"


@dataclass(frozen=True)
class PublicSuffixes:
    """The Public Suffix List's rules: plain names, wildcards (``*.ck``) and exceptions (``!www.ck``)."""

    names: frozenset[str]
    wildcards: frozenset[str]  # the parent of each ``*.`` rule
    exceptions: frozenset[str]

    @classmethod
    def parse(cls, lines: Iterable[str]) -> PublicSuffixes:
        names, wildcards, exceptions = set(), set(), set()
        for raw in lines:
            rule = raw.strip().split(" ")[0].lower()
            if not rule or rule.startswith("//"):
                continue
            if rule.startswith("!"):
                exceptions.add(rule[1:])
            elif rule.startswith("*."):
                wildcards.add(rule[2:])
            else:
                names.add(rule)
        return cls(frozenset(names), frozenset(wildcards), frozenset(exceptions))

    def is_public(self, domain: str) -> bool:
        """Whether ``domain`` is itself a public suffix (nobody's to register, so nobody's to route)."""
        domain = domain.lower().rstrip(".")
        if "." not in domain or domain in self.names:
            return True
        parent = domain.split(".", 1)[1]
        return parent in self.wildcards and domain not in self.exceptions


@functools.cache
def public_suffixes() -> PublicSuffixes:
    try:
        return PublicSuffixes.parse(PUBLIC_SUFFIX_LIST.read_text(encoding="utf-8").splitlines())
    except OSError:
        return PublicSuffixes.parse(_FALLBACK_SUFFIXES.split())


def refusal(domain: str, suffixes: PublicSuffixes | None = None) -> str | None:
    """Why ``domain`` may not be routed by any Project, or None."""
    suffixes = suffixes or public_suffixes()
    base = domain.removeprefix("*.")
    # A wildcard over ``x`` is refused too when every name below ``x`` is a suffix (the list's ``*.x``).
    if suffixes.is_public(base) or (domain.startswith("*.") and base in suffixes.wildcards):
        what = f"a wildcard over the public suffix {base}" if domain.startswith("*.") else "a public suffix"
        return f"{domain} is {what}; name a domain you own below it"
    return None


def covers(wildcard: str, name: str) -> bool:
    """Whether the route ``wildcard`` (``*.x``) also matches ``name`` (one label below ``x``, as Caddy matches)."""
    if not wildcard.startswith("*.") or name.startswith("*."):
        return False
    label, _, parent = name.partition(".")
    return bool(label) and parent == wildcard[2:]


def wildcard_over(name: str) -> str | None:
    """The one wildcard that would cover an exact ``name`` (``shop.x.com`` -> ``*.x.com``), if any."""
    if name.startswith("*.") or name.count(".") < 2:
        return None
    return "*." + name.split(".", 1)[1]
