#!/usr/bin/env bash
# Acquire+release pairs/s through backend-redis next to redis-benchmark on the same scripts
# (EVALSHA) and on plain SET NX PX + DEL, at the same concurrencies, against one private
# redis-server on a free loopback port (killed by its PID at the end).
#
#   backend-redis/bench/compare.sh [SECONDS_PER_BACKEND_RUN=3] [CONCURRENCIES=1,50] [ROUNDS=5]
#
# Each round runs every measurement once, back to back; the table shows the median of the
# rounds, so a burst of load from elsewhere on the machine skews one round, not the result.
# The ratios are the median of each round's own ratio (backend / redis-benchmark measured
# minutes apart would compare two different machines), with the lowest and highest round.
# redis-benchmark runs one command per test, so its "pairs/s" is 1 / (1/acquire + 1/release).
# Its release calls use random keys, so before each release test every one of those keys is
# filled with a held lock whose digest and fence match: the releases then take the script's
# full path (HGETALL, HDEL, EXISTS), as the backend's always do, not the cheaper not-held path.
# The object `obj` has no ancestors (no ancestor keys) and is an object-scope claim.
set -euo pipefail
cd "$(dirname "$0")/../.."

SECONDS_PER_RUN="${1:-3}"
CONCURRENCIES="${2:-1,50}"
ROUNDS="${3:-5}"
TARGET="${CARGO_TARGET_DIR:-target}"

cargo build -q --release -p backend-redis --example bench
BENCH="$TARGET/release/examples/bench"

PORT="$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
redis-server --port "$PORT" --bind 127.0.0.1 --save "" --appendonly no >/dev/null 2>&1 &
REDIS_PID=$!
SCRIPTS="$(mktemp -d)"
trap 'kill "$REDIS_PID" 2>/dev/null || true; rm -rf "$SCRIPTS"' EXIT
for _ in $(seq 1 50); do redis-cli -p "$PORT" ping >/dev/null 2>&1 && break; sleep 0.1; done

"$BENCH" --print-scripts "$SCRIPTS"
ACQ="$(redis-cli -p "$PORT" SCRIPT LOAD "$(cat "$SCRIPTS/acquire.lua")")"
REL="$(redis-cli -p "$PORT" SCRIPT LOAD "$(cat "$SCRIPTS/release.lua")")"
DIGEST="$(printf '%064d' 7)"
KEYSPACE=1000000
# Held locks on every key redis-benchmark's release test can pick (__rand_int__ is 12 digits).
hold_all() {
    redis-cli -p "$PORT" EVAL "for i = 0, $((KEYSPACE - 1)) do redis.call('HSET', string.format('rb:{%012d}:holders', i), ARGV[1], 'x o 123 99999999999999 0 0 0 o') end return 1" 0 "$DIGEST" >/dev/null
}

# rps of one redis-benchmark test: rb CONCURRENCY REQUESTS COMMAND...
rb() {
    local c="$1" n="$2"
    shift 2
    redis-benchmark -h 127.0.0.1 -p "$PORT" -c "$c" -n "$n" -r "$KEYSPACE" --csv "$@" 2>/dev/null |
        awk -F'","' 'NR == 2 { printf "%.0f\n", $2 }'
}
# pairs/s of one backend run: backend CONCURRENCY RUNTIME DEDICATED_CONNECTIONS
backend() { "$BENCH" "redis://127.0.0.1:$PORT" "$SECONDS_PER_RUN" "$1" "$2" "$3" | sed -n 's/.*pairs_per_sec=\([0-9]*\).*/\1/p'; }
pairs() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.0f", 1 / (1 / a + 1 / b) }'; }
median() { printf '%s\n' "$@" | sort -n | awk '{ v[NR] = $1 } END { print v[int((NR + 1) / 2)] }'; }
spread() { printf '%s\n' "$@" | sort -n | awk '{ v[NR] = $1 } END { print v[1] "-" v[NR] }'; }

echo "redis-server $(redis-server --version | awk '{print $3}'), $(nproc) cores, load $(cut -d' ' -f1-3 /proc/loadavg) at start, median of $ROUNDS rounds"
echo
echo "| concurrency | backend-redis pairs/s (multi-thread runtime) | backend-redis pairs/s (current-thread runtime) | redis-benchmark EVALSHA pairs/s (acquire, release rps) | ratio multi / current (median of rounds, lowest-highest) | backend-redis, multiplexed connection only (multi-thread) | SET NX PX + DEL pairs/s (set, del rps) |"
echo "|---|---|---|---|---|---|---|"
IFS=',' read -ra LEVELS <<<"$CONCURRENCIES"
for c in "${LEVELS[@]}"; do
    n=$((c == 1 ? 30000 : 200000))
    multi=() current=() multiplexed=() multi_ratio=() current_ratio=() acq=() rel=() script_pairs=() set_rps=() del_rps=() plain_pairs=()
    for _ in $(seq 1 "$ROUNDS"); do
        multi+=("$(backend "$c" multi 2)")
        current+=("$(backend "$c" current 2)")
        multiplexed+=("$(backend "$c" multi 0)")
        redis-cli -p "$PORT" FLUSHALL >/dev/null
        a="$(rb "$c" "$n" evalsha "$ACQ" 7 rb:tickets rb:index rb:deadlines rb:waiting 'rb:{__rand_int__}:holders' 'rb:{__rand_int__}:fence' 'rb:{__rand_int__}:queue' owner 1 1000 1024 0 0 0 rb:released rb: 0 obj x o "$DIGEST" 0)"
        hold_all
        r="$(rb "$c" "$n" evalsha "$REL" 5 rb:index rb:deadlines rb:waiting 'rb:{__rand_int__}:holders' 'rb:{__rand_int__}:queue' rb:released obj "$DIGEST" 123)"
        redis-cli -p "$PORT" FLUSHALL >/dev/null
        s="$(rb "$c" "$n" set 'plain:__rand_int__' v NX PX 1)"
        d="$(rb "$c" "$n" del 'plain:__rand_int__')"
        acq+=("$a") rel+=("$r") set_rps+=("$s") del_rps+=("$d")
        script_pairs+=("$(pairs "$a" "$r")") plain_pairs+=("$(pairs "$s" "$d")")
        multi_ratio+=("$(awk -v b="${multi[-1]}" -v s="${script_pairs[-1]}" 'BEGIN { printf "%.3f", b / s }')")
        current_ratio+=("$(awk -v b="${current[-1]}" -v s="${script_pairs[-1]}" 'BEGIN { printf "%.3f", b / s }')")
    done
    m="$(median "${multi[@]}")" cur="$(median "${current[@]}")" sp="$(median "${script_pairs[@]}")"
    ratio="$(median "${multi_ratio[@]}")x ($(spread "${multi_ratio[@]}")) / $(median "${current_ratio[@]}")x ($(spread "${current_ratio[@]}"))"
    echo "| $c | $m | $cur | $sp ($(median "${acq[@]}"), $(median "${rel[@]}")) | $ratio | $(median "${multiplexed[@]}") | $(median "${plain_pairs[@]}") ($(median "${set_rps[@]}"), $(median "${del_rps[@]}")) |"
done
