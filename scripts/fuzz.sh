#!/usr/bin/env bash
# Runs the fuzz targets of gateway/fuzz/ (cargo fuzz, libFuzzer) for a while each, over the
# committed seeds (gateway/fuzz/seeds/TARGET) and a working corpus that grows between runs
# (gateway/fuzz/corpus/TARGET, not committed). Exits non-zero when a target finds a crash (a
# panic, a sanitizer report, a timeout or an out-of-memory); the input is saved under
# gateway/fuzz/artifacts/TARGET/. docs/fuzzing.md says what each target checks.
#
#   scripts/fuzz.sh                  # every target, 60 s each
#   scripts/fuzz.sh -t 600 decompress otlp_json
#   WEIR_FUZZ_SECONDS=30 scripts/fuzz.sh
#
# Installs what it needs: cargo-fuzz (pinned) when missing; a nightly compiler through rustup
# when it can, else the stable one with RUSTC_BOOTSTRAP=1 (checked before use).
set -euo pipefail

# shellcheck source=scripts/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
cd "$WEIR_ROOT"

CARGO_FUZZ_VERSION="0.13.1"
FUZZ_DIR="gateway/fuzz"
SECONDS_PER_TARGET="${WEIR_FUZZ_SECONDS:-60}"
# No sanitizer by default: the targets are safe Rust, where libFuzzer finds panics, debug
# assertions, timeouts and memory blow-ups without one. AddressSanitizer
# (WEIR_FUZZ_SANITIZER=address) also instruments the C code that cc builds (zstd), which
# librdkafka's configure then cannot link against; docs/fuzzing.md has the details.
SANITIZER="${WEIR_FUZZ_SANITIZER:-none}"
# libFuzzer options: a slow input (10 s) or a large allocation (2 GiB) is a finding too.
LIBFUZZER_OPTS=(-timeout=10 -rss_limit_mb=2048 -max_len=65536 -print_final_stats=1)

usage() { sed -n '2,14p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; }

targets=()
while [ $# -gt 0 ]; do
  case "$1" in
    -t | --seconds)
      SECONDS_PER_TARGET="${2:?-t needs a number of seconds}"
      shift 2
      ;;
    -h | --help)
      usage
      exit 0
      ;;
    -*) die "unknown option $1 (see --help)" ;;
    *)
      targets+=("$1")
      shift
      ;;
  esac
done
case "$SECONDS_PER_TARGET" in
  '' | *[!0-9]*) die "seconds per target must be a whole number, got '$SECONDS_PER_TARGET'" ;;
esac

ensure_cargo_fuzz() {
  if cargo fuzz --version 2>/dev/null | grep -q "$CARGO_FUZZ_VERSION"; then
    return
  fi
  log "installing cargo-fuzz $CARGO_FUZZ_VERSION"
  cargo install cargo-fuzz --version "$CARGO_FUZZ_VERSION" --locked
}

# Sets TOOLCHAIN (a `+toolchain` argument for cargo, or empty) and exports RUSTC_BOOTSTRAP when
# the stable compiler has to stand in for a nightly one. Falls back from SANITIZER=address to
# `none` when the compiler cannot link AddressSanitizer.
choose_toolchain() {
  TOOLCHAIN=""
  # WEIR_FUZZ_NO_NIGHTLY=1 skips nightly, to try the stable fallback on a machine that has one.
  if [ "${WEIR_FUZZ_NO_NIGHTLY:-0}" != 1 ] && command -v rustup >/dev/null; then
    if rustup run nightly rustc --version >/dev/null 2>&1; then
      TOOLCHAIN="+nightly"
    else
      log "no nightly toolchain: trying rustup toolchain install nightly --profile minimal"
      if timeout 900 rustup toolchain install nightly --profile minimal >&2; then
        TOOLCHAIN="+nightly"
      else
        log "could not install a nightly toolchain; trying stable with RUSTC_BOOTSTRAP=1"
      fi
    fi
  fi
  local probe rustc=(rustc)
  probe="$(mktemp -d)"
  [ -n "$TOOLCHAIN" ] && rustc=(rustup run nightly rustc)
  if [ -z "$TOOLCHAIN" ]; then
    export RUSTC_BOOTSTRAP=1
  fi
  echo 'fn main() {}' >"$probe/probe.rs"
  if ! "${rustc[@]}" -Zunstable-options --edition 2024 -o "$probe/probe" "$probe/probe.rs" 2>"$probe/err"; then
    cat "$probe/err" >&2
    rm -rf "$probe"
    die "the compiler ($("${rustc[@]}" --version)) accepts no -Z flags: cargo fuzz needs a nightly toolchain or RUSTC_BOOTSTRAP=1"
  fi
  if [ "$SANITIZER" = address ] &&
    ! "${rustc[@]}" -Zsanitizer=address --edition 2024 -o "$probe/probe" "$probe/probe.rs" 2>"$probe/err"; then
    log "this compiler cannot link AddressSanitizer ($(head -1 "$probe/err")); fuzzing without it"
    SANITIZER=none
  fi
  rm -rf "$probe"
  log "fuzzing with $("${rustc[@]}" --version)${RUSTC_BOOTSTRAP:+ (RUSTC_BOOTSTRAP=1)}, sanitizer: $SANITIZER"
}

