#!/usr/bin/env bash
# Configures a copy of the test host rootfs as a Kubernetes node: configure-node.sh ROOTFS.
# containerd, runc and the CNI plugins are Debian's (installed by build-rootfs.sh); kubelet and
# kube-proxy are built like the API server and copied in at boot (tests/testnode.py), with the
# node's certificate.
#
# A node boots the way kind runs one, as a container (systemd-nspawn, like the quadlet test hosts),
# and what differs from a machine is answered here, each where it is set:
#   - kubelet insists on machine-wide kernel settings (kernel.panic, kernel.panic_on_oops,
#     vm.overcommit_memory; setupKernelTunables) and refuses to start where it cannot write them.
#     The node shows it the values it asks for, files bound over those /proc/sys entries, and
#     never changes the machine's.
#   - it reads /dev/kmsg (its OOM watcher), which a container has not: the console instead (kind's answer).
#   - this machine's processes may not lower an OOM score: containerd's restrict_oom_score_adj.
#   - where the machine's cgroup controllers are held by v1 hierarchies (this one's are), the node's
#     unified hierarchy has none: runc, through a wrapper, runs each container without the cpu,
#     memory and pids limits it could not set (kubelet logs, and goes on without, the same for its
#     own slices). The Pods run, are probed and restarted as anywhere; their limits are not enforced.
set -euo pipefail
root="$1"

mkdir -p "$root/etc/containerd" "$root/etc/cni/net.d" "$root/etc/kubernetes" "$root/usr/local/lib/codeb"

cat >"$root/etc/containerd/config.toml" <<'CONF'
version = 2
[plugins."io.containerd.grpc.v1.cri"]
  # No registry: the pause image is imported at boot (tests/testnode.py), made from catatonit -P.
  sandbox_image = "localhost/codeb-pause:1"
  restrict_oom_score_adj = true
  [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
    runtime_type = "io.containerd.runc.v2"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
      SystemdCgroup = true
      BinaryName = "/usr/local/lib/codeb/runc"
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "/etc/cni/net.d"
CONF

cat >"$root/usr/local/lib/codeb/runc" <<'WRAPPER'
#!/bin/sh
# runc without the cgroup limits this node's kernel cannot hold (deploy/testhost/configure-node.sh).
bundle=. create=no prev=
for arg in "$@"; do
  case "$prev" in --bundle | -b) bundle="$arg" ;; esac
  case "$arg" in create | run) create=yes ;; --bundle=*) bundle="${arg#--bundle=}" ;; esac
  prev="$arg"
done
if [ "$create" = yes ] && [ -f "$bundle/config.json" ]; then
  jq 'del(.linux.resources.cpu, .linux.resources.memory, .linux.resources.pids, .linux.resources.hugepageLimits, .linux.resources.unified)' \
    "$bundle/config.json" >"$bundle/config.json.codeb" && mv "$bundle/config.json.codeb" "$bundle/config.json"
fi
exec /usr/sbin/runc "$@"
WRAPPER
chmod 0755 "$root/usr/local/lib/codeb/runc"

cat >"$root/usr/local/lib/codeb/kernel-view" <<'VIEW'
#!/bin/sh
# What kubelet asks of the machine's kernel, shown to it here instead (deploy/testhost/configure-node.sh).
set -e
for pair in kernel/panic=10 kernel/panic_on_oops=1 vm/overcommit_memory=1; do
  key="${pair%%=*}" file="/run/codeb-sysctl-$(echo "${pair%%=*}" | tr / -)"
  echo "${pair#*=}" >"$file"
  mountpoint -q "/proc/sys/$key" || mount --bind "$file" "/proc/sys/$key"
done
[ -e /dev/kmsg ] || ln -s /dev/console /dev/kmsg
VIEW
chmod 0755 "$root/usr/local/lib/codeb/kernel-view"

cat >"$root/etc/kubernetes/kubelet.yaml" <<'CONF'
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
authentication:
  anonymous: {enabled: false}
  webhook: {enabled: false}
  x509: {clientCAFile: /etc/kubernetes/ca.crt}
authorization: {mode: AlwaysAllow}
cgroupDriver: systemd
containerRuntimeEndpoint: unix:///run/containerd/containerd.sock
failSwapOn: false
# cAdvisor cannot size an overlay root inside a container.
localStorageCapacityIsolation: false
resolvConf: /etc/resolv.conf
clusterDomain: cluster.local
CONF

# kube-proxy makes the Services work (iptables, in the node's own network namespace). The conntrack
# table's size is the machine's (not a namespace's) to set: left as it is.
cat >"$root/etc/kubernetes/kube-proxy.yaml" <<'CONF'
apiVersion: kubeproxy.config.k8s.io/v1alpha1
kind: KubeProxyConfiguration
clientConnection: {kubeconfig: /etc/kubernetes/kubelet.kubeconfig}
mode: iptables
clusterCIDR: 10.244.0.0/16
conntrack: {maxPerCore: 0, tcpEstablishedTimeout: 0s, tcpCloseWaitTimeout: 0s}
CONF

cat >"$root/etc/systemd/system/kube-proxy.service" <<'UNIT'
[Unit]
Description=kube-proxy

[Service]
EnvironmentFile=/etc/kubernetes/node.env
ExecStart=/usr/local/bin/kube-proxy --config=/etc/kubernetes/kube-proxy.yaml --hostname-override=${NODE_NAME}
Restart=always
RestartSec=2
UNIT

# Started by the harness once its certificates and node.env (NODE_NAME, NODE_IP) are in place.
cat >"$root/etc/systemd/system/kubelet.service" <<'UNIT'
[Unit]
Description=kubelet
After=containerd.service
Requires=containerd.service

[Service]
EnvironmentFile=/etc/kubernetes/node.env
ExecStartPre=/usr/local/lib/codeb/kernel-view
ExecStart=/usr/local/bin/kubelet --config=/etc/kubernetes/kubelet.yaml --kubeconfig=/etc/kubernetes/kubelet.kubeconfig --hostname-override=${NODE_NAME} --node-ip=${NODE_IP}
Restart=always
RestartSec=2
UNIT
