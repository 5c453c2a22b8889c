#!/usr/bin/env bash
# lockd over HTTP (memory://) next to redis-benchmark doing SET NX PX + DEL, at the same
# concurrency, in one run on this machine. Prints one table row per measurement.
#
# Usage: lockd-client/bench/compare-redis.sh [SECONDS_PER_LOCKD_RUN] [ROUNDS]
# Env:   PORT (lockd, default 17070), REDIS_HOST/REDIS_PORT (default 127.0.0.1:6379),
#        CONCURRENCY (default "1 50"), CARGO_TARGET_DIR.
# Needs: cargo, redis-server running, redis-benchmark, jq. Touches only keys under a random
# prefix that expire after 30 s.
set -euo pipefail

secs=${1:-10}
rounds=${2:-3}
port=${PORT:-17070}
redis_host=${REDIS_HOST:-127.0.0.1}
redis_port=${REDIS_PORT:-6379}
concurrency=${CONCURRENCY:-"1 50"}
cd "$(dirname "$0")/../.."
bin=${CARGO_TARGET_DIR:-target}/release

cargo build --release -p lockd -p lockd-client >&2

"$bin/lockd" serve --listen "127.0.0.1:$port" --log warn >/tmp/lockd-bench-server.out 2>&1 &
lockd_pid=$!
trap 'kill "$lockd_pid" 2>/dev/null || true' EXIT
for _ in $(seq 100); do
    grep -q "listening" /tmp/lockd-bench-server.out 2>/dev/null && break
    sleep 0.1
done
url="http://127.0.0.1:$port"

cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
redis_pid=$(redis-cli -h "$redis_host" -p "$redis_port" info server | awk -F: '/^process_id:/ {print $2}' | tr -d '\r')
hz=$(getconf CLK_TCK)

echo "# $(date -u +%FT%TZ) $(nproc) CPUs, load $(cut -d' ' -f1-3 /proc/loadavg), $(redis-server --version | cut -d' ' -f3)"
echo "| round | c | system | pairs/s | p50 ms | p99 ms | p999 ms | server CPU µs/pair | client CPU µs/pair |"
echo "|---|---|---|---|---|---|---|---|---|"
for round in $(seq "$rounds"); do
    for c in $concurrency; do
        # lockd: acquire+release pairs on random objects.
        before=$(cpu_ticks "$lockd_pid")
        out=$(/usr/bin/time -o /tmp/lockd-bench-client.time -f "%U %S" "$bin/lockd-bench" \
            --url "$url" -c "$c" --duration "${secs}s" --warmup 0s --json)
        after=$(cpu_ticks "$lockd_pid")
        pairs=$(jq .pairs <<<"$out")
        client_cpu=$(tail -1 /tmp/lockd-bench-client.time | awk '{print $1 + $2}')
        jq -r --arg r "$round" --arg c "$c" --argjson server "$(( after - before ))" \
            --argjson hz "$hz" --argjson client "$client_cpu" \
            '"| \($r) | \($c) | lockd HTTP memory:// | \(.pairs_per_sec | floor) | \(.pair_ms.p50) | \(.pair_ms.p99) | \(.pair_ms.p999) | \(($server / $hz) / .pairs * 1000000 | floor) | \($client / .pairs * 1000000 | floor) |"' <<<"$out"

        # Redis: SET NX PX then DEL, run separately; a pair costs one of each, so
        # pairs/s = 1 / (1/set_rps + 1/del_rps); pair p50/p99 ~ sum of the two commands'.
        prefix="lockdbench:$RANDOM$RANDOM"
        n=$(( c == 1 ? 100000 : 400000 ))
        rb() {
            /usr/bin/time -a -o /tmp/lockd-bench-redis.time -f "%U %S" \
                redis-benchmark -h "$redis_host" -p "$redis_port" -c "$c" -n "$n" -r 100000 --csv "$@" \
                | tail -1 | tr -d '"'
        }
        : >/tmp/lockd-bench-redis.time
        redis_before=$(cpu_ticks "$redis_pid")
        set_line=$(rb SET "$prefix:__rand_int__" v NX PX 30000)
        del_line=$(rb DEL "$prefix:__rand_int__")
        redis_after=$(cpu_ticks "$redis_pid")
        redis_client=$(awk '{s += $1 + $2} END {print s}' /tmp/lockd-bench-redis.time)
        cad_line=$(rb EVAL "if redis.call('get',KEYS[1])==ARGV[1] then return redis.call('del',KEYS[1]) else return 0 end" 1 "$prefix:__rand_int__" v)
        # csv: test,rps,avg,min,p50,p95,p99,max (the test name may itself contain commas).
        awk -v r="$round" -v c="$c" -v s="$set_line" -v d="$del_line" -v e="$cad_line" \
            -v n="$n" -v hz="$hz" -v server="$(( redis_after - redis_before ))" -v client="$redis_client" '
        function f(line, A,   n) { n = split(line, A, ","); rps = A[n-6]; p50 = A[n-3]; p99 = A[n-1] }
        BEGIN {
            f(s); sr = rps; s50 = p50; s99 = p99;
            f(d); dr = rps; d50 = p50; d99 = p99;
            f(e); er = rps; e50 = p50; e99 = p99;
            printf "| %s | %s | redis SET NX PX + DEL | %d | %.3f | %.3f | n/a | %d | %d |\n", r, c, 1/(1/sr + 1/dr), s50 + d50, s99 + d99, (server / hz) / n * 1e6, client / n * 1e6;
            printf "| %s | %s | redis SET NX PX + compare-and-DEL (EVAL) | %d | %.3f | %.3f | n/a | | |\n", r, c, 1/(1/sr + 1/er), s50 + e50, s99 + e99;
            printf "| %s | %s | (redis alone: SET NX PX %d/s, DEL %d/s, EVAL %d/s) | | | | | | |\n", r, c, sr, dr, er;
        }'
    done
done
