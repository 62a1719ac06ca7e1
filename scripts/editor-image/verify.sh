#!/usr/bin/env bash
# Start the editor image the way vscode-swarm does, measure time from `docker run`
# to the first 200 on /healthz (median of N runs), check GET / and the user, and
# remove the containers again.
#
#   scripts/editor-image/verify.sh [IMAGE] [RUNS] [HOST_PORT]
set -euo pipefail

IMAGE="${1:-vscode-swarm/code-server:4.99.3}"
RUNS="${2:-3}"
PORT="${3:-18080}"

log() { printf '[%s] verify: %s\n' "$(date -u +%Y-%m-%dT%H:%M:%SZ)" "$*" >&2; }
command -v curl >/dev/null || { log "curl is needed"; exit 1; }
docker image inspect "$IMAGE" >/dev/null || { log "image $IMAGE not found; run scripts/editor-image/build.sh"; exit 1; }

CID=""
cleanup() { [ -z "$CID" ] || docker rm -f "$CID" >/dev/null 2>&1 || true; }
trap cleanup EXIT

times=()
for i in $(seq 1 "$RUNS"); do
  t0=$(date +%s%N)
  CID="$(docker run -d --rm -p "127.0.0.1:${PORT}:8080" "$IMAGE" --auth none --disable-telemetry /home/coder/project)"
  code=000
  for _ in $(seq 1 600); do # at most ~60 s
    code="$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:${PORT}/healthz" || true)"
    [ "$code" = 200 ] && break
    sleep 0.1
  done
  t1=$(date +%s%N)
  [ "$code" = 200 ] || { log "run $i: /healthz never answered 200"; docker logs "$CID" >&2 || true; exit 1; }
  ms=$(( (t1 - t0) / 1000000 ))
  times+=("$ms")
  health="$(curl -s "http://127.0.0.1:${PORT}/healthz")"
  root="$(curl -s -o /dev/null -w '%{http_code} %{redirect_url}' "http://127.0.0.1:${PORT}/")"
  ids="$(docker exec "$CID" id)"
  log "run $i: docker run -> /healthz 200 in ${ms} ms; healthz=${health}; GET / -> ${root}; ${ids}"
  case "$root" in 302*) ;; *) log "GET / did not answer 302"; exit 1 ;; esac
  case "$ids" in "uid=1000(coder) gid=1000(coder)"*) ;; *) log "unexpected user: $ids"; exit 1 ;; esac
  docker rm -f "$CID" >/dev/null; CID=""
done

median="$(printf '%s\n' "${times[@]}" | sort -n | awk '{a[NR]=$1} END {print (NR % 2) ? a[(NR+1)/2] : int((a[NR/2]+a[NR/2+1])/2)}')"
size="$(docker image inspect -f '{{.Size}}' "$IMAGE")"
log "image ${IMAGE}: $(( size / 1024 / 1024 )) MiB; docker run -> /healthz 200: median ${median} ms over ${RUNS} runs (${times[*]} ms)"
