#!/usr/bin/env bash
# A real single-node Slurm cluster on this machine, for the integration tests
# and for trying run_on_cluster.bash's Slurm targets without a cluster.
#
#   bash scripts/slurm_single_node.bash start    # write the config, start munged,
#                                                # slurmctld and slurmd, wait until idle
#   bash scripts/slurm_single_node.bash status   # exit 0 when the node is up
#   bash scripts/slurm_single_node.bash stop     # cancel jobs, stop the daemons we started
#
# Everything (slurm.conf, state, spool, logs, pid files) lives under one
# directory, $SLURM_TEST_DIR (default /var/tmp/distributed_ondisk_slurm); the
# system's /etc/slurm is never touched.  Every Slurm command and daemon reads
# the config named by SLURM_CONF, so `start` and `status` print
#   SLURM_CONF=<dir>/slurm.conf   (and the node name, CPUs, partition)
# as KEY=VALUE lines on stdout; export SLURM_CONF before using sbatch/srun.
# Needs root on Debian/Ubuntu with slurm-wlm and munge installed
# (scripts/install_system_deps.bash).  Messages go to stderr.
set -euo pipefail

DIR=${SLURM_TEST_DIR:-/var/tmp/distributed_ondisk_slurm}
CONF=$DIR/slurm.conf
PARTITION=${SLURM_TEST_PARTITION:-debug}
START_TIMEOUT_S=${SLURM_TEST_START_TIMEOUT_S:-60}
HEADER="# Written by distributed_ondisk scripts/slurm_single_node.bash; safe to delete when stopped."
MUNGE_KEY=/etc/munge/munge.key
MUNGE_SOCKET_DIR=/run/munge
MUNGE_PID=$MUNGE_SOCKET_DIR/munged.pid
export SLURM_CONF=$CONF

# A failed start undoes itself (ON_FAIL names the undo), so no daemon is left behind.
ON_FAIL=
die() {
    echo "slurm_single_node: error: $*" >&2
    if [ -n "$ON_FAIL" ]; then
        local undo=$ON_FAIL
        ON_FAIL=
        echo "slurm_single_node: stopping what this start launched" >&2
        "$undo"
    fi
    exit 1
}
say() { echo "slurm_single_node: $*" >&2; }

log_tails() {
    local f
    for f in "$DIR"/log/slurmctld.log "$DIR"/log/slurmd.log /var/log/munge/munged.log; do
        [ -s "$f" ] || continue
        echo "---- last lines of $f ----" >&2
        tail -n 15 "$f" >&2
    done
}

preflight() {
    [ "$(id -u)" -eq 0 ] || die "must run as root (uid $(id -u)): slurmd and munged need it"
    local cmd
    for cmd in munged munge slurmctld slurmd sinfo srun sbatch scontrol squeue scancel; do
        command -v "$cmd" >/dev/null 2>&1 || [ -x "/usr/sbin/$cmd" ] ||
            die "'$cmd' not found; install slurm-wlm and munge (bash scripts/install_system_deps.bash)"
    done
}

pid_alive() {  # pid_alive FILE: the pid in FILE names a running process
    local pid
    [ -s "$1" ] || return 1
    pid=$(cat "$1" 2>/dev/null) || return 1
    [[ "$pid" =~ ^[0-9]+$ ]] && kill -0 "$pid" 2>/dev/null
}

free_port() {  # a TCP port nobody listens on now (the kernel picks it)
    python3 -c 'import socket; s = socket.socket(); s.bind(("", 0)); print(s.getsockname()[1])'
}

