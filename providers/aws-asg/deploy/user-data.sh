#!/bin/bash
# vscode-swarm: EC2 user data for a host of the AWS provider's Auto Scaling Group.
#
# Runs once, as root, on the first boot of each instance (cloud-init). It:
#   1. installs Docker, Node 20, the AWS CLI (if missing), and vscode-swarm under /opt/vscode-swarm;
#   2. reads this instance's id, private IPv4 and region from the instance metadata service (IMDSv2);
#   3. fetches THIS host's own agent token from SSM Parameter Store (SecureString, one parameter per
#      instance id, put there by whoever launches hosts: README.md, "1. Secrets") with the instance role;
#      it is written to a root-only environment file, never to the command line. The master token and
#      the central gateway's signing key are never on a host: the agent gets the gateway's public key;
#   4. keeps containers away from the host's own services: editors published on 127.0.0.1 only (the
#      agent's --publish-host; the controller's gateway reaches them through the agent's proxy), Docker's
#      userland proxy off, and packets from the Docker bridges to the agent's ports or (through a
#      published port) to any editor dropped;
#   5. pulls (or loads from a tarball) the editor image;
#   6. writes and starts vscode-swarm-agent.service (`vscode-swarm agent`), which on SIGTERM stops every
#      editor (workspaces stay in the host's Docker volumes; nothing is moved off the host);
#   7. optionally (LIFECYCLE_WATCHER=1, only when the controller's evacuateTerminatingHosts is off) starts
#      a small watcher that, when the instance is scaled in, stops the agent that way and completes the
#      group's termination lifecycle hook (the workspaces go with the instance).
#
# Supported: Amazon Linux 2023 and Debian 12 / Ubuntu 22.04+ (detected from /etc/os-release), x86_64 and
# arm64. Output goes to /var/log/vscode-swarm-user-data.log (and cloud-init's own log).
#
# Set the variables below, either by editing them or by inserting `VAR=value` lines right after the
# first line when you render the launch template (README.md, "Launch template"). The script is larger
# than EC2's 16 KB user-data limit: gzip it (cloud-init unpacks gzip-compressed user data by itself).
set -euo pipefail

# ---------------------------------------------------------------------------------------------------
# Where vscode-swarm comes from: exactly one of the two.
#   VSCODE_SWARM_TARBALL_URL  an https URL of an `npm pack` tarball of the project (it contains the
#                             compiled dist/; only production dependencies are installed on the host).
#                             Optional VSCODE_SWARM_TARBALL_SHA256 is checked when set (recommended).
#   VSCODE_SWARM_GIT_URL      a git URL (https) of the repository, checked out at VSCODE_SWARM_GIT_REF
#                             (a branch or tag), then built on the host (`npm ci && npm run build`).
VSCODE_SWARM_TARBALL_URL="${VSCODE_SWARM_TARBALL_URL:-}"
VSCODE_SWARM_TARBALL_SHA256="${VSCODE_SWARM_TARBALL_SHA256:-}"
VSCODE_SWARM_GIT_URL="${VSCODE_SWARM_GIT_URL:-}"
VSCODE_SWARM_GIT_REF="${VSCODE_SWARM_GIT_REF:-main}"
INSTALL_DIR=/opt/vscode-swarm

# Node.js: a directory of https://nodejs.org/dist/ (latest-v20.x follows the newest 20.x release; pin
# e.g. v20.19.5 for reproducible hosts). The tarball is checked against that release's SHASUMS256.txt.
NODE_DIST="${NODE_DIST:-latest-v20.x}"
NODE_HOME=/opt/node

# SSM Parameter Store prefix (SecureString) of the hosts' own agent tokens: this host reads
# "$AGENT_TOKEN_PARAMETER_PREFIX/<its instance id>", the value HMAC-SHA256(master token, instance id) in
# base64url (README.md, "1. Secrets"). It waits up to AGENT_TOKEN_WAIT_SECONDS for it to appear.
AGENT_TOKEN_PARAMETER_PREFIX="${AGENT_TOKEN_PARAMETER_PREFIX:-/vscode-swarm/agent-tokens}"
AGENT_TOKEN_WAIT_SECONDS="${AGENT_TOKEN_WAIT_SECONDS:-600}"
# The central gateway's Ed25519 public key (43 base64url characters; not a secret): the agent's proxy
# checks the controller's access links with it and cannot mint any.
GATEWAY_PUBLIC_KEY="${GATEWAY_PUBLIC_KEY:-}"

