"""The Quadlet unit and environment file are pure data, and the real quadlet generator accepts them."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path
from typing import Any

import pytest

from controller.loop.naming import ProjectKey
from controller.specs.quadlet import (
    HEADER,
    HostFacts,
    env_digest,
    health_command,
    launch_of,
    legacy_cleanup,
    pull_line,
    render_env,
    render_unit,
    repository_of,
    unit_name,
)
from tests.testhosts import quadlet_binary

KEY = ProjectKey("shop", "web", "uid-1")
LAUNCH: dict[str, Any] = {
    "image": "ghcr.io/acme/shop:1.4.2",
    "port": 4001,
    "containerPort": 3000,
    "cpu": "500m",
    "memory": "512Mi",
    "healthPath": "/api/health",
    "probeIntervalSeconds": 15,
    "revision": "1.4.2",
}
MODERN = HostFacts("10.0.0.5", "5.4.2", frozenset({"cpu", "memory", "pids"}))
DEBIAN_12_IN_NSPAWN = HostFacts("10.213.1.2", "4.3.1", frozenset())

EXPECTED_MODERN = """\
# Managed by codeb-operator for Project shop/web (blue): edits are replaced on the next reconcile.
# codeb-launch: {"env":"e1","state":{"containerPort":3000,"cpu":"500m","healthPath":"/api/health",\
"image":"ghcr.io/acme/shop:1.4.2","memory":"512Mi","port":4001,"probeIntervalSeconds":15,"revision":"1.4.2"}}
[Unit]
Description=codeb shop/web (blue)
Wants=network-online.target
After=network-online.target

[Container]
ContainerName=codeb.shop.web.blue
Image=ghcr.io/acme/shop:1.4.2
PublishPort=10.0.0.5:4001:3000
EnvironmentFile=/etc/codeb/env/codeb.shop.web.blue.env
Label=codeb.dev/project=shop/web
Label=codeb.dev/colour=blue
HealthCmd=curl -fsS -o /dev/null 'http://127.0.0.1:3000/api/health' || wget -q -O /dev/null \
'http://127.0.0.1:3000/api/health' || python3 -c 'import sys, urllib.request; urllib.request.urlopen(sys.argv[1], \
timeout=4)' 'http://127.0.0.1:3000/api/health'
HealthInterval=15s
HealthTimeout=5s
HealthRetries=3
HealthStartPeriod=30s
Notify=healthy
PodmanArgs=--cpus=0.5 --memory=536870912

[Service]
# Quadlet 5 leaves a stale container-id file to podman 5 to clean up; podman 4 refuses to start over one.
ExecStartPre=-/bin/rm -f %t/%N.cid
Restart=always
RestartSec=5
TimeoutStartSec=300

