"""Keeps one local workload process running: the supervisor behind runtime ``local``.

Started by `controller.drivers.processes` in a session of its own, so it outlives the
operator: a restarted operator finds it again by its command line (``--workload``)
and adopts it instead of starting the application twice. It restarts the
application when it exits (backing off from 1 s to 30 s), writes the application's
output to a log file, and records the application's pid, exit code and restart count
in a small JSON file beside it, the way systemd keeps a unit's runtime state. On
SIGTERM it stops the application's whole process group and exits.

Standard library only, and run by path, so it starts under any Python the operator
runs with. Usage:

  python supervise.py --workload NS/NAME --colour blue --dir STATE_DIR --cwd DIR -- PROGRAM [ARG…]

The application's environment is the supervisor's own.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import subprocess
import time
from pathlib import Path

BACKOFF_FIRST, BACKOFF_MAX = 1.0, 30.0
# A run this long counts as healthy again: the next crash restarts after BACKOFF_FIRST.
STABLE_SECONDS = 30.0
STOP_GRACE_SECONDS = 10.0
LOG_MAX_BYTES = 5 * 1024 * 1024


class Supervisor:
    def __init__(self, args: argparse.Namespace) -> None:
        self.command: list[str] = args.command
        self.cwd: str = args.cwd
        self.log = Path(args.dir) / f"{args.colour}.log"
        self.state = Path(args.dir) / f"{args.colour}.json"
        self.child: subprocess.Popen[bytes] | None = None
        self.stopping = False
        self.restarts = 0
        self.last_exit: int | None = None

    def run(self) -> int:
        delay = BACKOFF_FIRST
        while not self.stopping:
            started = time.monotonic()
            self._start()
            code = self._wait()
            self.last_exit = code
            self._record()
            if self.stopping:
                break
            delay = BACKOFF_FIRST if time.monotonic() - started > STABLE_SECONDS else min(delay * 2, BACKOFF_MAX)
            self.restarts += 1
            self._pause(delay)
        return 0

    def _start(self) -> None:
        self._rotate()
        with self.log.open("ab") as out:
            try:
                self.child = subprocess.Popen(self.command, cwd=self.cwd, stdin=subprocess.DEVNULL, stdout=out,
                                              stderr=subprocess.STDOUT, process_group=0)  # fmt: skip
            except OSError as exc:
                out.write(f"codeb: cannot start {self.command[0]}: {exc.strerror}\n".encode())
                self.child = None
        self._record()

    def _wait(self) -> int:
        """The child's exit code; once stopping, SIGKILL after the grace period."""
        if self.child is None:
            return 127
        stop_sent: float | None = None
        while True:
            try:
                return self.child.wait(timeout=0.2)
            except subprocess.TimeoutExpired:
                pass
            if self.stopping and stop_sent is None:
                stop_sent = time.monotonic()
                _signal_group(self.child.pid, signal.SIGTERM)
            elif stop_sent is not None and time.monotonic() - stop_sent > STOP_GRACE_SECONDS:
                _signal_group(self.child.pid, signal.SIGKILL)

    def _pause(self, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while not self.stopping and time.monotonic() < deadline:
            time.sleep(0.1)

    def stop(self, *_: object) -> None:
        # Only a flag: the main loop signals the child's group and reaps it.
        self.stopping = True

    def _record(self) -> None:
        child = self.child
        alive = child is not None and child.poll() is None
        state = {"pid": child.pid if alive and child else None, "restarts": self.restarts, "lastExit": self.last_exit}
        temporary = self.state.with_suffix(".tmp")
        temporary.write_text(json.dumps(state))
        temporary.replace(self.state)  # atomic: a reader never sees half a file

    def _rotate(self) -> None:
        if self.log.exists() and self.log.stat().st_size > LOG_MAX_BYTES:
            self.log.replace(self.log.with_suffix(".log.1"))


def _signal_group(pid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, sig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--workload", required=True, help="NAMESPACE/NAME of the Project (how it is found again)")
    parser.add_argument("--colour", required=True)
    parser.add_argument("--dir", required=True, help="where the log and runtime state go")
    parser.add_argument("--cwd", required=True)
    parser.add_argument("command", nargs="+")
    args = parser.parse_args(argv)
    Path(args.dir).mkdir(parents=True, exist_ok=True)
    supervisor = Supervisor(args)
    signal.signal(signal.SIGTERM, supervisor.stop)
    signal.signal(signal.SIGINT, supervisor.stop)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    return supervisor.run()


if __name__ == "__main__":
    raise SystemExit(main())
