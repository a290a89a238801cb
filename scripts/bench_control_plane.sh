#!/usr/bin/env bash
# Benchmarks how fast a rollout reaches gateways: builds weir-control-plane and its
# `watch_bench` example in release mode, starts a control plane on free loopback ports with a
# fresh SQLite database, opens BENCH_CP_STREAMS watch streams as gateways, and for each of
# BENCH_CP_ROUNDS rounds submits a new policy version and starts a 100% rollout through the REST
# API. Reports p50/p99/max from sending the rollout request to each stream's receipt of the
# Assignment, to each ACK as the control plane recorded it, and to the moment GET
# /api/v1/gateways showed every ACK (the target: p99 under one second). Prints the result and
# appends it to docs/benchmarks-log.md.
#
# Settings (environment):
#   BENCH_CP_STREAMS     watch streams (gateways) to open (200)
#   BENCH_CP_ROUNDS      rollouts to measure (5)
#   BENCH_RECORD         1 (default) appends to docs/benchmarks-log.md; 0 only prints
#   BENCH_SKIP_BUILD     1 uses target/release as it is
#   BENCH_KEEP           1 keeps the run directory (config, database, log)
set -euo pipefail

# shellcheck source=scripts/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
bench_lock "$@"
cd "$WEIR_ROOT"

STREAMS="${BENCH_CP_STREAMS:-200}"
ROUNDS="${BENCH_CP_ROUNDS:-5}"
ADMIN_TOKEN="bench-admin-$RANDOM$RANDOM"
GATEWAY_TOKEN="bench-gateway-$RANDOM$RANDOM"

if [ "${BENCH_SKIP_BUILD:-0}" != 1 ]; then
  ensure_build_deps
  log "building weir-control-plane and watch_bench (release)"
  cargo build --release -p weir-control-plane --bin weir-control-plane --example watch_bench
fi
CP_BIN="$WEIR_ROOT/target/release/weir-control-plane"
BENCH_BIN="$WEIR_ROOT/target/release/examples/watch_bench"
[ -x "$CP_BIN" ] && [ -x "$BENCH_BIN" ] || die "missing $CP_BIN or $BENCH_BIN (unset BENCH_SKIP_BUILD)"

RUN_DIR="$(mktemp -d "${TMPDIR:-/tmp}/weir-bench-cp.XXXXXX")"
PIDFILE="$RUN_DIR/control-plane.pid"
cleanup() {
  stop_pidfile "$PIDFILE"
  if [ "${BENCH_KEEP:-0}" = 1 ]; then log "run directory kept: $RUN_DIR"; else rm -rf "$RUN_DIR"; fi
}
trap cleanup EXIT

# Two free loopback ports, chosen by the kernel.
read -r API_PORT WATCH_PORT < <(python3 - <<'PY'
import socket
socks = [socket.socket() for _ in range(2)]
for s in socks:
    s.bind(("127.0.0.1", 0))
print(*(s.getsockname()[1] for s in socks))
PY
)

sha() { printf %s "$1" | sha256sum | cut -d' ' -f1; }
cat >"$RUN_DIR/control-plane.yaml" <<YAML
api:
  endpoint: 127.0.0.1:$API_PORT
watch:
  endpoint: 127.0.0.1:$WATCH_PORT
storage:
  sqlite:
    path: $RUN_DIR/cp.db
auth:
  tokens:
    - name: bench-admin
      role: admin
      sha256: $(sha "$ADMIN_TOKEN")
    - name: bench-gateways
      role: gateway
      sha256: $(sha "$GATEWAY_TOKEN")
shutdown_timeout: 5s
log:
  level: warn
YAML

log "starting weir-control-plane (SQLite) on 127.0.0.1:$API_PORT (REST) and :$WATCH_PORT (watch)"
"$CP_BIN" --config "$RUN_DIR/control-plane.yaml" >"$RUN_DIR/control-plane.log" 2>&1 &
echo $! >"$PIDFILE"
for _ in $(seq 1 300); do
  [ "$(http_status "$API_PORT" /healthz)" = 200 ] && break
  kill -0 "$(cat "$PIDFILE")" 2>/dev/null || die "the control plane exited: $(tail -5 "$RUN_DIR/control-plane.log")"
  sleep 0.1
done
[ "$(http_status "$API_PORT" /healthz)" = 200 ] || die "the control plane did not become healthy"

LOADAVG_BEFORE="$(cut -d' ' -f1-3 /proc/loadavg)"
"$BENCH_BIN" --api "http://127.0.0.1:$API_PORT" --watch "http://127.0.0.1:$WATCH_PORT" \
  --admin-token "$ADMIN_TOKEN" --gateway-token "$GATEWAY_TOKEN" \
  --streams "$STREAMS" --rounds "$ROUNDS" | tee "$RUN_DIR/result.txt"
LOADAVG_AFTER="$(cut -d' ' -f1-3 /proc/loadavg)"
CP_CPU="$(awk '{printf "%.2f", ($14 + $15) / '"$(getconf CLK_TCK)"'}' "/proc/$(cat "$PIDFILE")/stat")"
CP_RSS="$(awk '/VmHWM/ {printf "%.1f", $2 / 1024}' "/proc/$(cat "$PIDFILE")/status")"
echo "control plane: ${CP_CPU} CPU-s over the run, peak RSS ${CP_RSS} MiB" | tee -a "$RUN_DIR/result.txt"

if [ "${BENCH_RECORD:-1}" = 1 ]; then
  doc="$WEIR_ROOT/docs/benchmarks-log.md"
  cpu="$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ *//')"
  mem="$(awk '/MemTotal/ {printf "%.0f", $2 / 1048576}' /proc/meminfo)"
  {
    echo
    echo "## $(date -u '+%Y-%m-%d %H:%M UTC'): control plane rollout latency, $STREAMS watch streams (SQLite)"
    echo
    echo "- machine: $(nproc) CPUs ($cpu), $mem GiB; the control plane and the $STREAMS simulated gateways (one process, one HTTP/2 connection each) share these CPUs"
    echo "- command: \`BENCH_CP_STREAMS=$STREAMS BENCH_CP_ROUNDS=$ROUNDS scripts/bench_control_plane.sh\`"
    echo "- versions: weir-control-plane and watch_bench (release) at $(git describe --always --dirty 2>/dev/null || echo 'an uncommitted tree')"
    echo "- load average (1, 5, 15 min): $LOADAVG_BEFORE before, $LOADAVG_AFTER after (other work on the machine skews results)"
    echo "- what is measured: per round a new policy version is submitted, then a 100% rollout started; times run from sending POST /api/v1/rollouts (so they include that call) to each stream's receipt of its Assignment, to each ACK's \`last_report_at\` (millisecond resolution, the control plane's clock), and to the first GET /api/v1/gateways that lists every ACK. The simulated gateways ACK at once; a real gateway adds its apply time (parse, a broker metadata request, an fsync'd write), milliseconds. Target: p99 under 1 s."
    echo
    echo '```'
    cat "$RUN_DIR/result.txt"
    echo '```'
  } >>"$doc"
  log "appended to docs/benchmarks-log.md"
fi
