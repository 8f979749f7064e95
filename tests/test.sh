#!/usr/bin/env bash
# The whole test suite, on a fresh Debian machine too: installs what is missing,
# checks formatting and lints, builds the components for wasm32-wasip2, and runs
# the core's unit tests and the harness's integration tests (which start their
# own Redis and PostgreSQL servers).
set -euo pipefail
cd "$(dirname "$0")/.."
bash deploy/local/setup.sh --for-tests

# Clippy lints as the crates compile (see cargo-env.sh): the two builds below
# are also the lint passes, with warnings denied.
source deploy/local/cargo-env.sh

components=(-p query -p rate-limiter -p metrics -p ops -p harness-probe -p harness-probe-p3 -p harness-probe-p3-dep)
cargo fmt --all -- --check
cargo build --target wasm32-wasip2 --release "${components[@]}"
# The real-Spin tests (tests/tests/suite/spin.rs) run the product under `spin up`
# whenever a Spin 4.0.x is found (SPIN_BIN, else PATH), against the real
# Qdrant when one is (QDRANT_BIN, else PATH); otherwise its tests say SKIPPED.
spin_version=$("${SPIN_BIN:-spin}" --version 2>/dev/null || true)
if [[ $spin_version == "spin 4.0."* ]]; then
    echo "test: the real-Spin suite runs on $spin_version" >&2
else
    echo "test: SKIPPING the real-Spin suite: no Spin 4.0.x found (set SPIN_BIN or put spin on PATH)" >&2
fi
if "${QDRANT_BIN:-qdrant}" --version >/dev/null 2>&1; then
    echo "test: the real-Spin suite uses the real Qdrant ($("${QDRANT_BIN:-qdrant}" --version))" >&2
else
    echo "test: no Qdrant found (QDRANT_BIN, PATH): the real-Spin suite uses the Qdrant stand-in" >&2
fi
cargo test
