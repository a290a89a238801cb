#!/usr/bin/env bash
# Benchmarks weir-gateway against Rotel (a Rust collector with a Kafka exporter) on this
# machine: the same OTLP load (gRPC by default, see BENCH_TRANSPORT) from weir-loadgen into
# each, one after the other, both producing to the same Tansu broker. Per run it records acknowledged spans/s, the gateway's
# CPU-seconds per million spans, its peak RSS, p50/p99 latency, and the spans an independent
# consumer (scripts/bench/count_spans.py) counts back out of Kafka. Prints one table and
# appends it to docs/benchmarks-log.md.
#
# Runs: a closed loop (BENCH_CONCURRENCY senders) against each gateway, then an open loop at
# half of Rotel's closed-loop spans/s against each, BENCH_ROUNDS times each, every other round
# in reverse order (so that drift on a shared machine does not favour one gateway); the report
# gives each gateway's medians and the median of the per-round ratios. Every run gets a fresh
# gateway process, a fresh broker (Tansu's memory engine slows as it fills) and a fresh topic,
# after a short warm-up whose spans are counted too.
#
# Settings (environment):
#   BENCH_TARGETS       gateways to run, "weir rotel" (default), any of them, or weir-rules:
#                       weir-gateway with a policy of 100 sampling and routing rules that every
#                       span is tested against (none matches, so every span is still kept),
#                       or weir-tail: weir-gateway with tail sampling on (5 tail rules evaluated
#                       on every span, marks in a 1M-trace Bloom filter, published every second),
#                       or weir-policy: the same policy without its tail section (tail marking off,
#                       the per-span policy path on: what weir-tail is compared with),
#                       or weir-nospool: weir with the spool off (BENCH_PAIRED="weir-nospool
#                       weir" is what the spool costs with Kafka healthy),
#                       or weir-spanmetrics: weir-policy with span metrics on (docs/span-metrics.md;
#                       flushed every 15 s to their own topic), compared with weir-policy,
#                       or weir-full: the 100 rules of weir-rules and the tail marking of
#                       weir-tail in one policy (issue 19's "full path"),
#                       or weir-lingerN (N a whole number of milliseconds): weir with
#                       kafka.linger set to N ms, and weir-lingerN-inflightM with
#                       kafka.max_in_flight M too (weir itself runs with the defaults, linger 0
#                       and one request in flight; weir-linger5-inflight5 is the producer of
#                       before 2026-12-02, so BENCH_PAIRED="weir-linger5-inflight5 weir" is what
#                       the defaults cost in CPU),
#                       or kafka: no gateway, the latency floor: weir-loadgen --transport kafka,
#                       a bare producer (acks=all, idempotent, linger 0, one request in
#                       flight) sending per request the records Weir would produce for it (one
#                       per trace) and waiting for all of them; kafka-lingerN: the same with
#                       linger.ms N (no CPU figures: there is no gateway process; not in paired
#                       mode)
#   BENCH_TRANSPORT     the load's transport, for every target alike: grpc (default, OTLP/gRPC
#                       uncompressed), grpc-gzip, grpc-zstd (Rotel does not accept zstd: runs
#                       it for Weir only, Rotel is left out with a notice), http (OTLP/HTTP
#                       protobuf, uncompressed, to the gateways' HTTP port); the kafka targets
#                       ignore it
#   BENCH_LOADS         "closed open" (default): which loads the default mode runs
#   BENCH_LATENCY       1: instead of closed and open loops, the latency mode: a closed loop of
#                       BENCH_LATENCY_SENDERS (8) senders against each target (default targets
#                       "kafka kafka-linger5 weir rotel"), BENCH_ROUNDS rounds; reports spans/s,
#                       p50, p99 and each Weir target's p99 minus the floor's (target kafka)
#   BENCH_TAIL_ATTRIBUTE_RULE 1 (default) includes weir-tail's attribute-predicate rule; 0 leaves
#                       it out
#   BENCH_TAIL_PUBLISH_INTERVAL how often weir-tail publishes its open window (5s, the policy's
#                       default; each snapshot is the whole 1.8 MB filter)
#   BENCH_DURATION      seconds per measured run (20)
#   BENCH_ROUNDS        runs of every gateway and load (1); ratios are medians of per-round ratios
#   BENCH_FRESH_BROKER  1 (default) starts a fresh Tansu for every run; 0 shares one for all
#   BENCH_WARMUP        warm-up seconds before each run (3)
#   BENCH_CONCURRENCY   closed-loop senders (64: enough to reach each gateway's ceiling)
#   BENCH_OPEN_RATE     open-loop spans/s (default: half of Rotel's closed-loop spans/s)
#   BENCH_SPANS_PER_REQUEST 100, BENCH_SPANS_PER_TRACE 10, BENCH_ATTRIBUTES 5
#   BENCH_MAX_REQUESTS  count bound of every load run (1000000)
#   BENCH_PARTITIONS    partitions of each topic (4)
#   BENCH_MAX_MESSAGE   largest Kafka record both gateways may produce, bytes (1000000)
#   BENCH_ROTEL_BATCH   Rotel's trace batch size in spans (default: fits BENCH_MAX_MESSAGE)
#   BENCH_BROKER_PORT   Tansu's port (19192; a free one is used if it is taken)
#   BENCH_RECORD        1 (default) appends to docs/benchmarks-log.md; 0 only prints
#   BENCH_SKIP_BUILD    1 uses the binaries in BENCH_BIN_DIR (default target/release) as they are
#   BENCH_KEEP          1 keeps the run directory (logs, per-run JSON) even on success
#   BENCH_BASE_BIN      a weir-gateway built from another commit: the target weir-base runs it
#                       with weir's config, so BENCH_PAIRED="weir-base weir" compares two commits
#   BENCH_BASE_SPOOL    1 gives weir-base a spool directory of its own as weir has (for a base
#                       built after the spool existed); 0 (default) leaves the key out
#   BENCH_PAIRED        "A B": instead of the runs above, runs gateways A and B at the same time,
#                       each with its own weir-loadgen at BENCH_PAIRED_RATE spans/s (default
#                       60000) into its own topic, BENCH_ROUNDS times (default 5 here), and
#                       reports B's CPU per span over A's per round: both see the same noise
#                       from other work on the machine, which sequential runs do not. "A A"
#                       measures the method's own spread.
set -euo pipefail

