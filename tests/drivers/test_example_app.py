"""The example application (deploy/hello/app.py) against real PostgreSQL, Redis and MinIO, under concurrency.

Its services are provisioned by the operator's own drivers, so it runs with exactly the
credentials and limits a Project gets; four clients then visit it at once.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from controller.drivers.minio import MinioDriver
from controller.drivers.postgres import PostgresDriver
from controller.drivers.redis import RedisDriver
from controller.local.cluster import free_port
from controller.loop.planner import Component, desired_state
from controller.loop.secrets import MemorySecrets
from tests.drivers_common import context
from tests.helpers import wait_for
from tests.servers import start_minio, start_postgres, start_redis

APP = Path(__file__).resolve().parents[2] / "deploy" / "hello" / "app.py"
CLIENTS, REQUESTS_EACH = 4, 40


@pytest.fixture(scope="module")
def app_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    pg, cache, s3 = start_postgres(), start_redis(), start_minio()
    app: subprocess.Popen[bytes] | None = None
    try:
        secrets = MemorySecrets()
        ctx, spec = context("hello", features={"database": {"version": "15"}, "redis": {}, "storage": {}})
        desired = desired_state(spec, ctx.allocations)
        drivers = {
            Component.database: PostgresDriver(pg.host, pg.port, pg.admin_user, pg.admin_password, secrets),
            Component.cache: RedisDriver(cache.host, cache.port, cache.password, secrets),
            Component.storage: MinioDriver(s3.endpoint, s3.root_user, s3.root_password, secrets),
        }

        async def provision() -> None:
            for component, driver in drivers.items():
                await driver.apply(ctx, desired[component])

        asyncio.run(provision())
        env = dict(secrets.stored("team", ctx.allocations.connection_secret or "") or {})
        port = free_port()
        log = (tmp_path_factory.mktemp("app") / "app.log").open("wb")
        app = subprocess.Popen([sys.executable, str(APP)], env={**env, "PORT": str(port), "HOST": "127.0.0.1"},
                               stdout=log, stderr=subprocess.STDOUT)  # fmt: skip
        url = f"http://127.0.0.1:{port}"
        wait_for(lambda: _answers(url), timeout=30, what="the example app answers")
        yield url
    finally:
        if app is not None:
            app.terminate()
            app.wait(10)
        for server in (pg, cache, s3):
            server.stop()


def _answers(url: str) -> bool:
    try:
        return httpx.get(f"{url}/api/health", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def test_every_concurrent_visit_is_counted_and_read_back(app_url: str) -> None:
    answers: list[dict[str, Any]] = []
    failures: list[str] = []
    lock = threading.Lock()

    def client(index: int) -> None:
        with httpx.Client(timeout=10) as http:
            for n in range(REQUESTS_EACH):
                path = ("/api/visit", "/api/health", "/")[(index + n) % 3]
                response = http.get(f"{app_url}{path}")
                with lock:
                    if response.status_code != 200:
                        failures.append(f"{path}: {response.status_code} {response.text[:200]}")
                    elif path == "/api/visit":
                        answers.append(response.json())

    started = time.monotonic()
    threads = [threading.Thread(target=client, args=(i,)) for i in range(CLIENTS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert not any(t.is_alive() for t in threads), "clients still running after 120 s"
    assert failures == [], f"{len(failures)} of {CLIENTS * REQUESTS_EACH} failed, e.g. {failures[:3]}"
    assert all(a["database"]["ok"] and a["redis"]["ok"] and a["bucket"]["readBack"] for a in answers), answers
    # Redis's INCR is atomic: each visit got a number of its own. The database's count is the rows each visit
    # saw (at READ COMMITTED two at once may see the same committed rows), so what must hold there is that no
    # visit was lost: the count after them all is exactly their number.
    hits = [a["redis"]["hits"] for a in answers]
    assert len(set(hits)) == len(hits)
    final = httpx.get(f"{app_url}/api/visit", timeout=10).json()
    visits_made = CLIENTS * REQUESTS_EACH - sum(1 for i in range(CLIENTS) for n in range(REQUESTS_EACH)
                                                if (i + n) % 3 == 1)  # fmt: skip
    assert final["database"]["visits"] == visits_made + 1, (final, time.monotonic() - started)
    assert final["redis"]["hits"] == visits_made + 1
    assert max(a["database"]["visits"] for a in answers) <= visits_made
