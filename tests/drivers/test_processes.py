"""Runtime local against real processes: start, adopt after a restart, replace on drift,
name every failure, stop on delete."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from controller.clients.http import Probe, probe_http
from controller.drivers.processes import LocalProcesses
from controller.errors import PermanentError, RetryableError
from controller.loop.interface import DriverContext
from controller.loop.planner import Component, State, desired_state
from schemas.project import App, Hook
from tests.drivers_common import context, follow_to_end, recorded
from tests.helpers import observe_until
from tests.servers import free_port

ECHO_APP = """
import json, os, sys
from http.server import BaseHTTPRequestHandler, HTTPServer

class Handler(BaseHTTPRequestHandler):
    def do_GET(self):
        answers = {"/api/health": (200, "ok"), "/env": (200, json.dumps(dict(os.environ))),
                   "/pid": (200, str(os.getpid()))}
        code, body = answers.get(self.path, (404, "no such page"))
        self.send_response(code)
        self.end_headers()
        self.wfile.write(body.encode())

    def do_POST(self):
        body = self.rfile.read(int(self.headers["Content-Length"]))
        self.send_response(201 if self.path == "/api/apps/install" else 404)
        self.end_headers()
        self.wfile.write(b"installed " + body)

    def log_message(self, *args):
        pass

print("starting", flush=True)
HTTPServer((os.environ["HOST"], int(os.environ["PORT"])), Handler).serve_forever()
"""

CRASHING_APP = """
import os, sys
print("connecting with " + os.environ.get("DATABASE_PASSWORD", "?"), flush=True)
print("boom: cannot reach the database", flush=True)
sys.exit(3)
"""


HOOK = """
import os, sys
print("migrating with " + os.environ["DATABASE_PASSWORD"] + ", greeting " + os.environ["GREETING"], flush=True)
sys.exit(int(sys.argv[1]))
"""


class Secrets:
    def __init__(self) -> None:
        self.data: dict[tuple[str, str], dict[str, str]] = {}

    async def read(self, namespace: str, name: str, project: str | None = None) -> dict[str, str] | None:
        found = self.data.get((namespace, name))
        return dict(found) if found is not None else None


@pytest.fixture()
def root(tmp_path: Path) -> Path:
    (tmp_path / "app").mkdir()
    (tmp_path / "app" / "echo.py").write_text(ECHO_APP)
    (tmp_path / "app" / "crash.py").write_text(CRASHING_APP)
    (tmp_path / "app" / "sleepy.py").write_text("import time\ntime.sleep(3600)\n")
    (tmp_path / "app" / "hook.py").write_text(HOOK)
    return tmp_path


@pytest.fixture()
def store() -> Secrets:
    return Secrets()


@pytest.fixture()
async def driver(root: Path, store: Secrets) -> AsyncIterator[LocalProcesses]:
    made = LocalProcesses(store.read, root, root / "state", health_timeout=2.0, start_timeout=3.0)
    made.contexts = []  # type: ignore[attr-defined]
    yield made
    for ctx in made.contexts:  # type: ignore[attr-defined]
        await made.delete(ctx, retain=False)


def workload(driver: LocalProcesses, store: Secrets, script: str = "echo.py", **env: Any) -> tuple[DriverContext, Any]:
    slug = f"app{len(driver.contexts)}"  # type: ignore[attr-defined]
    ctx, spec = context(
        slug,
        port=free_port(),
        project={"slug": slug, "source": {"command": [sys.executable, script], "workingDir": "app"}},
        environment={"type": "staging", "variables": {"GREETING": "hello"}, **env},
    )
    driver.contexts.append(ctx)  # type: ignore[attr-defined]
    store.data[("team", ctx.allocations.connection_secret or "")] = {"DATABASE_PASSWORD": "s3cret-password-1"}
    return ctx, desired_state(spec, ctx.allocations)[Component.workload]


def blue(state: State) -> State:
    """A workload with one colour, blue, running ``state``: what the rollout asks of the driver."""
    return {"colours": {"blue": state}}


async def fetch(ctx: DriverContext, path: str) -> httpx.Response:
    async with httpx.AsyncClient(timeout=5) as client:
        return await client.get(f"http://127.0.0.1:{ctx.allocations.port}{path}")


async def started(driver: LocalProcesses, store: Secrets) -> tuple[DriverContext, Any, str]:
    """A healthy echo workload, and its application's pid."""
    ctx, want = workload(driver, store)
    await driver.apply(ctx, blue(want))
    await observe_until(driver, ctx, lambda s: s.healthy)
    return ctx, want, (await fetch(ctx, "/pid")).text


