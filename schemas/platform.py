"""The `Platform` resource (cluster-scoped): shared infrastructure, declared once.

Many Projects land on the same PostgreSQL, Redis, MinIO and Caddy (the seeds'
storage server and edge). A Platform says where they are; admin credentials are
only ever referenced by Secret, never written into the Platform itself. Projects
name it in ``spec.servers.platform``.
"""

from __future__ import annotations

from typing import Annotated

from pydantic import Field

from schemas.base import BASE_DOMAIN, DNS_LABEL, EXTENSION_NAME, HOST, CodebModel, Rule

PLATFORM_KIND = "Platform"
PLATFORM_PLURAL = "platforms"
# A Caddy listener: [host]:port.
LISTEN_ADDRESS = r"^[A-Za-z0-9.:\[\]-]*:[0-9]{1,5}$"


class SecretKeyReference(CodebModel):
    namespace: str = Field(description="Namespace of the Secret.", pattern=DNS_LABEL, max_length=63)
    name: str = Field(description="Name of the Secret.", pattern=DNS_LABEL, max_length=253)


class PostgresEndpoint(CodebModel):
    host: str = Field(description="PostgreSQL host name or address.", pattern=HOST, max_length=253)
    port: int = Field(5432, description="PostgreSQL port.", ge=1, le=65535)
    admin_secret_ref: SecretKeyReference = Field(
        description="Secret with keys username and password of a role that may create roles and databases."
    )
    extensions: list[Annotated[str, Field(pattern=EXTENSION_NAME, max_length=63)]] | None = Field(
        None,
        description=(
            "Extensions Projects may ask for (spec.features.database.extensions). Unset: every extension this"
            " PostgreSQL marks trusted. Each is created by the Project's own role, never by the superuser, so an"
            " extension PostgreSQL does not mark trusted cannot be created even when listed."
        ),
        max_length=100,
    )


class RedisEndpoint(CodebModel):
    host: str = Field(description="Redis host name or address.", pattern=HOST, max_length=253)
    port: int = Field(6379, description="Redis port.", ge=1, le=65535)
    admin_secret_ref: SecretKeyReference = Field(
        description="Secret with key password of the Redis default user (allowed to run ACL SETUSER)."
    )


class ObjectStorageEndpoint(CodebModel):
    endpoint: str = Field(
        description="MinIO endpoint as host:port.", pattern=r"^[A-Za-z0-9.-]+:[0-9]{1,5}$", max_length=260
    )
    secure: bool = Field(True, description="Use HTTPS to reach MinIO.")
    admin_secret_ref: SecretKeyReference = Field(
        description="Secret with keys accessKey and secretKey of a MinIO admin."
    )
    ca_secret_ref: SecretKeyReference | None = Field(
        None,
        description=(
            "Secret with key ca.crt: the CA that signed MinIO's certificate, when it is not one this machine trusts"
            " already (with secure)."
        ),
    )


class PointInTimeArchive(CodebModel):
    """Where the Platform's PostgreSQL archives WAL and its base backups with pgBackRest: the backup store."""

    stanza: str = Field("codeb", description="The pgBackRest stanza the PostgreSQL server archives as.",
                        pattern=r"^[A-Za-z0-9][A-Za-z0-9_-]{0,62}$", max_length=63)  # fmt: skip
    repo_path: str = Field(
        "/pgbackrest",
        description="pgBackRest's repo1-path: the prefix in the backup store's bucket.",
        pattern=r"^/[A-Za-z0-9._/-]{0,254}$",
        max_length=255,
    )
    region: str = Field("us-east-1", description="pgBackRest's repo1-s3-region (MinIO accepts any).",
                        pattern=r"^[a-z0-9-]{1,63}$", max_length=63)  # fmt: skip


class BackupStore(CodebModel):
    bucket: str = Field(
        "codeb-backups",
        description=(
            "Bucket the operator creates and owns for every Project's backups (and final dumps). It starts with"
            " 'codeb-', which no Project may name, and no Project's credentials reach it."
        ),
        pattern=r"^codeb-[a-z0-9]([a-z0-9.-]{0,55}[a-z0-9])?$",
        max_length=63,
    )
    object_storage: ObjectStorageEndpoint | None = Field(
        None, description="An S3 store of its own (recommended: off the Platform's servers); unset: objectStorage."
    )
    point_in_time: PointInTimeArchive | None = Field(
        None,
        description=(
            "The Platform's PostgreSQL archives WAL and base backups here with pgBackRest (docs/backups.md says"
            " what to set on the server): Projects with walArchiving can be restored to a time."
        ),
    )


