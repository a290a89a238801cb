#!/usr/bin/env bash
# Where the time of one open-loop rate goes, variant against variant: for each round and each
# variant, a fresh Tansu (memory engine, HALF_PARTITIONS partitions) and gateway, weir-loadgen
# at RATE spans/s (3 s warm-up, then DURATION s), then one line: the load generator's latency
# and its own send lateness, the CPU of the gateway, the broker and the generator, the
# distribution of weir_exporter_produce_latency_seconds from the gateway's /metrics, and CPU
# and voluntary context switches per gateway thread (tokio workers, librdkafka's broker
# thread, rdkafka's polling thread) with the time each spent runnable but waiting for a CPU
# (schedstat), and that wait summed over the gateway's and the broker's threads during the
# run. No span counting: bench.sh does that.
#
#   scripts/bench/half_load.sh ROUNDS RATE "label|gateway binary|kafka yaml lines|env" ...
#
# The kafka yaml lines go under `kafka:` as they are (`\n` for a new line), e.g.
#   'l1|target/release/weir-gateway|  linger: 1ms|'
#   'w1|target/release/weir-gateway||TOKIO_WORKER_THREADS=1'
#   'floor|kafka||'   (no gateway: weir-loadgen --transport kafka, the bare producer's floor)
# Env: HALF_DURATION (10), HALF_LOADGEN (target/release/weir-loadgen), HALF_PARTITIONS (4, of
# the topic), HALF_BROKER_DELAY_MS (0: when above 0, every byte to and from the broker goes
# through weir-delay-proxy, held that long each way, as a broker across a network would answer;
# HALF_DELAY_PROXY names the binary, by default beside the load generator),
# HALF_FLOOR_IN_FLIGHT (1: the floor producer's requests in flight).
set -euo pipefail
# shellcheck source=scripts/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/../lib.sh"
bench_lock "$@"
cd "$WEIR_ROOT"
[ $# -ge 3 ] || die "usage: $0 ROUNDS RATE 'label|gateway|kafka yaml|env' ..."
ROUNDS="$1" RATE="$2"
shift 2
DURATION="${HALF_DURATION:-10}"
LOADGEN="${HALF_LOADGEN:-$WEIR_ROOT/target/release/weir-loadgen}"
DELAY_PROXY="${HALF_DELAY_PROXY:-$(dirname "$LOADGEN")/weir-delay-proxy}"
PARTITIONS="${HALF_PARTITIONS:-4}"
BROKER_DELAY_MS="${HALF_BROKER_DELAY_MS:-0}"
FLOOR_IN_FLIGHT="${HALF_FLOOR_IN_FLIGHT:-1}"
ensure_tansu

cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
# Nanoseconds the threads of process $1 spent runnable but waiting for a CPU (schedstat).
runq_ns() { cat /proc/"$1"/task/*/schedstat 2>/dev/null | awk '{s += $2} END {printf "%.0f", s}'; }

one_run() {
  local label="$1" gateway="$2" kafka_extra="$3" run_env="$4" d
  d="$(mktemp -d "${TMPDIR:-/tmp}/weir-half.XXXXXX")"
  read -r broker grpc http admin proxied < <(free_ports 5)
  # Clients reach the broker at $proxied: through the delay proxy, or the broker itself.
  [ "$BROKER_DELAY_MS" -gt 0 ] || proxied="$broker"
  start_tansu "$broker" "$d/tansu.pid" "$d/tansu.log" "$proxied"
  if [ "$BROKER_DELAY_MS" -gt 0 ]; then
    "$DELAY_PROXY" --listen "127.0.0.1:$proxied" --upstream "127.0.0.1:$broker" \
      --delay-ms "$BROKER_DELAY_MS" >"$d/proxy.log" 2>&1 &
    echo $! >"$d/proxy.pid"
    wait_port 127.0.0.1 "$proxied" 30 || die "the delay proxy did not listen (see $d/proxy.log)"
  fi
  create_topics "$broker" "$PARTITIONS" half
  local gw="" tansu target
  tansu="$(cat "$d/tansu.pid")"
  target=(--endpoint "http://127.0.0.1:$grpc")
  if [ "$gateway" = kafka ]; then
    # The floor: no gateway; a bare producer sends the same records to the same broker.
    target=(--transport kafka --endpoint "127.0.0.1:$proxied" --kafka-topic half \
      --kafka-max-in-flight "$FLOOR_IN_FLIGHT")
  else
    cat >"$d/gateway.yaml" <<YAML
receivers:
  grpc:
    endpoint: "127.0.0.1:$grpc"
  http:
    endpoint: "127.0.0.1:$http"
kafka:
  brokers: ["127.0.0.1:$proxied"]
  traces:
    topic: half
  max_message_size: 1000000
$(printf '%b' "$kafka_extra")
admin:
  endpoint: "127.0.0.1:$admin"
spool:
  directory: $d/spool
YAML
    # shellcheck disable=SC2086 # run_env is a list of NAME=value words
    env $run_env "$gateway" --config "$d/gateway.yaml" >"$d/gateway.log" 2>&1 &
    echo $! >"$d/gateway.pid"
    gw="$(cat "$d/gateway.pid")"
    wait_port 127.0.0.1 "$grpc" 30 || die "the gateway did not listen (see $d/gateway.log)"
    local i
    for ((i = 0; i < 100; i++)); do [ "$(http_status "$admin" /readyz)" = 200 ] && break; sleep 0.1; done
  fi
  "$LOADGEN" "${target[@]}" --rate "$RATE" --duration 3 >/dev/null 2>&1 || true
  local g0 t0 g1 t1
  local q0=0 q1=0 r0 r1
  g0=0 g1=0
  [ -z "$gw" ] || { g0="$(cpu_ticks "$gw")" q0="$(runq_ns "$gw")"; }
  t0="$(cpu_ticks "$tansu")" r0="$(runq_ns "$tansu")"
  local p0=0 p1=0
  [ ! -f "$d/proxy.pid" ] || p0="$(cpu_ticks "$(cat "$d/proxy.pid")")"
  [ -z "$gw" ] || curl -s "http://127.0.0.1:$admin/metrics" >"$d/metrics-before"
  timeout $((DURATION + 60)) "$LOADGEN" "${target[@]}" --rate "$RATE" \
    --duration "$DURATION" --json >"$d/loadgen.json" 2>"$d/loadgen.log" || true
  [ -z "$gw" ] || curl -s "http://127.0.0.1:$admin/metrics" >"$d/metrics-after"
  [ -z "$gw" ] || { g1="$(cpu_ticks "$gw")" q1="$(runq_ns "$gw")"; }
  t1="$(cpu_ticks "$tansu")" r1="$(runq_ns "$tansu")"
  [ ! -f "$d/proxy.pid" ] || p1="$(cpu_ticks "$(cat "$d/proxy.pid")")"
  python3 - "$d" "$gw" "$label" "$((g1 - g0))" "$((t1 - t0))" "$(getconf CLK_TCK)" \
    "$((q1 - q0))" "$((r1 - r0))" "$((p1 - p0))" <<'PY'
import collections, json, os, re, sys
d, pid, label = sys.argv[1:4]
gw, tansu, hz, gw_wait, tansu_wait, proxy = map(int, sys.argv[4:10])
lg = json.load(open(f"{d}/loadgen.json"))
lat, late = lg["latency_ms"], lg.get("send_lateness_ms") or {}
def buckets(path):
    out = {}
    if not os.path.exists(path):
        return out
    for line in open(path):
        m = re.match(r'weir_exporter_produce_latency_seconds_bucket\{.*le="([^"]+)".*\} (\S+)', line)
        if m:
            out[m.group(1)] = float(m.group(2))
    return out
a, b = buckets(f"{d}/metrics-before"), buckets(f"{d}/metrics-after")
total = b.get("+Inf", 0) - a.get("+Inf", 0)
produce = " ".join(f"<={float(k) * 1000:g}ms {(b[k] - a.get(k, 0)) / total:.2f}"
                   for k in ("0.001", "0.0025", "0.005", "0.01") if total and k in b)
cpu, switches, waits = collections.Counter(), collections.Counter(), collections.Counter()
for tid in os.listdir(f"/proc/{pid}/task") if pid else []:
    try:
        stat = open(f"/proc/{pid}/task/{tid}/stat").read()
        name = stat[stat.index("(") + 1:stat.rindex(")")].replace(" ", "_")
        fields = stat[stat.rindex(")") + 2:].split()
        cpu[name] += int(fields[11]) + int(fields[12])
        for line in open(f"/proc/{pid}/task/{tid}/status"):
            if line.startswith("voluntary_ctxt"):
                switches[name] += int(line.split()[1])
        # schedstat: time on the CPU, time waiting on a run queue (ns), time slices.
        waits[name] += int(open(f"/proc/{pid}/task/{tid}/schedstat").read().split()[1])
    except (OSError, IndexError, ValueError):
        pass
threads = " ".join(f"{k}={cpu[k] / hz:.2f}s/{switches[k]}cs/{waits[k] / 1e9:.2f}s-runq"
                   for k in sorted(cpu) if cpu[k])
proxy_cpu = f" delay proxy {proxy / hz:.2f}" if proxy else ""
print(f"{label}: {lg['spans_per_second']:,.0f} spans/s, p50 {lat['p50']} p99 {lat['p99']} ms "
      f"(send lateness p50 {late.get('p50')} p99 {late.get('p99')}); CPU s: gateway {gw / hz:.2f} "
      f"broker {tansu / hz:.2f} loadgen {lg.get('loadgen_cpu_seconds') or 0:.2f}{proxy_cpu}; "
      f"waiting for a CPU s: gateway {gw_wait / 1e9:.2f} broker {tansu_wait / 1e9:.2f}; "
      f"produce {produce}; "
      f"threads since start (CPU/voluntary switches/waiting for a CPU) {threads}")
PY
  [ -z "$gw" ] || stop_pidfile "$d/gateway.pid"
  stop_pidfile "$d/tansu.pid"
  stop_pidfile "$d/proxy.pid"
  rm -rf "$d"
}

for ((round = 1; round <= ROUNDS; round++)); do
  for variant in "$@"; do
    IFS='|' read -r label gateway kafka_extra run_env <<<"$variant"
    printf '[round %d] ' "$round"
    one_run "$label" "$gateway" "$kafka_extra" "$run_env"
  done
done
