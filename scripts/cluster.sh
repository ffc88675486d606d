#!/usr/bin/env bash
# A local Herald cluster in one command: Redis, NODES Herald nodes on it (`--store redis`) and
# HAProxy in front, round-robin with health checks, WebSockets included.
#
#   scripts/cluster.sh                 # http://127.0.0.1:3000, nodes on 3001..3003
#   PORT=3300 NODES=3 scripts/cluster.sh
#
# Ctrl-C (or SIGTERM) stops everything. The run directory (printed) holds each process's pid
# (`node-N.pid`, `redis.pid`, `haproxy.pid`), logs, and the development key (`dev-api-key`)
# and token secret the nodes share (`--db` names the directory they are kept in). API keys
# live in Redis, so a key made or revoked on one node, or with `herald keys … --store redis`,
# holds on every node. Redis keeps history in an append-only file fsynced
# on every write, so a Redis restart keeps what was acknowledged.
#
# Needs the release build (`make build`) and Debian's redis-server and haproxy
# (scripts/setup.sh installs both).
set -euo pipefail
cd "$(dirname "$0")/.."
PORT=${PORT:-3000}
NODES=${NODES:-3}
REDIS_PORT=${REDIS_PORT:-$((PORT + 379))}
RUN=${RUN:-$(mktemp -d "${TMPDIR:-/tmp}/herald-cluster-XXXXXX")}
BIN=./target/release/herald
say() { printf '\033[1;34m[cluster]\033[0m %s\n' "$*" >&2; }

[ -x "$BIN" ] || { say "no $BIN: run 'make build' first"; exit 1; }
for tool in redis-server haproxy; do
  command -v "$tool" >/dev/null || { say "no $tool: scripts/setup.sh --cluster installs it"; exit 1; }
done
mkdir -p "$RUN"

PIDS=()
stop() {
  for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
}
trap stop EXIT
trap 'exit 0' INT TERM

wait_for() { # url
  for _ in $(seq 200); do curl -sf -o /dev/null "$1" && return 0; sleep 0.05; done
  say "$1 did not answer"; exit 1
}

redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --dir "$RUN" --save "" \
  --appendonly yes --appendfsync always --maxmemory-policy noeviction \
  >"$RUN/redis.log" 2>&1 &
PIDS+=($!); echo $! >"$RUN/redis.pid"
for _ in $(seq 100); do redis-cli -p "$REDIS_PORT" ping >/dev/null 2>&1 && break; sleep 0.05; done

# Development mode with one shared directory: the first node creates the development key (in
# Redis) and token secret, the others find them (so it starts alone first).
BACKENDS=""
for i in $(seq "$NODES"); do
  port=$((PORT + i))
  LEPTOS_SITE_ROOT=target/site RUST_LOG=${RUST_LOG:-info} "$BIN" --addr "127.0.0.1:$port" \
    --store redis --redis-url "redis://127.0.0.1:$REDIS_PORT/" --db "$RUN/herald.db" \
    --allowed-origins "http://127.0.0.1:$PORT,http://localhost:$PORT" ${HERALD_ARGS:-} >"$RUN/node-$i.log" 2>&1 &
  PIDS+=($!); echo $! >"$RUN/node-$i.pid"
  wait_for "http://127.0.0.1:$port/api/health"
  BACKENDS+="    server node$i 127.0.0.1:$port check inter 500ms fall 1 rise 2"$'\n'
done

cat >"$RUN/haproxy.cfg" <<EOF
global
    # Two descriptors per proxied connection, under the 20,000 a process may open here.
    maxconn 9000
defaults
    mode http
    timeout connect 2s
    timeout client 60s
    timeout server 60s
    # An open WebSocket is a tunnel: its own (long) timeout; Herald's heartbeat keeps it busy.
    timeout tunnel 1h
    option redispatch
    retries 2
frontend herald
    bind 127.0.0.1:$PORT
    default_backend nodes
backend nodes
    balance roundrobin
    # Readiness, not liveness: a draining node (SIGTERM) leaves the rotation at once.
    option httpchk GET /api/ready
$BACKENDS
EOF
haproxy -f "$RUN/haproxy.cfg" -db >"$RUN/haproxy.log" 2>&1 &
PIDS+=($!); echo $! >"$RUN/haproxy.pid"
wait_for "http://127.0.0.1:$PORT/api/health"

say "Herald cluster on http://127.0.0.1:$PORT ($NODES nodes on $((PORT + 1))..$((PORT + NODES)), Redis on $REDIS_PORT)"
say "run directory: $RUN (development key: $RUN/dev-api-key)"
say "try: curl -H \"Authorization: Bearer \$(cat $RUN/dev-api-key)\" -d 'Deploy finished' http://127.0.0.1:$PORT/api/topics/ops"
echo "ready $RUN"
wait
