"""SSH to a Project's hosts: the one place that connects, times out, pools and translates errors.

Every host driver (`controller.drivers.hosts`, `controller.drivers.quadlet`) talks to
hosts through `SshPool`: one connection per host and key, reused across reconciles,
opened again when it dropped. Failures become `controller.errors` types with a reason
a person can act on (``HostUnreachable``, ``SSHAuthFailed``, ``HostKeyMismatch``);
the private key never appears in one.
"""

from __future__ import annotations

import asyncio
import hashlib
import shlex
from dataclasses import dataclass, field
from typing import Protocol

import asyncssh

from controller.clients.targets import resolve_target
from controller.errors import RetryableError


class HostKeyRecord(Protocol):
    """Where host keys trusted on first use are kept (`controller.clients.hostkeys.HostKeys`)."""

    async def known(self, address: str, port: int) -> str | None: ...

    async def remember(self, address: str, port: int, key: str) -> str: ...


CONNECT_SECONDS = 10.0
COMMAND_SECONDS = 120.0


@dataclass(frozen=True)
class HostAccess:
    """How to log in to one host. The key is a secret: it is left out of repr and messages."""

    address: str
    user: str = "root"
    port: int = 22
    private_key: str = field(default="", repr=False)
    # OpenSSH known_hosts lines; empty: the host key is not verified (a fresh cloud host's is unknown).
    known_hosts: str = field(default="", repr=False)
    # Where the key came from, for messages: "Secret shop/deploy-key".
    key_source: str = "the SSH key"

    @property
    def target(self) -> str:
        return f"{self.user}@{self.address}:{self.port}"

    @property
    def pool_key(self) -> tuple[str, int, str, str]:
        digest = hashlib.sha256((self.private_key + "\0" + self.known_hosts).encode()).hexdigest()
        return self.address, self.port, self.user, digest


@dataclass(frozen=True)
class Login:
    """How to log in to a Project's hosts, read once per pass and used for each address."""

    user: str
    port: int
    private_key: str = field(repr=False)
    known_hosts: str = field(repr=False)
    key_source: str

    def at(self, address: str) -> HostAccess:
        return HostAccess(address, self.user, self.port, self.private_key, self.known_hosts, self.key_source)


@dataclass(frozen=True)
class Result:
    exit_status: int
    stdout: str
    stderr: str

    @property
    def ok(self) -> bool:
        return self.exit_status == 0


