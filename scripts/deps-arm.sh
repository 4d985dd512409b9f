#!/bin/sh
# deps-arm.sh - installs Debian's aarch64 cross toolchain, qemu-user and the arm64 -dev packages keel builds against; does nothing when all are present.
set -eu
# Native tools: the cross compiler and the emulator that runs the aarch64 tests.
NATIVE="crossbuild-essential-arm64 qemu-user cmake ninja-build pkg-config python3 file"
# Multiarch libraries (headers + .so + .pc under /usr/lib/aarch64-linux-gnu); libc6-dev:arm64 brings
# the loader and libc that qemu runs the tests with (-L /). librdkafka, OpenSSL, hiredis and
# libseccomp are dlopen()ed at run time, but their headers (and the unit tests' librdkafka) are
# needed to build.
ARM64="libc6-dev:arm64 libyaml-dev:arm64 zlib1g-dev:arm64 libnghttp2-dev:arm64 libcmocka-dev:arm64 librdkafka-dev:arm64 libssl-dev:arm64 libhiredis-dev:arm64 libseccomp-dev:arm64"
if ! dpkg --print-foreign-architectures | grep -qx arm64; then
  echo "deps-arm: dpkg --add-architecture arm64"
  if [ "$(id -u)" -eq 0 ]; then dpkg --add-architecture arm64; else sudo dpkg --add-architecture arm64; fi
fi
# shellcheck disable=SC2086
exec "$(dirname "$0")/deps.sh" $NATIVE $ARM64