# The editor image. When EDITOR_IMAGE_TARBALL_URL is set (an https URL of a `docker save` archive, e.g.
# the offline-built vscode-swarm/code-server), it is loaded instead of pulled; EDITOR_IMAGE must then be
# the tag inside that archive.
EDITOR_IMAGE="${EDITOR_IMAGE:-codercom/code-server:latest}"
EDITOR_IMAGE_TARBALL_URL="${EDITOR_IMAGE_TARBALL_URL:-}"
# 1: the agent never pulls (every host keeps the image it booted with); 0: it pulls on create.
AGENT_NO_PULL="${AGENT_NO_PULL:-1}"

# The agent (`vscode-swarm agent --help`). The ports must match the security groups (README.md).
AGENT_API_PORT="${AGENT_API_PORT:-9100}"
AGENT_PROXY_PORT="${AGENT_PROXY_PORT:-7080}"
AGENT_PORT_RANGE="${AGENT_PORT_RANGE:-20000-20999}"
AGENT_CAPACITY="${AGENT_CAPACITY:-20}"
AGENT_BASE_DOMAIN="${AGENT_BASE_DOMAIN:-localhost}"
AGENT_IDLE_TIMEOUT_MINUTES="${AGENT_IDLE_TIMEOUT_MINUTES:-15}"
AGENT_STOP_TIMEOUT_SECONDS="${AGENT_STOP_TIMEOUT_SECONDS:-10}"
AGENT_LOG_LEVEL="${AGENT_LOG_LEVEL:-info}"
# Where the agent POSTs its events (idle stops, draining, drained); empty: events are only logged.
AGENT_CONTROLLER_URL="${AGENT_CONTROLLER_URL:-}"
AGENT_STATE_DIR=/var/lib/vscode-swarm/agent
AGENT_USER=vscode-swarm

# Optional host-side lifecycle handler (see the end of this script and README.md). 1 to enable; then
# ASG_NAME and LIFECYCLE_HOOK_NAME must name the group and its autoscaling:EC2_INSTANCE_TERMINATING hook.
LIFECYCLE_WATCHER="${LIFECYCLE_WATCHER:-0}"
ASG_NAME="${ASG_NAME:-}"
LIFECYCLE_HOOK_NAME="${LIFECYCLE_HOOK_NAME:-vscode-swarm-drain}"
# ---------------------------------------------------------------------------------------------------

exec > >(tee -a /var/log/vscode-swarm-user-data.log) 2>&1
log() { printf '[vscode-swarm user-data %s] %s\n' "$(date -u +%H:%M:%SZ)" "$*"; }
die() { log "FAILED: $*"; exit 1; }
trap 'log "FAILED at line $LINENO (exit $?)"' ERR

# retry N CMD...: runs CMD up to N times with a growing pause (new instances can be briefly without
# network or without their role's credentials).
retry() {
  local attempts=$1 n=1
  shift
  until "$@"; do
    if [ "$n" -ge "$attempts" ]; then return 1; fi
    sleep $((n * 3))
    n=$((n + 1))
  done
}

