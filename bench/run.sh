#!/usr/bin/env bash
# Gateway benchmark: native Envoy routing vs graylane vs Lua vs a minimal wasm
# filter, on rule sets a (1 service), b (10) and c (100). Not part of the tests.
#
#   bench/run.sh                      # full run: 5 rounds x 10 s, all sets (~25 min)
#   bench/run.sh --rounds 1 --duration 3 --sets b    # a quick look
#   bench/run.sh --check-only         # only check that every gateway routes as the contract says
#   bench/run.sh --variants native,graylane,lua,minimal,minimal-raw,graylane-Oz
#                                     # also the floor on the raw ABI (no SDK) and the -Oz module
#
# Any option is passed to bench/bench.py (see --help there). Needs Envoy
# (ENVOY=path, default /tmp/envoy-venv/bin/envoy), wrk, wasm-opt (binaryen),
# taskset, python3 and the wasm32-wasip1 Rust target.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
out=$root/bench/out
mkdir -p "$out"

echo "== building graylane.wasm and the minimal filter" >&2
cargo build --quiet --release --target wasm32-wasip1 -p graylane
graylane=$root/target/wasm32-wasip1/release/graylane.wasm
# Copies, so that rebuilding the floor during a run cannot swap the module.
minimal=$out/minimal.wasm
minimal_raw=$out/minimal-raw.wasm
(cd bench/minimal-filter &&
  cargo build --quiet --release --target wasm32-wasip1 &&
  cp target/wasm32-wasip1/release/minimal_filter.wasm "$minimal" &&
  cargo build --quiet --release --target wasm32-wasip1 --no-default-features &&
  cp target/wasm32-wasip1/release/minimal_filter.wasm "$minimal_raw")

# The features rustc enables by default for wasm32-wasip1; wasm-opt must be told.
features="--enable-bulk-memory --enable-sign-ext --enable-nontrapping-float-to-int --enable-mutable-globals --enable-multivalue --enable-reference-types"
modules=()
for level in Oz O3; do
  wasm-opt "-$level" $features "$graylane" -o "$out/graylane.$level.wasm"
  modules+=(--module "graylane-$level=$out/graylane.$level.wasm")
done
echo "== .wasm sizes (bytes)" >&2
printf '%-28s %9s\n' graylane.wasm "$(stat -c %s "$graylane")" \
  "graylane.wasm, wasm-opt -Oz" "$(stat -c %s "$out/graylane.Oz.wasm")" \
  "graylane.wasm, wasm-opt -O3" "$(stat -c %s "$out/graylane.O3.wasm")" \
  "minimal filter (SDK)" "$(stat -c %s "$minimal")" \
  "minimal filter (raw ABI)" "$(stat -c %s "$minimal_raw")" | tee "$out/sizes.txt" >&2

python3 bench/gen.py --graylane-wasm "$graylane" --minimal-wasm "$minimal" --minimal-raw-wasm "$minimal_raw"
exec python3 bench/bench.py --graylane-wasm "$graylane" --sizes "$out/sizes.txt" "${modules[@]}" "$@"
