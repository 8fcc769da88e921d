"""The quadlet driver and the existing-hosts driver against real hosts: two Debian machines booted with
systemd-nspawn, each in its own network namespace, reached over real SSH (`tests.testhosts`).

The application is the repository's example, in an image made from Debian packages
and imported on the hosts: nothing comes from a registry. The driver's state is the
rollout engine's (`controller.loop.rollouts.bluegreen`): what each colour runs, on every host.
"""

from __future__ import annotations

import asyncio
import base64
import shlex
import socket
import time
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime
from typing import Any

import asyncssh
import httpx
import pytest

from controller.clients.ssh import SshPool
from controller.drivers.hosts import ExistingHosts
from controller.drivers.quadlet import QuadletUnits
from controller.errors import RetryableError
from controller.loop import builds
from controller.loop.interface import BuildSource, DriverContext
from controller.loop.naming import ProjectKey
from controller.loop.planner import Component, Observation, desired_state
from controller.specs.quadlet import unit_name
from schemas.project import Allocations, Hook, ProjectSpec
from tests.drivers_common import follow_to_end, recorded
from tests.factories import project_spec
from tests.helpers import observe_until
from tests.testhosts import HELLO_IMAGE, SERVICES_ADDRESS, BootedHosts, booted

NS = "shop"
CREDENTIAL = "pa55-word-that-must-stay-on-the-host"


@pytest.fixture(scope="module")
def hosts() -> Iterator[BootedHosts]:
    with booted(2) as made:
        yield made


class Secrets:
    """The Secrets the drivers read, as the API server would hand them over."""

    def __init__(self, hosts: BootedHosts) -> None:
        self.data: dict[tuple[str, str], dict[str, str]] = {
            (NS, "deploy-key"): {"privateKey": hosts.private_key},
            (NS, "web-conn"): {"APP_SECRET": CREDENTIAL},
        }

    async def read(self, namespace: str, name: str, project: str | None = None) -> dict[str, str] | None:
        return self.data.get((namespace, name))


@pytest.fixture()
async def world(hosts: BootedHosts) -> AsyncIterator[dict[str, Any]]:
    secrets, pool = Secrets(hosts), SshPool(connect_timeout=3, allow_internal=True)
    infrastructure = ExistingHosts(secrets.read, pool)
    workload = QuadletUnits(secrets.read, pool, start_timeout=12)
    yield {"secrets": secrets, "infrastructure": infrastructure, "workload": workload, "hosts": hosts}
    # Whatever a test left running goes, so the next starts from bare hosts.
    ctx = await context(infrastructure, spec(hosts))
    await workload.delete(ctx, retain=False)
    await pool.close()


def spec(hosts: BootedHosts, addresses: list[str] | None = None, **changes: Any) -> ProjectSpec:
    servers = {"provider": "existing", "runtime": "quadlet", "hosts": addresses or [h.address for h in hosts.hosts],
               "ssh": {"secretRef": "deploy-key"}}  # fmt: skip
    fields = {"project": {"slug": "web", "source": {"image": HELLO_IMAGE}}, "servers": servers,
              "backup": {"enabled": False}, "resources": {"port": 4510}, **changes}  # fmt: skip
    return ProjectSpec.model_validate(project_spec("web", **fields))


ALLOCATIONS = Allocations(port=4510, alternate_port=4511, connection_secret="web-conn")


async def context(infrastructure: ExistingHosts, project: ProjectSpec) -> DriverContext:
    ctx = DriverContext(ProjectKey(NS, "web", "uid-web"), ALLOCATIONS, servers=project.servers)
    seen = await infrastructure.observe(ctx)
    return ctx.given({Component.infrastructure: seen})


def release(ctx: DriverContext, project: ProjectSpec, port: int = 4510) -> dict[str, Any]:
    """One colour's state as the rollout engine hands it over: the spec's workload on ``port``."""
    outputs = {Component.infrastructure: ctx.inputs[Component.infrastructure]}
    return {**desired_state(project, ALLOCATIONS, outputs)[Component.workload], "port": port}


def wanted(ctx: DriverContext, project: ProjectSpec) -> dict[str, Any]:
    """Blue alone runs the spec (a steady state)."""
    return {"colours": {"blue": release(ctx, project)}}


