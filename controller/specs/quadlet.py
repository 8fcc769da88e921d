"""Pure builders for what a quadlet host receives: the ``.container`` unit and its environment file.

Both are rendered with jinja2 from ``controller/specs/templates`` and depend only on their
arguments, so tests compare them with ``==`` and feed them to the real quadlet
generator. The unit records what it was rendered from (``# codeb-launch: {...}``, no
credential in it, only the environment file's digest), which is how the driver tells
drift from a change of spec without any state of its own.

What a host supports shapes its unit: ``Notify=healthy`` needs podman 4.7 or later,
and a cpu or memory limit needs that cgroup controller. A limit a host cannot enforce
is left out of ``PodmanArgs`` (podman would refuse to start) and named in a comment.
"""

from __future__ import annotations

import hashlib
import json
import re
import shlex
import urllib.parse
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from controller.loop.naming import ProjectKey
from controller.specs.rendering import templates

UNIT_DIR = "/etc/containers/systemd"
ENV_DIR = "/etc/codeb/env"
NOTIFY_HEALTHY_SINCE = (4, 7)
LAUNCH_PREFIX = "# codeb-launch: "
ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


@dataclass(frozen=True)
class HostFacts:
    """What the infrastructure observed about one host (`controller.drivers.hosts`)."""

    address: str
    podman: str = "0"
    controllers: frozenset[str] = frozenset()

    @classmethod
    def of(cls, observed: Mapping[str, Any]) -> HostFacts:
        return cls(observed["address"], observed.get("podman", "0"), frozenset(observed.get("controllers", [])))

    @property
    def notify_healthy(self) -> bool:
        return _version(self.podman) >= NOTIFY_HEALTHY_SINCE


# systemd's limit on a unit's name is 255, ".service" included; a Project's name may be 253 long.
UNIT_NAME_MAX = 200
HEADER = "# Managed by codeb-operator for Project {project} ({colour}): edits are replaced on the next reconcile."


def unit_name(key: ProjectKey, colour: str) -> str:
    """One Project's colour, and no other's: ``codeb.<namespace>.<name>.<colour>``.

    A namespace and a colour hold no dot, so the first and the last dot say where the name is
    (with dashes, ``a-b/c`` and ``a/b-c`` were one unit). A name too long for systemd is cut and
    given its digest after a ``_``, which no Project's name can hold.
    """
    name = f"codeb.{key.namespace}.{key.name}.{colour}"
    if len(name) <= UNIT_NAME_MAX:
        return name
    digest = hashlib.sha256(f"{key.namespace}/{key.name}".encode()).hexdigest()[:16]
    return f"codeb.{key.namespace}.{key.name[:120]}_{digest}.{colour}"


def legacy_cleanup(key: ProjectKey, colour: str) -> str:
    """A shell line removing this Project's unit under the name used before (``codeb-<ns>-<name>-<colour>``),
    only where its header says it is this Project's: that name could be another's."""
    legacy = f"codeb-{key.namespace}-{key.name}-{colour}"
    unit, env = shlex.quote(f"{UNIT_DIR}/{legacy}.container"), shlex.quote(f"{ENV_DIR}/{legacy}.env")
    header = shlex.quote(HEADER.format(project=f"{key.namespace}/{key.name}", colour=colour))
    return (f"if [ -f {unit} ] && head -n 1 {unit} | grep -qxF -- {header}; then "
            f"systemctl stop {shlex.quote(legacy + '.service')}; rm -f {unit} {env}; "
            f"podman rm -f -i {shlex.quote(legacy)} >/dev/null; systemctl daemon-reload; fi")  # fmt: skip


def unit_path(key: ProjectKey, colour: str) -> str:
    return f"{UNIT_DIR}/{unit_name(key, colour)}.container"


def env_path(key: ProjectKey, colour: str) -> str:
    return f"{ENV_DIR}/{unit_name(key, colour)}.env"


def render_env(key: ProjectKey, values: Sequence[tuple[str, str]]) -> str:
    """podman's --env-file format: NAME=value a line, taken literally (no quoting, so no newlines)."""
    for name, value in values:
        if not ENV_NAME.match(name):
            raise ValueError(f"{name!r} is not a valid environment variable name")
        if "\n" in value or "\r" in value:
            raise ValueError(f"the value of {name} spans lines, which an environment file cannot carry")
    return templates.get_template("app.env.j2").render(project=f"{key.namespace}/{key.name}", values=values)


def env_digest(content: str) -> str:
    return hashlib.sha256(content.encode()).hexdigest()


