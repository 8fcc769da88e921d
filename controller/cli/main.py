"""codeb: one Project manifest to a served application.

`codeb up` runs everything on this machine and ends with a URL; the other commands read,
explain and change the Projects of the current cluster (KUBECONFIG, else ~/.kube/config,
else the one `codeb up` runs). Each takes --output json for scripts.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml
from pydantic import ValidationError

from controller.cli.commands import (
    EXIT_CODES,
    EXIT_DIFFERS,
    EXIT_OK,
    EXIT_USAGE,
    CommandError,
    api_errors,
    cmd_diff,
    cmd_init,
    cmd_logs,
    cmd_status,
    local_home,
    local_operator_env,
    projects_api,
    read_project,
    run,
)
from controller.local.cluster import REPO_ROOT, LocalCluster, stop_process
from controller.loop.rollouts.records import rollback_target
from controller.loop.status import format_validation_error, load_status
from schemas.crd import platform_crd, project_crd, render_yaml
from schemas.docs import render_markdown
from schemas.project import API_GROUP, API_VERSION, KIND, PLURAL, ProjectSpec

if TYPE_CHECKING:
    from controller.local.platform import LocalPlatform

CRD_PATH = REPO_ROOT / "manifests" / "crd" / "projects.codeb.dev.yaml"
PLATFORM_CRD_PATH = REPO_ROOT / "manifests" / "crd" / "platforms.codeb.dev.yaml"
DOCS_PATH = REPO_ROOT / "docs" / "manifest.md"
CLI_DOCS = REPO_ROOT / "docs" / "cli"
LOCAL_EXAMPLE = REPO_ROOT / "manifests" / "examples" / "hello-local.yaml"


def generated_files() -> dict[Path, str]:
    return {
        CRD_PATH: render_yaml(project_crd()),
        PLATFORM_CRD_PATH: render_yaml(platform_crd()),
        DOCS_PATH: render_markdown(),
        **cli_docs(),
    }


def cli_docs() -> dict[Path, str]:
    """A page per command, from the parser itself, and an index."""
    pages, root = {}, parser()
    index = ["# The `codeb` command", "", "Generated from the CLI (`codeb generate`); a test fails when it drifts.", "",
             "```", root.format_help().rstrip(), "```", "", "| command | what it does |", "|---|---|"]  # fmt: skip
    for name, (summary, sub) in _subcommands(root).items():
        pages[CLI_DOCS / f"{name}.md"] = f"# codeb {name}\n\n{summary}.\n\n```\n{sub.format_help().rstrip()}\n```\n"
        index.append(f"| [`codeb {name}`]({name}.md) | {summary} |")
    pages[CLI_DOCS / "README.md"] = "\n".join(index) + "\n"
    return pages


def _subcommands(root: argparse.ArgumentParser) -> dict[str, tuple[str, argparse.ArgumentParser]]:
    action = next(a for a in root._actions if isinstance(a, argparse._SubParsersAction))
    summaries = {choice.dest: choice.help or "" for choice in action._choices_actions}
    return {name: (summaries[name], sub) for name, sub in action.choices.items()}


def _shown(path: Path) -> str:
    return str(path.relative_to(REPO_ROOT)) if path.is_relative_to(REPO_ROOT) else str(path)


def cmd_generate(args: argparse.Namespace) -> int:
    """Write the CRDs, the manifest reference and the CLI pages from their one source (--check: only compare)."""
    files = generated_files()
    stale = [path for path, text in files.items() if not path.exists() or path.read_text() != text]
    if not args.check:
        for path in stale:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(files[path])
    if args.output == "json":
        print(json.dumps({"checked": args.check, "stale" if args.check else "wrote": [_shown(p) for p in stale]}))
    for path in stale if args.output == "text" else []:
        print(f"{_shown(path)} is out of date: run `codeb generate`" if args.check else f"wrote {_shown(path)}",
              file=sys.stderr if args.check else sys.stdout)  # fmt: skip
    return EXIT_DIFFERS if args.check and stale else EXIT_OK


def validate_documents(text: str) -> list[str]:
    """Problems found in every Project document of a YAML stream."""
    problems = []
    for doc in yaml.safe_load_all(text):
        if not isinstance(doc, dict) or doc.get("kind") != KIND:
            continue
        name = (doc.get("metadata") or {}).get("name", "<unnamed>")
        try:
            ProjectSpec.model_validate(doc.get("spec") or {})
        except ValidationError as exc:
            problems.append(f"{name}: {format_validation_error(exc)}")
    return problems


def cmd_validate(args: argparse.Namespace) -> int:
    """Check every Project in the files as the API server and the operator would, without a cluster."""
    problems = []
    for name in args.files:
        try:
            text = Path(name).read_text()
        except OSError as exc:
            raise CommandError(f"cannot read {name}: {exc.strerror}", EXIT_USAGE) from None
        try:
            problems += [f"{name}: {p}" for p in validate_documents(text)]
        except yaml.YAMLError as exc:
            problems.append(f"{name}: not YAML: {str(exc).splitlines()[0]}")
    if args.output == "json":
        print(json.dumps({"valid": not problems, "problems": problems}))
    else:
        print("\n".join(problems) or "all manifests valid")
    return EXIT_DIFFERS if problems else EXIT_OK


def cmd_operator(args: argparse.Namespace) -> int:
    from controller.operator.wiring import operator_drivers, run_operator

    return run_operator(operator_drivers)


def cmd_up(args: argparse.Namespace) -> int:
    """The embedded local default, to a URL: control plane, local Platform, operator, the example."""
    from controller.drivers.processes import stop_everything_under
    from controller.local.platform import LocalPlatform

    started = time.monotonic()
    # With --output json, progress goes to stderr and stdout carries one JSON line once it serves.
    progress = sys.stderr if args.output == "json" else sys.stdout

    def step(message: str) -> None:
        print(f"[{time.monotonic() - started:5.1f}s] {message}", file=progress, flush=True)

    home = local_home()
    running = _up_running(home)
    if running is not None:
        raise CommandError(f"already running (pid {running}); `codeb down` stops it", EXIT_USAGE)
    home.mkdir(parents=True, exist_ok=True)
    (home / UP_PID).write_text(str(os.getpid()))
    # Ctrl-C, `kill` and `codeb down` all stop everything the same way; SIGINT explicitly too, since a
    # shell starting `up` in the background (`&` without job control) leaves it ignored.
    for stop_signal in (signal.SIGINT, signal.SIGTERM):
        signal.signal(stop_signal, signal.default_int_handler)
    cluster = LocalCluster(home, fast_storage=False)
    platform = LocalPlatform.open(home / "platform")
    operator: KeptOperator | None = None
    try:
        step("starting the control plane (etcd, kube-apiserver)")
        cluster.start()
        step("starting the local Platform (PostgreSQL, Redis, MinIO, Caddy)")
        platform.start()
        step("installing the CRDs, the Platform and the example Project")
        _install(cluster, platform)
        step(f"starting the operator (log: {home / 'operator.log'})")
        operator = KeptOperator(home, step)
        step("waiting for the example to serve")
        if not _wait_serving(cluster, operator, platform.https_port, step):
            return EXIT_DIFFERS
        url = f"https://hello.localhost:{platform.https_port}/"
        step(f"serving: {url}")
        if args.output == "json":
            serving = {"url": url, "kubeconfig": str(cluster.kubeconfig), "operatorLog": str(home / "operator.log"),
                       "seconds": round(time.monotonic() - started, 1)}  # fmt: skip
            print(json.dumps(serving), flush=True)
        hints = (f"open it (Caddy's local CA: accept the warning), or: curl -k {url}",
                 "in another shell: codeb status hello; codeb logs hello; codeb diff hello; codeb down",
                 f"kubectl: export KUBECONFIG={cluster.kubeconfig}; kubectl get projects -A",
                 "Ctrl-C (or `codeb down`) stops everything; the next `codeb up` finds the same data.")  # fmt: skip
        for hint in hints:
            print(f"  {hint}", file=progress, flush=True)
        operator.keep()
        return 0
    except KeyboardInterrupt:
        return 0
    finally:
        if operator is not None:
            operator.stop()
        # The example's processes outlive an operator by design; they do not outlive `up`.
        stop_everything_under(home / "state")
        platform.stop()
        cluster.stop()
        (home / UP_PID).unlink(missing_ok=True)


UP_PID = "up.pid"


def _up_running(home: Path) -> int | None:
    """The pid of a `codeb up` running on ``home``, if one is."""
    try:
        pid = int((home / UP_PID).read_text())
        argv = Path(f"/proc/{pid}/cmdline").read_bytes()
    except (OSError, ValueError):
        return None
    return pid if b"up" in argv.split(b"\0") else None


def cmd_down(args: argparse.Namespace) -> int:
    """Stop a running `codeb up` as Ctrl-C would (SIGTERM), and wait until everything it started has stopped.

    Exit codes: 0 stopped (or nothing was running), 1 it did not stop within a minute.
    """
    pid = _up_running(local_home())
    started = time.monotonic()
    if pid is not None:
        os.kill(pid, signal.SIGTERM)
        while _up_running(local_home()) == pid and time.monotonic() - started < 60:
            time.sleep(0.1)
    stopped = pid is None or _up_running(local_home()) != pid
    result = {
        "running": pid is not None,
        "pid": pid,
        "stopped": stopped,
        "seconds": round(time.monotonic() - started, 1),
    }
    if args.output == "json":
        print(json.dumps(result))
    elif pid is None:
        print("codeb down: nothing running")
    else:
        print(f"codeb down: stopped pid {pid} in {result['seconds']} s" if stopped else f"pid {pid} is still stopping")
    return EXIT_OK if stopped else EXIT_DIFFERS


def _install(cluster: LocalCluster, platform: LocalPlatform) -> None:
    from controller.local.platform import ADMIN_NAMESPACE, PLATFORM_NAME

    cluster.install_crds(CRD_PATH.parent)
    documents: list[dict[str, object]] = [
        {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ADMIN_NAMESPACE}}
    ]
    for name, data in platform.admin_secrets().items():
        metadata = {"name": name, "namespace": ADMIN_NAMESPACE}
        documents.append({"apiVersion": "v1", "kind": "Secret", "metadata": metadata, "stringData": data})
    documents.append(platform.platform_object())
    example = yaml.safe_load(LOCAL_EXAMPLE.read_text())
    example["spec"]["servers"]["platform"] = PLATFORM_NAME
    # The shared server's version is whatever Debian ships here.
    example["spec"]["features"]["database"] = {"version": platform.postgres_major()}
    documents.append(example)
    cluster.kubectl("apply", "-f", "-", input_text=yaml.safe_dump_all(documents))


def _start_operator(home: Path) -> subprocess.Popen[bytes]:
    env = {**os.environ, **local_operator_env(home)}
    # The example runs `python3 app.py` (runtime local): this interpreter's, which has its client libraries.
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    log = (home / "operator.log").open("ab")
    return subprocess.Popen([sys.executable, "-m", "controller", "operator"], env=env, stdout=log,
                            stderr=subprocess.STDOUT, start_new_session=True)  # fmt: skip


class KeptOperator:
    """The operator as a Deployment keeps it: restarted when it exits, after a back-off that grows while it
    keeps failing, and said so. What it manages (the example's processes) keeps running meanwhile."""

    STABLE_SECONDS = 60.0  # up this long, the next exit starts the back-off from the beginning again
    MAX_BACKOFF_SECONDS = 30.0

    def __init__(self, home: Path, step: Callable[[str], None]) -> None:
        self._home, self._step = home, step
        self._process = _start_operator(home)
        self._started, self._failures = time.monotonic(), 0

    def check(self) -> None:
        """Restart the operator if it has exited (returns at once while it runs)."""
        code = self._process.poll()
        if code is None:
            return
        self._failures = 1 if time.monotonic() - self._started > self.STABLE_SECONDS else self._failures + 1
        delay = min(self.MAX_BACKOFF_SECONDS, 2.0 ** (self._failures - 1))
        self._step(f"the operator exited with {code}; restarting it in {delay:.0f}s "
                   f"(restart {self._failures}; log: {self._home / 'operator.log'})")  # fmt: skip
        time.sleep(delay)
        self._process = _start_operator(self._home)
        self._started = time.monotonic()

    def keep(self) -> None:
        """Until interrupted."""
        while True:
            self.check()
            time.sleep(0.5)

    def stop(self) -> None:
        _stop_operator(self._process)


def _wait_serving(cluster: LocalCluster, operator: KeptOperator, https_port: int, step: Callable[[str], None]
                  ) -> bool:  # fmt: skip
    """Until the example is Ready and its page really answers through Caddy (a status left from the
    last run says Ready before this operator has looked), printing each change of what it waits for."""
    deadline, last = time.monotonic() + 300, ""
    while time.monotonic() < deadline:
        operator.check()
        found = cluster.kubectl("get", "project", "hello", "-o", "json", check=False)
        status = json.loads(found.stdout).get("status", {}) if found.returncode == 0 else {}
        ready = next((c for c in status.get("conditions", []) if c["type"] == "Ready"), None)
        if ready and ready["status"] == "True" and _answers(https_port, "hello.localhost", "/api/health"):
            return True
        now = f"{status.get('phase', 'Pending')}: {ready['message'] if ready else 'not reconciled yet'}"
        if now != last:
            step(f"  hello is {now}")
            last = now
        time.sleep(0.5)
    step("hello did not serve within 5 minutes: kubectl describe project hello")
    return False


def _answers(port: int, host: str, path: str) -> bool:
    """GET ``path`` through Caddy's TLS listener with the right SNI; Caddy's local CA is not checked."""
    context = ssl.create_default_context()
    context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
    try:
        with (
            socket.create_connection(("127.0.0.1", port), timeout=5) as raw,
            context.wrap_socket(raw, server_hostname=host) as tls,
        ):
            tls.sendall(f"GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode())
            return tls.recv(16).startswith(b"HTTP/1.1 200")
    except OSError:
        return False


def _stop_operator(operator: subprocess.Popen[bytes] | None) -> None:
    if operator is not None:
        stop_process(operator, 20)


def cmd_rollback(args: argparse.Namespace) -> int:
    """Set a Project's revision back to one that succeeded before; the operator does the switch."""
    api = projects_api()
    body = read_project(api, args.namespace, args.project)
    status = load_status(body.get("status") or {})
    current = (body.get("spec") or {}).get("project", {}).get("revision")
    try:
        target = rollback_target(status.deployments, current, args.to)
    except ValueError as exc:
        raise CommandError(str(exc), EXIT_USAGE) from None
    project: dict[str, Any] = {"revision": target.revision}
    if target.image:
        project["source"] = {"image": target.image}
    with api_errors(f"project {args.namespace}/{args.project}"):
        api.patch_namespaced_custom_object(API_GROUP, API_VERSION, args.namespace, PLURAL, args.project,
                                           {"spec": {"project": project}})  # fmt: skip
    warm = status.serving is not None and status.serving.warm_release == target.release
    result = {"project": f"{args.namespace}/{args.project}", "from": current, "to": target.revision,
              "image": target.image, "warm": warm}  # fmt: skip
    if args.output == "json":
        print(json.dumps(result))
    else:
        how = "its colour is still warm: traffic switches back at once" if result["warm"] else "a new rollout starts"
        print(f"{result['project']}: revision {current} -> {target.revision} ({how})")
    return EXIT_OK


class _Help(argparse.RawDescriptionHelpFormatter):
    """One width everywhere, so the generated CLI pages do not depend on the terminal that made them."""

    def __init__(self, prog: str) -> None:
        super().__init__(prog, width=100)


def parser() -> argparse.ArgumentParser:
    root = argparse.ArgumentParser(prog="codeb", description=__doc__, epilog=_exit_codes(), formatter_class=_Help)
    sub = root.add_subparsers(dest="subcommand", required=True, metavar="COMMAND")

    def command(name: str, func: Callable[[argparse.Namespace], int], summary: str) -> argparse.ArgumentParser:
        doc = (func.__doc__ or summary).strip()
        found = sub.add_parser(name, help=summary, description=doc, epilog=_exit_codes(), formatter_class=_Help)
        found.set_defaults(func=func)
        return found

    def output(found: argparse.ArgumentParser) -> None:
        found.add_argument("-o", "--output", choices=("text", "json"), default="text", help="text, or JSON for scripts")

    def one_project(found: argparse.ArgumentParser, required: bool = True) -> None:
        found.add_argument("project", nargs=None if required else "?", help="the Project's name")
        found.add_argument("-n", "--namespace", default="default", help="its namespace (default: default)")

    output(command("up", cmd_up, "start the local control plane, Platform, operator and example; serve it at a URL"))
    output(command("down", cmd_down, "stop what `codeb up` started (its data stays for the next `up`)"))
    init = command("init", cmd_init, "write a new Project manifest, valid by construction")
    init.add_argument("name", nargs="?", help="the Project's name and slug (asked for in a terminal when left out)")
    init.add_argument("-n", "--namespace", help="metadata.namespace (default: none, kubectl's current)")
    init.add_argument("--type", default="staging", choices=("production", "staging", "preview", "development"),
                      help="environment.type (default: staging)")  # fmt: skip
    init.add_argument("--domain", action="append", help="a domain to route (repeatable; default: NAME.localhost)")
    init.add_argument("--runtime", default="local", choices=("local", "quadlet", "kubernetes"))
    init.add_argument("--provider", choices=("local", "existing", "vultr", "lightsail"),
                      help="default: local for runtime local, else existing")  # fmt: skip
    init.add_argument("--image", help="the image to run (runtimes quadlet and kubernetes)")
    init.add_argument("--command", nargs="+", help="the command to run (runtime local; default: python3 app.py)")
    init.add_argument("--working-dir", help="where the command runs, relative to the operator's root")
    init.add_argument("--host", action="append", help="servers.hosts: an existing host (repeatable)")
    init.add_argument("--ssh-secret", help="servers.ssh.secretRef: the Secret whose privateKey logs in to the hosts")
    init.add_argument("--platform", help="servers.platform: the Platform whose services it uses")
    init.add_argument("--revision", help="project.revision")
    for feature in ("database", "redis", "storage"):
        init.add_argument(f"--{feature}", action="store_true", help=f"features.{feature}: on")
    init.add_argument("-f", "--file", help="write here instead of to stdout")
    init.add_argument("--force", action="store_true", help="replace --file if it exists")
    init.add_argument("-o", "--output", choices=("yaml", "json"), default="yaml", help="manifest format")
    validate = command("validate", cmd_validate, "check manifests the way the operator does, offline")
    validate.add_argument("files", nargs="+", help="YAML files; every Project document in them is checked")
    output(validate)
    diff = command("diff", cmd_diff, "what the operator would change, per component")
    one_project(diff, required=False)
    diff.add_argument("-f", "--file", help="a manifest: compare its Projects (new or live) with the world")
    output(diff)
    status = command("status", cmd_status, "Projects in a table, or everything about one")
    one_project(status, required=False)
    status.add_argument("-A", "--all-namespaces", action="store_true", help="list every namespace's Projects")
    output(status)
    logs = command("logs", cmd_logs, "the operator's lines about a Project and the application's own output")
    one_project(logs)
    logs.add_argument("--operator", action="store_true", help="only the operator's lines")
    logs.add_argument("--workload", action="store_true", help="only the application's output")
    logs.add_argument("--operator-log", help="the operator's log file (default: the one `codeb up` writes)")
    logs.add_argument("--tail", type=int, default=100, help="lines of each (default: 100)")
    output(logs)
    rollback = command("rollback", cmd_rollback, "set a Project back to a revision that succeeded before")
    one_project(rollback)
    rollback.add_argument("--to", help="the revision (default: the newest success before the current one)")
    output(rollback)
    generate = command("generate", cmd_generate, "regenerate the CRDs and docs from the models and the CLI")
    generate.add_argument("--check", action="store_true", help="change nothing; exit 1 if a checked-in file differs")
    output(generate)
    command("operator", cmd_operator, "run the operator against the current kubeconfig (logs: CODEB_LOG_FORMAT)")
    return root


def _exit_codes() -> str:
    return "exit codes:\n" + "\n".join(f"  {code}  {meaning}" for code, meaning in EXIT_CODES.items())


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    return run(args.func, args)


if __name__ == "__main__":
    sys.exit(main())
