"""Push webhooks against the real API server: GitHub's signed deliveries and GitLab's token set a Project's
revision; forged, replayed, stale and foreign deliveries are refused and counted, and nothing answered
says whether a Project exists (`controller.operator.pushes`)."""

from __future__ import annotations

import hashlib
import hmac
import json
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from prometheus_client import CollectorRegistry

from controller.clients.kube import KubeClient
from controller.local.cluster import LocalCluster, free_port
from controller.operator.inbound import Inbound
from controller.operator.metrics import Metrics
from controller.operator.pushes import DELIVERIES_ANNOTATION, Pushes
from tests.factories import project
from tests.helpers import get_json

pytestmark = pytest.mark.apiserver

SECRET = "push-secret-1234567890"
COMMIT = "1f0e5c2a9b8d7c6e5f4a3b2c1d0e9f8a7b6c5d4e"


class Listener:
    def __init__(self, port: int, metrics: Metrics) -> None:
        self.url, self.metrics = f"http://127.0.0.1:{port}", metrics

    def counted(self, result: str) -> float:
        return self.metrics.push_deliveries.labels(result)._value.get()  # type: ignore[no-any-return]


@pytest.fixture
async def listener(kube: KubeClient) -> AsyncIterator[Listener]:
    metrics, port = Metrics(CollectorRegistry()), free_port()
    inbound = Inbound(kube, notifier=None, token_file=None, pushes=Pushes(kube, metrics.push_deliveries))  # type: ignore[arg-type]
    await inbound.start(port, "127.0.0.1")
    try:
        yield Listener(port, metrics)
    finally:
        await inbound.stop()


def site(cluster: LocalCluster, namespace: str, secret_ref: str | None = "site-webhook") -> None:
    git = {"url": "https://git.example.com/acme/site.git", "ref": "main",
           **({"webhookSecretRef": secret_ref} if secret_ref else {})}  # fmt: skip
    servers = {"provider": "existing", "runtime": "quadlet", "hosts": ["10.0.0.1"], "ssh": {"secretRef": "key"}}
    doc = project("site", namespace, project={"slug": "site", "source": {"git": git}, "revision": "0" * 7},
                  environment={"type": "staging", "domains": ["site.example.com"]}, servers=servers)  # fmt: skip
    cluster.kubectl("apply", "-f", "-", input_text=json.dumps(doc))


def github(body: dict[str, Any], secret: str = SECRET, delivery: str | None = None) -> tuple[bytes, dict[str, str]]:
    raw = json.dumps(body).encode()
    signature = "sha256=" + hmac.new(secret.encode(), raw, hashlib.sha256).hexdigest()
    return raw, {"X-GitHub-Event": "push", "X-GitHub-Delivery": delivery or str(uuid.uuid4()),
                 "X-Hub-Signature-256": signature, "Content-Type": "application/json"}  # fmt: skip


def pushed(commit: str = COMMIT, ref: str = "refs/heads/main", at: float | None = None) -> dict[str, Any]:
    return {"ref": ref, "after": commit, "repository": {"pushed_at": int(at if at is not None else time.time())}}


