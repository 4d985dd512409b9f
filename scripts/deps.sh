#!/bin/sh
# deps.sh - installs the Debian packages keel needs to build and test (or those named); does nothing when all are present.
set -eu
PKGS="build-essential cmake ninja-build pkg-config clang libclang-rt-14-dev libyaml-dev libcmocka-dev python3 curl zlib1g-dev librdkafka-dev libnghttp2-dev libssl-dev libseccomp-dev kcat prometheus python3-protobuf python3-yaml python3-grpcio libhiredis-dev redis-server nginx openssl yamllint binutils clang-tidy cppcheck"
missing=""
[ $# -eq 0 ] || PKGS="$*" # another list: scripts/deps-arm.sh
for p in $PKGS; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing="$missing $p"
done
[ -z "$missing" ] && exit 0
echo "deps: installing$missing"
SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO=sudo
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get -o DPkg::Lock::Timeout=600 update -qq
# --no-remove: a version skew (e.g. between amd64 and arm64 multiarch packages) fails, never removes.
# shellcheck disable=SC2086
$SUDO apt-get -o DPkg::Lock::Timeout=600 install -y -qq --no-install-recommends --no-remove $missing
