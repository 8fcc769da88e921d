"""A MinIO that is starting or overloaded is an outage that passes, not a refusal (controller.clients.s3)."""

from __future__ import annotations

import pytest
from minio.error import S3Error

from controller.clients.s3 import S3Server
from controller.errors import PermanentError, RetryableError


def answering(code: str) -> S3Error:
    return S3Error(None, code, "said by the test", "/codeb-final-dumps", "req-1", "host-1")  # type: ignore[arg-type]


@pytest.mark.parametrize("code", ["XMinioServerNotInitialized", "SlowDown", "ServiceUnavailable"])
async def test_a_minio_not_ready_yet_is_retried_not_failed(code: str) -> None:
    def starting() -> None:
        raise answering(code)

    with pytest.raises(RetryableError) as exc:
        await S3Server("127.0.0.1:9", "root", "password").call(starting)
    assert exc.value.reason == "StorageUnavailable" and code in exc.value.message


async def test_a_refusal_is_permanent() -> None:
    def refused() -> None:
        raise answering("AccessDenied")

    with pytest.raises(PermanentError) as exc:
        await S3Server("127.0.0.1:9", "root", "password").call(refused)
    assert exc.value.reason == "StorageRefused"
