"""A Project cannot aim the operator at its own machine or at cloud metadata (controller.clients.targets)."""

from __future__ import annotations

import pytest

from controller.clients.ssh import HostAccess, SshPool
from controller.clients.targets import internal_reason, resolve_target
from controller.errors import PermanentError


@pytest.mark.parametrize(
    "address",
    [
        "127.0.0.1",
        "127.3.4.5",
        "::1",
        "169.254.169.254",
        "fe80::1",
        "fd00:ec2::254",
        "::ffff:127.0.0.1",
        "0.0.0.0",
    ],
)
def test_internal_addresses_have_a_reason(address: str) -> None:
    assert internal_reason(address) is not None


@pytest.mark.parametrize("address", ["10.0.0.5", "192.168.1.20", "203.0.113.7", "2001:db8::1"])
def test_ordinary_addresses_do_not(address: str) -> None:
    assert internal_reason(address) is None


@pytest.mark.parametrize("host", ["localhost", "127.0.0.1", "169.254.169.254", "::1"])
async def test_names_and_addresses_are_checked_after_resolving(host: str) -> None:
    with pytest.raises(PermanentError, match="may not make the operator connect") as exc:
        await resolve_target(host, "spec.servers.hosts", allowed=False)
    assert exc.value.reason == "TargetNotAllowed"
    assert await resolve_target(host, "spec.servers.hosts", allowed=True) == host  # codeb up and the tests


async def test_a_name_is_pinned_to_the_address_that_was_checked() -> None:
    assert await resolve_target("192.0.2.44", "spec.servers.hosts", allowed=False) == "192.0.2.44"


async def test_ssh_refuses_before_it_connects() -> None:
    """The SSH oracle: a Project's host on the operator's loopback is refused, not probed."""
    pool = SshPool(connect_timeout=1)
    access = HostAccess("127.0.0.1", "root", 22, "not a key", "", "Secret t/k")
    with pytest.raises(PermanentError) as exc:
        await pool.run(access, "true")
    assert exc.value.reason == "TargetNotAllowed"