def container_id(hosts: BootedHosts, index: int, colour: str = "blue") -> str:
    command = f"podman inspect --format '{{{{.Id}}}}' codeb.shop.web.{colour}"
    return hosts.ssh(hosts.hosts[index], command, check=False).strip()


def blue(seen: Observation) -> dict[str, Any]:
    assert seen.state is not None, seen
    return dict(seen.state["colours"]["blue"])


async def converged(world: dict[str, Any], project: ProjectSpec) -> tuple[DriverContext, Observation]:
    ctx = await context(world["infrastructure"], project)
    await world["workload"].apply(ctx, wanted(ctx, project))
    return ctx, await world["workload"].observe(ctx)


async def test_existing_hosts_report_what_they_support(world: dict[str, Any]) -> None:
    hosts = world["hosts"]
    ctx = DriverContext(ProjectKey(NS, "web", "u"), ALLOCATIONS, servers=spec(hosts).servers)
    seen = await world["infrastructure"].observe(ctx)
    assert seen.healthy and seen.state == {"provider": "existing", "hosts": [h.address for h in hosts.hosts],
                                           "usable": True}  # fmt: skip
    assert [h["address"] for h in seen.outputs["hosts"]] == [h.address for h in hosts.hosts]
    assert all(h["podman"].startswith("4.3") for h in seen.outputs["hosts"])


async def test_an_unreachable_host_and_a_refused_key_are_named(world: dict[str, Any]) -> None:
    hosts, infrastructure = world["hosts"], world["infrastructure"]
    ghost = spec(hosts, [hosts.hosts[0].address, "10.213.9.2"])
    ctx = DriverContext(ProjectKey(NS, "web", "u"), ALLOCATIONS, servers=ghost.servers)
    seen = await infrastructure.observe(ctx)
    assert not seen.healthy and seen.state is not None and seen.state["usable"] is False
    assert "10.213.9.2" in (seen.detail or "") and "unreachable" in (seen.detail or "")
    assert [h["address"] for h in seen.outputs["hosts"]] == [hosts.hosts[0].address]
    # status.hosts reports every host: the usable one with its podman, the other with why not.
    usable, ghost_report = seen.outputs["report"]
    assert usable["usable"] and usable["podman"].startswith("4.3")
    assert ghost_report["address"] == "10.213.9.2" and ghost_report["usable"] is False
    assert ghost_report["reason"] == "HostUnreachable" and "10.213.9.2" in ghost_report["message"]
    with pytest.raises(RetryableError) as unreachable:
        await infrastructure.apply(ctx, {})
    assert unreachable.value.reason == "HostUnreachable"

    world["secrets"].data[(NS, "deploy-key")] = {"privateKey": _other_key()}
    ctx = DriverContext(ProjectKey(NS, "web", "u"), ALLOCATIONS, servers=spec(hosts).servers)
    with pytest.raises(RetryableError) as refused:
        await infrastructure.apply(ctx, {})
    assert refused.value.reason == "SSHAuthFailed"
    assert "Secret shop/deploy-key" in refused.value.message and "BEGIN" not in refused.value.message


async def test_the_application_runs_on_both_hosts_with_its_credentials_in_a_root_only_file(
    world: dict[str, Any],
) -> None:
    hosts, project = world["hosts"], spec(world["hosts"])
    ctx, seen = await converged(world, project)
    assert seen.healthy, seen.detail
    assert seen.state == wanted(ctx, project)
    assert seen.outputs["colours"]["blue"]["endpoints"] == [f"{h.address}:4510" for h in hosts.hosts]
    async with httpx.AsyncClient() as client:
        for host in hosts.hosts:
            page = await client.get(f"http://{host.address}:4510/api/health")
            assert page.status_code == 200
    first = hosts.hosts[0]
    assert hosts.ssh(first, "stat -c '%a %U' /etc/codeb/env/codeb.shop.web.blue.env").split() == ["600", "root"]
    assert f"APP_SECRET={CREDENTIAL}" in hosts.ssh(first, "cat /etc/codeb/env/codeb.shop.web.blue.env")
    unit = hosts.ssh(first, "cat /etc/containers/systemd/codeb.shop.web.blue.container")
    assert CREDENTIAL not in unit and "EnvironmentFile=/etc/codeb/env/codeb.shop.web.blue.env" in unit
    assert hosts.ssh(first, "systemctl is-active codeb.shop.web.blue.service").strip() == "active"
    # Applying the same state again touches nothing.
    before = container_id(hosts, 0)
    await world["workload"].apply(ctx, wanted(ctx, project))
    assert container_id(hosts, 0) == before
    # `codeb logs`: each colour's journal from each host, the health checks among its lines.
    journals = await world["workload"].logs(ctx, 50)
    assert set(journals) == {f"blue on {h.address}" for h in hosts.hosts}
    assert all(any("/api/health" in line for line in lines) for lines in journals.values()), journals


