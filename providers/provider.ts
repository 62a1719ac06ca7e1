/**
 * The seam every provider implements, and the types that cross it.
 *
 * The types are defined as zod schemas so that one definition both documents the shape and rejects bad
 * input (at the MCP boundary, in the CLI, and when a state file is read back). Providers map their native
 * states (Docker container states, EC2/ASG lifecycle, Fly machine states) into the closed sets below
 * inside their own folder.
 */
import type { Readable } from 'node:stream';
import { z } from 'zod';
import { SwarmError } from '../src/errors.js';

export const PROVIDER_TYPES = ['docker', 'aws-asg', 'fly'] as const;
export const ProviderTypeSchema = z.enum(PROVIDER_TYPES);
export type ProviderType = z.infer<typeof ProviderTypeSchema>;

export const INSTANCE_STATUSES = [
  'creating', 'starting', 'running', 'stopping', 'stopped', 'deleting', 'deleted', 'failed', 'migrating', 'unknown',
] as const;
export const InstanceStatusSchema = z.enum(INSTANCE_STATUSES);
export type InstanceStatus = z.infer<typeof InstanceStatusSchema>;

export const HEALTH_STATUSES = ['healthy', 'unhealthy', 'degraded', 'recovering', 'unknown'] as const;
export const HealthStatusSchema = z.enum(HEALTH_STATUSES);
export type HealthStatus = z.infer<typeof HealthStatusSchema>;

/** Rejects anything outside the closed set, naming it. */
export function parseInstanceStatus(value: string): InstanceStatus {
  const parsed = InstanceStatusSchema.safeParse(value);
  if (!parsed.success) {
    throw new SwarmError('INVALID_INPUT', `status: expected one of ${INSTANCE_STATUSES.join(', ')} (got ${JSON.stringify(value)})`, { field: 'status' });
  }
  return parsed.data;
}

/** Instance ids become file names, container names and host names: lower-case, short, no separators. */
export const INSTANCE_ID_PATTERN = /^[a-z0-9][a-z0-9-]{0,62}$/;
export const InstanceIdSchema = z
  .string()
  .regex(INSTANCE_ID_PATTERN, 'expected 1-63 characters of a-z, 0-9 and "-", starting with a letter or digit');

/** Names are what people type; unique within a swarm. */
export const INSTANCE_NAME_PATTERN = /^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$/;
export const InstanceNameSchema = z
  .string()
  .regex(INSTANCE_NAME_PATTERN, 'expected 1-63 characters of letters, digits, "_", "." and "-", starting with a letter or digit');

/**
 * An OCI image reference: [registry[:port]/]path[:tag][@sha256:digest], lower-case path components
 * (the grammar of distribution/reference, without its rarely used corners).
 */
const PATH_COMPONENT = '[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*';
const DOMAIN = '(?:[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?)(?:\\.[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?)*(?::[0-9]+)?';
export const IMAGE_REFERENCE_PATTERN = new RegExp(
  `^(?:${DOMAIN}/)?${PATH_COMPONENT}(?:/${PATH_COMPONENT})*(?::[A-Za-z0-9_][A-Za-z0-9_.-]{0,127})?(?:@sha256:[a-f0-9]{64})?$`,
);
export const ImageReferenceSchema = z
  .string()
  .max(255)
  .regex(IMAGE_REFERENCE_PATTERN, 'expected an image reference such as "codercom/code-server:4.99.3"');

/** CPU in cores (fractions allowed), memory in MiB. The absolute bounds; each provider narrows them. */
export const ResourcesSchema = z.object({
  cpu: z.number().finite().min(0.1, 'expected at least 0.1 cores').max(256, 'expected at most 256 cores'),
  memoryMb: z.number().int().min(256, 'expected at least 256 MiB').max(1_048_576, 'expected at most 1 TiB (1048576 MiB)'),
});
export type Resources = z.infer<typeof ResourcesSchema>;

