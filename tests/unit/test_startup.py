"""Start-up survives kopf running it again after a failure (it binds, configures and reads once each)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import kopf
import pytest

from controller.errors import PermanentError, RetryableError
from controller.local.cluster import free_port
from controller.loop.reconciler import Reconciler
from controller.operator.config import OperatorConfig
from controller.operator.handlers import Runtime, start_up
from controller.operator.metrics import Metrics


class FlakyClaims:
    """The first ledger read fails the way an API server outage does; the second succeeds."""

    def __init__(self, *errors: Exception) -> None:
        self.errors = list(errors)
        self.reads = 0

    async def setup(self) -> None:
        self.reads += 1
        if self.errors:
            raise self.errors.pop(0)


def runtime(claims: FlakyClaims, port: int) -> Runtime:
    config = OperatorConfig(metrics_port=port)
    return Runtime(config, Reconciler({}, claims), Metrics())  # type: ignore[arg-type]


async def test_a_failed_first_ledger_read_is_retried_without_rebinding() -> None:
    port = free_port()
    claims = FlakyClaims(RetryableError("API server answered 503", delay=2))
    operator = runtime(claims, port)
    settings: Any = kopf.OperatorSettings()
    with pytest.raises(kopf.TemporaryError) as exc:
        await start_up(operator, settings)
    assert exc.value.delay == 2
    await start_up(operator, settings)  # kopf's retry: no EADDRINUSE, the ledgers read this time
    assert claims.reads == 2 and settings.posting.loggers is False and settings.posting.enabled
    metrics = httpx.get(f"http://127.0.0.1:{port}/metrics")
    assert metrics.status_code == 200 and "codeb_reconcile_duration_seconds" in metrics.text


async def test_a_refusal_stops_start_up_with_the_reason() -> None:
    claims = FlakyClaims(PermanentError("namespace codeb-system: API server refused (403 Forbidden)"))
    with pytest.raises(kopf.PermanentError, match="403 Forbidden"):
        await start_up(runtime(claims, 0), kopf.OperatorSettings())


def test_free_ports_are_outside_the_kernels_ephemeral_range_and_never_handed_out_twice() -> None:
    """An outgoing connection can take an ephemeral port before its server binds it; these it never takes."""
    low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    ports = [free_port() for _ in range(50)]
    assert len(set(ports)) == 50
    assert all(10000 <= port < low for port in ports)
