/**
 * Docker's native vocabulary mapped into the shared one: container states into InstanceStatus, and a
 * container's inspect data into a VSCodeInstance. Everything Docker-specific about names and labels
 * lives here so that the provider and its tests agree on it.
 */
import type Docker from 'dockerode';
import type { InstanceStatus, VSCodeInstance } from '../provider.js';

export const LABEL_MANAGED = 'vscode-swarm.managed';
/** Which swarm (state directory) a container belongs to: controllers of other swarms on the same engine leave it alone. */
export const LABEL_SWARM = 'vscode-swarm.swarm';
export const LABEL_INSTANCE = 'vscode-swarm.instance';
export const LABEL_NAME = 'vscode-swarm.name';
export const LABEL_METADATA = 'vscode-swarm.metadata';
export const LABEL_ENV_KEYS = 'vscode-swarm.env-keys';
export const LABEL_CREATED = 'vscode-swarm.created';

/** The port code-server listens on inside the container. */
export const EDITOR_PORT = 8080;
/** Where the workspace volume is mounted; the upstream image's user is `coder`. */
export const WORKSPACE_PATH = '/home/coder/project';

/**
 * What container and volume names start with. One engine per machine normally holds one swarm's
 * instances under this prefix; a host agent may be given its own (emulated hosts share one engine, and
 * an instance moving between them exists on two hosts at once).
 */
export const DEFAULT_NAME_PREFIX = 'vscode-swarm';
export const NAME_PREFIX_PATTERN = /^[a-zA-Z0-9][a-zA-Z0-9_.-]{0,63}$/;

export function containerName(instanceId: string, prefix = DEFAULT_NAME_PREFIX): string {
  return `${prefix}-${instanceId}`;
}

export function volumeName(instanceId: string, prefix = DEFAULT_NAME_PREFIX): string {
  return `${prefix}-${instanceId}-workspace`;
}

/** Maps Docker's container state (plus how it ended) into the shared lifecycle, with a reason. */
export function mapContainerState(state: Docker.ContainerInspectInfo['State']): { status: InstanceStatus; reason?: string } {
  switch (state.Status) {
    case 'running':
      return { status: 'running' };
    case 'created':
      return { status: 'stopped', reason: 'created but never started' };
    case 'restarting':
      return { status: 'starting', reason: 'the engine is restarting the container' };
    case 'removing':
      return { status: 'deleting' };
    case 'paused':
      return { status: 'stopped', reason: 'paused outside vscode-swarm' };
    case 'exited':
      if (state.OOMKilled) return { status: 'failed', reason: `killed for exceeding its memory limit at ${state.FinishedAt}` };
      return { status: 'stopped', reason: `exited with code ${state.ExitCode} at ${state.FinishedAt}` };
    case 'dead':
      return { status: 'failed', reason: `the engine marked the container dead${state.Error ? `: ${state.Error}` : ''}` };
    default:
      return { status: 'unknown', reason: `unrecognised Docker state ${JSON.stringify(state.Status)}` };
  }
}

/**
 * How the controller reaches an editor: through a port published on `publishHost`, or (publishHost null)
 * at the container's own address on `network`, which only the Docker host can route to.
 */
export interface EndpointMode {
  publishHost: string | null;
  network: string;
}

/** Rebuilds the instance view from what the engine reports; the engine is the truth about what exists. */
export function instanceFromContainer(info: Docker.ContainerInspectInfo, mode: EndpointMode): VSCodeInstance {
  const labels = info.Config.Labels ?? {};
  const id = labels[LABEL_INSTANCE]!;
  const { status, reason } = mapContainerState(info.State);
  const envKeys = new Set((labels[LABEL_ENV_KEYS] ?? '').split(',').filter(Boolean));
  const env: Record<string, string> = {};
  for (const entry of info.Config.Env ?? []) {
    const eq = entry.indexOf('=');
    const key = entry.slice(0, eq);
    if (envKeys.has(key)) env[key] = entry.slice(eq + 1);
  }
  const endpointHost = mode.publishHost ?? info.NetworkSettings?.Networks?.[mode.network]?.IPAddress;
  const hostPort = mode.publishHost ? info.NetworkSettings?.Ports?.[`${EDITOR_PORT}/tcp`]?.[0]?.HostPort : String(EDITOR_PORT);
  const port = hostPort ? Number(hostPort) : undefined;
  const nanoCpus = info.HostConfig.NanoCpus ?? 0;
  const memory = info.HostConfig.Memory ?? 0;
  const instance: VSCodeInstance = {
    id,
    name: labels[LABEL_NAME] ?? id,
    providerType: 'docker',
    status,
    health: dockerHealth(info.State.Health?.Status),
    config: {
      name: labels[LABEL_NAME] ?? id,
      image: info.Config.Image,
      resources: { cpu: nanoCpus / 1e9, memoryMb: Math.round(memory / (1024 * 1024)) },
      // The env-keys label says exactly what was set, so "none" is reported as {} rather than left out:
      // an absent env reads as "unknown" to the controller, which would keep a stale one in the registry.
      ...(Object.keys(env).length || labels[LABEL_ENV_KEYS] !== undefined ? { env } : {}),
      ...(labels[LABEL_METADATA] ? { metadata: parseMetadata(labels[LABEL_METADATA]) } : {}),
    },
    providerRef: { containerId: info.Id, containerName: info.Name.replace(/^\//, ''), volume: workspaceVolumeOf(info) ?? volumeName(id) },
    createdAt: labels[LABEL_CREATED] ?? info.Created,
    updatedAt: new Date().toISOString(),
  };
  if (reason) instance.statusReason = reason;
  if (status === 'running' && port && endpointHost) instance.endpoint = { url: `http://${endpointHost}:${port}`, host: endpointHost, port };
  return instance;
}

function dockerHealth(status: string | undefined): VSCodeInstance['health'] {
  if (status === 'healthy') return 'healthy';
  if (status === 'unhealthy') return 'unhealthy';
  return 'unknown';
}

function parseMetadata(text: string): Record<string, string> | undefined {
  try {
    const value = JSON.parse(text) as unknown;
    if (value && typeof value === 'object' && !Array.isArray(value)) {
      return Object.fromEntries(Object.entries(value).filter(([, v]) => typeof v === 'string')) as Record<string, string>;
    }
  } catch {
    // a label edited by hand: ignore it rather than refuse the container
  }
  return undefined;
}

/** The volume mounted at the workspace folder, as the engine reports it. */
function workspaceVolumeOf(info: Docker.ContainerInspectInfo): string | undefined {
  return info.Mounts?.find((m) => m.Destination === WORKSPACE_PATH && m.Type === 'volume')?.Name;
}
