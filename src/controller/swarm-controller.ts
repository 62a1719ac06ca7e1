/**
 * The SwarmController: the one place that decides. It owns the registry, asks providers to act, and
 * records what they report. Operations on one instance are serialised; creates are serialised per name
 * so that asking twice for the same workspace yields one.
 */
import { randomBytes } from 'node:crypto';
import { z } from 'zod';
import {
  EnvSchema,
  HEALTH_STATUSES,
  INSTANCE_STATUSES,
  ImageReferenceSchema,
  InstanceConfigPatchSchema,
  InstanceIdSchema,
  InstanceNameSchema,
  InstanceStatusSchema,
  MetadataSchema,
  PROVIDER_TYPES,
  ProviderTypeSchema,
  ResourcesSchema,
  type CommandResult,
  type HealthStatus,
  type InstanceConfig,
  type InstanceConfigPatch,
  type InstanceLogs,
  type InstanceStatus,
  type ProgressEvent,
  type Provider,
  type ProviderCapabilities,
  type ProviderType,
  type UpdateMode,
  type VSCodeInstance,
} from '../../providers/provider.js';
import type { SwarmConfig } from '../config.js';
import { SwarmError, asSwarmError, invalidInput } from '../errors.js';
import { silentLogger, type Logger } from '../logger.js';
import type { InstanceRegistry } from '../registry/instance-registry.js';
import { KeyedMutex } from './keyed-mutex.js';

/** What a caller may ask for when creating; everything but the name has a default. */
export const CreateRequestSchema = z
  .object({
    name: InstanceNameSchema,
    providerType: ProviderTypeSchema.optional(),
    image: ImageReferenceSchema.optional(),
    resources: ResourcesSchema.partial().optional(),
    env: EnvSchema.optional(),
    metadata: MetadataSchema.optional(),
    region: z.string().max(64).optional(),
  })
  .strict();
export type CreateRequest = z.infer<typeof CreateRequestSchema>;

export const ListFilterSchema = z
  .object({
    providerType: ProviderTypeSchema.optional(),
    status: z.union([InstanceStatusSchema, z.array(InstanceStatusSchema)]).optional(),
    /** Glob over names (`*`, `?`). */
    namePattern: z.string().max(128).optional(),
    metadataKey: z.string().max(63).optional(),
    metadataValue: z.string().max(256).optional(),
  })
  .strict();
export type ListFilter = z.infer<typeof ListFilterSchema>;

export interface OperationOptions {
  onProgress?: (event: ProgressEvent) => void;
  signal?: AbortSignal;
}

export type ProviderState = 'ready' | 'unavailable' | 'disabled';

export interface ProviderStatus {
  type: ProviderType;
  state: ProviderState;
  reason?: string;
  capabilities?: ProviderCapabilities;
}

export interface SwarmStatus {
  total: number;
  byStatus: Record<InstanceStatus, number>;
  byHealth: Record<HealthStatus, number>;
  byProvider: Partial<Record<ProviderType, { total: number; byStatus: Partial<Record<InstanceStatus, number>>; byHealth: Partial<Record<HealthStatus, number>> }>>;
  providers: ProviderStatus[];
  execEnabled: boolean;
  stateDir: string;
}

export interface ReconcileReport {
  provider: ProviderType;
  adopted: string[];
  markedMissing: string[];
  removed: string[];
  updated: string[];
}

export interface SwarmControllerDeps {
  config: SwarmConfig;
  registry: InstanceRegistry;
  /** Providers by type, not yet initialised; types absent here are reported as disabled. */
  providers: Partial<Record<ProviderType, Provider>>;
  logger?: Logger;
  now?: () => Date;
  randomId?: () => string;
}

/** How long after a failed provider initialisation the next use tries again. */
const PROVIDER_RETRY_MS = 5_000;
const MAX_COMMAND_LENGTH = 65_536;

interface ProviderSlot {
  provider: Provider;
  state: ProviderState;
  reason?: string;
  lastAttempt: number;
  init?: Promise<void>;
}

