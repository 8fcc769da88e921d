"""End to end on runtime local: `kubectl apply` of the shipped example ends in the example
application serving through the real Caddy, writing to its real database, Redis user and
bucket; the process outlives an operator restart, an unhealthy revision makes the Project
Degraded with what the health check said, and deleting the Project stops it."""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
import redis
import yaml
from minio import Minio

from controller.local.cluster import REPO_ROOT, LocalCluster, find_binary
from tests.apiserver.test_platform_e2e import NS, install_platform, running_world, secret_data
from tests.gitserver import GitServer, WorkTree
from tests.helpers import OperatorProcess, get_json, wait_for
from tests.rollouts import FAST
from tests.servers import https_get

EXAMPLE = REPO_ROOT / "manifests" / "examples" / "hello-local.yaml"


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    try:
        yield from running_world(tmp_path_factory.mktemp("local-runtime"))
    finally:
        _stop_supervisors(f"{NS}/")


def hello(**spec_changes: Any) -> dict[str, Any]:
    """The shipped example, on the test's Platform (whose PostgreSQL is Debian's 15)."""
    doc: dict[str, Any] = yaml.safe_load(EXAMPLE.read_text())
    doc["metadata"]["namespace"] = NS
    doc["spec"]["servers"]["platform"] = "shared"
    doc["spec"]["features"]["database"] = {"version": "15"}
    doc["spec"].update(spec_changes)
    return doc


def status(cluster: LocalCluster) -> dict[str, Any]:
    found: dict[str, Any] = get_json(cluster, "project", "hello", "-n", NS).get("status", {})
    return found


def condition(cluster: LocalCluster, type_: str) -> dict[str, Any]:
    return next((c for c in status(cluster).get("conditions", []) if c["type"] == type_), {})


def route_refused(cluster: LocalCluster, namespace: str, name: str) -> dict[str, Any] | None:
    conditions = get_json(cluster, "project", name, "-n", namespace).get("status", {}).get("conditions", [])
    return next((c for c in conditions if c["type"] == "RouteReady" and c["reason"] == "DomainTaken"), None)


def supervisors(workload: str) -> dict[int, int | None]:
    """Supervisor pid → its application's pid, for the local workloads of ``workload``."""
    found: dict[int, int | None] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        # ``workload`` is a whole "<namespace>/<name>" or a prefix of one ("<namespace>/").
        if any(a.endswith(b"supervise.py") for a in argv[:2]) and any(a.startswith(workload.encode()) for a in argv):
            directory = Path(argv[argv.index(b"--dir") + 1].decode())
            state = json.loads((directory / "blue.json").read_text()) if (directory / "blue.json").exists() else {}
            found[int(entry.name)] = state.get("pid")
    return found


def gone(pid: int) -> bool:
    """Exited: no such process, or a zombie nobody has reaped yet."""
    try:
        return (Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]) == "Z"
    except OSError:
        return True


def _stop_supervisors(prefix: str) -> None:
    for pid in supervisors(prefix):
        os.kill(pid, signal.SIGTERM)


def codeb(cluster: LocalCluster, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "KUBECONFIG": str(cluster.kubeconfig)}
    return subprocess.run([find_binary("codeb"), *args], env=env, capture_output=True, text=True, timeout=300,
                          stdin=subprocess.DEVNULL)  # fmt: skip


def backups_of_hello(cluster: LocalCluster) -> list[dict[str, Any]]:
    return list(get_json(cluster, "backups", "-n", NS, "-l", "codeb.dev/project=hello")["items"])


def ledger_rows(credentials: dict[str, str]) -> int:
    with psycopg.connect(credentials["DATABASE_URL"], connect_timeout=5) as conn:
        row = conn.execute("SELECT count(*) FROM ledger").fetchone()
        return int(row[0]) if row else -1


