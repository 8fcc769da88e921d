"""Commands to one Redis server: one bounded admin pool, timeouts on every call, one error translation.

Redis echoes ACL SETUSER modifiers, passwords included, in its error replies, so no Redis
text reaches our errors: a refusal names the command, an outage the server.
"""

from __future__ import annotations

from typing import Any

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import AuthenticationError, RedisError, ResponseError
from redis.exceptions import ConnectionError as RedisConnectionError

from controller.errors import PermanentError, RetryableError

TIMEOUT_SECONDS = 5.0
POOL_SIZE = 8


class RedisServer:
    """One server, as the operator's admin user (pooled) and, to check a login, as a tenant's."""

    def __init__(self, host: str, port: int, admin_password: str | None, timeout: float = TIMEOUT_SECONDS,
                 pool_size: int = POOL_SIZE) -> None:  # fmt: skip
        self.host, self.port, self._timeout = host, port, timeout
        # One pool for every Project's admin calls, bounded: N Projects do not mean N connections.
        pool = aioredis.BlockingConnectionPool(
            host=host, port=port, password=admin_password, socket_timeout=timeout, socket_connect_timeout=timeout,
            max_connections=pool_size, timeout=timeout, decode_responses=True,
            # A pooled connection that Redis closed (a restart) is reconnected once, not reported as an outage.
            retry=Retry(NoBackoff(), 1), retry_on_error=[RedisConnectionError],
        )  # fmt: skip
        self._admin = aioredis.Redis(connection_pool=pool)

    def unreachable(self) -> RetryableError:
        return RetryableError(f"Redis at {self.host}:{self.port} is unreachable", reason="CacheUnavailable")

    async def call(self, *args: Any) -> Any:
        """One admin command; a refusal is permanent, anything else an outage."""
        try:
            return await self._admin.execute_command(*args)  # type: ignore[no-untyped-call]
        except ResponseError:
            raise PermanentError(f"Redis refused {args[0]} {args[1] if len(args) > 1 else ''}".strip(),
                                 reason="CacheRefused") from None  # fmt: skip
        except (RedisError, OSError):
            raise self.unreachable() from None

    async def login_works(self, user: str, password: str) -> bool:
        """Whether ``user`` can log in with ``password`` (a fresh connection, closed after)."""
        client = aioredis.Redis(host=self.host, port=self.port, username=user, password=password,
                                socket_timeout=self._timeout, socket_connect_timeout=self._timeout)  # fmt: skip
        try:
            return bool(await client.ping())
        except (AuthenticationError, ResponseError):
            return False
        except (RedisError, OSError):
            raise self.unreachable() from None
        finally:
            await client.aclose()
