"""Hello, CodeB: the example application, and proof that a Project's services work.

It reads what the operator gives every workload and talks to each service with its
ordinary client library, as an application of a team would:

  PORT (and HOST)       where to listen
  DATABASE_URL          PostgreSQL, through psycopg with a connection pool
  REDIS_URL, REDIS_PREFIX   Redis, through redis-py (its client pools connections)
  S3_ENDPOINT, S3_BUCKET, S3_ACCESS_KEY, S3_SECRET_KEY   the bucket, through boto3

Runtime local runs it with the operator's virtual environment (which has the three
libraries); the container image gets them from Debian (python3-psycopg,
python3-psycopg-pool, python3-redis, python3-boto3), nothing from a registry.

Each visit to ``/`` writes to all three and reads back: a row in the database, a
counter in Redis, an object in the bucket. ``/api/visit`` returns the same as JSON;
``/api/health`` answers 200 only while every configured service answers. Concurrent
visits are each correct: the table is made once under an advisory lock, and each visit
reads back an object of its own.
"""

from __future__ import annotations

import html
import json
import os
import signal
import threading
import time
import uuid
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, ClassVar

import boto3
import psycopg
import redis
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError
from psycopg_pool import ConnectionPool, PoolTimeout

TIMEOUT = 5.0
OBJECT_KEY = "hello/last-visit.txt"
# Any id, the same in every colour: the blue and green processes make the table under one lock.
SCHEMA_LOCK = 4_242_001


class Database:
    def __init__(self, url: str) -> None:
        self.pool = ConnectionPool(url, min_size=1, max_size=8, timeout=TIMEOUT, open=True,
                                   kwargs={"connect_timeout": int(TIMEOUT)})  # fmt: skip
        self._ready = False

    def visit(self) -> dict[str, Any]:
        with self.pool.connection() as conn:
            self._ensure_table(conn)
            with conn.transaction():
                conn.execute("INSERT INTO visits DEFAULT VALUES")
                row = conn.execute("SELECT count(*) FROM visits").fetchone()
        return {"visits": int(row[0]) if row else 0}

    def _ensure_table(self, conn: psycopg.Connection[Any]) -> None:
        if self._ready:
            return
        with conn.transaction():
            # Two CREATE TABLE IF NOT EXISTS at once can both try to create it; the lock makes them take turns.
            conn.execute("SELECT pg_advisory_xact_lock(%s)", (SCHEMA_LOCK,))
            conn.execute("CREATE TABLE IF NOT EXISTS visits (id bigserial PRIMARY KEY, at timestamptz DEFAULT now())")
        self._ready = True

    def check(self) -> dict[str, Any]:
        with self.pool.connection() as conn:
            conn.execute("SELECT 1")
        return {}


class Cache:
    def __init__(self, url: str, prefix: str) -> None:
        self.client = redis.Redis.from_url(url, socket_timeout=TIMEOUT, socket_connect_timeout=TIMEOUT)
        self.prefix = prefix

    def visit(self) -> dict[str, Any]:
        return {"hits": int(self.client.incr(self.prefix + "hits"))}

    def check(self) -> dict[str, Any]:
        self.client.ping()
        return {}


class Bucket:
    def __init__(self, endpoint: str, bucket: str, access_key: str, secret_key: str) -> None:
        config = Config(connect_timeout=TIMEOUT, read_timeout=TIMEOUT, retries={"max_attempts": 1},
                        s3={"addressing_style": "path"})  # fmt: skip
        self.client = boto3.client(
            "s3", endpoint_url=endpoint, aws_access_key_id=access_key, aws_secret_access_key=secret_key,
            region_name="us-east-1", config=config,
        )  # fmt: skip
        self.bucket = bucket

    def visit(self) -> dict[str, Any]:
        now = datetime.now(UTC).isoformat(timespec="seconds")
        # An object of this visit's own to read back: another visit may overwrite the shared one meanwhile.
        mine, body = f"hello/visits/{uuid.uuid4().hex}.txt", now.encode()
        self.client.put_object(Bucket=self.bucket, Key=mine, Body=body)
        read_back = self.client.get_object(Bucket=self.bucket, Key=mine)["Body"].read() == body
        self.client.delete_object(Bucket=self.bucket, Key=mine)
        self.client.put_object(Bucket=self.bucket, Key=OBJECT_KEY, Body=body)
        return {"object": OBJECT_KEY, "readBack": read_back}

    def check(self) -> dict[str, Any]:
        self.client.list_objects_v2(Bucket=self.bucket, MaxKeys=1)
        return {}


# ---------------------------------------------------------------- the application

FAILURES = (psycopg.Error, PoolTimeout, redis.RedisError, BotoCoreError, ClientError, OSError)


def services(env: dict[str, str]) -> dict[str, Any]:
    found: dict[str, Any] = {}
    if env.get("DATABASE_URL"):
        found["database"] = Database(env["DATABASE_URL"])
    if env.get("REDIS_URL"):
        found["redis"] = Cache(env["REDIS_URL"], env.get("REDIS_PREFIX", ""))
    if env.get("S3_ENDPOINT") and env.get("S3_BUCKET"):
        found["bucket"] = Bucket(env["S3_ENDPOINT"], env["S3_BUCKET"], env.get("S3_ACCESS_KEY", ""),
                                 env.get("S3_SECRET_KEY", ""))  # fmt: skip
    return found


def visit(found: dict[str, Any]) -> dict[str, Any]:
    """Write to every service and read back; each service's result or its error."""
    return {name: _attempt(service.visit) for name, service in found.items()}


def health(found: dict[str, Any]) -> dict[str, Any]:
    return {name: _attempt(service.check) for name, service in found.items()}


def _attempt(step: Any) -> dict[str, Any]:
    try:
        return {"ok": True, **step()}
    except FAILURES as exc:
        # The class only: a library's message may quote a URL with its password.
        return {"ok": False, "error": type(exc).__name__}


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
