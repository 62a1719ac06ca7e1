/**
 * Fly.io's native vocabulary mapped into the shared one: Machine states into InstanceStatus, instance
 * resources into a Machine `guest`, and a Machine (as the Machines API returns it) into a VSCodeInstance.
 * Everything Fly-specific about names and metadata keys lives here so that the provider, the emulator's
 * tests and the controller agree on it.
 */
import { createHash } from 'node:crypto';
import { SwarmError } from '../../src/errors.js';
import type { InstanceStatus, Resources, ResourceLimits, VSCodeInstance } from '../provider.js';

/** Machine `config.metadata` keys (Fly metadata is a flat string map; the list endpoint filters on `metadata.<key>=<value>`). */
export const META_MANAGED = 'vscode_swarm_managed';
/** Which swarm a Machine belongs to: controllers of other swarms sharing the app leave it alone. */
export const META_SWARM = 'vscode_swarm_swarm';
export const META_INSTANCE = 'vscode_swarm_instance';
export const META_NAME = 'vscode_swarm_name';
export const META_CREATED = 'vscode_swarm_created';
/** The CPU the caller asked for: a fraction of a core is served by one shared vCPU and reported back as asked. */
export const META_CPU = 'vscode_swarm_cpu';
/** The caller's own metadata, as one JSON string, so its keys never clash with ours or Fly's (`fly_*`). */
export const META_USER = 'vscode_swarm_metadata';

/** The port code-server listens on inside the Machine (the image's entrypoint binds 0.0.0.0:8080). */
export const EDITOR_PORT = 8080;
/** Where the workspace volume is mounted; the image's user is `coder`. */
export const WORKSPACE_PATH = '/home/coder/project';

/** Every state the Machines API documents, persistent, transient and terminal. */
export const FLY_MACHINE_STATES = [
  'created', 'starting', 'started', 'stopping', 'stopped', 'suspending', 'suspended', 'failed', 'launch_failed',
  'destroying', 'destroyed', 'replacing', 'replaced', 'updating', 'restarting', 'migrated',
] as const;
export type FlyMachineState = (typeof FLY_MACHINE_STATES)[number];

/** States in which the Machine is (or is about to be) running a process. */
export const FLY_ACTIVE_STATES: ReadonlySet<string> = new Set(['starting', 'started', 'replacing', 'updating', 'restarting']);
/** States after which the Machine never runs again. */
export const FLY_GONE_STATES: ReadonlySet<string> = new Set(['destroying', 'destroyed']);

/** Maps a Fly Machine state into the shared lifecycle, with a reason where the mapping loses something. */
export function mapMachineState(state: string | undefined): { status: InstanceStatus; reason?: string } {
  switch (state) {
    case 'created':
      // Persistent: a Machine made with skip_launch, or one between creation and its first boot.
      return { status: 'stopped', reason: 'created but not started yet' };
    case 'starting':
      return { status: 'starting' };
    case 'started':
      return { status: 'running' };
    case 'stopping':
      return { status: 'stopping' };
    case 'stopped':
      return { status: 'stopped' };
    case 'suspending':
      return { status: 'stopping', reason: 'suspending (memory snapshot being taken)' };
    case 'suspended':
      return { status: 'stopped', reason: 'suspended: resumes from its memory snapshot on start' };
    case 'failed':
      return { status: 'failed', reason: 'the Machine failed (see its events with `fly machine status`)' };
    case 'launch_failed':
      return { status: 'failed', reason: 'Fly could not launch the Machine (image, capacity or placement)' };
    case 'destroying':
      return { status: 'deleting' };
    case 'destroyed':
      return { status: 'deleted' };
    case 'replacing':
    case 'updating':
      return { status: 'starting', reason: 'a configuration change is being applied' };
    case 'restarting':
      return { status: 'starting', reason: 'restarting' };
    case 'replaced':
      return { status: 'deleted', reason: 'this version of the Machine was replaced by an update' };
    case 'migrated':
      return { status: 'migrating', reason: 'Fly moved the Machine to another host' };
    default:
      return { status: 'unknown', reason: `unrecognised Fly Machine state ${JSON.stringify(state)}` };
  }
}

// ---- sizes ----