if [ -n "$VSCODE_SWARM_TARBALL_URL" ] && [ -n "$VSCODE_SWARM_GIT_URL" ]; then die "set VSCODE_SWARM_TARBALL_URL or VSCODE_SWARM_GIT_URL, not both"; fi
if [ -z "$VSCODE_SWARM_TARBALL_URL" ] && [ -z "$VSCODE_SWARM_GIT_URL" ]; then die "set VSCODE_SWARM_TARBALL_URL or VSCODE_SWARM_GIT_URL"; fi
if [ "$LIFECYCLE_WATCHER" = 1 ] && [ -z "$ASG_NAME" ]; then die "LIFECYCLE_WATCHER=1 needs ASG_NAME"; fi
[[ "$GATEWAY_PUBLIC_KEY" =~ ^[A-Za-z0-9_-]{43}$ ]] || die "GATEWAY_PUBLIC_KEY: expected the central gateway's Ed25519 public key (43 base64url characters)"
# Values written into the unit's command line: no spaces, quotes, "$", "%" or "\\" (systemd would
# split or expand them). The agent validates each one again when it starts.
unit_safe='^[A-Za-z0-9._:/@+=,~-]+$'
for pair in "EDITOR_IMAGE=$EDITOR_IMAGE" "AGENT_API_PORT=$AGENT_API_PORT" "AGENT_PROXY_PORT=$AGENT_PROXY_PORT" \
  "AGENT_PORT_RANGE=$AGENT_PORT_RANGE" "AGENT_CAPACITY=$AGENT_CAPACITY" "AGENT_BASE_DOMAIN=$AGENT_BASE_DOMAIN" \
  "AGENT_IDLE_TIMEOUT_MINUTES=$AGENT_IDLE_TIMEOUT_MINUTES" "AGENT_STOP_TIMEOUT_SECONDS=$AGENT_STOP_TIMEOUT_SECONDS" \
  "AGENT_LOG_LEVEL=$AGENT_LOG_LEVEL" "ASG_NAME=${ASG_NAME:-unset}" "LIFECYCLE_HOOK_NAME=$LIFECYCLE_HOOK_NAME"; do
  [[ "${pair#*=}" =~ $unit_safe ]] || die "${pair%%=*}: unexpected characters in '${pair#*=}'"
done
if [ -n "$AGENT_CONTROLLER_URL" ] && ! [[ "$AGENT_CONTROLLER_URL" =~ ^https?://[A-Za-z0-9._:/@+=,~?\&-]+$ ]]; then
  die "AGENT_CONTROLLER_URL: expected an http(s) URL without spaces, quotes, \"$\" or \"%\""
fi

# --- 1. operating system packages -------------------------------------------------------------------
[ -r /etc/os-release ] || die "no /etc/os-release: unsupported distribution"
# shellcheck disable=SC1091
. /etc/os-release
os_family=""
case " ${ID:-} ${ID_LIKE:-} " in
  *" amzn "*) os_family=amzn ;;
  *" debian "* | *" ubuntu "*) os_family=debian ;;
  *) die "unsupported distribution ${PRETTY_NAME:-unknown}: Amazon Linux 2023, Debian or Ubuntu" ;;
esac
log "distribution: ${PRETTY_NAME:-$ID} ($os_family), $(uname -m)"

case "$(uname -m)" in
  x86_64) node_arch=x64 cli_arch=x86_64 ;;
  aarch64) node_arch=arm64 cli_arch=aarch64 ;;
  *) die "unsupported architecture $(uname -m)" ;;
esac

if [ "$os_family" = amzn ]; then
  # AL2023 ships curl-minimal; installing curl would conflict with it.
  retry 5 dnf install -y -q docker git tar xz unzip jq iptables-nft
else
  export DEBIAN_FRONTEND=noninteractive
  retry 5 apt-get update -qq
  retry 5 apt-get install -y -qq docker.io git curl ca-certificates tar xz-utils unzip jq iptables
fi
# No userland proxy: with it, a container connecting to the host's address on a published port is
# relayed (from the host) to whichever container publishes it, around the network's isolation.
install -d -m 0755 /etc/docker
if [ -s /etc/docker/daemon.json ]; then
  jq '. + {"userland-proxy": false}' /etc/docker/daemon.json > /etc/docker/daemon.json.new && mv /etc/docker/daemon.json.new /etc/docker/daemon.json
else
  printf '{ "userland-proxy": false }\n' > /etc/docker/daemon.json
fi
systemctl enable docker
systemctl restart docker
retry 10 docker info >/dev/null || die "the Docker engine does not answer"
log "docker: $(docker version --format '{{.Server.Version}}')"

