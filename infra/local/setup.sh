#!/usr/bin/env bash
# Idempotent machine set-up for sunday-release on Debian 12 (run as root, or with sudo).
#
#   setup.sh packages   apt-get install what is missing
#   setup.sh docker     start dockerd if it is not answering, wait for the socket
#   setup.sh registry   serve a registry on 127.0.0.1:5000 if nothing answers there
#   setup.sh base       build localhost:5000/base/debian:bookworm with debootstrap (amd64 + arm64)
#   setup.sh tools      publish localhost:5000/base/tools (trivy + docker CLI, for the pipeline's own image)
#   setup.sh all        all of the above, in that order
#
# A user with Docker Hub skips `base` and passes BASE_IMAGE=debian:bookworm-slim instead.
set -euo pipefail

STATE_DIR=${SUNDAY_STATE_DIR:-/var/lib/sunday-release}
REGISTRY_PORT=${SUNDAY_REGISTRY_PORT:-5000}
BASE_REF=${SUNDAY_BASE_IMAGE:-localhost:${REGISTRY_PORT}/base/debian:bookworm}
DEBIAN_MIRROR=${SUNDAY_DEBIAN_MIRROR:-http://deb.debian.org/debian}
DOCKER=/usr/bin/docker
TRIVY=${SUNDAY_TRIVY:-$(cd "$(dirname "$0")/../.." && pwd)/.venv/bin/trivy}
PACKAGES=(docker.io debootstrap docker-registry qemu-user-static binfmt-support
          postgresql-15 nginx git curl ca-certificates chromium redis-server
          prometheus prometheus-alertmanager prometheus-postgres-exporter
          python3-pytest python3-psycopg2 python3-prometheus-client)
# the last three: the sample backend's tests run from the host against `sunday-release dev up` (app/README.md) with
# Debian's python3 and the versions its image installs

log() { printf '[setup] %s\n' "$*" >&2; }

packages() {
  local missing=()
  for p in "${PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
  done
  if [ ${#missing[@]} -eq 0 ]; then log "system packages present"; return; fi
  log "installing: ${missing[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}

docker_up() {
  if $DOCKER info >/dev/null 2>&1; then log "docker engine answering"; return; fi
  mkdir -p "$STATE_DIR"
  log "starting dockerd (log: $STATE_DIR/dockerd.log)"
  nohup dockerd >"$STATE_DIR/dockerd.log" 2>&1 &
  for _ in $(seq 1 60); do
    $DOCKER info >/dev/null 2>&1 && { log "docker engine up"; return; }
    sleep 1
  done
  log "dockerd did not answer within 60 s; see $STATE_DIR/dockerd.log"; exit 1
}

registry_up() {
  if curl -fsS "http://127.0.0.1:${REGISTRY_PORT}/v2/" >/dev/null 2>&1; then
    log "registry answering on 127.0.0.1:${REGISTRY_PORT}"; return
  fi
  mkdir -p "$STATE_DIR/registry"
  cat >"$STATE_DIR/registry/config.yml" <<YAML
version: 0.1
log: {level: warn}
storage:
  filesystem: {rootdirectory: $STATE_DIR/registry/data}
  delete: {enabled: true}
http: {addr: 127.0.0.1:${REGISTRY_PORT}}
YAML
  log "starting registry on 127.0.0.1:${REGISTRY_PORT}"
  nohup docker-registry serve "$STATE_DIR/registry/config.yml" >"$STATE_DIR/registry.log" 2>&1 &
  for _ in $(seq 1 30); do
    curl -fsS "http://127.0.0.1:${REGISTRY_PORT}/v2/" >/dev/null 2>&1 && return
    sleep 0.5
  done
  log "registry did not answer; see $STATE_DIR/registry.log"; exit 1
}

# Build one architecture's rootfs with debootstrap and load it into the engine as $1.
_import_rootfs() {
  local arch=$1 tag=$2
  local root="$STATE_DIR/rootfs-$arch"
  rm -rf "$root"
  log "debootstrap bookworm ($arch)"
  debootstrap --variant=minbase --arch="$arch" bookworm "$root" "$DEBIAN_MIRROR" >"$STATE_DIR/debootstrap-$arch.log" 2>&1 \
    || { log "debootstrap failed; see $STATE_DIR/debootstrap-$arch.log"; exit 1; }
  rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/*
  tar -C "$root" -c . | $DOCKER import \
      -c 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
      -c 'CMD ["/bin/bash"]' - "$tag" >/dev/null
  rm -rf "$root"
  if [ "$arch" != amd64 ]; then
    # docker import ignores --platform: set the architecture in the image config (save, edit, load).
    python3 "$(dirname "$0")/set_image_arch.py" "$tag" "$arch"
  fi
}

base() {
  if $DOCKER manifest inspect --insecure "$BASE_REF" >/dev/null 2>&1; then
    $DOCKER image inspect "$BASE_REF" >/dev/null 2>&1 || $DOCKER pull -q "$BASE_REF" >/dev/null
    log "base image $BASE_REF present"; return
  fi
  update-binfmts --enable >/dev/null 2>&1 || true
  local repo=${BASE_REF%:*}
  _import_rootfs amd64 "$repo:bookworm-amd64"
  _import_rootfs arm64 "$repo:bookworm-arm64"
  $DOCKER push -q "$repo:bookworm-amd64" >/dev/null
  $DOCKER push -q "$repo:bookworm-arm64" >/dev/null
  $DOCKER manifest rm "$BASE_REF" >/dev/null 2>&1 || true
  $DOCKER manifest create --insecure "$BASE_REF" "$repo:bookworm-amd64" "$repo:bookworm-arm64" >/dev/null
  $DOCKER manifest annotate --arch arm64 "$BASE_REF" "$repo:bookworm-arm64"
  $DOCKER manifest push --insecure --purge "$BASE_REF" >/dev/null
  $DOCKER tag "$repo:bookworm-amd64" "$BASE_REF"
  log "base image $BASE_REF published (linux/amd64, linux/arm64)"
}

# The binaries the pipeline's own image (Dockerfile at the top) copies in: Trivy, which reaches PyPI only as an
# sdist that downloads it from GitHub (not reachable here), and the docker CLI. On a machine with Docker Hub,
# the image takes them from aquasec/trivy and docker:cli instead (build argument TOOLS_IMAGE). amd64 only:
# these are this machine's binaries.
tools() {
  [ -x "$TRIVY" ] || { log "no trivy at $TRIVY (make venv installs it); skipping the tools image"; return; }
  local version ref
  version=$("$TRIVY" --version 2>/dev/null | sed -n 's/^Version: //p')
  ref="localhost:${REGISTRY_PORT}/base/tools:trivy-${version}"
  if $DOCKER manifest inspect --insecure "$ref" >/dev/null 2>&1; then
    log "tools image $ref present"; return
  fi
  local ctx
  ctx=$(mktemp -d)
  cp "$TRIVY" "$ctx/trivy"; cp "$DOCKER" "$ctx/docker"
  printf 'FROM scratch\nCOPY trivy docker /usr/local/bin/\n' >"$ctx/Dockerfile"
  DOCKER_BUILDKIT=1 $DOCKER build -q --platform linux/amd64 -t "$ref" "$ctx" >/dev/null
  rm -rf "$ctx"
  $DOCKER push -q "$ref" >/dev/null
  log "tools image $ref published (linux/amd64)"
}

case "${1:-all}" in
  packages) packages ;;
  docker) docker_up ;;
  registry) registry_up ;;
  base) base ;;
  tools) tools ;;
  all) packages; docker_up; registry_up; base; tools ;;
  *) echo "usage: $0 [packages|docker|registry|base|tools|all]" >&2; exit 2 ;;
esac
