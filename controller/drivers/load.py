"""The load on a Project, as the operator's Prometheus sees it: what autoscaling decides from.

The figure is Caddy's count of the requests to the Project's domains over the last minute (the
same series its alert rules and `codeb status` read, `controller.specs.alerts`). Prometheus is the
operator's own (`CODEB_PROMETHEUS_URL`), but it is still asked within `QUERY_SECONDS` and read to
at most `BODY_BYTES`, and an answer is kept for `KEEP_SECONDS` per Project, so a fleet's passes
make a bounded number of queries and a Prometheus that hangs holds up no pass for long.
"""

from __future__ import annotations

import json
import math
import time

import httpx
import structlog

from controller.clients.http import read_bounded
from controller.specs.alerts import traffic_queries

log = structlog.get_logger("codeb.load")

WINDOW = "1m"
QUERY_SECONDS = 5.0
BODY_BYTES = 64 * 1024
KEEP_SECONDS = 10.0


class PrometheusLoad:
    def __init__(self, url: str, client: httpx.AsyncClient | None = None) -> None:
        self._url = url.rstrip("/")
        self._client = client or httpx.AsyncClient(timeout=QUERY_SECONDS, follow_redirects=False)
        self._kept: dict[tuple[str, ...], tuple[float, float | None]] = {}

    async def requests_per_second(self, domains: list[str]) -> float | None:
        """Requests per second to ``domains`` over the last minute; None when Prometheus does not say."""
        key = tuple(sorted(domains))
        if not key:
            return None
        kept = self._kept.get(key)
        if kept is not None and time.monotonic() - kept[0] < KEEP_SECONDS:
            return kept[1]
        figure = await self._ask(traffic_queries(list(key), WINDOW)["requestsPerSecond"])
        if len(self._kept) > 10_000:  # the fleet's size at most: forget all rather than grow
            self._kept.clear()
        self._kept[key] = (time.monotonic(), figure)
        return figure

    async def _ask(self, query: str) -> float | None:
        url = str(httpx.URL(f"{self._url}/api/v1/query", params={"query": query}))
        try:
            status, body = await read_bounded(self._client, "GET", url, QUERY_SECONDS, lambda _: True,
                                              limit=BODY_BYTES)  # fmt: skip
            if status != 200:
                raise ValueError(f"answered {status}")
            result = json.loads(body)["data"]["result"]
            # No request counted in the window: no load.
            value = float(result[0]["value"][1]) if result else 0.0
        except (httpx.HTTPError, ValueError, KeyError, TypeError, IndexError) as exc:
            log.warning("no load figure from Prometheus", reason=f"{type(exc).__name__}: {str(exc)[:200]}")
            return None
        return None if math.isnan(value) else value