async def test_a_hand_edited_unit_is_drift_and_is_put_back(world: dict[str, Any]) -> None:
    hosts, project = world["hosts"], spec(world["hosts"])
    ctx, _ = await converged(world, project)
    hosts.ssh(hosts.hosts[1], "sed -i 's/^HealthRetries=3/HealthRetries=9/' "
                              "/etc/containers/systemd/codeb.shop.web.blue.container")  # fmt: skip
    seen = await world["workload"].observe(ctx)
    assert blue(seen)["unitsMatch"] is False
    await world["workload"].apply(ctx, wanted(ctx, project))
    seen = await world["workload"].observe(ctx)
    assert seen.state == wanted(ctx, project) and seen.healthy


async def test_a_rotated_credential_restarts_the_containers_with_it(world: dict[str, Any]) -> None:
    hosts, project = world["hosts"], spec(world["hosts"])
    ctx, _ = await converged(world, project)
    before = [container_id(hosts, i) for i in range(2)]
    world["secrets"].data[(NS, "web-conn")] = {"APP_SECRET": "rotated-" + CREDENTIAL}
    seen = await world["workload"].observe(ctx)
    assert blue(seen)["environmentCurrent"] is False
    # The old colour during a rollout is kept exactly as it runs: its stale state touches nothing.
    await world["workload"].apply(ctx, {"colours": {"blue": blue(seen)}})
    assert [container_id(hosts, i) for i in range(2)] == before
    await world["workload"].apply(ctx, wanted(ctx, project))
    after = [container_id(hosts, i) for i in range(2)]
    assert all(a and a != b for a, b in zip(after, before, strict=True))
    env = hosts.ssh(hosts.hosts[1], "podman exec codeb.shop.web.blue printenv APP_SECRET").strip()
    assert env == "rotated-" + CREDENTIAL
    assert blue(await world["workload"].observe(ctx))["environmentCurrent"] is True


async def test_a_secret_no_environment_file_can_carry_is_named_and_the_containers_keep_running(
    world: dict[str, Any],
) -> None:
    hosts, project = world["hosts"], spec(world["hosts"])
    ctx, _ = await converged(world, project)
    before = container_id(hosts, 0)
    world["secrets"].data[(NS, "web-conn")] = {"APP_SECRET": CREDENTIAL, "TLS_KEY": "-----BEGIN KEY-----\nabc-secret"}
    seen = await world["workload"].observe(ctx)
    assert blue(seen)["environmentCurrent"] is False and seen.healthy
    with pytest.raises(RetryableError) as refused:
        await world["workload"].apply(ctx, wanted(ctx, project))
    assert refused.value.reason == "SecretInvalid" and "TLS_KEY spans lines" in refused.value.message
    assert "abc-secret" not in refused.value.message and CREDENTIAL not in refused.value.message
    assert container_id(hosts, 0) == before


async def test_an_image_that_does_not_exist_is_refused_and_the_serving_colour_is_untouched(
    world: dict[str, Any],
) -> None:
    hosts = world["hosts"]
    ctx, seen = await converged(world, spec(hosts))
    before = container_id(hosts, 0)
    broken = spec(hosts, project={"slug": "web", "source": {"image": "localhost/does-not-exist:9"}})
    with pytest.raises(RetryableError) as refused:
        await world["workload"].apply(ctx, {"colours": {"blue": blue(seen), "green": release(ctx, broken, 4511)}})
    assert refused.value.reason == "ImagePullFailed" and "localhost/does-not-exist:9" in refused.value.message
    assert container_id(hosts, 0) == before
    seen = await world["workload"].observe(ctx)
    assert seen.healthy and seen.state is not None and list(seen.state["colours"]) == ["blue"]
    assert blue(seen)["image"] == HELLO_IMAGE