export class SwarmController {
  private readonly config: SwarmConfig;
  readonly registry: InstanceRegistry;
  private readonly logger: Logger;
  private readonly now: () => Date;
  private readonly randomId: () => string;
  private readonly slots = new Map<ProviderType, ProviderSlot>();
  private readonly locks = new KeyedMutex();

  constructor(deps: SwarmControllerDeps) {
    this.config = deps.config;
    this.registry = deps.registry;
    this.logger = (deps.logger ?? silentLogger()).child({ component: 'controller' });
    this.now = deps.now ?? (() => new Date());
    this.randomId = deps.randomId ?? (() => randomBytes(4).toString('hex'));
    for (const [type, provider] of Object.entries(deps.providers) as [ProviderType, Provider][]) {
      this.slots.set(type, { provider, state: 'unavailable', reason: 'not initialised yet', lastAttempt: 0 });
    }
  }

  /** Loads the registry, connects every provider (one that fails is reported, not fatal) and reconciles. */
  async initialize(): Promise<{ reconciled: ReconcileReport[]; unavailable: ProviderStatus[] }> {
    const load = await this.registry.load();
    if (load.setAside.length) this.logger.warn({ setAside: load.setAside }, 'some state files were set aside');
    await Promise.all([...this.slots.keys()].map((type) => this.connect(type)));
    const reconciled: ReconcileReport[] = [];
    for (const [type, slot] of this.slots) {
      if (slot.state === 'ready') reconciled.push(await this.reconcile(type));
    }
    const unavailable = this.providerStatuses().filter((p) => p.state === 'unavailable');
    for (const p of unavailable) this.logger.warn({ provider: p.type, reason: p.reason }, 'provider unavailable');
    return { reconciled, unavailable };
  }

  /**
   * Brings the registry in line with what a provider reports: instances nobody knows about are adopted,
   * registered ones that vanished are marked with the reason, interrupted operations are settled.
   */
  async reconcile(type: ProviderType): Promise<ReconcileReport> {
    const provider = await this.provider(type);
    const report: ReconcileReport = { provider: type, adopted: [], markedMissing: [], removed: [], updated: [] };
    const seen = new Map((await provider.listInstances()).map((i) => [i.id, i]));
    for (const [id, observed] of seen) {
      if (this.locks.isLocked(id)) continue; // an operation in flight owns it and will record the outcome
      await this.locks.run(id, async () => {
        const known = this.registry.get(id);
        if (!known) {
          await this.registry.register({
            ...observed,
            statusReason: `adopted: found on ${type} without a registry record${observed.statusReason ? `; ${observed.statusReason}` : ''}`,
          });
          report.adopted.push(id);
          this.logger.info({ instanceId: id, provider: type }, 'adopted an unregistered instance');
        } else if (known.status === 'deleting') {
          // A delete was interrupted after the registry recorded it: finish it.
          await provider.deleteInstance(id);
          await this.registry.remove(id);
          report.removed.push(id);
        } else if (this.differs(known, observed)) {
          await this.registry.update(id, this.merge(known, observed));
          report.updated.push(id);
        }
      });
    }
    for (const known of this.registry.list({ providerType: type })) {
      if (seen.has(known.id) || this.locks.isLocked(known.id)) continue;
      await this.locks.run(known.id, async () => {
        if (known.status === 'deleting') {
          await this.registry.remove(known.id);
          report.removed.push(known.id);
        } else if (known.status !== 'failed' || !known.statusReason?.startsWith('missing')) {
          await this.registry.update(known.id, { status: 'failed', health: 'unknown', endpoint: undefined, statusReason: this.missingReason(known) });
          report.markedMissing.push(known.id);
        }
      });
    }
    if (report.adopted.length + report.markedMissing.length + report.removed.length + report.updated.length) {
      this.logger.info(report, 'reconciled');
    }
    return report;
  }