/** Shared-CPU Machine sizes Fly sells: 1, 2, 4 or 8 vCPUs, 256 MiB steps, 256..2048 MiB per vCPU. */
export const SHARED_CPU_COUNTS = [1, 2, 4, 8] as const;
export const MEMORY_STEP_MB = 256;
export const SHARED_MIN_MEMORY_PER_CPU_MB = 256;
export const SHARED_MAX_MEMORY_PER_CPU_MB = 2048;

/** The bounds the provider declares; within them, only the sizes `guestFor` accepts are served. */
export const FLY_RESOURCE_LIMITS: ResourceLimits = {
  // Up to one core is served by one shared vCPU (itself a time-share of a core that bursts to a full one).
  minCpu: 0.1,
  maxCpu: Math.max(...SHARED_CPU_COUNTS),
  minMemoryMb: SHARED_MIN_MEMORY_PER_CPU_MB,
  maxMemoryMb: Math.max(...SHARED_CPU_COUNTS) * SHARED_MAX_MEMORY_PER_CPU_MB,
};

export interface FlyGuest {
  cpu_kind: 'shared' | 'performance';
  cpus: number;
  memory_mb: number;
}

/**
 * The Machine size for the resources asked for, or INVALID_INPUT naming what Fly can give instead.
 * A fraction of a core becomes one shared vCPU; more than one core must be a size Fly sells (2, 4, 8).
 */
export function guestFor(resources: Resources): FlyGuest {
  const { cpu, memoryMb } = resources;
  const cpus = cpu <= 1 ? 1 : cpu;
  if (!(SHARED_CPU_COUNTS as readonly number[]).includes(cpus)) {
    throw new SwarmError(
      'INVALID_INPUT',
      `resources.cpu: expected at most 1 core (served by one shared vCPU) or exactly 2, 4 or 8 shared vCPUs on fly (got ${cpu})`,
      { field: 'resources.cpu' },
    );
  }
  const min = cpus * SHARED_MIN_MEMORY_PER_CPU_MB;
  const max = cpus * SHARED_MAX_MEMORY_PER_CPU_MB;
  if (memoryMb % MEMORY_STEP_MB !== 0 || memoryMb < min || memoryMb > max) {
    throw new SwarmError(
      'INVALID_INPUT',
      `resources.memoryMb: expected a multiple of ${MEMORY_STEP_MB} MiB between ${min} and ${max} MiB for ${cpus} shared vCPU${cpus > 1 ? 's' : ''} on fly (got ${memoryMb})`,
      { field: 'resources.memoryMb' },
    );
  }
  return { cpu_kind: 'shared', cpus, memory_mb: memoryMb };
}

/** The resources a Machine has: the CPU as asked when the asked value maps to its vCPUs, else its vCPUs. */
export function resourcesFromGuest(guest: Partial<FlyGuest> | undefined, askedCpu: string | undefined): Resources {
  const cpus = guest?.cpus ?? 1;
  const memoryMb = guest?.memory_mb ?? 256;
  const asked = askedCpu === undefined ? Number.NaN : Number(askedCpu);
  const cpu = Number.isFinite(asked) && asked > 0 && (asked <= 1 ? 1 : asked) === cpus ? asked : cpus;
  return { cpu, memoryMb };
}

// ---- names ----

function shortHash(text: string, length: number): string {
  return createHash('sha256').update(text).digest('hex').slice(0, length);
}

/** The Machine's name: the instance id behind a prefix, shortened with a hash when it would pass 63 characters. */
export function machineName(instanceId: string): string {
  const name = `ws-${instanceId}`;
  return name.length <= 63 ? name : `ws-${instanceId.slice(0, 51)}-${shortHash(instanceId, 8)}`;
}

/**
 * The workspace volume's name. Fly volume names are at most 30 characters of a-z, 0-9 and "_", so the
 * id is shortened and a hash of the whole id (and of the swarm, when there is one) keeps names of long,
 * similar ids, and of other swarms' instances, apart.
 */
export function volumeName(instanceId: string, swarmId?: string): string {
  const slug = instanceId.replace(/[^a-z0-9]+/g, '_').replace(/^_+|_+$/g, '').slice(0, 19) || 'ws';
  return `ws_${slug}_${shortHash(swarmId ? `${swarmId}/${instanceId}` : instanceId, 7)}`;
}

// ---- machines ----

