#!/usr/bin/env bash
# A single-node Slurm cluster on this machine, for jobqueue's Slurm tests and
# for trying the examples in examples/slurm/.  Loopback only.
#
#   bash scripts/slurm-cluster.sh start    install Slurm and munge if missing (Debian, as root),
#                                          start munged, slurmctld, slurmd; wait until the node is idle;
#                                          print the environment to use (eval "$(... start)")
#   bash scripts/slurm-cluster.sh status   exit 0 if the cluster answers (and print sinfo/squeue)
#   bash scripts/slurm-cluster.sh env      print the environment only
#   bash scripts/slurm-cluster.sh stop     cancel every job and stop exactly the daemons 'start' started
#
# Everything lives in $JOBQUEUE_SLURM_DIR (default /tmp/jobqueue-slurm): munge key and
# socket, slurm.conf, state and spool directories, logs, and the daemons' pids.
# 'start' is idempotent: a cluster that already answers is left as it is.
# Settings: JOBQUEUE_SLURM_DIR, JOBQUEUE_SLURM_CTLD_PORT (6817), JOBQUEUE_SLURM_D_PORT (6818).
set -euo pipefail

DIR="${JOBQUEUE_SLURM_DIR:-/tmp/jobqueue-slurm}"
CTLD_PORT="${JOBQUEUE_SLURM_CTLD_PORT:-6817}"
D_PORT="${JOBQUEUE_SLURM_D_PORT:-6818}"
CONF="$DIR/slurm.conf"
NODE="$(hostname -s)"
START_TIMEOUT=60

say() { echo "slurm-cluster: $*" >&2; }
die() { say "$*"; exit 1; }

print_env() {
    echo "export SLURM_CONF=$CONF"
    echo "export JOBQUEUE_SLURM_DIR=$DIR"
}

# --- installation --------------------------------------------------------------------

