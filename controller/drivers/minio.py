"""MinIO (S3): a bucket per Project, and a user whose policy reaches only that bucket.

Buckets the operator creates are tagged with the Project's namespace/name, so data
kept by ``deletionPolicy: Retain`` is re-adopted by a Project re-created under the
same name and refused to anyone else. The bucket's user is created before the
bucket, with the key already in the Project's Secret: an untagged bucket that this
user can open is ours (a crash between creating and tagging) and is tagged on the
next pass; any other bucket of that name is never touched (``NotOwned``). The policy is compared
statement by statement with the rendered one, so a policy widened by hand is drift.
The MinIO clients are blocking; `controller.clients.s3` runs each call in a worker thread.
"""

from __future__ import annotations

import contextlib
import json
from pathlib import Path
from typing import Any

from minio.commonconfig import ENABLED, Filter, Tags
from minio.lifecycleconfig import Expiration, LifecycleConfig, Rule
from minio.versioningconfig import SUSPENDED, VersioningConfig

from controller.clients.s3 import S3Server
from controller.errors import PermanentError
from controller.loop.interface import DriverContext
from controller.loop.planner import Component, Observation, State
from controller.loop.secrets import SecretStore, ensure_password
from schemas.project import OPERATOR_BUCKET_PREFIX

SECRET_KEY = "S3_SECRET_KEY"
OWNER_TAG = "codeb.dev/project"
# The operator's own buckets carry this tag (its purpose); no Project's bucket does.
OPERATOR_TAG = "codeb.dev/operator"
# No Project may name a bucket with the operator's prefix (the manifest's rule), so this is never a tenant's.
FINAL_DUMPS_BUCKET = f"{OPERATOR_BUCKET_PREFIX}final-dumps"


def bucket_policy(bucket: str) -> dict[str, Any]:
    """Read, write and list this bucket only (pure)."""
    return {
        "Version": "2012-10-17",
        "Statement": [
            {"Effect": "Allow", "Action": ["s3:GetBucketLocation", "s3:ListBucket", "s3:ListBucketMultipartUploads"],
             "Resource": [f"arn:aws:s3:::{bucket}"]},
            {"Effect": "Allow", "Action": ["s3:GetObject", "s3:PutObject", "s3:DeleteObject",
                                           "s3:AbortMultipartUpload", "s3:ListMultipartUploadParts"],
             "Resource": [f"arn:aws:s3:::{bucket}/*"]},
        ],
    }  # fmt: skip


def _canonical(policy: dict[str, Any]) -> set[tuple[str, tuple[str, ...], tuple[str, ...]]]:
    def listed(value: Any) -> tuple[str, ...]:
        return tuple(sorted([value] if isinstance(value, str) else value or []))

    return {(s.get("Effect", ""), listed(s.get("Action")), listed(s.get("Resource"))) for s in policy["Statement"]}


def access_key(bucket: str) -> str:
    return f"codeb-{bucket}"


