#!/usr/bin/env bash
# Runs the chatbot locally: installs what is missing, starts Redis and PostgreSQL
# under .run/ (unless they already answer), applies the migrations, builds the
# components and serves them — with `spin up` when a Spin 4.0.x is on PATH,
# otherwise with the harness's `serve`. Without SPIN_VARIABLE_OPENAI_API_KEY it
# uses local OpenAI- and Qdrant-compatible stand-ins, so it works offline.
#
# Settings: any SPIN_VARIABLE_<NAME> (see README), plus REDIS_PORT, PG_PORT, LISTEN.
set -euo pipefail
cd "$(dirname "$0")/../.."
bash deploy/local/setup.sh
# Compiled as `bash tests/test.sh` compiles, so a run after the tests reuses their build.
source deploy/local/cargo-env.sh

RUN_DIR="$PWD/.run"
REDIS_PORT="${REDIS_PORT:-6379}"
PG_PORT="${PG_PORT:-5432}"
LISTEN="${LISTEN:-127.0.0.1:3000}"
mkdir -p "$RUN_DIR"

if ! redis-cli -h 127.0.0.1 -p "$REDIS_PORT" ping >/dev/null 2>&1; then
    echo "run: starting redis-server on 127.0.0.1:$REDIS_PORT" >&2
    redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --daemonize yes \
        --dir "$RUN_DIR" --logfile "$RUN_DIR/redis.log" --save "" --appendonly no
fi

PG_BIN="$(dirname "$(ls /usr/lib/postgresql/*/bin/initdb | sort -V | tail -n 1)")"
as_postgres() {
    # PostgreSQL refuses to run as root.
    if [ "$(id -u)" -eq 0 ]; then setpriv --reuid=postgres --regid=postgres --init-groups -- "$@"; else "$@"; fi
}
if ! "$PG_BIN/pg_isready" -h 127.0.0.1 -p "$PG_PORT" -q; then
    if [ ! -f "$RUN_DIR/pg/PG_VERSION" ]; then
        mkdir -p "$RUN_DIR/pg"
        [ "$(id -u)" -eq 0 ] && chown -R postgres:postgres "$RUN_DIR/pg"
        as_postgres "$PG_BIN/initdb" -D "$RUN_DIR/pg" -U postgres --auth=trust --encoding=UTF8 >/dev/null
    fi
    echo "run: starting PostgreSQL on 127.0.0.1:$PG_PORT" >&2
    as_postgres "$PG_BIN/pg_ctl" -D "$RUN_DIR/pg" -l "$RUN_DIR/pg/server.log" -w \
        -o "-p $PG_PORT -c listen_addresses=127.0.0.1 -k $RUN_DIR/pg" start >/dev/null
fi
PG_ADMIN="postgres://postgres@127.0.0.1:$PG_PORT/postgres"
if ! psql "$PG_ADMIN" -tAc "SELECT 1 FROM pg_database WHERE datname = 'chatbot'" | grep -q 1; then
    psql "$PG_ADMIN" -qc "CREATE DATABASE chatbot"
fi

export SPIN_VARIABLE_REDIS_ADDRESS="${SPIN_VARIABLE_REDIS_ADDRESS:-redis://127.0.0.1:$REDIS_PORT}"
export SPIN_VARIABLE_REDIS_ALLOWED_HOST="${SPIN_VARIABLE_REDIS_ALLOWED_HOST:-redis://127.0.0.1:$REDIS_PORT}"
export SPIN_VARIABLE_POSTGRES_ADDRESS="${SPIN_VARIABLE_POSTGRES_ADDRESS:-postgres://postgres@127.0.0.1:$PG_PORT/chatbot}"
export SPIN_VARIABLE_POSTGRES_ALLOWED_HOST="${SPIN_VARIABLE_POSTGRES_ALLOWED_HOST:-postgres://127.0.0.1:$PG_PORT}"
if [ -z "${SPIN_VARIABLE_ADMIN_TOKEN:-}" ]; then
    [ -f "$RUN_DIR/admin-token" ] || head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n' > "$RUN_DIR/admin-token"
    export SPIN_VARIABLE_ADMIN_TOKEN="$(cat "$RUN_DIR/admin-token")"
    echo "run: admin token (for /api/v1/documents and /admin): in .run/admin-token" >&2
fi

cargo build --quiet --target wasm32-wasip2 --release -p query -p rate-limiter -p metrics -p ops

spin_version=$(spin --version 2>/dev/null || true)
if [[ $spin_version == "spin 4.0."* ]]; then
    for migration in migrations/*.sql; do
        psql "$SPIN_VARIABLE_POSTGRES_ADDRESS" -q -v ON_ERROR_STOP=1 -f "$migration"
    done
    if [ -z "${SPIN_VARIABLE_OPENAI_API_KEY:-}" ]; then
        # The local stand-ins (OpenAI, and Qdrant unless one is configured),
        # in the background for as long as Spin serves.
        echo "run: no SPIN_VARIABLE_OPENAI_API_KEY: using local OpenAI and Qdrant stand-ins" >&2
        rm -f "$RUN_DIR/stand-ins.env"
        no_qdrant=()
        [ -n "${SPIN_VARIABLE_QDRANT_URL:-}" ] && no_qdrant=(--no-qdrant)
        cargo build --quiet -p chatbot-harness --bin stand-ins
        target/debug/stand-ins --env-file "$RUN_DIR/stand-ins.env" "${no_qdrant[@]}" >/dev/null &
        stand_ins=$!
        trap 'kill "$stand_ins" 2>/dev/null' EXIT
        until [ -s "$RUN_DIR/stand-ins.env" ]; do
            kill -0 "$stand_ins" 2>/dev/null || { echo "run: the stand-ins did not start" >&2; exit 1; }
            sleep 0.2
        done
        # shellcheck disable=SC1091
        source "$RUN_DIR/stand-ins.env"
    fi
    echo "run: serving with $spin_version (spin up) on $LISTEN" >&2
    # Above request_timeout_ms plus the bookkeeping's 5 s (README, Deadlines).
    spin up --listen "$LISTEN" --state-dir "$RUN_DIR/spin" --request-timeout 40s
    exit $?
fi

stubs=()
if [ -z "${SPIN_VARIABLE_OPENAI_API_KEY:-}" ]; then
    echo "run: no SPIN_VARIABLE_OPENAI_API_KEY: using local OpenAI and Qdrant stand-ins" >&2
    stubs=(--stubs)
fi
echo "run: no Spin 4.0.x on PATH: serving with the harness's serve on $LISTEN" >&2
# The dev profile: the same build of `serve` that `bash tests/test.sh` makes (see Cargo.toml).
exec cargo run --quiet -p chatbot-harness --bin serve -- --listen "$LISTEN" --migrate "${stubs[@]}"
