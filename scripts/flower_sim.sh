#!/usr/bin/env bash
# Flower simulation (Ray) of the baffle app: `flwr run . local-simulation` with NODES virtual nodes, on a
# SuperLink this script owns and stops at the end with every process it started (flwr 1.42 would otherwise
# start a detached local SuperLink that outlives the run). Exits non-zero when the run did not complete
# (flwr run itself exits 0 for a failed run); 130 / 143 when interrupted (Ctrl-C / SIGTERM), after stopping everything.
#
#   scripts/flower_sim.sh [-n NODES] [-- FLWR_RUN_ARGS...]     e.g. -- --run-config 'num-server-rounds=5'
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
    -h|--help) sed -n '2,11p' "$0"; exit 0 ;;
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
FLWR=""
source "$REPO/scripts/flower_procs.sh"
cleanup() {
  local code=$?
  [[ -n "$FLWR" ]] && kill "$FLWR" 2>/dev/null || true
  [[ -n "$LINK" ]] && stop_groups "$LINK"
  [[ $OWN_HOME -eq 1 ]] && rm -rf "$FLWR_HOME"
  exit $code
}
# Ctrl-C / SIGTERM exit 130 / 143 after the cleanup: `flwr run --stream` itself catches Ctrl-C and exits 0
# ("Exiting logstream"), so a plain `trap cleanup INT` would report an interrupted run as a success.
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

"$BIN/python" -m baffle.flower.connections >/dev/null
mkdir -p "$FLWR_HOME/local-superlink"
# the same command flwr uses for its managed local SuperLink, but owned (and stopped) by this script
setsid flower-superlink --insecure --simulation --isolation subprocess --control-api-address "127.0.0.1:$CONTROL_PORT" \
  --host 127.0.0.1 --port "$HTTP_PORT" --disable-runtime-dependency-installation \
  >"$FLWR_HOME/local-superlink/superlink.log" 2>&1 &
LINK=$!
# one Python process polls the health endpoint (not one process start per probe): 0 ready, 2 SuperLink gone,
# 1 still not ready after 90 s (flwr run then reports what is wrong)
set +e
"$BIN/python" - "$HTTP_PORT" "$LINK" <<'PY' 2>/dev/null
import os, sys, time
import httpx
port, pid = sys.argv[1], int(sys.argv[2])
deadline = time.monotonic() + 90
while time.monotonic() < deadline:
    try:
        if httpx.get(f"http://127.0.0.1:{port}/health", timeout=0.4).is_success:
            sys.exit(0)
    except httpx.HTTPError:
        pass
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        sys.exit(2)
    time.sleep(0.25)
sys.exit(1)
PY
ready=$?
set -e
if [ "$ready" = 2 ]; then
  echo "flower_sim.sh: SuperLink exited; see $FLWR_HOME/local-superlink/superlink.log" >&2
  exit 1
fi
cd "$REPO"
FED="$("$BIN/python" -c "from baffle.flower.connections import federation_config as f; print(f($NODES))")"
# In the background and waited for, so a SIGTERM to this script's PID alone (not its process group) runs the
# trap at once: bash runs traps only between foreground commands, i.e. after `flwr run` ended by itself.
set +e
: >"$FLWR_HOME/flwr-run.log"  # exists before tail opens it (the background job's redirection may come later)
flwr run . local-simulation --stream --federation-config "$FED" "$@" >>"$FLWR_HOME/flwr-run.log" 2>&1 &
FLWR=$!
tail -n +1 -f --pid="$FLWR" "$FLWR_HOME/flwr-run.log" &  # show it as it comes; ends once flwr run has
TAIL=$!
wait "$FLWR"
RC=$?
FLWR=""
wait "$TAIL"  # the log is complete (flwr wrote it itself) and shown before it is read below
set -e
[[ $RC -eq 0 ]] || { echo "flower_sim.sh: flwr run exited with $RC" >&2; exit "$RC"; }
RUN_ID="$(grep -o 'Successfully started run [0-9]*' "$FLWR_HOME/flwr-run.log" | tail -1 | awk '{print $4}')"
[[ -n "$RUN_ID" ]] || { echo "flower_sim.sh: the run did not start" >&2; exit 1; }
STATUS="$(flwr ls local-simulation --run-id "$RUN_ID" --format json \
  | "$BIN/python" -c 'import json, sys; print(json.load(sys.stdin)["runs"][0]["status"])')"
[[ "$STATUS" == "finished:completed" ]] || { echo "flower_sim.sh: run $RUN_ID ended as $STATUS" >&2; exit 1; }
echo "flower_sim.sh: run $RUN_ID $STATUS"