def backups_bring_the_data_back(cluster: LocalCluster, credentials: dict[str, str]) -> None:
    """The first backup comes by itself; `codeb backup`, a dropped table and `codeb restore` bring the rows back,
    while the example goes on serving from the same database."""
    first = wait_for(lambda: next((b for b in backups_of_hello(cluster) if b.get("status", {}).get("phase")
                                   == "Succeeded"), None), timeout=90, what="the first backup")  # fmt: skip
    assert first["spec"]["trigger"] == "Initial" and first["status"]["sizeBytes"] > 0
    with psycopg.connect(credentials["DATABASE_URL"], autocommit=True, connect_timeout=5) as conn:
        conn.execute("CREATE TABLE ledger (id int)")
        conn.execute("INSERT INTO ledger VALUES (1), (2)")
    taken = codeb(cluster, "backup", "hello", "-n", NS, "-o", "json")
    assert taken.returncode == 0, taken.stdout + taken.stderr
    backup = json.loads(taken.stdout)
    assert backup["phase"] == "Succeeded" and backup["trigger"] == "Manual" and backup["sizeBytes"] > 0
    with psycopg.connect(credentials["DATABASE_URL"], autocommit=True, connect_timeout=5) as conn:
        conn.execute("DROP TABLE ledger")

    refused = codeb(cluster, "restore", "hello", "-n", NS, "--to", backup["backup"])
    assert refused.returncode == 2 and "--yes" in refused.stderr  # no terminal to ask in, and no --yes
    started = time.monotonic()
    done = codeb(cluster, "restore", "hello", "-n", NS, "--to", backup["backup"], "--yes", "-o", "json")
    assert done.returncode == 0, done.stdout + done.stderr
    said = json.loads(done.stdout)
    assert said["phase"] == "Succeeded" and said["safetyBackup"], said
    print(f"codeb restore (safety backup first): {time.monotonic() - started:.1f} s")
    assert ledger_rows(credentials) == 2

    listed = json.loads(codeb(cluster, "backups", "hello", "-n", NS, "-o", "json").stdout)
    names = [b["name"] for b in listed["backups"]]
    assert {first["metadata"]["name"], backup["backup"], said["safetyBackup"]} <= set(names)
    assert listed["summary"]["lastSuccessful"] and listed["summary"]["nextScheduledAt"]
    shown = codeb(cluster, "status", "hello", "-n", NS)
    assert "backups:   last " in shown.stdout and re.search(r"BackupReady +True", shown.stdout), shown.stdout


def backup_of_hello(cluster: LocalCluster, name: str) -> dict[str, Any]:
    return dict(get_json(cluster, "backup", name, "-n", NS))


def a_backup_cut_by_a_kill_is_failed_and_the_next_succeeds(cluster: LocalCluster, operator: OperatorProcess,
                                                           credentials: dict[str, str], s3: Any) -> None:  # fmt: skip
    """kill -9 of the operator while a backup runs (its pg_dump waits for a lock the application holds): the run
    is recorded Failed once its heartbeat is stale, never Succeeded, nothing of it is kept, and the next succeeds."""
    holder = psycopg.connect(credentials["DATABASE_URL"], connect_timeout=5)
    try:
        holder.execute("LOCK TABLE ledger IN ACCESS EXCLUSIVE MODE")
        taken = codeb(cluster, "backup", "hello", "-n", NS, "--no-wait", "-o", "json")
        assert taken.returncode == 0, taken.stdout + taken.stderr
        name = json.loads(taken.stdout)["backup"]
        wait_for(lambda: backup_of_hello(cluster, name).get("status", {}).get("phase") == "Running", timeout=30,
                 what="the backup running")  # fmt: skip
        time.sleep(1)  # pg_dump has started and waits for the lock
        operator.kill()
        operator.start()
    finally:
        holder.rollback()  # the lock goes; the orphaned pg_dump writes into a closed pipe and ends
        holder.close()
    cut = wait_for(lambda: (b := backup_of_hello(cluster, name))["status"]["phase"] in ("Failed", "Succeeded") and b,
                   timeout=60, what="the cut backup recorded")  # fmt: skip
    assert cut["status"]["phase"] == "Failed" and "cut short" in cut["status"]["message"], cut["status"]
    admin_s3 = Minio(s3.endpoint, access_key=s3.root_user, secret_key=s3.root_password, secure=False)
    kept = [str(o.object_name) for o in admin_s3.list_objects("codeb-backups", prefix=f"projects/{NS}/hello/",
                                                              recursive=True)]  # fmt: skip
    assert kept and not [k for k in kept if k.endswith(f"/database/{name}.dump")], kept
    again = codeb(cluster, "backup", "hello", "-n", NS, "-o", "json")
    assert again.returncode == 0 and json.loads(again.stdout)["phase"] == "Succeeded", again.stdout + again.stderr