# shellcheck source=scripts/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
# shellcheck source=scripts/bench/policies.sh
source "$(dirname "${BASH_SOURCE[0]}")/bench/policies.sh"
bench_lock "$@"
cd "$WEIR_ROOT"

ROTEL_VERSION="0.0.1a15"
LATENCY="${BENCH_LATENCY:-0}"
if [ "$LATENCY" = 1 ]; then
  read -r -a TARGETS <<<"${BENCH_TARGETS:-kafka kafka-linger5 weir rotel}"
else
  read -r -a TARGETS <<<"${BENCH_TARGETS:-weir rotel}"
fi
TRANSPORT="${BENCH_TRANSPORT:-grpc}"
LATENCY_SENDERS="${BENCH_LATENCY_SENDERS:-8}"
read -r -a LOADS <<<"${BENCH_LOADS:-closed open}"
DURATION="${BENCH_DURATION:-20}"
ROUNDS="${BENCH_ROUNDS:-1}"
FRESH_BROKER="${BENCH_FRESH_BROKER:-1}"
WARMUP="${BENCH_WARMUP:-3}"
CONCURRENCY="${BENCH_CONCURRENCY:-64}"
SPANS_PER_REQUEST="${BENCH_SPANS_PER_REQUEST:-100}"
SPANS_PER_TRACE="${BENCH_SPANS_PER_TRACE:-10}"
ATTRIBUTES="${BENCH_ATTRIBUTES:-5}"
MAX_REQUESTS="${BENCH_MAX_REQUESTS:-1000000}"
PARTITIONS="${BENCH_PARTITIONS:-4}"
MAX_MESSAGE="${BENCH_MAX_MESSAGE:-1000000}"
BROKER_PORT="${BENCH_BROKER_PORT:-19192}"
BIN_DIR="${BENCH_BIN_DIR:-$WEIR_ROOT/target/release}"
# Seconds to let a gateway finish exporting after the load stops, before CPU is read.
SETTLE=3
# Bounds of the Kafka count: stop after this long without a new record, or in all.
COUNT_IDLE=5
COUNT_MAX=900

# TRANSPORT_NAME is how the reports name it.
case "$TRANSPORT" in
  grpc) TRANSPORT_ARGS=(--transport grpc --compression none) TRANSPORT_NAME="OTLP/gRPC" ;;
  grpc-gzip) TRANSPORT_ARGS=(--transport grpc --compression gzip) TRANSPORT_NAME="OTLP/gRPC gzip" ;;
  grpc-zstd) TRANSPORT_ARGS=(--transport grpc --compression zstd) TRANSPORT_NAME="OTLP/gRPC zstd" ;;
  http) TRANSPORT_ARGS=(--transport http-proto --compression none) TRANSPORT_NAME="OTLP/HTTP protobuf" ;;
  *) die "BENCH_TRANSPORT: unknown transport '$TRANSPORT' (grpc, grpc-gzip, grpc-zstd, http)" ;;
