#!/usr/bin/env bash
# Runs the LiteLLM proxy as a benchmark peer: one model, responses cached in Redis.
#
# Usage: tests/peer/litellm.sh PORT OPENAI_BASE_URL OPENAI_API_KEY REDIS_HOST REDIS_PORT [REDIS_PASSWORD]
#   OPENAI_BASE_URL includes /v1 (e.g. http://127.0.0.1:9000/v1): LiteLLM gives it to
#   the OpenAI SDK as base_url, which appends /chat/completions.
#   Ready when GET http://127.0.0.1:PORT/health/liveliness answers 200 (~5-8 s).
#   The first run builds the venv (~40 s, ~530 MB); later runs reuse it.
#
# Process model: the final `exec` turns this script's PID into the `litellm` CLI, which
# with --num_workers 1 runs uvicorn in the same process (no fork, no worker children):
# that one PID serves every request, so kill it and read /proc/PID/stat directly.
set -euo pipefail

# Pinned exactly. NEVER install any litellm 1.107.x release (it was compromised);
# bump only to another exact, checked version.
LITELLM_VERSION=1.80.17
# litellm[proxy] pulls no Redis client; this is the one LiteLLM's own requirements.txt pins.
REDIS_PY_VERSION=5.2.1
MODEL_NAME=gpt-4o-mini          # the model name our app sends
UPSTREAM_MODEL=openai/gpt-4o-mini

if [ $# -lt 5 ] || [ $# -gt 6 ]; then
  echo "usage: $0 PORT OPENAI_BASE_URL OPENAI_API_KEY REDIS_HOST REDIS_PORT [REDIS_PASSWORD]" >&2
  exit 2
fi
PORT=$1 BASE_URL=$2 REDIS_HOST=$4 REDIS_PORT=$5

# --- venv: created once and reused; the stamp names the exact versions installed ---
VENV=${XDG_CACHE_HOME:-$HOME/.cache}/rag-chatbot/litellm-venv
STAMP=$VENV/.installed-litellm-$LITELLM_VERSION-redis-$REDIS_PY_VERSION
if [ ! -f "$STAMP" ]; then
  echo "litellm.sh: installing litellm[proxy]==$LITELLM_VERSION into $VENV (one-off)" >&2
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install -q --disable-pip-version-check \
    "litellm[proxy]==$LITELLM_VERSION" "redis==$REDIS_PY_VERSION"
  rm -f "$VENV"/.installed-litellm-*
  touch "$STAMP"
fi

# --- environment: LiteLLM's Redis client also reads REDIS_* (REDIS_URL would override
# host/port), and OPENAI_*/DATABASE_URL/LITELLM_MASTER_KEY would change routing or
# turn on a DB/auth: clear them all so only the arguments count ---
for v in $(compgen -e | grep -E '^(REDIS_|OPENAI_)' || true); do unset "$v"; done
unset DATABASE_URL LITELLM_MASTER_KEY
PASSWORD_LINE=
# Secrets reach LiteLLM through the environment (os.environ/... in the config), never the file.
export LITELLM_PEER_OPENAI_API_KEY=$3
if [ -n "${6:-}" ]; then
  export LITELLM_PEER_REDIS_PASSWORD=$6        # read by LiteLLM via os.environ/ below
  PASSWORD_LINE="password: os.environ/LITELLM_PEER_REDIS_PASSWORD"
fi
# No phoning home (there is no internet here):
export LITELLM_LOCAL_MODEL_COST_MAP=True   # use the bundled price map; don't fetch it from GitHub
export LITELLM_TELEMETRY=False             # not read by 1.80.x (telemetry is a no-op); harmless
export LITELLM_LOG=ERROR                   # LiteLLM's own loggers: errors only

# --- config beside the venv, rewritten on every start (exec leaves no trap to clean a temp dir) ---
DIR=$VENV/../litellm-peer-$PORT
mkdir -p "$DIR"
cat >"$DIR/config.yaml" <<YAML
model_list:
  - model_name: $MODEL_NAME
    litellm_params:
      model: $UPSTREAM_MODEL
      api_base: "$BASE_URL"
      api_key: os.environ/LITELLM_PEER_OPENAI_API_KEY
litellm_settings:
  telemetry: false
  cache: true
  cache_params:
    type: redis
    host: "$REDIS_HOST"
    port: $REDIS_PORT
    ttl: 3600
    $PASSWORD_LINE
YAML
# uvicorn logging: warnings only, and no per-request access log (it costs CPU).
cat >"$DIR/log.json" <<'JSON'
{"version": 1, "disable_existing_loggers": false,
 "formatters": {"plain": {"format": "%(levelname)s %(name)s: %(message)s"}},
 "handlers": {"err": {"class": "logging.StreamHandler", "formatter": "plain", "stream": "ext://sys.stderr"}},
 "loggers": {"uvicorn": {"handlers": ["err"], "level": "WARNING", "propagate": false},
             "uvicorn.access": {"handlers": [], "level": "WARNING", "propagate": false}}}
JSON

# No master key and no DATABASE_URL: no auth, no spend logs to a DB. Startup banner goes to stdout.
exec "$VENV/bin/litellm" --config "$DIR/config.yaml" --host 127.0.0.1 --port "$PORT" \
  --num_workers 1 --telemetry False --log_config "$DIR/log.json"