async def test_a_new_colour_starts_beside_the_serving_one_on_every_host_and_is_judged_on_each(
    world: dict[str, Any],
) -> None:
    """Green starts on its own port on both hosts while blue serves untouched; green's health is
    observed per host (the rollout's gate); stopping green leaves blue as it was."""
    hosts = world["hosts"]
    ctx, seen = await converged(world, spec(hosts))
    blues = [container_id(hosts, i) for i in range(2)]
    sick = spec(hosts, monitoring={"healthPath": "/never-answers"})
    await world["workload"].apply(ctx, {"colours": {"blue": blue(seen), "green": release(ctx, sick, 4511)}})
    seen = await world["workload"].observe(ctx)
    assert seen.state is not None and seen.state["colours"]["green"]["port"] == 4511
    assert seen.state["colours"]["green"]["hosts"] == [h.address for h in hosts.hosts]
    green = seen.outputs["colours"]["green"]
    assert not green["healthy"] and green["answered"] and green["endpoints"] == []
    assert all(f"{h.address}: GET /never-answers on {h.address}:4511 answered 404" in green["detail"]
               for h in hosts.hosts), green  # fmt: skip
    assert seen.outputs["colours"]["blue"]["healthy"] and [container_id(hosts, i) for i in range(2)] == blues
    for host in hosts.hosts:
        assert hosts.ssh(host, "systemctl is-active codeb.shop.web.green.service").strip() == "active"
    await world["workload"].apply(ctx, {"colours": {"blue": blue(seen)}})
    after = await world["workload"].observe(ctx)
    assert after.state is not None and list(after.state["colours"]) == ["blue"] and after.healthy
    assert [container_id(hosts, i) for i in range(2)] == blues
    assert all(container_id(hosts, i, "green") == "" for i in range(2))


async def test_a_hook_runs_in_the_new_colours_container_with_its_output_redacted(world: dict[str, Any]) -> None:
    hosts = world["hosts"]
    ctx, seen = await converged(world, spec(hosts))
    state, endpoints = blue(seen), tuple(seen.outputs["colours"]["blue"]["endpoints"])
    said = Hook(name="migrate", command=["sh", "-c", "echo migrating revision=$CODEB_REVISION secret=$APP_SECRET"])
    workload = world["workload"]
    run = await follow_to_end(workload, ctx, state, endpoints, said)
    assert run.result == "Succeeded", run.message
    assert hosts.hosts[0].address in run.message and "migrating revision=" in run.message
    assert "secret=***" in run.message and CREDENTIAL not in run.message
    failing = await follow_to_end(workload, ctx, state, endpoints, Hook(name="f", command=["sh", "-c", "exit 3"]))
    assert failing.result == "Failed" and "(exit code 3)" in failing.message
    slow = Hook(name="slow", command=["sleep", "30"], timeout_seconds=1)
    late = await follow_to_end(workload, ctx, state, endpoints, slow)
    assert late.result == "Failed" and "timed out after 1 s" in late.message


async def test_a_hook_runs_detached_on_the_host_once_and_goes_with_the_project(world: dict[str, Any]) -> None:
    hosts, workload = world["hosts"], world["workload"]
    ctx, seen = await converged(world, spec(hosts))
    state, endpoints = blue(seen), tuple(seen.outputs["colours"]["blue"]["endpoints"])
    counted = Hook(name="migrate", command=["sh", "-c", "echo ran >> /tmp/hook-runs; sleep 2; echo done"])
    run = recorded("migrate")
    assert (await workload.follow_hook(ctx, state, endpoints, counted, run)).result == "Running"
    assert (await workload.follow_hook(ctx, state, endpoints, counted, run)).result == "Running"  # not again
    finished = await follow_to_end(workload, ctx, state, endpoints, counted, run)
    assert finished.result == "Succeeded" and finished.message.endswith("done\n(exit code 0)")
    first = hosts.hosts[0]
    assert hosts.ssh(first, f"podman exec {unit_name(ctx.key, 'blue')} cat /tmp/hook-runs").split() == ["ran"]
    # A hook whose rollout was superseded is stopped on its host, and reads as killed from then on.
    overtaken, run = Hook(name="overtaken", command=["sleep", "700"]), recorded("overtaken")
    assert (await workload.follow_hook(ctx, state, endpoints, overtaken, run)).result == "Running"
    await workload.stop_hook(ctx, state, run)
    assert hosts.ssh(first, "pgrep -f '[s]leep 700' || true").strip() == ""
    stopped = await workload.follow_hook(ctx, state, endpoints, overtaken, run)
    assert stopped.result == "Failed" and "(exit code 137)" in stopped.message
    # A hook still running when the Project is deleted is stopped with it, its runs removed.
    endless = Hook(name="endless", command=["sleep", "600"])
    assert (await workload.follow_hook(ctx, state, endpoints, endless, recorded("endless"))).result == "Running"
    await workload.delete(ctx, retain=False)
    assert hosts.ssh(first, "pgrep -f '[s]leep 600' || true").strip() == ""
    assert hosts.ssh(first, "ls /var/lib/codeb/hooks").strip() == ""


