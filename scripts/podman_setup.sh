#!/usr/bin/env bash
# podman for embedpipe's images and DockerRunner on these machines: rootful, runc (crun fails "cgroups in hybrid
# mode not supported"), default ulimits no higher than the current ones (no CAP_SYS_RESOURCE).
#   bash scripts/podman_setup.sh            configure
#   bash scripts/podman_setup.sh --service  also start `podman system service` and print its DOCKER_HOST
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
  if ! [ -S "$SOCK" ] || ! python3 -c 'import socket, sys; socket.socket(socket.AF_UNIX).connect(sys.argv[1])' "$SOCK" 2>/dev/null; then
    rm -f "$SOCK"
    nohup podman system service --time=0 "unix://$SOCK" >/var/tmp/embedpipe-podman-service.log 2>&1 &
    for _ in $(seq 50); do [ -S "$SOCK" ] && break; sleep 0.2; done
  fi
  echo "DOCKER_HOST=unix://$SOCK"
fi