class SshPool:
    def __init__(self, connect_timeout: float = CONNECT_SECONDS, command_timeout: float = COMMAND_SECONDS,
                 allow_internal: bool = False, host_keys: HostKeyRecord | None = None) -> None:  # fmt: skip
        self._connect_timeout = connect_timeout
        # Keys of hosts given without knownHosts, trusted on first use; None: such hosts are not verified.
        self._host_keys = host_keys
        # Loopback and link-local hosts (`controller.clients.targets`): only where the operator runs everything itself.
        self._allow_internal = allow_internal
        self._command_timeout = command_timeout
        self._connections: dict[tuple[str, int, str, str], asyncssh.SSHClientConnection] = {}
        self._locks: dict[tuple[str, int, str, str], asyncio.Lock] = {}

    async def run(
        self, host: HostAccess, command: str, stdin: str | None = None, timeout: float | None = None
    ) -> Result:
        """Runs ``command`` (a shell line) on the host; a non-zero exit is returned, not raised.

        ``timeout`` overrides the pool's command timeout (a hook with a longer one of its own)."""
        connection = await self._connection(host)
        limit = timeout or self._command_timeout
        try:
            return await asyncio.wait_for(_run_capped(connection, command, stdin), timeout=limit)
        except TimeoutError as exc:
            raise RetryableError(
                f"{host.target}: command did not finish within {limit:.0f}s",
                reason="HostTimeout",
                delay=30,
            ) from exc
        except (OSError, asyncssh.Error) as exc:
            self._forget(host)
            raise RetryableError(f"{host.target}: connection lost ({_why(exc)})", reason="HostUnreachable") from exc

    async def write_file(self, host: HostAccess, path: str, content: str, mode: str = "0600") -> None:
        """Writes a file atomically (temporary file, then rename), created with ``mode`` from the start."""
        quoted, temporary = shlex.quote(path), shlex.quote(path + ".codeb-tmp")
        line = (
            f"umask 077 && mkdir -p $(dirname {quoted}) && cat > {temporary} && chmod {mode} {temporary} "
            f"&& mv -f {temporary} {quoted}"
        )
        result = await self.run(host, line, stdin=content)
        if not result.ok:
            raise RetryableError(f"{host.target}: could not write {path}: {result.stderr.strip()[:300]}")

    async def close(self) -> None:
        for connection in self._connections.values():
            connection.close()
        self._connections.clear()

    async def _connection(self, host: HostAccess) -> asyncssh.SSHClientConnection:
        key = host.pool_key
        lock = self._locks.setdefault(key, asyncio.Lock())
        async with lock:
            existing = self._connections.get(key)
            if existing is not None and not existing.is_closed():
                return existing
            connection = await self._connect(host)
            self._connections[key] = connection
            return connection

    async def _connect(self, host: HostAccess) -> asyncssh.SSHClientConnection:
        address = await resolve_target(host.address, f"host {host.address}", self._allow_internal)
        try:
            client_key = asyncssh.import_private_key(host.private_key)
        except (asyncssh.KeyImportError, ValueError):
            # from None: nothing of the key's text may ride along in a traceback.
            raise RetryableError(
                f"{host.key_source}: privateKey is not an OpenSSH or PEM private key without passphrase",
                reason="SSHKeyInvalid",
                delay=60,
            ) from None
        record = self._host_keys if not host.known_hosts else None
        recorded = await record.known(host.address, host.port) if record is not None else None
        known = host.known_hosts or (known_hosts_line(host.address, host.port, recorded) if recorded else "")
        connection = await self._open(host, address, client_key, known, trusted_on_first_use=record is not None)
        if record is not None and recorded is None:
            try:
                await _trust(record, host, connection)
            except BaseException:
                connection.close()
                raise
        return connection

    async def _open(self, host: HostAccess, address: str, client_key: asyncssh.SSHKey, known: str,
                    trusted_on_first_use: bool) -> asyncssh.SSHClientConnection:  # fmt: skip
        """Connect to ``address`` (`resolve_target`'s) and verify the host key of ``host.address`` (the name)."""
        known_hosts = asyncssh.import_known_hosts(known) if known else None
        try:
            return await asyncio.wait_for(
                asyncssh.connect(
                    address,
                    port=host.port,
                    host_key_alias=host.address if address != host.address else None,
                    username=host.user,
                    client_keys=[client_key],
                    known_hosts=known_hosts,
                    agent_path=None,
                    config=[],
                    keepalive_interval=30,
                ),
                timeout=self._connect_timeout,
            )
        except asyncssh.PermissionDenied as exc:
            raise RetryableError(
                f"{host.target}: {host.key_source} was refused (is its public key in the host's authorized_keys?)",
                reason="SSHAuthFailed",
                delay=60,
            ) from exc
        except asyncssh.HostKeyNotVerifiable as exc:
            if trusted_on_first_use:
                raise _key_changed(host) from exc
            raise RetryableError(
                f"{host.target}: host key does not match knownHosts in {host.key_source}",
                reason="HostKeyMismatch",
                delay=60,
            ) from exc
        except (TimeoutError, OSError, asyncssh.Error) as exc:
            raise RetryableError(
                f"{host.target}: unreachable over SSH ({_why(exc)})", reason="HostUnreachable", delay=30
            ) from exc

    def _forget(self, host: HostAccess) -> None:
        connection = self._connections.pop(host.pool_key, None)
        if connection is not None:
            connection.close()


async def _trust(record: HostKeyRecord, host: HostAccess, connection: asyncssh.SSHClientConnection) -> None:
    """Record the key this host presented the first time; another replica's first record wins."""
    server_key = connection.get_server_host_key()
    presented = " ".join(server_key.export_public_key().decode().split()[:2]) if server_key else ""
    if await record.remember(host.address, host.port, presented) != presented:
        raise _key_changed(host)


def known_hosts_line(address: str, port: int, key: str) -> str:
    """``key`` ("<type> <base64>") as an OpenSSH known_hosts line for this address and port."""
    where = address if port == 22 else f"[{address}]:{port}"
    return f"{where} {key}"


def _key_changed(host: HostAccess) -> RetryableError:
    return RetryableError(
        f"{host.target}: the host presented another SSH host key than the one trusted on first use; nothing was "
        "sent to it. If the host was rebuilt on purpose, remove its entry from the operator's ConfigMap "
        "ssh-host-keys",
        reason="HostKeyChanged",
        delay=60,
    )


# The most of each output stream kept from one command: its end, where a failure says why. A host is
# a Project's, and what it prints must not exhaust the operator.
OUTPUT_BYTES = 1 << 20


async def _run_capped(connection: asyncssh.SSHClientConnection, command: str, stdin: str | None) -> Result:
    process = await connection.create_process(command, input=stdin.encode() if stdin is not None else None,
                                              encoding=None)  # fmt: skip
    out, err = await asyncio.gather(_last_bytes(process.stdout), _last_bytes(process.stderr))
    await process.wait_closed()
    return Result(process.exit_status or 0, _text(out), _text(err))


async def _last_bytes(stream: asyncssh.SSHReader[bytes]) -> bytes:
    """All of a stream read, its last `OUTPUT_BYTES` kept."""
    kept = b""
    while chunk := await stream.read(65536):
        kept = (kept + chunk)[-OUTPUT_BYTES:]
    return kept


def _why(exc: BaseException) -> str:
    if isinstance(exc, TimeoutError):
        return "timed out"
    return str(exc).strip() or type(exc).__name__


def _text(output: str | bytes | None) -> str:
    if output is None:
        return ""
    return output.decode(errors="replace") if isinstance(output, bytes) else output
