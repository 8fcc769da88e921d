"""The shared services of a Platform: real drivers for PostgreSQL, Redis, MinIO and Caddy.

A Project that names a Platform (``spec.servers.platform``) gets a driver for each
service the Platform declares, built with admin credentials read from the referenced
Secrets and cached until the Platform object changes. A requested service the
Platform does not declare is a permanent error naming both fields. Which components
come from here at all is the registry's business (`controller.drivers.registry`).
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass
from pathlib import Path

import httpx
from pydantic import ValidationError

from controller.claims.quotas import QuotaCheck
from controller.clients.caddy import admin_client
from controller.clients.kube import KubeClient, KubeSecrets
from controller.clients.postgres import PostgresServer
from controller.clients.powerdns import PowerDns
from controller.clients.s3 import S3Server
from controller.drivers.backups import STORE_PURPOSE, BackupDriver, RedisLogin, Runs
from controller.drivers.caddy import CaddyDriver
from controller.drivers.dns import DnsDriver
from controller.drivers.minio import MinioDriver, ensure_operator_bucket
from controller.drivers.postgres import PostgresDriver
from controller.drivers.redis import RedisDriver
from controller.errors import PermanentError, RetryableError
from controller.jobs.backups import BackupStore
from controller.loop.interface import Driver, DriverContext, Drivers, DumpSink
from controller.loop.naming import ProjectKey
from controller.loop.planner import Component, Observation, State
from controller.loop.status import format_validation_error
from schemas.platform import ObjectStorageEndpoint, PlatformSpec, SecretKeyReference


@dataclass(frozen=True)
class Service:
    platform_field: str  # where the Platform declares it
    project_field: str  # what in the Project asks for it
    label: str


# The components a Platform's shared services serve, whatever the provider of the hosts.
SERVICES = {
    Component.database: Service("postgres", "spec.features.database", "PostgreSQL"),
    Component.cache: Service("redis", "spec.features.redis", "Redis"),
    Component.storage: Service("objectStorage", "spec.features.storage", "object storage"),
    Component.route: Service("caddy", "spec.environment.domains", "Caddy route"),
    Component.backup: Service("backup", "spec.backup", "backup store"),
}


@dataclass
class MissingService:
    """Stands in for a service the Platform does not declare."""

    component: Component
    platform: str

    def _error(self) -> PermanentError:
        service = SERVICES[self.component]
        return PermanentError(
            f"Platform {self.platform} declares no {service.platform_field}; add spec.{service.platform_field} "
            f"to the Platform or turn off {service.project_field} in the Project",
            reason="ServiceNotOnPlatform",
        )

    async def observe(self, ctx: DriverContext) -> Observation:
        return Observation(error=self._error().message)

    async def apply(self, ctx: DriverContext, desired: State) -> None:
        raise self._error()

    async def delete(self, ctx: DriverContext, retain: bool) -> None:
        return None


class PlatformDrivers:
    def __init__(self, kube: KubeClient, timeout: float = 30.0, concurrency: int = 8, runs: Runs | None = None) -> None:
        self._kube = kube
        # One set of runners for every Platform: runs in flight outlive a Platform's drivers being rebuilt.
        self.runs = runs or Runs.on(kube)
        self._timeout, self._concurrency = timeout, concurrency
        self._secrets = KubeSecrets(kube)
        self._cache: dict[str, tuple[str, PlatformSpec, Drivers]] = {}
        self._quotas = QuotaCheck(kube)

    async def __call__(self, name: str, namespace: str | None = None) -> Drivers:
        """The Platform's drivers, for a Project in ``namespace`` (refused unless the Platform allows it)."""
        platform, drivers = await self._platform(name)
        if namespace is not None:
            await self._check_allowed(name, platform, namespace)
        return drivers

    async def admit(self, name: str, key: ProjectKey) -> None:
        """Refuses a Project past its namespace's quota on this Platform (`controller.claims.quotas`).

        Called right after the drivers (which read the Platform and check the namespace is allowed):
        the Platform as they cached it, not a second read."""
        platform = await self._as_read(name)
        await self._quotas.check(platform.quotas, name, key, names_domain=platform.domain is not None)

    async def domain(self, name: str) -> str | None:
        """The Platform's ``spec.domain``, as the drivers were just built from (not a second read)."""
        return (await self._as_read(name)).domain

    async def _as_read(self, name: str) -> PlatformSpec:
        """The Platform as the drivers last read it (read now only if they never did)."""
        cached = self._cache.get(name)
        return cached[1] if cached is not None else (await self._platform(name))[0]

    async def sweep(self) -> int:
        """Remove deleted Projects' backups past their retention, from every backup store in use; objects removed."""
        removed = 0
        for _, _, drivers in list(self._cache.values()):
            backup = drivers.get(Component.backup)
            if isinstance(backup, BackupDriver):
                removed += await backup.sweep()
        return removed

    async def _platform(self, name: str) -> tuple[PlatformSpec, Drivers]:
        body = await self._kube.read_platform(name)
        if body is None:
            raise RetryableError(
                f"Platform {name} does not exist; create it or change spec.servers.platform",
                reason="PlatformNotFound",
                delay=30,
            )
        version = str(body["metadata"]["resourceVersion"])
        cached = self._cache.get(name)
        if cached is None or cached[0] != version:
            try:
                platform = PlatformSpec.model_validate(body.get("spec") or {})
            except ValidationError as exc:
                raise PermanentError(
                    f"Platform {name} is invalid: {format_validation_error(exc)}", reason="PlatformInvalid"
                ) from None
            cached = (version, platform, await self._build(name, platform))
            self._cache[name] = cached
        return cached[1], cached[2]

    async def _check_allowed(self, name: str, platform: PlatformSpec, namespace: str) -> None:
        allowed = platform.namespaces
        selector = allowed.selector if allowed is not None else None
        labels = await self._kube.namespace_labels(namespace) if selector and selector.match_labels else None
        if allowed is None or not allowed.allows(namespace, labels):
            raise PermanentError(
                f"Platform {name} does not allow namespace {namespace}: its admin adds it to the Platform's "
                "spec.namespaces.names (or labels it to match spec.namespaces.selector), or name another Platform "
                "in spec.servers.platform",
                reason="PlatformNotAllowed",
            )

    async def _admin(self, ref: SecretKeyReference, *keys: str) -> list[str]:
        data = await self._kube.read_secret(ref.namespace, ref.name) or {}
        missing = [k for k in keys if not data.get(k)]
        if missing:
            raise RetryableError(
                f"Secret {ref.namespace}/{ref.name} lacks {', '.join(missing)}", reason="PlatformCredentialsMissing"
            )
        return [data[k] for k in keys]

    async def _build(self, name: str, platform: PlatformSpec) -> Drivers:
        drivers: dict[Component, Driver] = {component: MissingService(component, name) for component in SERVICES}
        storage: MinioDriver | None = None
        if platform.object_storage is not None:
            storage = MinioDriver.on(await self._s3(platform.object_storage), self._secrets)
            drivers[Component.storage] = storage
        store = await self._backup_store(platform)
        postgres: PostgresServer | None = None
        if platform.postgres is not None:
            pg = platform.postgres
            user, password = await self._admin(pg.admin_secret_ref, "username", "password")
            sink = _store_sink(store) if store is not None else storage.store_final_dump if storage else None
            allowed = frozenset(pg.extensions) if pg.extensions is not None else None
            database = PostgresDriver(pg.host, pg.port, user, password, self._secrets, sink, self._timeout,
                                      self._concurrency, allowed)  # fmt: skip
            drivers[Component.database], postgres = database, database.server
        objects = storage.server if storage is not None else None
        cache: RedisLogin | None = None
        if platform.redis is not None:
            (password,) = await self._admin(platform.redis.admin_secret_ref, "password")
            cache = (platform.redis.host, platform.redis.port, password)
            drivers[Component.cache] = RedisDriver(platform.redis.host, platform.redis.port, password, self._secrets,
                                                   self._timeout, self._concurrency)  # fmt: skip
        drivers[Component.backup] = BackupDriver(name, store, self.runs, postgres, self._secrets, objects, cache)
        if platform.dns is not None:
            dns = platform.dns
            (key,) = await self._admin(dns.api_key_secret_ref, "apiKey")
            drivers[Component.dns] = DnsDriver(PowerDns(dns.api_url, dns.server_id, key, httpx.AsyncClient(
                timeout=self._timeout)), dns)  # fmt: skip
        if platform.caddy is not None:
            caddy = platform.caddy
            upstream_dir = Path(caddy.upstream_dir) if caddy.upstream_dir else None
            drivers[Component.route] = CaddyDriver(caddy.admin_url, caddy.listen, admin_client(self._timeout),
                                                   upstream_dir)  # fmt: skip
        return drivers

    async def _s3(self, endpoint: ObjectStorageEndpoint) -> S3Server:
        access, secret = await self._admin(endpoint.admin_secret_ref, "accessKey", "secretKey")
        ca = (await self._admin(endpoint.ca_secret_ref, "ca.crt"))[0] if endpoint.ca_secret_ref else None
        try:
            return S3Server(endpoint.endpoint, access, secret, endpoint.secure, self._timeout, ca)
        except ssl.SSLError:
            assert endpoint.ca_secret_ref is not None
            ref = endpoint.ca_secret_ref
            raise PermanentError(
                f"Secret {ref.namespace}/{ref.name} key ca.crt is not a PEM certificate; put the "
                "CA that signed MinIO's certificate there",
                reason="PlatformInvalid",
            ) from None

    async def _backup_store(self, platform: PlatformSpec) -> BackupStore | None:
        """The Platform's backup store: its own S3 endpoint, or the Platform's objectStorage."""
        if platform.backup is None:
            return None
        endpoint = platform.backup.object_storage or platform.object_storage
        if endpoint is None:
            raise PermanentError(
                "the Platform's spec.backup has no objectStorage and the Platform declares none; "
                "add spec.backup.objectStorage (or spec.objectStorage)", reason="PlatformInvalid")  # fmt: skip
        return BackupStore(await self._s3(endpoint), platform.backup.bucket, platform.backup.point_in_time)


def _store_sink(store: BackupStore) -> DumpSink:
    """Final dumps go to the backup store, beside the Project's backups."""

    async def sink(object_name: str, path: Path) -> str:
        await ensure_operator_bucket(store.server, store.bucket, STORE_PURPOSE)
        await store.server.call(store.server.s3.fput_object, store.bucket, object_name, str(path))
        return store.location(object_name)

    return sink
