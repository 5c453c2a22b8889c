#!/usr/bin/env bash
# Acquire+release pairs/s through backend-redis next to redis-benchmark on the same scripts
# (EVALSHA) and on plain SET NX PX + DEL, at the same concurrencies, against one private
# redis-server on a free loopback port (killed by its PID at the end).
#
#   backend-redis/bench/compare.sh [SECONDS_PER_BACKEND_RUN] [CONCURRENCIES]
#
# redis-benchmark runs one command per test, so its "pairs/s" is 1 / (1/acquire + 1/release).
# Its release calls use random keys and mostly take the script's cheaper not-held path, which
# flatters redis-benchmark; the backend always takes the full release path (HMGET, DEL, PUBLISH).
set -euo pipefail
cd "$(dirname "$0")/../.."

SECONDS_PER_RUN="${1:-5}"
CONCURRENCIES="${2:-1,50}"
TARGET="${CARGO_TARGET_DIR:-target}"

cargo build -q --release -p backend-redis --example bench
BENCH="$TARGET/release/examples/bench"

PORT="$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
redis-server --port "$PORT" --bind 127.0.0.1 --save "" --appendonly no >/dev/null 2>&1 &
REDIS_PID=$!
trap 'kill "$REDIS_PID" 2>/dev/null || true' EXIT
for _ in $(seq 1 50); do redis-cli -p "$PORT" ping >/dev/null 2>&1 && break; sleep 0.1; done

SCRIPTS="$(mktemp -d)"
"$BENCH" --print-scripts "$SCRIPTS"
ACQ="$(redis-cli -p "$PORT" SCRIPT LOAD "$(cat "$SCRIPTS/acquire.lua")")"
REL="$(redis-cli -p "$PORT" SCRIPT LOAD "$(cat "$SCRIPTS/release.lua")")"
DIGEST="$(printf '%064d' 7)"

# rps of one redis-benchmark test: rb CONCURRENCY REQUESTS COMMAND...
rb() {
    local c="$1" n="$2"
    shift 2
    redis-benchmark -h 127.0.0.1 -p "$PORT" -c "$c" -n "$n" -r 1000000 --csv "$@" 2>/dev/null |
        awk -F'","' 'NR == 2 { print $2 }'
}
pairs() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.0f", 1 / (1 / a + 1 / b) }'; }

echo "redis-server $(redis-server --version | awk '{print $3}'), $(nproc) cores, load $(cut -d' ' -f1-3 /proc/loadavg)"
echo
echo "| concurrency | backend-redis pairs/s | redis-benchmark EVALSHA pairs/s (acquire, release rps) | ratio | SET NX PX + DEL pairs/s (set, del rps) |"
echo "|---|---|---|---|---|"
IFS=',' read -ra LEVELS <<<"$CONCURRENCIES"
for c in "${LEVELS[@]}"; do
    n=$((c == 1 ? 40000 : 400000))
    backend="$("$BENCH" "redis://127.0.0.1:$PORT" "$SECONDS_PER_RUN" "$c" | sed -n 's/.*pairs_per_sec=\([0-9]*\).*/\1/p')"
    acq="$(rb "$c" "$n" evalsha "$ACQ" 2 'rb:{__rand_int__}:lock' 'rb:{__rand_int__}:fence' owner "$DIGEST" 1 1000 1024)"
    rel="$(rb "$c" "$n" evalsha "$REL" 1 'rb:{__rand_int__}:lock' "$DIGEST" 123 rb:released obj)"
    set_rps="$(rb "$c" "$n" set 'plain:__rand_int__' v NX PX 1)"
    del_rps="$(rb "$c" "$n" del 'plain:__rand_int__')"
    script_pairs="$(pairs "$acq" "$rel")"
    ratio="$(awk -v a="$backend" -v b="$script_pairs" 'BEGIN { printf "%.2f", a / b }')"
    echo "| $c | $backend | $script_pairs ($acq, $rel) | ${ratio}x | $(pairs "$set_rps" "$del_rps") ($set_rps, $del_rps) |"
done
rm -rf "$SCRIPTS"