const ENV_NAME = /^[A-Za-z_][A-Za-z0-9_]{0,127}$/;
/** A process environment (and a container label) cannot carry a NUL: refused here rather than by the engine mid-change. */
const NO_NUL = /^[^\0]*$/;
export const EnvSchema = z
  .record(z.string().regex(ENV_NAME, 'expected an environment variable name'), z.string().max(32_768).regex(NO_NUL, 'expected text without NUL characters'))
  .refine((env) => Object.keys(env).length <= 128, 'expected at most 128 variables');

const METADATA_KEY = /^[A-Za-z0-9][A-Za-z0-9_.\/-]{0,62}$/;
export const MetadataSchema = z
  .record(z.string().regex(METADATA_KEY, 'expected a key of letters, digits, "_", ".", "/" and "-"'), z.string().max(256).regex(NO_NUL, 'expected text without NUL characters'))
  .refine((m) => Object.keys(m).length <= 64, 'expected at most 64 entries');

/** What a caller asks for. Everything except the name has a default the controller fills in. */
export const InstanceConfigSchema = z.object({
  name: InstanceNameSchema,
  image: ImageReferenceSchema.optional(),
  resources: ResourcesSchema,
  env: EnvSchema.optional(),
  region: z.string().max(64).optional(),
  metadata: MetadataSchema.optional(),
  /** Minutes without activity before the instance is stopped; 0 never stops it. The configured default applies when absent. */
  idleTimeoutMinutes: z.number().min(0).max(10_080).optional(),
  /**
   * Run the editor from this editor image, mounted read-only at EDITOR_MOUNT_PATH into `image` (which need
   * not contain code-server: a dev container's image). Only where capabilities say `editorMount`.
   */
  editorMount: z.object({ image: ImageReferenceSchema }).strict().optional(),
});
export type InstanceConfig = z.infer<typeof InstanceConfigSchema>;

/** Where a provider with `editorMount` puts the editor: `${EDITOR_MOUNT_PATH}/bin/code-server` runs it. */
export const EDITOR_MOUNT_PATH = '/opt/vscode-swarm/editor';

/** The parts of a config that can change after creation. */
export const InstanceConfigPatchSchema = z
  .object({
    image: ImageReferenceSchema.optional(),
    resources: ResourcesSchema.partial().strict().optional(),
    env: EnvSchema.optional(),
    metadata: MetadataSchema.optional(),
    idleTimeoutMinutes: z.number().min(0).max(10_080).optional(),
  })
  .strict();
export type InstanceConfigPatch = z.infer<typeof InstanceConfigPatchSchema>;

export const EndpointSchema = z.object({
  /** Where the editor answers, as seen from the controller's machine. */
  url: z.string(),
  host: z.string(),
  port: z.number().int(),
  /**
   * The Host header to send, when the target serves several editors and routes by name (an AWS host
   * agent's authenticating proxy: `<id>.<its base domain>`).
   */
  hostHeader: z.string().optional(),
});
export type Endpoint = z.infer<typeof EndpointSchema>;

export const VSCodeInstanceSchema = z.object({
  id: InstanceIdSchema,
  name: InstanceNameSchema,
  providerType: ProviderTypeSchema,
  status: InstanceStatusSchema,
  /** Why the instance is in its status, when that is not the obvious outcome of a request. */
  statusReason: z.string().optional(),
  health: HealthStatusSchema,
  config: InstanceConfigSchema.extend({ image: ImageReferenceSchema }),
  endpoint: EndpointSchema.optional(),
  /** Provider-native identifiers (container id, volume, host, machine id); opaque to the controller. */
  providerRef: z.record(z.string(), z.string()),
  createdAt: z.string(),
  updatedAt: z.string(),
  /** Where the user opens the editor (through the gateway), without a token. */
  url: z.string().optional(),
  /** Bumped to revoke every access link and session issued before. */
  accessEpoch: z.number().int().min(0).optional(),
  /** The last sign of use: editor heartbeat, gateway traffic, a lease, or a start. */
  lastActivity: z.object({ at: z.string(), source: z.enum(['heartbeat', 'gateway', 'lease', 'start', 'create']) }).optional(),
  /** A caller's promise to be back: the instance is not idle before `until`. */
  lease: z.object({ until: z.string(), holder: z.string().max(128).optional() }).optional(),
  /** Why and when it last stopped. */
  lastStop: z.object({ at: z.string(), reason: z.string(), by: z.enum(['request', 'idle', 'provider']) }).optional(),
  /** What the controller wants: running since a create or start, stopped since a stop. The health monitor repairs the difference. */
  desiredState: z.enum(['running', 'stopped']).optional(),
  /** Why the health is what it is (the last check's finding). */
  healthReason: z.string().optional(),
  /** Set when a delete was asked for (with status `deleting`): what to do with the files if it is interrupted. */
  deleteRequest: z.object({ at: z.string(), keepWorkspace: z.boolean() }).optional(),
  /** Set while the instance waits unassigned in a warm buffer; the key names the buffer. */
  warmPool: z.string().optional(),
  /** The principal it belongs to; records from before tenancy (and adopted ones) belong to the local admin. */
  owner: z.string().optional(),
});
export type VSCodeInstance = z.infer<typeof VSCodeInstanceSchema>;

