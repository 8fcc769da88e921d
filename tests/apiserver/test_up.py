"""`codeb up`, the README's first command, as a newcomer runs it: it ends with a URL whose page is
served through Caddy by the example application on its real database, Redis and bucket;
Ctrl-C leaves no process behind; a second `up` finds the same data."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import threading
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from controller.local.cluster import REPO_ROOT, cache_dir, find_binary
from controller.local.platform import LocalPlatform

# Processes `up` starts; none may outlive it.
EXAMPLE_APP = REPO_ROOT / "deploy" / "hello"
STARTED = ("supervise.py", "kube-apiserver", "etcd", "redis-server", "minio", "caddy", "postgres", "app.py",
           "prometheus")  # fmt: skip


def isolated_cache(tmp_path: Path) -> Path:
    """A new, empty state; only the slow builds are borrowed from the real cache."""
    cache = tmp_path / "cache"
    (cache / "bin").mkdir(parents=True)
    for binary in (cache_dir() / "bin").iterdir():
        (cache / "bin" / binary.name).symlink_to(binary)
    return cache


def up(cache: Path, log: Path, *args: str, background: bool = False) -> subprocess.Popen[str]:
    """`codeb up`; ``background``: as a shell's `&` without job control starts it, SIGINT ignored."""
    env = {**os.environ, "CODEB_CACHE": str(cache)}
    ignore_sigint = (lambda: signal.signal(signal.SIGINT, signal.SIG_IGN)) if background else None
    return subprocess.Popen([find_binary("codeb"), "up", *args], env=env, stdout=log.open("w"),
                            stderr=subprocess.STDOUT, text=True, preexec_fn=ignore_sigint)  # fmt: skip


def wait_url(process: subprocess.Popen[str], log: Path, timeout: float = 240) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = re.search(r"serving: (https://\S+)", log.read_text())
        if found:
            return found.group(1)
        assert process.poll() is None, log.read_text()
        time.sleep(0.5)
    raise AssertionError(f"no URL after {timeout}s:\n{log.read_text()}")


def fetch(url: str, path: str = "/") -> subprocess.CompletedProcess[str]:
    return subprocess.run(["curl", "-sk", "--max-time", "10", url.rstrip("/") + path], capture_output=True, text=True)


def left_behind(cache: Path) -> list[str]:
    """Processes `up` started that still run: each names its state directory, or runs in the example's."""
    roots = (str(cache), str(LocalPlatform(cache / "local" / "platform").postgres_home))
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                argv = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
                cwd = os.readlink(entry / "cwd")
            except OSError:
                continue
            names_state = any(root in argv for root in roots) and any(name in argv for name in STARTED)
            if names_state or (cwd == str(EXAMPLE_APP) and "app.py" in argv):
                found.append(argv)
    return found


def stop(process: subprocess.Popen[str]) -> float:
    started = time.monotonic()
    process.send_signal(signal.SIGINT)  # what Ctrl-C sends
    process.wait(timeout=60)
    return time.monotonic() - started


def test_up_serves_the_example_stops_cleanly_and_keeps_its_data(tmp_path: Path) -> None:
    """up, `codeb down`, up again: the data is still there; Ctrl-C leaves no process behind."""
    cache = isolated_cache(tmp_path)
    first = up(cache, tmp_path / "up1.log", background=True)
    try:
        url = wait_url(first, tmp_path / "up1.log")
        assert re.fullmatch(r"https://hello\.localhost:\d+/", url)
        page = fetch(url)
        assert "Hello, CodeB" in page.stdout and page.stdout.count("<td>works</td>") == 3, page.stdout
        visits = json.loads(fetch(url, "/api/visit").stdout)["database"]["visits"]
        the_cli_reads_what_up_serves(cache, url)
        its_prometheus_watches_the_operator_and_caddy(cache, tmp_path / "up1.log")
        visits = the_example_goes_back_to_a_moment(cache, url)
        down = codeb(cache, "down", "-o", "json")
        assert down.returncode == 0 and json.loads(down.stdout)["stopped"] is True, down.stderr
        print(f"codeb down: stopped in {json.loads(down.stdout)['seconds']}s")
        assert first.wait(timeout=5) == 0
    finally:
        if first.poll() is None:
            stop(first)
    assert left_behind(cache) == []

    second = up(cache, tmp_path / "up2.log", "--output", "json")
    try:
        url = wait_url(second, tmp_path / "up2.log")
        said = json.loads(next(line for line in (tmp_path / "up2.log").read_text().splitlines() if line[:1] == "{"))
        assert said["url"] == url and Path(said["kubeconfig"]).exists() and said["seconds"] > 0
        assert said["prometheus"].startswith("http://127.0.0.1:")
        again = json.loads(fetch(url, "/api/visit").stdout)
        assert again["database"]["visits"] == visits + 1 and again["bucket"]["readBack"], again
        an_operator_killed_under_load_is_restarted_and_nothing_fails(cache, url, tmp_path / "up2.log")
    finally:
        took = stop(second)
    print(f"codeb up: stopped by Ctrl-C in {took:.1f}s")
    assert left_behind(cache) == []