esac
for t in "${TARGETS[@]}"; do
  case "$t" in
    weir | weir-base | weir-nospool | weir-rules | weir-tail | weir-policy | weir-spanmetrics | weir-full | rotel | kafka) ;;
    weir-linger[0-9]* | kafka-linger[0-9]*) [[ "$t" =~ ^(weir-linger[0-9]+(-inflight[1-5])?|kafka-linger[0-9]+)$ ]] || die "BENCH_TARGETS: '$t' is not weir-lingerN, weir-lingerN-inflightM (M 1 to 5) or kafka-lingerN" ;;
    *) die "BENCH_TARGETS: unknown gateway '$t' (weir, weir-base, weir-nospool, weir-rules, weir-tail, weir-policy, weir-spanmetrics, weir-full, weir-lingerN[-inflightM], rotel, kafka, kafka-lingerN)" ;;
  esac
done
for l in "${LOADS[@]}"; do
  case "$l" in closed | open) ;; *) die "BENCH_LOADS: unknown load '$l' (closed, open)" ;; esac
done
# Rotel's OTLP receivers take gzip but not zstd (it answers zstd gRPC requests with
# UNIMPLEMENTED), so a zstd run has nothing to compare and measures Weir alone.
if [ "$TRANSPORT" = grpc-zstd ] && [[ " ${TARGETS[*]} " == *" rotel "* ]]; then
  log "BENCH_TRANSPORT=grpc-zstd: Rotel does not accept zstd; it is left out of this run"
  kept=()
  for t in "${TARGETS[@]}"; do [ "$t" = rotel ] || kept+=("$t"); done
  TARGETS=("${kept[@]}")
  [ "${#TARGETS[@]}" -gt 0 ] || die "BENCH_TRANSPORT=grpc-zstd leaves no target to run"
fi
for v in DURATION ROUNDS WARMUP CONCURRENCY LATENCY_SENDERS SPANS_PER_REQUEST SPANS_PER_TRACE ATTRIBUTES MAX_REQUESTS PARTITIONS MAX_MESSAGE; do
  [[ "${!v}" =~ ^[0-9]+$ ]] && [ "${!v}" -gt 0 ] || die "BENCH_$v must be a positive integer, got '${!v}'"
done
has_target() { [[ " ${TARGETS[*]} " == *" $1 "* ]]; }
# Whether a target runs weir-gateway from BIN_DIR, and whether it is a bare producer.
is_weir() { [[ "$1" == weir* && "$1" != weir-base ]]; }
is_kafka() { [[ "$1" == kafka || "$1" == kafka-linger* ]]; }
has_load() { [[ " ${LOADS[*]} " == *" $1 "* ]]; }
needs_gateway() {
  local t
  for t in "${TARGETS[@]}"; do is_weir "$t" && return 0; done
  return 1
}

ensure_build_deps
ensure_tansu
ensure_venv "rotel==$ROTEL_VERSION"
PY="$WEIR_VENV/bin/python"

if [ "${BENCH_SKIP_BUILD:-0}" != 1 ]; then
  packages=(-p weir-loadgen)
  needs_gateway && packages+=(-p weir-gateway)
  log "building ${packages[*]} (release)"
  cargo build --release "${packages[@]}" >&2 || die "cargo build --release ${packages[*]} failed"
fi
LOADGEN="$BIN_DIR/weir-loadgen"
GATEWAY="$BIN_DIR/weir-gateway"
[ -x "$LOADGEN" ] || die "$LOADGEN is missing"
if needs_gateway; then [ -x "$GATEWAY" ] || die "$GATEWAY is missing"; fi
ROTEL="$("$PY" -c 'import os, rotel; print(os.path.join(os.path.dirname(rotel.__file__), "rotel-agent"))')"
if has_target rotel; then [ -x "$ROTEL" ] || die "rotel-agent not found in the venv ($ROTEL)"; fi

LOADAVG_BEFORE="$(cut -d' ' -f1-3 /proc/loadavg)"
RUN_DIR="$(mktemp -d "${TMPDIR:-/tmp}/weir-bench.XXXXXX")"
RESULTS="$RUN_DIR/results"
mkdir -p "$RESULTS"
STARTED_PIDFILES=()

