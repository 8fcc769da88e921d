"""Redis: an ACL user per Project, confined to its key prefix and a safe command set.

ACL isolation has no cap on the number of Projects (the seeds' DB-index scheme
stops at 14). There is no numbered-database mode: Redis ACLs cannot confine a user
to one database (SELECT is all or nothing), so such a user could read every other
tenant's database.

What a tenant cannot do, proven by attack in `tests/drivers/test_redis.py`: read,
write or delete keys outside its prefix; list key names at all (SCAN, KEYS,
RANDOMKEY, DBSIZE; so it cannot SCAN its own keys either); switch or copy into other
databases (SELECT, MOVE, COPY, SWAPDB); subscribe or publish outside its channel
prefix, or list channels (PUBSUB); act on the whole server (FLUSHALL, FLUSHDB,
FUNCTION, CONFIG, CLIENT LIST/KILL, broadcast key tracking, scripts).

Redis has no comment on a user, so ownership is an admin-only key outside every
tenant's prefix, ``_codeb:owner:<user>`` = ``<namespace>/<name>``, written before the
user exists and deleted after it is gone: a retained user and its keys are re-adopted
by a Project of the same namespace and name and refused to anyone else. A tenant's
prefix is a DNS label and a colon, so it never starts with ``_``: no tenant can read or
forge a marker (the earlier ``codeb:owner:`` was inside slug ``codeb``'s ``codeb:*``).
A user without a marker (``default``, the Platform's own, anyone's made by hand) is
never changed or deleted, whatever a Project names.

Drift is judged against what Redis itself reports for the rule set, learned once
from a probe user, so the comparison does not depend on how a Redis version
normalises ACL rules.
"""

from __future__ import annotations

import uuid
from typing import Any

from controller.clients.redis import POOL_SIZE, TIMEOUT_SECONDS, RedisServer
from controller.errors import PermanentError
from controller.loop.interface import DriverContext
from controller.loop.planner import Component, Observation, State
from controller.loop.secrets import SecretStore, ensure_password

PASSWORD_KEY = "REDIS_PASSWORD"
# Data commands on the tenant's own keys only. The categories grant the bulk; the
# second line takes back what they include that reaches past the prefix or the database.
SAFE_COMMANDS = ["-@all", "+@read", "+@write", "+@keyspace", "+@transaction", "+@connection", "+@pubsub",
                 "-@dangerous",
                 "-scan", "-keys", "-randomkey", "-dbsize", "-select", "-move", "-copy", "-swapdb", "-function",
                 "-pubsub", "-client|tracking"]  # fmt: skip
# Names no tenant can have: a Project's user and prefix are DNS labels, never starting with "_".
PROBE_USER = "_codeb-acl-probe"
OWNER_KEY = "_codeb:owner:{user}"
# Where markers were kept before (inside a possible tenant prefix): read, then moved, once.
LEGACY_OWNER_KEY = "codeb:owner:{user}"


def acl_rules(prefix: str) -> list[str]:
    return ["resetkeys", f"~{prefix}*", "resetchannels", f"&{prefix}*", *SAFE_COMMANDS]