async def test_a_port_held_by_another_process_is_refused_before_anything_starts(world: dict[str, Any]) -> None:
    hosts = world["hosts"]
    first = hosts.hosts[0]
    hosts.ssh(first, "systemd-run --unit=squatter systemd-socket-activate -l 4519 /bin/cat")
    try:
        ctx = await context(world["infrastructure"], spec(hosts))
        with pytest.raises(RetryableError) as refused:
            await world["workload"].apply(ctx, {"colours": {"blue": release(ctx, spec(hosts), 4519)}})
        assert refused.value.reason == "PortTaken" and first.address in refused.value.message
        assert hosts.ssh(first, "ls /etc/containers/systemd/").strip() == ""
    finally:
        hosts.ssh(first, "systemctl stop squatter", check=False)


async def test_deleting_stops_and_removes_units_files_and_containers(world: dict[str, Any]) -> None:
    hosts = world["hosts"]
    ctx, _ = await converged(world, spec(hosts))
    await world["workload"].delete(ctx, retain=False)
    for host in hosts.hosts:
        assert hosts.ssh(host, "ls /etc/containers/systemd/ /etc/codeb/env/").split() == [
            "/etc/codeb/env/:",
            "/etc/containers/systemd/:",
        ]
        assert hosts.ssh(host, "podman ps -a --format '{{.Names}}'").strip() == ""
    assert (await observe_until(world["workload"], ctx, lambda o: o.state is None)).state is None


async def test_a_departing_host_loses_the_unit_once_the_staying_one_serves(world: dict[str, Any]) -> None:
    """A scale-down: the infrastructure names the host it is about to take away; the workload leaves it."""
    hosts = world["hosts"]
    both, _ = await converged(world, spec(hosts))
    staying = container_id(hosts, 0)
    made = both.inputs[Component.infrastructure]["hosts"]
    shrinking = both.given({Component.infrastructure: Observation(outputs={"hosts": made[:1], "departing": made[1:]})})
    seen = await world["workload"].observe(shrinking)
    want = wanted(shrinking, spec(hosts, [hosts.hosts[0].address]))
    assert blue(seen)["hosts"] == [h.address for h in hosts.hosts] != want["colours"]["blue"]["hosts"]
    # The departing host gets no traffic, and does not count against the colour's health.
    assert seen.outputs["colours"]["blue"]["endpoints"] == [f"{hosts.hosts[0].address}:4510"] and seen.healthy
    await world["workload"].apply(shrinking, want)
    assert hosts.ssh(hosts.hosts[1], "ls /etc/containers/systemd/").strip() == ""
    assert hosts.ssh(hosts.hosts[1], "podman ps -a --format '{{.Names}}'").strip() == ""
    assert container_id(hosts, 0) == staying  # the staying host was not touched
    after = await world["workload"].observe(shrinking)
    assert after.healthy and after.state == want


def _other_key() -> str:
    return str(asyncssh.generate_private_key("ssh-ed25519").export_private_key().decode())


