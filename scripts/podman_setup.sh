#!/usr/bin/env bash
# podman for embedpipe's images and DockerRunner on these machines: rootful, runc (crun fails "cgroups in hybrid
# mode not supported"), default ulimits no higher than the current ones (no CAP_SYS_RESOURCE).
#   bash scripts/podman_setup.sh            configure
#   bash scripts/podman_setup.sh --service  also start `podman system service` (detached, from /, logging to
#                                           /var/tmp/embedpipe-podman-service.log; a live one is reused only if it
#                                           answers GET /_ping) and print its DOCKER_HOST
set -euo pipefail
CONF=/etc/containers/containers.conf.d/embedpipe.conf
mkdir -p "$(dirname "$CONF")"
nofile=$(ulimit -n); nproc=$(ulimit -u)
[ "$nofile" = unlimited ] && nofile=1048576; [ "$nproc" = unlimited ] && nproc=1048576
[ "$nofile" -gt 4096 ] && nofile=4096; [ "$nproc" -gt 4096 ] && nproc=4096
cat > "$CONF" <<CONF
[containers]
default_ulimits = ["nofile=$nofile:$nofile", "nproc=$nproc:$nproc"]
[engine]
runtime = "runc"
cgroup_manager = "cgroupfs"
events_logger = "file"
CONF
if [ "${1:-}" = "--service" ]; then
  SOCK=${PODMAN_SOCK:-/run/embedpipe-podman.sock}
  LOG=${PODMAN_SERVICE_LOG:-/var/tmp/embedpipe-podman-service.log}
  PIDFILE=${SOCK%.sock}.pid
  answers() {  # the socket answers the Docker API's GET /_ping with OK (not merely accepts a connection)
    [ -S "$SOCK" ] || return 1
    if command -v curl >/dev/null; then
      [ "$(curl -s --max-time 5 --unix-socket "$SOCK" http://d/_ping 2>/dev/null)" = OK ]
    else
      python3 - "$SOCK" 2>/dev/null <<'PY'
import socket, sys
s = socket.socket(socket.AF_UNIX); s.settimeout(5); s.connect(sys.argv[1])
s.sendall(b"GET /_ping HTTP/1.0\r\nHost: d\r\n\r\n")
data = b""
while chunk := s.recv(4096):
    data += chunk
sys.exit(0 if data.split(b"\r\n", 1)[0].split()[1:2] == [b"200"] and data.endswith(b"OK") else 1)
PY
    fi
  }
  stale=""
  if [ -s "$PIDFILE" ] && pid=$(cat "$PIDFILE") && [ -d "/proc/$pid" ]; then
    # a service whose working folder was deleted breaks every container start (conmon: "Failed to get working
    # directory"): replace it
    case "$(readlink "/proc/$pid/cwd" 2>/dev/null)" in *" (deleted)") stale=$pid ;; esac
  fi
  if [ -n "$stale" ] || ! answers; then
    [ -z "$stale" ] || echo "podman service $stale runs in a deleted folder: restarting it" >&2
    if [ -s "$PIDFILE" ] && old=$(cat "$PIDFILE") && [ -d "/proc/$old" ]; then  # ours, not answering or stale
      kill "$old" 2>/dev/null || true
      for _ in $(seq 50); do [ -d "/proc/$old" ] || break; sleep 0.2; done
    fi
    rm -f "$SOCK" "$PIDFILE"
    # fully detached: from /, its own session, stdin from /dev/null, output to $LOG, no fd of the caller's (a
    # `$(...)` or a pipe around this script returns at once)
    (
      cd /
      for fd in $(ls /proc/$BASHPID/fd); do
        [ "$fd" -le 2 ] || eval "exec $fd>&-" 2>/dev/null || true
      done
      exec setsid -f sh -c 'echo $$ > "$1"; shift; exec "$@"' sh "$PIDFILE" \
        podman system service --time=0 "unix://$SOCK" </dev/null >>"$LOG" 2>&1
    )
    for _ in $(seq 100); do answers && break; sleep 0.2; done
    answers || { echo "podman system service did not answer on $SOCK; its log $LOG:" >&2; tail -20 "$LOG" >&2; exit 1; }
  fi
  echo "DOCKER_HOST=unix://$SOCK"
fi
