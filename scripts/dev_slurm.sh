#!/usr/bin/env bash
# A real single-node SLURM cluster for developing and testing bench-harness (Debian 12: slurm-wlm 22.05).
#
#   scripts/dev_slurm.sh install   # apt-get install slurm-wlm slurmdbd mariadb-server (root)
#   scripts/dev_slurm.sh start     # idempotent; prints `export SLURM_CONF=...`
#   scripts/dev_slurm.sh stop      # stops the daemons by their PID files
#
# Settings: DEV_SLURM_DIR (default /tmp/bench-slurm-$USER), DEV_SLURM_PORT (default 7817 as root, 17817
# otherwise), DEV_SLURM_MAX_ARRAY_SIZE (default 1001; the tests use a small one to exercise array splitting).
# Partitions: debug (default), low (preemptable, requeue) and high (preempts low). Associations, limits and QOS
# are enforced (AccountingStorageEnforce), so submit limits set with sacctmgr apply as on a real cluster.
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
ME=$(id -un)
DIR=${DEV_SLURM_DIR:-/tmp/bench-slurm-$ME}
if [ "$(id -u)" = 0 ]; then PORT=${DEV_SLURM_PORT:-7817}; else PORT=${DEV_SLURM_PORT:-17817}; fi
CTLD_PORT=$PORT SLURMD_PORT=$((PORT + 1)) DBD_PORT=$((PORT + 2)) DB_PORT=$((PORT + 3))
export SLURM_CONF=$DIR/etc/slurm.conf

