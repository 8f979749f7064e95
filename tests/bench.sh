#!/usr/bin/env bash
# Builds the components and runs the benchmark program (release builds), printing
# the Markdown table the README carries. Not part of the test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
bash deploy/local/setup.sh
cargo build --quiet --target wasm32-wasip2 --release -p query -p rate-limiter -p metrics -p ops -p harness-probe
cargo run --quiet --profile host -p chatbot-harness --bin bench -- "$@"