# Node.js from nodejs.org into $NODE_HOME, checked against the release's checksums.
if [ ! -x "$NODE_HOME/bin/node" ]; then
  work=$(mktemp -d)
  retry 5 curl -fsSL -o "$work/SHASUMS256.txt" "https://nodejs.org/dist/${NODE_DIST}/SHASUMS256.txt"
  node_file=$(awk -v suffix="-linux-${node_arch}.tar.xz" 'substr($2, length($2) - length(suffix) + 1) == suffix { print $2; exit }' "$work/SHASUMS256.txt")
  [ -n "$node_file" ] || die "no linux-${node_arch} tarball listed in ${NODE_DIST}/SHASUMS256.txt"
  retry 5 curl -fsSL -o "$work/$node_file" "https://nodejs.org/dist/${NODE_DIST}/${node_file}"
  (cd "$work" && grep " ${node_file}\$" SHASUMS256.txt | sha256sum -c --quiet -) || die "checksum mismatch for $node_file"
  install -d -m 0755 "$NODE_HOME"
  tar -xJf "$work/$node_file" -C "$NODE_HOME" --strip-components=1 --no-same-owner
  rm -rf "$work"
fi
export PATH="$NODE_HOME/bin:$PATH"
log "node: $(node --version), npm $(npm --version)"

# The AWS CLI v2 (preinstalled on Amazon Linux 2023; Debian and Ubuntu no longer package v2).
if ! command -v aws >/dev/null 2>&1; then
  work=$(mktemp -d)
  retry 5 curl -fsSL -o "$work/awscliv2.zip" "https://awscli.amazonaws.com/awscli-exe-linux-${cli_arch}.zip"
  unzip -q "$work/awscliv2.zip" -d "$work"
  "$work/aws/install" --update >/dev/null
  rm -rf "$work"
fi
log "$(aws --version 2>&1)"

