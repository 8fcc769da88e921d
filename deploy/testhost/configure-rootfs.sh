#!/usr/bin/env bash
# Configures a debootstrapped rootfs as a quadlet test host: configure-rootfs.sh ROOTFS QUADLET_BINARY.
# Everything here is what a Debian host of a Project needs, plus the findings of running
# podman under systemd-nspawn (no kernel keyring, no pids cgroup limit, runc).
set -euo pipefail
root="$1"
quadlet="$2"

# Quadlet as the system generator: systemd turns /etc/containers/systemd/*.container into services.
install -D -m 0755 "$quadlet" "$root/usr/libexec/podman/quadlet"
mkdir -p "$root/usr/lib/systemd/system-generators"
ln -sf /usr/libexec/podman/quadlet "$root/usr/lib/systemd/system-generators/podman-system-generator"
mkdir -p "$root/etc/containers/systemd"

cat >"$root/etc/containers/containers.conf" <<'CONF'
[containers]
keyring = false
pids_limit = 0

[engine]
runtime = "runc"
cgroup_manager = "systemd"
events_logger = "file"
CONF

cat >"$root/etc/containers/storage.conf" <<'CONF'
[storage]
driver = "overlay"
runroot = "/run/containers/storage"
graphroot = "/var/lib/containers/storage"
CONF

# sshd: keys only, root allowed (the operator's SSH user on a fresh host), no DNS lookups.
cat >"$root/etc/ssh/sshd_config.d/codeb.conf" <<'CONF'
PermitRootLogin prohibit-password
PasswordAuthentication no
KbdInteractiveAuthentication no
UseDNS no
MaxStartups 50:30:100
CONF
mkdir -p "$root/root/.ssh" && chmod 700 "$root/root/.ssh"
# Host keys are made per host at first boot (ssh-keygen -A), not baked into the shared rootfs.
rm -f "$root"/etc/ssh/ssh_host_*
mkdir -p "$root/etc/systemd/system/ssh.service.d"
# Debian's unit checks the configuration (sshd -t) first, which fails without keys: keys go first.
cat >"$root/etc/systemd/system/ssh.service.d/hostkeys.conf" <<'CONF'
[Service]
ExecStartPre=
ExecStartPre=/usr/bin/ssh-keygen -A
ExecStartPre=/usr/sbin/sshd -t
CONF

# A quiet, fast boot: no consoles, no timers that compete for two cores.
for unit in getty@tty1.service console-getty.service apt-daily.timer apt-daily-upgrade.timer \
            e2scrub_all.timer fstrim.timer man-db.timer dpkg-db-backup.timer; do
  ln -sf /dev/null "$root/etc/systemd/system/$unit"
done
chroot "$root" systemctl enable ssh.service >/dev/null 2>&1 || true
echo "codeb-testhost" >"$root/etc/hostname"
