#!/usr/bin/env bash
# Instruction counts of the gateway under callgrind (primary figures of issue 9):
# per request, start-up (exec to first answer), idle, plus RSS without valgrind.
# Arms: native Envoy routing, Lua, the floor filter, the SDK minimal filter,
# graylane. Not part of the tests: it prints figures. See bench/README.md.
#
#   bench/callgrind.sh                               # all arms, N=2000, 3 repeats (~12 min; --jobs 2: ~7)
#   bench/callgrind.sh --arms floor,graylane --repeats 2
#   bench/callgrind.sh --graylane-wasm path/to/graylane.wasm   # or GRAYLANE_WASM=path
#   bench/callgrind.sh --help                        # the options of bench/callgrind.py
#
# The graylane module defaults to
#   cargo build --release --target wasm32-wasip1 -p graylane
#   → target/wasm32-wasip1/release/graylane.wasm
# Needs valgrind (Debian: apt-get install valgrind; callgrind_control comes
# with it), Envoy (ENVOY=path, default .tools/venv/bin/envoy), python3 and the
# wasm32-wasip1 Rust target.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
out=$root/bench/out/callgrind
mkdir -p "$out"

graylane=${GRAYLANE_WASM:-}
args=()
while [ $# -gt 0 ]; do
  case "$1" in
    --graylane-wasm) graylane=$2; shift 2 ;;
    --graylane-wasm=*) graylane=${1#*=}; shift ;;
    *) args+=("$1"); shift ;;
  esac
done

for tool in valgrind callgrind_control; do
  command -v "$tool" >/dev/null || { echo "$tool not found: apt-get install valgrind" >&2; exit 2; }
done

if [ -z "$graylane" ]; then
  echo "== building graylane.wasm" >&2
  cargo build --quiet --release --target wasm32-wasip1 -p graylane
  graylane=$root/target/wasm32-wasip1/release/graylane.wasm
fi
# Copies, so that a rebuild during the run cannot swap a module.
cp "$graylane" "$out/graylane.wasm"
echo "== building the floor and the minimal filters" >&2
(cd bench/floor-filter &&
  cargo build --quiet --release --target wasm32-wasip1 --features every-callback &&
  cp target/wasm32-wasip1/release/floor_filter.wasm "$out/floor-callbacks.wasm" &&
  cargo build --quiet --release --target wasm32-wasip1 &&
  cp target/wasm32-wasip1/release/floor_filter.wasm "$out/floor.wasm")
(cd bench/minimal-filter &&
  cargo build --quiet --release --target wasm32-wasip1 &&
  cp target/wasm32-wasip1/release/minimal_filter.wasm "$out/minimal.wasm" &&
  cargo build --quiet --release --target wasm32-wasip1 --no-default-features &&
  cp target/wasm32-wasip1/release/minimal_filter.wasm "$out/minimal-raw.wasm")

# Gateway 28180 (admin 28181; a second slot with --jobs 2: 28190/28191),
# upstream 28170 (admin 28171): apart from bench/run.sh's ports.
python3 bench/gen.py --sets d --out "$out" --ports 28180 28170 28181 --upstream-admin 28171 \
  --graylane-wasm "$out/graylane.wasm" --floor-wasm "$out/floor.wasm" \
  --minimal-wasm "$out/minimal.wasm" --minimal-raw-wasm "$out/minimal-raw.wasm"
exec python3 bench/callgrind.py --out "$out" --upstream-admin 28171 --port 28180 \
  --module "graylane=$out/graylane.wasm" --module "floor=$out/floor.wasm" \
  --module "floor-callbacks=$out/floor-callbacks.wasm" \
  --module "minimal=$out/minimal.wasm" --module "minimal-raw=$out/minimal-raw.wasm" \
  ${args[@]+"${args[@]}"}
