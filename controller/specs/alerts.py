"""A Project's alert rules, from its ``monitoring.alerts``, over its Caddy's per-host series (pure).

Caddy counts every request per host (`apps.http.metrics.per_host`) and by the route's outermost
handler, the subroute each Project's route is, in the operator's server: the Project's traffic as
its users see it, `code` for the error rate and the duration histogram for the 95th percentile.
The rules go to a PrometheusRule object beside the Project (`controller.drivers.alerts`), whose
`spec.groups` is a Prometheus rule file as it is. A suspended Project has none: its maintenance
page answers 503 on purpose.
"""

from __future__ import annotations

from typing import Any

from controller.loop.interface import DriverContext
from controller.loop.planner import State
from controller.specs.caddy import SERVER

SERIES = "caddy_http_request_duration_seconds"
ERROR_RATE = "CodebProjectErrorRate"
LATENCY = "CodebProjectLatencyP95"
WINDOW = "5m"
RUNBOOK = "docs/operations.md#project-alerts"
# The alert's value, as Prometheus' templates print it.
VALUE = '{{{{ $value | printf "%.{digits}f" }}}}'


def host_pattern(domains: list[str]) -> str:
    """A PromQL regex (as written inside a double-quoted string) matching exactly these hosts; a wildcard
    matches one label, as Caddy's does. Domains hold only letters, digits, '-', '.' and a leading '*.'."""

    def one(domain: str) -> str:
        if domain.startswith("*."):
            return "[^.]+" + _literal(domain[1:])
        return _literal(domain)

    # A client on another port than 443 sends it in Host, and Caddy's label keeps it.
    return "(" + "|".join(one(domain) for domain in sorted(domains)) + ")(:[0-9]+)?"


def _literal(name: str) -> str:
    """Dots matched as dots: a regex's backslash, doubled for the PromQL string that holds it."""
    return name.replace(".", "\\\\.")


def _selector(hosts: str, extra: str = "") -> str:
    # Caddy instruments a route's outermost handler: the subroute every Project's route is (`render_route`).
    return '{server="' + SERVER + '",handler="subroute",host=~"' + hosts + '"' + extra + "}"


def render_group(ctx: DriverContext, desired: State) -> dict[str, Any]:
    """The Project's rule group: error rate and p95 latency over its thresholds (`desired` from the planner)."""
    figures = traffic_queries(list(desired["hosts"]), WINDOW)
    labels = {"severity": "warning", "namespace": ctx.key.namespace, "project": ctx.key.name}
    project = f"{ctx.key.namespace}/{ctx.key.name}"
    held = f"{desired['forSeconds']}s"
    return {
        "name": f"codeb-project.{ctx.key.namespace}.{ctx.key.name}",
        "rules": [
            {
                "alert": ERROR_RATE,
                "expr": f"{figures['errorPercent']} > {desired['errorRatePercent']:g}",
                "for": held,
                "labels": dict(labels),
                "annotations": {
                    "summary": f"Project {project}: more than {desired['errorRatePercent']:g}% of requests fail",
                    "description": VALUE.format(digits=1)
                    + f"% of its requests through Caddy answered 5xx over the last {WINDOW} "
                    f"(monitoring.alerts.errorRatePercent). `codeb logs {ctx.key.name} -n {ctx.key.namespace}` shows "
                    "what the application said.",
                    "runbook_url": RUNBOOK,
                },
            },
            {
                "alert": LATENCY,
                "expr": f"{figures['latencyP95Ms']} > {desired['latencyP95Ms']}",
                "for": held,
                "labels": dict(labels),
                "annotations": {
                    "summary": f"Project {project}: p95 latency above {desired['latencyP95Ms']} ms",
                    "description": "The 95th percentile of its requests through Caddy took "
                    + VALUE.format(digits=0)
                    + f" ms over the last {WINDOW} (monitoring.alerts.latencyP95Ms).",
                    "runbook_url": RUNBOOK,
                },
            },
        ],
    }


def traffic_queries(domains: list[str], window: str = "1h") -> dict[str, str]:
    """A Project's traffic over ``window``, as PromQL: what its alert rules compare with their thresholds,
    and what `codeb status` shows."""
    hosts = host_pattern(domains)
    every, failing = _selector(hosts), _selector(hosts, ',code=~"5.."')
    total = f"sum(rate({SERIES}_count{every}[{window}]))"
    return {
        "requestsPerSecond": total,
        "errorPercent": f"100 * (sum(rate({SERIES}_count{failing}[{window}])) or vector(0)) / {total}",
        "latencyP95Ms": f"1000 * histogram_quantile(0.95, sum by (le) (rate({SERIES}_bucket{every}[{window}])))",
    }
