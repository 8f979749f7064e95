#!/usr/bin/env bash
# Builds the components and runs the benchmark program (release builds), printing
# the Markdown tables the README carries. Not part of the test suite. It also
# measures a peer, the LiteLLM proxy (tests/peer/litellm.sh: the first run
# installs a pinned release into a virtual environment, ~40 s and ~530 MB);
# `--no-peer` leaves it out, `--quick` runs a tenth of the requests.
set -euo pipefail
cd "$(dirname "$0")/.."
bash deploy/local/setup.sh
cargo build --quiet --target wasm32-wasip2 --release -p query -p rate-limiter -p metrics -p ops -p harness-probe -p harness-probe-p3 -p harness-probe-p3-dep
cargo run --quiet --profile host -p chatbot-harness --bin bench -- "$@"
