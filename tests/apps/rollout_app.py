"""A small application for rollout tests and the rollout bench: standard library only.

It listens on PORT and answers ``/`` with its revision and pid, ``/slow?ms=N`` after N
milliseconds (requests in flight across a switch), ``/fail`` with a 500, and ``/api/health`` as
MODE says:

  ok          always 200
  broken      always 503
  flaky:N     200 for the first N health checks, then 503
  late:S      listens only after S seconds

Every request that is not a health check is counted in ``COUNT_DIR/<revision>.<pid>``
or, without COUNT_DIR (in a container), written to standard output as ``served <revision>``
(the unit's journal), so a test can prove that a broken revision never served a single request. On SIGTERM
it stops accepting, finishes the requests it has and closes each keep-alive connection after its next answer,
as a well-behaved application does: a proxy's pooled connection through a Service's address stays with the
Pod it first reached, so only a closed one makes the proxy connect again, to a Pod that is not leaving.
"""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

MODE = os.environ.get("MODE", "ok")
REVISION = os.environ.get("CODEB_REVISION", "")
COUNT = Path(os.environ["COUNT_DIR"]) / f"{REVISION}.{os.getpid()}" if os.environ.get("COUNT_DIR") else None
lock = threading.Lock()
stopping = threading.Event()
served = 0
checks = 0


def healthy() -> bool:
    global checks
    with lock:
        checks += 1
        seen = checks
    if MODE == "broken":
        return False
    if MODE.startswith("flaky:"):
        return seen <= int(MODE.split(":", 1)[1])
    return True


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    # An idle keep-alive connection (Caddy pools them) closes after this: shutdown never waits longer.
    timeout = 2

    def do_GET(self) -> None:
        url = urlsplit(self.path)
        if url.path == "/api/health":
            ok = healthy()
            self._send(200 if ok else 503, {"healthy": ok})
            return
        self._count()
        if url.path == "/slow":
            time.sleep(int(parse_qs(url.query).get("ms", ["100"])[0]) / 1000)
        if url.path == "/fail":  # an application error, as users would meet it (alert tests)
            self._send(500, {"error": "failed on purpose"})
            return
        self._send(200, {"revision": REVISION, "pid": os.getpid()})

    def _count(self) -> None:
        global served
        with lock:
            served += 1
            if COUNT is None:
                print(f"served {REVISION}", flush=True)
            else:
                COUNT.write_text(str(served))

    def _send(self, code: int, body: dict[str, Any]) -> None:
        data = json.dumps(body).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        if stopping.is_set():
            self.send_header("Connection", "close")  # and http.server closes it once answered
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: Any) -> None:
        return None


class Server(ThreadingHTTPServer):
    daemon_threads = False  # server_close waits for the requests in flight
    block_on_close = True


def main() -> None:
    if MODE.startswith("late:"):
        time.sleep(float(MODE.split(":", 1)[1]))
    server = Server((os.environ.get("HOST", "127.0.0.1"), int(os.environ["PORT"])), Handler)

    def stop(*_: object) -> None:
        stopping.set()
        threading.Thread(target=server.shutdown).start()

    signal.signal(signal.SIGTERM, stop)
    server.serve_forever()
    server.server_close()


if __name__ == "__main__":
    main()