cleanup() {
  local rc=$?
  trap - EXIT INT TERM
  local p
  for p in "${STARTED_PIDFILES[@]}"; do stop_pidfile "$p"; done
  if [ "$rc" -eq 0 ] && [ "${BENCH_KEEP:-0}" != 1 ]; then
    rm -rf "$RUN_DIR"
  else
    log "run directory kept: $RUN_DIR"
  fi
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# json_get FILE KEY: one top-level value of a JSON file.
json_get() { "$PY" -c 'import json, sys; print(json.load(open(sys.argv[1]))[sys.argv[2]])' "$1" "$2"; }

# utime + stime of a process, in clock ticks (fields 14 and 15 of /proc/PID/stat, counted
# after the command name, which may hold spaces).
cpu_ticks() {
  local stat rest f
  stat="$(cat "/proc/$1/stat")" || return 1
  rest="${stat##*) }"
  read -r -a f <<<"$rest"
  echo $((f[11] + f[12]))
}

peak_rss_kb() { awk '/^VmHWM:/ { print $2 }' "/proc/$1/status"; }

if port_in_use "$BROKER_PORT"; then
  BROKER_PORT="$(free_ports 1)"
  log "port ${BENCH_BROKER_PORT:-19192} is taken; the broker uses $BROKER_PORT"
fi
log "run directory: $RUN_DIR"
STARTED_PIDFILES+=("$RUN_DIR/tansu.pid")
# A broker for the runs ahead: one for all, or (BENCH_FRESH_BROKER=1) a new one per run.
broker_up() {
  if [ ! -s "$RUN_DIR/tansu.pid" ]; then
    start_tansu "$BROKER_PORT" "$RUN_DIR/tansu.pid" "$RUN_DIR/tansu.log"
  fi
}
broker_done() {
  if [ "$FRESH_BROKER" = 1 ]; then stop_pidfile "$RUN_DIR/tansu.pid"; fi
}
log "tansu on 127.0.0.1:$BROKER_PORT ($([ "$FRESH_BROKER" = 1 ] && echo "a fresh one per run" || echo "one for all runs"))"
broker_up

# The request shape; the transport comes first (TRANSPORT_ARGS for the gateways, the
# bare producer's own for the kafka targets: see start_gateway's LOAD_ARGS).
SHAPE_ARGS=(--spans-per-request "$SPANS_PER_REQUEST" --spans-per-trace "$SPANS_PER_TRACE"
  --attributes "$ATTRIBUTES" --services 5 --json)
LOAD_SHAPE=("${TRANSPORT_ARGS[@]}" "${SHAPE_ARGS[@]}")

# Rotel batches by span count: size its batches so that one fits in a Kafka record.
DRY_RUN="$("$LOADGEN" --transport grpc "${SHAPE_ARGS[@]}" --dry-run)"
BYTES_PER_SPAN="$(echo "$DRY_RUN" | "$PY" -c 'import json, sys; print(json.load(sys.stdin)["bytes_per_span"])')"
RECORD_BYTES="$(echo "$DRY_RUN" | "$PY" -c 'import json, sys; print(json.load(sys.stdin)["mean_trace_record_bytes"])')"
ROTEL_BATCH="${BENCH_ROTEL_BATCH:-$("$PY" -c "print(max(1, int($MAX_MESSAGE * 0.8 / $BYTES_PER_SPAN)))")}"

# Starts gateway $1 producing to topic $2; sets GW_PIDFILE, GW_LOG, GW_ENDPOINT (where the
# load goes) and LOAD_ARGS (weir-loadgen's arguments but the endpoint and the load's own). The
# kafka targets start nothing: GW_PIDFILE is empty and the load is the bare producer.
start_gateway() {
  local gateway="$1" topic="$2" name="$1-$3" grpc_port http_port admin_port i
  read -r grpc_port http_port admin_port <<<"$(free_ports 3)"
  GW_PIDFILE="$RUN_DIR/$name.pid"
  GW_LOG="$RUN_DIR/$name.log"
  GW_ENDPOINT="http://127.0.0.1:$grpc_port"
  [ "$TRANSPORT" = http ] && GW_ENDPOINT="http://127.0.0.1:$http_port"
  LOAD_ARGS=("${LOAD_SHAPE[@]}")
  if is_kafka "$gateway"; then
    local linger=0
    [ "$gateway" = kafka ] || linger="${gateway#kafka-linger}"
    GW_PIDFILE=""
    GW_ENDPOINT="127.0.0.1:$BROKER_PORT"
    LOAD_ARGS=(--transport kafka --kafka-topic "$topic" --kafka-linger-ms "$linger" "${SHAPE_ARGS[@]}")
    return 0
  fi
  STARTED_PIDFILES+=("$GW_PIDFILE")
  case "$gateway" in
    weir | weir-base | weir-nospool | weir-rules | weir-tail | weir-policy | weir-spanmetrics | weir-full | weir-linger*)
      local policy="" binary="$GATEWAY" linger=""
      if [[ "$gateway" =~ ^weir-linger([0-9]+)(-inflight([0-9]+))?$ ]]; then
        linger="  linger: ${BASH_REMATCH[1]}ms"
        [ -z "${BASH_REMATCH[3]}" ] || linger+=$'\n'"  max_in_flight: ${BASH_REMATCH[3]}"
      fi
      if [ "$gateway" = weir-base ]; then
        binary="${BENCH_BASE_BIN:?weir-base needs BENCH_BASE_BIN, a weir-gateway built from another commit}"
      fi
      if [ "$gateway" = weir-rules ]; then
        write_rules_policy "$RUN_DIR/$name.policy.yaml" "$topic"
        policy="policy_file: $RUN_DIR/$name.policy.yaml"
      fi
      if [ "$gateway" = weir-policy ]; then
        echo "version: 1" >"$RUN_DIR/$name.policy.yaml"
        policy="policy_file: $RUN_DIR/$name.policy.yaml"
      fi
      if [ "$gateway" = weir-spanmetrics ]; then
        create_topics "$BROKER_PORT" 1 "${topic}_span_metrics"
        printf 'version: 1\nspan_metrics:\n  enabled: true\n  topic: %s\n' "${topic}_span_metrics" >"$RUN_DIR/$name.policy.yaml"
        policy="policy_file: $RUN_DIR/$name.policy.yaml"
      fi
      if [ "$gateway" = weir-tail ] || [ "$gateway" = weir-full ]; then
        if [ "$gateway" = weir-full ]; then
          write_full_policy "$RUN_DIR/$name.policy.yaml" "$topic"
        else
          write_tail_policy "$RUN_DIR/$name.policy.yaml"
        fi
        create_topics "$BROKER_PORT" 1 "${topic}_decisions"
        policy="policy_file: $RUN_DIR/$name.policy.yaml
tail:
  decisions_topic: ${topic}_decisions"
      fi
      cat >"$RUN_DIR/$name.yaml" <<EOF
receivers:
  grpc:
    endpoint: "127.0.0.1:$grpc_port"
  http:
    endpoint: "127.0.0.1:$http_port"
kafka:
  brokers: ["127.0.0.1:$BROKER_PORT"]
  traces:
    topic: $topic
  max_message_size: $MAX_MESSAGE
$linger
admin:
  endpoint: "127.0.0.1:$admin_port"
$policy
EOF
      # A spool directory of its own (two gateways run at once in paired mode); a base
      # binary from before the spool existed takes no such key.
      if [ "$gateway" = weir-nospool ]; then
        printf 'spool:\n  enabled: false\n' >>"$RUN_DIR/$name.yaml"
      elif [ "$gateway" != weir-base ] || [ "${BENCH_BASE_SPOOL:-0}" = 1 ]; then
        printf 'spool:\n  directory: %s\n' "$RUN_DIR/$name.spool" >>"$RUN_DIR/$name.yaml"
      fi
      "$binary" --config "$RUN_DIR/$name.yaml" >"$GW_LOG" 2>&1 &
      echo $! >"$GW_PIDFILE"
      for ((i = 0; i < 300; i++)); do
        kill -0 "$(cat "$GW_PIDFILE")" 2>/dev/null || break
        [ "$(http_status "$admin_port" /readyz)" = "200" ] && return 0
        sleep 0.1
      done
      ;;
    rotel)
      # acks=all like Weir (Rotel's default is one); metrics and logs receivers are off.
      "$ROTEL" start \
        --otlp-grpc-endpoint "127.0.0.1:$grpc_port" --otlp-http-endpoint "127.0.0.1:$http_port" \
        --otlp-receiver-metrics-disabled --otlp-receiver-logs-disabled \
        --exporter kafka --kafka-exporter-brokers "127.0.0.1:$BROKER_PORT" \
        --kafka-exporter-traces-topic "$topic" --kafka-exporter-acks all \
        --kafka-exporter-max-message-bytes "$MAX_MESSAGE" --traces-batch-max-size "$ROTEL_BATCH" \
        --pid-file "$RUN_DIR/$name.agent.pid" --log-file "$RUN_DIR/$name.agent.log" \
        >"$GW_LOG" 2>&1 &
      echo $! >"$GW_PIDFILE"
      wait_port 127.0.0.1 "$grpc_port" 30 && kill -0 "$(cat "$GW_PIDFILE")" 2>/dev/null && return 0
      ;;
  esac
  tail -n 30 "$GW_LOG" >&2 || true
  die "$gateway did not become ready in 30 s (log above, full log: $GW_LOG)"
}

