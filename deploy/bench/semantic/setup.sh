#!/usr/bin/env bash
# Installs the semantic-cache measurement kit: a virtual environment of its own
# (never the system's Python) with the pins of requirements.txt beside this
# file. Idempotent and quiet when everything is there; reinstalls only when the
# pins change.
set -euo pipefail

here="$(cd "$(dirname "$0")" && pwd)"
venv="${XDG_CACHE_HOME:-$HOME/.cache}/rag-chatbot/bench-venv"
requirements="$here/requirements.txt"

sudo_if_needed() { if [ "$(id -u)" -ne 0 ]; then sudo "$@"; else "$@"; fi; }

packages=()
command -v python3 >/dev/null || packages+=(python3)
# Debian splits venv (and the pip it bootstraps) out of python3.
python3 -c 'import ensurepip, venv' >/dev/null 2>&1 || packages+=(python3-venv)
if [ ${#packages[@]} -gt 0 ]; then
    echo "setup: installing ${packages[*]}" >&2
    sudo_if_needed apt-get update -qq
    DEBIAN_FRONTEND=noninteractive sudo_if_needed apt-get install -y -qq --no-install-recommends "${packages[@]}" >/dev/null
fi

if ! cmp -s "$requirements" "$venv/installed-requirements.txt" || [ ! -x "$venv/bin/python" ]; then
    echo "setup: installing $(grep -v '^#' "$requirements" | xargs) into $venv" >&2
    # --clear: exactly the pins, nothing left over from older ones.
    python3 -m venv --clear "$venv"
    # --no-deps: requirements.txt is the whole closure (see its header).
    "$venv/bin/pip" install --quiet --disable-pip-version-check --no-deps -r "$requirements"
    cp "$requirements" "$venv/installed-requirements.txt"
fi
