#!/usr/bin/env bash
# Builds a release bundle into dist/graylane-<version>/ (the version is what
# `graylane --version` prints: the workspace's, Cargo.toml):
#
#   plugin.wasm    the plugin, optimised: # The .wasm would otherwise hold this machine's paths (Cargo's registry
# under $CARGO_HOME, the checkout) in panic locations, so two machines would
# build different plugins, hence different image digests, from one commit
# and one toolchain. Remapped, in a target directory of its own so that
# other builds of the plugin keep their cache.
cargo_home=${CARGO_HOME:-$HOME/.cargo}
RUSTFLAGS="--remap-path-prefix=$cargo_home=/cargo --remap-path-prefix=$PWD=/graylane" \
    cargo build --release --target wasm32-wasip1 -p graylane --target-dir target/dist
#   graylane       the command for this machine: cargo build --release -p graylane-cli --features bin
#   image/         the plugin as an OCI image layout: graylane image build --wasm plugin.wasm -o image
#   image.digest   the image's manifest digest, sha256:<hex> (WasmPlugin / Envoy Gateway `sha256`: the hex)
#   SHA256SUMS     every file above; check with: cd dist/graylane-<version> && sha256sum -c SHA256SUMS
#
# Then `scripts/dist.sh --check` verifies the bundle it wrote (scripts/test.sh
# runs it so). Push the image with:
#   dist/graylane-<version>/graylane image push --wasm dist/graylane-<version>/plugin.wasm REGISTRY/REPO:<version>
set -euo pipefail
cd "$(dirname "$0")/.."

check=false
case "${1:-}" in
    --check) check=true ;;
    "") ;;
    *) echo "usage: scripts/dist.sh [--check]" >&2; exit 2 ;;
esac

rustup target add wasm32-wasip1 >/dev/null 2>&1 || true
# The .wasm would otherwise hold this machine's paths (Cargo's registry
# under $CARGO_HOME, the checkout) in panic locations, so two machines would
# build different plugins, hence different image digests, from one commit
# and one toolchain. Remapped, in a target directory of its own so that
# other builds of the plugin keep their cache.
cargo_home=${CARGO_HOME:-$HOME/.cargo}
RUSTFLAGS="--remap-path-prefix=$cargo_home=/cargo --remap-path-prefix=$PWD=/graylane" \
    cargo build --release --target wasm32-wasip1 -p graylane --target-dir target/dist
cargo build --release -p graylane-cli --features bin

command=target/release/graylane
version=$("$command" --version | awk '{print $2}')
if [ -z "$version" ]; then
    echo "dist.sh: $command --version printed no version" >&2
    exit 1
fi
out=dist/graylane-$version
rm -rf "$out"
mkdir -p "$out"
install -m 0644 target/dist/wasm32-wasip1/release/graylane.wasm "$out/plugin.wasm"
cp "$command" "$out/graylane"
"$out/graylane" image build --wasm "$out/plugin.wasm" -o "$out/image" --tag "$version" > "$out/image.digest"
(
    cd "$out"
    find plugin.wasm graylane image.digest image -type f | LC_ALL=C sort | xargs sha256sum > SHA256SUMS
)
echo "dist.sh: $out (image $(cat "$out/image.digest"))"

if $check; then
    (cd "$out" && sha256sum --quiet -c SHA256SUMS)
    offline=$("$out/graylane" image digest --wasm "$out/plugin.wasm")
    in_layout=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["manifests"][0]["digest"])' "$out/image/index.json")
    recorded=$(cat "$out/image.digest")
    if [ "$offline" != "$in_layout" ] || [ "$offline" != "$recorded" ]; then
        echo "dist.sh --check: digests differ: graylane image digest $offline, image/index.json $in_layout, image.digest $recorded" >&2
        exit 1
    fi
    # The layer holds plugin.wasm, byte for byte.
    layer=$(python3 -c 'import json,sys; m=json.load(open(sys.argv[1])); print(m["layers"][-1]["digest"].split(":")[1])' "$out/image/blobs/sha256/${offline#sha256:}")
    tar -xzOf "$out/image/blobs/sha256/$layer" plugin.wasm | cmp - "$out/plugin.wasm"
    echo "dist.sh --check: SHA256SUMS verified; the layout's manifest is $offline, as graylane image digest says; its layer holds plugin.wasm"
fi