write_conf() {
    local node cpus mem_total mem ctld_port slurmd_port
    node=$(hostname -s)
    cpus=$(nproc)
    mem_total=$(free -m | awk '/^Mem:/ {print $2}')
    # slurmd drains a node that reports less memory than configured; leave headroom.
    mem=$(( mem_total * 9 / 10 ))
    [ "$mem" -ge 1 ] || mem=1
    # Ports chosen now, not the well-known 6817/6818, so a system Slurm (or a
    # second test directory) on this machine cannot collide with ours.
    ctld_port=$(free_port)
    slurmd_port=$(free_port)
    while [ "$slurmd_port" = "$ctld_port" ]; do slurmd_port=$(free_port); done
    mkdir -p "$DIR"/state "$DIR"/spool/slurmd-"$node" "$DIR"/log "$DIR"/run
    local tmp=$CONF.tmp.$$
    cat >"$tmp" <<EOF
$HEADER
ClusterName=distributed-ondisk-test
SlurmctldHost=$node(127.0.0.1)
SlurmctldPort=$ctld_port
SlurmdPort=$slurmd_port
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
StateSaveLocation=$DIR/state
SlurmdSpoolDir=$DIR/spool/slurmd-%n
SlurmctldPidFile=$DIR/run/slurmctld.pid
SlurmdPidFile=$DIR/run/slurmd-%n.pid
SlurmctldLogFile=$DIR/log/slurmctld.log
SlurmdLogFile=$DIR/log/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
# Containers have no usable cgroups: track processes through /proc, bind nothing.
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
SwitchType=switch/none
MpiDefault=none
# No mail program is installed; the default (/bin/mail) only logs errors.
MailProg=/bin/true
# Several 1-CPU tasks share the node; memory is not a consumable resource.
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
# A node that went down (daemon restart) comes back by itself once slurmd registers.
ReturnToService=2
MinJobAge=60
KillWait=5
InactiveLimit=0
Waittime=0
NodeName=$node NodeAddr=127.0.0.1 CPUs=$cpus RealMemory=$mem State=UNKNOWN
PartitionName=$PARTITION Nodes=$node Default=YES MaxTime=INFINITE State=UP OverSubscribe=NO
EOF
    mv -f "$tmp" "$CONF"
}

print_env() {
    echo "SLURM_CONF=$CONF"
    echo "SLURM_TEST_DIR=$DIR"
    echo "SLURM_NODE=$(awk '/^NodeName=/ {sub("NodeName=", "", $1); print $1; exit}' "$CONF")"
    echo "SLURM_CPUS=$(awk '/^NodeName=/ {for (i = 1; i <= NF; i++) if ($i ~ /^CPUs=/) {sub("CPUs=", "", $i); print $i}}' "$CONF")"
    echo "SLURM_PARTITION=$(awk '/^PartitionName=/ {sub("PartitionName=", "", $1); print $1; exit}' "$CONF")"
}

slurmd_pidfile() { echo "$DIR/run/slurmd-$(hostname -s).pid"; }

munge_works() { munge -n 2>/dev/null | unmunge >/dev/null 2>&1; }

start_munge() {
    if munge_works; then
        return 0
    fi
    if [ ! -s "$MUNGE_KEY" ]; then
        say "creating $MUNGE_KEY"
        mkdir -p /etc/munge
        if command -v mungekey >/dev/null 2>&1; then
            mungekey --create --keyfile="$MUNGE_KEY"
        else
            dd if=/dev/urandom of="$MUNGE_KEY" bs=1024 count=1 status=none
        fi
    fi
    # munged refuses keys and directories that others could read or write.
    chown munge:munge /etc/munge "$MUNGE_KEY"
    chmod 700 /etc/munge
    chmod 600 "$MUNGE_KEY"
    install -d -o munge -g munge -m 755 "$MUNGE_SOCKET_DIR"
    install -d -o munge -g munge -m 700 /var/log/munge /var/lib/munge
    if pid_alive "$MUNGE_PID"; then
        die "munged (pid $(cat "$MUNGE_PID")) runs but 'munge -n | unmunge' fails; see /var/log/munge/munged.log"
    fi
    runuser -u munge -- munged 9>&-
    touch "$DIR/run/munged.ours"
    local i
    for i in $(seq 1 100); do
        munge_works && return 0
        sleep 0.1
    done
    log_tails
    die "munged did not start answering within 10 s"
}

wait_idle() {
    local deadline state
    deadline=$(( $(date +%s) + START_TIMEOUT_S ))
    while :; do
        state=$(sinfo -h -N -o '%T' 2>/dev/null | head -n 1 || true)
        case "$state" in
            idle|mixed|allocated|completing) return 0 ;;
        esac
        pid_alive "$DIR/run/slurmctld.pid" || { log_tails; die "slurmctld exited during start"; }
        pid_alive "$(slurmd_pidfile)" || { log_tails; die "slurmd exited during start"; }
        if [ "$(date +%s)" -ge "$deadline" ]; then
            log_tails
            die "node not idle after ${START_TIMEOUT_S} s (sinfo says '${state:-nothing}')"
        fi
        sleep 0.2
    done
}

wait_pid_file() {  # wait_pid_file FILE NAME: the daemon wrote FILE and runs
    local i
    for i in $(seq 1 100); do
        pid_alive "$1" && return 0
        sleep 0.1
    done
    log_tails
    die "$2 did not start (no live pid in $1)"
}