def stopped_and_started_with_its_data(cluster: LocalCluster, caddy: Any) -> None:
    """Suspended: the process stops and the maintenance page answers; started again, the same database
    serves on (its visits go on from where they were)."""
    before = json.loads(https_get(caddy, "hello.localhost", path="/api/visit").stdout)["database"]["visits"]
    pids = supervisors(f"{NS}/hello")
    suspend = json.dumps({"spec": {"suspended": True}})
    cluster.kubectl("patch", "project", "hello", "-n", NS, "--type=merge", "-p", suspend)
    wait_for(lambda: status(cluster).get("phase") == "Suspended", timeout=60, what="hello suspended")
    assert supervisors(f"{NS}/hello") == {} and all(gone(pid) for pid in pids)
    page = https_get(caddy, "hello.localhost", "-w", "%{http_code}")
    assert page.stdout.endswith("503") and "Temporarily unavailable" in page.stdout
    cluster.kubectl("patch", "project", "hello", "-n", NS, "--type=merge", "-p", suspend.replace("true", "false"))
    wait_for(lambda: condition(cluster, "Ready").get("reason") == "AllComponentsReady", timeout=60, what="started")
    after = json.loads(https_get(caddy, "hello.localhost", path="/api/visit").stdout)["database"]["visits"]
    assert after == before + 1  # the same database, its rows intact


