"""The rollout tests' application (tests/apps/rollout_app.py) leaves as the rollout tests assume.

Told to stop, it answers a kept-alive connection once more, saying ``Connection: close``, closes it and exits.
Behind a Service's address a proxy's pooled connection stays with the Pod it first reached: an application that
kept serving it would keep getting requests until the kubelet kills it, and lose the ones in flight then.
"""

from __future__ import annotations

import http.client
import os
import signal
import subprocess
import sys
from pathlib import Path

from controller.local.cluster import free_port, stop_process
from controller.local.platform import wait_port

APP = Path(__file__).resolve().parents[1] / "apps" / "rollout_app.py"


def _get(connection: http.client.HTTPConnection, path: str) -> http.client.HTTPResponse:
    connection.request("GET", path)
    answer = connection.getresponse()
    answer.read()
    return answer


def test_told_to_stop_it_closes_a_kept_alive_connection_after_answering_and_exits() -> None:
    port = free_port()
    env = {**os.environ, "PORT": str(port), "CODEB_REVISION": "r1", "MODE": "ok"}
    app = subprocess.Popen([sys.executable, str(APP)], env=env, stdout=subprocess.DEVNULL)
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        wait_port(port, "the rollout app", timeout=20)
        before = [_get(connection, "/") for _ in range(2)]
        assert all(a.status == 200 and not a.will_close for a in before)  # one connection, kept alive
        connection.request("GET", "/slow?ms=2000")  # in flight when it is told to stop
        app.send_signal(signal.SIGTERM)
        last = connection.getresponse()
        last.read()
        assert last.status == 200 and last.getheader("Connection") == "close" and last.will_close
        assert app.wait(timeout=10) == 0
    finally:
        connection.close()
        stop_process(app, grace=5)
