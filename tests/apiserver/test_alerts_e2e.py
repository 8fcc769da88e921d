"""A Project's alerts and notifications end to end, with the real operator.

It writes each Project's PrometheusRule (the Prometheus Operator's real CRD, from its Go module), and a
real Prometheus (Debian) loading exactly those rules and scraping the real Caddy fires the Project's
error-rate alert when a share of its requests through Caddy fail, and not for a Project whose requests
do not; a real Alertmanager delivers it to the operator, which tells the Project's receivers, and
again when it resolves. It tells a Project's receivers of its deploys, a first one included, and of a failed one, once.
"""

from __future__ import annotations

import json
import secrets
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from controller.cli.main import main
from controller.specs.alerts import RUNBOOK
from tests.gotools import prometheus_crd
from tests.helpers import Heard, get_json, wait_for
from tests.rollouts import NS, RolloutWorld, rollout_project, rollout_world
from tests.servers import free_port, start_alertmanager, start_prometheus

pytestmark = pytest.mark.apiserver


TOKEN = "alertmanager-" + secrets.token_hex(8)
INBOUND, METRICS = free_port(), free_port()


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RolloutWorld]:
    crd = prometheus_crd("prometheusrules")  # before the world: a download must not eat into its timeouts
    root = tmp_path_factory.mktemp("alerts")
    (root / "inbound-token").write_text(TOKEN + "\n")
    settings = {"CODEB_INBOUND_PORT": str(INBOUND), "CODEB_INBOUND_TOKEN_FILE": str(root / "inbound-token"),
                "CODEB_METRICS_PORT": str(METRICS)}  # fmt: skip
    with rollout_world(root, **settings) as made:
        made.cluster.kubectl("apply", "--server-side", "-f", str(crd))
        made.cluster.kubectl("wait", "--for=condition=Established", "crd/prometheusrules.monitoring.coreos.com",
                             "--timeout=60s")  # fmt: skip
        yield made


@pytest.fixture
def heard() -> Iterator[Heard]:
    receiver = Heard()
    yield receiver
    receiver.server.shutdown()


def watched(world: RolloutWorld, name: str, notify: list[dict[str, Any]] | None = None) -> None:
    doc = rollout_project(name, "r1", world.counts)
    doc["spec"]["monitoring"] = {"alerts": {"errorRatePercent": 20, "latencyP95Ms": 5000, "forSeconds": 2},
                                 "notify": notify or []}  # fmt: skip
    world.cluster.kubectl("apply", "-f", "-", input_text=json.dumps(doc))


def send(world: RolloutWorld, host: str, paths: list[str], seconds: float) -> int:
    """Requests through Caddy's TLS listener, cycling over ``paths``, for ``seconds``; how many answered 500."""
    url = f"https://127.0.0.1:{world.caddy.https_port}"
    failed, ends = 0, time.monotonic() + seconds
    with httpx.Client(verify=False, timeout=10) as client:
        while time.monotonic() < ends:
            for path in paths:
                answer = client.get(url + path, headers={"Host": host}, extensions={"sni_hostname": host})
                failed += answer.status_code == 500
            time.sleep(0.05)
    return failed


