#!/usr/bin/env bash
# The spool's append and replay throughput on this machine's disk, from a release build of
# gateway/examples/spool_throughput.rs: concurrent appenders of 100-span requests (fsync
# policy `always`, the default: group commit), then one replayer, unpaced, into a sink that
# acknowledges at once. Prints the figures with the machine's conditions (cores, load, the
# file system under the spool directory), in the form docs/benchmarks-log.md records them.
#
# Settings (environment):
#   SPOOL_BENCH_APPENDERS  concurrent appenders (64)
#   SPOOL_BENCH_SECONDS    seconds of appending (10)
#   SPOOL_BENCH_DIR        where the temporary spool goes (default: target/, on the disk the
#                          gateway's spool would use rather than a tmpfs)
#   SPOOL_BENCH_NICE       niceness of the run (10: it yields to other work on a shared machine)
set -euo pipefail

# shellcheck source=scripts/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
bench_lock "$@"
cd "$WEIR_ROOT"

APPENDERS="${SPOOL_BENCH_APPENDERS:-64}"
SECONDS_OF_APPENDS="${SPOOL_BENCH_SECONDS:-10}"
TARGET_DIR="${CARGO_TARGET_DIR:-$WEIR_ROOT/target}"
DIR="${SPOOL_BENCH_DIR:-$TARGET_DIR}"
NICENESS="${SPOOL_BENCH_NICE:-10}"

log "building the spool_throughput example (release)"
nice -n "$NICENESS" cargo build --release -p weir-gateway --example spool_throughput >&2
mkdir -p "$DIR"

echo "date: $(date -u '+%Y-%m-%d %H:%M UTC'), commit $(git rev-parse --short HEAD 2>/dev/null || echo unknown)"
echo "command: nice -n $NICENESS $TARGET_DIR/release/examples/spool_throughput $APPENDERS $SECONDS_OF_APPENDS $DIR"
echo "machine: $(nproc) cores, load average before the run $(cut -d' ' -f1-3 /proc/loadavg), $(uname -sr)"
echo "disk: $(df -PT "$DIR" | awk 'NR == 2 {print $2 " on " $1}') under $DIR"
nice -n "$NICENESS" "$TARGET_DIR/release/examples/spool_throughput" "$APPENDERS" "$SECONDS_OF_APPENDS" "$DIR"
echo "load average after the run: $(cut -d' ' -f1-3 /proc/loadavg)"
