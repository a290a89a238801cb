# Shared helpers for scripts/run.sh, scripts/test.sh and scripts/bench.sh.
# Source it; every function is idempotent and installs only what is missing.
# Heavy installs live outside the repository: Tansu in ~/.cargo/bin, the Python venv in
# $WEIR_VENV (default ~/.cache/weir/venv).

WEIR_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
WEIR_VENV="${WEIR_VENV:-$HOME/.cache/weir/venv}"
TANSU_VERSION="0.6.0"
TANSU_BIN="${TANSU_BIN:-$HOME/.cargo/bin/tansu}"
# Python packages the tests and benchmarks use, pinned so a venv is reproducible.
WEIR_PY_PACKAGES=(
  "pytest==9.2.0"
  "confluent-kafka==2.16.1"
  "opentelemetry-proto==1.45.2"
  "opentelemetry-sdk==1.45.2"
  "opentelemetry-exporter-otlp-proto-grpc==1.45.2"
  "opentelemetry-exporter-otlp-proto-http==1.45.2"
  "requests==2.34.2"
  "grpcio==1.85.1"
  "zstandard==0.25.0"
)

log() { printf '==> %s\n' "$*" >&2; }
die() { printf 'error: %s\n' "$*" >&2; exit 1; }

# Installs Tansu $TANSU_VERSION (the Kafka-compatible broker) unless that version is there.
ensure_tansu() {
  if [ -x "$TANSU_BIN" ] && "$TANSU_BIN" --version 2>/dev/null | grep -q "$TANSU_VERSION"; then
    return 0
  fi
  log "installing tansu $TANSU_VERSION into ~/.cargo/bin (about 8 minutes on two cores)"
  cargo install tansu --version "$TANSU_VERSION" --features dynostore --locked >&2 \
    || die "cargo install tansu failed"
}

# Creates the Python venv with the pinned packages (plus any given as arguments).
ensure_venv() {
  local want=("${WEIR_PY_PACKAGES[@]}" "$@")
  local stamp="$WEIR_VENV/.weir-packages"
  local wanted
  wanted="$(printf '%s\n' "${want[@]}" | sort)"
  if [ -x "$WEIR_VENV/bin/python" ] && [ -f "$stamp" ] && [ -z "$(comm -13 "$stamp" <(echo "$wanted"))" ]; then
    return 0
  fi
  log "preparing the Python venv in $WEIR_VENV"
  [ -x "$WEIR_VENV/bin/python" ] || python3 -m venv "$WEIR_VENV" || die "python3 -m venv failed"
  "$WEIR_VENV/bin/pip" install --quiet --disable-pip-version-check "${want[@]}" >&2 \
    || die "pip install failed"
  { [ -f "$stamp" ] && cat "$stamp"; echo "$wanted"; } | sort -u > "$stamp.new" && mv "$stamp.new" "$stamp"
}

# Installs Debian packages that are missing (build needs: a C compiler, pkg-config, OpenSSL
# and zlib headers for librdkafka).
ensure_apt() {
  local missing=()
  for p in "$@"; do
    dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
  done
  [ ${#missing[@]} -eq 0 ] && return 0
  log "apt-get install ${missing[*]}"
  local sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  $sudo apt-get update -qq >&2 && $sudo apt-get install -y -qq "${missing[@]}" >&2 \
    || die "apt-get install ${missing[*]} failed"
}

# Build prerequisites of the workspace.
ensure_build_deps() {
  ensure_apt build-essential pkg-config libssl-dev zlib1g-dev python3-venv
}

# Waits until host:port accepts TCP connections, at most $3 seconds (default 30).
wait_port() {
  local host="$1" port="$2" secs="${3:-30}" i
  for ((i = 0; i < secs * 10; i++)); do
    if (exec 3<>"/dev/tcp/$host/$port") 2>/dev/null; then return 0; fi
    sleep 0.1
  done
  return 1
}

# True when something accepts TCP connections on 127.0.0.1:$1.
port_in_use() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# The HTTP status of GET http://127.0.0.1:$1$2, or nothing (bash only: no curl needed).
http_status() (
  exec 3<>"/dev/tcp/127.0.0.1/$1" || exit 0
  printf 'GET %s HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n' "$2" >&3
  IFS=' ' read -r -t 2 _ code _ <&3 || true
  printf '%s' "${code:-}"
) 2>/dev/null

# Starts Tansu with the in-memory engine on 127.0.0.1:$1; writes its PID to $2; logs to $3.
start_tansu() {
  local port="$1" pidfile="$2" logfile="$3"
  env -u OTEL_EXPORTER_OTLP_ENDPOINT "$TANSU_BIN" broker --storage-engine memory://tansu/ \
    --listener-url "tcp://127.0.0.1:$port" \
    --advertised-listener-url "tcp://127.0.0.1:$port" >"$logfile" 2>&1 &
  echo $! >"$pidfile"
  wait_port 127.0.0.1 "$port" 30 || die "tansu did not listen on 127.0.0.1:$port (see $logfile)"
}

# Creates topics on the broker at 127.0.0.1:$1: create_topics PORT PARTITIONS NAME...
create_topics() {
  local port="$1" partitions="$2"
  shift 2
  local t
  for t in "$@"; do
    "$TANSU_BIN" topic create "$t" --partitions "$partitions" --broker "tcp://127.0.0.1:$port" >/dev/null 2>&1 \
      || log "topic $t: create failed (it may exist already)"
  done
}

# Stops the process whose PID is in $1 (TERM, then KILL after 10 s) and removes the file.
stop_pidfile() {
  local pidfile="$1" pid i
  [ -f "$pidfile" ] || return 0
  pid="$(cat "$pidfile")"
  if kill -0 "$pid" 2>/dev/null; then
    # A stopped (SIGSTOP) process acts on SIGTERM only once it runs again.
    kill -CONT "$pid" 2>/dev/null
    kill -TERM "$pid" 2>/dev/null
    for ((i = 0; i < 100; i++)); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -0 "$pid" 2>/dev/null && kill -KILL "$pid" 2>/dev/null
  fi
  rm -f "$pidfile"
}
