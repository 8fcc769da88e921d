"""Finding the processes this test session started, so none outlives the module that started it.

A process is the session's when it descends from pytest, when it inherited the session's mark
(``CODEB_TEST_SESSION`` in its environment: the servers, the operator), or when its command
line or working directory is under pytest's temporary directory (a local workload's
supervisor, which the operator starts in a session of its own and which outlives the
operator by design), and so is everything that descends from one of those.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

MARK_VARIABLE = "CODEB_TEST_SESSION"
GRACE_SECONDS = 5.0


@dataclass(frozen=True)
class Proc:
    pid: int
    parent: int
    state: str
    command: str


def mark_session() -> str:
    mark = os.environ.setdefault(MARK_VARIABLE, uuid.uuid4().hex)
    return mark


def _read(path: str) -> bytes:
    try:
        with open(path, "rb") as handle:
            return handle.read(1 << 16)
    except OSError:
        return b""


def processes() -> dict[int, Proc]:
    found = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        stat = _read(f"/proc/{entry.name}/stat").decode(errors="replace")
        if not stat:
            continue
        # "pid (comm) state ppid ...": comm may hold spaces and parentheses; the last ")" ends it.
        rest = stat[stat.rfind(")") + 2 :].split()
        command = _read(f"/proc/{entry.name}/cmdline").replace(b"\0", b" ").decode(errors="replace").strip()
        found[int(entry.name)] = Proc(int(entry.name), int(rest[1]), rest[0], command)
    return found


def _marked(pid: int, mark: str, under: str) -> bool:
    if f"{MARK_VARIABLE}={mark}".encode() in _read(f"/proc/{pid}/environ").split(b"\0"):
        return True
    try:
        cwd = os.readlink(f"/proc/{pid}/cwd")
    except OSError:
        cwd = ""
    return cwd.startswith(under) or under in _read(f"/proc/{pid}/cmdline").replace(b"\0", b" ").decode(errors="replace")


def session_processes(mark: str, tmp_root: Path) -> dict[int, Proc]:
    """Every live (not zombie) process of this session but pytest itself."""
    table = processes()
    me, under = os.getpid(), str(tmp_root)
    roots = {pid for pid in table if pid == me or _marked(pid, mark, under)}
    children: dict[int, list[int]] = {}
    for proc in table.values():
        children.setdefault(proc.parent, []).append(proc.pid)
    ours, stack = set(), list(roots)
    while stack:
        pid = stack.pop()
        if pid not in ours:
            ours.add(pid)
            stack.extend(children.get(pid, ()))
    return {pid: table[pid] for pid in ours if pid != me and table[pid].state != "Z"}


def stop(pids: Iterable[int], grace: float = GRACE_SECONDS) -> list[int]:
    """SIGTERM, then SIGKILL what outlives ``grace``; the pids that needed the SIGKILL."""
    pids = list(pids)
    for pid in pids:
        _signal(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline and any(_alive(pid) for pid in pids):
        time.sleep(0.1)
    killed = [pid for pid in pids if _alive(pid)]
    for pid in killed:
        _signal(pid, signal.SIGKILL)
    return killed


def wait_gone(pids: Iterable[int], seconds: float) -> list[int]:
    """The pids still alive after waiting up to ``seconds`` for them to exit by themselves."""
    pids = list(pids)
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline and any(_alive(pid) for pid in pids):
        time.sleep(0.1)
    return [pid for pid in pids if _alive(pid)]


def _alive(pid: int) -> bool:
    state = _read(f"/proc/{pid}/stat").decode(errors="replace")
    return bool(state) and state[state.rfind(")") + 2 :][:1] != "Z"


def _signal(pid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.kill(pid, sig)
