#!/usr/bin/env bash
# Build, fully offline (npm registry + Debian mirror only), a Docker image that
# behaves like upstream codercom/code-server, tagged vscode-swarm/code-server:4.99.3.
#
#   scripts/editor-image/build.sh            # build unless the tag already exists
#   scripts/editor-image/build.sh --force    # rebuild the image (reuses cached steps)
#   scripts/editor-image/build.sh --no-cache # rebuild everything from scratch
#
# See scripts/editor-image/README.md. Progress goes to stderr; on success the
# image tag is the only thing printed on stdout.
set -euo pipefail

CODE_SERVER_VERSION="${CODE_SERVER_VERSION:-4.99.3}"
IMAGE_TAG="${EDITOR_IMAGE_TAG:-vscode-swarm/code-server:${CODE_SERVER_VERSION}}"
CACHE_DIR="${EDITOR_IMAGE_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/vscode-swarm/editor-image}"
DEBIAN_SUITE="${DEBIAN_SUITE:-bookworm}"
DEBIAN_MIRROR="${DEBIAN_MIRROR:-http://deb.debian.org/debian}"
DEBIAN_SECURITY_MIRROR="${DEBIAN_SECURITY_MIRROR:-http://deb.debian.org/debian-security}"
# Runtime packages of the image (beside Debian's minbase).
RUNTIME_PACKAGES=(libgssapi-krb5-2 libsecret-1-0 libxkbfile1 libx11-6 ca-certificates git dumb-init procps)
# Native modules under lib/vscode/node_modules that are rebuilt from source.
VSCODE_NATIVE_MODULES=(kerberos @parcel/watcher @vscode/spdlog @vscode/deviceid native-watchdog node-pty)

FORCE=0
NO_CACHE=0

usage() {
  sed -n '2,10p' "$0" | sed 's/^# \{0,1\}//' >&2
  cat >&2 <<EOF

Options:
  --force           rebuild the image even if ${IMAGE_TAG} exists (cached steps are reused)
  --no-cache        like --force, and also discard the cache of finished steps
  --cache-dir DIR   cache directory (default: \${XDG_CACHE_HOME:-\$HOME/.cache}/vscode-swarm/editor-image,
                    or \$EDITOR_IMAGE_CACHE_DIR)
  -h, --help        show this help
EOF
}

while [ $# -gt 0 ]; do
  case "$1" in
    --force) FORCE=1 ;;
    --no-cache) FORCE=1; NO_CACHE=1 ;;
    --cache-dir) [ $# -ge 2 ] || { echo "--cache-dir needs a value" >&2; exit 2; }; CACHE_DIR="$2"; shift ;;
    --cache-dir=*) CACHE_DIR="${1#*=}" ;;
    -h|--help) usage; exit 0 ;;
    *) echo "unknown argument: $1" >&2; usage; exit 2 ;;
  esac
  shift
done

# Everything but the final tag goes to stderr. fd 4 is the real stderr, so that log
# lines from traps still reach it while a step's output is redirected to its log file.
exec 3>&1 1>&2 4>&2

log() { printf '[%s] editor-image: %s\n' "$(date -u +%Y-%m-%dT%H:%M:%SZ)" "$*" >&4; }
die() { log "ERROR: $*"; exit 1; }

# ---------------------------------------------------------------------------
# Fast path: the image is already there.
# ---------------------------------------------------------------------------
if [ "$FORCE" = 0 ] && command -v docker >/dev/null 2>&1 \
  && docker image inspect "$IMAGE_TAG" >/dev/null 2>&1; then
  log "image ${IMAGE_TAG} already exists; nothing to do (use --force to rebuild)"
  echo "$IMAGE_TAG" >&3
  exit 0
fi

START_TS=$(date +%s)
[ "$(id -u)" = 0 ] || die "building needs root (debootstrap, chroot, mount); rerun with sudo"
mkdir -p "$CACHE_DIR"
CACHE_DIR="$(cd "$CACHE_DIR" && pwd -P)"
LOG_DIR="$CACHE_DIR/logs"
TMP_DIR="$CACHE_DIR/tmp"
mkdir -p "$LOG_DIR"