/** The parts of a Machine (as GET /v1/apps/{app}/machines/{id} returns it) this provider reads. */
export interface FlyMachine {
  id: string;
  name?: string;
  state: string;
  region?: string;
  instance_id?: string;
  private_ip?: string | null;
  created_at?: string;
  updated_at?: string;
  config?: {
    image?: string;
    env?: Record<string, string> | null;
    guest?: Partial<FlyGuest>;
    metadata?: Record<string, string> | null;
    mounts?: Array<{ volume?: string; path?: string; name?: string }> | null;
    [key: string]: unknown;
  };
  checks?: Array<{ name?: string; status?: string }> | null;
  [key: string]: unknown;
}

/** How the controller reaches an editor on a Machine. */
export interface EditorAddress {
  /**
   * `private-ip`: the Machine's 6PN address (`private_ip`); `internal-dns`: `<machine id>.vm.<app>.internal`.
   * Both resolve only inside the organisation's private network (a Fly Machine, or a WireGuard peer).
   */
  mode: 'private-ip' | 'internal-dns';
  port: number;
  app: string;
}

export function endpointFor(machine: FlyMachine, address: EditorAddress): VSCodeInstance['endpoint'] | undefined {
  const host = address.mode === 'internal-dns' ? `${machine.id}.vm.${address.app}.internal` : machine.private_ip;
  if (!host) return undefined;
  const shown = host.includes(':') ? `[${host}]` : host; // an IPv6 6PN address needs brackets in a URL
  return { url: `http://${shown}:${address.port}`, host, port: address.port };
}

/** Rebuilds the instance view from what the Machines API reports; null for a Machine this swarm did not make. */
export function instanceFromMachine(machine: FlyMachine, address: EditorAddress): VSCodeInstance | null {
  const meta = machine.config?.metadata ?? {};
  const id = meta[META_INSTANCE];
  if (!id) return null;
  const { status, reason } = mapMachineState(machine.state);
  const env = machine.config?.env ?? {};
  const userMetadata = parseMetadata(meta[META_USER]);
  const name = meta[META_NAME] ?? id;
  const volume = machine.config?.mounts?.find((m) => m.path === WORKSPACE_PATH)?.volume ?? machine.config?.mounts?.[0]?.volume;
  const instance: VSCodeInstance = {
    id,
    name,
    providerType: 'fly',
    status,
    health: flyHealth(machine.checks),
    config: {
      name,
      image: machine.config?.image ?? '',
      resources: resourcesFromGuest(machine.config?.guest, meta[META_CPU]),
      // The Machine's config holds exactly the env the provider set, so an empty one is reported as {}
      // (known to be empty) rather than left out (unknown), which would keep a stale env in the registry.
      ...(machine.config?.env ? { env: { ...env } } : {}),
      ...(machine.region ? { region: machine.region } : {}),
      ...(userMetadata ? { metadata: userMetadata } : {}),
    },
    providerRef: {
      app: address.app,
      machineId: machine.id,
      ...(machine.name ? { machineName: machine.name } : {}),
      ...(machine.instance_id ? { instanceId: machine.instance_id } : {}),
      ...(machine.region ? { region: machine.region } : {}),
      ...(volume ? { volume } : {}),
    },
    createdAt: meta[META_CREATED] ?? machine.created_at ?? new Date().toISOString(),
    updatedAt: machine.updated_at ?? new Date().toISOString(),
  };
  if (reason) instance.statusReason = reason;
  if (status === 'running') {
    const endpoint = endpointFor(machine, address);
    if (endpoint) instance.endpoint = endpoint;
  }
  return instance;
}

function flyHealth(checks: FlyMachine['checks']): VSCodeInstance['health'] {
  if (!checks || checks.length === 0) return 'unknown';
  if (checks.every((c) => c.status === 'passing')) return 'healthy';
  if (checks.some((c) => c.status === 'critical')) return 'unhealthy';
  return 'degraded';
}

function parseMetadata(text: string | undefined): Record<string, string> | undefined {
  if (!text) return undefined;
  try {
    const value = JSON.parse(text) as unknown;
    if (value && typeof value === 'object' && !Array.isArray(value)) {
      const entries = Object.entries(value).filter(([, v]) => typeof v === 'string');
      return entries.length ? (Object.fromEntries(entries) as Record<string, string>) : undefined;
    }
  } catch {
    // edited by hand: ignore it rather than refuse the Machine
  }
  return undefined;
}