def render_unit(key: ProjectKey, colour: str, launch: Mapping[str, Any], host: HostFacts, env_sha: str) -> str:
    """The ``.container`` unit for one host. ``launch`` is the workload state minus what is per host."""
    limits = {"cpu": f"--cpus={_cpus(launch['cpu'])}", "memory": f"--memory={_bytes(launch['memory'])}"}
    enforced = [flag for controller, flag in limits.items() if controller in host.controllers]
    unenforced = [controller for controller in limits if controller not in host.controllers]
    record = json.dumps({"state": dict(launch), "env": env_sha}, sort_keys=True, separators=(",", ":"))
    return templates.get_template("quadlet.container.j2").render(
        project=f"{key.namespace}/{key.name}",
        colour=colour,
        unit=unit_name(key, colour),
        launch=record,  # a comment: systemd expands no specifiers there
        image=launch["image"],
        address=host.address,
        port=launch["port"],
        container_port=launch["containerPort"],
        env_path=env_path(key, colour),
        health_cmd=_escape(health_command(launch["containerPort"], launch["healthPath"])),
        interval=launch["probeIntervalSeconds"],
        notify_healthy=host.notify_healthy,
        podman_args=enforced,
        unenforced=unenforced,
        unenforced_limits=", ".join(f"{c} {launch[c]}" for c in unenforced),
    )


def launch_of(unit_text: str) -> dict[str, Any] | None:
    """What a unit was rendered from, read back from its header (None: not a unit of ours)."""
    for line in unit_text.splitlines():
        if line.startswith(LAUNCH_PREFIX):
            try:
                record = json.loads(line[len(LAUNCH_PREFIX) :])
            except ValueError:
                return None
            return record if isinstance(record, dict) else None
    return None


def pull_line(image: str, authenticated: bool) -> str:
    """The shell line that puts ``image`` on a host if it is not there. ``authenticated``: pulled with the
    credential on the line's stdin (the Project's, for its own repository of its Platform's registry), in a
    file on the host's tmpfs that goes after the pull: never in a unit, a command line or on its disk."""
    quoted = shlex.quote(image)
    if not authenticated:
        return f"podman image exists {quoted} || podman pull -q {quoted} >/dev/null"
    # A file a pull killed half-way (its connection cut) left goes with the next pull. The repository's older
    # images go, but for the three newest (a colour's, a rollback's); podman refuses to remove one in use.
    return (f"podman image exists {quoted} || (umask 077; mkdir -p /run/codeb && "
            "find /run/codeb -maxdepth 1 -name 'pull.*' -mmin +15 -delete; "
            'f=$(mktemp /run/codeb/pull.XXXXXX) && cat >"$f" && '
            f'podman pull -q --authfile "$f" {quoted} >/dev/null; rc=$?; rm -f "$f"; [ $rc = 0 ] || exit $rc; '
            f"podman images -q --sort created --filter reference={shlex.quote(repository_of(image))} "
            "| tail -n +4 | xargs -r podman rmi >/dev/null 2>&1; exit 0)")  # fmt: skip


def repository_of(image: str) -> str:
    """``image`` without its tag or digest (a registry's port, before the first slash, stays)."""
    head, _, last = image.split("@", 1)[0].rpartition("/")
    return f"{head}/{last.split(':', 1)[0]}" if head else last.split(":", 1)[0]


def health_command(container_port: int, path: str) -> str:
    """A shell line run inside the container: whichever HTTP client the image has (curl, wget or python3).

    The URL is one single-quoted shell word; of the characters a path may hold, only the
    two that would escape it are percent-encoded: ``'`` (ends the word) and ``$`` (systemd
    expands it in the command line quadlet writes).
    """
    url = "'http://127.0.0.1:{}{}'".format(container_port, urllib.parse.quote(path, safe="/%:@._~-!&()*+,;="))
    python = "import sys, urllib.request; urllib.request.urlopen(sys.argv[1], timeout=4)"
    return f"curl -fsS -o /dev/null {url} || wget -q -O /dev/null {url} || python3 -c '{python}' {url}"


def _escape(value: str) -> str:
    """systemd expands %-specifiers in unit values; a literal % is written %%."""
    return value.replace("%", "%%")


def _cpus(quantity: str) -> str:
    amount = Decimal(quantity[:-1]) / 1000 if quantity.endswith("m") else Decimal(quantity)
    return format(amount.normalize(), "f")


_UNITS = {"": 1, "K": 10**3, "M": 10**6, "G": 10**9, "T": 10**12,
          "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40}  # fmt: skip


def _bytes(quantity: str) -> int:
    match = re.fullmatch(r"([0-9]+)([KMGT]i?)?", quantity)
    if match is None:
        raise ValueError(f"{quantity!r} is not a memory quantity")
    return int(match.group(1)) * _UNITS[match.group(2) or ""]


def _version(text: str) -> tuple[int, ...]:
    return tuple(int(part) for part in re.findall(r"[0-9]+", text)[:3]) or (0,)