cmd_start() {
    preflight
    mkdir -p "$DIR"
    exec 9>"$DIR/.lock"
    flock -w 120 9 || die "another start/stop holds $DIR/.lock"
    if [ -f "$CONF" ] && pid_alive "$DIR/run/slurmctld.pid" && pid_alive "$(slurmd_pidfile)"; then
        start_munge
        wait_idle
        say "already running (SLURM_CONF=$CONF)"
        print_env
        return 0
    fi
    if pid_alive "$DIR/run/slurmctld.pid" || pid_alive "$(slurmd_pidfile)"; then
        say "half-running cluster found: stopping it first"
        stop_daemons
    fi
    if [ -e "$CONF" ] && ! head -n 1 "$CONF" | grep -qxF "$HEADER"; then
        die "$CONF exists and was not written by this script; refusing to overwrite it (set SLURM_TEST_DIR to another directory)"
    fi
    write_conf
    : >"$DIR/log/slurmctld.log"
    : >"$DIR/log/slurmd.log"
    ON_FAIL=stop_all
    start_munge
    # -c: start from a clean state; jobs of an earlier run died with its slurmd.
    slurmctld -c -f "$CONF" 9>&- || { log_tails; die "slurmctld failed to start"; }
    wait_pid_file "$DIR/run/slurmctld.pid" slurmctld
    slurmd -f "$CONF" 9>&- || { log_tails; die "slurmd failed to start"; }
    wait_pid_file "$(slurmd_pidfile)" slurmd
    wait_idle
    ON_FAIL=
    say "node $(hostname -s) idle (SLURM_CONF=$CONF)"
    print_env
}

stop_pids() {  # stop_pids FILE...: TERM them all, wait up to 20 s, then KILL
    local f pid i pids=() alive
    for f in "$@"; do
        if pid_alive "$f"; then
            pid=$(cat "$f")
            kill -TERM "$pid" 2>/dev/null || true
            pids+=("$pid")
        fi
    done
    for i in $(seq 1 200); do
        alive=()
        for pid in "${pids[@]}"; do kill -0 "$pid" 2>/dev/null && alive+=("$pid"); done
        [ "${#alive[@]}" -eq 0 ] && break
        sleep 0.1
    done
    for pid in "${alive[@]}"; do
        say "pid $pid ($(cat /proc/"$pid"/comm 2>/dev/null)) ignored SIGTERM for 20 s; killing it"
        kill -KILL "$pid" 2>/dev/null || true
    done
    rm -f "$@"
}

stop_daemons() {
    if [ -f "$CONF" ] && pid_alive "$DIR/run/slurmctld.pid"; then
        # Cancel what still runs so no job step outlives the daemons.
        local jobs i
        jobs=$(squeue -h -o '%i' 2>/dev/null || true)
        if [ -n "$jobs" ]; then
            say "cancelling jobs: $(echo $jobs)"
            scancel $jobs 2>/dev/null || true
            for i in $(seq 1 100); do
                [ -z "$(squeue -h -o '%i' 2>/dev/null || true)" ] && break
                sleep 0.1
            done
        fi
    fi
    stop_pids "$(slurmd_pidfile)" "$DIR/run/slurmctld.pid"
}

cmd_stop() {
    preflight
    [ -d "$DIR" ] || { say "not running (no $DIR)"; return 0; }
    exec 9>"$DIR/.lock"
    flock -w 120 9 || die "another start/stop holds $DIR/.lock"
    stop_all
    say "stopped"
}

stop_all() {
    stop_daemons
    # munged is stopped only when this script started it: a system munged stays.
    if [ -f "$DIR/run/munged.ours" ]; then
        stop_pids "$MUNGE_PID"
        rm -f "$DIR/run/munged.ours"
    fi
}

cmd_status() {
    [ -f "$CONF" ] || { say "not configured (no $CONF)"; return 1; }
    pid_alive "$DIR/run/slurmctld.pid" || { say "slurmctld not running"; return 1; }
    pid_alive "$(slurmd_pidfile)" || { say "slurmd not running"; return 1; }
    local state
    state=$(sinfo -h -N -o '%T' 2>/dev/null | head -n 1 || true)
    [ -n "$state" ] || { say "sinfo gives no node state"; return 1; }
    say "node $(hostname -s): $state"
    print_env
}

case "${1:-}" in
    start) cmd_start ;;
    stop) cmd_stop ;;
    status) cmd_status ;;
    *) echo "usage: $0 {start|stop|status}" >&2; exit 2 ;;
esac
