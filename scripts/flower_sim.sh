#!/usr/bin/env bash
# Flower simulation (Ray) of the baffle app: `flwr run . local-simulation`, with the SuperLink stopped at
# the end. flwr 1.42 would otherwise start a detached local SuperLink that outlives the run.
#
#   scripts/flower_sim.sh [-n NODES] [-- FLWR_RUN_ARGS...]     e.g. -- -c 'num-server-rounds=5'
#
# Environment: FLWR_HOME (default: a fresh temporary directory, removed at the end), FLWR_BIN (default
# the repo's .venv/bin). The SuperLink uses the ports flwr's local-simulation connection expects
# (FLWR_LOCAL_SUPERLINK_HTTP_API_PORT, default 39091; FLWR_LOCAL_CONTROL_API_PORT, default 39093).
set -euo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
BIN="${FLWR_BIN:-$REPO/.venv/bin}"
NODES=10
while [[ $# -gt 0 ]]; do
  case "$1" in
    -n) NODES="$2"; shift 2 ;;
    --) shift; break ;;
    -h|--help) sed -n '2,10p' "$0"; exit 0 ;;
    *) echo "flower_sim.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
done
OWN_HOME=0
if [[ -z "${FLWR_HOME:-}" ]]; then FLWR_HOME="$(mktemp -d -t baffle-flwr-XXXXXX)"; OWN_HOME=1; fi
export FLWR_HOME PATH="$BIN:$PATH"
export FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION=1  # never let Flower `uv sync` the app's deps (torch!)
HTTP_PORT="${FLWR_LOCAL_SUPERLINK_HTTP_API_PORT:-39091}"
CONTROL_PORT="${FLWR_LOCAL_CONTROL_API_PORT:-39093}"
LINK=""
cleanup() {
  local code=$?
  if [[ -n "$LINK" ]]; then
    kill "$LINK" 2>/dev/null || true
    for _ in $(seq 1 20); do kill -0 "$LINK" 2>/dev/null || break; sleep 0.5; done
    kill -9 "$LINK" 2>/dev/null || true
  fi
  [[ $OWN_HOME -eq 1 ]] && rm -rf "$FLWR_HOME"
  exit $code
}
trap cleanup EXIT INT TERM

"$BIN/python" -m baffle.flower.connections --num-supernodes "$NODES" >/dev/null
mkdir -p "$FLWR_HOME/local-superlink"
# the same command flwr uses for its managed local SuperLink, but owned (and stopped) by this script
flower-superlink --insecure --simulation --isolation subprocess --control-api-address "127.0.0.1:$CONTROL_PORT" \
  --host 127.0.0.1 --port "$HTTP_PORT" --disable-runtime-dependency-installation \
  >"$FLWR_HOME/local-superlink/superlink.log" 2>&1 &
LINK=$!
for _ in $(seq 1 60); do
  "$BIN/python" -c "import httpx,sys; sys.exit(0 if httpx.get('http://127.0.0.1:$HTTP_PORT/health', timeout=0.4).is_success else 1)" 2>/dev/null && break
  kill -0 "$LINK" 2>/dev/null || { echo "flower_sim.sh: SuperLink exited; see $FLWR_HOME/local-superlink/superlink.log" >&2; exit 1; }
  sleep 0.5
done
cd "$REPO"
flwr run . local-simulation --stream "$@"
