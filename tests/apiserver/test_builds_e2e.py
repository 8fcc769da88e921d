"""Builds from git end to end: a Project whose source is a Git repository served over HTTPS is built by
podman on each of its two quadlet hosts (Debian booted with systemd-nspawn), and deployed blue-green
from the image it built, through the real Caddy, under load.

A commit that does not build leaves the last good one serving, with the build's error in status
(`BuildReady` False, `Stalled`); the next good commit, pushed through GitHub's webhook to the operator's
inbound listener, rolls out; no request fails throughout.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import json
import shlex
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest

from controller.cli.main import main
from controller.clients.kube import KubeClient, api_client_from_environment
from controller.clients.registry_issuer import RegistryIssuer
from controller.local.cluster import LocalCluster, free_port
from controller.specs.registry import CERTIFICATE, ISSUER
from tests.apiserver.test_quadlet_e2e import QUICK, edge_platform
from tests.conftest import start_cluster
from tests.factories import project
from tests.gitserver import GitServer, WorkTree
from tests.helpers import OperatorProcess, get_json, wait_for
from tests.registryserver import RegistryServer, start_registry
from tests.rollouts import Load
from tests.servers import CaddyServer, https_get, start_caddy
from tests.testhosts import ROLLOUT_IMAGE, SERVICES_ADDRESS, BootedHosts, booted

NS = "apps"
DOMAIN = "built.quadlet.localhost"
WEBHOOK_SECRET = "the-site-webhook-secret"
CONTAINERFILE = f'FROM {ROLLOUT_IMAGE}\nARG GREETING\nRUN echo "$GREETING" > /app/greeting.txt\n'


@pytest.fixture(scope="module")
def hosts() -> Iterator[BootedHosts]:
    with booted(2) as made:
        yield made


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory, hosts: BootedHosts) -> Iterator[dict[str, Any]]:
    """The control plane, Caddy, and a Git server on the address the hosts reach, whose CA they trust."""
    root = tmp_path_factory.mktemp("builds")
    git = GitServer(root / "git", host=SERVICES_ADDRESS, tls=True)
    caddy = start_caddy()
    cluster = start_cluster(root / "cluster")
    try:
        ca = shlex.quote(git.ca_file.read_text())
        for host in hosts.hosts:
            hosts.ssh(host, f"printf '%s' {ca} >/usr/local/share/ca-certificates/codeb-git.crt && "
                            "update-ca-certificates >/dev/null 2>&1")  # fmt: skip
        cluster.kubectl("create", "namespace", NS)
        cluster.kubectl("create", "secret", "generic", "deploy-key", "-n", NS,
                        f"--from-literal=privateKey={hosts.private_key}")  # fmt: skip
        cluster.kubectl("create", "secret", "generic", "site-webhook", "-n", NS,
                        f"--from-literal=secret={WEBHOOK_SECRET}")  # fmt: skip
        edge_platform(cluster, caddy)
        yield {"git": git, "caddy": caddy, "cluster": cluster, "root": root}
    finally:
        cluster.stop()
        caddy.stop()
        git.stop()


def on_hosts(hosts: BootedHosts) -> dict[str, Any]:
    """servers: the two booted hosts, over the deploy key, routed by Platform quadlet-edge's Caddy."""
    return {"provider": "existing", "runtime": "quadlet", "hosts": [h.address for h in hosts.hosts],
            "ssh": {"secretRef": "deploy-key"}, "platform": "quadlet-edge"}  # fmt: skip


def built(hosts: BootedHosts, url: str, revision: str) -> dict[str, Any]:
    git = {"url": url, "ref": "main", "buildArgs": {"GREETING": "hello"}, "timeoutSeconds": 300,
           "webhookSecretRef": "site-webhook"}  # fmt: skip
    return project("built", NS,
                   project={"slug": "built", "source": {"git": git}, "revision": revision, "rollout": QUICK},
                   environment={"type": "staging", "domains": [DOMAIN], "variables": {"MODE": "ok"}},
                   servers=on_hosts(hosts), backup={"enabled": False})  # fmt: skip