def test_the_example_serves_through_caddy_on_its_real_services(world: dict[str, Any], tmp_path: Path) -> None:
    cluster: LocalCluster = world["cluster"]
    pg, rd, s3, caddy = world["pg"], world["redis"], world["s3"], world["caddy"]
    install_platform(cluster, pg, rd, s3, caddy)
    env = {"CODEB_LOCAL_RUNTIME": "1", "CODEB_LOCAL_ROOT": str(REPO_ROOT), "CODEB_STATE_DIR": str(tmp_path / "state"),
           "CODEB_DRIFT_INTERVAL": "3", "CODEB_BACKUP_HEARTBEAT": "1"}  # fmt: skip
    operator = OperatorProcess(cluster, tmp_path / "operator.log", **env).start()
    try:
        started = time.monotonic()
        cluster.kubectl("apply", "-f", "-", input_text=json.dumps(hello()))
        wait_for(lambda: condition(cluster, "Ready").get("status") == "True", timeout=120, what="hello Ready")
        print(f"runtime local: apply to Ready in {time.monotonic() - started:.1f} s")
        port = status(cluster)["allocations"]["port"]
        assert status(cluster)["endpoints"] == {"url": "https://hello.localhost", "internal": [f"127.0.0.1:{port}"]}
        assert status(cluster)["phase"] == "Ready"

        # The page, through Caddy's TLS listener, used all three services.
        page = https_get(caddy, "hello.localhost")
        assert "Hello, CodeB" in page.stdout and page.stdout.count("<td>works</td>") == 3, page.stdout
        visit = json.loads(https_get(caddy, "hello.localhost", path="/api/visit").stdout)
        assert visit["database"]["visits"] >= 2 and visit["redis"]["hits"] >= 2 and visit["bucket"]["readBack"]
        # ...and the services say so too, asked as their administrators.
        with psycopg.connect(host=pg.host, port=pg.port, user=pg.admin_user, password=pg.admin_password,
                             dbname="hello_staging_db") as admin:  # fmt: skip
            row = admin.execute("SELECT count(*) FROM visits").fetchone()
            assert row is not None and row[0] == visit["database"]["visits"]
        cache = redis.Redis(host=rd.host, port=rd.port, password=rd.password)
        assert int(cache.get("hello-staging:hits") or 0) == visit["redis"]["hits"]
        credentials = secret_data(cluster, NS, "hello-staging-connection")
        admin_s3 = Minio(s3.endpoint, access_key=s3.root_user, secret_key=s3.root_password, secure=False)
        assert admin_s3.stat_object(credentials["S3_BUCKET"], "hello/last-visit.txt").size > 0
        backups_bring_the_data_back(cluster, credentials)
        a_backup_cut_by_a_kill_is_failed_and_the_next_succeeds(cluster, operator, credentials, s3)

        # An operator restart adopts the running process; it is not started again.
        before = supervisors(f"{NS}/hello")
        assert len(before) == 1 and None not in before.values()
        operator.kill()
        operator.start()
        time.sleep(8)  # two drift intervals of the new operator
        assert supervisors(f"{NS}/hello") == before
        assert condition(cluster, "Ready")["status"] == "True"

        # Another namespace's Project naming the same domain: refused, and the first keeps serving.
        cluster.kubectl("create", "namespace", "rivals")
        rival = hello()
        rival["metadata"] = {"name": "rival", "namespace": "rivals"}
        rival["spec"]["project"]["slug"] = "rival"
        cluster.kubectl("apply", "-f", "-", input_text=json.dumps(rival))
        refused = wait_for(lambda: route_refused(cluster, "rivals", "rival"), timeout=60, what="DomainTaken")
        assert f"{NS}/hello" in refused["message"]
        served = json.loads(https_get(caddy, "hello.localhost", path="/api/visit").stdout)
        assert served["database"]["visits"] > visit["database"]["visits"]  # hello's own database, still
        cluster.kubectl("delete", "project", "rival", "-n", "rivals", "--timeout=60s")

        # A revision whose health check fails never takes traffic: Degraded, with what the check answered.
        broken = hello(monitoring={"healthPath": "/healthz"})
        broken["spec"]["project"]["rollout"] = FAST
        cluster.kubectl("apply", "-f", "-", input_text=json.dumps(broken))
        workload = wait_for(lambda: (c := condition(cluster, "WorkloadReady")).get("reason") == "RolloutFailed" and c,
                            timeout=60, what="WorkloadReady RolloutFailed")  # fmt: skip
        green = status(cluster)["allocations"]["alternatePort"]
        assert workload["message"] == (
            f"green failed 3 consecutive health checks: GET /healthz on 127.0.0.1:{green} answered 404: not found"
        )
        assert condition(cluster, "Ready")["status"] == "False" and status(cluster)["phase"] == "Degraded"
        assert "Hello, CodeB" in https_get(caddy, "hello.localhost").stdout  # blue serves on
        cluster.kubectl("apply", "-f", "-", input_text=json.dumps(hello()))
        wait_for(lambda: condition(cluster, "Ready").get("status") == "True", timeout=60, what="Ready again")

        stopped_and_started_with_its_data(cluster, caddy)

        # Deleting the Project stops the process and removes the route; the data is retained.
        pids = supervisors(f"{NS}/hello")
        cluster.kubectl("delete", "project", "hello", "-n", NS, "--timeout=60s")
        assert supervisors(f"{NS}/hello") == {}
        assert all(gone(pid) for pid in pids)
        assert "Hello, CodeB" not in https_get(caddy, "hello.localhost").stdout
        log = operator.log()
        assert all(secret not in log for secret in credentials.values() if len(secret) >= 12)
    finally:
        operator.stop()


def site(url: str, revision: str, name: str = "site", template: str = "static") -> dict[str, Any]:
    """A Project from a Git repository on runtime local: checked out, and run by its template's command."""
    return {
        "apiVersion": "codeb.dev/v1alpha1", "kind": "Project", "metadata": {"name": name, "namespace": NS},
        "spec": {
            "project": {"slug": name, "template": template, "source": {"git": {"url": url}}, "revision": revision,
                        "rollout": FAST},
            "environment": {"type": "staging", "domains": [f"{name}.localhost"]},
            "servers": {"provider": "local", "runtime": "local", "platform": "shared"},
            "backup": {"enabled": False},
        },
    }  # fmt: skip


