#!/bin/sh
# hardening.sh - checks an ELF binary for PIE, full RELRO, a non-executable stack, stack canaries and FORTIFY.
# usage: scripts/hardening.sh BINARY...   (readelf from binutils; exit 1 naming what is missing)
set -eu
[ $# -ge 1 ] || { echo "usage: $0 BINARY..." >&2; exit 2; }
command -v readelf > /dev/null || { echo "hardening: readelf not found (apt-get install binutils)" >&2; exit 2; }
status=0
for bin in "$@"; do
  [ -f "$bin" ] || { echo "hardening: $bin: no such file" >&2; status=1; continue; }
  missing=""
  hdr=$(readelf -hW "$bin")
  segs=$(readelf -lW "$bin")
  dyn=$(readelf -dW "$bin")
  syms=$(readelf --dyn-syms -W "$bin")
  # PIE: a shared-object ELF type with DF_1_PIE (a plain .so would be DYN too).
  echo "$hdr" | grep -qE 'Type:[[:space:]]+DYN' || missing="$missing PIE(ELF-type-not-DYN)"
  echo "$dyn" | grep -E '\(FLAGS_1\)' | grep -qw PIE || missing="$missing PIE(no-DF_1_PIE-flag)"
  # Full RELRO: the GNU_RELRO segment plus BIND_NOW (DT_FLAGS BIND_NOW or DF_1_NOW).
  echo "$segs" | grep -qw GNU_RELRO || missing="$missing RELRO(no-PT_GNU_RELRO)"
  echo "$dyn" | grep -qE 'BIND_NOW|\(FLAGS_1\).*[[:space:]]NOW' || missing="$missing BIND_NOW(partial-RELRO)"
  # NX: a PT_GNU_STACK segment whose flags are RW, never RWE (no segment means an executable stack).
  stack=$(echo "$segs" | awk '$1 == "GNU_STACK" { print $7 }')
  if [ -z "$stack" ]; then
    missing="$missing NX(no-PT_GNU_STACK)"
  elif echo "$stack" | grep -q E; then
    missing="$missing NX(executable-stack:$stack)"
  fi
  # Canaries (-fstack-protector-strong) and FORTIFY (the *_chk variants of libc calls).
  echo "$syms" | grep -qw '__stack_chk_fail' || missing="$missing canary(no-__stack_chk_fail)"
  fortified=$(echo "$syms" | awk '$8 ~ /^__[a-z0-9_]+_chk(@|$)/ && $8 !~ /^__stack_chk/ { sub(/@.*/, "", $8); print $8 }' | sort -u)
  [ -n "$fortified" ] || missing="$missing FORTIFY(no-*_chk-symbol)"
  if [ -n "$missing" ]; then
    echo "hardening: $bin: FAIL, missing:$missing" >&2
    status=1
  else
    n=$(echo "$fortified" | wc -l)
    cet=$(readelf -nW "$bin" | sed -n 's/.*x86 feature: //p' | head -1)
    echo "hardening: $bin: ok (PIE, full RELRO, NX stack, canary, FORTIFY: $n *_chk functions${cet:+, CET: $cet})"
  fi
done
exit $status
