"""This machine's process table, read from /proc: supervisors, their launch records, listeners, signals;
and the one step that starts or looks at a detached run here (`follow_local`).

Runtime local finds its workloads by looking, not by remembering: a supervisor is a
process running `controller/local/supervise.py`, its launch record is in its environment
(`LAUNCH_ENV`), and a port is held by whoever has a listening socket on it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from controller.jobs import hookruns

LAUNCH_ENV = "CODEB_LAUNCH"
# One step of following a detached run (a hook, a build: start it, or look at it) answers within this.
FOLLOW_SECONDS = 30.0


def supervisors() -> Iterable[tuple[int, list[str]]]:
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            argv = Path(entry.path, "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if len(argv) > 2 and argv[1].endswith(b"supervise.py") and b"--workload" in argv:
            yield int(entry.name), [a.decode(errors="replace") for a in argv]


def supervisor_options(argv: list[str]) -> dict[str, str]:
    end = argv.index("--") if "--" in argv else len(argv)
    head = argv[2:end]
    return {head[i]: head[i + 1] for i in range(0, len(head) - 1, 2) if head[i].startswith("--")}


def launch_record(pid: int) -> Mapping[str, Any] | None:
    try:
        environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    except OSError:
        return None
    prefix = LAUNCH_ENV.encode() + b"="
    for item in environ:
        if item.startswith(prefix):
            record: Mapping[str, Any] = json.loads(item[len(prefix) :])
            return record
    return None


def started_ticks(pid: int) -> int:
    """Start time in clock ticks since boot (field 22 of /proc/<pid>/stat): orders processes."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0
    return int(stat.rsplit(")", 1)[1].split()[19])


def alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def group_of(pid: int) -> int | None:
    if pid <= 0:  # a listener nobody here may look at
        return None
    try:
        return os.getpgid(pid)
    except ProcessLookupError:
        return None


def listeners(port: int) -> set[int]:
    """Pids holding a listening TCP socket on ``port`` (any address), from /proc/net/tcp{,6}."""
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if fields[3] == "0A" and int(fields[1].rsplit(":", 1)[1], 16) == port:  # 0A: LISTEN
                inodes.add(fields[9])
    if not inodes:
        return set()
    targets = {f"socket:[{inode}]" for inode in inodes}
    holders = set()
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            fds = os.scandir(f"/proc/{entry.name}/fd")
            if any(os.readlink(fd.path) in targets for fd in fds):
                holders.add(int(entry.name))
        except OSError:
            continue
    # A listener we cannot attribute (another user's) still holds the port.
    return holders or {-1}


# The most of a log's end read for its last lines: an application may write gigabytes.
TAIL_BYTES = 256 * 1024


def tail_lines(path: Path, count: int) -> list[str]:
    """The last ``count`` lines of a file, reading at most its last `TAIL_BYTES`."""
    with path.open("rb") as log:
        size = log.seek(0, os.SEEK_END)
        log.seek(max(0, size - TAIL_BYTES))
        lines = log.read(TAIL_BYTES).decode(errors="replace").splitlines()
    # A read that began mid-file began mid-line: that first piece is not a line.
    return (lines[1:] if size > TAIL_BYTES else lines)[-count:]


def send_signal(pid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, sig)


def signal_group(pid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, sig)


async def follow_local(mode: str, run_dir: str, timeout: int, argv: list[str], cwd: Path, env: dict[str, str]) -> str:
    """One `hookruns.FOLLOW` step on this machine: its answer (a few lines and an output tail, bounded)."""
    process = await asyncio.create_subprocess_exec(
        *hookruns.follow_argv(mode, run_dir, timeout, argv), cwd=cwd, env=env, stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        output, _ = await asyncio.wait_for(process.communicate(), FOLLOW_SECONDS)
    except TimeoutError:
        process.kill()
        await process.wait()
        return ""  # no answer this time: followed again next pass
    return output.decode(errors="replace")
