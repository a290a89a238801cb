#!/usr/bin/env bash
# Everything CI checks, on a fresh machine or a used one: installs what the tests need (build
# packages, Tansu, the Python venv), builds the workspace, then runs rustfmt, clippy, the Rust
# tests, a fuzz smoke run (scripts/fuzz.sh, WEIR_FUZZ_SECONDS per target, default 60) and the
# black-box integration suite (integration-tests/, pytest). Every step runs even
# when an earlier one failed (except the integration suite, which needs the build); the exit
# status is non-zero if any step failed.
#
#   scripts/test.sh                 # all of it
#   scripts/test.sh -k splitting    # extra arguments go to pytest
set -euo pipefail

# shellcheck source=scripts/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
cd "$WEIR_ROOT"

# A bound on the integration suite, so a hung test cannot eat CI's whole budget.
PYTEST_TIMEOUT_S="${WEIR_PYTEST_TIMEOUT_S:-1500}"

failed=()
started=$SECONDS

step() {
  local name="$1" t0=$SECONDS rc=0
  shift
  log "$name"
  "$@" || rc=$?
  if [ "$rc" -ne 0 ]; then
    failed+=("$name (exit $rc)")
    log "$name: FAILED (exit $rc, $((SECONDS - t0)) s)"
  else
    log "$name: ok ($((SECONDS - t0)) s)"
  fi
  return "$rc"
}

ensure_build_deps
ensure_tansu
ensure_venv
ensure_helm
ensure_postgres
ensure_chromium

built=1
step "cargo build" cargo build --workspace --bins || built=0
step "cargo fmt --check" cargo fmt --all -- --check || true
step "cargo clippy" cargo clippy --workspace --all-targets -- -D warnings || true
# A throwaway PostgreSQL cluster for the control plane's storage tests (WEIR_TEST_POSTGRES_DSN).
step "cargo test" with_postgres cargo test --workspace || true

# The container images, from the debug binaries built above (a release build would take 10-20
# minutes more on two cores): integration-tests/test_image.py unpacks them and runs their
# entrypoints. scripts/image.sh without WEIR_IMAGE_PROFILE builds the release images to ship.
if [ "$built" -eq 1 ]; then
  step "container images (debug binaries)" env WEIR_IMAGE_PROFILE=dev scripts/image.sh || true
fi

if [ "$built" -eq 1 ]; then
  export WEIR_GATEWAY_BIN="${WEIR_GATEWAY_BIN:-$WEIR_ROOT/target/debug/weir-gateway}"
  export TANSU_BIN
  export WEIR_HELM_BIN
  # SIGINT first: pytest then runs the fixtures' teardown, which stops the processes it started.
  step "integration tests" timeout -s INT --kill-after=60 "$PYTEST_TIMEOUT_S" \
    "$WEIR_VENV/bin/python" -m pytest integration-tests -v "$@" || true
else
  failed+=("integration tests (not run: the build failed)")
fi

# Last, because it builds the fuzz targets apart (nightly, coverage instrumentation: about 10
# minutes on two cores the first time): a minute per target over the committed seeds
# (gateway/fuzz; docs/fuzzing.md). WEIR_FUZZ_SECONDS=0 skips it.
if [ "${WEIR_FUZZ_SECONDS:-60}" != 0 ]; then
  step "fuzz smoke run" scripts/fuzz.sh -t "${WEIR_FUZZ_SECONDS:-60}" || true
fi

log "finished in $((SECONDS - started)) s"
if [ ${#failed[@]} -ne 0 ]; then
  printf 'FAILED: %s\n' "${failed[@]}" >&2
  exit 1
fi
log "all checks passed"
