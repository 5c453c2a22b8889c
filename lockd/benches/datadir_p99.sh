#!/bin/bash
# Acquire latency through lockd on memory://, without and with --data-dir, interleaved.
# Usage: lockd/benches/datadir_p99.sh BIN_DIR ROUNDS DURATION CONCURRENCY
BIN=${1:-target/debug}; ROUNDS=${2:-3}; DUR=${3:-10s}; C=${4:-16}
for round in $(seq 1 "$ROUNDS"); do
  for mode in plain datadir; do
    dir=$(mktemp -d)
    args=(serve --listen 127.0.0.1:0 --log warn)
    [ "$mode" = datadir ] && args+=(--data-dir "$dir")
    coproc LOCKD { exec "$BIN/lockd" "${args[@]}" 2>/dev/null; }
    read -r line <&"${LOCKD[0]}"
    url=${line#lockd listening on }
    out=$("$BIN/lockd-bench" --url "$url" -c "$C" -d "$DUR" --json 2>/dev/null)
    echo "$round $mode $out"
    kill "$LOCKD_PID"; wait "$LOCKD_PID" 2>/dev/null
    rm -rf "$dir"
  done
done