def codeb(cache: Path, *args: str, kubeconfig: Path | None = None) -> subprocess.CompletedProcess[str]:
    """A `codeb` command in another shell: without KUBECONFIG it finds the cluster `codeb up` runs."""
    env = {k: v for k, v in os.environ.items() if k != "KUBECONFIG"} | {"CODEB_CACHE": str(cache)}
    env |= {"KUBECONFIG": str(kubeconfig)} if kubeconfig else {}
    return subprocess.run([find_binary("codeb"), *args], env=env, capture_output=True, text=True, timeout=120)


def the_cli_reads_what_up_serves(cache: Path, url: str) -> None:
    status = codeb(cache, "status", "hello", "-o", "json")
    assert status.returncode == 0, status.stderr
    shown = json.loads(status.stdout)
    assert shown["ready"] == "True" and shown["serving"].startswith("blue"), shown
    assert shown["allocations"]["database"] and shown["endpoints"]["internal"]

    logs = codeb(cache, "logs", "hello", "-o", "json")
    assert logs.returncode == 0, logs.stderr
    found = json.loads(logs.stdout)
    assert any("hello" in line for line in found["operator"]), found["operator"][-5:]
    assert set(found["workload"]) == {"blue"}  # the example's own output, per colour

    diff = codeb(cache, "diff", "hello")
    assert diff.returncode == 0, diff.stdout + diff.stderr
    assert "default/hello: in sync, nothing would change" in diff.stdout
    # The same with KUBECONFIG exported as `up` suggests: its operator's settings come along.
    named = codeb(cache, "diff", "hello", kubeconfig=cache / "local" / "kubeconfig")
    assert named.returncode == 0 and "in sync" in named.stdout, named.stdout + named.stderr


def its_prometheus_watches_the_operator_and_caddy(cache: Path, log: Path) -> None:
    """`up` prints its Prometheus' URL once it answers; it scrapes the operator's per-Project series and
    Caddy's per-host requests, and `codeb status` reads the example's traffic from it unasked."""
    found = wait_until(lambda: re.search(r"metrics: (http://\S+)", log.read_text()), 60)
    prometheus = found.group(1)

    def scraped(query: str) -> list[dict[str, Any]]:
        answer = subprocess.run(["curl", "-s", "--max-time", "10", f"{prometheus}/api/v1/query", "--data-urlencode",
                                 f"query={query}"], capture_output=True, text=True)  # fmt: skip
        return list(json.loads(answer.stdout or "{}").get("data", {}).get("result", [])) if answer.stdout else []

    # Scraped every 15 s: the operator's probe of the example, and Caddy's count of its requests.
    probe = wait_until(lambda: scraped('codeb_project_probe_up{project="hello"}'), 60)
    assert probe[0]["value"][1] == "1"
    wait_until(lambda: scraped('caddy_http_request_duration_seconds_count{host=~"hello.localhost.*"}'), 60)
    status = codeb(cache, "status", "hello", "-o", "json")
    assert status.returncode == 0, status.stderr
    traffic = json.loads(status.stdout)["traffic"]
    assert "error" not in traffic and set(traffic) == {"requestsPerSecond", "errorPercent", "latencyP95Ms"}, traffic


def backup_ready(cache: Path) -> dict[str, Any] | None:
    """The example's BackupReady condition once it is True with the WAL archive looked at (a base backup in it)."""
    shown = subprocess.run(["kubectl", "--kubeconfig", str(cache / "local" / "kubeconfig"), "get", "project", "hello",
                            "-o", "json"], capture_output=True, text=True)  # fmt: skip
    if shown.returncode != 0:
        return None
    status = json.loads(shown.stdout).get("status", {})
    conditions = {c["type"]: c for c in status.get("conditions", [])}
    found = conditions.get("BackupReady", {})
    archive = status.get("backup", {}).get("walArchive", {})
    return found if found.get("status") == "True" and archive.get("baseBackups", 0) >= 1 else None


