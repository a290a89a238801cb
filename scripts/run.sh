#!/usr/bin/env bash
# Runs Weir locally: a Tansu broker on 127.0.0.1:9092 (in-memory) with the default topics, and
# weir-gateway (release build) with config/gateway.yaml. Ctrl-C stops both; so does either
# process exiting. Logs and PID files go to .run/ (git-ignored; WEIR_RUN_DIR overrides).
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
TOPICS=(otlp_spans otlp_metrics otlp_logs otlp_spans_cold weir.tail.decisions)

ensure_build_deps
ensure_tansu
log "building weir-gateway (release)"
cargo build --release --bin weir-gateway

for port in $KAFKA_PORT $GRPC_PORT $HTTP_PORT $ADMIN_PORT; do
  port_in_use "$port" && die "127.0.0.1:$port is in use (is another scripts/run.sh running?)"
done
mkdir -p "$RUN_DIR"
# Nothing listens, so PID files left by a killed run are stale: forget them, kill nothing.
rm -f "$RUN_DIR/tansu.pid" "$RUN_DIR/gateway.pid"

# shellcheck disable=SC2317  # called through the EXIT trap
cleanup() {
  # A second Ctrl-C must not cut the stopping short and leave the processes behind.
  trap - EXIT
  trap '' INT TERM
  log "stopping"
  stop_pidfile "$RUN_DIR/gateway.pid"
  stop_pidfile "$RUN_DIR/tansu.pid"
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

log "starting weir-gateway with $CONFIG (log: $RUN_DIR/gateway.log)"
"$WEIR_ROOT/target/release/weir-gateway" --config "$CONFIG" >"$RUN_DIR/gateway.log" 2>&1 &
echo $! >"$RUN_DIR/gateway.pid"

ready=0
for ((i = 0; i < 300; i++)); do
  kill -0 "$(cat "$RUN_DIR/gateway.pid")" 2>/dev/null || break
  if [ "$(http_status "$ADMIN_PORT" /readyz)" = "200" ]; then ready=1; break; fi
  sleep 0.1
done
if [ "$ready" -ne 1 ]; then
  tail -n 30 "$RUN_DIR/gateway.log" >&2 || true
  die "weir-gateway did not become ready in 30 s (log above, full log: $RUN_DIR/gateway.log)"
fi

cat <<EOF

Weir is running.
  OTLP gRPC   127.0.0.1:$GRPC_PORT
  OTLP HTTP   http://127.0.0.1:$HTTP_PORT/v1/traces, /v1/metrics, /v1/logs
  admin       http://127.0.0.1:$ADMIN_PORT/healthz, /readyz, /metrics
  Kafka       127.0.0.1:$KAFKA_PORT, topics: ${TOPICS[*]}
  logs        $RUN_DIR/gateway.log, $RUN_DIR/tansu.log

Point an OpenTelemetry SDK at it: OTEL_EXPORTER_OTLP_ENDPOINT=http://127.0.0.1:$HTTP_PORT
(OTLP/HTTP) or http://127.0.0.1:$GRPC_PORT with OTEL_EXPORTER_OTLP_PROTOCOL=grpc.
Ctrl-C stops both processes.

EOF

# Returns when either process exits (or on Ctrl-C, through the traps).
wait -n "$(cat "$RUN_DIR/tansu.pid")" "$(cat "$RUN_DIR/gateway.pid")" || true
for name in tansu gateway; do
  kill -0 "$(cat "$RUN_DIR/$name.pid")" 2>/dev/null || log "$name exited (log: $RUN_DIR/$name.log)"
done
exit 1
