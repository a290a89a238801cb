#!/usr/bin/env bash
# A whole-process CPU profile of weir-gateway under the benchmark load (issue 19): the load of
# scripts/bench.sh (OTLP/gRPC, 100 spans per request, 10 per trace, 5 attributes) into one
# gateway producing to a fresh Tansu, first closed loop (saturation), then open loop at half of
# the saturation rate. During each, `perf record` samples the gateway for PROFILE_SECONDS; the
# stacks are folded (inferno-collapse-perf), drawn as flame graphs (inferno-flamegraph) and
# split by component (scripts/bench/profile_split.py).
#
# Settings (environment):
#   PROFILE_OUT         where the SVGs, folded stacks and split go (docs/profile)
#   PROFILE_SECONDS     seconds perf samples in each run (15)
#   PROFILE_FREQ        samples per second per CPU (499)
#   PROFILE_CALL_GRAPH  perf's --call-graph (dwarf,16384)
#   PROFILE_TARGET      weir (no policy; the default) or weir-full: the 100 rules of bench.sh's
#                       weir-rules and the tail marking of its weir-tail, in one policy
#   PROFILE_CONCURRENCY closed-loop senders at saturation (64)
#   PROFILE_HALF_RATE   open-loop spans/s of the half-load run (default: half the closed loop's)
#   PROFILE_MIN_WIDTH   inferno-flamegraph --minwidth, in pixels (0.2: keeps each SVG small)
#   PROFILE_BIN_DIR     where weir-gateway and weir-loadgen are (target/release)
# Needs perf and inferno (`cargo install inferno`) on PATH, and target/release built.
set -euo pipefail

# shellcheck source=scripts/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/../lib.sh"
# shellcheck source=scripts/bench/policies.sh
source "$(dirname "${BASH_SOURCE[0]}")/policies.sh"
bench_lock "$@"
cd "$WEIR_ROOT"

OUT="${PROFILE_OUT:-$WEIR_ROOT/docs/profile}"
SECONDS_SAMPLED="${PROFILE_SECONDS:-15}"
FREQ="${PROFILE_FREQ:-499}"
CALL_GRAPH="${PROFILE_CALL_GRAPH:-dwarf,16384}"
TARGET="${PROFILE_TARGET:-weir}"
CONCURRENCY="${PROFILE_CONCURRENCY:-64}"
MIN_WIDTH="${PROFILE_MIN_WIDTH:-0.2}"
WARMUP=3
BIN_DIR="${PROFILE_BIN_DIR:-$WEIR_ROOT/target/release}"
LOADGEN="$BIN_DIR/weir-loadgen"
GATEWAY="$BIN_DIR/weir-gateway"
LOAD_SHAPE=(--transport grpc --spans-per-request 100 --spans-per-trace 10 --attributes 5 --services 5 --json)

case "$TARGET" in weir | weir-full) ;; *) die "PROFILE_TARGET: weir or weir-full, got '$TARGET'" ;; esac
for tool in perf inferno-collapse-perf inferno-flamegraph; do
  command -v "$tool" >/dev/null || die "$tool is not on PATH"
done
[ -x "$GATEWAY" ] && [ -x "$LOADGEN" ] || die "build first: cargo build --release -p weir-gateway -p weir-loadgen"
ensure_tansu
ensure_venv
PY="$WEIR_VENV/bin/python"