def the_example_goes_back_to_a_moment(cache: Path, url: str) -> int:
    """up's PostgreSQL archives WAL into its backup store: with walArchiving, `codeb restore --to TIME` takes
    the example's database back to that very moment (its visit counter, two visits back)."""
    kubeconfig = cache / "local" / "kubeconfig"
    patch = json.dumps({"spec": {"backup": {"walArchiving": True}}})
    subprocess.run(["kubectl", "--kubeconfig", str(kubeconfig), "patch", "project", "hello", "--type=merge", "-p",
                    patch], check=True, capture_output=True)  # fmt: skip
    wait_until(lambda: backup_ready(cache), 180)  # the first base backup, then the operator's look at it
    then = json.loads(fetch(url, "/api/visit").stdout)["database"]["visits"]
    time.sleep(1)
    moment = datetime.now(UTC).isoformat()
    time.sleep(1)
    for _ in range(2):
        fetch(url, "/api/visit")
    restored = codeb(cache, "restore", "hello", "--to", moment, "--yes", "-o", "json")
    assert restored.returncode == 0, restored.stdout + restored.stderr
    said = json.loads(restored.stdout.splitlines()[-1])
    assert said["phase"] == "Succeeded" and said["backup"].startswith("hello-database-pitr-"), said
    now = json.loads(fetch(url, "/api/visit").stdout)["database"]["visits"]
    assert now == then + 1, (then, now)
    for shown in (codeb(cache, "backups", "hello"), codeb(cache, "status", "hello")):
        assert re.search(r"WAL archive: last archived [0-9A-F]{24}", shown.stdout), shown.stdout
    return now


def operator_pid(cache: Path) -> int | None:
    """The operator `up` runs on ``cache`` (its environment names the cache)."""
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                argv = (entry / "cmdline").read_bytes().split(b"\0")
                environ = (entry / "environ").read_bytes().split(b"\0")
            except OSError:
                continue
            if argv[-2:] == [b"operator", b""] and f"CODEB_CACHE={cache}".encode() in environ:
                return int(entry.name)
    return None


def an_operator_killed_under_load_is_restarted_and_nothing_fails(cache: Path, url: str, log: Path) -> None:
    """SIGKILL of the operator, outside a rollout and then during one: `up` restarts it, as a Deployment
    would; the example never stops serving, and the rollout the kill cut short completes."""
    failures: list[str] = []
    answered = [0]
    running = threading.Event()
    running.set()

    def client(index: int) -> None:
        paths = ("/", "/api/visit", "/api/health")
        n = 0
        while running.is_set():
            path = paths[(index + n) % 3]
            done = subprocess.run(["curl", "-sk", "-o", "/dev/null", "-w", "%{http_code}", "--max-time", "10",
                                   url.rstrip("/") + path], capture_output=True, text=True)  # fmt: skip
            if done.stdout != "200":
                failures.append(f"{path}: {done.stdout or done.stderr}")
            answered[0] += 1
            n += 1

    clients = [threading.Thread(target=client, args=(i,)) for i in range(4)]
    for thread in clients:
        thread.start()
    try:
        time.sleep(3)
        kill_the_operator(cache)
        wait_until(lambda: ready_serving(cache) is not None, 60)
        kubeconfig = cache / "local" / "kubeconfig"
        patch = json.dumps({"spec": {"project": {"revision": "after-the-kill"}}})
        subprocess.run(["kubectl", "--kubeconfig", str(kubeconfig), "patch", "project", "hello", "--type=merge",
                        "-p", patch], check=True, capture_output=True)  # fmt: skip
        time.sleep(0.5)  # the rollout has started (the new colour is starting)
        kill_the_operator(cache)
        wait_until(lambda: ready_serving(cache) == "after-the-kill", 120)
    finally:
        running.clear()
        for thread in clients:
            thread.join(60)
    print(f"operator killed twice; {answered[0]} requests, {len(failures)} failed")
    assert failures == [], failures[:5]
    assert log.read_text().count("the operator exited with -9; restarting it") == 2


def kill_the_operator(cache: Path) -> int:
    killed = operator_pid(cache)
    assert killed is not None
    os.kill(killed, signal.SIGKILL)
    wait_until(lambda: operator_pid(cache) not in (None, killed), 30)
    return killed


def ready_serving(cache: Path) -> str | None:
    """The revision the example serves ("" before any was set) while it is Ready, else None."""
    shown = codeb(cache, "status", "hello", "-o", "json")
    if shown.returncode != 0:
        return None
    status = json.loads(shown.stdout)
    if status["ready"] != "True" or not status["serving"]:
        return None
    _, _, revision = str(status["serving"]).partition(" ")  # "<colour> <revision>"
    return revision


def wait_until(predicate: Any, timeout: float) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"not within {timeout}s")