async def test_a_unit_of_the_earlier_naming_is_replaced_only_if_it_is_this_projects(world: dict[str, Any]) -> None:
    """An operator upgraded over units named codeb-<ns>-<name>-<colour>: this Project's, holding its port, is
    stopped and removed when the new unit starts; a file of that name whose header names another Project stays."""
    hosts = world["hosts"]
    mine, theirs = hosts.hosts[0], hosts.hosts[1]
    ctx, _ = await converged(world, spec(hosts))
    unit = hosts.ssh(mine, "cat /etc/containers/systemd/codeb.shop.web.blue.container")
    await world["workload"].delete(ctx, retain=False)
    legacy = unit.replace("codeb.shop.web.blue", "codeb-shop-web-blue")
    write(hosts, mine, "/etc/containers/systemd/codeb-shop-web-blue.container", legacy)
    hosts.ssh(mine, "touch /etc/codeb/env/codeb-shop-web-blue.env && systemctl daemon-reload && "
                    "systemctl start codeb-shop-web-blue.service")  # fmt: skip
    foreign = legacy.replace("for Project shop/web (blue)", "for Project shop-web/blue (blue)")
    write(hosts, theirs, "/etc/containers/systemd/codeb-shop-web-blue.container", foreign)

    await converged(world, spec(hosts))
    assert hosts.ssh(mine, "ls /etc/containers/systemd/").split() == ["codeb.shop.web.blue.container"]
    assert hosts.ssh(mine, "systemctl is-active codeb.shop.web.blue.service").strip() == "active"
    assert "codeb-shop-web-blue.container" in hosts.ssh(theirs, "ls /etc/containers/systemd/").split()
    hosts.ssh(theirs, "rm -f /etc/containers/systemd/codeb-shop-web-blue.container")


def write(hosts: BootedHosts, host: Any, path: str, content: str) -> None:
    encoded = base64.b64encode(content.encode()).decode()
    hosts.ssh(host, f"echo {encoded} | base64 -d > {path}")


async def test_a_build_starts_once_is_found_again_after_a_restart_and_a_silent_git_server_ends_at_its_timeout(
    world: dict[str, Any],
) -> None:
    """What a kill -9 between passes leaves (a recorded build, running on the hosts) is followed, not started
    again; two operators following at once start one run; a Git server that accepts and never answers
    holds a build only until its timeoutSeconds; a superseded build is stopped on every host."""
    hosts = world["hosts"]
    with socket.socket() as silent:  # accepts connections (the kernel's backlog), never answers a byte
        silent.bind((SERVICES_ADDRESS, 0))
        silent.listen(16)
        url = f"https://{SERVICES_ADDRESS}:{silent.getsockname()[1]}/site.git"
        project = spec(hosts, project={"slug": "web", "source": {"git": {"url": url, "timeoutSeconds": 30}},
                                       "revision": "a" * 40})  # fmt: skip
        ctx = await context(world["infrastructure"], project)
        addresses = [h.address for h in hosts.hosts]
        build = builds.due(project, ctx.key, None, addresses, datetime.now(UTC)).status
        assert build is not None and project.project.source.git is not None
        source = BuildSource(project.project.source.git, "a" * 40, project.project.template)
        both = await asyncio.gather(*(world["workload"].follow_build(ctx, source, build) for _ in range(2)))
        assert all(run.result == "Running" for runs in both for run in runs)
        pool = SshPool(connect_timeout=3, allow_internal=True)
        restarted = QuadletUnits(world["secrets"].read, pool)
        again = await restarted.follow_build(ctx, source, build)  # the operator after a restart
        assert [run.result for run in again] == ["Running", "Running"]
        clones = "pgrep -fc '[g]it-remote-https' || true"
        assert [hosts.ssh(h, clones).strip() for h in hosts.hosts] == ["1", "1"]  # one run per host, not three
        deadline = time.monotonic() + 90
        while any(run.result == "Running" for run in again) and time.monotonic() < deadline:
            await asyncio.sleep(2)
            again = await restarted.follow_build(ctx, source, build)
        assert all(run.result == "Failed" and "timed out after 30 s" in run.message for run in again), again
        # A newer build supersedes one that runs: it is stopped on every host.
        newer = builds.due(project, ctx.key, None, addresses, datetime.now(UTC)).status
        assert newer is not None
        assert all(r.result == "Running" for r in await restarted.follow_build(ctx, source, newer))
        await restarted.stop_build(ctx, newer)
        assert [hosts.ssh(h, clones).strip() for h in hosts.hosts] == ["0", "0"]
        stopped = await restarted.follow_build(ctx, source, newer)
        await pool.close()
        assert all(run.result == "Failed" and "(exit code 137)" in run.message for run in stopped), stopped


