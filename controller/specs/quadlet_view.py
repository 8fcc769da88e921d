"""What a quadlet host is asked about a Project's units, and its answer read back (pure).

`view_script` is the one shell command that reports every colour's unit, env file digest,
service state, container health and journal tail; `view_sections` and `host_view` turn its
output into a `HostView` per colour; `unit_matches` says whether a unit is exactly what
its own record renders to.
"""

from __future__ import annotations

import shlex
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from controller.loop.naming import ProjectKey
from controller.specs.quadlet import (
    HostFacts,
    env_path,
    launch_of,
    render_unit,
    unit_name,
    unit_path,
)
from schemas.project import Colour

COLOURS = tuple(colour.value for colour in Colour)


LOG_LINES = 5


SECTIONS = ("unit", "env", "service", "health", "log")


@dataclass
class HostView:
    """One colour on one host as observed: its unit (if any), what it was launched with, its health."""

    facts: HostFacts
    colour: str
    unit_text: str | None = None
    launch: Mapping[str, Any] | None = None
    env_sha: str | None = None
    service: dict[str, str] = field(default_factory=dict)
    container_health: str = ""
    log: str = ""

    @property
    def endpoint(self) -> str:
        return f"{self.facts.address}:{self.launch['state']['port']}" if self.launch else ""


HostViews = dict[str, HostView]  # by colour


def unit_matches(key: ProjectKey, view: HostView, launched: Mapping[str, Any]) -> bool:
    """The unit on the host is exactly what its own record renders to, and launched like the others."""
    record = view.launch
    if record is None or dict(record["state"]) != dict(launched):
        return False
    return view.unit_text == render_unit(key, view.colour, record["state"], view.facts, record["env"])


def view_script(key: ProjectKey, colour: str) -> str:
    name = unit_name(key, colour)
    service, unit = shlex.quote(name + ".service"), shlex.quote(unit_path(key, colour))
    # The container's health and journal only where the colour has a unit: a podman call per absent
    # colour, host and observation would be most of a steady state's cost.
    with_unit = "; ".join([
        f"echo '--{colour}:health'",
        f"podman inspect --format '{{{{.State.Health.Status}}}}' {shlex.quote(name)} 2>/dev/null",
        f"echo '--{colour}:log'",
        f"journalctl -u {service} -n {LOG_LINES} --no-pager -o cat 2>/dev/null",
    ])  # fmt: skip
    return "; ".join(
        [
            f"echo '--{colour}:unit'",
            f"cat {unit} 2>/dev/null",
            f"echo '--{colour}:env'",
            f"sha256sum {shlex.quote(env_path(key, colour))} 2>/dev/null",
            f"echo '--{colour}:service'",
            f"systemctl show -p ActiveState -p SubState -p Result -p NRestarts {service}",
            f"if [ -f {unit} ]; then {with_unit}; fi",
            "true",
        ]
    )


def view_sections(output: str) -> dict[str, dict[str, str]]:
    """The view script's output, by colour and section."""
    sections: dict[tuple[str, str], list[str]] = {}
    current: list[str] | None = None
    for line in output.splitlines(keepends=True):
        marker = line.strip()
        colour, _, section = marker[2:].partition(":")
        if marker.startswith("--") and colour in COLOURS and section in SECTIONS:
            current = sections.setdefault((colour, section), [])
        elif current is not None:
            current.append(line)
    found: dict[str, dict[str, str]] = {}
    for (colour, section), lines in sections.items():
        found.setdefault(colour, {})[section] = "".join(lines)
    return found


def host_view(facts: HostFacts, colour: str, sections: Mapping[str, str]) -> HostView:
    view = HostView(facts, colour)
    if sections.get("unit"):
        view.unit_text = sections["unit"]
        view.launch = launch_of(view.unit_text)
    view.env_sha = sections.get("env", "").split(" ")[0].strip() or None
    view.service = dict(line.split("=", 1) for line in sections.get("service", "").splitlines() if "=" in line)
    view.container_health = sections.get("health", "").strip()
    view.log = sections.get("log", "")
    return view
