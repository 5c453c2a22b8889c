#!/usr/bin/env bash
# Starts (or stops) a throw-away PostgreSQL cluster on 127.0.0.1:${PORT:-55432} for benchmarks,
# with fsync off so that numbers show lockd's and the protocol's cost rather than the disk's.
#   bench/private-cluster.sh start   # prints the URL to pass to pg_bench --url
#   bench/private-cluster.sh stop
set -euo pipefail
PORT="${PORT:-55432}"
DIR="${DIR:-/tmp/lockd-bench-cluster}"
BIN="$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -n1)"
as_pg() { if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi; }
case "${1:-start}" in
start)
    rm -rf "$DIR"; mkdir -p "$DIR"
    [ "$(id -u)" = 0 ] && chown postgres:postgres "$DIR"
    as_pg "$BIN/initdb" -D "$DIR/data" -A trust -U postgres --no-sync >/dev/null
    cat >>"$DIR/data/postgresql.conf" <<CONF
listen_addresses = '127.0.0.1'
port = $PORT
unix_socket_directories = '$DIR'
fsync = off
max_connections = 100
CONF
    as_pg "$BIN/pg_ctl" -D "$DIR/data" -l "$DIR/log" -w start >/dev/null
    echo "postgres://postgres@127.0.0.1:$PORT/postgres"
    ;;
stop)
    as_pg "$BIN/pg_ctl" -D "$DIR/data" -m fast stop >/dev/null || true
    rm -rf "$DIR"
    ;;
*) echo "usage: $0 start|stop" >&2; exit 2 ;;
esac