# --- 2. instance metadata (IMDSv2) ------------------------------------------------------------------
imds_token=""
imds_login() {
  imds_token=$(curl -fsS --max-time 5 -X PUT http://169.254.169.254/latest/api/token -H 'X-aws-ec2-metadata-token-ttl-seconds: 21600')
}
imds() {
  curl -fsS --max-time 5 -H "X-aws-ec2-metadata-token: $imds_token" "http://169.254.169.254/latest/meta-data/$1"
}
retry 10 imds_login || die "the instance metadata service (IMDSv2) does not answer"
instance_id=$(retry 5 imds instance-id) || die "no instance-id in the instance metadata"
private_ip=$(retry 5 imds local-ipv4) || die "no local-ipv4 in the instance metadata"
region=$(retry 5 imds placement/region) || die "no placement/region in the instance metadata"
[[ "$instance_id" =~ ^i-[0-9a-f]+$ ]] || die "unexpected instance id '$instance_id'"
[[ "$private_ip" =~ ^[0-9]+\.[0-9]+\.[0-9]+\.[0-9]+$ ]] || die "unexpected private IPv4 '$private_ip'"
log "instance $instance_id, private IPv4 $private_ip, region $region"

# --- 3. vscode-swarm ---------------------------------------------------------------------------------
id -u "$AGENT_USER" >/dev/null 2>&1 || useradd --system --home-dir /var/lib/vscode-swarm --shell /usr/sbin/nologin "$AGENT_USER"
# Membership of the docker group is equivalent to root on this host: the agent drives the engine.
usermod -aG docker "$AGENT_USER"
install -d -o root -g root -m 0755 "$INSTALL_DIR"
if [ -n "$VSCODE_SWARM_TARBALL_URL" ]; then
  case "$VSCODE_SWARM_TARBALL_URL" in https://*) ;; *) die "VSCODE_SWARM_TARBALL_URL must be https" ;; esac
  work=$(mktemp -d)
  retry 5 curl -fsSL -o "$work/vscode-swarm.tgz" "$VSCODE_SWARM_TARBALL_URL"
  if [ -n "$VSCODE_SWARM_TARBALL_SHA256" ]; then
    echo "$VSCODE_SWARM_TARBALL_SHA256  $work/vscode-swarm.tgz" | sha256sum -c --quiet - || die "checksum mismatch for $VSCODE_SWARM_TARBALL_URL"
  fi
  # `npm pack` tarballs hold everything under package/.
  tar -xzf "$work/vscode-swarm.tgz" -C "$INSTALL_DIR" --strip-components=1 --no-same-owner
  rm -rf "$work"
  (cd "$INSTALL_DIR" && retry 3 npm install --omit=dev --no-audit --no-fund --loglevel=error)
else
  if [ -d "$INSTALL_DIR/.git" ]; then
    git -C "$INSTALL_DIR" fetch --depth 1 origin "$VSCODE_SWARM_GIT_REF"
    git -C "$INSTALL_DIR" checkout --force FETCH_HEAD
  else
    retry 3 git clone --depth 1 --branch "$VSCODE_SWARM_GIT_REF" "$VSCODE_SWARM_GIT_URL" "$INSTALL_DIR"
  fi
  (cd "$INSTALL_DIR" && retry 3 npm ci --no-audit --no-fund --loglevel=error && npm run --silent build && npm prune --omit=dev --no-audit --no-fund --loglevel=error)
fi
[ -f "$INSTALL_DIR/dist/src/cli.js" ] || die "$INSTALL_DIR/dist/src/cli.js is missing after the install"
log "vscode-swarm: $(node "$INSTALL_DIR/dist/src/cli.js" --version 2>/dev/null || echo installed)"

# --- 4. this host's own token from SSM Parameter Store ----------------------------------------------
get_secure_parameter() {
  aws ssm get-parameter --region "$region" --name "$1" --with-decryption --query Parameter.Value --output text
}
token_parameter="$AGENT_TOKEN_PARAMETER_PREFIX/$instance_id"
agent_token=""
for _ in $(seq 1 $((AGENT_TOKEN_WAIT_SECONDS / 10 + 1))); do
  if agent_token=$(get_secure_parameter "$token_parameter" 2>/dev/null); then break; fi
  agent_token=""
  sleep 10
done
[ -n "$agent_token" ] || die "cannot read $token_parameter from SSM within ${AGENT_TOKEN_WAIT_SECONDS}s (was it put? instance role? host-iam-policy.json)"
# The value lands in a systemd EnvironmentFile: keep it to characters that file format takes literally.
[[ "$agent_token" =~ ^[A-Za-z0-9_-]{43}$ ]] || die "$token_parameter: expected HMAC-SHA256(master, instance id) in base64url (43 characters)"

install -d -o root -g root -m 0755 /etc/vscode-swarm
(
  umask 077
  # Read by systemd (as root) before it drops to the agent's user; the agent reads VSCODE_SWARM_AGENT_*.
  printf 'VSCODE_SWARM_AGENT_TOKEN=%s\nVSCODE_SWARM_AGENT_GATEWAY_PUBLIC_KEY=%s\n' "$agent_token" "$GATEWAY_PUBLIC_KEY" > /etc/vscode-swarm/agent.env
)
unset agent_token
log "this host's token written to /etc/vscode-swarm/agent.env (root only)"

# Containers must not reach the host's own services: the agent's API and proxy, and (through a published
# port, which DNAT turns into a bridge-to-bridge packet) any editor. The controller comes in on the VPC
# interface, which these rules do not match. DOCKER-USER exists once the engine has started.
for bridge in docker0 br-+; do
  iptables -C INPUT -i "$bridge" -p tcp -m multiport --dports "$AGENT_API_PORT,$AGENT_PROXY_PORT" -j DROP 2>/dev/null ||
    iptables -I INPUT -i "$bridge" -p tcp -m multiport --dports "$AGENT_API_PORT,$AGENT_PROXY_PORT" -j DROP
  iptables -C DOCKER-USER -i "$bridge" -m conntrack --ctstate DNAT --ctorigdstport "${AGENT_PORT_RANGE/-/:}" -j DROP 2>/dev/null ||
    iptables -I DOCKER-USER -i "$bridge" -m conntrack --ctstate DNAT --ctorigdstport "${AGENT_PORT_RANGE/-/:}" -j DROP
done
log "container-to-host traffic to ports $AGENT_API_PORT, $AGENT_PROXY_PORT and $AGENT_PORT_RANGE dropped"

# --- 5. the editor image ------------------------------------------------------------------------------
if [ -n "$EDITOR_IMAGE_TARBALL_URL" ]; then
  case "$EDITOR_IMAGE_TARBALL_URL" in https://*) ;; *) die "EDITOR_IMAGE_TARBALL_URL must be https" ;; esac
  work=$(mktemp -d)
  retry 5 curl -fsSL -o "$work/image.tar" "$EDITOR_IMAGE_TARBALL_URL"
  docker load -q -i "$work/image.tar"
  rm -rf "$work"
else
  retry 5 docker pull -q "$EDITOR_IMAGE"
fi
docker image inspect "$EDITOR_IMAGE" >/dev/null 2>&1 || die "the editor image $EDITOR_IMAGE is not present after loading it"
log "editor image: $EDITOR_IMAGE"

# --- 6. the agent's service --------------------------------------------------------------------------
install -d -o "$AGENT_USER" -g "$AGENT_USER" -m 0700 /var/lib/vscode-swarm "$AGENT_STATE_DIR"
no_pull_flag=""
if [ "$AGENT_NO_PULL" = 1 ]; then no_pull_flag=" --no-pull"; fi
controller_flag=""
if [ -n "$AGENT_CONTROLLER_URL" ]; then controller_flag=" --controller-url $AGENT_CONTROLLER_URL"; fi

cat > /etc/systemd/system/vscode-swarm-agent.service <<EOF
# Written by the vscode-swarm user data on $(date -u +%Y-%m-%dT%H:%M:%SZ).
[Unit]
Description=vscode-swarm host agent ($instance_id)
# Ordered after Docker so that at shutdown the agent stops (and drains) before the engine does.
After=network-online.target docker.service
Wants=network-online.target
Requires=docker.service

[Service]
Type=simple
User=$AGENT_USER
Group=$AGENT_USER
SupplementaryGroups=docker
# VSCODE_SWARM_AGENT_TOKEN (this host's own) and VSCODE_SWARM_AGENT_GATEWAY_PUBLIC_KEY: kept off the command line.
EnvironmentFile=/etc/vscode-swarm/agent.env
Environment=NODE_ENV=production PATH=$NODE_HOME/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
WorkingDirectory=$INSTALL_DIR
ExecStart=$NODE_HOME/bin/node $INSTALL_DIR/dist/src/cli.js agent --host-id $instance_id --bind $private_ip --publish-host 127.0.0.1 --api-port $AGENT_API_PORT --proxy-port $AGENT_PROXY_PORT --port-range $AGENT_PORT_RANGE --capacity $AGENT_CAPACITY --state-dir $AGENT_STATE_DIR --base-domain $AGENT_BASE_DOMAIN --image $EDITOR_IMAGE --idle-timeout-minutes $AGENT_IDLE_TIMEOUT_MINUTES --stop-timeout-seconds $AGENT_STOP_TIMEOUT_SECONDS --log-level $AGENT_LOG_LEVEL${no_pull_flag}${controller_flag}
Restart=on-failure
RestartSec=5
# SIGTERM: every editor stopped (workspaces kept in this host's volumes, not moved), "drained" reported
# to the controller, exit 0.
# Only the agent gets it (the editors belong to the Docker engine, not to this unit).
KillSignal=SIGTERM
KillMode=mixed
TimeoutStopSec=300
NoNewPrivileges=yes
ProtectSystem=full
ProtectHome=yes
PrivateTmp=yes

[Install]
WantedBy=multi-user.target
EOF
systemctl daemon-reload
systemctl enable --now vscode-swarm-agent.service

# The agent prints "agent ready ..." once its API answers; wait for that port before calling it done.
for _ in $(seq 1 60); do
  if curl -s -o /dev/null --max-time 2 "http://$private_ip:$AGENT_API_PORT/v1/host"; then break; fi
  sleep 2
done
curl -s -o /dev/null --max-time 2 "http://$private_ip:$AGENT_API_PORT/v1/host" || die "the agent's API does not answer on $private_ip:$AGENT_API_PORT (journalctl -u vscode-swarm-agent)"
log "agent up: api http://$private_ip:$AGENT_API_PORT, proxy http://$private_ip:$AGENT_PROXY_PORT"

# --- 7. optional: stop the editors and complete the termination lifecycle hook from the host -------
# By default the controller handles the hook (evacuateTerminatingHosts: it moves this host's workspaces
# with their files to other hosts under heartbeats, then completes the action); leave this off then, or
# the watcher stops the agent in the middle of the moves. Only with evacuateTerminatingHosts: false,
# LIFECYCLE_WATCHER=1 has the host complete the group's
# autoscaling:EC2_INSTANCE_TERMINATING hook itself, for any termination (a manual change of the desired
# capacity, a failed health check, an instance refresh): it polls the metadata item
# autoscaling/target-lifecycle-state and, when it turns to Terminated, stops the agent (SIGTERM: every
# editor stopped cleanly, "drained" reported) and sends CompleteLifecycleAction CONTINUE. The workspaces
# on this host are NOT moved anywhere: they go with the instance. Without the watcher the termination
# waits out the hook's heartbeat timeout, then its default result.
if [ "$LIFECYCLE_WATCHER" = 1 ]; then
  (
    umask 022
    printf 'ASG_NAME=%s\nLIFECYCLE_HOOK_NAME=%s\nINSTANCE_ID=%s\nAWS_REGION=%s\n' "$ASG_NAME" "$LIFECYCLE_HOOK_NAME" "$instance_id" "$region" > /etc/vscode-swarm/lifecycle.env
  )
  install -d -m 0755 /usr/local/libexec
  cat > /usr/local/libexec/vscode-swarm-lifecycle-watch <<'EOF'
#!/bin/bash
# Waits for this instance's scale-in, drains the agent, then lets the group terminate the instance.
set -uo pipefail
state() {
  local token
  token=$(curl -fsS --max-time 5 -X PUT http://169.254.169.254/latest/api/token -H 'X-aws-ec2-metadata-token-ttl-seconds: 300') || return 1
  curl -fsS --max-time 5 -H "X-aws-ec2-metadata-token: $token" http://169.254.169.254/latest/meta-data/autoscaling/target-lifecycle-state
}
while :; do
  if [ "$(state 2>/dev/null)" = Terminated ]; then break; fi
  sleep 5
done
echo "target lifecycle state is Terminated: draining the agent"
systemctl stop vscode-swarm-agent.service || echo "stopping the agent failed; completing the hook anyway"
for attempt in 1 2 3 4 5; do
  if aws autoscaling complete-lifecycle-action --region "$AWS_REGION" --auto-scaling-group-name "$ASG_NAME" \
    --lifecycle-hook-name "$LIFECYCLE_HOOK_NAME" --instance-id "$INSTANCE_ID" --lifecycle-action-result CONTINUE; then
    echo "lifecycle action completed"
    exit 0
  fi
  sleep $((attempt * 3))
done
echo "could not complete the lifecycle action; the hook's heartbeat timeout will"
exit 1
EOF
  chmod 0755 /usr/local/libexec/vscode-swarm-lifecycle-watch
  cat > /etc/systemd/system/vscode-swarm-lifecycle.service <<'EOF'
[Unit]
Description=vscode-swarm: drain the agent and complete the termination lifecycle hook on scale-in
After=vscode-swarm-agent.service network-online.target
Wants=network-online.target

[Service]
Type=simple
EnvironmentFile=/etc/vscode-swarm/lifecycle.env
ExecStart=/usr/local/libexec/vscode-swarm-lifecycle-watch
Restart=on-failure
RestartSec=10

[Install]
WantedBy=multi-user.target
EOF
  systemctl daemon-reload
  systemctl enable --now vscode-swarm-lifecycle.service
  log "lifecycle watcher enabled for group $ASG_NAME, hook $LIFECYCLE_HOOK_NAME"
fi

log "done"
