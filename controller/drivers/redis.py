"""Redis: an ACL user per Project, confined to its key prefix and a safe command set.

ACL isolation has no cap on the number of Projects (the seeds' DB-index scheme
stops at 14). The legacy ``dbIndex`` mode is kept for existing setups: the user
may then touch every key, but only in its own numbered database.

Drift is judged against what Redis itself reports for the rule set, learned once
from a probe user, so the comparison does not depend on how a Redis version
normalises ACL rules.
"""

from __future__ import annotations

import uuid
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import AuthenticationError, RedisError, ResponseError

from controller.drivers import DriverContext
from controller.errors import RetryableError
from controller.planner import Component, Observation, State
from controller.secrets import SecretStore, ensure_password

PASSWORD_KEY = "REDIS_PASSWORD"
# Data commands only: no FLUSHALL, KEYS, CONFIG, DEBUG, ACL, MODULE, SHUTDOWN, ...
SAFE_COMMANDS = ["-@all", "+@read", "+@write", "+@keyspace", "+@transaction", "+@connection", "+@pubsub",
                 "-@dangerous"]  # fmt: skip
PROBE_USER = "codeb-acl-probe"


def acl_rules(desired: State) -> list[str]:
    if desired["isolation"] == "dbIndex":
        return ["resetkeys", "~*", "resetchannels", "&*", *SAFE_COMMANDS, "+select"]
    prefix = str(desired["prefix"])
    return ["resetkeys", f"~{prefix}*", "resetchannels", f"&{prefix}*", *SAFE_COMMANDS]


class RedisDriver:
    component = Component.cache

    def __init__(self, host: str, port: int, admin_password: str | None, secrets: SecretStore) -> None:
        self._host, self._port, self._password = host, port, admin_password
        self._secrets = secrets
        self._canonical: dict[str, Any] = {}

    def _admin(self) -> aioredis.Redis:
        return aioredis.Redis(host=self._host, port=self._port, password=self._password, socket_timeout=5,
                              decode_responses=True)  # fmt: skip

    async def _call(self, *args: Any) -> Any:
        client = self._admin()
        try:
            return await client.execute_command(*args)  # type: ignore[no-untyped-call]
        except (ConnectionError, OSError, RedisError) as exc:
            if isinstance(exc, ResponseError):
                raise
            raise RetryableError(
                f"Redis at {self._host}:{self._port} is unreachable", reason="CacheUnavailable"
            ) from None
        finally:
            await client.aclose()

    async def _canonical_commands(self, rules: list[str]) -> Any:
        """How this Redis reports a rule set, learned once from a disabled probe user."""
        key = " ".join(rules)
        if key not in self._canonical:
            # A probe of its own per call: concurrent passes must not read each other's rules.
            probe = f"{PROBE_USER}-{uuid.uuid4().hex[:12]}"
            try:
                await self._call("ACL", "SETUSER", probe, "reset", "off", *rules)
                self._canonical[key] = _rules_of(await self._call("ACL", "GETUSER", probe))
            finally:
                await self._call("ACL", "DELUSER", probe)
        return self._canonical[key]

    async def observe(self, ctx: DriverContext) -> Observation:
        user = ctx.allocations.redis_user
        if user is None:
            return Observation()
        found = await self._call("ACL", "GETUSER", user)
        if found is None:
            return Observation()
        seen = _rules_of(found)
        desired_like = {"isolation": "dbIndex" if ctx.allocations.redis_db_index is not None else "acl",
                        "prefix": ctx.allocations.redis_prefix}  # fmt: skip
        expected = await self._canonical_commands(acl_rules(desired_like))
        return Observation(
            state={
                "user": user,
                "prefix": ctx.allocations.redis_prefix,
                "isolation": desired_like["isolation"],
                "dbIndex": ctx.allocations.redis_db_index,
                "aclMatches": seen == expected,
                "loginWorks": await self._login_works(ctx, user),
            }
        )

    async def _login_works(self, ctx: DriverContext, user: str) -> bool:
        secret = await self._secrets.read(ctx.key.namespace, ctx.allocations.connection_secret or "") or {}
        if not secret.get(PASSWORD_KEY):
            return False
        client = aioredis.Redis(host=self._host, port=self._port, username=user, password=secret[PASSWORD_KEY],
                                socket_timeout=5)  # fmt: skip
        try:
            return bool(await client.ping())
        except (AuthenticationError, ResponseError):
            return False
        except (ConnectionError, OSError, RedisError):
            raise RetryableError(
                f"Redis at {self._host}:{self._port} is unreachable", reason="CacheUnavailable"
            ) from None
        finally:
            await client.aclose()

    async def apply(self, ctx: DriverContext, desired: State) -> None:
        user = str(desired["user"])
        secret_name = ctx.allocations.connection_secret or ""
        # The Secret first: a crash after this line leaves a password the user will get.
        password = await ensure_password(self._secrets, ctx.key.namespace, secret_name, PASSWORD_KEY)
        await self._call("ACL", "SETUSER", user, "reset", "on", f">{password}", *acl_rules(desired))
        db = desired["dbIndex"] if desired["isolation"] == "dbIndex" else 0
        await self._secrets.merge(ctx.key.namespace, secret_name, {
            "REDIS_URL": f"redis://{user}:{password}@{self._host}:{self._port}/{db}",
            "REDIS_USER": user,
            "REDIS_PREFIX": str(desired["prefix"]) if desired["isolation"] == "acl" else "",
        })  # fmt: skip

    async def delete(self, ctx: DriverContext, retain: bool) -> None:
        user, prefix = ctx.allocations.redis_user, ctx.allocations.redis_prefix
        if retain or user is None:
            return  # released: the user and its keys stay, unmanaged
        await self._call("ACL", "DELUSER", user)
        if prefix is None or ctx.allocations.redis_db_index is not None:
            return
        cursor: Any = 0
        while True:
            cursor, keys = await self._call("SCAN", cursor, "MATCH", f"{prefix}*", "COUNT", 500)
            if keys:
                await self._call("UNLINK", *keys)
            if int(cursor) == 0:
                break


def _rules_of(getuser: Any) -> dict[str, Any]:
    """The parts of ACL GETUSER that define what a user may do."""
    if isinstance(getuser, list):  # RESP2 returns a flat list
        getuser = dict(zip(getuser[::2], getuser[1::2], strict=True))
    return {k: getuser.get(k) for k in ("commands", "keys", "channels") if k in getuser}