  /** Creates a workspace, or returns the existing one of the same name. */
  async createInstance(request: CreateRequest, options: OperationOptions = {}): Promise<{ instance: VSCodeInstance; created: boolean }> {
    const req = parseInput(CreateRequestSchema, request);
    const type = req.providerType ?? this.config.defaultProvider;
    return this.locks.run(`name:${req.name}`, async () => {
      const existing = this.registry.list().find((i) => i.name === req.name && i.status !== 'deleted');
      if (existing) return { instance: existing, created: false };

      const provider = await this.provider(type);
      const config: InstanceConfig & { image: string } = {
        name: req.name,
        image: req.image ?? this.defaultImage(type),
        resources: {
          cpu: req.resources?.cpu ?? this.config.defaults.cpu,
          memoryMb: req.resources?.memoryMb ?? this.config.defaults.memoryMb,
        },
        ...(req.env ? { env: req.env } : {}),
        ...(req.metadata ? { metadata: req.metadata } : {}),
        ...(req.region ? { region: req.region } : {}),
      };
      checkResources(config.resources, provider.getCapabilities(), type);
      const id = this.newId(req.name);
      const at = this.now().toISOString();
      // Recorded before the provider acts, so a crash mid-create leaves a trace that reconcile settles.
      await this.registry.register({
        id, name: req.name, providerType: type, status: 'creating', health: 'unknown', config, providerRef: {}, createdAt: at, updatedAt: at,
      });
      return this.locks.run(id, async () => {
        try {
          const observed = await provider.createInstance(config, { instanceId: id, ...options });
          const instance = await this.registry.update(id, (current) => this.merge(current, observed));
          this.logger.info({ instanceId: id, provider: type, endpoint: instance.endpoint?.url }, 'instance created');
          return { instance, created: true };
        } catch (err) {
          await this.registry.remove(id).catch((e) => this.logger.error({ instanceId: id, err: e }, 'could not drop the record of a failed create'));
          throw asSwarmError(err, 'PROVIDER_ERROR');
        }
      });
    });
  }

  /** The instance, refreshed from its provider when that answers. */
  async getInstance(instanceId: string): Promise<VSCodeInstance> {
    this.registry.require(checkId(instanceId));
    if (this.locks.isLocked(instanceId)) return this.registry.require(instanceId);
    return this.locks.run(instanceId, () => this.refresh(instanceId));
  }

  /** Instances matching the filter, refreshed from every provider that answers. */
  async listInstances(filter: ListFilter = {}, options: { refresh?: boolean } = {}): Promise<VSCodeInstance[]> {
    const f = parseInput(ListFilterSchema, filter);
    if (options.refresh !== false) {
      for (const [type, slot] of this.slots) {
        if (slot.state !== 'ready' || (f.providerType && f.providerType !== type)) continue;
        await this.reconcile(type).catch((err) => this.logger.warn({ provider: type, err: (err as Error).message }, 'refresh failed; showing the registry'));
      }
    }
    let list: readonly VSCodeInstance[] = f.namePattern ? this.registry.findByName(f.namePattern) : this.registry.list();
    if (f.metadataKey) {
      const keep = new Set(this.registry.findByMetadata(f.metadataKey, f.metadataValue).map((i) => i.id));
      list = list.filter((i) => keep.has(i.id));
    }
    const statuses = f.status === undefined ? undefined : new Set([f.status].flat());
    return list.filter((i) => (!f.providerType || i.providerType === f.providerType) && (!statuses || statuses.has(i.status)));
  }

  async startInstance(instanceId: string, options: OperationOptions = {}): Promise<VSCodeInstance> {
    return this.withInstance(instanceId, async (current, provider) => {
      await this.registry.update(instanceId, { status: 'starting', statusReason: undefined });
      const exists = await provider.getInstance(instanceId);
      // A container removed behind our back is re-created around its workspace volume.
      const observed = exists
        ? await provider.startInstance(instanceId, options)
        : await provider.createInstance(current.config, { instanceId, ...options });
      return this.registry.update(instanceId, (now) => this.merge(now, observed, exists ? undefined : 're-created: its container had gone missing'));
    });
  }

  async stopInstance(instanceId: string, options: { force?: boolean } = {}): Promise<VSCodeInstance> {
    return this.withInstance(instanceId, async (_current, provider) => {
      await this.requireOnProvider(instanceId, provider);
      await this.registry.update(instanceId, { status: 'stopping', statusReason: undefined });
      const observed = await provider.stopInstance(instanceId, options.force ?? false);
      return this.registry.update(instanceId, (now) => this.merge(now, observed, options.force ? 'stopped by request (forced)' : 'stopped by request'));
    });
  }

