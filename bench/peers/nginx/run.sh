#!/bin/sh
# run.sh - renders nginx.conf.in into a scratch prefix and runs Debian's nginx in the foreground (exec).
# Usage: run.sh [PORT [WORKERS [PREFIX]]]   (or env PORT, WORKERS, PREFIX; defaults 8080, 1, a new mktemp -d)
# TEMPLATE=proxy.conf.in UPSTREAM=HOST:PORT run.sh ...   renders the reverse-proxy config instead.
set -eu
here=$(cd "$(dirname "$0")" && pwd)
PORT=${1:-${PORT:-8080}}
WORKERS=${2:-${WORKERS:-1}}
PREFIX=${3:-${PREFIX:-}}
[ -n "$PREFIX" ] || PREFIX=$(mktemp -d /tmp/keel-bench-nginx.XXXXXX)
mkdir -p "$PREFIX"
PREFIX=$(cd "$PREFIX" && pwd)
case $PORT in ''|*[!0-9]*) echo "run.sh: bad port '$PORT'" >&2; exit 2 ;; esac
case $WORKERS in auto) ;; ''|*[!0-9]*) echo "run.sh: bad WORKERS '$WORKERS'" >&2; exit 2 ;; esac
NGINX=${NGINX:-$(command -v nginx || echo /usr/sbin/nginx)}
sed -e "s|@PORT@|$PORT|g" -e "s|@WORKERS@|$WORKERS|g" -e "s|@PREFIX@|$PREFIX|g" \
  -e "s|@UPSTREAM@|${UPSTREAM:-127.0.0.1:1}|g" "$here/${TEMPLATE:-nginx.conf.in}" > "$PREFIX/nginx.conf"
# Workers (user nobody when started as root) never need these: bodies are discarded, not buffered.
mkdir -p "$PREFIX/client_body" "$PREFIX/proxy" "$PREFIX/fastcgi" "$PREFIX/uwsgi" "$PREFIX/scgi"
"$NGINX" -t -q -p "$PREFIX" -c "$PREFIX/nginx.conf" -e "$PREFIX/error.log" -g "daemon off;"
exec "$NGINX" -p "$PREFIX" -c "$PREFIX/nginx.conf" -e "$PREFIX/error.log" -g "daemon off;"
