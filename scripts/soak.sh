#!/usr/bin/env bash
# The soak (not part of CI): a real Envoy with two workers under steady
# traffic for GRAYLANE_SOAK_MINUTES (default 30) while a rules source
# changes the weight every 3 s and fails one change in two (500, garbage, a
# refused document, a hang-up or a slow answer). Prints Envoy's RSS every
# minute; fails on any failed request, any wasm error, or RSS growing more
# than 32 MiB after the first minute. Run scripts/test.sh once before, for
# the tools.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH=$PWD/.tools/bin:$PATH
export ENVOY_BIN=${ENVOY_BIN:-$PWD/.tools/venv/bin/envoy}
export GRAYLANE_SOAK_MINUTES=${GRAYLANE_SOAK_MINUTES:-30}
exec cargo test -p graylane-e2e --test live_rules soak_under_rule_changes_and_faults \
  -- --ignored --nocapture