async def test_a_signed_push_sets_the_revision_once_and_everything_else_is_refused(
    cluster: LocalCluster, listener: Listener
) -> None:
    namespace = f"push-{uuid.uuid4().hex[:6]}"
    cluster.kubectl("create", "namespace", namespace)
    cluster.kubectl("create", "secret", "generic", "site-webhook", "-n", namespace, f"--from-literal=secret={SECRET}")
    site(cluster, namespace)
    url = f"{listener.url}/push/{namespace}/site"

    def revision() -> str:
        return str(get_json(cluster, "project", "site", "-n", namespace)["spec"]["project"]["revision"])

    async with httpx.AsyncClient(timeout=10) as client:
        body, headers = github(pushed())
        taken = await client.post(url, content=body, headers=headers)
        assert (taken.status_code, taken.json()) == (202, {"revision": COMMIT})
        assert revision() == COMMIT
        stored = get_json(cluster, "project", "site", "-n", namespace)["metadata"]["annotations"]
        assert json.loads(stored[DELIVERIES_ANNOTATION]) == [headers["X-GitHub-Delivery"]]
        # The same delivery again, even after the revision moved on: refused.
        cluster.kubectl("patch", "project", "site", "-n", namespace, "--type=merge",
                        "-p", json.dumps({"spec": {"project": {"revision": "abcdef1"}}}))  # fmt: skip
        assert (await client.post(url, content=body, headers=headers)).status_code == 409
        # An old push, signed but captured long ago: refused by its signed pushed_at.
        old_body, old_headers = github(pushed("a" * 40, at=time.time() - 3600))
        assert (await client.post(url, content=old_body, headers=old_headers)).status_code == 409
        # Forged: another secret, a body changed after signing, no signature at all.
        forged, forged_headers = github(pushed("b" * 40), secret="guessed")
        assert (await client.post(url, content=forged, headers=forged_headers)).status_code == 401
        changed = body.replace(COMMIT.encode(), b"c" * 40)
        assert (await client.post(url, content=changed, headers={**headers, "X-GitHub-Delivery": str(uuid.uuid4())})
                ).status_code == 401  # fmt: skip
        unsigned = {k: v for k, v in headers.items() if k != "X-Hub-Signature-256"}
        assert (await client.post(url, content=body, headers=unsigned)).status_code == 401
        # Another branch, and a ping: nothing changes.
        other, other_headers = github(pushed("d" * 40, ref="refs/heads/feature"))
        assert (await client.post(url, content=other, headers=other_headers)).status_code == 202
        ping, ping_headers = github({"zen": "hi"})
        assert (await client.post(url, content=ping, headers={**ping_headers, "X-GitHub-Event": "ping"})
                ).status_code == 202  # fmt: skip
        assert revision() == "abcdef1"
        # GitLab: its token, its event names.
        gitlab = {"X-Gitlab-Event": "Push Hook", "X-Gitlab-Token": SECRET, "X-Gitlab-Event-UUID": str(uuid.uuid4())}
        lab = json.dumps({"ref": "refs/heads/main", "checkout_sha": "e" * 40, "after": "e" * 40}).encode()
        assert (await client.post(url, content=lab, headers=gitlab)).status_code == 202
        assert revision() == "e" * 40
        wrong = {**gitlab, "X-Gitlab-Token": "guessed", "X-Gitlab-Event-UUID": str(uuid.uuid4())}
        assert (await client.post(url, content=lab, headers=wrong)).status_code == 401
        # A Project without a webhook Secret, one that does not exist, a bad name: the same answer.
        answers = {(await client.post(f"{listener.url}/push/{namespace}/{name}", content=body, headers=headers)).text
                   for name in ("absent", "Bad..Name")}  # fmt: skip
        answers.add((await client.post(f"{listener.url}/push/no-such-ns/site", content=body, headers=headers)).text)
        assert answers == {"no push webhook here\n"}
    counts = {r: listener.counted(r) for r in ("accepted", "forged", "replayed", "stale", "ignored")}
    assert counts == {"accepted": 2, "forged": 4, "replayed": 1, "stale": 1, "ignored": 2}, counts


async def test_a_project_may_not_name_the_operators_secrets_as_its_webhook_secret(
    cluster: LocalCluster, listener: Listener
) -> None:
    """A webhook Secret is read like any Secret a Project references: never one the operator keeps for
    another Project (whose password a forger would then sign with)."""
    namespace = f"push-{uuid.uuid4().hex[:6]}"
    cluster.kubectl("create", "namespace", namespace)
    cluster.kubectl("create", "secret", "generic", "other-connection", "-n", namespace,
                    f"--from-literal=secret={SECRET}")  # fmt: skip
    cluster.kubectl("label", "secret", "other-connection", "-n", namespace,
                    "app.kubernetes.io/managed-by=codeb", "codeb.dev/project=other")  # fmt: skip
    site(cluster, namespace, secret_ref="other-connection")
    body, headers = github(pushed())
    async with httpx.AsyncClient(timeout=10) as client:
        refused = await client.post(f"{listener.url}/push/{namespace}/site", content=body, headers=headers)
    assert (refused.status_code, refused.text) == (404, "no push webhook here\n")
    assert get_json(cluster, "project", "site", "-n", namespace)["spec"]["project"]["revision"] == "0" * 7