# run_one GATEWAY LOAD ROUND LOADGEN-ARGS...: one measured run into its own topic.
run_one() {
  local gateway="$1" load="$2" round="$3"
  shift 3
  local out="$RESULTS/$gateway-$load/round-$round" topic="bench_${gateway//-/_}_${load}_$round" pid="" before after rss
  mkdir -p "$out"
  broker_up
  create_topics "$BROKER_PORT" "$PARTITIONS" "$topic"
  start_gateway "$gateway" "$topic" "$load"
  [ -z "$GW_PIDFILE" ] || pid="$(cat "$GW_PIDFILE")"

  log "$gateway $load: warm-up ${WARMUP}s"
  timeout $((WARMUP + 60)) "$LOADGEN" "${LOAD_ARGS[@]}" --endpoint "$GW_ENDPOINT" \
    --concurrency 2 --duration "$WARMUP" --requests "$MAX_REQUESTS" >"$out/warmup.json" \
    || die "$gateway $load: the warm-up failed"

  log "$gateway $load: ${DURATION}s, $*"
  if [ -n "$pid" ]; then before="$(cpu_ticks "$pid")" || die "$gateway exited (log: $GW_LOG)"; fi
  timeout $((DURATION + 90)) "$LOADGEN" "${LOAD_ARGS[@]}" --endpoint "$GW_ENDPOINT" \
    --duration "$DURATION" --requests "$MAX_REQUESTS" "$@" >"$out/loadgen.json" \
    || die "$gateway $load: weir-loadgen failed"
  if [ -n "$pid" ]; then
    sleep "$SETTLE"
    after="$(cpu_ticks "$pid")" || die "$gateway exited during the run (log: $GW_LOG)"
    rss="$(peak_rss_kb "$pid")"
    stop_pidfile "$GW_PIDFILE"

    local size_errors error_lines
    size_errors="$(grep -c 'MessageSizeTooLarge' "$GW_LOG" || true)"
    error_lines="$(grep -c 'ERROR' "$GW_LOG" || true)"
    printf '{"cpu_ticks": %d, "clk_tck": %d, "vmhwm_kb": %d, "size_errors": %d, "error_lines": %d}\n' \
      "$((after - before))" "$(getconf CLK_TCK)" "$rss" "$size_errors" "$error_lines" >"$out/proc.json"
  else
    # A bare producer: no gateway process to measure.
    echo '{"cpu_ticks": null, "clk_tck": null, "vmhwm_kb": null}' >"$out/proc.json"
  fi

  log "$gateway $load: counting spans in Kafka topic $topic"
  "$PY" "$WEIR_ROOT/scripts/bench/count_spans.py" --broker "127.0.0.1:$BROKER_PORT" --topic "$topic" \
    --idle "$COUNT_IDLE" --max-seconds "$COUNT_MAX" >"$out/kafka.json" \
    || die "$gateway $load: counting the spans in Kafka failed"
  log "$gateway $load (round $round): $(json_get "$out/loadgen.json" spans_per_second) spans/s acknowledged;" \
    "$(json_get "$out/kafka.json" spans) spans in Kafka"
  broker_done
}

