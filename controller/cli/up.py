"""`codeb up` and `codeb down`: the embedded local default, from nothing to a served URL and back.

`up` starts the local control plane and Platform (`controller.local`), installs the CRDs, keeps
the operator running (restarting it with backoff if it dies, as a Deployment would) and applies
the example Project, then prints its URL; `down` stops what `up` started.
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
from typing import TYPE_CHECKING

import yaml

from controller.cli.common import (
    CRD_PATH,
    EXIT_DIFFERS,
    EXIT_OK,
    EXIT_USAGE,
    CommandError,
    local_home,
    local_operator_env,
)
from controller.local.cluster import REPO_ROOT, LocalCluster, stop_process

if TYPE_CHECKING:
    from controller.local.platform import LocalPlatform

LOCAL_EXAMPLE = REPO_ROOT / "manifests" / "examples" / "hello-local.yaml"


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
                       "seconds": round(time.monotonic() - started, 1),
                       "prometheus": platform.prometheus.url if platform.prometheus.proc else None}  # fmt: skip
            print(json.dumps(serving), flush=True)
        hints = (f"open it (Caddy's local CA: accept the warning), or: curl -k {url}",
                 _prometheus_hint(platform),
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


def _prometheus_hint(platform: LocalPlatform) -> str:
    """Where its Prometheus answers (waited for here, after the first URL), or how to get one."""
    prometheus = platform.prometheus
    if prometheus.proc is None:
        return "metrics: apt-get install prometheus, and the next `codeb up` starts one scraping the operator and Caddy"
    if not prometheus.ready(timeout=15):
        return f"metrics: Prometheus did not start; its log: {prometheus.home / 'log'}"
    return f"metrics: {prometheus.url} (the operator's and Caddy's series; `codeb status hello` shows its traffic)"


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