# An IPv4 or IPv6 address as written in an A or AAAA record (the driver parses it exactly).
IP_ADDRESS = r"^([0-9]{1,3}(\.[0-9]{1,3}){3}|[0-9A-Fa-f:.]*:[0-9A-Fa-f:.]*)$"


class DnsTarget(CodebModel):
    rules = (
        Rule(
            cel="has(self.addresses) != has(self.cname)",
            message="set exactly one of addresses (A/AAAA records) or cname (a CNAME record)",
            field_path="",
            check=lambda t: bool(t.addresses) != (t.cname is not None),
        ),
    )

    addresses: list[Annotated[str, Field(pattern=IP_ADDRESS, max_length=45)]] | None = Field(
        None, description="Where Caddy answers: A and AAAA records to these addresses.", min_length=1, max_length=8
    )
    cname: str | None = Field(
        None, description="Where Caddy answers, as a name: a CNAME record to it.", pattern=BASE_DOMAIN, max_length=253
    )


class DnsEndpoint(CodebModel):
    api_url: str = Field(
        description="PowerDNS HTTP API URL (its webserver), e.g. http://10.0.0.3:8081.",
        pattern=r"^https?://[^\s/]+/?$",
        max_length=260,
    )
    server_id: str = Field("localhost", description="The PowerDNS server id in the API's paths.", pattern=DNS_LABEL,
                           max_length=63)  # fmt: skip
    api_key_secret_ref: SecretKeyReference = Field(description="Secret with key apiKey: the PowerDNS API key.")
    zones: list[Annotated[str, Field(pattern=BASE_DOMAIN, max_length=253)]] | None = Field(
        None,
        description=(
            "The zones the operator may write Projects' records in (without the trailing dot). Unset: every zone "
            "the server serves. A domain in none of them gets DnsReady=False (ZoneNotServed)."
        ),
        max_length=100,
    )
    target: DnsTarget = Field(description="What every Project's records point at: the Caddy that routes them.")
    ttl: int = Field(300, description="TTL of the records the operator writes, in seconds.", ge=30, le=86400)
    owner: str = Field(
        "codeb",
        description=(
            "This operator's name in the ownership TXT record beside each record it writes (as external-dns does),"
            " so that two operators sharing a DNS server never touch each other's records."
        ),
        pattern=DNS_LABEL,
        max_length=63,
    )


class CaddyEndpoint(CodebModel):
    admin_url: str = Field(
        description="Caddy admin API URL, e.g. http://10.0.0.2:2019.", pattern=r"^https?://[^\s/]+/?$", max_length=260
    )
    listen: list[Annotated[str, Field(pattern=LISTEN_ADDRESS, max_length=260)]] = Field(
        default_factory=lambda: [":443"], description="Addresses the Projects' HTTPS server listens on.", max_length=8
    )
    upstream_dir: str | None = Field(
        None,
        description=(
            "A directory on the machine that runs both Caddy and the operator, which the operator writes and Caddy"
            " reads. When set, each route's upstreams live in files there (Caddy's {file.*} placeholder, read per"
            " request), so a blue-green switch is one file rename instead of a config reload: a reload rebinds"
            " Caddy's listeners and resets a few connections that are just arriving."
        ),
        pattern=r"^/[^{}\s]*$",
        max_length=200,
    )


class RegistryEndpoint(CodebModel):
    host: str = Field(
        description=(
            "Where hosts and nodes push and pull the Projects' images, as image names spell it: "
            "registry.example.com or 10.0.0.4:5000. Each Project's images are under codeb/<namespace>/<name>."
        ),
        pattern=r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?(:[0-9]{1,5})?$",
        max_length=260,
    )
    service: str = Field(
        "codeb-registry",
        description=(
            "The registry's auth.token.service: the audience of the tokens the operator issues for it (its"
            " inbound listener's GET /registry/token is the registry's realm; docs/operations.md \"Registry\")."
        ),
        pattern=r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$",
    )


class BuildHost(CodebModel):
    host: str = Field(
        description=(
            "A machine with podman (and git) where Projects on runtime kubernetes build source.git; each build is"
            " pushed to spec.registry, which must be set. Dedicate it to builds: the Containerfiles' steps are"
            " hostile input, and each namespace's images are kept in a storage of their own there."
        ),
        pattern=HOST,
        max_length=253,
    )
    port: int = Field(22, description="Its SSH port.", ge=1, le=65535)
    user: str = Field("root", description="User the operator logs in as.", pattern=r"^[a-z_][a-z0-9_-]*$",
                      max_length=32)  # fmt: skip
    ssh_secret_ref: SecretKeyReference = Field(
        description=(
            "Secret with key privateKey (OpenSSH private key, no passphrase) and, optionally, knownHosts; without"
            " knownHosts the host's key is trusted on first use and a changed key is refused."
        )
    )