export interface InstanceFilter {
  status?: InstanceStatus | InstanceStatus[];
  /** Exact name. */
  name?: string;
  metadata?: Record<string, string>;
}

/** The instances that pass a filter: one definition of what each filter field means, for every provider. */
export function applyInstanceFilter<T extends VSCodeInstance>(instances: Iterable<T>, filter: InstanceFilter = {}): T[] {
  const statuses = filter.status === undefined ? undefined : new Set([filter.status].flat());
  return [...instances].filter(
    (i) =>
      (!statuses || statuses.has(i.status)) &&
      (filter.name === undefined || i.name === filter.name) &&
      Object.entries(filter.metadata ?? {}).every(([k, v]) => i.config.metadata?.[k] === v),
  );
}

export const ResourceLimitsSchema = z.object({
  minCpu: z.number(),
  maxCpu: z.number(),
  minMemoryMb: z.number(),
  maxMemoryMb: z.number(),
});
export type ResourceLimits = z.infer<typeof ResourceLimitsSchema>;

export const ProviderCapabilitiesSchema = z.object({
  /** CPU and memory can change without re-creating the instance. */
  liveResize: z.boolean(),
  /** Point-in-time snapshots of an instance's workspace. */
  snapshots: z.boolean(),
  /** Workspace files can be exported and imported (exportWorkspace/importWorkspace; used by migration). */
  workspaceTransfer: z.boolean(),
  /** The largest workspace this provider can hold, when it has such a limit (a volume size). */
  maxWorkspaceMb: z.number().optional(),
  /** Workspace files survive stop/start and re-creation. */
  persistentWorkspace: z.boolean(),
  logs: z.boolean(),
  exec: z.boolean(),
  /** Resource usage can be read (getInstanceStats). */
  stats: z.boolean(),
  /** Regions or placement zones; empty when the provider has one place. */
  regions: z.array(z.string()),
  /** Instances one user may hold, when the provider enforces such a cap. */
  maxInstancesPerUser: z.number().int().optional(),
  /** The editor can run from a mount in an image without it (InstanceConfig.editorMount): a dev container's image. */
  editorMount: z.boolean().optional(),
  /**
   * The provider keeps its own point-in-time copies of a workspace (takeNativeSnapshot /
   * restoreNativeSnapshot): Fly volume snapshots. Snapshots take one besides the portable archive, and a
   * fork on the same provider starts from it.
   */
  nativeSnapshots: z.boolean().optional(),
  resourceLimits: ResourceLimitsSchema,
});
export type ProviderCapabilities = z.infer<typeof ProviderCapabilitiesSchema>;

/** A provider-native copy of an instance's workspace (a Fly volume snapshot), as the provider described it when it was taken. */
export const NativeSnapshotRefSchema = z.object({
  provider: ProviderTypeSchema,
  /** The provider's id for it (Fly: `vs_...`). */
  id: z.string().min(1).max(128),
  /** The volume it is a copy of (Fly lists snapshots per volume). */
  volumeId: z.string().max(128).optional(),
  /** The provider's word for its state when last seen (Fly: `pending` while being taken, `created` once usable). */
  status: z.string().max(64).optional(),
  takenAt: z.string(),
  /** When the provider drops it by itself (Fly keeps a volume snapshot for its `retention_days`). */
  expiresAt: z.string().optional(),
  digest: z.string().max(256).optional(),
  size: z.number().int().min(0).optional(),
});
export type NativeSnapshotRef = z.infer<typeof NativeSnapshotRefSchema>;