def status(cluster: LocalCluster) -> dict[str, Any]:
    found: dict[str, Any] = get_json(cluster, "project", "built", "-n", NS).get("status", {})
    return found


def condition(cluster: LocalCluster, type_: str) -> dict[str, Any]:
    return next((c for c in status(cluster).get("conditions", []) if c["type"] == type_), {})


def served(caddy: CaddyServer, domain: str = DOMAIN) -> str | None:
    try:
        answer: dict[str, Any] = json.loads(https_get(caddy, domain).stdout)
    except ValueError:
        return None
    return answer.get("revision")


def rolled_out(cluster: LocalCluster, revision: str, operator: OperatorProcess, name: str = "built") -> None:
    def reached() -> bool:
        rollout = get_json(cluster, "project", name, "-n", NS).get("status", {}).get("rollout") or {}
        return (rollout.get("revision"), rollout.get("step")) == (revision, "Succeeded")

    try:
        wait_for(reached, timeout=300, what=f"{revision[:7]} built and rolled out")
    except AssertionError:
        found = get_json(cluster, "project", name, "-n", NS).get("status", {})
        raise AssertionError(json.dumps(found, indent=1)[-4000:] + operator.log()[-3000:]) from None


def test_commits_are_built_on_each_host_and_deployed_and_one_that_does_not_build_never_serves(
    world: dict[str, Any],
    hosts: BootedHosts,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    cluster: LocalCluster = world["cluster"]
    caddy: CaddyServer = world["caddy"]
    git: GitServer = world["git"]
    tree = WorkTree(git, "site", tmp_path / "tree")
    inbound = free_port()
    operator = OperatorProcess(cluster, tmp_path / "operator.log", CODEB_DRIFT_INTERVAL="5",
                               CODEB_INBOUND_PORT=str(inbound)).start()  # fmt: skip
    load = Load(caddy, DOMAIN, threads=2)
    try:
        one = tree.commit("one", {"Containerfile": CONTAINERFILE})
        cluster.kubectl("apply", "-f", "-", input_text=json.dumps(built(hosts, git.url("site"), one)))
        rolled_out(cluster, one, operator)
        build = status(cluster)["build"]
        assert (build["result"], build["commit"], build["revision"]) == ("Succeeded", one, one), build
        assert condition(cluster, "BuildReady")["status"] == "True"
        image = build["image"]
        for host in hosts.hosts:  # the unit runs the image this build made there, with its RUN step's file
            running = hosts.ssh(host, "podman ps --format '{{.Image}}'").split()
            assert running == [image], running
            greeting = hosts.ssh(host, f"podman run --rm {shlex.quote(image)} cat /app/greeting.txt").strip()
            assert greeting == "hello"
        wait_for(lambda: served(caddy) == one, timeout=30, what="the first build served through Caddy")
        load.start()

        # A commit that does not build: the last good one keeps serving, and status says why.
        broken = tree.commit("broken", {"Containerfile": CONTAINERFILE + "RUN echo the build broke >&2; exit 3\n"})
        cluster.kubectl("apply", "-f", "-", input_text=json.dumps(built(hosts, git.url("site"), broken)))
        wait_for(lambda: condition(cluster, "BuildReady").get("reason") == "BuildFailed", timeout=240,
                 what="the broken commit's build failed")  # fmt: skip
        failed = condition(cluster, "BuildReady")["message"]
        assert "the build broke" in failed and f"{one} keeps serving" in failed, failed
        assert condition(cluster, "Stalled").get("reason") == "BuildFailed"  # kstatus: waiting will not help
        assert (condition(cluster, "Ready")["status"], condition(cluster, "Ready")["reason"]) == (
            "False",
            "BuildFailed",
        )
        assert status(cluster)["rollout"]["revision"] == one and served(caddy) == one
        # Its log, from each host, as `codeb logs --build` shows it.
        monkeypatch.setenv("KUBECONFIG", str(cluster.kubeconfig))
        assert main(["logs", "built", "-n", NS, "--build", "-o", "json"]) == 0
        logs = json.loads(capsys.readouterr().out)["build"]
        assert len(logs) == 2 and all(any("the build broke" in line for line in lines) for lines in logs.values())

        # The next good commit is pushed: GitHub's webhook sets the revision, and it is built and rolls out.
        three = tree.commit("three", {"Containerfile": CONTAINERFILE, "README": "fixed\n"})
        github_push(inbound, "built", three)
        rolled_out(cluster, three, operator)
        wait_for(lambda: load.revisions.get(three, 0) > 10, timeout=30, what="the fixed commit served through Caddy")
        assert condition(cluster, "Ready")["status"] == "True" and not condition(cluster, "Stalled")
    except AssertionError as failure:
        raise AssertionError(f"{failure}\n{operator.log()[-3000:]}") from None
    finally:
        load.stop()
        cluster.kubectl("delete", "project", "built", "-n", NS, "--timeout=120s", check=False)
        operator.stop()
    assert broken not in load.revisions and load.failures == [] and load.sent > 50, load.failures[:5]
    for host in hosts.hosts:  # deleted, its builds went with it: their images and their runs
        assert hosts.ssh(host, "podman images -q --filter reference=localhost/codeb/apps/built").strip() == ""
        assert hosts.ssh(host, "ls -A /var/lib/codeb/builds").strip() == ""
    assert hosts.private_key.splitlines()[1] not in operator.log()
    print(f"builds on two quadlet hosts under load: {load.sent} requests, 0 failed")


def github_push(inbound: int, name: str, commit: str) -> None:
    """GitHub's push event for ``commit`` on main, signed with the Project's webhook secret, to the operator."""
    body = json.dumps({"ref": "refs/heads/main", "after": commit, "repository": {"pushed_at": int(time.time())}})
    signature = "sha256=" + hmac.new(WEBHOOK_SECRET.encode(), body.encode(), hashlib.sha256).hexdigest()
    headers = {"X-GitHub-Event": "push", "X-GitHub-Delivery": str(uuid.uuid4()), "X-Hub-Signature-256": signature}
    delivered = httpx.post(f"http://127.0.0.1:{inbound}/push/{NS}/{name}", content=body, headers=headers, timeout=10)
    assert delivered.status_code == 202, delivered.text


PAGES = "pages.quadlet.localhost"


def test_a_static_site_without_a_containerfile_is_built_by_its_template_and_served(
    world: dict[str, Any], hosts: BootedHosts, tmp_path: Path
) -> None:
    """The seeds' flow: a git URL, a name and a template. The repository has pages only; template static
    builds them into an image that serves them (its base image from source.git.baseImage: no registry)."""
    cluster: LocalCluster = world["cluster"]
    git: GitServer = world["git"]
    commit = WorkTree(git, "pages", tmp_path / "tree").commit("pages", {"index.html": "<h1>built by its template</h1>"})
    source = {"git": {"url": git.url("pages"), "baseImage": ROLLOUT_IMAGE}}
    info = {"slug": "pages", "template": "static", "source": source, "revision": commit, "rollout": QUICK}
    doc = project("pages", NS, project=info, environment={"type": "staging", "domains": [PAGES]},
                  servers=on_hosts(hosts), backup={"enabled": False})  # fmt: skip
    operator = OperatorProcess(cluster, tmp_path / "operator.log", CODEB_DRIFT_INTERVAL="5").start()
    try:
        cluster.kubectl("apply", "-f", "-", input_text=json.dumps(doc))
        operator.wait_ready(NS, "pages", timeout=300)
        wait_for(lambda: "<h1>built by its template</h1>" in https_get(world["caddy"], PAGES).stdout, timeout=30,
                 what="the pages served through Caddy")  # fmt: skip
        built = get_json(cluster, "project", "pages", "-n", NS)["status"]["build"]
        assert (built["result"], built["commit"]) == ("Succeeded", commit)  # the repository has no Containerfile
    finally:
        cluster.kubectl("delete", "project", "pages", "-n", NS, "--timeout=120s", check=False)
        operator.stop()


PUSHED = "pushed.quadlet.localhost"
REGISTRY_SERVICE = "codeb-registry"


def pushed_project(hosts: BootedHosts, url: str, revision: str) -> dict[str, Any]:
    git = {"url": url, "ref": "main", "buildArgs": {"GREETING": "pushed"}, "timeoutSeconds": 300,
           "webhookSecretRef": "site-webhook"}  # fmt: skip
    servers = {**on_hosts(hosts), "platform": "quadlet-registry"}
    return project("pushed", NS, project={"slug": "pushed", "source": {"git": git}, "revision": revision,
                                          "rollout": QUICK},
                   environment={"type": "staging", "domains": [PUSHED]}, servers=servers,
                   backup={"enabled": False})  # fmt: skip


def test_with_a_registry_one_host_builds_and_pushes_and_each_host_runs_the_digest_under_load(
    world: dict[str, Any], hosts: BootedHosts, tmp_path: Path
) -> None:
    """The Platform names a registry (Debian's docker-registry, the operator its token issuer): the first host
    builds each commit and pushes it with the Project's credential; every host pulls it by digest with that
    credential (never kept on a host); the switch between commits drops no request under load."""
    cluster: LocalCluster = world["cluster"]
    inbound = free_port()
    with platform_registry(cluster, hosts, inbound) as registry:
        operator = OperatorProcess(cluster, tmp_path / "operator.log", CODEB_DRIFT_INTERVAL="5",
                                   CODEB_INBOUND_PORT=str(inbound))  # fmt: skip
        load = Load(world["caddy"], PUSHED, threads=2)
        repository = f"{registry.address}/codeb/{NS}/pushed"
        try:
            operator.start()
            tree = WorkTree(world["git"], "pushed", tmp_path / "tree")
            pushes_and_pulls(world, hosts, registry, operator, load, tree, inbound)
        except AssertionError as failure:
            raise AssertionError(f"{failure}\n{operator.log()[-3000:]}") from None
        finally:
            load.stop()
            cluster.kubectl("delete", "project", "pushed", "-n", NS, "--timeout=120s", check=False)
            operator.stop()
    assert load.failures == [] and load.sent > 50, load.failures[:5]
    for host in hosts.hosts:  # deleted: what it pulled went with it
        assert hosts.ssh(host, f"podman images -q --filter reference={repository}").strip() == ""
    print(f"pushed builds on two quadlet hosts under load: {load.sent} requests, 0 failed")


@contextlib.contextmanager
def platform_registry(cluster: LocalCluster, hosts: BootedHosts, inbound: int) -> Iterator[RegistryServer]:
    """Debian's docker-registry over TLS, its realm the operator's inbound listener on ``inbound``, trusted by
    the hosts, and Platform quadlet-registry (quadlet-edge's Caddy) naming it; all gone afterwards."""
    with ThreadPoolExecutor(2) as pool:
        kube = KubeClient(api_client_from_environment(config_file=str(cluster.kubeconfig)), pool)
        cluster.kubectl("create", "namespace", "codeb-system", check=False)
        certificate = asyncio.run(RegistryIssuer(kube, "codeb-system").data())[CERTIFICATE]
        kube.close()
    registry = start_registry(SERVICES_ADDRESS, f"http://{SERVICES_ADDRESS}:{inbound}/registry/token",
                              REGISTRY_SERVICE, ISSUER, certificate, tls=True)  # fmt: skip
    try:
        assert registry.ca_file is not None
        ca = shlex.quote(registry.ca_file.read_text())
        for host in hosts.hosts:  # the hosts trust the registry's CA, as a team's hosts would be set up to
            hosts.ssh(host, f"printf '%s' {ca} >/usr/local/share/ca-certificates/codeb-registry.crt && "
                            "update-ca-certificates >/dev/null 2>&1")  # fmt: skip
        platform = get_json(cluster, "platform", "quadlet-edge")
        platform["metadata"] = {"name": "quadlet-registry"}
        platform["spec"]["registry"] = {"host": registry.address, "service": REGISTRY_SERVICE}
        cluster.kubectl("apply", "-f", "-", input_text=json.dumps(platform))
        yield registry
    finally:
        registry.stop()
        cluster.kubectl("delete", "platform", "quadlet-registry", "--wait=false", check=False)


def pushes_and_pulls(world: dict[str, Any], hosts: BootedHosts, registry: RegistryServer, operator: OperatorProcess,
                     load: Load, tree: WorkTree, inbound: int) -> None:  # fmt: skip
    """Two commits, each built on the first host, pushed, and run by digest on both; the second, pushed through
    GitHub's webhook, under load, after one that does not build (which changes nothing that serves)."""
    cluster: LocalCluster = world["cluster"]
    repository = f"{registry.address}/codeb/{NS}/pushed"
    first, second = sorted(hosts.hosts, key=lambda h: h.address)
    one = tree.commit("one", {"Containerfile": CONTAINERFILE})
    cluster.kubectl("apply", "-f", "-", input_text=json.dumps(pushed_project(hosts, world["git"].url("pushed"), one)))
    rolled_out(cluster, one, operator, "pushed")
    build = get_json(cluster, "project", "pushed", "-n", NS)["status"]["build"]
    assert build["pushedTo"] == repository and [run["name"] for run in build["hosts"]] == [first.address]
    image = build["lastSucceeded"]["image"]
    assert image.startswith(f"{repository}@sha256:"), build
    for host in hosts.hosts:  # each runs the digest the registry holds; the second built nothing
        assert hosts.ssh(host, "podman ps --format '{{.Image}}'").split() == [image]
        assert hosts.ssh(host, "find /run/codeb -type f 2>/dev/null; true").strip() == ""  # no credential
    assert hosts.ssh(second, "ls -A /var/lib/codeb/builds 2>/dev/null; true").strip() == ""
    assert hosts.ssh(second, "podman images -q --filter reference=localhost/codeb").strip() == ""
    tags = registry.root / "data/docker/registry/v2/repositories/codeb" / NS / "pushed/_manifests/tags"
    assert {one, build["runId"]} <= {path.name for path in tags.iterdir()}  # tagged by commit, and by run
    wait_for(lambda: served(world["caddy"], PUSHED) == one, timeout=30, what="the first push served through Caddy")
    load.start()

    broken = tree.commit("broken", {"Containerfile": CONTAINERFILE + "RUN echo the build broke >&2; exit 3\n"})
    github_push(inbound, "pushed", broken)

    def failed() -> str:
        found = get_json(cluster, "project", "pushed", "-n", NS)["status"]
        ready = next((c for c in found["conditions"] if c["type"] == "BuildReady"), {})
        return str(ready.get("message", "")) if ready.get("reason") == "BuildFailed" else ""

    said = wait_for(failed, timeout=240, what="the broken commit's build failed")
    assert "the build broke" in said and f"{one} keeps serving" in said, said
    assert served(world["caddy"], PUSHED) == one and not (tags / broken).exists()  # nothing of it was pushed

    two = tree.commit("two", {"Containerfile": CONTAINERFILE + "RUN echo two > /app/two.txt\n"})
    github_push(inbound, "pushed", two)
    rolled_out(cluster, two, operator, "pushed")
    wait_for(lambda: load.revisions.get(two, 0) > 10, timeout=30, what="the second push served through Caddy")
    newer = get_json(cluster, "project", "pushed", "-n", NS)["status"]["build"]["lastSucceeded"]["image"]
    assert newer != image and newer.startswith(f"{repository}@sha256:")
    for host in hosts.hosts:  # podman finds the repository's images by name: deleting the Project removes them
        assert hosts.ssh(host, f"podman image exists {shlex.quote(newer)} && echo yes").strip() == "yes"
        assert hosts.ssh(host, f"podman images -q --filter reference={repository}").split()
