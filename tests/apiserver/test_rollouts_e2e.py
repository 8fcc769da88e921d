"""Blue-green rollouts end to end on runtime local: the real operator, the real Caddy, a real app.

A broken revision is never served a request (the app counts its own), the previous one
serves throughout, and the same broken revision is not retried in a loop; a revision
set back switches to its warm colour at once; and an operator killed with SIGKILL at
each step of a rollout leaves one colour serving the new revision once restarted.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from controller.drivers.caddy import UpstreamFiles
from tests.helpers import wait_for
from tests.rollouts import NS, Load, RolloutWorld, rollout_world
from tests.servers import https_get


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RolloutWorld]:
    with rollout_world(tmp_path_factory.mktemp("rollouts")) as made:
        yield made


def served(world: RolloutWorld, name: str) -> dict[str, Any]:
    answer = https_get(world.caddy, f"{name}.localhost").stdout
    try:
        found: dict[str, Any] = json.loads(answer)
    except ValueError:
        return {"answer": answer}
    return found


def routed(world: RolloutWorld, name: str) -> list[str]:
    """Where the route sends requests now: its upstreams, read through their files."""
    route = json.loads(admin_get(world, f"/id/codeb.{NS}.{name}"))
    files = UpstreamFiles(world.caddy.root / "upstreams")
    return [files.read(u["dial"]) for h in route["handle"][0]["routes"][0]["handle"] if h["handler"] == "reverse_proxy"
            for u in h["upstreams"]]  # fmt: skip


def admin_get(world: RolloutWorld, path: str) -> str:
    return httpx.get(f"{world.caddy.admin_url}{path}", timeout=5).text


def test_a_broken_revision_is_never_served_and_not_retried_in_a_loop(world: RolloutWorld) -> None:
    world.apply("broken", "r1")
    world.wait_rollout("broken", "r1")
    load = Load(world.caddy, "broken.localhost", threads=2).start()
    try:
        world.apply("broken", "bad", mode="broken")
        failed = world.wait_rollout("broken", "bad", step="Failed")
        assert "failed 3 consecutive health checks" in failed["message"] and "answered 503" in failed["message"]
        ready = world.condition("broken", "Ready")
        assert (ready["status"], ready["reason"]) == ("False", "RolloutFailed")
        assert world.condition("broken", "WorkloadReady")["reason"] == "RolloutFailed"
        assert world.status("broken")["phase"] == "Degraded"
        assert world.condition("broken", "Serving")["reason"] == "Blue"
        # Not started again on its own: the same attempt, a while later.
        time.sleep(3)
        assert world.rollout("broken")["startedAt"] == failed["startedAt"]
        # Passes its first check, then fails before the switch: never served either.
        world.apply("broken", "flaky", mode="flaky:1")
        world.wait_rollout("broken", "flaky", step="Failed")
    finally:
        load.stop()
    assert world.served_by("bad") == 0 and world.served_by("flaky") == 0  # the broken apps' own counts
    assert load.failures == [] and set(load.revisions) == {"r1"} and load.sent > 50
    # The retry annotation starts the same release once more (and it fails once more).
    world.cluster.kubectl("annotate", "project", "broken", "-n", NS, "codeb.dev/retry-rollout=1", "--overwrite")
    wait_for(lambda: (r := world.rollout("broken")).get("retry") == "1" and r["step"] == "Failed", timeout=30,
             what="the retried rollout failing again")  # fmt: skip
    history = world.status("broken")["deployments"]
    assert [(d["revision"], d["result"]) for d in history] == [
        ("flaky", "Failed"), ("flaky", "Failed"), ("bad", "Failed"), ("r1", "Succeeded")
    ]  # fmt: skip
    assert world.served_by("flaky") == 0


def test_a_revision_set_back_switches_to_its_warm_colour_at_once(world: RolloutWorld) -> None:
    world.apply("back", "r1")
    world.wait_rollout("back", "r1")
    first = served(world, "back")
    world.apply("back", "r2")
    world.wait_rollout("back", "r2")
    assert served(world, "back")["revision"] == "r2"
    assert world.status("back")["serving"]["warm"] == "blue"
    started = time.monotonic()
    world.apply("back", "r1")
    wait_for(lambda: served(world, "back").get("revision") == "r1", timeout=10, interval=0.05, what="r1 again")
    switched_in = time.monotonic() - started
    print(f"switch back to the warm colour: {switched_in:.2f} s")
    assert switched_in < 2.0
    assert served(world, "back")["pid"] == first["pid"]  # the same process: no new start
    # Caddy switches within the pass; the status saying so is written as the pass ends.
    wait_for(lambda: world.condition("back", "Serving").get("reason") == "Blue", timeout=10, what="Serving: Blue")


@pytest.mark.parametrize("step", ["Started", "Checking", "Draining"])
def test_an_operator_killed_mid_rollout_resumes_to_one_colour_serving(world: RolloutWorld, step: str) -> None:
    name = f"kill-{step.lower()}"
    slow = {"healthCheck": {"intervalSeconds": 1, "timeoutSeconds": 1, "healthyThreshold": 4,
                            "unhealthyThreshold": 3}, "drainSeconds": 4}  # fmt: skip
    world.apply(name, "r1", **slow)
    world.wait_rollout(name, "r1")
    world.apply(name, "r2", **slow)
    if step == "Started":
        # The supervisor writes green.json once the new colour's process runs.
        wait_for(lambda: _green_started(world, name), timeout=30, interval=0.05, what="green started")
    else:
        wait_for(lambda: world.rollout(name).get("step") == step, timeout=30, interval=0.05, what=step)
    world.operator.kill()
    world.operator.start()
    world.wait_rollout(name, "r2")
    status = world.status(name)
    colour = status["serving"]["colour"]
    port = status["allocations"]["port" if colour == "blue" else "alternatePort"]
    assert routed(world, name) == [f"127.0.0.1:{port}"]  # one colour, the one status names
    assert served(world, name)["revision"] == "r2"
    assert [d["result"] for d in status["deployments"][:2]] == ["Succeeded", "Succeeded"]


def test_a_hook_runs_outside_the_pass_once_even_when_the_operator_is_killed_while_it_runs(
    world: RolloutWorld,
) -> None:
    name = "hooked"
    runs = world.counts / f"{name}-hook-runs"
    # Each run notes its release, then works for longer than a pass takes to look at it.
    hooks = [{"name": "migrate", "command": ["sh", "-c", f"echo $CODEB_REVISION >> {runs}; sleep 4; echo migrated"]}]
    world.apply(name, "r1", hooks=hooks)
    first = world.wait_rollout(name, "r1")
    assert [(h["name"], h["result"]) for h in first["hooks"]] == [("migrate", "Succeeded")]
    world.apply(name, "r2", hooks=hooks)

    def running() -> bool:  # recorded in status, and started on the machine
        hook = next(iter(world.rollout(name).get("hooks") or []), {})
        return world.rollout(name).get("revision") == "r2" and hook.get("result") == "Running" and runs.exists() \
            and runs.read_text().split() == ["r1", "r2"]  # fmt: skip

    wait_for(running, timeout=30, interval=0.05, what="the hook of r2 running")
    served_before = served(world, name)["revision"]
    world.operator.kill()
    world.operator.start()
    done = world.wait_rollout(name, "r2")
    assert runs.read_text().split() == ["r1", "r2"]  # found again after the restart, never started twice
    hook = done["hooks"][0]
    assert hook["result"] == "Succeeded" and hook["message"].endswith("migrated\n(exit code 0)") and hook["runId"]
    assert served_before == "r1" and served(world, name)["revision"] == "r2"  # switched only after the hook


def test_a_hook_still_running_when_its_rollout_is_superseded_is_stopped(world: RolloutWorld) -> None:
    """r2's hook would run ten minutes beside r3; it is killed in the pass that supersedes r2."""
    name = "overtaken"
    pid_file = world.counts / f"{name}-hook-pid"
    # r2's run waits (its pid noted); the others finish at once.
    script = f'if [ "$CODEB_REVISION" = r2 ]; then echo $$ > {pid_file}; exec sleep 600; fi; echo migrated'
    hooks = [{"name": "migrate", "command": ["sh", "-c", script], "timeoutSeconds": 900}]
    world.apply(name, "r1", hooks=hooks)
    world.wait_rollout(name, "r1")
    world.apply(name, "r2", hooks=hooks)
    wait_for(lambda: pid_file.exists() and pid_file.read_text().strip(), timeout=30, what="r2's hook running")
    pid = int(pid_file.read_text())
    assert _alive(pid)

    world.apply(name, "r3", hooks=hooks)
    wait_for(lambda: not _alive(pid), timeout=30, what="r2's hook stopped once r2 was superseded")
    done = world.wait_rollout(name, "r3")
    assert [(h["name"], h["result"]) for h in done["hooks"]] == [("migrate", "Succeeded")]
    assert [(d["revision"], d["result"]) for d in world.status(name)["deployments"][:2]] == [
        ("r3", "Succeeded"), ("r2", "Superseded")]  # fmt: skip
    said = world.cluster.kubectl("get", "events", "-n", NS, "--field-selector", "reason=HookStopped", "-o", "json")
    assert any(name in e["involvedObject"]["name"] for e in json.loads(said.stdout)["items"])


def _alive(pid: int) -> bool:
    """Running, not a zombie waiting for its parent."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(") ")[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def _green_started(world: RolloutWorld, name: str) -> list[Path]:
    return list((world.root / "state" / "workloads" / NS / name).glob("green.json"))