RUN_DIR="$(mktemp -d "${TMPDIR:-/tmp}/weir-profile.XXXXXX")"
mkdir -p "$OUT"
PIDFILES=()
cleanup() {
  local p
  for p in "${PIDFILES[@]}"; do stop_pidfile "$p"; done
  # perf.data files are hundreds of MB: never keep them.
  rm -rf "$RUN_DIR"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# profile_run NAME LOADGEN-ARGS...: a fresh broker and gateway, the load, perf in its middle.
# Leaves $RUN_DIR/NAME.loadgen.json and $OUT/gateway-NAME.{folded,svg}.
profile_run() {
  local name="$1"
  shift
  local broker_port grpc_port http_port admin_port pid policy="" i
  read -r broker_port grpc_port http_port admin_port <<<"$(free_ports 4)"
  PIDFILES+=("$RUN_DIR/$name.tansu.pid" "$RUN_DIR/$name.gateway.pid")
  start_tansu "$broker_port" "$RUN_DIR/$name.tansu.pid" "$RUN_DIR/$name.tansu.log"
  create_topics "$broker_port" 4 "profile_$name"
  if [ "$TARGET" = weir-full ]; then
    write_full_policy "$RUN_DIR/$name.policy.yaml" "profile_$name"
    create_topics "$broker_port" 1 "profile_${name}_decisions"
    policy="policy_file: $RUN_DIR/$name.policy.yaml
tail:
  decisions_topic: profile_${name}_decisions"
  fi
  cat >"$RUN_DIR/$name.yaml" <<EOF
receivers:
  grpc:
    endpoint: "127.0.0.1:$grpc_port"
  http:
    endpoint: "127.0.0.1:$http_port"
kafka:
  brokers: ["127.0.0.1:$broker_port"]
  traces:
    topic: profile_$name
  max_message_size: 1000000
admin:
  endpoint: "127.0.0.1:$admin_port"
spool:
  directory: $RUN_DIR/$name.spool
$policy
EOF
  "$GATEWAY" --config "$RUN_DIR/$name.yaml" >"$RUN_DIR/$name.gateway.log" 2>&1 &
  echo $! >"$RUN_DIR/$name.gateway.pid"
  pid="$(cat "$RUN_DIR/$name.gateway.pid")"
  for ((i = 0; i < 300; i++)); do
    [ "$(http_status "$admin_port" /readyz)" = "200" ] && break
    kill -0 "$pid" 2>/dev/null || die "the gateway exited (log: $RUN_DIR/$name.gateway.log)"
    sleep 0.1
  done

  log "$name: load for $((WARMUP + SECONDS_SAMPLED + 2))s ($*), perf for ${SECONDS_SAMPLED}s after ${WARMUP}s"
  timeout $((WARMUP + SECONDS_SAMPLED + 60)) "$LOADGEN" "${LOAD_SHAPE[@]}" --endpoint "http://127.0.0.1:$grpc_port" \
    --duration $((WARMUP + SECONDS_SAMPLED + 2)) --requests 10000000 "$@" >"$RUN_DIR/$name.loadgen.json" &
  local load_pid=$!
  sleep "$WARMUP"
  local before after
  before="$(cpu_ticks "$pid")"
  perf record -F "$FREQ" -g --call-graph "$CALL_GRAPH" -p "$pid" -o "$RUN_DIR/$name.perf.data" \
    -- sleep "$SECONDS_SAMPLED" 2>"$RUN_DIR/$name.perf.log" >&2
  after="$(cpu_ticks "$pid")"
  grep -h 'lost\|Captured' "$RUN_DIR/$name.perf.log" >&2 || true
  wait "$load_pid" || die "$name: weir-loadgen failed"
  CPU_SECONDS["$name"]="$(awk -v t=$((after - before)) -v hz="$(getconf CLK_TCK)" 'BEGIN { printf "%.2f", t / hz }')"
  stop_pidfile "$RUN_DIR/$name.gateway.pid"
  stop_pidfile "$RUN_DIR/$name.tansu.pid"
  log "$name: $(json_spans "$RUN_DIR/$name.loadgen.json") spans/s acknowledged; folding the stacks"

  # Thread names stay as the root frame (rdk:* are librdkafka's threads); kernel frames get _[k].
  perf script -i "$RUN_DIR/$name.perf.data" --no-inline 2>/dev/null \
    | inferno-collapse-perf --all >"$OUT/gateway-$name.folded"
  rm -f "$RUN_DIR/$name.perf.data"
  inferno-flamegraph --minwidth "$MIN_WIDTH" --title "weir-gateway, $name ($*)" \
    <"$OUT/gateway-$name.folded" >"$OUT/gateway-$name.svg"
}

# utime + stime of a process in clock ticks (fields 14 and 15 of /proc/PID/stat).
cpu_ticks() {
  local stat rest f
  stat="$(cat "/proc/$1/stat")" || return 1
  rest="${stat##*) }"
  read -r -a f <<<"$rest"
  echo $((f[11] + f[12]))
}
declare -A CPU_SECONDS

json_spans() { "$PY" -c 'import json, sys; print(int(json.load(open(sys.argv[1]))["spans_per_second"]))' "$1"; }
json_p99() { "$PY" -c 'import json, sys; print(json.load(open(sys.argv[1]))["latency_ms"]["p99"])' "$1"; }

suffix=""
[ "$TARGET" = weir-full ] && suffix="-full"
profile_run "saturation$suffix" --concurrency "$CONCURRENCY"
SATURATION="$(json_spans "$RUN_DIR/saturation$suffix.loadgen.json")"
HALF_RATE="${PROFILE_HALF_RATE:-$((SATURATION / 2))}"
profile_run "half$suffix" --rate "$HALF_RATE"
HALF="$(json_spans "$RUN_DIR/half$suffix.loadgen.json")"

log "saturation: $SATURATION spans/s, the gateway used ${CPU_SECONDS[saturation$suffix]} CPU-s in the ${SECONDS_SAMPLED}s sampled, p99 $(json_p99 "$RUN_DIR/saturation$suffix.loadgen.json") ms"
log "half load: $HALF spans/s (offered $HALF_RATE), the gateway used ${CPU_SECONDS[half$suffix]} CPU-s in the ${SECONDS_SAMPLED}s sampled, p99 $(json_p99 "$RUN_DIR/half$suffix.loadgen.json") ms"
# The folded stacks are kept, gzipped, so that the split can be taken again without perf.
gzip -f -9 "$OUT/gateway-saturation$suffix.folded" "$OUT/gateway-half$suffix.folded"
"$PY" "$WEIR_ROOT/scripts/bench/profile_split.py" \
  "saturation ($SATURATION spans/s)=$OUT/gateway-saturation$suffix.folded.gz" \
  "half load ($HALF spans/s)=$OUT/gateway-half$suffix.folded.gz"
