"""A real node for the local cluster: kubelet with Debian's containerd, runc and CNI plugins.

The node is a booted test host (``tests.testhosts``) of its own rootfs, ``node-v*`` from
``deploy/testhost/build-rootfs.sh``: the way kind runs a node, as a container. What a node in a
container needs that a machine would not is set, and said why, in ``deploy/testhost/configure-node.sh``.
The kubelet and kube-proxy are built from the same ``k8s.io/kubernetes`` module as the API server;
the cluster the node joins runs the real kube-controller-manager and kube-scheduler, listening where
the node reaches it.

Images come from the same Debian-rootfs builds as the quadlet hosts' (``localhost/codeb-hello:1``,
``localhost/codeb-rollout:1``), imported into containerd at boot: no registry. This machine reaches
the node's Pods, and its Services' cluster addresses (kube-proxy's rules on the node), through
routes to the node, as a load balancer in a flat network would.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from controller.local.cluster import SERVICE_NETWORK, LocalCluster, ensure_kube_binary, openssl
from tests.conftest import start_cluster
from tests.testhosts import SERVICES_ADDRESS, BootedHost, booted, image_tar, newest

READY_SECONDS = 120.0


@dataclass
class Node:
    name: str
    host: BootedHost
    key_file: Path  # its root's SSH key
    cache: Path  # what build-rootfs.sh made (the node sees it at /codeb-cache)

    @property
    def pod_network(self) -> str:
        return f"10.244.{self.host.index}.0/24"

    def ssh(self, command: str, check: bool = True, timeout: float = 120) -> str:
        return self.host.ssh(self.key_file, command, check=check, timeout=timeout)


@contextlib.contextmanager
def node_cluster(root: Path) -> Iterator[tuple[LocalCluster, Node]]:
    """The local cluster, with its controllers and scheduler, and one real node, Ready; all gone afterwards."""
    with booted(1, kind="node") as hosts:
        cluster = start_cluster(root, controllers=True, scheduler=True, address=SERVICES_ADDRESS)
        try:
            yield cluster, join(cluster, hosts.hosts[0], hosts.key_file, hosts.cache)
        finally:
            cluster.stop()


def join(cluster: LocalCluster, host: BootedHost, key_file: Path, cache: Path) -> Node:
    node = Node(f"node{host.index}", host, key_file, cache)
    merged = host.directory / "merged"
    _credentials(cluster, node, merged / "etc/kubernetes")
    (merged / "etc/cni/net.d/10-codeb.conflist").write_text(_pod_network(node))
    for binary in ("kubelet", "kube-proxy"):
        shutil.copy(ensure_kube_binary(binary), merged / "usr/local/bin" / binary)
    # RBAC alone authorizes here (no Node authorizer): the node's group gets the roles made for a
    # kubelet and for kube-proxy (which uses the same certificate).
    for role in ("system:node", "system:node-proxier"):
        cluster.kubectl("create", "clusterrolebinding", f"codeb-test-{role.replace(':', '-')}",
                        f"--clusterrole={role}", "--group=system:nodes")  # fmt: skip
    images = images_directory(cache)
    node.ssh(f"ctr -n k8s.io images import /codeb-cache/{images}/pause.tar >/dev/null && "
             f"ctr -n k8s.io images import /codeb-cache/{images}/apps.tar >/dev/null && "
             "systemctl start kubelet kube-proxy")  # fmt: skip
    for network in (node.pod_network, SERVICE_NETWORK):
        subprocess.run(["ip", "route", "replace", network, "via", host.address], check=True)
    _wait_ready(cluster, node)
    return node


def _credentials(cluster: LocalCluster, node: Node, etc: Path) -> None:
    """A client certificate for ``system:node:<name>`` from the cluster's CA, and its kubeconfig."""
    pki = cluster.root / "pki"
    shutil.copy(pki / "ca.crt", etc / "ca.crt")
    (etc / "client.ext").write_text("extendedKeyUsage=clientAuth\n")
    openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", f"/O=system:nodes/CN=system:node:{node.name}",
            "-keyout", "kubelet.key", "-out", "kubelet.csr", cwd=etc)  # fmt: skip
    openssl("x509", "-req", "-in", "kubelet.csr", "-CA", str(pki / "ca.crt"), "-CAkey", str(pki / "ca.key"),
            "-CAcreateserial", "-CAserial", "kubelet.srl", "-days", "2", "-extfile", "client.ext",
            "-out", "kubelet.crt", cwd=etc)  # fmt: skip
    (etc / "kubelet.kubeconfig").write_text(f"""apiVersion: v1
kind: Config
clusters:
- name: local
  cluster: {{server: "https://{SERVICES_ADDRESS}:{cluster.api_port}", certificate-authority: /etc/kubernetes/ca.crt}}
users:
- name: kubelet
  user: {{client-certificate: /etc/kubernetes/kubelet.crt, client-key: /etc/kubernetes/kubelet.key}}
contexts:
- name: local
  context: {{cluster: local, user: kubelet}}
current-context: local
""")
    (etc / "node.env").write_text(f"NODE_NAME={node.name}\nNODE_IP={node.host.address}\n")


def _pod_network(node: Node) -> str:
    """The bridge plugin with this node's own Pod range; masquerading takes Pods to this machine's services."""
    ipam = {"type": "host-local", "ranges": [[{"subnet": node.pod_network}]], "routes": [{"dst": "0.0.0.0/0"}]}
    bridge = {"type": "bridge", "bridge": "cni0", "isGateway": True, "ipMasq": True, "ipam": ipam}
    ports = {"type": "portmap", "capabilities": {"portMappings": True}}
    return json.dumps({"cniVersion": "0.4.0", "name": "codeb", "plugins": [bridge, ports]})


def images_directory(cache: Path) -> str:
    """``node-images-v<node version>-<the applications' image hash>``, as build-rootfs.sh names it."""
    version = newest(cache, "node").name.removeprefix("node-v")
    return f"node-images-v{version}-{image_tar(cache).stem.removeprefix('hello-image-')}"


def _wait_ready(cluster: LocalCluster, node: Node) -> None:
    query = '{.status.conditions[?(@.type=="Ready")].status}'
    deadline = time.monotonic() + READY_SECONDS
    while time.monotonic() < deadline:
        if cluster.kubectl("get", "node", node.name, "-o", f"jsonpath={query}", check=False).stdout == "True":
            return
        time.sleep(1)
    journal = node.ssh("journalctl -u kubelet -u containerd -u kube-proxy --no-pager | tail -n 30", check=False)
    raise RuntimeError(f"node {node.name} not Ready within {READY_SECONDS:.0f} s; kubelet says:\n{journal}")
