#!/usr/bin/env bash
# Builds, once, the Debian rootfs the quadlet tests boot as hosts with `systemd-nspawn -b`
# (systemd, podman, runc, openssh-server and the quadlet generator), and the example
# application's image made from Debian packages (no registry), the operator image's Debian base, and
# the test node's rootfs (the same, plus containerd and the CNI plugins; configure-node.sh) with the
# images its containerd imports. Prints the cache directory.
#
# Both come from the mirror apt already uses, so they build wherever `apt-get install` works.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
cache="${CODEB_CACHE:-$HOME/.cache/codeb}/testhost"
version=5  # bump when the packages or the configuration below change
rootfs="$cache/rootfs-v$version"
# The example application and the rollout tests' application, in one image named by their content.
apps=("$here/../hello/app.py" "$here/../../tests/apps/rollout_app.py")
image="$cache/hello-image-$(cat "${apps[@]}" | sha256sum | cut -c1-12).tar"
# The operator image's BASE (deploy/operator/Containerfile) without Docker Hub; bump when its packages change.
operator_base="$cache/operator-base-v1.tar"
# The test node (tests/testnode.py): a rootfs, and its images as archives containerd imports.
node_version=2  # bump when the node's packages or configure-node.sh change
node_rootfs="$cache/node-v$node_version"
node_images="$cache/node-images-v$node_version-$(basename "$image" .tar | cut -d- -f3)"
mkdir -p "$cache"
# One build at a time per cache: a second caller (another test run, CI beside a developer) waits for the first.
exec 9>"$cache/.build.lock"
flock 9

remove_tree() {
  # A debootstrap cut short leaves /proc (and /sys) mounted inside its tree: unmount them, deepest
  # first, or rm fails on every later run.
  local dir="$1" mounts
  [[ -e "$dir" ]] || return 0
  mounts="$(awk -v d="$dir/" 'index($2, d) == 1 {print $2}' /proc/mounts | sort -r)"
  [[ -z "$mounts" ]] || xargs -r umount -l <<<"$mounts"
  rm -rf "$dir"
}

mirror() {
  # The first deb URI of apt's sources (deb822 or one-line format).
  local uri
  uri="$(grep -hE '^(URIs:|deb )' /etc/apt/sources.list.d/*.sources /etc/apt/sources.list 2>/dev/null \
    | grep -v security | head -1 | awk '{print ($1 == "deb") ? $2 : $2}')"
  echo "${uri:-http://deb.debian.org/debian}"
}

suite() { . /etc/os-release && echo "${VERSION_CODENAME:-bookworm}"; }