  /** Deletes the instance and, unless kept, its workspace files. */
  async deleteInstance(instanceId: string, options: { keepWorkspace?: boolean } = {}): Promise<{ instanceId: string; deleted: true; workspaceKept: boolean }> {
    return this.withInstance(instanceId, async (_current, provider) => {
      await this.registry.update(instanceId, { status: 'deleting', statusReason: undefined });
      await provider.deleteInstance(instanceId, { keepWorkspace: options.keepWorkspace ?? false });
      await this.registry.remove(instanceId);
      this.logger.info({ instanceId }, 'instance deleted');
      return { instanceId, deleted: true as const, workspaceKept: options.keepWorkspace ?? false };
    });
  }

  /** Changes image, env, metadata or resources: live where the provider can, else by re-creating around the same workspace. */
  async updateInstance(instanceId: string, patch: InstanceConfigPatch, options: OperationOptions = {}): Promise<VSCodeInstance & { updateMode: UpdateMode }> {
    const p = parseInput(InstanceConfigPatchSchema, patch);
    if (!p.image && !p.env && !p.metadata && !p.resources) throw invalidInput('patch', 'at least one of image, env, metadata, resources');
    return this.withInstance(instanceId, async (current, provider) => {
      checkResources({ ...current.config.resources, ...p.resources }, provider.getCapabilities(), current.providerType);
      await this.requireOnProvider(instanceId, provider);
      const observed = await provider.updateInstance(instanceId, p, options);
      const updated = await this.registry.update(instanceId, (now) => {
        const merged = this.merge(now, observed);
        return {
          ...merged,
          config: {
            ...merged.config,
            ...(p.image ? { image: p.image } : {}),
            ...(p.env ? { env: p.env } : {}),
            ...(p.metadata ? { metadata: p.metadata } : {}),
          },
        };
      });
      return { ...updated, updateMode: observed.updateMode ?? 'recreate' };
    });
  }

  async getInstanceLogs(instanceId: string, options: { tail?: number; since?: string } = {}): Promise<InstanceLogs> {
    if (options.tail !== undefined && (!Number.isInteger(options.tail) || options.tail < 1 || options.tail > 10_000)) {
      throw invalidInput('tail', 'an integer from 1 to 10000', options.tail);
    }
    if (options.since !== undefined && Number.isNaN(Date.parse(options.since))) throw invalidInput('since', 'an ISO 8601 time', options.since);
    const current = this.registry.require(checkId(instanceId));
    const provider = await this.provider(current.providerType);
    return provider.getInstanceLogs(instanceId, options);
  }

  /** Runs a shell command in a running instance; refused unless exec is enabled in the configuration. */
  async executeCommand(instanceId: string, command: string, options: { timeoutMs?: number } = {}): Promise<CommandResult> {
    if (!this.config.exec.enabled) {
      throw new SwarmError('DISABLED', 'execute_command is turned off: set "exec": { "enabled": true } in the config file, or VSCODE_SWARM_ENABLE_EXEC=1, to allow it');
    }
    if (typeof command !== 'string' || command.trim() === '' || command.length > MAX_COMMAND_LENGTH || command.includes('\0')) {
      throw invalidInput('command', `a non-empty shell command of at most ${MAX_COMMAND_LENGTH} characters without NUL`);
    }
    const timeoutMs = options.timeoutMs ?? this.config.exec.timeoutMs;
    if (!Number.isInteger(timeoutMs) || timeoutMs < 100 || timeoutMs > this.config.exec.timeoutMs) {
      throw invalidInput('timeoutMs', `an integer from 100 to ${this.config.exec.timeoutMs}`, timeoutMs);
    }
    const current = this.registry.require(checkId(instanceId));
    if (current.status !== 'running') throw new SwarmError('CONFLICT', `instance ${instanceId} is ${current.status}; start it before running commands`);
    const provider = await this.provider(current.providerType);
    return provider.executeCommand(instanceId, command, { timeoutMs, maxOutputBytes: this.config.exec.maxOutputBytes });
  }