# One build at a time per cache dir.
exec 9>"$CACHE_DIR/.lock"
if ! flock -n 9; then
  log "another build holds $CACHE_DIR/.lock; waiting for it"
  flock 9
  if [ "$FORCE" = 0 ] && docker image inspect "$IMAGE_TAG" >/dev/null 2>&1; then
    log "image ${IMAGE_TAG} was built by the other run"
    echo "$IMAGE_TAG" >&3
    exit 0
  fi
fi

# ---------------------------------------------------------------------------
# Cleanup: unmount whatever we mounted, stop what we started, drop temp dirs.
# ---------------------------------------------------------------------------
SMOKE_PID=""
CONTAINER_ID=""
CANDIDATE_TAG=""

unmount_under() { # unmount every mount point at or below $1, deepest first
  local root="$1" mp
  [ -n "$root" ] && [ -e "$root" ] || return 0
  root="$(readlink -f -- "$root")"
  while read -r mp; do
    umount "$mp" 2>/dev/null || umount -l "$mp" 2>/dev/null || log "warning: could not unmount $mp"
  done < <(awk -v r="$root" '$2 == r || index($2, r "/") == 1 { print $2 }' /proc/self/mounts | sort -r)
}

safe_rm() { # rm -rf that never crosses into a mount (e.g. a forgotten /proc in a chroot)
  local p
  for p in "$@"; do
    [ -e "$p" ] || [ -L "$p" ] || continue
    unmount_under "$p"
    if awk -v r="$(readlink -f -- "$p")" '$2 == r || index($2, r "/") == 1 { f = 1 } END { exit !f }' /proc/self/mounts; then
      die "refusing to remove $p: something is still mounted below it"
    fi
    rm -rf --one-file-system -- "$p"
  done
}

