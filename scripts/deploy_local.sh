#!/usr/bin/env bash
# A real Flower deployment on loopback: one SuperLink, N SuperNodes (one partition each), `flwr run`,
# and every process stopped at the end (also on error or Ctrl-C).
#
#   scripts/deploy_local.sh [-n NODES] [-p PORT] [--tls] [--fail PARTITION:ROUND] [-- FLWR_RUN_ARGS...]
#
#   -n NODES       SuperNodes to start (default 2); partition-id 0..N-1, num-partitions N
#   -p PORT        SuperLink HTTP port (Fleet + Control API; default 9093); SuperNodes use PORT+1..PORT+N
#   --tls          self-signed CA + server certificate (python cryptography), SuperLink over TLS
#   --auth         SuperNode authentication (implies --tls): one ECDSA key pair per node, public keys
#                  registered with `flwr supernode register`, SuperLink started with --enable-supernode-auth
#   --fail P:R     node with partition P raises at (0-based) round R: a dropout test
#   --kill P:STAGE:R  SIGKILL the SuperNode of partition P (and its ClientApp processes) when it reaches SecAgg+
#                  stage STAGE (setup|share_keys|collect_masked_vectors|unmask) of round R, then restart it
#                  with the same partition after KILL_RESTART_S seconds (default 5) on port PORT+1+N+P; needs
#                  -c secure=true.
#                  The node blocks at that stage (node config secagg-fault=STAGE:R:hang, baffle.flower.secagg_faults)
#                  until this script kills it; $LOGS/kill.log says when it was killed and restarted
#   after --       passed to `flwr run`, e.g. -- -c 'num-server-rounds=3 estimator-k=20'
#
# Environment: FLWR_HOME (default: a fresh temporary directory, removed at the end), PYTHON/FLWR_BIN
# (default: the repo's .venv), DEPLOY_TIMEOUT seconds for the whole run (default 900).
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
BIN="${FLWR_BIN:-$REPO/.venv/bin}"
NODES=2
PORT=9093
TLS=0
AUTH=0
FAIL=""
KILL=""
while [[ $# -gt 0 ]]; do
  case "$1" in
    -n) NODES="$2"; shift 2 ;;
    -p) PORT="$2"; shift 2 ;;
    --tls) TLS=1; shift ;;
    --auth) TLS=1; AUTH=1; shift ;;
    --fail) FAIL="$2"; shift 2 ;;
    --kill) KILL="$2"; shift 2 ;;
    --) shift; break ;;
    -h|--help) sed -n '2,22p' "$0"; exit 0 ;;
    *) echo "deploy_local.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
done
[[ "$NODES" =~ ^[0-9]+$ && "$NODES" -ge 1 ]] || { echo "deploy_local.sh: -n must be a positive integer" >&2; exit 2; }
if [[ -n "$KILL" ]]; then
  [[ "$KILL" =~ ^([0-9]+):(setup|share_keys|collect_masked_vectors|unmask):([0-9]+)$ ]] \
    || { echo "deploy_local.sh: --kill must be PARTITION:STAGE:ROUND with STAGE in setup|share_keys|collect_masked_vectors|unmask" >&2; exit 2; }
  KILL_P="${BASH_REMATCH[1]}"; KILL_STAGE="${BASH_REMATCH[2]}"; KILL_R="${BASH_REMATCH[3]}"
  [[ "$KILL_P" -lt "$NODES" ]] || { echo "deploy_local.sh: --kill partition $KILL_P is not below -n $NODES" >&2; exit 2; }
fi

OWN_HOME=0
if [[ -z "${FLWR_HOME:-}" ]]; then FLWR_HOME="$(mktemp -d -t baffle-flwr-XXXXXX)"; OWN_HOME=1; fi
export FLWR_HOME PATH="$BIN:$PATH"
export FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION=1  # never let Flower `uv sync` the app's deps (torch!)
export FLWR_SUPEREXEC_TASK_POLL_INTERVAL="${FLWR_SUPEREXEC_TASK_POLL_INTERVAL:-0.2}"  # default 1 s per hop
LOGS="$FLWR_HOME/logs"; mkdir -p "$LOGS"
export BAFFLE_FAULT_DIR="$FLWR_HOME/faults"; mkdir -p "$BAFFLE_FAULT_DIR"  # where a --kill node signals its stage
PIDS=()
WATCHER=""
source "$REPO/scripts/flower_procs.sh"