async def test_runs_the_command_with_its_credentials_variables_and_port(driver: LocalProcesses, store: Secrets) -> None:
    ctx, want = workload(driver, store)
    assert (await driver.observe(ctx)).state is None
    await driver.apply(ctx, blue(want))
    seen = await observe_until(driver, ctx, lambda s: s.healthy)
    assert seen.state == blue(want) and seen.healthy
    health = {"healthy": True, "detail": None, "answered": True, "endpoints": [f"127.0.0.1:{ctx.allocations.port}"],
              "httpStatus": 200}  # fmt: skip
    probed = seen.outputs["colours"]["blue"]
    assert {k: v for k, v in probed.items() if k != "probeSeconds"} == health and 0 < probed["probeSeconds"] < 2
    env = (await fetch(ctx, "/env")).json()
    assert env["DATABASE_PASSWORD"] == "s3cret-password-1" and env["GREETING"] == "hello"
    assert env["PORT"] == str(ctx.allocations.port) and env["HOST"] == "127.0.0.1"
    # Nothing of the operator's own environment reaches the application.
    assert not {k for k in env if k.startswith("KUBE")} and "PYTEST_CURRENT_TEST" not in env
    # Command lines are world-readable: the supervisor's names the Project, never a credential.
    app = int((await fetch(ctx, "/pid")).text)
    supervisor = Path(f"/proc/{app}/stat").read_text().rsplit(")", 1)[1].split()[1]
    cmdline = Path(f"/proc/{supervisor}/cmdline").read_bytes()
    assert b"supervise.py" in cmdline and b"s3cret" not in cmdline


async def test_a_restarted_operator_adopts_the_process_instead_of_starting_another(
    driver: LocalProcesses, store: Secrets, root: Path
) -> None:
    ctx, want, pid = await started(driver, store)
    restarted = LocalProcesses(store.read, root, root / "state")
    seen = await restarted.observe(ctx)
    assert seen.state == blue(want) and seen.healthy
    await restarted.apply(ctx, blue(want))
    assert (await fetch(ctx, "/pid")).text == pid


async def test_a_rotated_password_or_changed_variable_replaces_the_process(
    driver: LocalProcesses, store: Secrets
) -> None:
    ctx, want, pid = await started(driver, store)
    store.data[("team", ctx.allocations.connection_secret or "")]["DATABASE_PASSWORD"] = "rotated-password-2"
    seen = await driver.observe(ctx)
    assert seen.state is not None and seen.state["colours"]["blue"]["environmentCurrent"] is False
    await driver.apply(ctx, blue(want))
    await observe_until(driver, ctx, lambda s: s.healthy)
    assert (await fetch(ctx, "/env")).json()["DATABASE_PASSWORD"] == "rotated-password-2"
    assert (await fetch(ctx, "/pid")).text != pid
    changed = {**want, "variables": {"GREETING": "bonjour"}}
    await driver.apply(ctx, blue(changed))
    seen = await observe_until(driver, ctx, lambda s: s.healthy)
    assert seen.state == blue(changed) and (await fetch(ctx, "/env")).json()["GREETING"] == "bonjour"


async def test_a_port_another_process_holds_is_refused_and_named(driver: LocalProcesses, store: Secrets) -> None:
    ctx, want = workload(driver, store)
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", ctx.allocations.port or 0))
        squatter.listen()
        with pytest.raises(RetryableError) as caught:
            await driver.apply(ctx, blue(want))
        assert caught.value.reason == "PortTaken" and str(ctx.allocations.port) in caught.value.message
    assert (await driver.observe(ctx)).state is None


async def test_a_change_to_a_taken_port_is_refused_and_the_running_process_keeps_serving(
    driver: LocalProcesses, store: Secrets
) -> None:
    ctx, want, pid = await started(driver, store)
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        taken = squatter.getsockname()[1]
        with pytest.raises(RetryableError) as caught:
            await driver.apply(ctx, blue({**want, "port": taken}))
        assert caught.value.reason == "PortTaken"
    assert (await fetch(ctx, "/pid")).text == pid
    assert (await driver.observe(ctx)).state == blue(want)


