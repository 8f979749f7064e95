# Sourced by tests/test.sh and deploy/local/run.sh. The workspace's own crates
# are compiled by clippy-driver (rustc with clippy's lints, warnings denied), so
# one build is both the lint pass and the artefacts that the tests, `spin up` and
# `serve` use. A separate `cargo clippy` checks wasmtime and every other
# dependency a second time (4 of a fresh clone's 13 minutes). Cargo keys the
# workspace's artefacts by this wrapper, so both scripts compile the same way.
RUSTC_WORKSPACE_WRAPPER="$(rustup which clippy-driver)"
CLIPPY_ARGS="-D__CLIPPY_HACKERY__warnings__CLIPPY_HACKERY__"
export RUSTC_WORKSPACE_WRAPPER CLIPPY_ARGS