/** A workspace replaced by one made from a native snapshot, with the old one kept until the caller decides. */
export interface NativeRestore {
  /** The workspace (volume) the instance has now, made from the snapshot. */
  volumeId: string;
  /** The one it had, kept until commit or rollback. */
  previousVolumeId: string;
  /** Keeps the new workspace and deletes the old one. */
  commit(): Promise<void>;
  /** Puts the old workspace back and deletes the new one. */
  rollback(): Promise<void>;
}

export interface ProgressEvent {
  /** 0..1 of the whole operation. */
  fraction: number;
  message: string;
}

export interface CreateOptions {
  /** Assigned by the controller; providers label what they create with it. */
  instanceId: string;
  onProgress?: (event: ProgressEvent) => void;
  signal?: AbortSignal;
}

export interface StartOptions {
  onProgress?: (event: ProgressEvent) => void;
  signal?: AbortSignal;
}

export interface DeleteOptions {
  /** Keep the workspace files (volume) when the instance goes. */
  keepWorkspace?: boolean;
}

export interface UpdateOptions {
  onProgress?: (event: ProgressEvent) => void;
}

export interface LogOptions {
  /** Last N lines; default 200. */
  tail?: number;
  /** Only lines at or after this time (ISO 8601). */
  since?: string;
  timestamps?: boolean;
}

export interface InstanceLogs {
  instanceId: string;
  lines: string[];
  /** True when the provider had more than was returned. */
  truncated: boolean;
}

export interface ExecOptions {
  timeoutMs?: number;
  /** Per stream; output beyond it is dropped and `truncated` set. */
  maxOutputBytes?: number;
}

export interface InstanceStats {
  memoryBytes: number;
  memoryLimitBytes: number;
  /** Percent of one core; absent when the provider cannot tell from one sample. */
  cpuPercent?: number;
}

export interface CommandResult {
  exitCode: number | null;
  stdout: string;
  stderr: string;
  timedOut: boolean;
  truncated: boolean;
  durationMs: number;
}

/** How an update was applied: in place, or by re-creating the instance around its workspace. */
export type UpdateMode = 'live' | 'recreate' | 'none';