class RedisDriver:
    component = Component.cache

    def __init__(self, host: str, port: int, admin_password: str | None, secrets: SecretStore,
                 timeout: float = TIMEOUT_SECONDS, pool_size: int = POOL_SIZE) -> None:  # fmt: skip
        self._server = RedisServer(host, port, admin_password, timeout, pool_size)
        self._call = self._server.call
        self._secrets = secrets
        self._canonical: dict[str, Any] = {}

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
        user, prefix = ctx.allocations.redis_user, ctx.allocations.redis_prefix
        if user is None or prefix is None:
            return Observation()
        found = await self._call("ACL", "GETUSER", user)
        if found is None:
            # A marker without its user: written first on create, deleted last on delete (keys may remain).
            ours = await self._owner(user) == str(ctx.key)
            return Observation(leftovers=(f"owner marker of {user}",) if ours else ())
        await self._check_owner(ctx, user)
        seen = _rules_of(found)
        expected = await self._canonical_commands(acl_rules(prefix))
        return Observation(
            state={
                "user": user,
                "prefix": prefix,
                "aclMatches": seen == expected and "on" in _flags(found),
                "loginWorks": await self._login_works(ctx, user),
            }
        )

    async def _login_works(self, ctx: DriverContext, user: str) -> bool:
        secret = await self._secrets.read(ctx) or {}
        password = secret.get(PASSWORD_KEY)
        return bool(password) and await self._server.login_works(user, str(password))

    async def apply(self, ctx: DriverContext, desired: State) -> None:
        user, prefix = str(desired["user"]), str(desired["prefix"])
        # The Secret first: a crash after this line leaves a password the user will get.
        password = await ensure_password(self._secrets, ctx, PASSWORD_KEY)
        # The marker before the user: a crash in between leaves a claim, never an unowned user.
        await self._check_owner(ctx, user, claim=True)
        await self._call("ACL", "SETUSER", user, "reset", "on", f">{password}", *acl_rules(prefix))
        await self._secrets.merge(ctx, {
            # No database number: the user may not SELECT, and stays in database 0.
            "REDIS_URL": f"redis://{user}:{password}@{self._server.host}:{self._server.port}",
            "REDIS_USER": user,
            "REDIS_PREFIX": prefix,
        })  # fmt: skip

    async def delete(self, ctx: DriverContext, retain: bool) -> None:
        """Lock the user out, delete its keys, then the user: a crash at any step is resumed.

        Deleting the user first would orphan the keys if the scan were interrupted: the
        next pass would find no user and never look for them again.
        """
        user, prefix = ctx.allocations.redis_user, ctx.allocations.redis_prefix
        if retain or user is None or prefix is None:
            return  # released: the user, its keys and its marker stay for a Project of the same name
        if await self._owner(user) != str(ctx.key):
            return  # someone else's, or nobody's (an unmarked user such as "default"): never touched
        if await self._call("ACL", "GETUSER", user) is not None:
            await self._call("ACL", "SETUSER", user, "off")
            await self._call("CLIENT", "KILL", "USER", user)
        cursor: Any = 0
        while True:
            cursor, keys = await self._call("SCAN", cursor, "MATCH", f"{prefix}*", "COUNT", 500)
            if keys:
                await self._call("UNLINK", *keys)
            if int(cursor) == 0:
                break
        await self._call("ACL", "DELUSER", user)
        await self._call("DEL", OWNER_KEY.format(user=user))

    async def _check_owner(self, ctx: DriverContext, user: str, claim: bool = False) -> None:
        """Raise NotOwned unless this Project owns the user; ``claim`` writes the marker if there is none.

        The marker is always written before the user is made, so a user without one
        was made by someone else.
        """
        key = OWNER_KEY.format(user=user)
        owner = await self._owner(user)
        if owner is None:
            if await self._call("ACL", "GETUSER", user) is not None:
                raise _not_owned(user, "was not created by the operator")
            if not claim:
                return
            owner = await self._call("SET", key, str(ctx.key), "NX", "GET")  # None: ours now
            if owner is None:
                return
        if owner != str(ctx.key):
            raise _not_owned(user, f"holds data of Project {owner}")

    async def _owner(self, user: str) -> str | None:
        """The Project that owns ``user`` (its marker), moving a marker kept at the legacy key."""
        owner: str | None = await self._call("GET", OWNER_KEY.format(user=user))
        if owner is None:
            owner = await self._call("GET", LEGACY_OWNER_KEY.format(user=user))
            if owner is not None:
                await self._call("SET", OWNER_KEY.format(user=user), owner, "NX")
                await self._call("DEL", LEGACY_OWNER_KEY.format(user=user))
        return owner


def _not_owned(user: str, whose: str) -> PermanentError:
    return PermanentError(f"Redis user {user} exists but {whose}; change spec.project.slug", reason="NotOwned")


def _as_dict(getuser: Any) -> dict[str, Any]:
    if isinstance(getuser, list):  # RESP2 returns a flat list
        return dict(zip(getuser[::2], getuser[1::2], strict=True))
    return dict(getuser)


def _rules_of(getuser: Any) -> dict[str, Any]:
    """The parts of ACL GETUSER that define what a user may do, as sets of rules.

    Redis renders the command exceptions in its own hash order, which changes when it
    restarts; the same permissions must compare equal, so the order is not kept.
    """
    found = _as_dict(getuser)
    return {k: frozenset(str(found[k]).split()) for k in ("commands", "keys", "channels") if k in found}


def _flags(getuser: Any) -> list[str]:
    return list(_as_dict(getuser).get("flags") or [])
