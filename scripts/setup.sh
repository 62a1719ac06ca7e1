#!/usr/bin/env bash
# Sets up a machine of this kind (Debian, Node 20, root) for vscode-swarm: Node dependencies, a running
# Docker engine, and an editor image. Idempotent and quick when everything is already there.
# Everything it prints goes to stderr: stdout may be an MCP stdio channel.
#
#   bash scripts/setup.sh                  # deps + engine + editor image
#   bash scripts/setup.sh --for-tests      # and what the tests use: Debian's chromium (browser tests) and
#                                          # busybox-static (the light stand-in image, tests/helpers/standin-image.ts)
#                                          # and postgresql (the store tests) when missing; git always
#   SKIP_EDITOR_IMAGE=1 bash scripts/setup.sh
set -euo pipefail
exec 1>&2
cd "$(dirname "$0")/.."

for_tests=0
for arg in "$@"; do
  case "$arg" in
    --for-tests|--with-browser) for_tests=1 ;;
    *) echo "setup.sh: unknown option $arg" >&2; exit 2 ;;
  esac
done

log() { printf '[setup %s] %s\n' "$(date +%H:%M:%S)" "$*"; }

apt_updated=0
apt_install() {
  if [ "$(id -u)" != 0 ]; then log "need root to install: $*"; return 1; fi
  if [ "$apt_updated" = 0 ]; then DEBIAN_FRONTEND=noninteractive apt-get update -qq; apt_updated=1; fi
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
}

# 1. Node dependencies, from the lockfile.
if [ ! -d node_modules ] || [ package-lock.json -nt node_modules/.package-lock.json ]; then
  log "installing Node dependencies"
  npm ci --no-audit --no-fund --loglevel=error
fi

# 2. A Docker engine that answers. DOCKER_HOST is honoured; a local engine is installed and started if none answers.
if docker info >/dev/null 2>&1; then
  log "docker engine answers"
elif [ -n "${DOCKER_HOST:-}" ] && [ "${DOCKER_HOST#unix://}" = "$DOCKER_HOST" ]; then
  log "DOCKER_HOST=$DOCKER_HOST does not answer; start that engine or unset DOCKER_HOST"; exit 1
else
  if ! command -v dockerd >/dev/null 2>&1; then
    log "installing Debian's docker.io"
    apt_install docker.io
  fi
  log "starting dockerd"
  setsid dockerd >/var/log/vscode-swarm-dockerd.log 2>&1 < /dev/null &
  for _ in $(seq 1 120); do docker info >/dev/null 2>&1 && break; sleep 0.5; done
  docker info >/dev/null 2>&1 || { log "dockerd did not come up; see /var/log/vscode-swarm-dockerd.log"; tail -20 /var/log/vscode-swarm-dockerd.log; exit 1; }
  log "docker engine up"
fi

# 3. The editor image. Upstream's codercom/code-server when a registry answers; otherwise the
#    equivalent built offline (scripts/editor-image/build.sh, cached), recorded in the local config file.
if [ -z "${SKIP_EDITOR_IMAGE:-}" ]; then
  config_file=vscode-swarm.config.json
  if docker image inspect codercom/code-server:latest >/dev/null 2>&1 || timeout 60 docker pull -q codercom/code-server:latest >/dev/null 2>&1; then
    log "editor image: codercom/code-server:latest"
  else
    log "no image registry answers: building the editor image offline (cached after the first time)"
    bash scripts/editor-image/build.sh
    if [ ! -f "$config_file" ]; then
      printf '{\n  "providers": { "docker": { "image": "vscode-swarm/code-server:4.99.3", "pullImages": false } }\n}\n' > "$config_file"
      log "wrote $config_file: the Docker provider uses vscode-swarm/code-server:4.99.3 and does not pull"
    fi
  fi
fi
# git: the controller clones repositories into new workspaces with it (create from a repository); the
# tests also serve repositories with its `git daemon` and `git http-backend` (both in Debian's git).
if ! command -v git >/dev/null 2>&1 || [ ! -x "$(git --exec-path 2>/dev/null)/git-http-backend" ]; then
  log "installing Debian's git"
  apt_install git
fi
# 4. What the tests use besides: Debian's chromium, driven by playwright-core, for the browser tests; and
#    a statically linked busybox, the whole root filesystem of the light stand-in image (the dynamic
#    `busybox` package's binary cannot run in an image without a libc, so only busybox-static will do;
#    it replaces the dynamic one).
if [ "$for_tests" = 1 ]; then
  if ! command -v chromium >/dev/null 2>&1; then
    log "installing Debian's chromium"
    apt_install chromium
  fi
  if [ "$(dpkg-query -W -f='${Status}' busybox-static 2>/dev/null)" != "install ok installed" ]; then
    log "installing Debian's busybox-static"
    apt_install busybox-static
  fi
  # PostgreSQL for the store tests: test/helpers/postgres.ts runs initdb and pg_ctl from
  # /usr/lib/postgresql/<version>/bin as the `postgres` user (the server refuses root).
  if ! compgen -G '/usr/lib/postgresql/*/bin/initdb' >/dev/null || ! compgen -G '/usr/lib/postgresql/*/bin/pg_ctl' >/dev/null || ! id postgres >/dev/null 2>&1; then
    log "installing Debian's postgresql"
    apt_install postgresql
  fi
fi
log "ready"
