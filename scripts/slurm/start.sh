#!/usr/bin/env bash
# Start a real one-node Slurm cluster (with accounting) on this Debian machine, for tests and CI.
#   sudo bash scripts/slurm/start.sh        # installs the packages if missing; safe to run again
#   bash scripts/slurm/stop.sh              # stops every daemon this script started
# Idempotent: installs what is missing, (re)writes the configs from scripts/slurm/*.in, starts only
# the daemons that are not running (all of them when a config changed), and returns once `sinfo`
# shows the node idle and `sacctmgr` answers. PID 1 need not be systemd: daemons are started here and
# stopped by their PID files. State, logs and PID files live in $EMBEDEXP_SLURM_STATE.
set -euo pipefail

HERE="$(cd "$(dirname "$0")" && pwd)"
STATE="${EMBEDEXP_SLURM_STATE:-/var/lib/embedexp-slurm}"
CONF_DIR=/etc/slurm
CLUSTER=embedexp
PARTITION="${EMBEDEXP_SLURM_PARTITION:-debug}"
CTLD_PORT=6817 SLURMD_PORT=6818 DBD_PORT=6819
DB_USER=slurm DB_NAME=slurm_acct_db DB_PASS=embedexp-local
MARKER="embedexp-local-slurm"
PACKAGES=(slurmctld slurmd slurm-client munge slurmdbd mariadb-server)
WAIT_S="${EMBEDEXP_SLURM_WAIT_S:-60}"

die() { echo "slurm/start.sh: error: $*" >&2; exit 1; }
say() { echo "slurm/start.sh: $*"; }