cleanup() {
  local code=$?
  [[ -n "$WATCHER" ]] && kill "$WATCHER" 2>/dev/null && wait "$WATCHER" 2>/dev/null
  [[ -f "$LOGS/restarted.pid" ]] && PIDS+=($(cat "$LOGS/restarted.pid"))
  [[ ${#PIDS[@]} -gt 0 ]] && stop_groups "${PIDS[@]}"  # each process's group and its SuperExecs' (flower_procs.sh)
  if [[ $code -ne 0 ]]; then
    echo "deploy_local.sh: failed (exit $code); last log lines:" >&2
    for f in "$LOGS"/*.log; do [[ -f "$f" ]] && { echo "== $f" >&2; tail -n 15 "$f" >&2; }; done
  fi
  [[ $OWN_HOME -eq 1 ]] && rm -rf "$FLWR_HOME"
  exit $code
}
trap cleanup EXIT INT TERM

LINK_TLS=(--insecure); NODE_TLS=(--insecure); ROOT_CERT=()
if [[ $TLS -eq 1 ]]; then
  CERTS="$FLWR_HOME/certs"; mkdir -p "$CERTS"
  "$BIN/python" -m baffle.flower.certs "$CERTS" "$NODES" >/dev/null
  LINK_TLS=(--ssl-ca-certfile "$CERTS/ca.crt" --ssl-certfile "$CERTS/server.pem" --ssl-keyfile "$CERTS/server.key")
  NODE_TLS=(--root-certificates "$CERTS/ca.crt")
  ROOT_CERT=(--root-certificates "$CERTS/ca.crt")
fi
"$BIN/python" -m baffle.flower.connections --address "127.0.0.1:$PORT" "${ROOT_CERT[@]}" >/dev/null

LINK_AUTH=(); [[ $AUTH -eq 1 ]] && LINK_AUTH=(--enable-supernode-auth)
setsid flower-superlink "${LINK_TLS[@]}" "${LINK_AUTH[@]}" --host 127.0.0.1 --port "$PORT" --disable-runtime-dependency-installation \
  >"$LOGS/superlink.log" 2>&1 &
PIDS+=($!)
for i in $(seq 1 60); do
  grep -q "Uvicorn running" "$LOGS/superlink.log" 2>/dev/null && break
  sleep 0.5
done

if [[ $AUTH -eq 1 ]]; then
  for ((i = 0; i < NODES; i++)); do
    flwr supernode register "$CERTS/node-keys/node_$i.pub" local-deployment >>"$LOGS/register.log" 2>&1
  done
fi
start_node() {  # partition, extra node config, log suffix[, port] -> starts a SuperNode in its own group; echoes its pid
  local i="$1" extra="$2" NODE_AUTH=()
  [[ $AUTH -eq 1 ]] && NODE_AUTH=(--auth-supernode-private-key "$CERTS/node-keys/node_$i")
  setsid flower-supernode "${NODE_TLS[@]}" "${NODE_AUTH[@]}" --superlink "127.0.0.1:$PORT" --port "${4:-$((PORT + 1 + i))}" \
    --node-config "partition-id=$i num-partitions=$NODES$extra" >"$LOGS/supernode-$i$3.log" 2>&1 &
  echo $!
}
for ((i = 0; i < NODES; i++)); do
  extra=""
  if [[ -n "$FAIL" && "${FAIL%%:*}" == "$i" ]]; then extra=" fail-at-round=${FAIL##*:}"; fi
  if [[ -n "$KILL" && "$KILL_P" == "$i" ]]; then extra="$extra secagg-fault=\"$KILL_STAGE:$KILL_R:hang\""; fi
  PIDS+=($(start_node "$i" "$extra" ""))
done

if [[ -n "$KILL" ]]; then  # wait for the node's marker, SIGKILL its groups (SuperNode + its SuperExec/ClientApps), restart it
  victim="${PIDS[$((KILL_P + 1))]}"
  (
    while [[ ! -f "$BAFFLE_FAULT_DIR/secagg-fault-p$KILL_P" ]]; do sleep 0.2; done
    groups="$(flower_groups "$victim")"
    for g in $groups; do kill -KILL -- "-$g" 2>/dev/null || true; done
    echo "$(date +%s.%N) killed partition $KILL_P (pid $victim, groups $(echo $groups)) at $(cat "$BAFFLE_FAULT_DIR/secagg-fault-p$KILL_P")" >>"$LOGS/kill.log"
    sleep "${KILL_RESTART_S:-5}"
    start_node "$KILL_P" "" "-restarted" "$((PORT + 1 + NODES + KILL_P))" >"$LOGS/restarted.pid"  # a fresh port
    echo "$(date +%s.%N) restarted partition $KILL_P (pid $(cat "$LOGS/restarted.pid"))" >>"$LOGS/kill.log"
    sleep 30
    if kill -0 "$(cat "$LOGS/restarted.pid")" 2>/dev/null; then state=running; else state="EXITED: $(tail -n 3 "$LOGS/supernode-$KILL_P-restarted.log" | tr '\n' ' ')"; fi
    echo "$(date +%s.%N) restarted partition $KILL_P 30 s later: $state" >>"$LOGS/kill.log"
  ) &
  WATCHER=$!
fi

cd "$REPO"
timeout "${DEPLOY_TIMEOUT:-900}" flwr run . local-deployment --stream -c "min-nodes=$NODES" "$@" 2>&1 | tee "$LOGS/run.log"
[[ -f "$LOGS/kill.log" ]] && cat "$LOGS/kill.log"
grep -q "baffle: final test accuracy" "$LOGS/run.log"
