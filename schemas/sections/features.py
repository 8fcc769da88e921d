"""Section ``features``: the services a Project gets (database, Redis, object storage), apps and hooks."""

from __future__ import annotations

from typing import Annotated

from pydantic import Field

from schemas.base import (
    DNS_LABEL,
    EXTENSION_NAME,
    PRINTABLE,
    REVISION,
    CodebModel,
    Rule,
    immutable,
)
from schemas.common import OPERATOR_BUCKET_PREFIX, RENAME_WHY, RedisIsolation


class Database(CodebModel):
    enabled: bool = Field(True, description="Create a PostgreSQL database and owner role for the project.")
    version: str = Field("16", description="PostgreSQL major version.", pattern=r"^(13|14|15|16|17)$", max_length=2)
    extensions: list[Annotated[str, Field(pattern=EXTENSION_NAME, max_length=63)]] = Field(
        default_factory=list,
        description="Extensions to create in the database, e.g. pg_trgm, uuid-ossp as uuid_ossp.",
        max_length=20,
    )
    connection_limit: int = Field(
        20, description="Most concurrent connections the project's role may open.", ge=1, le=1000
    )


class Redis(CodebModel):
    enabled: bool = Field(True, description="Allocate Redis for the project.")
    isolation: RedisIsolation = Field(
        RedisIsolation.acl,
        description=(
            "acl (the only mode): an ACL user limited to the key prefix '<project>:' and channel prefix, with no "
            "command that lists keys or channels or reaches another database. Numbered databases (dbIndex) are "
            "not offered: Redis ACLs cannot confine a user to one."
        ),
    )


class ObjectStorage(CodebModel):
    rules = (
        immutable("bucket", RENAME_WHY),
        Rule(
            cel="!has(self.bucket) || !self.bucket.startsWith('codeb-')",
            message="bucket names starting with 'codeb-' are the operator's own (final dumps, backups); choose another",
            field_path=".bucket",
            check=lambda s: not (s.bucket or "").startswith(OPERATOR_BUCKET_PREFIX),
        ),
    )

    enabled: bool = Field(True, description="Create an S3 (MinIO) bucket with a user limited to it.")
    bucket: str | None = Field(
        None,
        description="Bucket name; defaults to '<slug>-uploads' (with the environment for non-production).",
        pattern=r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$",
        max_length=63,
    )
    versioning: bool = Field(False, description="Keep old versions of objects.")
    expire_after_days: int | None = Field(None, description="Delete objects older than this many days.", ge=1, le=3650)


class App(CodebModel):
    name: str = Field(description="App to install, e.g. forum, shop, crowdfunding.", pattern=DNS_LABEL, max_length=63)
    version: str | None = Field(
        None, description="App version (letters, digits, '.', '_', '-'); latest when omitted.", pattern=REVISION,
        max_length=64,
    )  # fmt: skip
    settings: dict[str, Annotated[str, Field(pattern=PRINTABLE, max_length=1024)]] = Field(
        default_factory=dict, description="App-specific settings.", max_length=50
    )


class Hook(CodebModel):
    name: str = Field(description="Hook name, unique in the project.", pattern=DNS_LABEL, max_length=63)
    command: list[Annotated[str, Field(pattern=PRINTABLE, min_length=1, max_length=1024)]] = Field(
        description=(
            "Command run in the new release's container, e.g. [npm, run, migrate]: a program and its arguments, "
            "none empty, no control characters."
        ),
        min_length=1,
        max_length=32,
    )
    timeout_seconds: int = Field(300, description="Seconds before the hook fails the deploy.", ge=1, le=3600)


class Features(CodebModel):
    database: Database | None = Field(None, description="PostgreSQL database for the project.")
    redis: Redis | None = Field(None, description="Redis allocation for the project.")
    storage: ObjectStorage | None = Field(None, description="S3-compatible bucket for the project.")
    apps: list[App] = Field(default_factory=list, description="Apps installed after the first deploy.", max_length=50)
    post_deploy_hooks: list[Hook] = Field(
        default_factory=list,
        description="Commands run after each deploy, before traffic switches (migrations, CMS initial pages).",
        max_length=20,
    )