  getSwarmStatus(): SwarmStatus {
    const byStatus = Object.fromEntries(INSTANCE_STATUSES.map((s) => [s, 0])) as Record<InstanceStatus, number>;
    const byHealth = Object.fromEntries(HEALTH_STATUSES.map((h) => [h, 0])) as Record<HealthStatus, number>;
    const byProvider: SwarmStatus['byProvider'] = {};
    const instances = this.registry.list();
    for (const i of instances) {
      byStatus[i.status]++;
      byHealth[i.health]++;
      const p = (byProvider[i.providerType] ??= { total: 0, byStatus: {}, byHealth: {} });
      p.total++;
      p.byStatus[i.status] = (p.byStatus[i.status] ?? 0) + 1;
      p.byHealth[i.health] = (p.byHealth[i.health] ?? 0) + 1;
    }
    return { total: instances.length, byStatus, byHealth, byProvider, providers: this.providerStatuses(), execEnabled: this.config.exec.enabled, stateDir: this.config.stateDir };
  }

  providerStatuses(): ProviderStatus[] {
    return PROVIDER_TYPES.map((type) => {
      const slot = this.slots.get(type);
      if (!slot) return { type, state: 'disabled' as const, reason: 'not configured in this build or configuration' };
      return {
        type,
        state: slot.state,
        ...(slot.reason ? { reason: slot.reason } : {}),
        ...(slot.state === 'ready' ? { capabilities: slot.provider.getCapabilities() } : {}),
      };
    });
  }

  /** Waits for in-flight writes and releases provider resources. */
  async close(): Promise<void> {
    await this.registry.flush();
    await Promise.all([...this.slots.values()].map((s) => s.provider.close?.().catch(() => undefined)));
  }

  // ---- internals ----

  private async withInstance<T>(instanceId: string, task: (current: VSCodeInstance, provider: Provider) => Promise<T>): Promise<T> {
    this.registry.require(checkId(instanceId));
    return this.locks.run(instanceId, async () => {
      const current = this.registry.require(instanceId); // it may have gone while we waited
      const provider = await this.provider(current.providerType);
      try {
        return await task(current, provider);
      } catch (err) {
        // Whatever happened, the record should say what the provider now sees.
        await this.refresh(instanceId).catch(() => undefined);
        throw asSwarmError(err, 'PROVIDER_ERROR');
      }
    });
  }

  /** Syncs one record with its provider's view; must run under the instance's lock. */
  private async refresh(instanceId: string): Promise<VSCodeInstance> {
    const known = this.registry.get(instanceId);
    if (!known) throw new SwarmError('NOT_FOUND', `instance ${instanceId} does not exist`, { field: 'instanceId' });
    const slot = this.slots.get(known.providerType);
    if (!slot || slot.state !== 'ready') return known;
    const observed = await slot.provider.getInstance(instanceId);
    if (!observed) {
      if (known.status === 'failed' && known.statusReason?.startsWith('missing')) return known;
      return this.registry.update(instanceId, { status: 'failed', health: 'unknown', endpoint: undefined, statusReason: this.missingReason(known) });
    }
    return this.differs(known, observed) ? this.registry.update(instanceId, this.merge(known, observed)) : known;
  }

  private async requireOnProvider(instanceId: string, provider: Provider): Promise<void> {
    if (!(await provider.getInstance(instanceId))) {
      throw new SwarmError('CONFLICT', `instance ${instanceId} has no ${provider.type} instance behind it any more; start_swarm_instance re-creates it around its workspace, delete_swarm_instance removes the record`);
    }
  }

  /**
   * The registry owns the request (name, env, metadata); the provider owns what exists (status,
   * endpoint, native ids, the resources actually applied, the image actually running).
   */
  private merge(known: VSCodeInstance, observed: VSCodeInstance, reason?: string): VSCodeInstance {
    const statusReason = reason && observed.status !== 'failed' ? reason : observed.statusReason;
    return {
      ...known,
      status: observed.status,
      statusReason,
      endpoint: observed.endpoint,
      providerRef: observed.providerRef,
      health: observed.status === 'running' ? (known.health === 'unknown' ? observed.health : known.health) : 'unknown',
      config: { ...known.config, image: observed.config.image, resources: observed.config.resources },
    };
  }

