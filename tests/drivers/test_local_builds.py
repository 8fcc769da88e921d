"""Runtime local builds source.git for real: git clones from `git http-backend` over HTTPS, the template's steps
run in the checkout, and the process runs the template's command in a directory of the build's own, so the
serving colour's files never change under it (`controller.drivers.local_builds`)."""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest

from controller.drivers.processes import LocalProcesses
from controller.loop import builds
from controller.loop.interface import BuildSource, DriverContext
from controller.loop.planner import Component, desired_state
from controller.specs.builds import LOCAL_PRESETS
from schemas.project import LOCAL_BUILD_TEMPLATES, BuildStatus, ProjectSpec
from tests.drivers_common import context
from tests.gitserver import GitServer, WorkTree
from tests.helpers import observe_until
from tests.servers import free_port

PYTHON_APP = """import os
from http.server import BaseHTTPRequestHandler, HTTPServer

class Handler(BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200)
        self.end_headers()
        self.wfile.write(b"python app, in a virtual environment: " + str(os.path.exists(".venv")).encode())

HTTPServer((os.environ["HOST"], int(os.environ["PORT"])), Handler).serve_forever()
"""


class Secrets:
    async def read(self, namespace: str, name: str, project: str | None = None) -> dict[str, str] | None:
        return None


