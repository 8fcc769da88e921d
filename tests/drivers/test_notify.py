"""Deploy notifications against a real HTTP receiver on loopback: what is sent, to whom, and what is refused.

The receiver's URL comes from a Secret (a stand-in store here; `KubeClient.read_secret` in the
operator), must be HTTPS unless internal targets are allowed, and an internal address is refused
outright; a receiver that hangs holds nothing for longer than the send timeout.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, ClassVar

import pytest

from controller.loop.naming import ProjectKey
from controller.loop.passes import Event, Outcome
from controller.operator import notify
from controller.operator.metrics import Metrics
from controller.operator.notify import Notifier, news_of
from schemas.project import DeploymentRecord, ProjectStatus, RolloutStatus, RolloutStep
from schemas.sections.monitoring import NotifyEvent

KEY = ProjectKey("team", "shop", "uid-1")


class Receiver(BaseHTTPRequestHandler):
    received: ClassVar[list[dict[str, Any]]] = []
    hang: ClassVar[float] = 0.0

    def do_POST(self) -> None:
        time.sleep(self.hang)
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        Receiver.received.append({"path": self.path, "body": body})
        self.send_response(204)
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture()
def receiver() -> Iterator[str]:
    Receiver.received.clear()
    Receiver.hang = 0.0
    server = ThreadingHTTPServer(("127.0.0.1", 0), Receiver)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


@dataclass
class Secrets:
    data: dict[str, dict[str, str]] = field(default_factory=dict)

    async def read_secret(self, namespace: str, name: str, project: str | None = None) -> dict[str, str] | None:
        assert (namespace, project) == (KEY.namespace, KEY.name)  # a Project's own namespace, checked as its
        return self.data.get(name)


@dataclass
class Decision:
    rollout: RolloutStatus | None
    finished: tuple[str, float] | None


def outcome(result: str | None, *events: Event) -> Outcome:
    failed = result == "Failed"
    record = RolloutStatus(release="c2", revision="r2", step=RolloutStep.failed if failed else RolloutStep.succeeded,
                           started_at=datetime.now(UTC),
                           message="green failed 3 consecutive health checks" if failed else "")  # fmt: skip
    decided = Decision(record, (result, 4.2) if result else None)
    return Outcome(ProjectStatus(), list(events), rollout=decided)  # type: ignore[arg-type]


def spec(*receivers: dict[str, Any]) -> dict[str, Any]:
    return {"monitoring": {"notify": list(receivers)}}


async def test_each_receiver_hears_what_it_listens_for_in_its_own_shape(receiver: str) -> None:
    secrets = Secrets({"slack-hook": {"url": f"{receiver}/slack"}, "ops-hook": {"url": f"{receiver}/ops"}})
    metrics = Metrics()
    notifier = Notifier(secrets, allow_internal=True, counted=metrics.notifications)
    receivers = spec({"name": "team", "kind": "slack", "urlSecretRef": "slack-hook"},
                     {"name": "ops", "urlSecretRef": "ops-hook", "events": ["DeployFailed", "HookFailed"]})  # fmt: skip
    notifier.tell(KEY, receivers, outcome("Succeeded"))
    notifier.tell(KEY, receivers, outcome("Failed", Event("Warning", "HookFailed", "migrate on green: exit 1")))
    notifier.tell(KEY, receivers, outcome(None, Event("Normal", "TrafficSwitched", "blue serves")))  # no news
    await notifier.drain()
    by_path = sorted((r["path"], r["body"].get("event") or r["body"]["text"]) for r in Receiver.received)
    assert by_path == [
        ("/ops", "DeployFailed"), ("/ops", "HookFailed"),
        ("/slack", "team/shop revision r2: deployed"),
        ("/slack", "team/shop revision r2: failed to deploy (green failed 3 consecutive health checks)"),
        ("/slack", "team/shop: post-deploy hook failed (migrate on green: exit 1)"),
    ]  # fmt: skip
    webhook = next(r["body"] for r in Receiver.received if r["body"].get("event") == "DeployFailed")
    assert webhook["project"] == "team/shop" and webhook["revision"] == "r2"
    assert metrics.registry.get_sample_value("codeb_notifications_total", {"result": "sent"}) == 5


async def test_a_receiver_that_is_internal_plain_http_missing_or_hanging_is_not_waited_for(
    receiver: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(notify, "SEND_SECONDS", 0.5)
    monkeypatch.setattr(notify, "RETRY_SECONDS", 0.0)
    port = receiver.rsplit(":", 1)[1]
    secrets = Secrets({"plain": {"url": receiver}, "inside": {"url": f"https://127.0.0.1:{port}/"},
                       "metadata": {"url": "https://169.254.169.254/latest"}})  # fmt: skip
    metrics = Metrics()
    notifier = Notifier(secrets, allow_internal=False, counted=metrics.notifications)
    refs = ("plain", "inside", "metadata", "absent")
    notifier.tell(KEY, spec(*({"name": ref, "urlSecretRef": ref} for ref in refs)), outcome("Succeeded"))
    await notifier.drain()
    assert Receiver.received == []
    assert metrics.registry.get_sample_value("codeb_notifications_total", {"result": "failed"}) == 4
    # A receiver that never answers costs at most the send timeout, twice.
    Receiver.hang = 5.0
    hanging = Notifier(Secrets({"slow": {"url": receiver}}), allow_internal=True, counted=metrics.notifications)
    started = time.monotonic()
    hanging.tell(KEY, spec({"name": "slow", "urlSecretRef": "slow"}), outcome("Succeeded"))
    await hanging.drain()
    assert time.monotonic() - started < 4  # not the 5 s the receiver would take
    assert metrics.registry.get_sample_value("codeb_notifications_total", {"result": "failed"}) == 5


def test_a_release_that_served_before_is_told_as_rolled_back() -> None:
    def deployed(release: str, revision: str) -> DeploymentRecord:
        return DeploymentRecord(release=release, revision=revision, started_at=datetime.now(UTC), result="Succeeded")

    again = outcome("Succeeded")
    again.status.deployments = [deployed("c2", "r2"), deployed("c3", "r3"), deployed("c2", "r2")]
    assert [n.event for n in news_of(again)] == [NotifyEvent.rolled_back]
    first = outcome("Succeeded")
    first.status.deployments = [deployed("c2", "r2"), deployed("c1", "r1")]
    assert [n.event for n in news_of(first)] == [NotifyEvent.deploy_succeeded]