export interface Provider {
  readonly type: ProviderType;
  /** What this provider can do, and within which resource bounds; stable after initialize(). */
  getCapabilities(): ProviderCapabilities;
  /** Connects and verifies access; throws PROVIDER_UNAVAILABLE with what to do when it cannot. */
  initialize(): Promise<void>;
  /** A cheap liveness check of an initialised provider, without side effects; throws PROVIDER_UNAVAILABLE with the reason when it does not answer. */
  ping?(): Promise<void>;
  /** Creates and starts an instance, idempotently: an instance that already exists with this id is returned as is. */
  createInstance(config: InstanceConfig & { image: string }, options: CreateOptions): Promise<VSCodeInstance>;
  /** The instance as the provider sees it now, or null when it has none with this id. */
  getInstance(instanceId: string): Promise<VSCodeInstance | null>;
  /** Every instance this provider manages (found by its labels), optionally filtered. */
  listInstances(filter?: InstanceFilter): Promise<VSCodeInstance[]>;
  /** Starts a stopped instance and waits until its editor answers; a running one is returned as is. */
  startInstance(instanceId: string, options?: StartOptions): Promise<VSCodeInstance>;
  /** Stops an instance, gracefully unless forced; a stopped one is returned as is. */
  stopInstance(instanceId: string, force?: boolean): Promise<VSCodeInstance>;
  /** Removes the instance (and its workspace unless kept); false when there was nothing to remove. */
  deleteInstance(instanceId: string, options?: DeleteOptions): Promise<boolean>;
  /** Applies a change, live where possible, else by re-creating around the same workspace. */
  updateInstance(
    instanceId: string,
    patch: InstanceConfigPatch,
    options?: UpdateOptions,
  ): Promise<VSCodeInstance & { updateMode?: UpdateMode }>;
  /** The editor's recent output. */
  getInstanceLogs(instanceId: string, options?: LogOptions): Promise<InstanceLogs>;
  /** Runs a shell command inside the instance, bounded in time and output. */
  executeCommand(instanceId: string, command: string, options?: ExecOptions): Promise<CommandResult>;
  /**
   * The workspace folder as a tar stream (entries relative to the folder), where capabilities say
   * workspaceTransfer, produced as it is read: never held whole in memory. Resolves once the copy has
   * begun; destroying the stream stops it. Works on a stopped instance where the provider can.
   */
  exportWorkspace?(instanceId: string): Promise<Readable>;
  /**
   * Unpacks such a stream into the workspace folder as it arrives, replacing files of the same name.
   * Takes the stream over: it is read to its end or destroyed, whatever happens (an export left
   * unread would hold its source's connection open).
   */
  importWorkspace?(instanceId: string, archive: Readable): Promise<void>;
  /**
   * Takes a provider-native snapshot of the instance's workspace, where capabilities say nativeSnapshots;
   * resolves once the provider has it, possibly still being taken (see NativeSnapshotRef.status).
   */
  takeNativeSnapshot?(instanceId: string): Promise<NativeSnapshotRef>;
  /**
   * Gives the instance a new workspace made from a native snapshot, keeping the one it had until the
   * answer's commit or rollback; the instance is left running when it ran.
   */
  restoreNativeSnapshot?(instanceId: string, snapshot: NativeSnapshotRef): Promise<NativeRestore>;
  /** Deletes a native snapshot, where the provider has a way to (Fly's Machines API has none: its snapshots expire). */
  deleteNativeSnapshot?(snapshot: NativeSnapshotRef): Promise<void>;
  /** Current resource usage, where capabilities.stats says so. */
  getInstanceStats?(instanceId: string): Promise<InstanceStats>;
  /**
   * Headers the gateway adds when it proxies to this instance's endpoint: the credential of an
   * authenticating proxy in front of the editor (an AWS host agent's). Never shown to users.
   */
  editorRequestHeaders?(instance: VSCodeInstance): Record<string, string>;
  /**
   * Told which controller may run the provider's own work that must run once (scale-in, replacing hosts,
   * evacuations) when several controllers share one store; without a call the provider acts alone.
   */
  useLeadership?(leadership: ProviderLeadership): void;
  /** Releases connections and timers. */
  close?(): Promise<void>;
}

/**
 * The part of the controller's leadership a provider needs (src/store/postgres/leadership.ts): whether
 * this controller leads now, and `fenced` to have the store confirm it still does right before a
 * destructive call (CONFLICT, and the call not made, otherwise).
 */
export interface ProviderLeadership {
  readonly isLeader: boolean;
  fenced<T>(work: () => Promise<T>): Promise<T>;
}

/**
 * Builds providers by type. Every type must be registered explicitly; asking for one that is not
 * fails loudly instead of falling back to a default.
 */
export class ProviderFactory {
  private readonly builders = new Map<ProviderType, (options: unknown) => Provider>();

  register<O>(type: ProviderType, build: (options: O) => Provider): this {
    this.builders.set(type, build as (options: unknown) => Provider);
    return this;
  }

  has(type: string): type is ProviderType {
    return this.builders.has(type as ProviderType);
  }

  registeredTypes(): ProviderType[] {
    return [...this.builders.keys()];
  }

  create(type: string, options: unknown): Provider {
    const build = this.builders.get(type as ProviderType);
    if (!build) {
      const known = PROVIDER_TYPES.includes(type as ProviderType);
      throw new SwarmError(
        'PROVIDER_UNKNOWN',
        known
          ? `providerType: "${type}" is a provider type this build does not include yet (available: ${this.registeredTypes().join(', ') || 'none'})`
          : `providerType: expected one of ${PROVIDER_TYPES.join(', ')} (got ${JSON.stringify(type)})`,
        { field: 'providerType' },
      );
    }
    return build(options);
  }
}