Env = dict[str, str]


@contextlib.contextmanager
def operator_with_git(
    world: dict[str, Any], tmp_path: Path
) -> Iterator[tuple[GitServer, OperatorProcess, dict[str, str]]]:
    """The module's Platform, a Git server over HTTPS, and an operator running local Projects that trusts the
    server's CA (and its settings, for a `codeb` run beside it); both stopped afterwards, passed or not."""
    cluster: LocalCluster = world["cluster"]
    if cluster.kubectl("get", "platform", "shared", check=False).returncode != 0:
        install_platform(cluster, world["pg"], world["redis"], world["s3"], world["caddy"])
    git = GitServer(tmp_path / "git", tls=True)
    (tmp_path / "root").mkdir()
    env = {"CODEB_LOCAL_RUNTIME": "1", "CODEB_LOCAL_ROOT": str(tmp_path / "root"), "CODEB_DRIFT_INTERVAL": "2",
           "CODEB_STATE_DIR": str(tmp_path / "state"), "GIT_SSL_CAINFO": str(git.ca_file)}  # fmt: skip
    operator = OperatorProcess(cluster, tmp_path / "operator.log", **env).start()
    try:
        yield git, operator, env
    finally:
        operator.stop()
        git.stop()


def test_a_git_repository_is_checked_out_and_served_and_a_new_commit_rolls_out(
    world: dict[str, Any], tmp_path: Path
) -> None:
    cluster: LocalCluster = world["cluster"]
    caddy = world["caddy"]

    def page() -> str:
        return https_get(caddy, "site.localhost").stdout

    with operator_with_git(world, tmp_path) as (git, _, env):
        tree = WorkTree(git, "site", tmp_path / "tree")
        first = tree.commit("one", {"index.html": "<h1>first commit</h1>"})
        started = time.monotonic()
        cluster.kubectl("apply", "-f", "-", input_text=json.dumps(site(git.url("site"), first)))
        wait_for(lambda: "first commit" in page(), timeout=120, what="the first commit served")
        print(f"runtime local from git: apply to served in {time.monotonic() - started:.1f} s")
        build = get_json(cluster, "project", "site", "-n", NS)["status"]["build"]
        assert build["result"] == "Succeeded" and build["commit"] == first, build
        second = tree.commit("two", {"index.html": "<h1>second commit</h1>"})
        patch = json.dumps({"spec": {"project": {"revision": second}}})
        cluster.kubectl("patch", "project", "site", "-n", NS, "--type=merge", "-p", patch)
        wait_for(lambda: "second commit" in page(), timeout=120, what="the second commit served")
        # On the operator's machine, configured as the operator is (its state directory holds the runs).
        configured = {**os.environ, "KUBECONFIG": str(cluster.kubeconfig), **env}
        logs = subprocess.run([find_binary("codeb"), "logs", "site", "-n", NS, "--build"], capture_output=True,
                              text=True, timeout=60, env=configured)  # fmt: skip
        assert f"built .codeb-builds/{NS}.site/" in logs.stdout and second in logs.stdout, logs
        cluster.kubectl("delete", "project", "site", "-n", NS, "--timeout=60s")
        assert not (tmp_path / "root" / ".codeb-builds" / f"{NS}.site").exists()


SERVER_JS = """const express = require("express");
const app = express();
app.get("/api/health", (req, res) => res.send("ok"));
app.get("/", (req, res) => res.send(`<h1>celly-creative on express ${require("express/package.json").version}</h1>`));
app.listen(Number(process.env.PORT), process.env.HOST);
"""