[Install]
WantedBy=multi-user.target
"""


def test_unit_for_a_host_that_supports_everything() -> None:
    assert render_unit(KEY, "blue", LAUNCH, MODERN, "e1") == EXPECTED_MODERN


def test_a_host_without_healthy_notify_or_cgroup_controllers_gets_what_it_can_run() -> None:
    """podman 4.3 refuses --sdnotify=healthy, and runc refuses limits without their controllers."""
    unit = render_unit(KEY, "blue", LAUNCH, DEBIAN_12_IN_NSPAWN, "e1")
    lines = unit.splitlines()
    assert "Notify=healthy" not in lines
    assert not any(line.startswith("PodmanArgs=") for line in lines)
    assert "# Not enforced on this host (no cpu, memory cgroup controller): cpu 500m, memory 512Mi" in lines
    assert "PublishPort=10.213.1.2:4001:3000" in lines


def test_only_the_controllers_a_host_has_are_used() -> None:
    unit = render_unit(KEY, "blue", LAUNCH, HostFacts("h", "5.0", frozenset({"memory"})), "e1")
    assert "PodmanArgs=--memory=536870912" in unit.splitlines()
    assert "(no cpu cgroup controller): cpu 500m" in unit


@pytest.mark.parametrize(("cpu", "flag"), [("500m", "0.5"), ("2", "2"), ("1.5", "1.5"), ("250m", "0.25")])
def test_cpu_quantities(cpu: str, flag: str) -> None:
    unit = render_unit(KEY, "blue", {**LAUNCH, "cpu": cpu}, MODERN, "e1")
    assert f"--cpus={flag} " in unit


def test_the_unit_records_what_it_was_rendered_from_and_no_credential() -> None:
    env = render_env(KEY, [("DATABASE_URL", "postgres://u:s3cret-pass@db/x"), ("PORT", "3000")])
    unit = render_unit(KEY, "blue", LAUNCH, MODERN, env_digest(env))
    assert launch_of(unit) == {"state": LAUNCH, "env": env_digest(env)}
    assert "s3cret-pass" not in unit
    assert env.splitlines()[1:] == ["DATABASE_URL=postgres://u:s3cret-pass@db/x", "PORT=3000"]


def test_environment_values_that_an_env_file_cannot_carry_are_refused() -> None:
    with pytest.raises(ValueError, match="KEY spans lines"):
        render_env(KEY, [("KEY", "-----BEGIN\nabc")])
    with pytest.raises(ValueError, match="not a valid environment variable name"):
        render_env(KEY, [("BAD-NAME", "x")])


def test_health_path_cannot_break_out_of_the_shell_word_or_reach_systemd_expansion() -> None:
    command = health_command(3000, "/h'$x;(y)&%41")
    assert "'http://127.0.0.1:3000/h%27%24x;(y)&%41'" in command
    unit = render_unit(KEY, "blue", {**LAUNCH, "healthPath": "/h'$x%41"}, MODERN, "e1")
    health = next(line for line in unit.splitlines() if line.startswith("HealthCmd="))
    assert "$" not in health and "%%41" in health


@pytest.mark.parametrize("host", [MODERN, DEBIAN_12_IN_NSPAWN], ids=["podman5", "podman4.3-no-controllers"])
def test_the_real_quadlet_generator_accepts_the_unit(tmp_path: Path, host: HostFacts) -> None:
    """quadlet -dryrun (podman v5.4.2, built from the Go module proxy) turns it into a service."""
    units = tmp_path / "units"
    units.mkdir()
    (units / "codeb.shop.web.blue.container").write_text(render_unit(KEY, "blue", LAUNCH, host, "e1"))
    done = subprocess.run([str(quadlet_binary()), "-dryrun"], capture_output=True, text=True,
                          env={**os.environ, "QUADLET_UNIT_DIRS": str(units)})  # fmt: skip
    assert done.returncode == 0, done.stderr
    service = done.stdout.split("---codeb.shop.web.blue.service---", 1)[1]
    exec_start = next(line for line in service.splitlines() if line.startswith("ExecStart="))
    assert "--publish " + f"{host.address}:4001:3000" in exec_start
    assert "--env-file /etc/codeb/env/codeb.shop.web.blue.env" in exec_start
    assert ("--sdnotify=healthy" in exec_start) == host.notify_healthy
    assert ("--memory=536870912" in exec_start) == ("memory" in host.controllers)
    assert "--health-cmd" in exec_start and "ghcr.io/acme/shop:1.4.2" in exec_start


def test_unit_names_belong_to_one_project_each() -> None:
    """With dashes, namespace a-b's Project c and namespace a's Project b-c had one unit (and one env file)."""
    first, second = ProjectKey("a-b", "c", "u1"), ProjectKey("a", "b-c", "u2")
    assert unit_name(first, "blue") != unit_name(second, "blue")
    long_one, long_two = (ProjectKey("team", "x" * 200 + tail, "u") for tail in ("1", "2"))
    assert len(unit_name(long_one, "green")) <= 200 and unit_name(long_one, "green") != unit_name(long_two, "green")
    assert "_" in unit_name(long_one, "green")  # no Project name holds one: a cut name is no other's whole name


def test_the_rendered_header_is_the_one_the_legacy_cleanup_checks() -> None:
    unit = render_unit(KEY, "blue", LAUNCH, HostFacts("10.0.0.5", "5.4.2", frozenset({"cpu", "memory"})), "e1")
    header = HEADER.format(project="shop/web", colour="blue")
    assert unit.splitlines()[0] == header and header in legacy_cleanup(KEY, "blue")
    assert "codeb-shop-web-blue.container" in legacy_cleanup(KEY, "blue")


def test_an_image_is_pulled_with_a_credential_only_from_stdin_and_its_repository_is_named_without_tag() -> None:
    assert pull_line("docker.io/library/x:1", False) == (
        "podman image exists docker.io/library/x:1 || podman pull -q docker.io/library/x:1 >/dev/null"
    )
    image = "registry.example.com:5000/codeb/apps/shop@sha256:" + "ab" * 32
    line = pull_line(image, True)
    assert line.startswith(f"podman image exists {image} || (umask 077;")
    assert '--authfile "$f"' in line and 'cat >"$f"' in line and 'rm -f "$f"' in line  # the credential: stdin only
    assert "--filter reference=registry.example.com:5000/codeb/apps/shop " in line
    shop = "registry.example.com:5000/codeb/apps/shop"
    for named, repository in ((f"{shop}:0123", shop), (image, shop), ("shop:1", "shop"),
                              ("localhost/codeb/apps/shop", "localhost/codeb/apps/shop")):  # fmt: skip
        assert repository_of(named) == repository
