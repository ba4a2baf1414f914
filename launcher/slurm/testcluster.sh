#!/usr/bin/env bash
# Single-node Slurm test cluster: slurmctld + `slurmd -N localhost` on this machine, no systemd,
# no cgroups, no munge. Used by the Slurm launcher tests (tests/launcher/test_slurm.py); .ci/run starts
# it through .ci/slurm_setup.sh and stops it at exit. Runs as root, or as any user (daemons as that user).
#
#   launcher/slurm/testcluster.sh start    # write slurm.conf, start both daemons, wait for idle
#   launcher/slurm/testcluster.sh status   # daemons, sinfo, queue; exit 0 only if the node is usable
#   launcher/slurm/testcluster.sh env      # print `export SLURM_CONF=...` for clients
#   launcher/slurm/testcluster.sh stop     # cancel jobs, kill exactly the daemons started here
#
# Environment (all optional):
#   AREAL_SLURM_DIR          state directory (default ${TMPDIR:-/tmp}/areal_slurm): slurm.conf,
#                            pid files, logs, spool, StateSaveLocation, jobcomp.log
#   AREAL_SLURM_CTLD_PORT    slurmctld port (default 6817)
#   AREAL_SLURM_SLURMD_PORT  slurmd port (default 6818)
#   AREAL_SLURM_START_TIMEOUT seconds to wait for the node to become idle (default 60)
# Clients (sinfo, sbatch, srun, scontrol) read the config from SLURM_CONF, so nothing is written
# to /etc/slurm. Needs the Debian packages slurmctld, slurmd, slurm-client (.ci/slurm_setup.sh).
set -euo pipefail
export PATH="$PATH:/usr/sbin:/sbin"  # the daemons live in /usr/sbin, not on a normal user's PATH

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
STATE_DIR="${AREAL_SLURM_DIR:-${TMPDIR:-/tmp}/areal_slurm}"
CTLD_PORT="${AREAL_SLURM_CTLD_PORT:-6817}"
SLURMD_PORT="${AREAL_SLURM_SLURMD_PORT:-6818}"
START_TIMEOUT="${AREAL_SLURM_START_TIMEOUT:-60}"
CONF="$STATE_DIR/slurm.conf"
export SLURM_CONF="$CONF"

log() { echo "[testcluster] $*" >&2; }
die() { log "ERROR: $*"; exit 1; }

# Prints the pid recorded in $1 if that process is alive and runs the program $2
# (guards against killing an unrelated process that reused a stale pid).
live_pid() {
    local pidfile="$1" prog="$2" pid
    [[ -s "$pidfile" ]] || return 1
    pid="$(tr -dc '0-9' <"$pidfile")"
    [[ -n "$pid" && -r "/proc/$pid/comm" ]] || return 1
    [[ "$(cat "/proc/$pid/comm")" == "$prog" ]] || return 1
    echo "$pid"
}

node_state() { sinfo -h -n localhost -o '%T' 2>/dev/null | head -n1; }

write_conf() {
    # slurmd -C prints this machine's hardware as slurm.conf keys, e.g.
    # "NodeName=vm CPUs=2 Boards=1 SocketsPerBoard=1 CoresPerSocket=2 ThreadsPerCore=1 RealMemory=24105"
    local hw key
    hw="$(slurmd -C | head -n1)"
    key() { sed -n "s/.*\b$1=\([0-9]*\).*/\1/p" <<<"$hw"; }
    mkdir -p "$STATE_DIR/ctld" "$STATE_DIR/spool/localhost"
    sed -e "s|@STATE_DIR@|$STATE_DIR|g" \
        -e "s|@CTLD_PORT@|$CTLD_PORT|g" \
        -e "s|@SLURMD_PORT@|$SLURMD_PORT|g" \
        -e "s|@USER@|$(id -un)|g" \
        -e "s|@SLURMD_USER@|$(id -un)|g" \
        -e "s|@CPUS@|$(key CPUs)|g" \
        -e "s|@SOCKETS@|$(key SocketsPerBoard)|g" \
        -e "s|@CORES@|$(key CoresPerSocket)|g" \
        -e "s|@THREADS@|$(key ThreadsPerCore)|g" \
        -e "s|@MEMORY@|$(($(key RealMemory) * 9 / 10))|g" \
        "$HERE/slurm.conf.in" >"$CONF"
    # Slurm 22.05 also looks for cgroup.conf next to slurm.conf; an empty one silences that.
    : >"$STATE_DIR/cgroup.conf"
}

wait_idle() {
    local deadline=$((SECONDS + START_TIMEOUT)) state=""
    while ((SECONDS < deadline)); do
        state="$(node_state || true)"
        case "$state" in
            idle | mixed | allocated) return 0 ;;
        esac
        sleep 0.5
    done
    log "node state after ${START_TIMEOUT}s: '${state:-unreachable}'"
    sinfo -R 2>&1 | sed 's/^/[testcluster]   /' >&2 || true
    tail -n 20 "$STATE_DIR/slurmctld.log" "$STATE_DIR/slurmd.log" 2>/dev/null | sed 's/^/[testcluster]   /' >&2 || true
    return 1
}

