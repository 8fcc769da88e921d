"""Git repositories served on loopback over smart HTTP, by git's own server (`git http-backend`, Debian's git).

`git http-backend` is a CGI program: this module is only the CGI host, a threaded HTTP server that
hands each request to it (environment in, body in, headers and body out). Repositories are bare,
under one root; a test commits through a work tree of its own and pushes to the directory.
"""

from __future__ import annotations

import base64
import os
import shutil
import ssl
import subprocess
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from controller.local.archive import store_certificates

BACKEND = Path("/usr/lib/git-core/git-http-backend")
AUTHOR = {"GIT_AUTHOR_NAME": "codeb tests", "GIT_AUTHOR_EMAIL": "tests@codeb.invalid",
          "GIT_COMMITTER_NAME": "codeb tests", "GIT_COMMITTER_EMAIL": "tests@codeb.invalid"}  # fmt: skip


def git(*args: str, cwd: Path) -> str:
    done = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, timeout=60, check=False,
                          env={**os.environ, **AUTHOR, "GIT_CONFIG_NOSYSTEM": "1", "HOME": str(cwd)})  # fmt: skip
    assert done.returncode == 0, f"git {' '.join(args)}: {done.stderr[-2000:]}"
    return done.stdout.strip()


class _Backend(BaseHTTPRequestHandler):
    root: Path  # set on the class made for each server
    authorization: str | None  # the Authorization header a private server requires (None: public)

    def do_GET(self) -> None:
        self._serve(b"")

    def do_POST(self) -> None:
        self._serve(self.rfile.read(int(self.headers.get("Content-Length") or 0)))

    def _serve(self, body: bytes) -> None:
        if self.authorization is not None and self.headers.get("Authorization") != self.authorization:
            self.send_response(401)
            self.send_header("WWW-Authenticate", 'Basic realm="git"')
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        url = urlsplit(self.path)
        env = {"GIT_PROJECT_ROOT": str(self.root), "GIT_HTTP_EXPORT_ALL": "1", "PATH_INFO": url.path,
               "QUERY_STRING": url.query, "REQUEST_METHOD": self.command, "REMOTE_ADDR": self.client_address[0],
               "CONTENT_TYPE": self.headers.get("Content-Type", ""), "CONTENT_LENGTH": str(len(body)),
               "GIT_PROTOCOL": self.headers.get("Git-Protocol", ""), "PATH": os.environ.get("PATH", "")}  # fmt: skip
        done = subprocess.run([str(BACKEND)], input=body, capture_output=True, timeout=120, env=env, check=False)
        head, _, payload = done.stdout.partition(b"\r\n\r\n")
        status, headers = 200, []
        for line in head.decode("latin-1").split("\r\n"):
            name, _, value = line.partition(":")
            if name.lower() == "status":
                status = int(value.split()[0])
            elif name:
                headers.append((name, value.strip()))
        self.send_response(status)
        for name, value in headers:
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, *args: Any) -> None:
        pass


class GitServer:
    """Bare repositories under ``root``, served at ``http://<host>:<port>/<name>.git``; with ``tls``, at
    ``https://`` with a certificate from a CA of its own (``ca_file``), as a real Git host serves them; with
    ``login`` (user, token), only to a client that sends them (HTTP basic), as a private repository is."""

    def __init__(self, root: Path, host: str = "127.0.0.1", tls: bool = False,
                 login: tuple[str, str] | None = None) -> None:  # fmt: skip
        assert BACKEND.exists(), "git http-backend is missing: apt-get install git"
        self.root, self.host, self.tls = root, host, tls
        root.mkdir(parents=True, exist_ok=True)
        required = "Basic " + base64.b64encode(":".join(login).encode()).decode() if login else None
        handler = type("Backend", (_Backend,), {"root": root, "authorization": required})
        self._server = ThreadingHTTPServer((host, 0), handler)
        if tls:
            certs = store_certificates(root / "tls", host)
            context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            context.load_cert_chain(certs / "public.crt", certs / "private.key")
            # The handshake happens in each request's own thread, on its first read.
            self._server.socket = context.wrap_socket(self._server.socket, server_side=True,
                                                      do_handshake_on_connect=False)  # fmt: skip
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        self.port = self._server.server_address[1]

    @property
    def ca_file(self) -> Path:
        return self.root / "tls" / "ca.crt"

    def url(self, name: str) -> str:
        return f"{'https' if self.tls else 'http'}://{self.host}:{self.port}/{name}.git"

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()


class WorkTree:
    """A clone of one of the server's repositories, committed to and pushed back (branch main)."""

    def __init__(self, server: GitServer, name: str, where: Path) -> None:
        bare = server.root / f"{name}.git"
        git("init", "--bare", "--initial-branch=main", str(bare), cwd=server.root)
        shutil.rmtree(where, ignore_errors=True)
        where.mkdir(parents=True)
        git("init", "--initial-branch=main", cwd=where)
        git("remote", "add", "origin", str(bare), cwd=where)
        self.path = where

    def commit(self, message: str, files: dict[str, str | None]) -> str:
        """Write (or, with None, remove) ``files``, commit and push; the commit's hash."""
        for name, text in files.items():
            target = self.path / name
            if text is None:
                target.unlink(missing_ok=True)
            else:
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_text(text)
        git("add", "--all", cwd=self.path)
        git("commit", "--allow-empty", "-m", message, cwd=self.path)
        git("push", "origin", "main", cwd=self.path)
        return git("rev-parse", "HEAD", cwd=self.path)
