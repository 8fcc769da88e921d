"""S3 on MinIO: one bounded HTTP pool, timeouts that fail fast, one translation of its errors.

The MinIO clients are blocking, so every call runs in a worker thread (`call`). Only
error codes reach our errors, never MinIO's text: it can echo the request.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Callable
from typing import Any, TypeVar

import urllib3
from minio import Minio
from minio.credentials.providers import StaticProvider
from minio.error import MinioAdminException, S3Error
from minio.minioadmin import MinioAdmin

from controller.errors import PermanentError, RetryableError

T = TypeVar("T")


# Answers of a MinIO that is starting, restarting or overloaded: an outage that passes, not a refusal.
PASSING_CODES = frozenset({"XMinioServerNotInitialized", "ServiceUnavailable", "SlowDown", "SlowDownRead",
                           "SlowDownWrite", "InternalError", "RequestTimeout"})  # fmt: skip


class S3Server:
    """One MinIO server: S3 and its admin API as the root user, and S3 as a tenant's key."""

    def __init__(self, endpoint: str, root_user: str, root_password: str, secure: bool = False,
                 timeout: float = 10.0, ca_pem: str | None = None) -> None:  # fmt: skip
        self.endpoint, self.secure, self.ca_pem = endpoint, secure, ca_pem
        self.credentials = (root_user, root_password)
        # The Platform's own CA when it names one: then that CA alone is trusted for this server.
        tls = ssl.create_default_context(cadata=ca_pem) if ca_pem else None
        # Fail fast on an outage instead of urllib3's default retries; one pool for every client here.
        self._http = urllib3.PoolManager(timeout=urllib3.Timeout(connect=min(3.0, timeout), read=timeout),
                                         retries=urllib3.Retry(total=0), maxsize=8, ssl_context=tls)  # fmt: skip
        self.s3 = Minio(endpoint, access_key=root_user, secret_key=root_password, secure=secure, http_client=self._http)
        self.admin = MinioAdmin(endpoint=endpoint, credentials=StaticProvider(root_user, root_password),
                                secure=secure, http_client=self._http)  # fmt: skip

    @property
    def url(self) -> str:
        return f"{'https' if self.secure else 'http'}://{self.endpoint}"

    def as_user(self, access_key: str, secret_key: str) -> Minio:
        """S3 with a tenant's key, on the same pool."""
        return Minio(self.endpoint, access_key=access_key, secret_key=secret_key, secure=self.secure,
                     http_client=self._http)  # fmt: skip

    async def call(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """One blocking client call in a thread; a refusal is permanent, anything else an outage."""
        try:
            return await asyncio.to_thread(fn, *args, **kwargs)
        except (urllib3.exceptions.HTTPError, OSError):
            raise RetryableError(f"MinIO at {self.endpoint} is unreachable", reason="StorageUnavailable") from None
        except S3Error as exc:
            if exc.code in PASSING_CODES:
                raise RetryableError(f"MinIO at {self.endpoint} is not serving yet ({exc.code})",
                                     reason="StorageUnavailable") from None  # fmt: skip
            raise PermanentError(f"MinIO refused the request ({exc.code})", reason="StorageRefused") from None
        except MinioAdminException as exc:
            raise PermanentError(f"MinIO admin API refused the request ({exc._code})",
                                 reason="StorageRefused") from None  # fmt: skip