async def built(workload: QuadletUnits, ctx: DriverContext, source: BuildSource, build: Any) -> list[Any]:
    runs = await workload.follow_build(ctx, source, build)
    deadline = time.monotonic() + 120
    while any(run.result == "Running" for run in runs) and time.monotonic() < deadline:
        await asyncio.sleep(1)
        runs = await workload.follow_build(ctx, source, build.model_copy(update={"hosts": runs}))
    return runs


async def test_a_private_repository_over_ssh_is_read_with_the_projects_deploy_key_alone(
    world: dict[str, Any],
) -> None:
    """Real OpenSSH on both ends: the host's own root key (authorized) is never used, a Git host whose key is
    not in knownHosts is refused, and the deploy key clones; its files leave the host once the clone is done."""
    hosts, workload = world["hosts"], world["workload"]
    host = hosts.hosts[1]
    deploy, stranger = asyncssh.generate_private_key("ssh-ed25519"), asyncssh.generate_private_key("ssh-ed25519")
    roots = asyncssh.generate_private_key("ssh-ed25519")
    write(hosts, host, "/root/.ssh/id_ed25519", roots.export_private_key().decode())
    lines = " ".join(shlex.quote(f"restrict {k.export_public_key().decode().strip()}") for k in (deploy, roots))
    hosts.ssh(host, "chmod 600 /root/.ssh/id_ed25519 && cp /root/.ssh/authorized_keys /root/.ssh/kept && "
                    f"printf '%s\\n' {lines} >> /root/.ssh/authorized_keys")  # fmt: skip
    head = hosts.ssh(host, "rm -rf /srv/private.git /tmp/w && git init -q --bare -b main /srv/private.git && "
                           "git init -q -b main /tmp/w && cd /tmp/w && printf 'FROM scratch\\nCOPY index.html /\\n' "
                           ">Containerfile && echo private >index.html && git add -A && git -c user.name=t -c "
                           "user.email=t@t.invalid commit -qm one && git push -q /srv/private.git main && "
                           "git rev-parse HEAD").strip()  # fmt: skip
    host_key = hosts.ssh(host, "cut -d' ' -f1,2 /etc/ssh/ssh_host_ed25519_key.pub").strip()
    other_key = hosts.ssh(hosts.hosts[0], "cut -d' ' -f1,2 /etc/ssh/ssh_host_ed25519_key.pub").strip()
    try:
        git = {"url": "ssh://root@127.0.0.1/srv/private.git", "credentialsSecretRef": "git-key"}
        project = spec(hosts, [host.address], project={"slug": "web", "source": {"git": git}})
        ctx = await context(world["infrastructure"], project)
        assert project.project.source.git is not None
        source = BuildSource(project.project.source.git, "", project.project.template)

        async def build_with(key: asyncssh.SSHKey, known: str) -> list[Any]:
            world["secrets"].data[(NS, "git-key")] = {"privateKey": key.export_private_key().decode(),
                                                      "knownHosts": f"127.0.0.1 {known}"}  # fmt: skip
            build = builds.due(project, ctx.key, None, [host.address], datetime.now(UTC)).status
            return await built(workload, ctx, source, build)

        # A key the Git host does not know: refused, though the host's root has an authorized key of its own.
        [unknown] = await build_with(stranger, host_key)
        assert unknown.result == "Failed" and "Permission denied (publickey)" in unknown.message, unknown
        # The right key, but a Git host that is not the one knownHosts names: refused before any key is offered.
        [spoofed] = await build_with(deploy, other_key)
        assert spoofed.result == "Failed" and "Host key verification failed" in spoofed.message, spoofed
        [cloned] = await build_with(deploy, host_key)
        assert cloned.result == "Succeeded" and f"from commit {head}" in cloned.message, cloned
        assert "PRIVATE KEY" not in cloned.message
        assert hosts.ssh(host, "ls -A /run/codeb/git").strip() == ""  # no run's credentials stay on the host
    finally:
        hosts.ssh(host, "mv /root/.ssh/kept /root/.ssh/authorized_keys; rm -rf /root/.ssh/id_ed25519 /srv/private.git "
                        "/tmp/w")  # fmt: skip
