#!/usr/bin/env bash
# Build embedpipe's role images (base sdg train eval serve) with podman from docker/Dockerfile, the file a registry
# build uses (`docker build -f docker/Dockerfile --build-arg ROLE=role .`). Run as root on a Debian machine; installs podman,
# buildah, runc and debootstrap when missing.
#
#   bash scripts/build_images.sh [ROLE...]     (default: every role)
#
# Environment:
#   BASE_IMAGE   the FROM image (default: python:3.11-slim-bookworm when a registry answers, else a Debian image made
#                here with debootstrap and `podman import`, tagged localhost/embedpipe-debian:bookworm)
#   TORCH_SPEC   the torch requirement (default torch==2.13.0); TORCH_INDEX an extra index for it
#                (https://download.pytorch.org/whl/cpu or .../cu128), WHEELS a local wheel folder (default /opt/wheels
#                when it holds a torch wheel) linked into the build context's docker/wheels/ (bind-mounted by the RUN
#                that installs torch, so no image layer keeps it)
#   REGISTRY/TAG the image names (default ghcr.io/embedpipe, 0.1.0: what the components declare): ${REGISTRY}/embedpipe-${role}:${TAG}
#   BUILD_ARGS   more `podman build` options (e.g. --no-cache for a cold build)
set -euo pipefail
cd "$(dirname "$0")/.."
ROLES=("$@"); [ ${#ROLES[@]} -gt 0 ] || ROLES=(base sdg train eval serve)
REGISTRY=${REGISTRY:-ghcr.io/embedpipe}  # the names the components declare (images.py)
TAG=${TAG:-0.1.0}
TORCH_SPEC=${TORCH_SPEC:-torch==2.13.0}
TORCH_INDEX=${TORCH_INDEX:-}

# --- podman: runc (crun cannot run in this cgroup setup), ulimits no higher than ours ---
if ! command -v podman >/dev/null || ! command -v runc >/dev/null || ! command -v debootstrap >/dev/null; then
  [ "$(id -u)" = 0 ] || { echo "podman/buildah/runc/debootstrap missing and this is not root" >&2; exit 1; }
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq podman buildah runc debootstrap >/dev/null
fi
bash scripts/podman_setup.sh

# --- the base image ---
if [ -z "${BASE_IMAGE:-}" ]; then
  if timeout 20 podman pull -q docker.io/library/python:3.11-slim-bookworm >/dev/null 2>&1; then
    BASE_IMAGE=docker.io/library/python:3.11-slim-bookworm
  else
    BASE_IMAGE=localhost/embedpipe-debian:bookworm
    if ! podman image exists "$BASE_IMAGE"; then
      echo "no registry reachable: making $BASE_IMAGE from Debian packages (debootstrap)"
      # the Debian mirror apt uses: only its live source files (*.list, *.sources; not *.disabled-*), never a
      # third-party repository's, and no failure when a file is missing (set -o pipefail)
      sources=$(ls /etc/apt/sources.list /etc/apt/sources.list.d/*.list /etc/apt/sources.list.d/*.sources 2>/dev/null || true)
      MIRROR=$( ([ -n "$sources" ] && grep -hoE '^(URIs:|deb) *\S+' $sources 2>/dev/null || true) | awk '{print $NF}' \
               | grep -E '/debian/?$' | grep -v security | head -1 || true)
      MIRROR=${MIRROR:-http://deb.debian.org/debian}
      ROOTFS=$(mktemp -d /var/tmp/embedpipe-rootfs.XXXXXX)
      started=$SECONDS
      debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates bookworm "$ROOTFS" "$MIRROR" \
        >/var/tmp/embedpipe-debootstrap.log 2>&1 || { tail -20 /var/tmp/embedpipe-debootstrap.log >&2; exit 1; }
      rm -rf "$ROOTFS"/var/cache/apt/archives/*.deb "$ROOTFS"/var/lib/apt/lists/*
      tar -C "$ROOTFS" -c . | podman import --change 'CMD ["/bin/bash"]' - "$BASE_IMAGE" >/dev/null
      rm -rf "$ROOTFS"
      echo "made $BASE_IMAGE in $((SECONDS - started)) s"
    fi
  fi
fi

# --- torch from a local wheel folder when there is one (no PyTorch index here) ---
mkdir -p docker/wheels && rm -f docker/wheels/*.whl
WHEELS=${WHEELS:-/opt/wheels}
if [ -d "$WHEELS" ] && ls "$WHEELS"/torch-*.whl >/dev/null 2>&1; then
  # the wheel matching the base image's python (cp311 for both python:3.11 and Debian bookworm)
  cp -l "$WHEELS"/torch-*.whl docker/wheels/ 2>/dev/null || cp "$WHEELS"/torch-*.whl docker/wheels/
fi

# pip inside the build: host networking, the host's pip configuration (indexes, CA bundle) and certificates
PIP_ARGS=()
for conf in /etc/pip.conf /etc/xdg/pip; do [ -e "$conf" ] && PIP_ARGS+=(-v "$conf:$conf:ro"); done
for path in /opt/pypi /opt/pypi-more /etc/ssl/certs; do [ -d "$path" ] && PIP_ARGS+=(-v "$path:$path:ro"); done

# the label `embedpipe run --runner docker` compares with the checkout's source (the build checks it too)
SOURCE_DIGEST=$(python3 -m embedpipe.orchestration.images digest .)
for role in "${ROLES[@]}"; do
  started=$SECONDS
  podman build --network=host --layers "${PIP_ARGS[@]}" -f docker/Dockerfile --build-arg ROLE="$role" \
    --build-arg BASE_IMAGE="$BASE_IMAGE" --build-arg TORCH_SPEC="$TORCH_SPEC" --build-arg TORCH_INDEX="$TORCH_INDEX" \
    --build-arg SOURCE_DIGEST="$SOURCE_DIGEST" ${BUILD_ARGS:-} -t "$REGISTRY/embedpipe-$role:$TAG" .
  echo "built $REGISTRY/embedpipe-$role:$TAG in $((SECONDS - started)) s"
done
podman images --format '{{.Repository}}:{{.Tag}} {{.Size}}' | grep "^$REGISTRY/embedpipe-" || true