@pytest.fixture()
async def driver(
    tmp_path: Path, git_server: GitServer, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[LocalProcesses]:
    monkeypatch.setenv("GIT_SSL_CAINFO", str(git_server.ca_file))  # the operator's own environment: a CA it trusts
    made = LocalProcesses(Secrets().read, tmp_path / "root", tmp_path / "state", health_timeout=2.0,
                          start_timeout=10.0)  # fmt: skip
    (tmp_path / "root").mkdir()
    made.contexts = []  # type: ignore[attr-defined]
    yield made
    for ctx in made.contexts:  # type: ignore[attr-defined]
        await made.delete(ctx, retain=False)


def project(driver: LocalProcesses, url: str, template: str, revision: str = "1") -> tuple[DriverContext, ProjectSpec]:
    slug = f"site{len(driver.contexts)}"  # type: ignore[attr-defined]
    ctx, spec = context(slug, port=free_port(), project={"slug": slug, "source": {"git": {"url": url}},
                                                        "template": template, "revision": revision})  # fmt: skip
    driver.contexts.append(ctx)  # type: ignore[attr-defined]
    return ctx, spec


async def built(driver: LocalProcesses, ctx: DriverContext, spec: ProjectSpec, within: float = 120) -> BuildStatus:
    """A build recorded, then followed pass after pass until it has an outcome (as the reconciler does)."""
    step = builds.due(spec, ctx.key, None, await driver.build_places(ctx), datetime.now(UTC), driver.build_target)
    assert step.status is not None and spec.project.source.git is not None
    source = BuildSource(spec.project.source.git, builds.wanted_commit(spec), spec.project.template)
    build, deadline = step.status, time.monotonic() + within
    while build.result == "Running":
        assert time.monotonic() < deadline, build
        build = builds.followed(build, await driver.follow_build(ctx, source, build), datetime.now(UTC))
        await asyncio.sleep(0.2)
    return build


async def serve(driver: LocalProcesses, ctx: DriverContext, spec: ProjectSpec, build: BuildStatus) -> str:
    deploying = builds.deployable(spec, build, driver.built_source)
    assert deploying is not None
    await driver.apply(ctx, {"colours": {"blue": desired_state(deploying, ctx.allocations)[Component.workload]}})
    await observe_until(driver, ctx, lambda seen: seen.healthy, timeout=30)
    async with httpx.AsyncClient(timeout=5) as client:
        return (await client.get(f"http://127.0.0.1:{ctx.allocations.port}/")).text


async def test_a_static_site_is_cloned_at_its_commit_and_served_from_a_checkout_of_its_own(
    driver: LocalProcesses, git_server: GitServer, tmp_path: Path
) -> None:
    tree = WorkTree(git_server, "pages", tmp_path / "tree")
    first = tree.commit("one", {"index.html": "<h1>one</h1>"})
    tree.commit("two", {"index.html": "<h1>two</h1>"})
    ctx, spec = project(driver, git_server.url("pages"), "static", revision=first)
    build = await built(driver, ctx, spec)
    assert build.result == "Succeeded" and build.commit == first, build.message
    assert build.last_succeeded is not None
    assert build.last_succeeded.image == f".codeb-builds/team.{ctx.key.name}/{build.run_id}"
    assert "<h1>one</h1>" in await serve(driver, ctx, spec, build)
    # The next revision builds beside it: the serving colour's directory is not touched.
    head = spec.model_copy(update={"project": spec.project.model_copy(update={"revision": "2"})})
    newer = await built(driver, ctx, head)
    assert newer.result == "Succeeded" and newer.run_id != build.run_id
    assert (driver._root / build.last_succeeded.image / "index.html").read_text() == "<h1>one</h1>"
    # Deleted: its checkouts and build runs go with it.
    await driver.delete(ctx, retain=False)
    assert not (driver._root / f".codeb-builds/team.{ctx.key.name}").exists()


async def test_a_python_app_gets_a_virtual_environment_and_a_broken_commit_keeps_nothing(
    driver: LocalProcesses, git_server: GitServer, tmp_path: Path
) -> None:
    tree = WorkTree(git_server, "py", tmp_path / "tree")
    tree.commit("app", {"app.py": PYTHON_APP})
    ctx, spec = project(driver, git_server.url("py"), "python")
    build = await built(driver, ctx, spec)
    assert build.result == "Succeeded", build.message
    assert (await serve(driver, ctx, spec, build)) == "python app, in a virtual environment: True"
    # A requirement that cannot be installed: the build fails with pip's words, and what serves stays.
    tree.commit("broken", {"requirements.txt": "./no-such-package-dir\n"})
    failed = await built(driver, ctx, spec.model_copy(update={"project": spec.project.model_copy(
        update={"revision": "2"})}))  # fmt: skip
    assert failed.result == "Failed" and "no-such-package-dir" in failed.message, failed.message
    async with httpx.AsyncClient(timeout=5) as client:
        assert (await client.get(f"http://127.0.0.1:{ctx.allocations.port}/")).status_code == 200


def test_every_template_runtime_local_accepts_has_steps_and_a_command() -> None:
    assert {template.value for template in LOCAL_PRESETS} == set(LOCAL_BUILD_TEMPLATES)


def clones_of(port: int) -> list[int]:
    """The git processes on this machine fetching from ``port``."""
    found = []
    for entry in Path("/proc").iterdir():
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if entry.name.isdigit() and any(b"git-remote-https" in a for a in argv) and any(f":{port}/".encode() in a
                                                                                     for a in argv):  # fmt: skip
            found.append(int(entry.name))
    return found


async def test_a_deleted_projects_running_build_is_stopped_and_its_runs_go(driver: LocalProcesses) -> None:
    with socket.socket() as silent:  # accepts connections (the kernel's backlog), never answers a byte
        silent.bind(("127.0.0.1", 0))
        silent.listen(4)
        port = silent.getsockname()[1]
        ctx, spec = project(driver, f"https://127.0.0.1:{port}/site.git", "static")
        step = builds.due(spec, ctx.key, None, await driver.build_places(ctx), datetime.now(UTC), driver.build_target)
        assert step.status is not None and spec.project.source.git is not None
        source = BuildSource(spec.project.source.git, "", spec.project.template)
        [run] = await driver.follow_build(ctx, source, step.status)
        assert run.result == "Running"
        deadline = time.monotonic() + 10
        while not clones_of(port) and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
        assert clones_of(port), "the build's clone never started"
        await driver.delete(ctx, retain=False)
        assert clones_of(port) == []
        assert not (driver._builds_dir / f"team.{ctx.key.name}").exists()