running() { [ -s "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null && [ "$(cat "/proc/$(cat "$1")/comm" 2>/dev/null)" = "$2" ]; }
wait_until() { local limit=$1; shift; local end=$((SECONDS + limit))
  until "$@" >/dev/null 2>&1; do
    if [ $SECONDS -ge $end ]; then echo "dev_slurm: gave up waiting for: $*" >&2; return 1; fi; sleep 0.2; done; }
stop_pid() { local f=$1; [ -s "$f" ] || return 0; local p; p=$(cat "$f")
  if kill -0 "$p" 2>/dev/null; then kill "$p"
    for _ in $(seq 1 50); do kill -0 "$p" 2>/dev/null || break; sleep 0.2; done
    kill -0 "$p" 2>/dev/null && kill -9 "$p"; fi
  rm -f "$f"; }

install() {
  command -v slurmctld >/dev/null 2>&1 && command -v slurmdbd >/dev/null 2>&1 && command -v mariadbd >/dev/null 2>&1 \
    && return 0
  export DEBIAN_FRONTEND=noninteractive
  apt-get install -y -qq slurm-wlm slurmdbd mariadb-server >/dev/null \
    || { apt-get update -qq && apt-get install -y -qq slurm-wlm slurmdbd mariadb-server >/dev/null; }
}

start() {
  mkdir -p "$DIR"/{etc,state,spool,log,run,munge,db}
  chmod 700 "$DIR/munge"
  # munge: the system daemon as root, a private one otherwise
  if [ "$(id -u)" = 0 ]; then
    MUNGE_SOCKET=/run/munge/munge.socket.2
    mkdir -p /run/munge && chown munge:munge /run/munge
    [ -s /etc/munge/munge.key ] || { /usr/sbin/mungekey --create --keyfile=/etc/munge/munge.key
      chown munge:munge /etc/munge/munge.key; chmod 600 /etc/munge/munge.key; }
    # the system munged: started (and later stopped) by this script only when it was not running already
    if ! running /run/munge/munged.pid munged; then
      runuser -u munge -- /usr/sbin/munged
      echo /run/munge/munged.pid > "$DIR/run/munged.started"
    fi
  else
    MUNGE_SOCKET=$DIR/munge/munge.socket
    [ -s "$DIR/munge/munge.key" ] || { /usr/sbin/mungekey --create --keyfile="$DIR/munge/munge.key"; chmod 600 "$DIR/munge/munge.key"; }
    running "$DIR/munge/munged.pid" munged || /usr/sbin/munged --force --key-file="$DIR/munge/munge.key" \
      --socket="$MUNGE_SOCKET" --pid-file="$DIR/munge/munged.pid" --log-file="$DIR/log/munged.log" \
      --seed-file="$DIR/munge/munged.seed"
  fi
  wait_until 10 sh -c "munge -S '$MUNGE_SOCKET' -n | unmunge -S '$MUNGE_SOCKET'"

  local host cpus mem
  host=$(hostname -s); cpus=$(nproc); mem=$(( $(awk '/MemTotal/{print $2}' /proc/meminfo) / 1024 - 2048 ))
  fill() { sed -e "s#@HOST@#$host#g; s#@USER@#$ME#g; s#@DIR@#$DIR#g; s#@CPUS@#$cpus#g; s#@MEM@#$mem#g" \
               -e "s#@MUNGE_SOCKET@#$MUNGE_SOCKET#g; s#@CTLD_PORT@#$CTLD_PORT#g; s#@SLURMD_PORT@#$SLURMD_PORT#g" \
               -e "s#@DBD_PORT@#$DBD_PORT#g; s#@DB_PORT@#$DB_PORT#g" \
               -e "s#@MAX_ARRAY_SIZE@#${DEV_SLURM_MAX_ARRAY_SIZE:-1001}#g" "$1"; }
  local changed=0
  fill "$HERE/slurm/slurm.conf.in" > "$SLURM_CONF.new"
  if cmp -s "$SLURM_CONF.new" "$SLURM_CONF"; then rm "$SLURM_CONF.new"; else mv "$SLURM_CONF.new" "$SLURM_CONF"; changed=1; fi

  # accounting database (MariaDB) and slurmdbd
  local dbuser sock=$DIR/run/mysqld.sock
  if [ "$(id -u)" = 0 ]; then dbuser=mysql; chown mysql "$DIR/db"; chmod 777 "$DIR/run" "$DIR/log"; else dbuser=$ME; fi
  [ -d "$DIR/db/mysql" ] || mariadb-install-db --no-defaults --user="$dbuser" --datadir="$DIR/db" \
      --auth-root-authentication-method=normal --skip-test-db > "$DIR/log/mariadb-install.log" 2>&1
  if ! running "$DIR/run/mysqld.pid" mariadbd; then
    setsid /usr/sbin/mariadbd --no-defaults --user="$dbuser" --datadir="$DIR/db" --socket="$sock" \
      --pid-file="$DIR/run/mysqld.pid" --port="$DB_PORT" --bind-address=127.0.0.1 --innodb-buffer-pool-size=64M \
      --log-error="$DIR/log/mariadb.log" </dev/null >/dev/null 2>&1 &
    wait_until 60 mariadb --no-defaults -S "$sock" -uroot -e "select 1"
    mariadb --no-defaults -S "$sock" -uroot -e "CREATE DATABASE IF NOT EXISTS bench_acct_$ME;
      CREATE USER IF NOT EXISTS 'slurm'@'localhost' IDENTIFIED BY 'benchdev';
      CREATE USER IF NOT EXISTS 'slurm'@'127.0.0.1' IDENTIFIED BY 'benchdev';
      GRANT ALL ON bench_acct_$ME.* TO 'slurm'@'localhost'; GRANT ALL ON bench_acct_$ME.* TO 'slurm'@'127.0.0.1';
      FLUSH PRIVILEGES;"
  fi
  fill "$HERE/slurm/slurmdbd.conf.in" > "$DIR/etc/slurmdbd.conf"; chmod 600 "$DIR/etc/slurmdbd.conf"
  running "$DIR/run/slurmdbd.pid" slurmdbd || /usr/sbin/slurmdbd
  wait_until 60 sacctmgr -n list cluster
  sacctmgr -n list cluster format=cluster | grep -qw benchdev || sacctmgr -i add cluster benchdev >/dev/null
  # associations are enforced: the user needs one (root has one in account root from the start)
  sacctmgr -nP show assoc where user="$ME" format=user | grep -q . \
    || sacctmgr -i add user "$ME" account=root >/dev/null

  # a changed slurm.conf restarts the daemons (some settings, e.g. AccountingStorageEnforce, need a restart)
  if [ "$changed" = 1 ]; then stop_pid "$DIR/run/slurmd.pid"; stop_pid "$DIR/run/slurmctld.pid"; fi
  running "$DIR/run/slurmctld.pid" slurmctld || /usr/sbin/slurmctld
  wait_until 30 sh -c "scontrol ping | grep -q UP"
  running "$DIR/run/slurmd.pid" slurmd || /usr/sbin/slurmd
  wait_until 60 sh -c "sinfo -h -n $host -o %T | grep -Eq '^(idle|mixed|allocated)'" || {
    scontrol update nodename="$host" state=resume || true
    wait_until 30 sh -c "sinfo -h -n $host -o %T | grep -Eq '^(idle|mixed|allocated)'"; }
  echo "export SLURM_CONF=$SLURM_CONF"
}

stop() {
  stop_pid "$DIR/run/slurmd.pid"; stop_pid "$DIR/run/slurmctld.pid"; stop_pid "$DIR/run/slurmdbd.pid"
  stop_pid "$DIR/run/mysqld.pid"
  if [ "$(id -u)" = 0 ]; then
    # the system munged only if this script started it (never one that ran before)
    if [ -s "$DIR/run/munged.started" ]; then stop_pid "$(cat "$DIR/run/munged.started")"; rm -f "$DIR/run/munged.started"; fi
  else
    stop_pid "$DIR/munge/munged.pid"
  fi
}

case "${1:-}" in
  install) install ;;
  start) start ;;
  stop) stop ;;
  *) echo "usage: $0 install|start|stop" >&2; exit 2 ;;
esac
