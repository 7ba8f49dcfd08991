#!/usr/bin/env bash
# Stop the one-node Slurm cluster that scripts/slurm/start.sh started: cancel its jobs, then stop
# slurmd, slurmctld, slurmdbd, MariaDB and munged by their PID files (TERM, then KILL after 20 s).
#   bash scripts/slurm/stop.sh                 # everything
#   bash scripts/slurm/stop.sh --slurm-only    # the three Slurm daemons; MariaDB and munged keep running
# Safe to run when nothing is running. Installed packages and accounting data stay.
set -uo pipefail

STATE="${EMBEDEXP_SLURM_STATE:-/var/lib/embedexp-slurm}"
say() { echo "slurm/stop.sh: $*"; }

# stop NAME=PIDFILE... -> TERM every process the files name at once, wait for all to exit, KILL after 20 s
stop() {
  local pairs=() item name file pid
  for item in "$@"; do
    name=${item%%=*} file=${item#*=}
    [ -s "$file" ] || continue
    pid="$(cat "$file")"
    if kill -0 "$pid" 2>/dev/null; then
      say "stopping $name (pid $pid)"
      kill -TERM "$pid" 2>/dev/null
      pairs+=("$name=$pid")
    fi
    rm -f "$file"
  done
  for item in "${pairs[@]}"; do
    name=${item%%=*} pid=${item#*=}
    for _ in $(seq 1 200); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    if kill -0 "$pid" 2>/dev/null; then
      say "$name (pid $pid) ignored SIGTERM for 20 s; sending SIGKILL"
      kill -KILL "$pid" 2>/dev/null
    fi
  done
}

if [ "$(id -u)" != 0 ]; then echo "slurm/stop.sh: error: must run as root" >&2; exit 1; fi

if [ -s "$STATE/run/slurmctld.pid" ] && kill -0 "$(cat "$STATE/run/slurmctld.pid")" 2>/dev/null; then
  jobs="$(squeue -h -o %A 2>/dev/null | tr '\n' ' ')"
  if [ -n "${jobs// /}" ]; then
    say "cancelling jobs $jobs"
    scancel $jobs 2>/dev/null
    for _ in $(seq 1 40); do [ -z "$(squeue -h -o %A 2>/dev/null)" ] && break; sleep 0.25; done
  fi
fi
stop slurmd="$STATE/run/slurmd.pid" slurmctld="$STATE/run/slurmctld.pid"
stop slurmdbd="$STATE/run/slurmdbd.pid"   # after slurmctld, which sends it the last job records
if [ "${1:-}" != "--slurm-only" ]; then
  stop mariadbd=/run/mysqld/mysqld.pid munged=/run/munge/munged.pid
fi
exit 0
