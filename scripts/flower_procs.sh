# Sourced by scripts/flower_sim.sh and scripts/deploy_local.sh: stop every process a Flower run started.
#
# Each Flower process we start (SuperLink, SuperNodes) runs under `setsid`, so it leads its own process
# group; the SuperExecs that a SuperLink or SuperNode spawns start new sessions of their own (the
# ServerApp, the ClientApps, the simulation and Ray's workers live there) and carry `--parent-pid PID`.
# stop_groups PID... terminates all those groups, waits up to 10 s for them to go, then kills what is left:
# nothing outlives the script (zombies, already dead, do not count).

flower_groups() {  # PID... -> the process groups to stop (never this script's own group)
  local pid self
  self="$(ps -o pgid= -p $$ | tr -d ' ')"
  for pid in "$@"; do
    echo "$pid"  # (the awk program must not contain the literal "--parent-pid PID": ps would list awk itself)
    ps -eo pgid=,args= | awk -v pid="$pid" 'index($0 " ", "--parent-pid " pid " ") {print $1}'
  done | sort -u | awk -v self="$self" '$1 != self'
}

group_alive() { ps -eo pgid=,stat= | awk -v g="$1" '$1 == g && $2 !~ /^Z/ {found = 1} END {exit !found}'; }

stop_groups() {
  local groups g left
  groups="$(flower_groups "$@")"
  for g in $groups; do kill -TERM -- "-$g" 2>/dev/null || true; done
  for _ in $(seq 1 40); do
    left=0
    for g in $groups; do group_alive "$g" && left=1; done
    [[ $left -eq 0 ]] && return 0
    sleep 0.25
  done
  for g in $groups; do kill -KILL -- "-$g" 2>/dev/null || true; done
}