# The targets in round $1's order: as listed in odd rounds, reversed in even ones.
round_order() {
  local i
  if (($1 % 2 == 1)); then
    printf '%s\n' "${TARGETS[@]}"
  else
    for ((i = ${#TARGETS[@]} - 1; i >= 0; i--)); do printf '%s\n' "${TARGETS[$i]}"; done
  fi
}

# paired_round A B ROUND: A and B at once, each under its own open-loop weir-loadgen.
paired_round() {
  local a="$1" b="$2" round="$3" side gateway topic pid out
  local -A pids pidfiles endpoints before after
  broker_up
  for side in a b; do
    if [ "$side" = a ]; then gateway="$a"; else gateway="$b"; fi
    topic="bench_paired_${round}_$side"
    create_topics "$BROKER_PORT" "$PARTITIONS" "$topic"
    start_gateway "$gateway" "$topic" "paired-$round-$side"
    pidfiles[$side]="$GW_PIDFILE"
    pids[$side]="$(cat "$GW_PIDFILE")"
    endpoints[$side]="$GW_ENDPOINT"
    mkdir -p "$RESULTS/paired/round-$round/$side"
    echo "$gateway" >"$RESULTS/paired/round-$round/$side/gateway"
  done
  log "round $round: $a and $b warm up together (${WARMUP}s)"
  local loads=()
  for side in a b; do
    timeout $((WARMUP + 60)) "$LOADGEN" "${LOAD_SHAPE[@]}" --endpoint "${endpoints[$side]}" \
      --concurrency 2 --duration "$WARMUP" --requests "$MAX_REQUESTS" >/dev/null &
    loads+=($!)
  done
  # Only the load generators: the gateways and the broker are children too.
  for pid in "${loads[@]}"; do wait "$pid" || die "round $round: a warm-up failed"; done
  for side in a b; do before[$side]="$(cpu_ticks "${pids[$side]}")" || die "$side exited"; done
  log "round $round: $a and $b at $PAIRED_RATE spans/s each, ${DURATION}s"
  loads=()
  for side in a b; do
    out="$RESULTS/paired/round-$round/$side"
    timeout $((DURATION + 90)) "$LOADGEN" "${LOAD_SHAPE[@]}" --endpoint "${endpoints[$side]}" \
      --duration "$DURATION" --requests "$MAX_REQUESTS" --rate "$PAIRED_RATE" >"$out/loadgen.json" &
    loads+=($!)
  done
  for pid in "${loads[@]}"; do wait "$pid" || die "round $round: weir-loadgen failed"; done
  sleep "$SETTLE"
  for side in a b; do
    after[$side]="$(cpu_ticks "${pids[$side]}")" || die "$side exited during the run"
    out="$RESULTS/paired/round-$round/$side"
    printf '{"cpu_ticks": %d, "clk_tck": %d, "vmhwm_kb": %d}\n' \
      "$((after[$side] - before[$side]))" "$(getconf CLK_TCK)" "$(peak_rss_kb "${pids[$side]}")" >"$out/proc.json"
    stop_pidfile "${pidfiles[$side]}"
  done
  broker_done
}

if [ -n "${BENCH_PAIRED:-}" ]; then
  read -r -a PAIR <<<"$BENCH_PAIRED"
  [ "${#PAIR[@]}" = 2 ] || die "BENCH_PAIRED takes two gateways, e.g. \"weir weir-rules\""
  for t in "${PAIR[@]}"; do
    ! is_kafka "$t" || die "BENCH_PAIRED compares gateways' CPU; '$t' has no gateway process"
  done
  PAIRED_RATE="${BENCH_PAIRED_RATE:-60000}"
  [ -n "${BENCH_ROUNDS:-}" ] || ROUNDS=5
  for ((round = 1; round <= ROUNDS; round++)); do
    paired_round "${PAIR[0]}" "${PAIR[1]}" "$round"
  done
  command=""
  for v in $(compgen -e | grep '^BENCH_' | sort); do if [[ "${!v}" == *" "* ]]; then command+="$v=\"${!v}\" "; else command+="$v=${!v} "; fi; done
  command+="scripts/bench.sh"
  paired_args=(--command "$command" --rate "$PAIRED_RATE" --duration "$DURATION" --transport "$TRANSPORT_NAME"
    --loadavg "$LOADAVG_BEFORE before, $(cut -d' ' -f1-3 /proc/loadavg) after"
    --versions "weir-gateway and weir-loadgen at $(git describe --always --dirty 2>/dev/null || echo 'an uncommitted tree'), $("$TANSU_BIN" --version) (memory engine, $PARTITIONS partitions, a fresh broker per round)")
  [ "${BENCH_RECORD:-1}" = 1 ] && paired_args+=(--append "$WEIR_ROOT/docs/benchmarks-log.md")
  "$PY" "$WEIR_ROOT/scripts/bench/paired_report.py" "$RESULTS/paired" "${paired_args[@]}"
  exit 0
fi

# run_rounds LOAD LOADGEN-ARGS...: every target under LOAD, BENCH_ROUNDS times.
run_rounds() {
  local load="$1" round gateway
  shift
  for ((round = 1; round <= ROUNDS; round++)); do
    for gateway in $(round_order "$round"); do
      run_one "$gateway" "$load" "$round" "$@"
    done
  done
}

if [ "$LATENCY" = 1 ]; then
  LOADS=(latency)
  run_rounds latency --concurrency "$LATENCY_SENDERS"
elif has_load closed; then
  run_rounds closed --concurrency "$CONCURRENCY"
fi

OPEN_RATE=""
if ! has_load open; then
  :
elif [ -n "${BENCH_OPEN_RATE:-}" ]; then
  OPEN_RATE="$BENCH_OPEN_RATE"
else
  has_load closed || die "BENCH_LOADS without closed needs BENCH_OPEN_RATE"
  # Rotel's pace when it runs, else Weir's, else the first target's.
  base="${TARGETS[0]}"
  has_target weir && base="weir"
  has_target rotel && base="rotel"
  OPEN_RATE="$("$PY" -c "print(int($(json_get "$RESULTS/$base-closed/round-1/loadgen.json" spans_per_second) / 2))")"
  log "open loop at $OPEN_RATE spans/s (half of $base's closed-loop spans/s)"
fi
if has_load open; then
  run_rounds open --rate "$OPEN_RATE"
fi

command=""
for v in $(compgen -e | grep '^BENCH_' | sort); do if [[ "${!v}" == *" "* ]]; then command+="$v=\"${!v}\" "; else command+="$v=${!v} "; fi; done
command+="scripts/bench.sh"
versions="weir-loadgen and scripts at $(git describe --always --dirty 2>/dev/null || echo 'an uncommitted tree')"
needs_gateway && versions+=", weir-gateway from the same tree (acks=all)"
has_target rotel && versions+=", $("$ROTEL" --version) (PyPI rotel $ROTEL_VERSION, batch $ROTEL_BATCH spans, acks=all)"
{ has_target kafka || [[ " ${TARGETS[*]} " == *" kafka-linger"* ]]; } && versions+=", the bare producer: weir-loadgen --transport kafka (librdkafka from rdkafka-sys, acks=all, idempotent; ~${RECORD_BYTES%.*}-byte records, one per trace)"
versions+=", $("$TANSU_BIN" --version) (memory engine, $PARTITIONS partitions)"
settings="$TRANSPORT_NAME, $SPANS_PER_REQUEST spans/request, $SPANS_PER_TRACE spans/trace, $ATTRIBUTES attributes/span"
settings+=" (~${BYTES_PER_SPAN%.*} bytes/span uncompressed), ${DURATION}s per run after ${WARMUP}s warm-up;"
if [ "$LATENCY" = 1 ]; then
  settings+=" closed loop $LATENCY_SENDERS senders;"
else
  has_load closed && settings+=" closed loop $CONCURRENCY senders;"
  has_load open && settings+=" open loop $OPEN_RATE spans/s;"
fi
settings+=" $ROUNDS round(s), every other one in reverse order;"
settings+=" $([ "$FRESH_BROKER" = 1 ] && echo "a fresh broker per run" || echo "one broker for all runs")"

report_args=(--command "$command" --versions "$versions" --settings "$settings" --transport "$TRANSPORT_NAME"
  --loadavg "$LOADAVG_BEFORE before, $(cut -d' ' -f1-3 /proc/loadavg) after")
if [ "${BENCH_RECORD:-1}" = 1 ]; then
  doc="$WEIR_ROOT/docs/benchmarks-log.md"
  if [ ! -f "$doc" ]; then
    cat >"$doc" <<'EOF'
# Benchmarks

Results of `scripts/bench.sh`, newest last. Each run sends the same OTLP load from
`weir-loadgen` to one gateway at a time, producing to a local Tansu broker.

- acked spans/s: spans the gateway acknowledged, per second of the measured run.
- CPU-s per M spans: utime + stime of the gateway process alone over the measured run (and a
  few seconds after it, to include deferred exporting), per million acknowledged spans.
- peak RSS: VmHWM of the gateway process, read just before it is stopped.
- p50 / p99: request latency; closed loop from send to reply, open loop from the scheduled
  send time (so a stalled server cannot hide its stall; includes up to ~1 ms timer granularity).
- acked / counted in Kafka: acknowledged spans (warm-up included) against the spans an
  independent consumer (`scripts/bench/count_spans.py`, confluent-kafka + opentelemetry-proto)
  reads back from the run's own topic. Any difference is a loss or a duplicate.
EOF
  fi
  report_args+=(--append "$doc")
fi
echo
"$PY" "$WEIR_ROOT/scripts/bench/report.py" "$RESULTS" "${report_args[@]}"
[ "${BENCH_RECORD:-1}" = 1 ] && log "appended to docs/benchmarks-log.md"
exit 0