need() {
  local missing=()
  for tool in debootstrap systemd-nspawn; do command -v "$tool" >/dev/null || missing+=("$tool"); done
  if ((${#missing[@]})); then
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq debootstrap systemd-container >/dev/null
  fi
}

build_rootfs() {
  [[ -f "$rootfs/.codeb-ready" ]] && return
  local tmp="$rootfs.tmp"
  remove_tree "$tmp"
  debootstrap --variant=minbase \
    --include=systemd,systemd-sysv,dbus,openssh-server,podman,runc,conmon,netavark,aardvark-dns,iptables,iproute2,catatonit,curl,ca-certificates,git \
    "$(suite)" "$tmp" "$(mirror)" >"$cache/debootstrap-rootfs.log" 2>&1
  bash "$here/configure-rootfs.sh" "$tmp" "$(go_quadlet)"
  touch "$tmp/.codeb-ready"
  rm -rf "$rootfs" && mv "$tmp" "$rootfs"
}

go_quadlet() {
  # Debian's podman 4.3 has no quadlet generator: build cmd/quadlet from podman v5.
  local out="$cache/quadlet-v5.4.2"
  if [[ ! -x "$out" ]]; then
    local work="$cache/build-quadlet"
    mkdir -p "$work" && cd "$work"
    [[ -f go.mod ]] || go mod init codeb.dev/testhost/quadlet >/dev/null 2>&1
    GOFLAGS=-mod=mod go get github.com/containers/podman/v5@v5.4.2 >/dev/null 2>&1
    CGO_ENABLED=0 GOFLAGS=-mod=mod go build -tags "remote exclude_graphdriver_btrfs containers_image_openpgp" \
      -o "$out" github.com/containers/podman/v5/cmd/quadlet
    cd - >/dev/null
  fi
  echo "$out"
}

build_image() {
  # The applications' image: python3 and the example's client libraries from Debian, deploy/hello/app.py and tests/apps/rollout_app.py.
  [[ -f "$image" ]] && return
  local tmp="$cache/hello-rootfs.tmp"
  remove_tree "$tmp"
  # The example's clients from Debian: psycopg (and its pool), redis-py, boto3.
  debootstrap --variant=minbase \
    --include=python3,python3-psycopg,python3-psycopg-pool,python3-redis,python3-boto3 "$(suite)" "$tmp" "$(mirror)" \
    >"$cache/debootstrap-image.log" 2>&1
  rm -rf "$tmp"/var/cache/apt/archives/*.deb "$tmp"/var/lib/apt/lists/*
  mkdir -p "$tmp/app"
  cp "${apps[@]}" "$tmp/app/"
  tar -C "$tmp" -cf "$image.tmp" . && mv "$image.tmp" "$image"
  remove_tree "$tmp"
}

build_operator_base() {
  # Debian's Python and the tools the operator runs beside its code (ssh, psql and pg_dump).
  [[ -f "$operator_base" ]] && return
  local tmp="$cache/operator-base.tmp"
  remove_tree "$tmp"
  debootstrap --variant=minbase --include=python3,python3-venv,openssh-client,postgresql-client,ca-certificates \
    "$(suite)" "$tmp" "$(mirror)" >"$cache/debootstrap-operator.log" 2>&1
  rm -rf "$tmp"/var/cache/apt/archives/*.deb "$tmp"/var/lib/apt/lists/*
  tar -C "$tmp" -cf "$operator_base.tmp" . && mv "$operator_base.tmp" "$operator_base"
  remove_tree "$tmp"
}

nspawn_run() {
  # One command in a tree, not booted (no network namespace of its own: apt reaches the mirror).
  local tree="$1"; shift
  systemd-nspawn -q -D "$tree" --machine="codeb-build-$$" --register=no --keep-unit --resolv-conf=copy-host "$@"
}

build_node_rootfs() {
  [[ -f "$node_rootfs/.codeb-ready" ]] && return
  local tmp="$node_rootfs.tmp"
  remove_tree "$tmp"
  cp -a "$rootfs" "$tmp"
  rm -f "$tmp/.codeb-ready"
  nspawn_run "$tmp" sh -c 'apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
    --no-install-recommends containerd containernetworking-plugins jq && apt-get clean && rm -rf /var/lib/apt/lists/*' \
    >"$cache/node-packages.log" 2>&1
  bash "$here/configure-node.sh" "$tmp"
  touch "$tmp/.codeb-ready"
  rm -rf "$node_rootfs" && mv "$tmp" "$node_rootfs"
}

build_node_images() {
  # Archives for containerd's import: the pause image (catatonit -P, as podman's own pause) and the
  # applications' image under both its names, each with its command. Made with the node's podman on
  # scratch storage (vfs: no overlay on an overlay), never a registry.
  [[ -f "$node_images/.codeb-ready" ]] && return
  local tmp="$node_images.tmp"
  rm -rf "$tmp" && mkdir -p "$tmp/storage"
  cp "$node_rootfs/usr/bin/catatonit" "$tmp/pause" && tar -C "$tmp" -cf "$tmp/pause-rootfs.tar" pause && rm "$tmp/pause"
  cp "$image" "$tmp/apps-rootfs.tar"
  nspawn_run "$node_rootfs" --bind="$tmp:/images" sh -ec '
    p="podman --root /images/storage --runroot /run/codeb-images --storage-driver vfs"
    $p import --change "ENTRYPOINT [\"/pause\", \"-P\"]" /images/pause-rootfs.tar localhost/codeb-pause:1 >/dev/null
    $p save -o /images/pause.tar localhost/codeb-pause:1
    $p import --change "CMD [\"python3\", \"/app/app.py\"]" --change WORKDIR=/app /images/apps-rootfs.tar localhost/codeb-hello:1 >/dev/null
    $p import --change "CMD [\"python3\", \"/app/rollout_app.py\"]" --change WORKDIR=/app /images/apps-rootfs.tar localhost/codeb-rollout:1 >/dev/null
    $p save -m -o /images/apps.tar localhost/codeb-hello:1 localhost/codeb-rollout:1' >"$cache/node-images.log" 2>&1
  rm -rf "$tmp/storage" "$tmp/pause-rootfs.tar" "$tmp/apps-rootfs.tar"
  touch "$tmp/.codeb-ready"
  rm -rf "$node_images" && mv "$tmp" "$node_images"
}

need
build_rootfs
build_image
build_operator_base
build_node_rootfs
build_node_images
echo "$cache"
