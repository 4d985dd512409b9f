#!/bin/sh
# deps-arm.sh - installs Debian's aarch64 cross toolchain, qemu-user and the arm64 -dev packages keel builds against; does nothing when all are present.
set -eu
# Native tools: the cross compiler and the emulator that runs the aarch64 tests.
NATIVE="crossbuild-essential-arm64 qemu-user cmake ninja-build pkg-config python3 file"
# Multiarch libraries (headers + .so + .pc under /usr/lib/aarch64-linux-gnu). librdkafka, OpenSSL and
# hiredis are dlopen()ed at run time but their headers (and the unit tests' librdkafka) are needed to build.
ARM64="libc6-dev:arm64 libyaml-dev:arm64 zlib1g-dev:arm64 libnghttp2-dev:arm64 libcmocka-dev:arm64 librdkafka-dev:arm64 libssl-dev:arm64 libhiredis-dev:arm64 libseccomp-dev:arm64"
missing=""
for p in $NATIVE $ARM64; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing="$missing $p"
done
[ -z "$missing" ] && exit 0
echo "deps-arm: installing$missing"
SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO=sudo
export DEBIAN_FRONTEND=noninteractive
if ! dpkg --print-foreign-architectures | grep -qx arm64; then
  $SUDO dpkg --add-architecture arm64
fi
$SUDO apt-get -o DPkg::Lock::Timeout=600 update -qq
# --no-remove: a multiarch version skew must fail loudly, never remove native packages.
# shellcheck disable=SC2086
$SUDO apt-get -o DPkg::Lock::Timeout=600 install -y -qq --no-install-recommends --no-remove $missing
