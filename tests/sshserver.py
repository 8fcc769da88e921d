"""A real SSH server on loopback or another local address (asyncssh's), for tests of the SSH transport
that need no booted host."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

import asyncssh


class _AnyoneIn(asyncssh.SSHServer):
    def begin_auth(self, username: str) -> bool:
        return False  # no authentication: the test is about the server's key, not the client's


Answer = Callable[[asyncssh.SSHServerProcess[str]], None]


def _done(process: asyncssh.SSHServerProcess[str]) -> None:
    process.stdout.write("done\n")
    process.exit(0)


@asynccontextmanager
async def ssh_server(
    port: int,
    host_key: asyncssh.SSHKey,
    said: list[str],
    answer: Callable[[asyncssh.SSHServerProcess[str]], None] = _done,
    address: str = "127.0.0.1",
) -> AsyncIterator[None]:
    """Runs until the block ends; every command it is sent goes into ``said``, and ``answer`` replies."""

    def run(process: asyncssh.SSHServerProcess[str]) -> None:
        said.append(str(process.command))
        answer(process)

    server = await asyncssh.create_server(_AnyoneIn, address, port, server_host_keys=[host_key],
                                          process_factory=run)  # fmt: skip
    try:
        yield
    finally:
        server.close()
        await server.wait_closed()