class NamespaceSelector(CodebModel):
    match_labels: dict[str, Annotated[str, Field(max_length=63)]] = Field(
        default_factory=dict, description="Labels a namespace must all carry; {} matches every namespace.",
        max_length=20,
    )  # fmt: skip


class AllowedNamespaces(CodebModel):
    names: list[Annotated[str, Field(pattern=DNS_LABEL, max_length=63)]] = Field(
        default_factory=list, description="Namespaces whose Projects may use this Platform.", max_length=1000
    )
    selector: NamespaceSelector | None = Field(
        None,
        description=(
            "Namespaces whose labels match may use this Platform, as well as those named; selector: {} allows every"
            " namespace."
        ),
    )

    def allows(self, namespace: str, labels: dict[str, str] | None) -> bool:
        """Whether ``namespace`` (with ``labels``, None when they were not read) may use the Platform."""
        if namespace in self.names:
            return True
        if self.selector is None:
            return False
        wanted = self.selector.match_labels
        return not wanted or (labels is not None and all(labels.get(k) == v for k, v in wanted.items()))


class NamespaceQuotas(CodebModel):
    projects: int | None = Field(
        None,
        description=(
            "Projects one namespace may have on this Platform; the oldest count first, a newer one past the "
            "limit gets QuotaExceeded (and is admitted once an older one goes). Unset: no limit."
        ),
        ge=0,
        le=100000,
    )
    domains: int | None = Field(
        None,
        description=(
            "Domains one namespace's Projects on this Platform may route in all, counted oldest Project first; "
            "a Project whose domains go past it gets QuotaExceeded. Unset: no limit."
        ),
        ge=0,
        le=1000000,
    )


class PlatformSpec(CodebModel):
    rules = (
        Rule(
            cel="!has(self.builder) || has(self.registry)",
            message="builder needs registry: what it builds is pushed there, and the nodes pull it from there",
            field_path=".builder",
            check=lambda p: p.builder is None or p.registry is not None,
        ),
    )

    namespaces: AllowedNamespaces | None = Field(
        None,
        description=(
            "Which namespaces' Projects may use this Platform's databases, caches, buckets and routes. Unset: none"
            " (a Project elsewhere gets PlatformNotAllowed); selector: {} allows every namespace."
        ),
    )
    quotas: NamespaceQuotas | None = Field(
        None, description="What one namespace may take of this Platform (checked before anything is claimed)."
    )
    postgres: PostgresEndpoint | None = Field(None, description="Shared PostgreSQL for Project databases.")
    redis: RedisEndpoint | None = Field(None, description="Shared Redis for Project caches.")
    object_storage: ObjectStorageEndpoint | None = Field(None, description="Shared MinIO for Project buckets.")
    caddy: CaddyEndpoint | None = Field(None, description="Caddy instance that routes the Projects' domains.")
    dns: DnsEndpoint | None = Field(
        None,
        description=(
            "A PowerDNS server the operator writes each Project's records to (and removes them from), marked as"
            " its own; records it did not make are never touched. Unset: DNS is managed elsewhere."
        ),
    )
    domain: str | None = Field(
        None,
        description=(
            "The Platform's own domain, e.g. apps.example.com: a Project on it that names no "
            "environment.domains is routed at <slug>.<domain> (production), <slug>-staging.<domain>, or "
            "pr-<N>.<slug>.<domain> (a preview). Point a wildcard DNS record at Caddy, or let spec.dns write "
            "each name."
        ),
        pattern=BASE_DOMAIN,
        max_length=200,
    )
    registry: RegistryEndpoint | None = Field(
        None,
        description=(
            "A registry (distribution with token auth) where each Project may push and pull its own repository,"
            " codeb/<namespace>/<name>, and no other: the operator issues the tokens."
        ),
    )
    builder: BuildHost | None = Field(
        None,
        description=(
            "Where Projects on runtime kubernetes build source.git (pushed to registry, run by digest). Unset:"
            " they refuse source.git (SourceNotBuildable) and take source.image, built and pushed elsewhere."
        ),
    )
    backup: BackupStore | None = Field(
        None,
        description=(
            "Where Projects' backups are kept. Unset: Projects with backups on report BackupReady=False"
            " (NoBackupStore) and are still served."
        ),
    )
