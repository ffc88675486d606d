#!/usr/bin/env bash
# Runs every BENCHMARKS.md scenario RUNS times (default 3) and prints the medians.
# Server on core 0, load generator on core 1; each scenario gets a fresh server.
#
#   scripts/bench.sh                # all scenarios
#   scripts/bench.sh fanout-1000    # scenarios whose name contains the word
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS=${RUNS:-3}
ADDR=127.0.0.1:3999
OUT=target/bench
mkdir -p "$OUT"
RESULTS="$OUT/results-$(date +%Y%m%d-%H%M%S).jsonl"
cargo build --release -q -p herald --bin herald --bin herald-bench
FILTER=${1:-}

run() { # name store bench-args...
  local name=$1 store=$2
  shift 2
  [[ -n "$FILTER" && "$name" != *"$FILTER"* ]] && return 0
  for i in $(seq "$RUNS"); do
    rm -f "$OUT"/bench.db*
    RUST_LOG=warn taskset -c 0 ./target/release/herald --addr "$ADDR" --store "$store" \
      --db "$OUT/bench.db" >"$OUT/server.log" 2>&1 &
    local pid=$!
    for _ in $(seq 50); do curl -sf "http://$ADDR/api/health" >/dev/null && break; sleep 0.1; done
    local line
    line=$(taskset -c 1 ./target/release/herald-bench --addr "$ADDR" --server-pid "$pid" --json "$@" 2>/dev/null | tail -1)
    kill -TERM "$pid"; wait "$pid" || true
    echo "{\"scenario\":\"$name\",\"store\":\"$store\",\"run\":$i,\"result\":$line}" | tee -a "$RESULTS"
    sleep 2
  done
}

run connections-10000   memory connections --count 10000 --rate 5000 --hold 2
run connections-19000   memory connections --count 19000 --rate 5000 --hold 2
run latency-1000x20     memory fanout --subscribers 1000 --rate 20 --messages 300
run latency-1000x20     sqlite fanout --subscribers 1000 --rate 20 --messages 300
run fanout-1000         memory fanout --subscribers 1000 --rate 400 --messages 4000
run fanout-1000         sqlite fanout --subscribers 1000 --rate 400 --messages 4000
run fanout-5000         memory fanout --subscribers 5000 --rate 80 --messages 800
run fanout-5000         sqlite fanout --subscribers 5000 --rate 80 --messages 800
run fanout-10000        memory fanout --subscribers 10000 --rate 40 --messages 400
run fanout-10000        sqlite fanout --subscribers 10000 --rate 40 --messages 400
run publish-32          memory publish --concurrency 32 --requests 300000
run publish-32          sqlite publish --concurrency 32 --requests 200000

python3 scripts/bench_summary.py "$RESULTS"