install_packages() {
    local missing=()
    for tool in slurmctld slurmd sbatch munged; do
        command -v "$tool" >/dev/null 2>&1 || missing+=("$tool")
    done
    [ ${#missing[@]} -eq 0 ] && return 0
    [ "$(id -u)" -eq 0 ] || die "missing ${missing[*]}: run this script as root so that it can apt-get install" \
        "slurmctld slurmd slurm-client munge, or install them yourself"
    command -v apt-get >/dev/null 2>&1 || die "missing ${missing[*]} and no apt-get here: install Slurm" \
        "(slurmctld, slurmd, client commands) and munge with this system's package manager"
    say "installing Slurm and munge from the Debian packages (missing: ${missing[*]})"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq >&2 || die "apt-get update failed: check the network and /etc/apt/sources.list"
    apt-get install -y -qq --no-install-recommends slurmctld slurmd slurm-client munge >&2 \
        || die "apt-get install of slurmctld slurmd slurm-client munge failed (see above)"
}

# --- pids ----------------------------------------------------------------------------------

# The pid recorded for daemon $1, if that process still runs the daemon.
live_pid() {
    local file="$DIR/$1.started-pid" pid
    [ -f "$file" ] || return 1
    pid="$(cat "$file")"
    [ -n "$pid" ] && [ -r "/proc/$pid/comm" ] && [ "$(cat "/proc/$pid/comm")" = "$1" ] || return 1
    echo "$pid"
}

# Start daemon $1 (the rest: its command line) in the background, in its own
# session, its output in $DIR/$1.out; record its pid.
launch() {
    local name="$1"
    shift
    setsid "$@" </dev/null >>"$DIR/$name.out" 2>&1 &
    local pid=$!
    echo "$pid" >"$DIR/$name.started-pid"
    # Until it has exec'd, the child is still 'setsid' or 'bash': live_pid would
    # take it for dead. Wait (up to 5 s) until it is the daemon, or gone.
    for _ in $(seq 250); do
        [ -r "/proc/$pid/comm" ] || break
        [ "$(cat "/proc/$pid/comm" 2>/dev/null)" = "$name" ] && break
        sleep 0.02
    done
}

# Stop the named daemons (those 'start' started, by their recorded pids): TERM
# all at once, KILL whichever still runs after 10 s.
stop_daemons() {
    local name pid pids=() alive=()
    for name in "$@"; do
        if pid="$(live_pid "$name")"; then
            kill "$pid" 2>/dev/null || true
            pids+=("$pid")
        fi
    done
    for _ in $(seq 100); do
        alive=()
        for pid in "${pids[@]}"; do [ -d "/proc/$pid" ] && alive+=("$pid"); done
        [ ${#alive[@]} -eq 0 ] && break
        sleep 0.1
    done
    for pid in "${pids[@]}"; do
        if [ -d "/proc/$pid" ]; then
            say "pid $pid did not stop in 10s: killing it"
            kill -KILL "$pid" 2>/dev/null || true
        fi
    done
    for name in "$@"; do rm -f "$DIR/$name.started-pid"; done
}

# --- configuration -----------------------------------------------------------------------

write_munge_key() {
    [ -s "$DIR/munge.key" ] && return 0
    (umask 077 && dd if=/dev/urandom of="$DIR/munge.key" bs=1024 count=1 status=none)
    chmod 400 "$DIR/munge.key"
}

# The node line for this machine, from slurmd -C (real CPU count and memory:
# declaring more than there is drains the node).
node_line() {
    local line
    line="$(slurmd -C | grep '^NodeName=' | head -n1)" || die "slurmd -C printed no NodeName line"
    line="$(sed -E "s/^NodeName=[^ ]+/NodeName=$NODE/" <<<"$line")"
    echo "$line NodeAddr=127.0.0.1 NodeHostname=$NODE State=UNKNOWN"
}

write_config() {
    mkdir -p "$DIR/ctld" "$DIR/d"
    : >"$DIR/plugstack.conf"
    cat >"$CONF" <<CONF
# Written by scripts/slurm-cluster.sh: one node, loopback only.
ClusterName=jobqueue
SlurmctldHost=$NODE(127.0.0.1)
SlurmctldPort=$CTLD_PORT
SlurmdPort=$D_PORT
CommunicationParameters=NoCtldInAddrAny,NoInAddrAny
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket=$DIR/munge.socket
StateSaveLocation=$DIR/ctld
SlurmdSpoolDir=$DIR/d
SlurmctldPidFile=$DIR/slurmctld.pid
SlurmdPidFile=$DIR/slurmd.pid
SlurmctldLogFile=$DIR/slurmctld.log
SlurmdLogFile=$DIR/slurmd.log
PlugStackConfig=$DIR/plugstack.conf
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
MpiDefault=none
ReturnToService=2
SchedulerParameters=batch_sched_delay=0,sched_min_interval=0
KillWait=5
MinJobAge=5
$(node_line)
PartitionName=debug Nodes=$NODE Default=YES MaxTime=INFINITE State=UP
CONF
}

# --- start / stop --------------------------------------------------------------------------

cluster_answers() {
    SLURM_CONF="$CONF" timeout 5 sinfo -h -o '%t' 2>/dev/null | grep -qx 'idle\|mix\|alloc\|comp'
}

node_state() {
    SLURM_CONF="$CONF" timeout 5 sinfo -h -N -o '%t' 2>/dev/null | head -n1
}

start() {
    mkdir -p "$DIR"
    chmod 700 "$DIR"
    if live_pid slurmctld >/dev/null && live_pid slurmd >/dev/null && cluster_answers; then
        say "already running (state in $DIR)"
        print_env
        return 0
    fi
    install_packages
    stop_all_daemons  # a half-started cluster: start afresh
    write_munge_key
    write_config
    launch munged munged --foreground --force --key-file="$DIR/munge.key" --socket="$DIR/munge.socket" \
        --pid-file="$DIR/munged.pid" --log-file="$DIR/munged.log" --seed-file="$DIR/munge.seed"
    wait_until "munged to listen on $DIR/munge.socket" munged test -S "$DIR/munge.socket"
    launch slurmctld slurmctld -D -c -i -f "$CONF"
    wait_until "slurmctld to answer" slurmctld env SLURM_CONF="$CONF" timeout 5 scontrol ping
    launch slurmd slurmd -D -f "$CONF" -N "$NODE"
    wait_until "the node $NODE to be idle (sinfo)" slurmd node_is_idle
    say "running: node $NODE idle, $(nproc) CPUs; state and logs in $DIR"
    print_env
}

node_is_idle() {
    local state
    state="$(node_state)"
    case "$state" in
        idle) return 0 ;;
        drain* | down*) SLURM_CONF="$CONF" scontrol update NodeName="$NODE" State=RESUME >/dev/null 2>&1 || true
                        return 1 ;;
        *) return 1 ;;
    esac
}

# wait_until WHAT DAEMON COMMAND...: poll COMMAND until it succeeds; fail loudly
# (with the daemon's log) if DAEMON dies or START_TIMEOUT passes.
wait_until() {
    local what="$1" daemon="$2" deadline=$((SECONDS + START_TIMEOUT))
    shift 2
    until "$@" >/dev/null 2>&1; do
        if ! live_pid "$daemon" >/dev/null; then
            show_logs "$daemon"
            stop_all_daemons
            die "$daemon exited while waiting for $what; its log is above (state in $DIR)"
        fi
        if [ "$SECONDS" -ge "$deadline" ]; then
            show_logs "$daemon"
            stop_all_daemons
            die "timed out after ${START_TIMEOUT}s waiting for $what; the log is above (state in $DIR)"
        fi
        sleep 0.2
    done
}

show_logs() {
    for file in "$DIR/$1.out" "$DIR/$1.log"; do
        [ -f "$file" ] && { echo "--- $file" >&2; tail -n 30 "$file" >&2; }
    done
    return 0
}

stop_all_daemons() {
    stop_daemons slurmd slurmctld munged
}

stop() {
    if live_pid slurmctld >/dev/null; then
        SLURM_CONF="$CONF" timeout 10 scancel --full --signal=KILL --user=root >/dev/null 2>&1 || true
        SLURM_CONF="$CONF" timeout 10 scancel --user=root >/dev/null 2>&1 || true
    fi
    stop_all_daemons
    say "stopped"
}

status() {
    if live_pid slurmctld >/dev/null && live_pid slurmd >/dev/null && cluster_answers; then
        SLURM_CONF="$CONF" sinfo
        SLURM_CONF="$CONF" squeue
        return 0
    fi
    say "not running (state in $DIR); start it with: bash scripts/slurm-cluster.sh start"
    return 1
}

case "${1:-}" in
    start) start ;;
    stop) stop ;;
    status) status ;;
    env) print_env ;;
    *) die "usage: $0 start|stop|status|env" ;;
esac