  private differs(known: VSCodeInstance, observed: VSCodeInstance): boolean {
    return (
      known.status !== observed.status ||
      known.endpoint?.url !== observed.endpoint?.url ||
      known.config.image !== observed.config.image ||
      known.config.resources.cpu !== observed.config.resources.cpu ||
      known.config.resources.memoryMb !== observed.config.resources.memoryMb ||
      JSON.stringify(known.providerRef) !== JSON.stringify(observed.providerRef)
    );
  }

  private missingReason(known: VSCodeInstance): string {
    const when = this.now().toISOString();
    if (known.status === 'creating') return `missing: creation was interrupted before the ${known.providerType} instance existed (noticed ${when})`;
    return `missing: its ${known.providerType} instance was removed outside vscode-swarm (noticed ${when}); the workspace volume is kept if it still exists — start_swarm_instance re-creates the instance around it`;
  }

  /** The provider of this type, connected; retries a failed connection at most every few seconds. */
  private async provider(type: ProviderType): Promise<Provider> {
    const slot = this.slots.get(type);
    if (!slot) {
      throw new SwarmError('PROVIDER_UNKNOWN', `providerType: "${type}" is not enabled here (enabled: ${[...this.slots.keys()].join(', ') || 'none'})`, { field: 'providerType' });
    }
    if (slot.state !== 'ready' && Date.now() - slot.lastAttempt >= PROVIDER_RETRY_MS) await this.connect(type);
    if (slot.state !== 'ready') throw new SwarmError('PROVIDER_UNAVAILABLE', slot.reason ?? `${type} is unavailable`);
    return slot.provider;
  }

  private async connect(type: ProviderType): Promise<void> {
    const slot = this.slots.get(type)!;
    slot.init ??= (async () => {
      slot.lastAttempt = Date.now();
      try {
        await slot.provider.initialize();
        slot.state = 'ready';
        delete slot.reason;
      } catch (err) {
        slot.state = 'unavailable';
        slot.reason = asSwarmError(err, 'PROVIDER_UNAVAILABLE').message;
      } finally {
        slot.init = undefined;
      }
    })();
    await slot.init;
  }

  private defaultImage(type: ProviderType): string {
    if (type === 'docker') return this.config.providers.docker.image;
    throw new SwarmError('PROVIDER_UNKNOWN', `providerType: no default image is configured for ${type}`, { field: 'providerType' });
  }

  /** Readable and unique: the name, lower-cased and shortened, plus 8 random hex digits. */
  private newId(name: string): string {
    const slug = name.toLowerCase().replace(/[^a-z0-9-]+/g, '-').replace(/^-+|-+$/g, '').slice(0, 40) || 'ws';
    for (;;) {
      const id = `${slug}-${this.randomId()}`;
      if (!this.registry.get(id)) return id;
    }
  }
}

function checkId(instanceId: unknown): string {
  const parsed = InstanceIdSchema.safeParse(instanceId);
  if (!parsed.success) throw invalidInput('instanceId', 'an instance id of 1-63 characters a-z, 0-9 and "-"', instanceId);
  return parsed.data;
}

function checkResources(resources: { cpu: number; memoryMb: number }, caps: ProviderCapabilities, type: ProviderType): void {
  const { minCpu, maxCpu, minMemoryMb, maxMemoryMb } = caps.resourceLimits;
  if (resources.cpu < minCpu || resources.cpu > maxCpu) throw invalidInput('resources.cpu', `between ${minCpu} and ${maxCpu} cores on ${type}`, resources.cpu);
  if (resources.memoryMb < minMemoryMb || resources.memoryMb > maxMemoryMb) {
    throw invalidInput('resources.memoryMb', `between ${minMemoryMb} and ${maxMemoryMb} MiB on ${type}`, resources.memoryMb);
  }
}

/** Validates a library caller's input the same way the MCP layer does, naming the first bad field. */
export function parseInput<S extends z.ZodType>(schema: S, input: unknown): z.infer<S> {
  const parsed = schema.safeParse(input ?? {});
  if (!parsed.success) {
    const issue = parsed.error.issues[0]!;
    throw invalidInput(issue.path.join('.') || 'input', issue.message);
  }
  return parsed.data;
}
