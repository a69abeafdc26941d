#!/usr/bin/env bash
# Builds Weft's container images on this machine's Docker engine (nothing is pulled):
# statically linked binaries (x86_64 glibc, crt-static) of `weft`, `weft-scaler` and the
# scaled example, then the images weft:TAG, weft-scaler:TAG and weft-example-scaled:TAG,
# each FROM scratch with one binary, and weft-bundle:TAG with all three
# (examples/compose/Dockerfile).
#
#   examples/compose/build-images.sh [--tag TAG] [--profile release|dev] [--bin-dir DIR]
#
#   --tag TAG        image tag (default: latest)
#   --profile NAME   cargo profile of the binaries (default: release; dev builds faster and
#                    makes larger, slower binaries)
#   --bin-dir DIR    take the binaries from DIR (built static already, as .ci/run builds the
#                    workspace) instead of building them
#
# The static build goes to target/x86_64-unknown-linux-gnu/, apart from ordinary builds.
set -euo pipefail
root="$(cd "$(dirname "$0")/../.." && pwd)"
cd "$root"

triple=x86_64-unknown-linux-gnu
tag=latest
profile=release
bin_dir=
while [ $# -gt 0 ]; do
  case "$1" in
    --tag) tag="$2"; shift 2 ;;
    --profile) profile="$2"; shift 2 ;;
    --bin-dir) bin_dir="$2"; shift 2 ;;
    -h|--help) sed -n '2,16p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "error: unknown argument '$1' (see --help)" >&2; exit 2 ;;
  esac
done

bins=(weft weft-scaler scaled)
target_dir="${CARGO_TARGET_DIR:-$root/target}"
if [ -z "$bin_dir" ]; then
  start=$(date +%s)
  # The flag applies to the target only (not to build scripts and proc macros), because
  # --target is given; .ci/run builds the workspace's tests with the same flags.
  CARGO_TARGET_X86_64_UNKNOWN_LINUX_GNU_RUSTFLAGS="-C target-feature=+crt-static" \
    cargo build --locked --profile "$profile" --target "$triple" \
      -p weft-fabric --bin weft -p weft-scaler --bin weft-scaler -p weft-example-scaled --bin scaled
  case "$profile" in dev|test) dir=debug ;; *) dir="$profile" ;; esac
  bin_dir="$target_dir/$triple/$dir"
  echo "static binaries built in $(( $(date +%s) - start )) s: $bin_dir"
fi

context="$target_dir/docker-context/$tag-$$"
rm -rf "$context"
mkdir -p "$context"
trap 'rm -rf "$context"' EXIT
for bin in "${bins[@]}"; do
  src="$bin_dir/$bin"
  if [ ! -x "$src" ]; then
    echo "error: $src is missing (build it, or leave out --bin-dir)" >&2
    exit 1
  fi
  if command -v readelf >/dev/null 2>&1 && readelf -l "$src" | grep -q 'program interpreter'; then
    echo "error: $src is linked dynamically; it cannot run FROM scratch (build with -C target-feature=+crt-static)" >&2
    exit 1
  fi
  # Debug info stays on the build machine: the images carry stripped binaries.
  if command -v strip >/dev/null 2>&1; then
    strip -o "$context/$bin" "$src"
  else
    cp "$src" "$context/$bin"
  fi
done
cp "$root/examples/compose/Dockerfile" "$context/Dockerfile"

build() {
  local stage="$1" image="$2"
  docker build --quiet --target "$stage" --tag "$image:$tag" "$context" >/dev/null
  echo "built $image:$tag ($(docker image inspect --format '{{.Size}}' "$image:$tag" | awk '{ printf "%.1f MB", $1 / 1e6 }'))"
}
build weft weft
build weft-scaler weft-scaler
build example-scaled weft-example-scaled
build bundle weft-bundle