def test_the_seeds_nodejs_flow_a_name_a_template_and_a_git_url_becomes_a_served_site(
    world: dict[str, Any], tmp_path: Path
) -> None:
    """The celly-creative seed: `{"name": "celly-creative", "template": "nodejs"}` and a git URL, deployed. The
    repository's dependencies come from the npm registry with the machine's Node.js and npm, as a developer's do."""
    cluster: LocalCluster = world["cluster"]
    caddy = world["caddy"]
    with operator_with_git(world, tmp_path) as (git, _, _):
        tree = WorkTree(git, "celly", tmp_path / "tree")
        package = {"name": "celly-creative", "private": True, "scripts": {"start": "node server.js"},
                   "dependencies": {"express": "^4.21.0"}}  # fmt: skip
        tree.commit("site", {"package.json": json.dumps(package), "server.js": SERVER_JS})
        started = time.monotonic()
        doc = site(git.url("celly"), "main", name="celly-creative", template="nodejs")
        cluster.kubectl("apply", "-f", "-", input_text=json.dumps(doc))
        wait_for(lambda: "celly-creative on express 4." in https_get(caddy, "celly-creative.localhost").stdout,
                 timeout=240, what="the nodejs site served through Caddy")  # fmt: skip
        print(f"the seed's nodejs flow: apply to served in {time.monotonic() - started:.1f} s")
        served = get_json(cluster, "project", "celly-creative", "-n", NS)["status"]
        assert served["build"]["result"] == "Succeeded" and served["phase"] == "Ready", served
        cluster.kubectl("delete", "project", "celly-creative", "-n", NS, "--timeout=60s")


API_SERVER = """import json, os
from http.server import BaseHTTPRequestHandler, HTTPServer

LEDGER = os.path.join(os.environ["HOME"], "installed.json")

def installed():
    return json.load(open(LEDGER)) if os.path.exists(LEDGER) else []

class Handler(BaseHTTPRequestHandler):
    def do_GET(self):
        body = json.dumps(installed()) if self.path == "/api/apps" else "ok"
        self.send_response(200)
        self.end_headers()
        self.wfile.write(body.encode())

    def do_POST(self):
        app = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        json.dump(installed() + [app["name"]], open(LEDGER, "w"))
        self.send_response(201)
        self.end_headers()
        self.wfile.write(b"installed")

    def log_message(self, *args):
        pass

HTTPServer((os.environ["HOST"], int(os.environ["PORT"])), Handler).serve_forever()
"""


def test_an_o4o_style_instance_is_built_from_its_monorepo_with_its_apps_installed_once(
    world: dict[str, Any], tmp_path: Path
) -> None:
    """The O4O seed: an instance from the platform's repository (its API server one app of a monorepo), with the
    AppStore apps it sells installed once after the deploy, not again on every pass or operator restart."""
    cluster: LocalCluster = world["cluster"]
    caddy = world["caddy"]

    def apps() -> list[str]:
        answer = https_get(caddy, "yaksa.localhost", path="/api/apps").stdout
        return list(json.loads(answer)) if answer.startswith("[") else []

    with operator_with_git(world, tmp_path) as (git, operator, _):
        tree = WorkTree(git, "o4o-platform", tmp_path / "tree")
        tree.commit("platform", {"apps/api-server/app.py": API_SERVER, "apps/main-site/index.html": "<h1>main</h1>"})
        doc = site(git.url("o4o-platform"), "main", name="yaksa", template="python")
        doc["spec"]["project"]["source"]["git"]["context"] = "apps/api-server"
        doc["spec"]["features"] = {"apps": [{"name": name} for name in ("commerce", "customer", "forum-yaksa")]}
        cluster.kubectl("apply", "-f", "-", input_text=json.dumps(doc))
        wait_for(lambda: len(apps()) == 3, timeout=120, what="the instance serving, its apps installed")
        operator.kill()
        operator.start()
        time.sleep(6)  # passes of the restarted operator, and of its drift timer
        assert sorted(apps()) == ["commerce", "customer", "forum-yaksa"]  # each once
        cluster.kubectl("delete", "project", "yaksa", "-n", NS, "--timeout=60s")