cleanup() {
  local rc=$?
  trap - EXIT INT TERM
  if [ -n "$SMOKE_PID" ] && kill -0 "$SMOKE_PID" 2>/dev/null; then
    kill "$SMOKE_PID" 2>/dev/null || true
    wait "$SMOKE_PID" 2>/dev/null || true
  fi
  if [ -n "$CONTAINER_ID" ]; then
    docker rm -f "$CONTAINER_ID" >/dev/null 2>&1 || true
  fi
  if [ -n "$CANDIDATE_TAG" ]; then
    docker image rm "$CANDIDATE_TAG" >/dev/null 2>&1 || true
  fi
  safe_rm "$TMP_DIR" || true
  if [ "$rc" != 0 ]; then
    log "FAILED (exit $rc) after $(( $(date +%s) - START_TS ))s; finished steps stay cached in $CACHE_DIR, logs in $LOG_DIR"
  fi
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# run_logged NAME CMD...: run CMD with its output in $LOG_DIR/NAME.log; show the tail on failure.
run_logged() {
  local name="$1"; shift
  local logf="$LOG_DIR/$name.log"
  if ! "$@" >"$logf" 2>&1; then
    log "step '$name' failed; last lines of $logf:"
    tail -n 40 "$logf" >&2 || true
    return 1
  fi
}

# ---------------------------------------------------------------------------
# Host prerequisites
# ---------------------------------------------------------------------------
APT_UPDATED=0
apt_install() { # install the given Debian packages that are missing
  local missing=() p
  for p in "$@"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
  done
  [ ${#missing[@]} -gt 0 ] || return 0
  log "installing host packages: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  if [ "$APT_UPDATED" = 0 ]; then
    run_logged apt-update apt-get update
    APT_UPDATED=1
  fi
  run_logged apt-install apt-get install -y --no-install-recommends "${missing[@]}"
}

log "building ${IMAGE_TAG} (code-server ${CODE_SERVER_VERSION}); cache: ${CACHE_DIR}"
host_pkgs=(libkrb5-dev libx11-dev libxkbfile-dev libsecret-1-dev pkg-config ripgrep debootstrap
  build-essential ca-certificates debian-archive-keyring tar util-linux)
command -v python3 >/dev/null 2>&1 || host_pkgs+=(python3)
command -v docker >/dev/null 2>&1 || host_pkgs+=(docker.io)
apt_install "${host_pkgs[@]}"

docker info >/dev/null 2>&1 || die "the Docker daemon is not reachable (is dockerd running?)"
command -v node >/dev/null 2>&1 || die "node is not installed (Node 20 is needed)"
command -v npm >/dev/null 2>&1 || die "npm is not installed"
NODE_BIN="$(readlink -f "$(command -v node)")"
NODE_VERSION="$(node -p 'process.versions.node')"
[ "${NODE_VERSION%%.*}" = 20 ] || die "code-server ${CODE_SERVER_VERSION} needs Node 20; found ${NODE_VERSION} at ${NODE_BIN}"
# Node's headers, so that node-gyp never tries to download them.
NODEDIR="${npm_config_nodedir:-$(dirname "$(dirname "$NODE_BIN")")}"
[ -f "$NODEDIR/include/node/node.h" ] || die "Node headers not found at $NODEDIR/include/node (set npm_config_nodedir)"
export npm_config_nodedir="$NODEDIR"
NODE_GYP="$(dirname "$(readlink -f "$(command -v npm)")")/../node_modules/node-gyp/bin/node-gyp.js"
[ -f "$NODE_GYP" ] || NODE_GYP="$(npm root -g 2>/dev/null)/npm/node_modules/node-gyp/bin/node-gyp.js"
[ -f "$NODE_GYP" ] || die "node-gyp (bundled with npm) not found"
RG_BIN="$(command -v rg)"
JOBS="$(nproc 2>/dev/null || echo 2)"
. /etc/os-release 2>/dev/null || true
if [ "${VERSION_CODENAME:-}" != "$DEBIAN_SUITE" ]; then
  log "warning: host is '${VERSION_CODENAME:-unknown}', image is Debian ${DEBIAN_SUITE}; natives built here may not load there"
fi

if [ "$NO_CACHE" = 1 ]; then
  log "--no-cache: discarding cached steps"
  safe_rm "$CACHE_DIR"/build-* "$CACHE_DIR"/rootfs-*
fi
safe_rm "$TMP_DIR"
mkdir -p "$TMP_DIR"

# Each finished step leaves a marker; a step whose marker exists is skipped.
# Markers are kept next to the thing they describe, so deleting it resets them.
step_done() { [ -f "$1/.done-$2" ]; }
mark_done() { touch "$1/.done-$2"; }

# Small HTTP probe in node (curl may be missing); prints the body, exits non-zero on timeout.
HEALTHZ_JS='
const http = require("http");
const [url, timeoutS] = process.argv.slice(1);
const deadline = Date.now() + Number(timeoutS) * 1000;
function poll() {
  http.get(url, (res) => {
    let body = ""; res.on("data", (c) => (body += c));
    res.on("end", () => {
      try {
        const j = JSON.parse(body);
        if (res.statusCode === 200 && (j.status === "alive" || j.status === "expired") && typeof j.lastHeartbeat === "number") {
          console.log(body); process.exit(0);
        }
      } catch (e) {}
      retry();
    });
  }).on("error", retry);
}
poll();
function retry() {
  if (Date.now() > deadline) { console.error("timed out waiting for " + url); process.exit(1); }
  setTimeout(poll, 200);
}'
STATUS_JS='
const http = require("http");
http.get(process.argv[1], (res) => { console.log(res.statusCode + " " + (res.headers.location || "")); process.exit(0); })
  .on("error", (e) => { console.error(e.message); process.exit(1); });'

# ---------------------------------------------------------------------------
# 1. code-server and its node_modules, built on the host
# ---------------------------------------------------------------------------
BUILD="$CACHE_DIR/build-${CODE_SERVER_VERSION}-node${NODE_VERSION}"
VSCODE="$BUILD/node_modules/code-server/lib/vscode"
mkdir -p "$BUILD"
[ -f "$BUILD/package.json" ] || printf '{"name":"vscode-swarm-editor-image","private":true}\n' >"$BUILD/package.json"
export npm_config_update_notifier=false npm_config_fund=false npm_config_audit=false

if ! step_done "$BUILD" code-server; then
  log "npm install code-server@${CODE_SERVER_VERSION} (scripts off)"
  rm -f "$BUILD"/.done-*
  safe_rm "$BUILD/node_modules" "$BUILD/package-lock.json"
  printf '{"name":"vscode-swarm-editor-image","private":true}\n' >"$BUILD/package.json"
  (cd "$BUILD" && run_logged npm-code-server npm install --ignore-scripts "code-server@${CODE_SERVER_VERSION}")
  mark_done "$BUILD" code-server
fi

if ! step_done "$BUILD" vscode-deps; then
  log "npm install in lib/vscode (production deps, scripts off)"
  (cd "$VSCODE" && run_logged npm-vscode npm install --omit=dev --ignore-scripts)
  mark_done "$BUILD" vscode-deps
fi

for mod in "${VSCODE_NATIVE_MODULES[@]}"; do
  key="native-${mod//[@\/]/_}"
  step_done "$BUILD" "$key" && continue
  [ -d "$VSCODE/node_modules/$mod" ] || die "native module $mod missing under lib/vscode/node_modules"
  log "node-gyp rebuild $mod"
  (cd "$VSCODE/node_modules/$mod" && run_logged "gyp-${key}" node "$NODE_GYP" rebuild --jobs="$JOBS" --nodedir="$NODEDIR")
  mark_done "$BUILD" "$key"
done

if ! step_done "$BUILD" ripgrep; then
  log "using Debian's ripgrep ($RG_BIN) for @vscode/ripgrep"
  mkdir -p "$VSCODE/node_modules/@vscode/ripgrep/bin"
  install -m 0755 "$RG_BIN" "$VSCODE/node_modules/@vscode/ripgrep/bin/rg"
  ln -sfn node_modules "$VSCODE/node_modules.asar"
  mark_done "$BUILD" ripgrep
fi

if ! step_done "$BUILD" extensions; then
  log "npm install in lib/vscode/extensions (production deps, scripts off)"
  (cd "$VSCODE/extensions" && run_logged npm-extensions npm install --omit=dev --ignore-scripts)
  mark_done "$BUILD" extensions
fi

if ! step_done "$BUILD" argon2; then
  log "npm rebuild argon2 --build-from-source"
  (cd "$BUILD" && run_logged argon2 npm rebuild argon2 --build-from-source)
  mark_done "$BUILD" argon2
fi

if ! step_done "$BUILD" host-check; then
  log "run check on the host: code-server --version and GET /healthz"
  ENTRY="$BUILD/node_modules/code-server/out/node/entry.js"
  hc="$TMP_DIR/host-check"; mkdir -p "$hc/home" "$hc/project"
  # A throw-away HOME/XDG dirs, so that nothing lands in the real ~/.config/code-server.
  hc_env=(env HOME="$hc/home" XDG_CONFIG_HOME="$hc/home/.config" XDG_DATA_HOME="$hc/home/.local/share"
    XDG_CACHE_HOME="$hc/home/.cache" XDG_STATE_HOME="$hc/home/.local/state")
  ver="$("${hc_env[@]}" node "$ENTRY" --version 2>/dev/null | grep -E "^${CODE_SERVER_VERSION//./\\.} " | head -n1 || true)"
  [ -n "$ver" ] || die "code-server --version did not print ${CODE_SERVER_VERSION}"
  port="$(node -e 'const s=require("net").createServer().listen(0,"127.0.0.1",()=>{console.log(s.address().port);s.close()})')"
  "${hc_env[@]}" node "$ENTRY" --auth none --bind-addr "127.0.0.1:$port" --disable-telemetry \
    --user-data-dir "$hc/data" --extensions-dir "$hc/ext" "$hc/project" >"$LOG_DIR/host-check-server.log" 2>&1 &
  SMOKE_PID=$!
  if ! body="$(node -e "$HEALTHZ_JS" "http://127.0.0.1:$port/healthz" 60)"; then
    tail -n 30 "$LOG_DIR/host-check-server.log" >&2 || true
    die "code-server did not become healthy on the host"
  fi
  log "host check: $ver; /healthz -> $body"
  kill "$SMOKE_PID" 2>/dev/null || true; wait "$SMOKE_PID" 2>/dev/null || true; SMOKE_PID=""
  mark_done "$BUILD" host-check
fi

# ---------------------------------------------------------------------------
# 2. Debian rootfs: minbase + runtime packages, cached as a tarball
# ---------------------------------------------------------------------------
pkg_key="$(printf '%s\n' "$DEBIAN_SUITE" "$DEBIAN_MIRROR" "${RUNTIME_PACKAGES[@]}" | sha256sum | cut -c1-12)"
ROOTFS_BASE_TAR="$CACHE_DIR/rootfs-${DEBIAN_SUITE}-minbase.tar"
ROOTFS_RUNTIME_TAR="$CACHE_DIR/rootfs-${DEBIAN_SUITE}-runtime-${pkg_key}.tar"

if [ ! -f "$ROOTFS_BASE_TAR" ]; then
  log "debootstrap --variant=minbase ${DEBIAN_SUITE} (${DEBIAN_MIRROR})"
  rfs="$TMP_DIR/rootfs-base"
  run_logged debootstrap debootstrap --variant=minbase "$DEBIAN_SUITE" "$rfs" "$DEBIAN_MIRROR"
  unmount_under "$rfs"
  rm -f "${rfs:?}/var/cache/apt/archives/"*.deb
  tar -C "$rfs" --numeric-owner -cf "$ROOTFS_BASE_TAR.partial" .
  mv "$ROOTFS_BASE_TAR.partial" "$ROOTFS_BASE_TAR"
  safe_rm "$rfs"
fi

if [ ! -f "$ROOTFS_RUNTIME_TAR" ]; then
  log "installing runtime packages in the rootfs: ${RUNTIME_PACKAGES[*]}"
  rfs="$TMP_DIR/rootfs-runtime"
  mkdir -p "$rfs"
  tar -C "$rfs" --numeric-owner -xpf "$ROOTFS_BASE_TAR"
  # Same apt sources as the debian:12 image.
  rm -f "$rfs/etc/apt/sources.list"
  cat >"$rfs/etc/apt/sources.list.d/debian.sources" <<EOF
Types: deb
URIs: ${DEBIAN_MIRROR}
Suites: ${DEBIAN_SUITE} ${DEBIAN_SUITE}-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb
URIs: ${DEBIAN_SECURITY_MIRROR}
Suites: ${DEBIAN_SUITE}-security
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
EOF
  cp -L /etc/resolv.conf "$rfs/etc/resolv.conf"
  printf '#!/bin/sh\nexit 101\n' >"$rfs/usr/sbin/policy-rc.d"; chmod 0755 "$rfs/usr/sbin/policy-rc.d"
  mount -t proc proc "$rfs/proc"
  chroot_apt() {
    chroot "$rfs" /usr/bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin DEBIAN_FRONTEND=noninteractive LANG=C.UTF-8 "$@"
  }
  run_logged chroot-apt-update chroot_apt apt-get update
  run_logged chroot-apt-install chroot_apt apt-get install -y --no-install-recommends "${RUNTIME_PACKAGES[@]}"
  run_logged chroot-apt-clean chroot_apt apt-get clean
  unmount_under "$rfs"
  rm -f "${rfs:?}/usr/sbin/policy-rc.d" "${rfs:?}/etc/resolv.conf"
  rm -rf "${rfs:?}/var/lib/apt/lists/"* "${rfs:?}/var/cache/apt/"*.bin "${rfs:?}/var/cache/apt/archives/"*.deb \
    "${rfs:?}/var/cache/debconf/"*-old "${rfs:?}/var/lib/dpkg/"*-old "${rfs:?}/var/log/"*.log "${rfs:?}/var/log/apt/"* \
    "${rfs:?}/dev/"* "${rfs:?}/tmp/"* "${rfs:?}/root/.bash_history"
  : >"$rfs/etc/resolv.conf"
  tar -C "$rfs" --numeric-owner -cf "$ROOTFS_RUNTIME_TAR.partial" .
  mv "$ROOTFS_RUNTIME_TAR.partial" "$ROOTFS_RUNTIME_TAR"
  safe_rm "$rfs"
fi

# ---------------------------------------------------------------------------
# 3. Final rootfs: node, code-server, the coder user; imported into Docker
# ---------------------------------------------------------------------------
log "assembling the image rootfs"
rfs="$TMP_DIR/rootfs"
mkdir -p "$rfs"
tar -C "$rfs" --numeric-owner -xpf "$ROOTFS_RUNTIME_TAR"
install -D -m 0755 "$NODE_BIN" "$rfs/usr/local/bin/node"
mkdir -p "$rfs/opt/code-server"
cp -a "$BUILD/node_modules" "$rfs/opt/code-server/node_modules"
rm -rf "$rfs/opt/code-server/node_modules/.cache"
chown -R 0:0 "$rfs/opt/code-server"
chmod -R u+rwX,go+rX,go-w "$rfs/opt/code-server"

ENTRY_IN_IMAGE=/opt/code-server/node_modules/code-server/out/node/entry.js
cat >"$rfs/usr/bin/entrypoint.sh" <<EOF
#!/bin/sh
# Entrypoint compatible with codercom/code-server's /usr/bin/entrypoint.sh.
set -eu

# Scripts run on container start to prepare the workspace (as upstream).
if [ -d "\${ENTRYPOINTD:-}" ]; then
  find "\${ENTRYPOINTD}" -type f -executable -print -exec {} \\;
fi

if command -v dumb-init >/dev/null 2>&1; then
  exec dumb-init /usr/local/bin/node ${ENTRY_IN_IMAGE} "\$@"
fi
exec /usr/local/bin/node ${ENTRY_IN_IMAGE} "\$@"
EOF
cat >"$rfs/usr/bin/code-server" <<EOF
#!/bin/sh
exec /usr/local/bin/node ${ENTRY_IN_IMAGE} "\$@"
EOF
chmod 0755 "$rfs/usr/bin/entrypoint.sh" "$rfs/usr/bin/code-server"

chroot "$rfs" /usr/sbin/groupadd -g 1000 coder
chroot "$rfs" /usr/sbin/useradd -m -u 1000 -g 1000 -s /bin/bash -c '' coder
mkdir -p "$rfs/home/coder/project" "$rfs/home/coder/.local/share/code-server/User" "$rfs/home/coder/.config"
cat >"$rfs/home/coder/.local/share/code-server/User/settings.json" <<'EOF'
{
  "security.workspace.trust.enabled": false,
  "telemetry.telemetryLevel": "off",
  "workbench.startupEditor": "none"
}
EOF
chown -R 1000:1000 "$rfs/home/coder"

# Every native addon we built (and rg) must resolve its shared libraries inside the image;
# other prebuilt binaries shipped in packages (often for other platforms) only get a note.
log "checking shared libraries of native addons inside the rootfs"
ldd_missing() { # paths relative to the rootfs -> "path: lib => not found" lines
  [ $# -gt 0 ] || return 0
  # shellcheck disable=SC2016 # expanded by the shell inside the chroot
  chroot "$rfs" /bin/sh -c 'for f; do ldd "$f" 2>/dev/null | grep "not found" | sed "s|^[[:space:]]*|$f: |"; done' sh "$@" || true
}
mapfile -t built < <(cd "$rfs" && {
  for mod in "${VSCODE_NATIVE_MODULES[@]}"; do
    find "opt/code-server/node_modules/code-server/lib/vscode/node_modules/$mod/build/Release" -maxdepth 1 -name '*.node' 2>/dev/null
  done
  find opt/code-server/node_modules/argon2/lib/binding -name '*.node' 2>/dev/null
  echo opt/code-server/node_modules/code-server/lib/vscode/node_modules/@vscode/ripgrep/bin/rg
} | sed 's|^|/|')
[ ${#built[@]} -ge $(( ${#VSCODE_NATIVE_MODULES[@]} + 2 )) ] || die "expected built addons not found: ${built[*]}"
built_missing="$(ldd_missing "${built[@]}")"
[ -z "$built_missing" ] || { printf '%s\n' "$built_missing" >&2; die "native addons miss shared libraries in the image (see above)"; }
mapfile -t others < <(cd "$rfs" && find opt/code-server -type f -name '*.node' | sed 's|^|/|')
other_missing="$(ldd_missing "${others[@]}" | grep -vF -f <(printf '%s:\n' "${built[@]}") || true)"
[ -z "$other_missing" ] || log "note: $(printf '%s\n' "$other_missing" | grep -c .) prebuilt binaries for other platforms (e.g. musl) have unresolved libraries; unused here, see $LOG_DIR/ldd-others.log"
printf '%s\n' "$other_missing" >"$LOG_DIR/ldd-others.log"
chroot "$rfs" /usr/local/bin/node -e 'require(process.argv[1])' /opt/code-server/node_modules/argon2 \
  || die "argon2 does not load inside the rootfs"

CANDIDATE_TAG="${IMAGE_TAG}-candidate-$$"
log "docker import -> ${CANDIDATE_TAG}"
tar -C "$rfs" --numeric-owner -cf - . | docker import \
  -m "vscode-swarm editor image: code-server ${CODE_SERVER_VERSION} on Debian ${DEBIAN_SUITE} (built by scripts/editor-image/build.sh)" \
  -c 'ENV PATH=/usr/local/bin:/usr/local/sbin:/usr/sbin:/usr/bin:/sbin:/bin' \
  -c 'ENV HOME=/home/coder' \
  -c 'ENV USER=coder' \
  -c 'ENV LANG=C.UTF-8' \
  -c 'ENV SHELL=/bin/bash' \
  -c 'ENV ENTRYPOINTD=/home/coder/entrypoint.d' \
  -c 'USER coder' \
  -c 'WORKDIR /home/coder' \
  -c 'EXPOSE 8080' \
  -c "LABEL org.opencontainers.image.version=${CODE_SERVER_VERSION}" \
  -c 'LABEL org.opencontainers.image.title=code-server' \
  -c 'LABEL vscode-swarm.editor-image=1' \
  -c 'ENTRYPOINT ["/usr/bin/entrypoint.sh", "--bind-addr", "0.0.0.0:8080", "."]' \
  - "$CANDIDATE_TAG" >/dev/null
safe_rm "$rfs"

# ---------------------------------------------------------------------------
# 4. Smoke test of the image, then the real tag
# ---------------------------------------------------------------------------
log "smoke test: docker run ${CANDIDATE_TAG} --auth none --disable-telemetry /home/coder/project"
CONTAINER_ID="vscode-swarm-editor-image-smoke-$$"
docker run -d --name "$CONTAINER_ID" --network none "$CANDIDATE_TAG" --auth none --disable-telemetry /home/coder/project >/dev/null
if ! body="$(docker exec "$CONTAINER_ID" node -e "$HEALTHZ_JS" http://127.0.0.1:8080/healthz 60)"; then
  docker logs --tail 30 "$CONTAINER_ID" >&2 || true
  die "the image's code-server did not become healthy"
fi
root_status="$(docker exec "$CONTAINER_ID" node -e "$STATUS_JS" http://127.0.0.1:8080/)"
ids="$(docker exec "$CONTAINER_ID" id)"
proj="$(docker exec "$CONTAINER_ID" stat -c '%u:%g' /home/coder/project)"
log "image check: /healthz -> $body; GET / -> $root_status; $ids; /home/coder/project $proj"
case "$root_status" in 302*) ;; *) die "GET / answered '$root_status', expected 302" ;; esac
case "$ids" in "uid=1000(coder) gid=1000(coder)"*) ;; *) die "container user is '$ids', expected coder 1000" ;; esac
[ "$proj" = "1000:1000" ] || die "/home/coder/project is owned by $proj"
docker rm -f "$CONTAINER_ID" >/dev/null; CONTAINER_ID=""

old_id="$(docker image inspect -f '{{.Id}}' "$IMAGE_TAG" 2>/dev/null || true)"
docker tag "$CANDIDATE_TAG" "$IMAGE_TAG"
docker image rm "$CANDIDATE_TAG" >/dev/null; CANDIDATE_TAG=""
new_id="$(docker image inspect -f '{{.Id}}' "$IMAGE_TAG")"
if [ -n "$old_id" ] && [ "$old_id" != "$new_id" ]; then
  docker image rm "$old_id" >/dev/null 2>&1 || log "note: previous image $old_id is still in use; not removed"
fi

size="$(docker image inspect -f '{{.Size}}' "$IMAGE_TAG")"
log "done: ${IMAGE_TAG} (${new_id:7:12}, $(( size / 1024 / 1024 )) MiB) in $(( $(date +%s) - START_TS ))s"
echo "$IMAGE_TAG" >&3
