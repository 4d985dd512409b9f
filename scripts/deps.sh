#!/bin/sh
# deps.sh - installs the Debian packages keel needs to build and test; does nothing when all are present.
set -eu
PKGS="build-essential cmake ninja-build pkg-config clang libclang-rt-14-dev libyaml-dev libcmocka-dev python3 curl zlib1g-dev librdkafka-dev libnghttp2-dev libssl-dev libseccomp-dev kcat prometheus python3-protobuf python3-yaml python3-grpcio libhiredis-dev redis-server nginx openssl yamllint binutils clang-tidy cppcheck"
missing=""
for p in $PKGS; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing="$missing $p"
done
[ -z "$missing" ] && exit 0
echo "deps: installing$missing"
SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO=sudo
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
# shellcheck disable=SC2086
$SUDO apt-get install -y -qq --no-install-recommends $missing
