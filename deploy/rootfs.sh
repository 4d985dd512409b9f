#!/bin/sh
# rootfs.sh - fills DEST with keel's runtime root filesystem: the binary, the shared libraries it
# links and dlopen()s (with their own dependencies), CA certificates, a passwd/group entry for
# keel (65532), /etc/keel/keel.yaml and the data directory /var/lib/keel. The Dockerfile's final
# `FROM scratch` stage is exactly this tree; tests/integration/test_image.py runs keel from it.
#
# usage: deploy/rootfs.sh KEEL_BINARY DEST [CONFIG]    (CONFIG defaults to deploy/keel.yaml)
set -eu

[ $# -ge 2 ] || { echo "usage: $0 KEEL_BINARY DEST [CONFIG]" >&2; exit 2; }
BIN=$1
DEST=$2
HERE=$(cd "$(dirname "$0")" && pwd)
CONFIG=${3:-$HERE/keel.yaml}
UID_KEEL=65532

# Libraries keel loads at run time with dlopen() (src/: grep dlopen): not in `ldd keel`.
# TLS (libssl, libcrypto), the Kafka sink (librdkafka), the gateway's Redis client (hiredis),
# security.seccomp (libseccomp).
DLOPENED="libssl.so.3 libcrypto.so.3 librdkafka.so.1 libhiredis.so.0.14 libseccomp.so.2 libz.so.1 libyaml-0.so.2"

[ -x "$BIN" ] || { echo "rootfs: $BIN is not an executable" >&2; exit 1; }
mkdir -p "$DEST/usr/bin" "$DEST/etc/keel" "$DEST/etc/ssl/certs" "$DEST/var/lib/keel" "$DEST/tmp"

# The binary, without its debug sections (the build keeps them; the image does not need them).
cp "$BIN" "$DEST/usr/bin/keel"
if command -v strip >/dev/null 2>&1; then strip --strip-unneeded "$DEST/usr/bin/keel"; fi

# Copies a library to the same path under DEST (symlinks resolved: one regular file each).
copy_lib() {
  [ -e "$DEST$1" ] && return 0
  mkdir -p "$DEST$(dirname "$1")"
  cp -L "$1" "$DEST$1"
}

# The resolved path of a soname from the loader's cache.
find_lib() {
  ldconfig -p | awk -v n="$1" '$1 == n && $0 ~ /x86-64|AArch64|64bit/ { print $NF; exit }
                                $1 == n { p = $NF } END { if (p) print p }' | head -n 1
}

# Every library `ldd FILE` names, and the loader.
deps_of() {
  ldd "$1" | awk '/=> \// { print $3 } /^[[:space:]]*\/[^ ]*ld-linux/ { print $1 }'
}

for f in $(deps_of "$BIN"); do copy_lib "$f"; done
for so in $DLOPENED; do
  p=$(find_lib "$so")
  [ -n "$p" ] || { echo "rootfs: $so not found (install its Debian package)" >&2; exit 1; }
  copy_lib "$p"
  # dlopen() finds it by soname in the default directories: keep it where ldconfig had it.
  for f in $(deps_of "$p"); do copy_lib "$f"; done
done

# CA certificates (upstream TLS, Kafka over TLS, the trace exporter).
cp -L /etc/ssl/certs/ca-certificates.crt "$DEST/etc/ssl/certs/ca-certificates.crt"

# Users: keel (65532) runs the process; name lookups use files only.
cat >"$DEST/etc/passwd" <<EOF
root:x:0:0:root:/root:/sbin/nologin
nobody:x:65534:65534:nobody:/nonexistent:/sbin/nologin
keel:x:$UID_KEEL:$UID_KEEL:keel:/var/lib/keel:/sbin/nologin
EOF
cat >"$DEST/etc/group" <<EOF
root:x:0:
nogroup:x:65534:
keel:x:$UID_KEEL:
EOF
printf 'passwd: files\ngroup: files\nhosts: files dns\n' >"$DEST/etc/nsswitch.conf"

cp "$CONFIG" "$DEST/etc/keel/keel.yaml"
chmod 0755 "$DEST/var/lib/keel"
chmod 1777 "$DEST/tmp"
# Owned by keel when run as root (the Dockerfile also sets it with COPY --chown).
if [ "$(id -u)" -eq 0 ]; then chown "$UID_KEEL:$UID_KEEL" "$DEST/var/lib/keel"; fi
du -sk "$DEST" | awk '{ printf "rootfs: %s, %.1f MB\n", $2, $1 / 1024 }'
