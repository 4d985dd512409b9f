#!/bin/sh
# build-image.sh - builds keel:0.1.0 from deploy/Dockerfile with Debian's buildah where no image
# registry is reachable: the debian:12-slim base of the build stage is made with debootstrap
# (from Debian's package mirror) and kept as localhost/debian:12-slim. Needs root, buildah and
# debootstrap (apt-get install buildah debootstrap). Where Docker Hub is reachable, use
# `docker build -f deploy/Dockerfile -t keel:0.1.0 .` instead.
set -eu
export STORAGE_DRIVER="${STORAGE_DRIVER:-vfs}" # works inside containers and sandboxes too
cd "$(dirname "$0")/.."
if ! buildah inspect --type image localhost/debian:12-slim >/dev/null 2>&1; then
  tmp=$(mktemp -d)
  # shellcheck disable=SC2086 # DEBIAN_MIRROR is optional: debootstrap's default otherwise
  debootstrap --variant=minbase bookworm "$tmp" ${DEBIAN_MIRROR:-}
  c=$(buildah from scratch)
  buildah copy "$c" "$tmp" / >/dev/null
  buildah commit -q "$c" localhost/debian:12-slim
  buildah rm "$c" >/dev/null
  rm -rf "$tmp"
fi
buildah bud --layers --isolation chroot --pull-never -f deploy/Dockerfile -t keel:0.1.0 .
buildah images keel:0.1.0
