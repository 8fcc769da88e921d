"""What the operator receives over HTTP: Alertmanager's webhooks for the Projects' alerts, Git hosts'
push webhooks (`controller.operator.pushes`), and registries' clients asking for a token
(`controller.operator.registry_tokens`).

Alertmanager (configured as docs/operations.md shows) posts the operator's alerts (`ERROR_RATE`,
`LATENCY`, labelled with the Project's namespace and name) to ``POST /alertmanager`` as they fire
and resolve, with a bearer token only the two share (`CODEB_INBOUND_TOKEN_FILE`). Each is told to
its Project's receivers through the `Notifier`, so the receivers' URLs stay in the Project's
Secrets and every check on them holds; Alertmanager itself needs no tenant's URL.

Whoever reaches the port may send anything, and whoever writes a rule chooses its labels and
annotations: a request is read only with the token, its body is capped at `BODY_BYTES`, at most
`ALERTS` alerts of one delivery are read, and the words a receiver hears are the operator's own
(the alert's name and the Project's own threshold), never an annotation. Which namespace an alert
is told in rests on its `namespace` label: the Prometheus Operator's `enforcedNamespaceLabel`
keeps a rule from naming another namespace than its own (docs/security.md).
"""

from __future__ import annotations

import hmac
import re
from pathlib import Path
from typing import Any, Protocol

import structlog
from aiohttp import web
from pydantic import ValidationError

from controller.errors import CodebError
from controller.loop.naming import ProjectKey
from controller.operator.notify import News
from controller.operator.pushes import Pushes
from controller.operator.registry_tokens import RegistryTokens
from controller.specs.alerts import ERROR_RATE, LATENCY
from schemas.base import DNS_LABEL
from schemas.sections.monitoring import Alerts, NotifyEvent

log = structlog.get_logger("codeb.inbound")

BODY_BYTES = 1024 * 1024
ALERTS = 100
TOKEN_BYTES = 4096
NAMESPACE = re.compile(DNS_LABEL)
OBJECT_NAME = re.compile(r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$")  # a DNS subdomain, as Kubernetes names objects


class Projects(Protocol):
    async def read_project(self, namespace: str, name: str) -> dict[str, Any] | None: ...


class Announcer(Protocol):
    def announce(self, key: ProjectKey, spec: dict[str, Any], news: list[News]) -> None: ...


def alert_news(alert: object, spec: dict[str, Any]) -> News | None:
    """What a receiver hears of one of Alertmanager's alerts, in the operator's words; None: not ours."""
    if not isinstance(alert, dict) or not isinstance(alert.get("labels"), dict):
        return None
    name = alert["labels"].get("alertname")
    thresholds = _thresholds(spec)
    if name == ERROR_RATE:
        what = f"more than {thresholds.error_rate_percent:g}% of requests answer 5xx"
    elif name == LATENCY:
        what = f"p95 latency above {thresholds.latency_p95_ms} ms"
    else:
        return None
    event = NotifyEvent.alert_resolved if alert.get("status") == "resolved" else NotifyEvent.alert_firing
    return News(event, None, f"{name}: {what}")


def _thresholds(spec: dict[str, Any]) -> Alerts:
    """The Project's monitoring.alerts as the manifest defines them (its defaults included)."""
    try:
        return Alerts.model_validate((spec.get("monitoring") or {}).get("alerts") or {})
    except ValidationError:
        return Alerts()  # the spec's own validation says why; the words still name a threshold


def alert_project(alert: object) -> tuple[str, str] | None:
    """The (namespace, name) an alert's labels name, when both are names a Project can have."""
    labels = alert.get("labels") if isinstance(alert, dict) else None
    if not isinstance(labels, dict):
        return None
    namespace, name = labels.get("namespace"), labels.get("project")
    if not (isinstance(namespace, str) and isinstance(name, str)):
        return None
    fits = len(namespace) <= 63 and len(name) <= 253
    return (namespace, name) if fits and NAMESPACE.fullmatch(namespace) and OBJECT_NAME.fullmatch(name) else None


class Inbound:
    """The operator's HTTP listener for what is pushed to it; started once, on kopf's start-up."""

    def __init__(self, projects: Projects, notifier: Announcer, token_file: Path | None,
                 pushes: Pushes | None = None, registry: RegistryTokens | None = None) -> None:  # fmt: skip
        self._projects, self._notifier, self._token_file = projects, notifier, token_file
        self._pushes = pushes  # Git hosts' push webhooks (`controller.operator.pushes`)
        self._registry = registry  # the Platforms' registries' token issuer (`controller.operator.registry_tokens`)
        self._runner: web.AppRunner | None = None

    def app(self) -> web.Application:
        app = web.Application(client_max_size=BODY_BYTES)
        app.router.add_post("/alertmanager", self._alertmanager)
        if self._pushes is not None:
            app.router.add_post("/push/{namespace}/{name}", self._pushes.handle)
        if self._registry is not None:
            app.router.add_get("/registry/token", self._registry.handle)
        return app

    async def start(self, port: int, address: str = "0.0.0.0") -> None:
        """Listen on ``port`` (0: not at all); a second call is a no-op."""
        if not port or self._runner is not None:
            return
        runner = web.AppRunner(self.app(), access_log=None)
        await runner.setup()
        await web.TCPSite(runner, address, port).start()
        self._runner = runner

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def _alertmanager(self, request: web.Request) -> web.Response:
        token = self._token()
        if token is None:
            return web.Response(status=404, text="alert delivery is off: no CODEB_INBOUND_TOKEN_FILE is readable\n")
        given = request.headers.get("Authorization", "")
        if not hmac.compare_digest(given.encode(), f"Bearer {token}".encode()):
            return web.Response(status=401, text="a bearer token is needed\n")
        try:
            body = await request.json()
        except ValueError:
            return web.Response(status=400, text="the body is not JSON\n")
        alerts = body.get("alerts") if isinstance(body, dict) else None
        if not isinstance(alerts, list):
            return web.Response(status=400, text="no alerts list: is this an Alertmanager webhook (version 4)?\n")
        told = 0
        for alert in alerts[:ALERTS]:
            told += await self._tell(alert)
        return web.json_response({"told": told})

    async def _tell(self, alert: object) -> int:
        named = alert_project(alert)
        if named is None:
            return 0
        try:
            raw = await self._projects.read_project(*named)
        except CodebError as exc:
            log.warning("alert not told: the Project could not be read", namespace=named[0], project=named[1],
                        reason=exc.message)  # fmt: skip
            return 0
        uid = (raw or {}).get("metadata", {}).get("uid")
        spec = dict((raw or {}).get("spec") or {})
        news = alert_news(alert, spec)
        if not uid or news is None:
            return 0
        self._notifier.announce(ProjectKey(*named, uid), spec, [news])
        return 1

    def _token(self) -> str | None:
        """The shared token, read at each delivery (a rotated Secret's new value counts at once)."""
        if self._token_file is None:
            return None
        try:
            with self._token_file.open("rb") as file:
                token = file.read(TOKEN_BYTES).decode().strip()
        except (OSError, UnicodeDecodeError):
            return None
        return token or None