# alive PIDFILE -> true when the file names a running process
alive() { [ -s "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }

# wait_for SECONDS WHAT CMD... -> run CMD until it succeeds, or die naming WHAT and the log to read
wait_for() {
  local seconds=$1 what=$2; shift 2
  local end=$((SECONDS + seconds))
  until "$@" >/dev/null 2>&1; do
    [ $SECONDS -lt $end ] || die "$what did not come up within ${seconds}s (see logs in $STATE/log)"
    sleep 0.5
  done
}

[ "$(id -u)" = 0 ] || die "must run as root (it installs Debian packages and starts system daemons)"
command -v apt-get >/dev/null || [ -x /usr/sbin/slurmctld ] || die "apt-get not found: this script supports Debian/Ubuntu only"

install_packages() {
  local missing=()
  for p in "${PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
  done
  [ ${#missing[@]} -eq 0 ] && return
  say "installing ${missing[*]}"
  # keep the packages' maintainer scripts from starting services (no systemd here; we start them below)
  local policy=/usr/sbin/policy-rc.d created_policy=0
  if [ ! -e $policy ]; then printf '#!/bin/sh\nexit 101\n' > $policy; chmod +x $policy; created_policy=1; fi
  local ok=0
  for attempt in 1 2; do
    if DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}" > "$STATE/log/apt.log" 2>&1; then
      ok=1; break
    fi
    [ $attempt = 1 ] && { say "apt-get install failed; running apt-get update and retrying"; apt-get update -q >> "$STATE/log/apt.log" 2>&1 || true; }
  done
  [ $created_policy = 1 ] && rm -f $policy
  [ $ok = 1 ] || die "apt-get install ${missing[*]} failed; last lines of $STATE/log/apt.log:
$(tail -n 5 "$STATE/log/apt.log")"
}

write_configs() {
  # the node's real CPU layout and memory, as slurmd sees them
  local node_line node cpus mem host
  node_line="$(slurmd -C | head -n 1)"
  [[ "$node_line" == NodeName=* ]] || die "\`slurmd -C\` printed no NodeName line: $node_line"
  node="$(sed -E 's/^NodeName=([^ ]+).*/\1/' <<<"$node_line")"
  cpus="$(sed -E 's/.* CPUs=([0-9]+).*/\1/' <<<"$node_line")"
  mem="$(sed -E 's/.* RealMemory=([0-9]+).*/\1/' <<<"$node_line")"
  host="$(hostname -s)"
  [ "$cpus" -ge 1 ] && [ "$mem" -ge 1 ] || die "cannot read CPUs/RealMemory from: $node_line"
  if [ -e $CONF_DIR/slurm.conf ] && ! grep -q "$MARKER" $CONF_DIR/slurm.conf; then
    die "$CONF_DIR/slurm.conf exists and was not written by this script; refusing to overwrite a real cluster's config"
  fi
  mkdir -p $CONF_DIR
  local subst=(-e "s|@CLUSTER@|$CLUSTER|g" -e "s|@HOST@|$host|g" -e "s|@NODE@|$node|g" -e "s|@NODE_LINE@|$node_line|g"
    -e "s|@MEM_PER_CPU@|$((mem / cpus))|g" -e "s|@PARTITION@|$PARTITION|g" -e "s|@STATE@|$STATE|g"
    -e "s|@CTLD_PORT@|$CTLD_PORT|g" -e "s|@SLURMD_PORT@|$SLURMD_PORT|g" -e "s|@DBD_PORT@|$DBD_PORT|g"
    -e "s|@DB_USER@|$DB_USER|g" -e "s|@DB_PASS@|$DB_PASS|g" -e "s|@DB_NAME@|$DB_NAME|g")
  CHANGED=0
  local name
  for name in slurm.conf slurmdbd.conf; do
    sed "${subst[@]}" "$HERE/$name.in" > "$STATE/$name.new"
    if ! cmp -s "$STATE/$name.new" "$CONF_DIR/$name"; then
      mv "$STATE/$name.new" "$CONF_DIR/$name"; CHANGED=1
    else
      rm -f "$STATE/$name.new"
    fi
  done
  chmod 644 $CONF_DIR/slurm.conf
  chmod 600 $CONF_DIR/slurmdbd.conf   # slurmdbd refuses a config others can read (it holds the DB password)
  NODE="$node"
}

start_munge() {
  if [ ! -s /etc/munge/munge.key ]; then
    mkdir -p /etc/munge
    dd if=/dev/urandom bs=1 count=1024 of=/etc/munge/munge.key status=none
  fi
  chown munge:munge /etc/munge/munge.key; chmod 400 /etc/munge/munge.key
  mkdir -p /run/munge /var/log/munge /var/lib/munge
  chown munge:munge /run/munge /var/log/munge /var/lib/munge
  if ! alive /run/munge/munged.pid; then
    say "starting munged"
    runuser -u munge -- /usr/sbin/munged --pid-file=/run/munge/munged.pid || die "munged failed to start (see /var/log/munge/munged.log)"
  fi
  wait_for 10 munged bash -c 'munge -n | unmunge'
}

start_mariadb() {
  mkdir -p /run/mysqld && chown mysql:mysql /run/mysqld   # the socket and PID file go here
  if [ ! -d /var/lib/mysql/mysql ]; then
    say "initialising the MariaDB data directory"
    mariadb-install-db --user=mysql --datadir=/var/lib/mysql > "$STATE/log/mariadb-install.log" 2>&1 \
      || die "mariadb-install-db failed (see $STATE/log/mariadb-install.log)"
  fi
  if ! alive /run/mysqld/mysqld.pid; then
    say "starting mariadbd"
    setsid /usr/sbin/mariadbd --user=mysql --datadir=/var/lib/mysql --socket=/run/mysqld/mysqld.sock \
      --pid-file=/run/mysqld/mysqld.pid --bind-address=127.0.0.1 --log-error="$STATE/log/mariadb.log" \
      < /dev/null > /dev/null 2>&1 &
  fi
  wait_for 30 mariadbd mariadb-admin --socket=/run/mysqld/mysqld.sock ping
  mariadb --socket=/run/mysqld/mysqld.sock -e "CREATE DATABASE IF NOT EXISTS $DB_NAME;
    CREATE USER IF NOT EXISTS '$DB_USER'@'localhost' IDENTIFIED BY '$DB_PASS';
    GRANT ALL ON $DB_NAME.* TO '$DB_USER'@'localhost';" || die "cannot create the accounting database user in MariaDB"
}

start_daemon() {  # start_daemon NAME -> start /usr/sbin/NAME unless its PID file names a live process
  local name=$1
  alive "$STATE/run/$name.pid" && return
  say "starting $name"
  "/usr/sbin/$name" || die "$name failed to start (see $STATE/log/$name.log)"
}

resume_node() {
  local state
  state="$(sinfo -h -N -n "$NODE" -o %t 2>/dev/null | head -n 1)"
  case "$state" in
    down*|drain*|drng*|fail*) scontrol update NodeName="$NODE" State=RESUME >/dev/null 2>&1 || true ;;
  esac
  [[ "$state" == idle* || "$state" == mix* || "$state" == alloc* ]]
}

mkdir -p "$STATE"/{log,run,spool/ctld,spool/d}
install_packages
write_configs
if [ "$CHANGED" = 1 ] && { alive "$STATE/run/slurmctld.pid" || alive "$STATE/run/slurmd.pid" || alive "$STATE/run/slurmdbd.pid"; }; then
  say "configuration changed; restarting the Slurm daemons"
  bash "$HERE/stop.sh" --slurm-only
fi
start_munge
start_mariadb
start_daemon slurmdbd
wait_for 30 slurmdbd sacctmgr -n list cluster
if ! sacctmgr -n -P list cluster format=cluster | grep -qx "$CLUSTER"; then
  sacctmgr -i add cluster "$CLUSTER" >/dev/null || die "sacctmgr could not register cluster $CLUSTER"
fi
start_daemon slurmctld
start_daemon slurmd
wait_for "$WAIT_S" "node $NODE (idle in sinfo)" resume_node
wait_for 10 "accounting (sacct)" sacct -n -X -S now
say "ready: cluster $CLUSTER, partition $PARTITION, node $NODE ($(sinfo -h -N -o '%c CPUs, %m MB' | head -n 1)); logs in $STATE/log"
