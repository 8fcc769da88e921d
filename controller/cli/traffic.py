"""A Project's traffic over the last hour, as a Prometheus that scrapes its Caddy says (`codeb status`)."""

from __future__ import annotations

import math
from typing import Any
from urllib.parse import urlsplit

import httpx

from controller.specs.alerts import traffic_queries

QUERY_SECONDS = 5.0


def project_traffic(prometheus: str, body: dict[str, Any], url: str | None) -> dict[str, Any]:
    """Requests per second, share of 5xx and p95 latency (ms) of the Project's domains over the last hour;
    a figure Prometheus has no data for is None. ``url``: the Project's URL (its derived domain, if any)."""
    domains = list(((body.get("spec") or {}).get("environment") or {}).get("domains") or [])
    if not domains and url:
        domains = [urlsplit(url).hostname or ""]
    if not domains:
        return {"error": "the Project routes no domain"}
    figures: dict[str, Any] = {}
    try:
        with httpx.Client(timeout=QUERY_SECONDS) as client:
            for name, query in traffic_queries(domains).items():
                answer = client.get(f"{prometheus.rstrip('/')}/api/v1/query", params={"query": query})
                answer.raise_for_status()
                figures[name] = _value(answer.json())
    except (httpx.HTTPError, ValueError) as exc:
        return {"error": f"Prometheus at {prometheus} did not answer: {type(exc).__name__}"}
    return figures


def _value(answer: dict[str, Any]) -> float | None:
    result = (answer.get("data") or {}).get("result") or []
    if not result:
        return None
    value = float(result[0]["value"][1])
    return None if math.isnan(value) else round(value, 3)


def traffic_line(traffic: dict[str, Any]) -> str:
    if "error" in traffic:
        return f"  traffic:   {traffic['error']}"
    rate, errors, p95 = (traffic.get(k) for k in ("requestsPerSecond", "errorPercent", "latencyP95Ms"))
    if rate is None:
        return "  traffic:   none in the last hour"
    shown_errors = f"{errors:.1f}% 5xx" if errors is not None else "5xx -"
    shown_p95 = f"p95 {p95:.0f} ms" if p95 is not None else "p95 -"
    return f"  traffic:   {rate:.2f} req/s, {shown_errors}, {shown_p95} (last hour)"
