#!/usr/bin/env bash
# Builds Weir's container images as OCI archives, without a container registry and without a
# container engine running anything: a Debian root filesystem made from Debian's own packages
# (mmdebstrap), the release binaries, and buildah assembling each image `from scratch`.
# helm/images/Dockerfile builds the same images with Docker (same base packages, user, labels
# and entrypoints); integration-tests/test_image.py checks both.
#
#   scripts/image.sh                 # weir-gateway, weir-control-plane, weir-tail-router, weirctl
#   scripts/image.sh weir-gateway    # only these
#   WEIR_IMAGE_PROFILE=dev scripts/image.sh   # from the debug binaries (scripts/test.sh does
#                                    # this: the images and their entrypoints are checked in CI
#                                    # without a release build; ship the release ones)
#
# Output: $WEIR_IMAGE_DIR (default target/images, ignored by git), one <name>-<version>.oci.tar
# per image plus a stamp beside it. An image whose binary, base and build recipe are unchanged
# is not built again. Load an archive elsewhere with e.g. `skopeo copy oci-archive:FILE
# docker://REGISTRY/weir-gateway:0.1.0` or `podman load -i FILE`.
set -euo pipefail

# shellcheck source=scripts/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
cd "$WEIR_ROOT"

IMAGES=(weir-gateway weir-control-plane weir-tail-router weirctl)
[ $# -gt 0 ] && IMAGES=("$@")

DEBIAN_RELEASE=bookworm
# What every binary needs at run time beyond the minimal base: OpenSSL 3 and zlib (linked
# dynamically), CA roots for TLS to Kafka and to the control plane. The Dockerfile's runtime
# stage installs the same list (integration-tests/test_image.py compares them).
BASE_PACKAGES=(ca-certificates libssl3 zlib1g)
# The numeric user the chart's securityContext names (runAsUser), so runAsNonRoot holds.
IMAGE_USER=10001
VERSION="$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -n 1)"
SOURCE_URL="$(sed -n 's/^repository = "\(.*\)"/\1/p' Cargo.toml | head -n 1)"
[ -n "$VERSION" ] || die "no workspace version in Cargo.toml"

CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$WEIR_ROOT/target}"
OUT="${WEIR_IMAGE_DIR:-$CARGO_TARGET_DIR/images}"
mkdir -p "$OUT"

for img in "${IMAGES[@]}"; do
  case "$img" in
    weir-gateway | weir-control-plane | weir-tail-router | weirctl) ;;
    *) die "unknown image $img (known: weir-gateway weir-control-plane weir-tail-router weirctl)" ;;
  esac
done

ensure_build_deps
ensure_apt mmdebstrap buildah

PROFILE="${WEIR_IMAGE_PROFILE:-release}"
case "$PROFILE" in
  release) profile_args=(--release) profile_dir=release ;;
  dev) profile_args=() profile_dir=debug ;;
  *) die "WEIR_IMAGE_PROFILE: give release or dev, not $PROFILE" ;;
esac
log "cargo build ($PROFILE: ${IMAGES[*]})"
bin_args=()
for img in "${IMAGES[@]}"; do bin_args+=(--bin "$img"); done
# Without SOURCE_DATE_EPOCH: the cc crate's build scripts rebuild on its change, so exporting
# it here would make this build differ from a developer's `cargo build --release`.
env -u SOURCE_DATE_EPOCH cargo build "${profile_args[@]}" --locked "${bin_args[@]}"

# Reproducible timestamps (files in the base, the image's `created`): the last commit's time.
SOURCE_DATE_EPOCH="${SOURCE_DATE_EPOCH:-$(git log -1 --format=%ct 2>/dev/null || date +%s)}"
export SOURCE_DATE_EPOCH
REVISION="$(git rev-parse HEAD 2>/dev/null || echo unknown)"

# The base root filesystem, as a tarball: Debian's minbase variant (what debian:*-slim is made
# of) plus BASE_PACKAGES, without documentation, locales or apt's package lists, with the
# directories the binaries use. Rebuilt only when its recipe changes.
base_recipe="$DEBIAN_RELEASE ${BASE_PACKAGES[*]} user=$IMAGE_USER v1"
base_tar="$OUT/base-$DEBIAN_RELEASE.tar"
base_stamp="$base_tar.stamp"
if [ -f "$base_tar" ] && [ "$(cat "$base_stamp" 2>/dev/null)" = "$base_recipe" ]; then
  log "base $base_tar is up to date"