cmd_start() {
    command -v slurmctld >/dev/null && command -v slurmd >/dev/null && command -v sinfo >/dev/null \
        || die "slurmctld/slurmd/sinfo not found; run .ci/slurm_setup.sh (apt-get install slurmctld slurmd slurm-client)"
    local ctld_pid slurmd_pid
    ctld_pid="$(live_pid "$STATE_DIR/slurmctld.pid" slurmctld || true)"
    slurmd_pid="$(live_pid "$STATE_DIR/slurmd.pid" slurmd || true)"
    if [[ -n "$ctld_pid" && -n "$slurmd_pid" ]]; then
        log "already running (slurmctld $ctld_pid, slurmd $slurmd_pid)"
        wait_idle || die "daemons run but the node is not usable"
        return 0
    fi
    if [[ -n "$ctld_pid" || -n "$slurmd_pid" ]]; then
        log "only one daemon is alive; restarting both"
        cmd_stop
    fi
    write_conf
    # -c: start from a clean state (no jobs or node state left from an earlier run).
    # Both daemons fork into the background and write the pid files named in slurm.conf.
    slurmctld -c -f "$CONF" || die "slurmctld failed to start; see $STATE_DIR/slurmctld.log"
    slurmd -c -N localhost -f "$CONF" || die "slurmd failed to start; see $STATE_DIR/slurmd.log"
    wait_idle || { cmd_stop; die "the node did not become idle within ${START_TIMEOUT}s"; }
    log "up: slurmctld $(cat "$STATE_DIR/slurmctld.pid"), slurmd $(cat "$STATE_DIR/slurmd.pid"); export SLURM_CONF=$CONF"
}

# SIGTERM, then SIGKILL after $2 seconds, the process named by pid file $1 (if it is $3).
kill_daemon() {
    local pidfile="$1" grace="$2" prog="$3" pid
    pid="$(live_pid "$pidfile" "$prog" || true)"
    [[ -n "$pid" ]] || return 0
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq $((grace * 10))); do
        [[ -d "/proc/$pid" ]] || { log "stopped $prog ($pid)"; return 0; }
        sleep 0.1
    done
    log "$prog ($pid) ignored SIGTERM for ${grace}s; SIGKILL"
    kill -KILL "$pid" 2>/dev/null || true
}

cmd_stop() {
    if live_pid "$STATE_DIR/slurmctld.pid" slurmctld >/dev/null; then
        # Cancel this cluster's jobs while slurmd still runs, so their slurmstepd and task
        # processes are torn down by Slurm instead of being orphaned.
        local jobs
        jobs="$(squeue -h -o '%i' 2>/dev/null || true)"
        if [[ -n "$jobs" ]]; then
            # shellcheck disable=SC2086
            scancel $jobs 2>/dev/null || true
            for _ in $(seq 100); do
                [[ -z "$(squeue -h -o '%i' 2>/dev/null)" ]] && break
                sleep 0.1
            done
        fi
    fi
    kill_daemon "$STATE_DIR/slurmd.pid" 10 slurmd
    kill_daemon "$STATE_DIR/slurmctld.pid" 10 slurmctld
    # Keep the logs and slurm.conf for post-mortems; drop state so the next start is clean.
    rm -rf "$STATE_DIR/ctld" "$STATE_DIR/spool" "$STATE_DIR/slurmctld.pid" "$STATE_DIR/slurmd.pid"
}

cmd_status() {
    local ctld_pid slurmd_pid rc=0
    ctld_pid="$(live_pid "$STATE_DIR/slurmctld.pid" slurmctld || true)"
    slurmd_pid="$(live_pid "$STATE_DIR/slurmd.pid" slurmd || true)"
    echo "state dir: $STATE_DIR"
    echo "slurmctld: ${ctld_pid:-not running}"
    echo "slurmd:    ${slurmd_pid:-not running}"
    if [[ -n "$ctld_pid" ]]; then
        sinfo -N -o '%N %T %c %m %E' || rc=1
        squeue || rc=1
    fi
    [[ -n "$ctld_pid" && -n "$slurmd_pid" ]] || rc=1
    case "$(node_state || true)" in idle | mixed | allocated) ;; *) rc=1 ;; esac
    return "$rc"
}

case "${1:-}" in
    start) cmd_start ;;
    stop) cmd_stop ;;
    status) cmd_status ;;
    env) echo "export SLURM_CONF=$CONF" ;;
    *) echo "usage: $0 start|stop|status|env" >&2; exit 2 ;;
esac
