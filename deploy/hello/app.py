"""Hello, CodeB: the example application, and proof that a Project's services work.

Standard library only, so it runs under any python3: the operator's machine (runtime
local) or a container image made from Debian's python3 package, with nothing pulled
from a registry at run time. It reads what the operator gives every workload:

  PORT (and HOST)       where to listen
  DATABASE_URL          PostgreSQL, spoken here over its wire protocol (SCRAM-SHA-256)
  REDIS_URL, REDIS_PREFIX
  S3_ENDPOINT, S3_BUCKET, S3_ACCESS_KEY, S3_SECRET_KEY   (AWS signature v4)

Each visit to ``/`` writes to all three and reads back: a row in the database, a
counter in Redis, an object in the bucket. ``/api/visit`` returns the same as JSON;
``/api/health`` answers 200 only while every configured service answers.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import html
import http.client
import json
import os
import secrets
import signal
import socket
import struct
import threading
import time
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, ClassVar
from urllib.parse import unquote, urlsplit

TIMEOUT = 5.0
OBJECT_KEY = "hello/last-visit.txt"


class ServiceError(Exception):
    pass


# ---------------------------------------------------------------- PostgreSQL


class Postgres:
    """Just enough of the v3 protocol: startup, SCRAM-SHA-256 / MD5 login, simple queries."""

    def __init__(self, url: str) -> None:
        parts = urlsplit(url)
        self.host, self.port = parts.hostname or "127.0.0.1", parts.port or 5432
        self.user, self.password = unquote(parts.username or ""), unquote(parts.password or "")
        self.database = parts.path.lstrip("/")

    def query(self, *statements: str) -> list[list[list[str | None]]]:
        with socket.create_connection((self.host, self.port), timeout=TIMEOUT) as sock:
            self._sock = sock
            self._login()
            results = [self._simple_query(sql) for sql in statements]
            sock.sendall(b"X" + struct.pack("!i", 4))
            return results

    def _send(self, kind: bytes, payload: bytes) -> None:
        self._sock.sendall(kind + struct.pack("!i", len(payload) + 4) + payload)

    def _receive(self) -> tuple[bytes, bytes]:
        header = self._read(5)
        (length,) = struct.unpack("!i", header[1:])
        return header[:1], self._read(length - 4)

    def _read(self, size: int) -> bytes:
        data = b""
        while len(data) < size:
            chunk = self._sock.recv(size - len(data))
            if not chunk:
                raise ServiceError("PostgreSQL closed the connection")
            data += chunk
        return data

    def _login(self) -> None:
        params = f"user\0{self.user}\0database\0{self.database}\0\0".encode()
        self._sock.sendall(struct.pack("!ii", len(params) + 8, 196608) + params)
        scram: Scram | None = None
        while True:
            kind, body = self._receive()
            if kind == b"E":
                raise ServiceError(_pg_error(body))
            if kind == b"Z":
                return
            if kind != b"R":
                continue
            (code,) = struct.unpack("!i", body[:4])
            if code == 10:
                scram = Scram(self.password)
                first = scram.client_first().encode()
                self._send(b"p", b"SCRAM-SHA-256\0" + struct.pack("!i", len(first)) + first)
            elif code == 11 and scram is not None:
                self._send(b"p", scram.client_final(body[4:].decode()).encode())
            elif code == 5:
                inner = hashlib.md5((self.password + self.user).encode()).hexdigest()
                digest = "md5" + hashlib.md5(inner.encode() + body[4:8]).hexdigest()
                self._send(b"p", digest.encode() + b"\0")
            elif code == 3:
                self._send(b"p", self.password.encode() + b"\0")
            elif code not in (0, 12):
                raise ServiceError(f"PostgreSQL asked for an unsupported login method ({code})")

    def _simple_query(self, sql: str) -> list[list[str | None]]:
        self._send(b"Q", sql.encode() + b"\0")
        rows: list[list[str | None]] = []
        error = None
        while True:
            kind, body = self._receive()
            if kind == b"D":
                rows.append(_data_row(body))
            elif kind == b"E":
                error = _pg_error(body)
            elif kind == b"Z":
                if error:
                    raise ServiceError(error)
                return rows


class Scram:
    def __init__(self, password: str) -> None:
        self.password = password
        self.nonce = base64.b64encode(secrets.token_bytes(18)).decode()
        self.first_bare = f"n=,r={self.nonce}"

    def client_first(self) -> str:
        return "n,," + self.first_bare

    def client_final(self, server_first: str) -> str:
        fields = dict(item.split("=", 1) for item in server_first.split(","))
        if not fields["r"].startswith(self.nonce):
            raise ServiceError("PostgreSQL answered with a foreign SCRAM nonce")
        salted = hashlib.pbkdf2_hmac("sha256", self.password.encode(), base64.b64decode(fields["s"]), int(fields["i"]))
        client_key = hmac.new(salted, b"Client Key", hashlib.sha256).digest()
        without_proof = f"c=biws,r={fields['r']}"
        message = f"{self.first_bare},{server_first},{without_proof}".encode()
        signature = hmac.new(hashlib.sha256(client_key).digest(), message, hashlib.sha256).digest()
        proof = bytes(a ^ b for a, b in zip(client_key, signature, strict=True))
        return f"{without_proof},p={base64.b64encode(proof).decode()}"


def _data_row(body: bytes) -> list[str | None]:
    (count,) = struct.unpack("!h", body[:2])
    values: list[str | None] = []
    at = 2
    for _ in range(count):
        (length,) = struct.unpack("!i", body[at : at + 4])
        at += 4
        values.append(None if length < 0 else body[at : at + length].decode())
        at += max(length, 0)
    return values


def _pg_error(body: bytes) -> str:
    fields = {part[:1]: part[1:].decode(errors="replace") for part in body.split(b"\0") if part}
    return f"PostgreSQL: {fields.get(b'M', 'error')} ({fields.get(b'C', '?')})"


# ---------------------------------------------------------------- Redis


class Redis:
    def __init__(self, url: str, prefix: str) -> None:
        parts = urlsplit(url)
        self.host, self.port = parts.hostname or "127.0.0.1", parts.port or 6379
        self.user, self.password = unquote(parts.username or ""), unquote(parts.password or "")
        self.prefix = prefix

    def command(self, *commands: list[str]) -> list[Any]:
        with socket.create_connection((self.host, self.port), timeout=TIMEOUT) as sock:
            stream = sock.makefile("rb")
            replies = []
            for args in [["AUTH", self.user, self.password], *commands]:
                encoded = b"".join(b"$%d\r\n%s\r\n" % (len(a.encode()), a.encode()) for a in args)
                sock.sendall(b"*%d\r\n" % len(args) + encoded)
                replies.append(_resp(stream))
            return replies[1:]


def _resp(stream: Any) -> Any:
    line = stream.readline().rstrip(b"\r\n")
    kind, rest = line[:1], line[1:]
    if kind == b"-":
        raise ServiceError("Redis: " + rest.decode(errors="replace").split(" ")[0])
    if kind == b"+":
        return rest.decode()
    if kind == b":":
        return int(rest)
    if kind == b"$":
        size = int(rest)
        return None if size < 0 else stream.read(size + 2)[:-2].decode()
    if kind == b"*":
        return [_resp(stream) for _ in range(max(int(rest), 0))]
    raise ServiceError("Redis: unexpected reply")


# ---------------------------------------------------------------- S3


class Bucket:
    """PUT and GET of one object, path-style, signed with AWS signature version 4."""

    def __init__(self, endpoint: str, bucket: str, access_key: str, secret_key: str) -> None:
        parts = urlsplit(endpoint)
        self.secure, self.netloc = parts.scheme == "https", parts.netloc
        self.bucket, self.access_key, self.secret_key = bucket, access_key, secret_key

    def request(self, method: str, key: str, body: bytes = b"") -> bytes:
        path = f"/{self.bucket}/{key}"
        headers = self._signed(method, path, body)
        connection_type = http.client.HTTPSConnection if self.secure else http.client.HTTPConnection
        connection = connection_type(self.netloc, timeout=TIMEOUT)
        try:
            connection.request(method, path, body=body, headers=headers)
            response = connection.getresponse()
            data = response.read()
        finally:
            connection.close()
        if response.status >= 300:
            raise ServiceError(f"S3: {method} answered {response.status}")
        return data

    def _signed(self, method: str, path: str, body: bytes) -> dict[str, str]:
        now = datetime.now(UTC)
        stamp, day = now.strftime("%Y%m%dT%H%M%SZ"), now.strftime("%Y%m%d")
        payload = hashlib.sha256(body).hexdigest()
        headers = {"host": self.netloc, "x-amz-content-sha256": payload, "x-amz-date": stamp}
        signed = ";".join(sorted(headers))
        canonical = "\n".join([method, path, "", *(f"{k}:{headers[k]}" for k in sorted(headers)), "", signed, payload])
        scope = f"{day}/us-east-1/s3/aws4_request"
        to_sign = "\n".join(["AWS4-HMAC-SHA256", stamp, scope, hashlib.sha256(canonical.encode()).hexdigest()])
        key = ("AWS4" + self.secret_key).encode()
        for part in (day, "us-east-1", "s3", "aws4_request"):
            key = hmac.new(key, part.encode(), hashlib.sha256).digest()
        signature = hmac.new(key, to_sign.encode(), hashlib.sha256).hexdigest()
        authorization = (
            f"AWS4-HMAC-SHA256 Credential={self.access_key}/{scope}, SignedHeaders={signed}, Signature={signature}"
        )
        return {**headers, "authorization": authorization}


# ---------------------------------------------------------------- the application


def services(env: dict[str, str]) -> dict[str, Any]:
    found: ClassVar[dict[str, Any]] = {}
    if env.get("DATABASE_URL"):
        found["database"] = Postgres(env["DATABASE_URL"])
    if env.get("REDIS_URL"):
        found["redis"] = Redis(env["REDIS_URL"], env.get("REDIS_PREFIX", ""))
    if env.get("S3_ENDPOINT") and env.get("S3_BUCKET"):
        found["bucket"] = Bucket(env["S3_ENDPOINT"], env["S3_BUCKET"], env.get("S3_ACCESS_KEY", ""),
                                 env.get("S3_SECRET_KEY", ""))  # fmt: skip
    return found


def visit(found: dict[str, Any]) -> dict[str, Any]:
    """Write to every service and read back; each service's result or its error."""
    now = datetime.now(UTC).isoformat(timespec="seconds")
    steps = {
        "database": lambda db: {
            "visits": int(
                db.query(
                    "CREATE TABLE IF NOT EXISTS visits (id bigserial PRIMARY KEY, at timestamptz DEFAULT now())",
                    "INSERT INTO visits DEFAULT VALUES",
                    "SELECT count(*) FROM visits",
                )[2][0][0]
            )
        },
        "redis": lambda cache: {"hits": cache.command(["INCR", cache.prefix + "hits"])[0]},
        "bucket": lambda bucket: {
            "object": OBJECT_KEY,
            "readBack": bucket.request("PUT", OBJECT_KEY, now.encode()) is not None
            and bucket.request("GET", OBJECT_KEY).decode() == now,
        },
    }
    return {name: _attempt(lambda name=name: steps[name](found[name])) for name in found}


