"""Notifications: a Project's news, told to the receivers its manifest names (best effort).

A rollout that ended in a pass (succeeded or failed, a first deploy included), a post-deploy
hook that failed, a backup that failed and the Project's alerts (`controller.operator.inbound`)
are sent outside the pass, in the background: at most `CONCURRENCY` at a time and `BACKLOG`
waiting (beyond that, dropped and counted), each try within `SEND_SECONDS`, tried twice. A
pass whose status write is lost is decided again, so a receiver may hear of one rollout twice;
an operator killed mid-send may leave one unsaid. Both are said in docs/operations.md.

A receiver's URL is a credential (a Slack webhook's is), so it comes from a Secret of the
Project's namespace (`KubeClient.read_secret`'s rules apply) and appears in no log, Event or
metric. It must be HTTPS, and its host must not be or resolve to an internal address
(`resolve_target`): the connection goes to the address that was checked, with the name kept
for TLS. What a receiver answers is not read.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol

import httpx
import structlog
from pydantic import TypeAdapter, ValidationError

from controller.clients.http import read_bounded
from controller.clients.targets import resolve_target
from controller.errors import CodebError
from controller.loop.naming import ProjectKey
from controller.loop.passes import Outcome
from schemas.sections.monitoring import NotifyEvent, Receiver, ReceiverKind

log = structlog.get_logger("codeb.notify")

CONCURRENCY = 4
BACKLOG = 200
SEND_SECONDS = 10.0
RETRY_SECONDS = 2.0
RESULTS = {"Succeeded": NotifyEvent.deploy_succeeded, "Failed": NotifyEvent.deploy_failed}
RECEIVERS = TypeAdapter(list[Receiver])
WORDS = {NotifyEvent.deploy_succeeded: "deployed", NotifyEvent.deploy_failed: "failed to deploy",
         NotifyEvent.rolled_back: "rolled back",
         NotifyEvent.hook_failed: "post-deploy hook failed", NotifyEvent.backup_failed: "backup failed",
         NotifyEvent.alert_firing: "alert firing", NotifyEvent.alert_resolved: "alert resolved"}  # fmt: skip


class SecretSource(Protocol):
    async def read_secret(self, namespace: str, name: str, project: str | None = None) -> dict[str, str] | None: ...


@dataclass(frozen=True)
class News:
    event: NotifyEvent
    revision: str | None
    message: str


def news_of(outcome: Outcome) -> list[News]:
    """What a pass has to tell: the rollout that ended in it, and each hook that failed."""
    found = []
    decided = outcome.rollout
    if decided is not None and decided.finished is not None and decided.finished[0] in RESULTS:
        record, event = decided.rollout, RESULTS[decided.finished[0]]
        if event is NotifyEvent.deploy_succeeded and record is not None and _served_before(outcome, record.release):
            event = NotifyEvent.rolled_back
        revision = record.revision if record is not None else None
        why = record.message if record is not None and event is NotifyEvent.deploy_failed else ""  # what failed
        found.append(News(event, revision, why))
    found += [News(NotifyEvent.hook_failed, None, e.message) for e in outcome.events if e.reason == "HookFailed"]
    return found


def _served_before(outcome: Outcome, release: str) -> bool:
    """An earlier deploy of this very release succeeded too (history holds this one and that one)."""
    return sum(1 for d in outcome.status.deployments if d.release == release and d.result == "Succeeded") > 1


class Notifier:
    def __init__(self, secrets: SecretSource, allow_internal: bool, client: httpx.AsyncClient | None = None,
                 counted: Any = None) -> None:  # fmt: skip
        self._secrets, self._allow_internal = secrets, allow_internal
        self._client = client or httpx.AsyncClient(timeout=SEND_SECONDS, follow_redirects=False)
        self._slots = asyncio.Semaphore(CONCURRENCY)
        self._pending: set[asyncio.Task[None]] = set()
        self._counted = counted  # a Counter with a result label, or None

    def tell(self, key: ProjectKey, spec: dict[str, Any], outcome: Outcome) -> None:
        """Send this pass's news to the Project's receivers that listen for it, in the background."""
        self.announce(key, spec, news_of(outcome))

    def announce(self, key: ProjectKey, spec: dict[str, Any], news: list[News]) -> None:
        """Send ``news`` to the Project's receivers that listen for it (``spec``: the Project's), in the
        background: a pass's rollout news, a backup's failure, an alert Alertmanager delivered."""
        if not news:
            return
        for receiver in _receivers(spec):
            for item in (n for n in news if n.event in receiver.events):
                if len(self._pending) >= BACKLOG:
                    self._count("dropped")
                    continue
                task = asyncio.get_running_loop().create_task(self._send(key, receiver, item))
                self._pending.add(task)
                task.add_done_callback(self._pending.discard)

    async def drain(self) -> None:
        """Wait for what is being sent (tests, and a clean shutdown)."""
        while self._pending:
            await asyncio.gather(*list(self._pending), return_exceptions=True)

    async def _send(self, key: ProjectKey, receiver: Receiver, news: News) -> None:
        async with self._slots:
            for attempt in (1, 2):
                try:
                    await self._post(key, receiver, news)
                except CodebError as exc:
                    why = exc.message
                except httpx.HTTPError as exc:
                    why = f"{type(exc).__name__}: no answer within {SEND_SECONDS:g} s or refused"
                else:
                    self._count("sent")
                    return
                if attempt == 1:
                    await asyncio.sleep(RETRY_SECONDS)
            self._count("failed")
            log.warning("notification not sent", namespace=key.namespace, project=key.name, receiver=receiver.name,
                        event=news.event.value, reason=why)  # fmt: skip

    async def _post(self, key: ProjectKey, receiver: Receiver, news: News) -> None:
        field = f"spec.monitoring.notify[{receiver.name}]"
        data = await self._secrets.read_secret(key.namespace, receiver.url_secret_ref, project=key.name)
        url = _url(field, (data or {}).get("url", ""), self._allow_internal)
        address = await resolve_target(url.host, field, self._allow_internal)
        body = _payload(receiver.kind, key, news)
        status, _ = await read_bounded(self._client, "POST", str(url.copy_with(host=address)), SEND_SECONDS,
                                       lambda _: False, body, {"Host": url.netloc.decode()}, sni=url.host)  # fmt: skip
        if not 200 <= status < 300:
            raise CodebError(f"{field}: the receiver answered {status}", reason="NotificationRefused")

    def _count(self, result: str) -> None:
        if self._counted is not None:
            self._counted.labels(result).inc()


def _receivers(spec: dict[str, Any]) -> list[Receiver]:
    raw = (spec.get("monitoring") or {}).get("notify") or []
    try:
        return RECEIVERS.validate_python(raw)
    except ValidationError:
        return []  # the spec's own validation says why; a pass with an invalid spec has no news anyway


def _url(field: str, written: str, allow_internal: bool) -> httpx.URL:
    """The receiver's URL from its Secret: HTTPS (plain HTTP only where internal targets are allowed)."""
    try:
        url = httpx.URL(written.strip())
    except (httpx.InvalidURL, TypeError):
        raise CodebError(f"{field}: the Secret's url is not a URL", reason="NotificationURLInvalid") from None
    schemes = ("https", "http") if allow_internal else ("https",)
    if url.scheme not in schemes or not url.host:
        raise CodebError(f"{field}: the Secret's url must be an https:// URL", reason="NotificationURLInvalid")
    return url


def _payload(kind: ReceiverKind, key: ProjectKey, news: News) -> dict[str, Any]:
    what = WORDS[news.event]
    revision = f" revision {news.revision}" if news.revision else ""
    text = f"{key.namespace}/{key.name}{revision}: {what}" + (f" ({news.message})" if news.message else "")
    if kind is ReceiverKind.slack:
        return {"text": text}
    return {"project": f"{key.namespace}/{key.name}", "event": news.event.value, "revision": news.revision,
            "message": news.message, "text": text, "at": datetime.now(UTC).isoformat()}  # fmt: skip