async def test_a_stranger_on_the_port_is_named_not_probed_in_our_place(driver: LocalProcesses, store: Secrets) -> None:
    ctx, want = workload(driver, store, script="sleepy.py")
    await driver.apply(ctx, blue(want))  # the application runs but never listens
    stranger = subprocess.Popen([sys.executable, "-m", "http.server", "--bind", "127.0.0.1", str(ctx.allocations.port)],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    try:
        seen = await observe_until(driver, ctx, lambda s: s.detail and "held by another process" in s.detail)
        # The stranger answers 200 on every path; the driver never mistakes it for the application.
        assert not seen.healthy
        assert seen.detail == (
            f"blue: port {ctx.allocations.port} is held by another process (pid {stranger.pid}), not this Project's"
        )
    finally:
        stranger.kill()
        stranger.wait()


async def test_a_health_path_that_never_answers_is_unhealthy_with_what_it_said(
    driver: LocalProcesses, store: Secrets, root: Path
) -> None:
    ctx, spec = context(
        "unanswered",
        port=free_port(),
        project={"slug": "unanswered", "source": {"command": [sys.executable, "echo.py"], "workingDir": "app"}},
        monitoring={"healthPath": "/healthz"},
    )
    driver.contexts.append(ctx)  # type: ignore[attr-defined]
    want = desired_state(spec, ctx.allocations)[Component.workload]
    await driver.apply(ctx, blue(want))
    seen = await observe_until(driver, ctx, lambda s: s.detail and "answered" in s.detail)
    assert seen.state == blue(want) and not seen.healthy
    assert seen.detail == f"blue: GET /healthz on 127.0.0.1:{ctx.allocations.port} answered 404: no such page"


async def test_a_crashing_program_is_restarted_and_explained_without_its_secrets(
    driver: LocalProcesses, store: Secrets
) -> None:
    ctx, want = workload(driver, store, script="crash.py")
    await driver.apply(ctx, blue(want))
    seen = await observe_until(driver, ctx, lambda s: s.detail and "restarted 1 times" in s.detail)
    assert not seen.healthy and seen.detail is not None
    assert "exited with code 3" in seen.detail and "boom: cannot reach the database" in seen.detail
    assert "s3cret-password-1" not in seen.detail and "connecting with ***" in seen.detail


async def test_a_killed_application_is_restarted_by_its_supervisor(driver: LocalProcesses, store: Secrets) -> None:
    ctx, _, started_pid = await started(driver, store)
    pid = int(started_pid)
    os.kill(pid, signal.SIGKILL)
    await asyncio.sleep(0.5)
    seen = await observe_until(driver, ctx, lambda s: s.healthy)
    assert seen.healthy and int((await fetch(ctx, "/pid")).text) != pid


@pytest.mark.parametrize(
    ("source", "reason", "field"),
    [
        ({"command": ["no-such-program-xyz"], "workingDir": "app"}, "CommandNotFound", "source.command"),
        ({"command": ["python3"], "workingDir": "missing/dir"}, "WorkingDirMissing", "source.workingDir"),
        ({"command": ["python3"], "workingDir": "/etc"}, "WorkingDirNotAllowed", "source.workingDir"),
        ({"command": ["python3"], "workingDir": "app/../../.."}, "WorkingDirNotAllowed", "source.workingDir"),
    ],
)
async def test_a_program_or_directory_that_does_not_exist_is_named(
    driver: LocalProcesses, store: Secrets, source: dict[str, Any], reason: str, field: str
) -> None:
    ctx, spec = context("broken", port=free_port(), project={"slug": "broken", "source": source})
    with pytest.raises(PermanentError) as caught:
        await driver.apply(ctx, blue(desired_state(spec, ctx.allocations)[Component.workload]))
    assert caught.value.reason == reason and field in caught.value.message


async def test_a_missing_secret_ref_is_named(driver: LocalProcesses, store: Secrets) -> None:
    ctx, want = workload(driver, store, secretRefs=[{"name": "payments"}])
    with pytest.raises(RetryableError) as caught:
        await driver.apply(ctx, blue(want))
    assert caught.value.reason == "SecretMissing" and "team/payments" in caught.value.message


async def test_delete_stops_the_supervisor_and_the_application(
    driver: LocalProcesses, store: Secrets, root: Path
) -> None:
    ctx, _, started_pid = await started(driver, store)
    app_pid = int(started_pid)
    await driver.delete(ctx, retain=False)
    assert (await driver.observe(ctx)).state is None
    assert not Path(f"/proc/{app_pid}").exists() or "Z" in Path(f"/proc/{app_pid}/stat").read_text().split()[2]
    assert not (root / "state" / "workloads" / "team" / ctx.key.name).exists()
    with pytest.raises(httpx.TransportError):
        await fetch(ctx, "/pid")


async def test_two_colours_run_side_by_side_and_one_changes_without_touching_the_other(
    driver: LocalProcesses, store: Secrets
) -> None:
    ctx, want, blue_pid = await started(driver, store)
    green_port = free_port()
    green = {**want, "port": green_port, "variables": {"GREETING": "bonjour"}}
    await driver.apply(ctx, {"colours": {"blue": want, "green": green}})
    seen = await observe_until(driver, ctx, lambda s: s.healthy and len(s.state["colours"]) == 2)
    assert seen.state == {"colours": {"blue": want, "green": green}}
    assert seen.outputs["colours"]["green"]["endpoints"] == [f"127.0.0.1:{green_port}"]
    assert (await fetch(ctx, "/pid")).text == blue_pid  # blue never stopped
    async with httpx.AsyncClient(timeout=5) as client:
        answer = (await client.get(f"http://127.0.0.1:{green_port}/env")).json()
        green_pid = (await client.get(f"http://127.0.0.1:{green_port}/pid")).text
    assert answer["GREETING"] == "bonjour" and answer["PORT"] == str(green_port)
    # Blue is stopped by leaving it out; green goes on as it was.
    await driver.apply(ctx, {"colours": {"green": green}})
    assert (await driver.observe(ctx)).state == {"colours": {"green": green}}
    with pytest.raises(httpx.TransportError):
        await fetch(ctx, "/pid")
    async with httpx.AsyncClient(timeout=5) as client:
        assert (await client.get(f"http://127.0.0.1:{green_port}/pid")).text == green_pid


async def test_a_hook_runs_with_the_colours_environment_its_output_redacted(
    driver: LocalProcesses, store: Secrets
) -> None:
    ctx, want = workload(driver, store)
    ok = await follow_to_end(driver, ctx, want, (), Hook(name="migrate", command=[sys.executable, "hook.py", "0"]))
    assert ok.result == "Succeeded" and ok.name == "migrate" and ok.run_id is not None and ok.finished_at
    assert ok.message == "migrating with ***, greeting hello\n(exit code 0)"
    failed = await follow_to_end(driver, ctx, want, (), Hook(name="migrate", command=[sys.executable, "hook.py", "4"]))
    assert failed.result == "Failed" and failed.message.endswith("(exit code 4)")
    slow = Hook(name="slow", command=[sys.executable, "sleepy.py"], timeoutSeconds=1)
    timed_out = await follow_to_end(driver, ctx, want, (), slow)
    assert timed_out.result == "Failed" and timed_out.message.endswith("(exit code 124)\ntimed out after 1 s")


async def test_a_hook_runs_outside_the_pass_once_and_is_found_again_after_a_restart(
    driver: LocalProcesses, store: Secrets, root: Path
) -> None:
    ctx, want = workload(driver, store)
    counter = root / "app" / "runs.txt"
    (root / "app" / "count.py").write_text(
        f"import time\nopen({str(counter)!r}, 'a').write('ran\\n')\ntime.sleep(2)\nprint('migrated')\n"
    )
    hook = Hook(name="migrate", command=[sys.executable, "count.py"])
    run = recorded("migrate")
    started_at = time.monotonic()
    first = await driver.follow_hook(ctx, want, (), hook, run)
    assert first.result == "Running" and time.monotonic() - started_at < 1.5  # the pass does not wait for it
    # The operator is killed and starts again: a new driver, the same run recorded in status.
    again = LocalProcesses(store.read, root, root / "state", health_timeout=2.0, start_timeout=3.0)
    assert (await again.follow_hook(ctx, want, (), hook, run)).result == "Running"
    done = await follow_to_end(again, ctx, want, (), hook, run)
    assert done.result == "Succeeded" and "migrated" in done.message
    assert counter.read_text() == "ran\n"  # started once, however often it was followed


async def test_a_hook_that_outlives_its_timeout_is_stopped_and_one_whose_process_vanished_fails(
    driver: LocalProcesses, store: Secrets
) -> None:
    ctx, want = workload(driver, store)
    hook = Hook(name="slow", command=[sys.executable, "sleepy.py"], timeoutSeconds=60)
    old = recorded("slow")
    assert (await driver.follow_hook(ctx, want, (), hook, old)).result == "Running"
    run_dir = root_of(driver, ctx) / "hooks" / str(old.run_id)
    pid = int((run_dir / "pid").read_text())
    # Started long ago (the operator was down past the hook's timeout and its grace), and its own
    # timeout(1) did not end it (ignored, or the machine was suspended): the operator stops it.
    os.utime(run_dir / "pid", (time.time() - 3600, time.time() - 3600))
    stopped = await driver.follow_hook(ctx, want, (), hook, old)
    assert stopped.result == "Failed" and "stopped" in stopped.message
    await wait_gone(pid)
    # A run whose process died without a result (kill -9 of everything, a reboot) is failed, never run again.
    lost = recorded("slow")
    await driver.follow_hook(ctx, want, (), hook, lost)
    lost_dir = root_of(driver, ctx) / "hooks" / str(lost.run_id)
    deadline = time.monotonic() + 5
    while not (lost_dir / "tpid").exists():  # the wrapper has started the command
        assert time.monotonic() < deadline
        await asyncio.sleep(0.05)
    for group in ("tpid", "pid"):  # everything of the run, as a reboot would
        os.killpg(int((lost_dir / group).read_text()), signal.SIGKILL)
    await wait_gone(int((lost_dir / "pid").read_text()))
    gone = await driver.follow_hook(ctx, want, (), hook, lost)
    assert gone.result == "Failed" and "ended without a result" in gone.message


def root_of(driver: LocalProcesses, ctx: DriverContext) -> Path:
    return driver._directory(ctx.key)  # where its runs are recorded


async def wait_gone(pid: int, within: float = 5) -> None:
    deadline = time.monotonic() + within
    while Path(f"/proc/{pid}").exists() and "Z" not in Path(f"/proc/{pid}/stat").read_text().split()[2]:
        assert time.monotonic() < deadline, f"process {pid} still runs"
        await asyncio.sleep(0.1)


async def test_an_app_is_installed_through_the_new_colours_endpoint(driver: LocalProcesses, store: Secrets) -> None:
    ctx, want, _ = await started(driver, store)
    endpoint = f"127.0.0.1:{ctx.allocations.port}"
    forum = App(name="forum", version="1.2", settings={"theme": "dark"})
    run = await follow_to_end(driver, ctx, want, (endpoint,), forum)
    assert run.result == "Succeeded" and run.name == "app-forum"
    assert run.message == (
        f"POST /api/apps/install on {endpoint} answered 201: installed "
        '{"name":"forum","version":"1.2","settings":{"theme":"dark"}}'
    )
    nowhere = await follow_to_end(driver, ctx, want, (f"127.0.0.1:{free_port()}",), App(name="forum"))
    assert nowhere.result == "Failed" and "ConnectError" in nowhere.message


async def test_a_probe_gives_up_after_the_projects_health_timeout() -> None:
    with socket.socket() as silent:  # accepts connections (the backlog) and never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        port = silent.getsockname()[1]
        async with httpx.AsyncClient(timeout=30) as client:
            started = time.monotonic()
            probe = await probe_http(client, "127.0.0.1", port, "/api/health", frozenset(), timeout=0.3)
    assert time.monotonic() - started < 3
    assert probe == Probe(False, f"GET /api/health on 127.0.0.1:{port} timed out", answered=False,
                          seconds=probe.seconds)  # fmt: skip
    assert probe.seconds is not None and 0.3 <= probe.seconds < 3  # counted to the timeout, for the histogram


async def test_the_process_has_a_home_of_its_own_not_the_operators(driver: LocalProcesses, store: Secrets) -> None:
    ctx, _, _ = await started(driver, store)
    env = json.loads((await fetch(ctx, "/env")).text)
    assert env["HOME"] != os.environ.get("HOME") and env["HOME"].endswith("/home")
    assert Path(env["HOME"]).is_dir() and (Path(env["HOME"]).stat().st_mode & 0o077) == 0


async def test_runtime_local_runs_only_in_the_namespaces_allowed(root: Path, store: Secrets) -> None:
    driver = LocalProcesses(store.read, root, root / "state", namespaces=frozenset({"trusted"}))
    ctx, want = workload(driver_with_contexts(driver), store)  # namespace "team"
    for attempt in (driver.observe(ctx), driver.apply(ctx, blue(want))):
        with pytest.raises(PermanentError) as caught:
            await attempt
        assert caught.value.reason == "LocalRuntimeNotAllowed"


def driver_with_contexts(driver: LocalProcesses) -> LocalProcesses:
    driver.contexts = []  # type: ignore[attr-defined]
    return driver