def health(found: dict[str, Any]) -> dict[str, Any]:
    checks = {
        "database": lambda db: db.query("SELECT 1"),
        "redis": lambda cache: cache.command(["PING"]),
        "bucket": lambda bucket: bucket.request("GET", ""),  # lists the bucket
    }
    return {name: _attempt(lambda name=name: checks[name](found[name]) and {}) for name in found}


def _attempt(step: Any) -> dict[str, Any]:
    try:
        return {"ok": True, **step()}
    except (OSError, ServiceError, ValueError, IndexError) as exc:
        return {"ok": False, "error": str(exc) if isinstance(exc, ServiceError) else type(exc).__name__}


def page(results: dict[str, Any]) -> str:
    rows = "".join(
        f"<tr><th>{html.escape(name)}</th><td>{'works' if r['ok'] else 'FAILS'}</td>"
        f"<td><code>{html.escape(json.dumps({k: v for k, v in r.items() if k != 'ok'}))}</code></td></tr>"
        for name, r in results.items()
    )
    return (
        "<!doctype html><meta charset=utf-8><title>Hello, CodeB</title>"
        "<h1>Hello, CodeB</h1><p>Served by a CodeB Project. This visit used:</p>"
        f"<table>{rows or '<tr><td>no services configured</td></tr>'}</table>"
    )


