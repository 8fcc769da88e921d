"""Real hosts for the quadlet tests: Debian booted with ``systemd-nspawn -b``, reached over SSH.

The way Kamal's integration tests use containers as VMs. The rootfs (systemd, podman,
runc, sshd, the quadlet generator built from podman v5) is made once by
``deploy/testhost/build-rootfs.sh`` and cached; each host boots from an overlay on it,
in a network namespace of its own joined to this machine by a veth pair:

    this machine  10.213.<n>.1  <-- veth -->  10.213.<n>.2  host n (sshd :22, published ports)

The shared services the applications use listen on ``SERVICES_ADDRESS``, an address
on this machine's loopback that every host reaches through its default route. The
example application's image is imported on each host from the cache: no registry.

nspawn needs the findings the issue names: the unified cgroup hierarchy, every
capability, the bpf and keyring system calls, and /proc/sys/net writable (netavark
sets sysctls in the host's namespace).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import asyncssh

from controller.local.cluster import stop_process

REPO = Path(__file__).resolve().parents[1]
SERVICES_ADDRESS = "10.213.0.1"
PREFIX = "cbth"  # names of this harness's network namespaces and veth links
HELLO_IMAGE = "localhost/codeb-hello:1"
# The same image, running tests/apps/rollout_app.py (the rollout tests' application).
ROLLOUT_IMAGE = "localhost/codeb-rollout:1"
APPS = (REPO / "deploy/hello/app.py", REPO / "tests/apps/rollout_app.py")
MAX_HOSTS = 3
BOOT_SECONDS = 90.0
LOCK_WAIT_SECONDS = 480  # within pytest's 600 s for the test that boots them


@dataclass
class BootedHost:
    index: int
    directory: Path
    process: subprocess.Popen[bytes]

    @property
    def address(self) -> str:
        return f"10.213.{self.index}.2"

    @property
    def netns(self) -> str:
        return f"{PREFIX}{self.index}"

    def ssh(self, key: Path, command: str, check: bool = True, timeout: float = 120) -> str:
        """One command over real SSH (OpenSSH's client, as a person would)."""
        args = ["ssh", "-i", str(key), "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null",
                "-o", "LogLevel=ERROR", "-o", "BatchMode=yes", f"root@{self.address}", command]  # fmt: skip
        done = subprocess.run(args, capture_output=True, text=True, timeout=timeout)
        if check and done.returncode != 0:
            raise RuntimeError(f"{self.address}: {command!r} failed: {done.stderr.strip()}")
        return done.stdout


@dataclass
class BootedHosts:
    hosts: list[BootedHost]
    private_key: str
    key_file: Path
    cache: Path  # what build-rootfs.sh made (the hosts see it at /codeb-cache)

    def ssh(self, host: BootedHost, command: str, check: bool = True) -> str:
        return host.ssh(self.key_file, command, check)


def build_cache() -> Path:
    done = subprocess.run(["bash", str(REPO / "deploy/testhost/build-rootfs.sh")], capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"building the test host rootfs failed: {done.stderr[-2000:]}")
    return Path(done.stdout.strip().splitlines()[-1])


def quadlet_binary() -> Path:
    return build_cache() / "quadlet-v5.4.2"


@contextlib.contextmanager
def booted(count: int, kind: str = "rootfs") -> Iterator[BootedHosts]:
    """``count`` hosts, booted and reachable over SSH with a fresh key; all gone afterwards.
    ``kind`` ``node`` boots the test node's rootfs instead (``tests/testnode.py``)."""
    assert 1 <= count <= MAX_HOSTS
    cache = build_cache()
    with _machine_lock():
        yield from _booted(count, cache, newest(cache, kind), image_tar(cache) if kind == "rootfs" else None)


def newest(cache: Path, kind: str) -> Path:
    """The newest finished build of ``kind`` (by its version as a number: v10 after v9; never a .tmp)."""
    built = [p for p in cache.glob(f"{kind}-v*") if p.name.removeprefix(f"{kind}-v").isdigit()]
    return max(built, key=lambda p: int(p.name.removeprefix(f"{kind}-v")))


def image_tar(cache: Path) -> Path:
    """The applications' image (a rootfs tar), named by the applications' content."""
    return cache / f"hello-image-{hashlib.sha256(b''.join(p.read_bytes() for p in APPS)).hexdigest()[:12]}.tar"


def _booted(count: int, cache: Path, rootfs: Path, image: Path | None) -> Iterator[BootedHosts]:
    work = Path(tempfile.mkdtemp(prefix="codeb-hosts-"))
    key = asyncssh.generate_private_key("ssh-ed25519")
    key_file = work / "id_ed25519"
    key_file.write_bytes(key.export_private_key())
    key_file.chmod(0o600)
    # Under the machine's lock, whatever is left is a killed run's: its hosts, links and address go.
    _clean_leftovers()
    with contextlib.suppress(subprocess.CalledProcessError):
        _run("ip", "addr", "del", f"{SERVICES_ADDRESS}/32", "dev", "lo")
    _run("ip", "addr", "add", f"{SERVICES_ADDRESS}/32", "dev", "lo")
    hosts: list[BootedHost] = []
    try:
        for index in range(1, count + 1):
            hosts.append(_boot(index, work, rootfs, cache, key.export_public_key().decode()))
        for host in hosts:
            _wait_ssh(host)
            if image is not None:
                _import_apps(host, key_file, image)
        yield BootedHosts(hosts, key.export_private_key().decode(), key_file, cache)
    finally:
        for host in hosts:
            _shutdown(host)
        _clean_leftovers()
        with contextlib.suppress(subprocess.CalledProcessError):
            _run("ip", "addr", "del", f"{SERVICES_ADDRESS}/32", "dev", "lo")
        shutil.rmtree(work, ignore_errors=True)


def _import_apps(host: BootedHost, key_file: Path, image: Path) -> None:
    for tag, program in ((HELLO_IMAGE, "app.py"), (ROLLOUT_IMAGE, "rollout_app.py")):
        host.ssh(key_file, f"podman image exists {tag} || podman import --change "
                           f"'CMD [\"python3\", \"/app/{program}\"]' --change WORKDIR=/app "
                           f"/codeb-cache/{image.name} {tag} >/dev/null")  # fmt: skip


def _boot(index: int, work: Path, rootfs: Path, cache: Path, public_key: str) -> BootedHost:
    directory = work / f"host{index}"
    for sub in ("upper", "work", "merged", "containers", "containerd"):
        (directory / sub).mkdir(parents=True)
    merged = directory / "merged"
    layers = f"lowerdir={rootfs},upperdir={directory / 'upper'},workdir={directory / 'work'}"
    _run("mount", "-t", "overlay", "overlay", "-o", layers, str(merged))
    (merged / "root/.ssh/authorized_keys").write_text(public_key + "\n")
    (merged / "etc/hostname").write_text(f"testhost{index}\n")
    netns, link = f"{PREFIX}{index}", f"{PREFIX}{index}"
    _run("ip", "netns", "add", netns)
    _run("ip", "link", "add", link, "type", "veth", "peer", "name", "host0", "netns", netns)
    _run("ip", "addr", "add", f"10.213.{index}.1/24", "dev", link)
    _run("ip", "link", "set", link, "up")
    for command in (["addr", "add", f"10.213.{index}.2/24", "dev", "host0"], ["link", "set", "host0", "up"],
                    ["link", "set", "lo", "up"], ["route", "add", "default", "via", f"10.213.{index}.1"]):  # fmt: skip
        _run("ip", "-n", netns, *command)
    env = {**os.environ, "SYSTEMD_NSPAWN_UNIFIED_HIERARCHY": "1", "SYSTEMD_NSPAWN_API_VFS_WRITABLE": "network"}
    args = ["systemd-nspawn", "-b", "-D", str(merged), f"--machine={netns}", "--capability=all",
            "--system-call-filter=bpf @keyring", "--register=no", "--keep-unit",
            f"--network-namespace-path=/run/netns/{netns}",
            # Image stores on the machine's own filesystem: overlay mounts cannot stack on the overlay root.
            f"--bind={directory / 'containers'}:/var/lib/containers",
            f"--bind={directory / 'containerd'}:/var/lib/containerd", f"--bind-ro={cache}:/codeb-cache"]  # fmt: skip
    log = (directory / "console.log").open("wb")
    process = subprocess.Popen(args, env=env, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                               start_new_session=True)  # fmt: skip
    return BootedHost(index, directory, process)


@contextlib.contextmanager
def _machine_lock() -> Iterator[None]:
    """The hosts' names, links and address are one set per machine: a second test run (CI beside a
    developer's) waits for the first to be done with them instead of tearing them down under it."""
    path = Path("/run/lock" if Path("/run/lock").is_dir() else tempfile.gettempdir()) / "codeb-testhosts.lock"
    with path.open("a") as lock:
        deadline = time.monotonic() + LOCK_WAIT_SECONDS
        while True:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"another test run has held the test hosts ({path}) for "
                                       f"{LOCK_WAIT_SECONDS} s; they are one set per machine") from None  # fmt: skip
                time.sleep(1)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _wait_ssh(host: BootedHost) -> None:
    deadline = time.monotonic() + BOOT_SECONDS
    while time.monotonic() < deadline:
        if host.process.poll() is not None:
            raise RuntimeError(f"host {host.address} exited while booting: {_console(host)}")
        with socket.socket() as sock:
            sock.settimeout(1)
            if sock.connect_ex((host.address, 22)) == 0 and b"SSH-" in _banner(sock):
                return
        time.sleep(0.3)
    raise RuntimeError(f"host {host.address}: sshd did not answer within {BOOT_SECONDS:.0f}s: {_console(host)}")


def _banner(sock: socket.socket) -> bytes:
    try:
        return sock.recv(64)
    except OSError:
        return b""


def _console(host: BootedHost) -> str:
    return (host.directory / "console.log").read_text(errors="replace")[-1500:]


def _shutdown(host: BootedHost) -> None:
    # SIGTERM asks nspawn to power the machine off; stop_process escalates if it hangs.
    stop_process(host.process, grace=20.0)
    with contextlib.suppress(subprocess.CalledProcessError):
        _run("umount", "-l", str(host.directory / "merged"))


def _clean_leftovers() -> None:
    """Namespaces and links of a run that died before tearing down (same names, so they would collide)."""
    names = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout.split()
    for name in names:
        if name.startswith(PREFIX):
            subprocess.run(["ip", "netns", "delete", name], capture_output=True)
    links = subprocess.run(["ip", "-o", "link", "show"], capture_output=True, text=True).stdout
    for line in links.splitlines():
        name = line.split(":")[1].strip().split("@")[0]
        if name.startswith(PREFIX):
            subprocess.run(["ip", "link", "delete", name], capture_output=True)


def _run(*args: str) -> None:
    subprocess.run(list(args), check=True, capture_output=True)
