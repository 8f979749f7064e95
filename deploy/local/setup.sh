#!/usr/bin/env bash
# Installs what a fresh Debian machine lacks for this project. Idempotent and quiet
# when everything is there. `--for-tests` also installs what only the tests need.
set -euo pipefail

for_tests=false
[ "${1:-}" = "--for-tests" ] && for_tests=true

sudo_if_needed() { if [ "$(id -u)" -ne 0 ]; then sudo "$@"; else "$@"; fi; }

packages=()
command -v redis-server >/dev/null || packages+=(redis-server)
command -v redis-cli >/dev/null || packages+=(redis-tools)
ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || packages+=(postgresql)
command -v psql >/dev/null || packages+=(postgresql-client)
command -v setpriv >/dev/null || packages+=(util-linux)
if $for_tests; then
    command -v promtool >/dev/null || packages+=(prometheus)
    command -v python3 >/dev/null || packages+=(python3)
    # Debian splits venv (and the pip it bootstraps) out of python3.
    python3 -c 'import ensurepip, venv' >/dev/null 2>&1 || packages+=(python3-venv)
fi
if [ ${#packages[@]} -gt 0 ]; then
    echo "setup: installing ${packages[*]}" >&2
    sudo_if_needed apt-get update -qq
    # Package scripts may try to start the services; the project starts its own.
    DEBIAN_FRONTEND=noninteractive sudo_if_needed apt-get install -y -qq --no-install-recommends "${packages[@]}" >/dev/null
fi

if ! rustup target list --installed | grep -qx wasm32-wasip2; then
    echo "setup: adding the wasm32-wasip2 target" >&2
    rustup target add wasm32-wasip2
fi
for component in rustfmt clippy; do
    rustup component list --installed | grep -q "^$component" || rustup component add "$component"
done

# The API fuzzer (tests/tests/suite/fuzz.rs): schemathesis, pinned in
# deploy/local/test-requirements.txt, in a virtual environment of its own
# (never the system's Python). Reinstalled only when the pins change.
if $for_tests; then
    venv="${XDG_CACHE_HOME:-$HOME/.cache}/rag-chatbot/test-venv"
    requirements="$(dirname "$0")/test-requirements.txt"
    if ! cmp -s "$requirements" "$venv/installed-requirements.txt" || [ ! -x "$venv/bin/schemathesis" ]; then
        echo "setup: installing $(grep -v '^#' "$requirements" | xargs) into $venv" >&2
        python3 -m venv "$venv"
        "$venv/bin/pip" install --quiet --disable-pip-version-check -r "$requirements"
        cp "$requirements" "$venv/installed-requirements.txt"
    fi
fi