class MinioDriver:
    component = Component.storage

    def __init__(self, endpoint: str, root_user: str, root_password: str, secrets: SecretStore,
                 secure: bool = False, timeout: float = 10.0) -> None:  # fmt: skip
        self._serve(S3Server(endpoint, root_user, root_password, secure, timeout), secrets)

    @classmethod
    def on(cls, server: S3Server, secrets: SecretStore) -> MinioDriver:
        """The driver of a server already made (a Platform's, with its CA)."""
        driver = cls.__new__(cls)
        driver._serve(server, secrets)
        return driver

    def _serve(self, server: S3Server, secrets: SecretStore) -> None:
        self._server = server
        # Shared with the backup driver, which copies the Projects' buckets.
        self.server = self._server
        self._s3, self._admin, self._call = self._server.s3, self._server.admin, self._server.call
        self._secrets = secrets

    async def store_final_dump(self, object_name: str, path: Path) -> str:
        """Keep a final database dump in the operator's own bucket (a Platform without a backup store)."""
        await ensure_operator_bucket(self._server, FINAL_DUMPS_BUCKET, "final-dumps")
        await self._call(self._s3.fput_object, FINAL_DUMPS_BUCKET, object_name, str(path))
        return f"s3://{FINAL_DUMPS_BUCKET}/{object_name}"

    async def _user_exists(self, user: str) -> bool:
        return await user_exists(self._server, user)

    async def observe(self, ctx: DriverContext) -> Observation:
        bucket = ctx.allocations.bucket
        if bucket is None:
            return Observation()
        if not await self._call(self._s3.bucket_exists, bucket):
            # The bucket's user without it: made first on create, removed last on delete.
            user = access_key(bucket)
            return Observation(leftovers=(f"user {user}",) if await self._user_exists(user) else ())
        tagged = await self._check_owner(ctx, bucket)
        versioning = await self._call(self._s3.get_bucket_versioning, bucket)
        lifecycle = await self._call(self._s3.get_bucket_lifecycle, bucket)
        days = lifecycle.rules[0].expiration.days if lifecycle and lifecycle.rules[0].expiration else None
        return Observation(
            state={
                "bucket": bucket,
                "versioning": versioning.status == ENABLED,
                "expireAfterDays": days,
                "policyMatches": tagged and await self._policy_matches(bucket),
                "loginWorks": await self._login_works(ctx, bucket),
            }
        )

    async def _check_owner(self, ctx: DriverContext, bucket: str) -> bool:
        """Whether the bucket carries our tag; raises NotOwned unless it is ours."""
        owner = await self._owner_tag(bucket)
        if owner == str(ctx.key):
            return True
        if owner is None and await self._login_works(ctx, bucket):
            return False  # created, not yet tagged: a crash in between
        whose = f"it holds data of Project {owner}" if owner else "it was not created by the operator"
        raise PermanentError(
            f"bucket {bucket} exists but {whose}; set spec.features.storage.bucket to another name",
            reason="NotOwned",
        )

    async def _owner_tag(self, bucket: str) -> str | None:
        tags: dict[str, str] = dict(await self._call(self._s3.get_bucket_tags, bucket) or {})
        return tags.get(OWNER_TAG)

    async def _policy_matches(self, bucket: str) -> bool:
        try:
            info = json.loads(await self._call(self._admin.policy_info, access_key(bucket)))
            user = json.loads(await self._call(self._admin.user_info, access_key(bucket)))
        except PermanentError:
            return False  # no such policy or user
        policy = info.get("Policy", info)
        attached = access_key(bucket) in str(user.get("policyName", "")).split(",")
        return attached and user.get("status") == "enabled" and _canonical(policy) == _canonical(bucket_policy(bucket))

    async def _login_works(self, ctx: DriverContext, bucket: str) -> bool:
        secret = await self._secrets.read(ctx) or {}
        if not secret.get(SECRET_KEY):
            return False
        client = self._server.as_user(access_key(bucket), secret[SECRET_KEY])
        try:
            await self._call(lambda: list(client.list_objects(bucket, prefix="codeb-probe/")))
        except PermanentError:
            return False
        return True

    async def apply(self, ctx: DriverContext, desired: State) -> None:
        bucket = str(desired["bucket"])
        # The Secret first: a crash after this line leaves a key the user will get.
        password = await ensure_password(self._secrets, ctx, SECRET_KEY)
        exists = await self._call(self._s3.bucket_exists, bucket)
        if exists:
            await self._check_owner(ctx, bucket)  # before touching a user that may be someone else's
        # The user before the bucket: it is how an untagged bucket is known to be ours.
        await self._call(self._admin.policy_add, access_key(bucket), policy=bucket_policy(bucket))
        await self._call(self._admin.user_add, access_key(bucket), password)
        try:
            await self._call(self._admin.attach_policy, [access_key(bucket)], user=access_key(bucket))
        except PermanentError:
            # MinIO refuses to attach a policy twice; any other refusal leaves it unattached.
            if not await self._policy_matches(bucket):
                raise
        if not exists:
            await self._call(self._s3.make_bucket, bucket)
        tags = Tags.new_bucket_tags()
        tags[OWNER_TAG] = str(ctx.key)
        await self._call(self._s3.set_bucket_tags, bucket, tags)
        status = ENABLED if desired["versioning"] else SUSPENDED
        await self._call(self._s3.set_bucket_versioning, bucket, VersioningConfig(status))
        await self._apply_lifecycle(bucket, desired["expireAfterDays"])
        await self._secrets.merge(ctx, {
            "S3_ENDPOINT": self._server.url,
            "S3_BUCKET": bucket, "S3_ACCESS_KEY": access_key(bucket),
        })  # fmt: skip

    async def _apply_lifecycle(self, bucket: str, days: Any) -> None:
        if days is None:
            await self._call(self._s3.delete_bucket_lifecycle, bucket)
            return
        rule = Rule(
            ENABLED, rule_filter=Filter(prefix=""), rule_id="codeb-expire", expiration=Expiration(days=int(days))
        )
        await self._call(self._s3.set_bucket_lifecycle, bucket, LifecycleConfig([rule]))

    async def delete(self, ctx: DriverContext, retain: bool) -> None:
        bucket = ctx.allocations.bucket
        if retain or bucket is None:
            return
        if await self._call(self._s3.bucket_exists, bucket):
            try:
                await self._check_owner(ctx, bucket)
            except PermanentError:
                return  # not ours: never deleted, and neither is its user
            objects = await self._call(
                lambda: list(self._s3.list_objects(bucket, recursive=True, include_version=True))
            )
            for obj in objects:
                await self._call(self._s3.remove_object, bucket, obj.object_name, version_id=obj.version_id)
            await self._call(self._s3.remove_bucket, bucket)
        for step in (self._admin.user_remove, self._admin.policy_remove):
            with contextlib.suppress(PermanentError):  # already gone
                await self._call(step, access_key(bucket))


async def user_exists(server: S3Server, user: str) -> bool:
    try:
        await server.call(server.admin.user_info, user)
    except PermanentError:
        return False
    return True


async def ensure_operator_bucket(server: S3Server, bucket: str, purpose: str) -> None:
    """A bucket only the operator's root credentials reach, tagged with its purpose.

    One that exists untagged is adopted only while no Project's user can open it (a crash
    between creating and tagging); one a Project holds, or tagged otherwise, is refused.
    """
    if await server.call(server.s3.bucket_exists, bucket):
        tags: dict[str, str] = dict(await server.call(server.s3.get_bucket_tags, bucket) or {})
        if tags.get(OPERATOR_TAG) == purpose:
            return
        if tags or await user_exists(server, access_key(bucket)):
            raise PermanentError(
                f"bucket {bucket} is not the operator's (it carries {sorted(tags) or 'a Project user'}); "
                "move it away so the operator can create its own",
                reason="OperatorBucketNotOwned",
            )
    else:
        await server.call(server.s3.make_bucket, bucket)
    tags_ = Tags.new_bucket_tags()
    tags_[OPERATOR_TAG] = purpose
    await server.call(server.s3.set_bucket_tags, bucket, tags_)
