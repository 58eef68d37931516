#!/bin/sh
# Make sure a Docker engine answers on this machine; start dockerd if it does not.
#
# Idempotent: when `docker info` already answers, do nothing. A dockerd killed with -9
# leaves /var/run/docker.pid behind, and a new dockerd refuses to start while the PID in it
# belongs to a live process, so a pid file whose process is not dockerd is removed first.
# Assumes docker.io is installed (scripts/test.sh installs it). Exit 1 with a clear line
# when the engine does not answer within DOCKERD_WAIT seconds (default 60).
set -u

PIDFILE=/var/run/docker.pid
LOG=${DOCKERD_LOG:-/var/log/dockerd.log}
WAIT=${DOCKERD_WAIT:-60}

docker_answers() {
    docker info >/dev/null 2>&1
}

if docker_answers; then
    exit 0
fi

if ! command -v dockerd >/dev/null 2>&1; then
    echo "start-dockerd: dockerd is not installed (apt-get install -y docker.io)" >&2
    exit 1
fi

if [ -f "$PIDFILE" ]; then
    pid=$(cat "$PIDFILE" 2>/dev/null || true)
    comm=""
    if [ -n "$pid" ] && [ -r "/proc/$pid/comm" ]; then
        comm=$(cat "/proc/$pid/comm" 2>/dev/null || true)
    fi
    if [ "$comm" != "dockerd" ]; then
        echo "start-dockerd: removing stale $PIDFILE (pid ${pid:-none} is not dockerd)" >&2
        rm -f "$PIDFILE"
    fi
fi

# A dockerd that is alive but still starting: just wait for it below.
if ! pgrep -x dockerd >/dev/null 2>&1; then
    echo "start-dockerd: starting dockerd (log: $LOG)" >&2
    nohup dockerd >>"$LOG" 2>&1 </dev/null &
fi

i=0
while [ "$i" -lt "$((WAIT * 4))" ]; do
    if docker_answers; then
        exit 0
    fi
    sleep 0.25
    i=$((i + 1))
done

echo "start-dockerd: Docker engine did not answer within ${WAIT}s; see $LOG" >&2
tail -n 20 "$LOG" >&2 2>/dev/null || true
exit 1