def test_a_projects_error_rate_alert_fires_in_a_real_prometheus_from_the_rules_the_operator_wrote(
    world: RolloutWorld, heard: Heard, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    world.cluster.kubectl("create", "secret", "generic", "pager", "-n", NS, f"--from-literal=url={heard.url}")
    pager = [{"name": "pager", "urlSecretRef": "pager", "events": ["AlertFiring", "AlertResolved"]}]
    for name in ("loud", "calm"):
        watched(world, name, pager)
        world.wait_rollout(name, "r1")
        wait_for(lambda n=name: world.condition(n, "AlertsReady").get("status") == "True", timeout=30,
                 what=f"{name}'s alert rules written")  # fmt: skip
    rules: dict[str, Any] = {"groups": []}
    for name in ("loud", "calm"):
        rule = get_json(world.cluster, "prometheusrule", f"codeb-{name}", "-n", NS)
        assert rule["metadata"]["annotations"]["codeb.dev/owner-uid"]
        [group] = rule["spec"]["groups"]
        assert {r["alert"] for r in group["rules"]} == {"CodebProjectErrorRate", "CodebProjectLatencyP95"}
        assert all(r["annotations"]["runbook_url"] == RUNBOOK for r in group["rules"])
        rules["groups"].append(group)
    # Exactly what the Prometheus Operator would load from those objects, into a real Prometheus.
    caddy_metrics = f"127.0.0.1:{world.caddy.admin_port}"
    # Alertmanager routes what fires to the operator, which tells each Project's receivers.
    alertmanager = start_alertmanager(f"http://127.0.0.1:{INBOUND}/alertmanager", TOKEN)
    try:
        prometheus = start_prometheus([caddy_metrics], rules, alertmanager.address)
    except BaseException:
        alertmanager.stop()
        raise
    try:
        failed = send(world, "loud.localhost", ["/", "/fail"], 8)  # half of loud's requests fail
        send(world, "calm.localhost", ["/"], 2)
        assert failed > 20

        def error_rate() -> list[dict[str, Any]]:
            return [a for a in prometheus.firing() if a["labels"]["alertname"] == "CodebProjectErrorRate"]

        try:
            firing = wait_for(error_rate, timeout=60, what="the error-rate alert firing")
        except AssertionError:
            raise AssertionError(prometheus.explain()) from None
        assert [(a["labels"]["namespace"], a["labels"]["project"]) for a in firing] == [(NS, "loud")]
        assert float(firing[0]["value"]) > 20
        assert "more than 20% of requests fail" in firing[0]["annotations"]["summary"]
        # And as people read it: `codeb status` asks the same Prometheus about the same series.
        monkeypatch.setenv("KUBECONFIG", str(world.cluster.kubeconfig))
        assert main(["status", "loud", "-n", NS, "--prometheus", prometheus.url, "-o", "json"]) == 0
        traffic = json.loads(capsys.readouterr().out)["traffic"]
        assert traffic["requestsPerSecond"] > 0 and 30 < traffic["errorPercent"] < 70, traffic
        assert traffic["latencyP95Ms"] is not None
        assert main(["status", "calm", "-n", NS, "--prometheus", prometheus.url]) == 0
        assert "req/s, 0.0% 5xx, p95" in capsys.readouterr().out
        # Through Alertmanager and the operator, in the operator's words: only loud's receiver is told.
        firing_text = f"{NS}/loud: alert firing (CodebProjectErrorRate: more than 20% of requests answer 5xx)"
        wait_for(lambda: heard.texts("alert firing"), timeout=60, what="the alert delivered: " + alertmanager.log())
        assert heard.texts("alert firing") == [firing_text]
        # The errors stop: enough good requests bring the share under the threshold, and it resolves.
        send(world, "loud.localhost", ["/"], 20)
        resolved = f"{NS}/loud: alert resolved (CodebProjectErrorRate: more than 20% of requests answer 5xx)"
        wait_for(lambda: heard.texts("alert resolved"), timeout=90, what="the resolution delivered")
        assert heard.texts("alert resolved") == [resolved]
        assert heard.texts("calm") == []
    finally:
        prometheus.stop()
        alertmanager.stop()
    # The rules go with the Project.
    world.cluster.kubectl("delete", "project", "calm", "-n", NS, "--timeout=60s")
    assert world.cluster.kubectl("get", "prometheusrule", "codeb-calm", "-n", NS, check=False).returncode != 0


def test_deploys_and_their_failures_are_told_to_the_projects_receivers(world: RolloutWorld, heard: Heard) -> None:
    world.cluster.kubectl("create", "secret", "generic", "team-hook", "-n", NS, f"--from-literal=url={heard.url}")
    notify = [{"name": "team", "kind": "slack", "urlSecretRef": "team-hook"}]

    def apply(revision: str, mode: str = "ok") -> None:
        doc = rollout_project("told", revision, world.counts, mode)
        doc["spec"]["monitoring"] = {"notify": notify}
        world.cluster.kubectl("apply", "-f", "-", input_text=json.dumps(doc))

    apply("r1")
    first = {"text": f"{NS}/told revision r1: deployed"}
    wait_for(lambda: first in heard.bodies, timeout=60, what="the first deploy told")
    apply("bad", "broken")
    world.wait_rollout("told", "bad", step="Failed")
    told = wait_for(lambda: heard.texts("failed to deploy"), timeout=30, what="the failure")
    assert told[0].startswith(f"{NS}/told revision bad: failed to deploy (green failed 3 consecutive")
    # r2 deploys; going back to r1 (as `codeb rollback` does), a release that served before, is a rollback.
    apply("r2")
    wait_for(lambda: heard.texts("revision r2: deployed"), timeout=60, what="r2 told")
    apply("r1")
    wait_for(lambda: heard.texts("revision r1: rolled back"), timeout=60, what="the rollback told")
    time.sleep(2)
    assert len(heard.bodies) == 4  # once each: no repeat on later passes

    # The operator's own probes of the serving colour (r1 still serves), as series for this Project.
    def probed() -> dict[str, float]:
        text = httpx.get(f"http://127.0.0.1:{METRICS}/metrics", timeout=10).text
        labels = f'{{namespace="{NS}",project="told"}}'
        return {line.split(labels)[0]: float(line.split()[-1]) for line in text.splitlines()
                if line.startswith("codeb_project_probe_") and labels in line}  # fmt: skip

    samples = wait_for(lambda: (found := probed()).get("codeb_project_probe_up") == 1 and found, timeout=30,
                       what="the probe series")  # fmt: skip
    assert samples["codeb_project_probe_http_status"] == 200
    assert samples["codeb_project_probe_duration_seconds_count"] >= 1
    world.cluster.kubectl("delete", "project", "told", "-n", NS, "--timeout=60s")
    assert probed() == {}  # gone with the Project


def test_alertmanager_deliveries_need_the_token_and_name_only_the_operators_alerts(
    world: RolloutWorld, heard: Heard
) -> None:
    """The operator's listener, as anyone who reaches it: no token, a wrong one, a forged alert, a label
    that is no name; only the operator's alert for an existing Project is told, in its own words."""
    world.cluster.kubectl("create", "secret", "generic", "watch-hook", "-n", NS, f"--from-literal=url={heard.url}")
    watched(world, "watched", [{"name": "watch", "urlSecretRef": "watch-hook", "events": ["AlertFiring"]}])
    world.wait_rollout("watched", "r1")
    url = f"http://127.0.0.1:{INBOUND}/alertmanager"

    def alert(name: str, project: str = "watched", **annotations: str) -> dict[str, Any]:
        return {"status": "firing", "labels": {"alertname": name, "namespace": NS, "project": project},
                "annotations": annotations}  # fmt: skip

    body = {"version": "4", "alerts": [alert("CodebProjectLatencyP95", summary="click http://phish.example")]}
    assert httpx.post(url, json=body, timeout=10).status_code == 401
    assert httpx.post(url, json=body, headers={"Authorization": "Bearer wrong"}, timeout=10).status_code == 401
    assert httpx.post(url, content=b"x" * (2 << 20), headers={"Authorization": f"Bearer {TOKEN}"},
                      timeout=10).status_code == 413  # fmt: skip
    body["alerts"] += [alert("Forged"), alert("CodebProjectErrorRate", project="../x"),
                       alert("CodebProjectErrorRate", project="nobody")]  # fmt: skip
    answer = httpx.post(url, json=body, headers={"Authorization": f"Bearer {TOKEN}"}, timeout=10)
    assert answer.status_code == 200 and answer.json() == {"told": 1}
    wait_for(lambda: heard.bodies, timeout=30, what="the alert told")
    time.sleep(1)
    assert [b["text"] for b in heard.bodies] == [
        f"{NS}/watched: alert firing (CodebProjectLatencyP95: p95 latency above 5000 ms)"
    ]


def test_a_rule_object_the_operator_did_not_make_is_left_alone(world: RolloutWorld) -> None:
    theirs = {"apiVersion": "monitoring.coreos.com/v1", "kind": "PrometheusRule",
              "metadata": {"name": "codeb-squatted", "namespace": NS},
              "spec": {"groups": [{"name": "theirs", "rules": [{"record": "theirs:up", "expr": "up"}]}]}}  # fmt: skip
    world.cluster.kubectl("apply", "-f", "-", input_text=json.dumps(theirs))
    watched(world, "squatted")
    refused = wait_for(lambda: (c := world.condition("squatted", "AlertsReady")).get("reason") == "NotOwned" and c,
                       timeout=60, what="the rule object refused")  # fmt: skip
    assert "not made by the operator" in refused["message"]
    assert get_json(world.cluster, "prometheusrule", "codeb-squatted", "-n", NS)["spec"] == theirs["spec"]