ensure_cargo_fuzz
choose_toolchain

all_targets=()
while IFS= read -r t; do all_targets+=("$t"); done < <(cargo $TOOLCHAIN fuzz list --fuzz-dir "$FUZZ_DIR")
[ ${#targets[@]} -eq 0 ] && targets=("${all_targets[@]}")
for t in "${targets[@]}"; do
  printf '%s\n' "${all_targets[@]}" | grep -qx "$t" || die "no fuzz target '$t' (there are: ${all_targets[*]})"
done

log "building the fuzz targets"
cargo $TOOLCHAIN fuzz build --fuzz-dir "$FUZZ_DIR" --sanitizer "$SANITIZER"
host="$(rustc -vV | sed -n 's/^host: //p')"
bin_dir="$FUZZ_DIR/target/$host/release"

failed=()
summary=()
for t in "${targets[@]}"; do
  corpus="$FUZZ_DIR/corpus/$t"
  seeds="$FUZZ_DIR/seeds/$t"
  mkdir -p "$corpus" "$FUZZ_DIR/artifacts/$t"
  [ -d "$seeds" ] || die "no seed corpus at $seeds"
  out="$FUZZ_DIR/artifacts/$t/last-run.log"
  log "fuzzing $t for ${SECONDS_PER_TARGET}s (log: $out)"
  rc=0
  # The binaries built above, run directly: `cargo fuzz run` would rebuild whenever a source
  # file changed since, and a run should test what was built. New inputs go to the first
  # corpus directory only, so the committed seeds stay as they are. -max_total_time bounds
  # the fuzzing; the timeout after it covers a run that hangs anyway.
  timeout --kill-after=30 $((SECONDS_PER_TARGET + 300)) \
    "$bin_dir/$t" -max_total_time="$SECONDS_PER_TARGET" "${LIBFUZZER_OPTS[@]}" \
    -artifact_prefix="$FUZZ_DIR/artifacts/$t/" "$corpus" "$seeds" >"$out" 2>&1 || rc=$?
  execs="$(sed -n 's/^stat::number_of_executed_units: *//p' "$out" | tail -1)"
  cov="$(grep -Eo 'cov: [0-9]+ ft: [0-9]+ corp: [0-9]+/[0-9a-zA-Z]+' "$out" | tail -1)"
  summary+=("$t: ${execs:-?} executions, ${cov:-no coverage line}, exit $rc")
  if [ "$rc" -ne 0 ]; then
    failed+=("$t")
    tail -n 60 "$out" >&2
    log "$t FAILED (exit $rc); the input is in $FUZZ_DIR/artifacts/$t/; reproduce with:"
    log "  $bin_dir/$t $FUZZ_DIR/artifacts/$t/<crash-file>"
  fi
done

printf '%s\n' "${summary[@]}"
if [ ${#failed[@]} -ne 0 ]; then
  printf 'FAILED: fuzz target %s\n' "${failed[@]}" >&2
  exit 1
fi
log "no crash in ${#targets[@]} target(s), ${SECONDS_PER_TARGET}s each"