else
  log "mmdebstrap $DEBIAN_RELEASE (minbase + ${BASE_PACKAGES[*]})"
  rm -f "$base_stamp"
  mmdebstrap --variant=minbase --mode=root --format=tar \
    --include="$(IFS=,; echo "${BASE_PACKAGES[*]}")" \
    --dpkgopt='path-exclude=/usr/share/man/*' \
    --dpkgopt='path-exclude=/usr/share/doc/*' \
    --dpkgopt='path-include=/usr/share/doc/*/copyright' \
    --dpkgopt='path-exclude=/usr/share/info/*' \
    --dpkgopt='path-exclude=/usr/share/locale/*' \
    --customize-hook='rm -rf "$1"/var/lib/apt/lists/* "$1"/var/cache/apt/* "$1"/var/log/*.log' \
    --customize-hook="mkdir -p \"\$1/etc/weir\" \"\$1/var/lib/weir\" && chown $IMAGE_USER:$IMAGE_USER \"\$1/var/lib/weir\"" \
    "$DEBIAN_RELEASE" "$base_tar.new" >&2
  mv "$base_tar.new" "$base_tar"
  echo "$base_recipe" >"$base_stamp"
fi

# buildah's own image store, private to this run and removed at the end: vfs needs no overlay
# support from the kernel, and nothing is left in /var/lib/containers.
store="$(mktemp -d "${TMPDIR:-/tmp}/weir-buildah.XXXXXX")"
trap 'buildah --root "$store/root" --runroot "$store/run" --storage-driver vfs rm --all >/dev/null 2>&1 || true; rm -rf "$store"' EXIT
bah() { buildah --root "$store/root" --runroot "$store/run" --storage-driver vfs "$@"; }

description() {
  case "$1" in
    weir-gateway) echo "Weir gateway: OTLP gRPC and HTTP in, Kafka out, policies from the control plane" ;;
    weir-control-plane) echo "Weir control plane: versioned policies, rollouts, the watch stream" ;;
    weir-tail-router) echo "Weir tail router: copies the spans of marked traces to the cold topic" ;;
    weirctl) echo "weirctl: the Weir control plane's command-line client" ;;
  esac
}

ports() {
  case "$1" in
    weir-gateway) echo "4317 4318 8888" ;;
    weir-control-plane) echo "8080 8081" ;;
    weir-tail-router) echo "8889" ;;
    weirctl) echo "" ;;
  esac
}

script_hash="$(sha256sum "${BASH_SOURCE[0]}" | cut -d' ' -f1)"
base_hash="$(sha256sum "$base_tar" | cut -d' ' -f1)"

for img in "${IMAGES[@]}"; do
  bin="$CARGO_TARGET_DIR/$profile_dir/$img"
  archive="$OUT/$img-$VERSION.oci.tar"
  stamp="$archive.stamp"
  want="binary=$(sha256sum "$bin" | cut -d' ' -f1) base=$base_hash script=$script_hash version=$VERSION"
  if [ -f "$archive" ] && [ "$(cat "$stamp" 2>/dev/null)" = "$want" ]; then
    log "$archive is up to date"
    continue
  fi
  t0=$SECONDS
  log "building $archive"
  rm -f "$stamp"
  ctr="$(bah from --name "$img-build" scratch)"
  bah add --quiet "$ctr" "$base_tar" / >/dev/null
  bah add --quiet --chmod 0755 "$ctr" "$bin" "/usr/local/bin/$img" >/dev/null
  config=(
    --user "$IMAGE_USER:$IMAGE_USER"
    --workingdir /var/lib/weir
    --env PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
    --entrypoint "[\"/usr/local/bin/$img\"]"
    --cmd ''
    --os linux --arch amd64
    --label "org.opencontainers.image.title=$img"
    --label "org.opencontainers.image.description=$(description "$img")"
    --label "org.opencontainers.image.version=$VERSION"
    --label "org.opencontainers.image.revision=$REVISION"
    --label "org.opencontainers.image.created=$(date -u -d "@$SOURCE_DATE_EPOCH" +%Y-%m-%dT%H:%M:%SZ)"
    --label "org.opencontainers.image.licenses=Apache-2.0"
    --label "org.opencontainers.image.source=$SOURCE_URL"
    --label "org.opencontainers.image.base.name=debian:$DEBIAN_RELEASE-slim"
  )
  for p in $(ports "$img"); do config+=(--port "$p"); done
  bah config "${config[@]}" "$ctr"
  bah commit --quiet --format oci --timestamp "$SOURCE_DATE_EPOCH" --rm "$ctr" \
    "oci-archive:$archive.new:$img:$VERSION" >/dev/null
  bah rmi --all >/dev/null 2>&1 || true
  mv "$archive.new" "$archive"
  echo "$want" >"$stamp"
  log "$archive: $(du -h "$archive" | cut -f1), $((SECONDS - t0)) s"
done
