"""Addresses a Project may send the operator to: never its own machine, its link-local or metadata services.

A Project names hosts (``servers.hosts``, with ``ssh.port``) and clusters (a kubeconfig's
``server:``) that the operator then connects to from inside its own network. Aimed at
loopback, the operator's own processes answer (its metrics, a local database); aimed at a
link-local address, the cloud's metadata service (169.254.169.254, fd00:ec2::254) hands
out the machine's credentials; and the errors that come back land in the Project's status,
an oracle for what listens where. Names are resolved and every address they resolve to is
checked, so ``localhost`` or a DNS name pointing at 127.0.0.1 is refused too; the connection
then goes to the address checked, not to the name (`resolve_target`).

Private ranges (10/8, 192.168/16, …) stay allowed: that is where real hosts and clusters
live. Tests and ``codeb up`` run everything on loopback and set
``CODEB_ALLOW_INTERNAL_TARGETS=1``.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket

from controller.errors import PermanentError, RetryableError

# Seconds a name may take to resolve: a Project's DNS must not hold a pass.
RESOLVE_SECONDS = 5.0


def internal_reason(address: str) -> str | None:
    """Why an IP address is the operator's own or its platform's, or None for an ordinary one."""
    ip = ipaddress.ip_address(address.split("%", 1)[0])
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    if ip.is_loopback:
        return "a loopback address (the operator's own machine)"
    if ip.is_link_local or ip == ipaddress.ip_address("fd00:ec2::254"):
        return "a link-local address (where cloud metadata services answer)"
    if ip.is_unspecified or ip.is_multicast or ip.is_reserved:
        return "not a host's address"
    return None


async def resolve_target(host: str, field: str, allowed: bool) -> str:
    """The address to connect to for ``host`` (a name or an address, from ``field``): checked, and pinned.

    Refused when ``host`` is or resolves to an internal address. The caller connects to the
    address returned, never to the name again: a name resolved twice may answer differently
    the second time (DNS rebinding: a public address for the check, 127.0.0.1 for the
    connection). TLS and SSH still verify against the name (SNI and certificate, host key).
    Where internal targets are allowed there is nothing to check, and the name is returned.
    """
    if allowed:
        return host
    try:
        infos = await asyncio.wait_for(
            asyncio.get_running_loop().getaddrinfo(host, None, type=socket.SOCK_STREAM), RESOLVE_SECONDS
        )
    except (TimeoutError, OSError):
        infos = []
    addresses = [str(sockaddr[0]) for *_, sockaddr in infos]
    if not addresses:
        raise RetryableError(f"{field}: {host} does not resolve", reason="TargetUnresolvable", delay=30)
    for address in addresses:
        why = internal_reason(address)
        if why is not None:
            raise PermanentError(
                f"{field}: {host} is {why}, which a Project may not make the operator connect to; name the "
                "host's own address (an operator that runs everything on one machine sets "
                "CODEB_ALLOW_INTERNAL_TARGETS=1)",
                reason="TargetNotAllowed",
            )
    return addresses[0]
