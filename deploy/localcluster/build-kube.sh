#!/usr/bin/env bash
# Builds a Kubernetes component (kube-apiserver by default, kube-controller-manager, or, for the
# test node, kube-scheduler, kubelet and kube-proxy) from the Go module proxy and caches the binary:
# build-kube.sh [COMPONENT].
#
# k8s.io/kubernetes is not meant to be consumed as a module: its go.mod points the
# k8s.io/* staging modules at ./staging/..., which does not exist in the module zip.
# We therefore generate a throwaway main module that requires k8s.io/kubernetes and
# pins every staging module to the matching published v0.x tag.
set -euo pipefail

component="${1:-kube-apiserver}"
case "$component" in
  kube-apiserver|kube-controller-manager|kube-scheduler|kubelet|kube-proxy) ;;
  *) echo "build-kube.sh: unknown component $component" >&2; exit 2 ;;
esac
version="${KUBE_VERSION:-v1.36.3}"
cache="${CODEB_CACHE:-$HOME/.cache/codeb}"
out="$cache/bin/$component-$version"

if [[ -x "$out" ]]; then
  echo "$out"
  exit 0
fi

staging_version="v0.${version#v1.}"
# One build module for every component: the dependency graph is resolved once.
workdir="$cache/build/kube-$version"
mkdir -p "$workdir" "$cache/bin"
cd "$workdir"

kube_mod="$(go mod download -json "k8s.io/kubernetes@$version" | python3 -c 'import json,sys; print(json.load(sys.stdin)["GoMod"])')"
go_directive="$(awk '/^go /{print $2; exit}' "$kube_mod")"

{
  echo "module codeb.dev/localcluster/kube"
  echo
  echo "go $go_directive"
  echo
  echo "require k8s.io/kubernetes $version"
  echo
  echo "replace ("
  awk -v v="$staging_version" '$2 == "=>" && $3 ~ /^\.\/staging\// {printf "\t%s => %s %s\n", $1, $1, v}' "$kube_mod"
  echo ")"
} > go.mod

cat > tools.go <<'GO'
//go:build tools

package tools

import (
	_ "k8s.io/kubernetes/cmd/kube-apiserver"
	_ "k8s.io/kubernetes/cmd/kube-controller-manager"
	_ "k8s.io/kubernetes/cmd/kube-scheduler"
	_ "k8s.io/kubernetes/cmd/kubelet"
	_ "k8s.io/kubernetes/cmd/kube-proxy"
)
GO

# Resolve the full dependency graph against the pinned versions.
go mod tidy -e >/dev/null 2>&1 || true
go get "k8s.io/kubernetes/cmd/$component@$version"

ldflags="-s -w"
ldflags+=" -X k8s.io/component-base/version.gitVersion=$version"
ldflags+=" -X k8s.io/component-base/version.gitMajor=1"
ldflags+=" -X k8s.io/component-base/version.gitMinor=$(echo "$version" | cut -d. -f2)"
ldflags+=" -X k8s.io/component-base/version.gitTreeState=clean"

CGO_ENABLED=0 go build -trimpath -ldflags "$ldflags" -o "$out.tmp" "k8s.io/kubernetes/cmd/$component"
mv "$out.tmp" "$out"
echo "$out"
