#!/usr/bin/env bash
# Runs Weir locally: a Tansu broker on 127.0.0.1:9092 (in-memory) with the default topics,
# weir-control-plane with config/control-plane.yaml (REST on 8080, watch on 8081, SQLite),
# weir-gateway with config/gateway.yaml connected to that control plane, and weir-tail-router
# with config/tail-router.yaml (release builds). Ctrl-C stops them all; so does any of them
# exiting. Logs, PID files and the generated gateway config go to .run/ (git-ignored;
# WEIR_RUN_DIR overrides).
set -euo pipefail

# shellcheck source=scripts/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
cd "$WEIR_ROOT"

RUN_DIR="${WEIR_RUN_DIR:-$WEIR_ROOT/.run}"
CONFIG="$WEIR_ROOT/config/gateway.yaml"
KAFKA_PORT=9092
GRPC_PORT=4317
HTTP_PORT=4318
ADMIN_PORT=8888
API_PORT=8080
WATCH_PORT=8081
ROUTER_ADMIN_PORT=8889
# Processes, in the order they start; they stop in reverse.
PROCESSES=(tansu control-plane gateway tail-router)
# The gateway's and tail router's topics, and those config/policies/example.yaml routes to (a
# gateway refuses a pushed policy that routes to a topic the broker lacks).
TOPICS=(otlp_spans otlp_metrics otlp_logs otlp_spans_cold weir.tail.decisions
  payments_audit otlp_spans_internal otlp_spans_errors)

ensure_build_deps
ensure_tansu
log "building weir-gateway, weir-control-plane, weirctl and weir-tail-router (release)"
cargo build --release --bin weir-gateway --bin weir-control-plane --bin weirctl --bin weir-tail-router
BIN="$WEIR_ROOT/target/release"

for port in $KAFKA_PORT $GRPC_PORT $HTTP_PORT $ADMIN_PORT $API_PORT $WATCH_PORT $ROUTER_ADMIN_PORT; do
  port_in_use "$port" && die "127.0.0.1:$port is in use (is another scripts/run.sh running?)"
done
mkdir -p "$RUN_DIR"
# Nothing listens, so PID files left by a killed run are stale: forget them, kill nothing.
for name in "${PROCESSES[@]}"; do rm -f "$RUN_DIR/$name.pid"; done

# shellcheck disable=SC2317  # called through the EXIT trap
cleanup() {
  # A second Ctrl-C must not cut the stopping short and leave the processes behind.
  trap - EXIT
  trap '' INT TERM
  log "stopping"
  local i
  for ((i = ${#PROCESSES[@]} - 1; i >= 0; i--)); do
    stop_pidfile "$RUN_DIR/${PROCESSES[i]}.pid"
  done
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
# Job control puts each background process in its own process group, so a Ctrl-C in the
# terminal reaches only this script, which stops the gateway first (it drains into Kafka),
# then the broker.
set -m

log "starting tansu on 127.0.0.1:$KAFKA_PORT (log: $RUN_DIR/tansu.log)"
start_tansu "$KAFKA_PORT" "$RUN_DIR/tansu.pid" "$RUN_DIR/tansu.log"
create_topics "$KAFKA_PORT" 3 "${TOPICS[@]}"

# Starts process $1 (a name in PROCESSES) as the rest of the arguments, then waits up to 30 s
# for 200 from http://127.0.0.1:$2$3.
start_process() {
  local name="$1" port="$2" path="$3" i
  shift 3
  log "starting $name (log: $RUN_DIR/$name.log)"
  "$@" >"$RUN_DIR/$name.log" 2>&1 &
  echo $! >"$RUN_DIR/$name.pid"
  for ((i = 0; i < 300; i++)); do
    kill -0 "$(cat "$RUN_DIR/$name.pid")" 2>/dev/null || break
    [ "$(http_status "$port" "$path")" = "200" ] && return 0
    sleep 0.1
  done
  tail -n 30 "$RUN_DIR/$name.log" >&2 || true
  die "$name did not become ready in 30 s (log above, full log: $RUN_DIR/$name.log)"
}

start_process control-plane "$API_PORT" /healthz \
  "$BIN/weir-control-plane" --config "$WEIR_ROOT/config/control-plane.yaml"

# The example config, plus the local control plane (its dev gateway token, see
# config/control-plane.yaml), a state directory for the last policy it pushed, and the
# spool under the run directory (kept across runs: what it holds is replayed at start).
GATEWAY_CONFIG="$RUN_DIR/gateway.yaml"
{
  # The example's spool directory is a system path: the spool goes under the run directory.
  sed "s|^  directory: /var/lib/weir-gateway/spool\$|  directory: $RUN_DIR/gateway-spool|" "$CONFIG"
  cat <<EOF

# Added by scripts/run.sh: the local control plane.
control_plane:
  endpoint: http://127.0.0.1:$WATCH_PORT
  token: dev-gateway-token
  instance_id: local-gateway
  labels: { env: local }
  state_dir: $RUN_DIR/gateway-state
EOF
} >"$GATEWAY_CONFIG"
grep -q "directory: $RUN_DIR/gateway-spool" "$GATEWAY_CONFIG" ||
  die "config/gateway.yaml no longer has the spool directory this script rewrites; update scripts/run.sh"
start_process gateway "$ADMIN_PORT" /readyz "$BIN/weir-gateway" --config "$GATEWAY_CONFIG"
start_process tail-router "$ROUTER_ADMIN_PORT" /healthz \
  "$BIN/weir-tail-router" --config "$WEIR_ROOT/config/tail-router.yaml"

cat <<EOF

Weir is running.
  OTLP gRPC   127.0.0.1:$GRPC_PORT
  OTLP HTTP   http://127.0.0.1:$HTTP_PORT/v1/traces, /v1/metrics, /v1/logs
  admin       http://127.0.0.1:$ADMIN_PORT/healthz, /readyz, /metrics
  Kafka       127.0.0.1:$KAFKA_PORT, topics: ${TOPICS[*]}
  control     REST http://127.0.0.1:$API_PORT/api/v1 (OpenAPI: /api/v1/openapi.json), watch 127.0.0.1:$WATCH_PORT
  tail router http://127.0.0.1:$ROUTER_ADMIN_PORT/metrics (copies marked traces to otlp_spans_cold)
  logs        $RUN_DIR/{tansu,control-plane,gateway,tail-router}.log

Point an OpenTelemetry SDK at it: OTEL_EXPORTER_OTLP_ENDPOINT=http://127.0.0.1:$HTTP_PORT
(OTLP/HTTP) or http://127.0.0.1:$GRPC_PORT with OTEL_EXPORTER_OTLP_PROTOCOL=grpc.

Release a policy to the gateway (dev tokens from config/control-plane.yaml):
  export WEIR_TOKEN=dev-admin-token
  $BIN/weirctl policy apply -f config/policies/example.yaml
  $BIN/weirctl rollout start --version 7    # the version the document declares
  $BIN/weirctl gateways
Ctrl-C stops every process.

EOF

# Returns when either process exits (or on Ctrl-C, through the traps).
pids=()
for name in "${PROCESSES[@]}"; do pids+=("$(cat "$RUN_DIR/$name.pid")"); done
wait -n "${pids[@]}" || true
for name in "${PROCESSES[@]}"; do
  kill -0 "$(cat "$RUN_DIR/$name.pid")" 2>/dev/null || log "$name exited (log: $RUN_DIR/$name.log)"
done
exit 1
