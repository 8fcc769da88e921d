#!/usr/bin/env bash
# Builds the MinIO server from the Go module proxy once and caches it (driver tests use it).
set -euo pipefail
version="${MINIO_VERSION:-v0.0.0-20260212201848-7aac2a2c5b7c}"
cache="${CODEB_CACHE:-$HOME/.cache/codeb}"
out="$cache/bin/minio-$version"
if [[ ! -x "$out" ]]; then
  gobin="$cache/build/minio-$version"
  mkdir -p "$gobin" "$cache/bin"
  GOBIN="$gobin" GOFLAGS=-buildvcs=false CGO_ENABLED=0 go install "github.com/minio/minio@$version"
  mv "$gobin/minio" "$out"
fi
echo "$out"
