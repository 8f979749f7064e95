#!/usr/bin/env bash
# The whole test suite, on a fresh Debian machine too: installs what is missing,
# checks formatting and lints, builds the components for wasm32-wasip2, and runs
# the core's unit tests and the harness's integration tests (which start their
# own Redis and PostgreSQL servers).
set -euo pipefail
cd "$(dirname "$0")/.."
bash deploy/local/setup.sh --for-tests

components=(-p query -p rate-limiter -p metrics -p ops -p harness-probe -p harness-probe-p3 -p harness-probe-p3-dep)
cargo fmt --all -- --check
cargo build --target wasm32-wasip2 --release "${components[@]}"
cargo clippy --quiet --target wasm32-wasip2 --release "${components[@]}" -p chatbot-spin -- -D warnings
cargo clippy --quiet --all-targets -- -D warnings
cargo test