class Handler(BaseHTTPRequestHandler):
    found: ClassVar[dict[str, Any]] = {}

    def do_GET(self) -> None:
        if self.path == "/api/health":
            results = health(self.found)
            ok = all(r["ok"] for r in results.values())
            self._send(
                200 if ok else 503,
                "application/json",
                json.dumps({"status": "ok" if ok else "failing", "checks": results}),
            )
        elif self.path == "/api/visit":
            self._send(200, "application/json", json.dumps(visit(self.found)))
        elif self.path == "/":
            self._send(200, "text/html; charset=utf-8", page(visit(self.found)))
        else:
            self._send(404, "text/plain", "not found\n")

    def _send(self, code: int, content_type: str, body: str) -> None:
        data = body.encode()
        self.send_response(code)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: Any) -> None:
        print(f"{time.strftime('%H:%M:%S')} {self.address_string()} {format % args}", flush=True)


def main() -> None:
    Handler.found = services(dict(os.environ))
    server = ThreadingHTTPServer((os.environ.get("HOST", "0.0.0.0"), int(os.environ.get("PORT", "3000"))), Handler)
    signal.signal(signal.SIGTERM, lambda *_: threading.Thread(target=server.shutdown).start())
    print(f"listening on {server.server_address[0]}:{server.server_address[1]}; services: {sorted(Handler.found)}",
          flush=True)  # fmt: skip
    server.serve_forever()


if __name__ == "__main__":
    main()
