#!/usr/bin/env bash
# Runs the whole product: the Daraja simulator (MPESA_ENV=simulator), the callback server and
# the adk web chat. Installs what it needs on first run. Ctrl-C stops everything.
set -euo pipefail
cd "$(dirname "$0")"
source scripts/venv.sh
PY=.venv/bin/python
mkdir -p logs data

config=$($PY -m mpesa_agent.preflight) || { echo "Fix the settings above (.env / .env.local) and run ./start.sh again."; exit 1; }
eval "$config"
ADK_PORT=${ADK_PORT:-8000}
SESSIONS_DB=${SESSIONS_DB:-$PWD/data/sessions.db}  # chats survive a restart (ADK's own SQLite sessions)

# Every port first: a busy one is named with what holds it, before anything starts.
A2A_PORT=${A2A_PORT:-8004}
ports=("$CALLBACK_PORT=callback server" "$ADK_PORT=adk web")
[ -n "${START_A2A:-}" ] && ports+=("$A2A_PORT=A2A server")
[ "$MPESA_ENV" = simulator ] && ports+=("$SIM_PORT=simulator")
$PY scripts/check_ports.py "${ports[@]}" || exit 1

pids=() names=()
stop() {
  trap - INT TERM EXIT
  echo; echo "Stopping..."
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  echo "Stopped."
}
trap 'stop; exit 130' INT TERM
trap stop EXIT

# start NAME URL COMMAND...: run in the background, log to logs/NAME.log, wait until URL answers
# as that program itself (its own health answer), or print its real error and stop everything.
start() {
  local name=$1 url=$2; shift 2
  echo "Starting $name (log: logs/$name.log)..."
  "$@" >"logs/$name.log" 2>&1 &
  pids+=($!); names+=("$name")
  if ! $PY scripts/wait_ready.py "$name" "$url" 60 "$!"; then
    echo "$name did not come up; last lines of logs/$name.log:"; tail -n 20 "logs/$name.log"; exit 1
  fi
}

if [ "$MPESA_ENV" = simulator ]; then
  start simulator "http://127.0.0.1:$SIM_PORT/simulator/health" $PY -m mpesa_agent.simulator --port "$SIM_PORT"
else
  echo "MPESA_ENV=$MPESA_ENV: using Daraja at $DARAJA_URL (no simulator)."
  if [ -n "${START_NGROK:-}" ]; then
    command -v ngrok >/dev/null || { echo "START_NGROK is set but ngrok is not installed."; exit 1; }
    start ngrok "http://127.0.0.1:4040/api/tunnels" ngrok http "$CALLBACK_PORT" --log stdout
    echo "ngrok is up: set MPESA_CALLBACK_URL to its https address (see http://127.0.0.1:4040) + /callback/<token>."
  fi
fi
start callback_server "http://127.0.0.1:$CALLBACK_PORT/health" $PY callback_server.py --port "$CALLBACK_PORT"
grep -E "^Mode:|callbacks expected" logs/callback_server.log || true

# Our settings layer .env < .env.local < environment; ADK's own .env loading would put .env's
# values into the environment and hide .env.local's overrides.
export ADK_DISABLE_LOAD_DOTENV=1
.venv/bin/adk telemetry disable >/dev/null 2>&1 || true
start adk_web "http://127.0.0.1:$ADK_PORT/list-apps" \
  .venv/bin/adk web --host 127.0.0.1 --port "$ADK_PORT" --session_service_uri "sqlite:///$SESSIONS_DB" --no-reload .

if [ -n "${START_A2A:-}" ]; then  # the agent over A2A, for other agents (off by default)
  start a2a "http://127.0.0.1:$A2A_PORT/.well-known/agent-card.json" $PY -m mpesa_agent.a2a_server --port "$A2A_PORT"
  echo "A2A: http://127.0.0.1:$A2A_PORT (agent card at /.well-known/agent-card.json)"
fi

cat <<MSG

Ready. Chat: http://127.0.0.1:$ADK_PORT/dev-ui/?app=mpesa_agent
Dashboard: http://127.0.0.1:$CALLBACK_PORT/dashboard (live payments, history, analytics; sign in with CALLBACK_API_KEY from .env.local)
Try: "Send 500 to 0712345678 for lunch" (an STK Push asks that phone's owner to pay your shortcode).
Logs: logs/simulator.log, logs/callback_server.log, logs/adk_web.log. Chats: $SESSIONS_DB. Ctrl-C stops everything.
MSG
wait -n || true
for i in "${!pids[@]}"; do
  if ! kill -0 "${pids[$i]}" 2>/dev/null; then
    echo "${names[$i]} stopped; last lines of logs/${names[$i]}.log:"; tail -n 20 "logs/${names[$i]}.log"
  fi
done
exit 1
