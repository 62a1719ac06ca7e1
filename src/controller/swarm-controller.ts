/**
 * The SwarmController: the one place that decides. It owns the registry, asks providers to act, and
 * records what they report. Operations on one instance are serialised; creates are serialised per name
 * so that asking twice for the same workspace yields one.
 */
import { randomBytes } from 'node:crypto';
import { isDeepStrictEqual } from 'node:util';
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
  type Resources,
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
import { crashPoint } from '../crash/crash-points.js';
import { SwarmError, asSwarmError, invalidInput, isSwarmError } from '../errors.js';
import { silentLogger, type Logger } from '../logger.js';
import type { Admission, InstanceStore } from '../store/instance-store.js';
import type { Leadership } from '../store/postgres/leadership.js';
import { ActivityTracker } from '../activity/activity-tracker.js';
import type { AccessLink, AccessLinks } from '../gateway/access-links.js';
import { WarmPool, type WarmSpec, type WarmStatus } from '../warm/warm-pool.js';
import { StateLock } from '../state/state-lock.js';
import { KeyedMutex } from './keyed-mutex.js';
import { LOCAL_ADMIN_ID, PrincipalIdSchema } from '../tenancy/identity.js';
import { ACTIVE_STATUSES, checkAdmission, limitsFor, ownerOf, type AdmissionRequest } from '../tenancy/quotas.js';
import { PrincipalStore, type PrincipalDirectory } from '../tenancy/principals.js';
import type { AuditOutcome } from '../audit/audit-log.js';
import { auditTrailFor, auditWebhooksFor, type AuditTrail } from '../store/index.js';
import { FileDocumentStore, type DocumentStore } from '../store/documents.js';
import path from 'node:path';
import { parseInput } from './parse-input.js';
import { REPOSITORY_URL_METADATA, RepositoryRequestSchema, importClone, repositoryMetadata, withClonedRepository, type RepositoryRequest } from '../workspace/repository.js';
import { applyDevContainer, readDevContainer, resolveExtensions, runPostStart, setUpDevContainer } from '../workspace/devcontainer.js';

/** Validates a library caller's input the same way the MCP layer does, naming the first bad field. */
export { parseInput };

/** What a caller may ask for when creating; everything but the name has a default. */
export const CreateRequestSchema = z
  .object({
    name: InstanceNameSchema,
    providerType: ProviderTypeSchema.optional(),
    image: ImageReferenceSchema.optional(),
    resources: ResourcesSchema.partial().strict().optional(),
    env: EnvSchema.optional(),
    metadata: MetadataSchema.optional(),
    region: z.string().min(1).max(64).optional(),
    idleTimeoutMinutes: z.number().min(0).max(10_080).optional().describe('Minutes without use before it is stopped; 0 never'),
    owner: PrincipalIdSchema.optional().describe('Whose workspace it is (admins only; default: the caller)'),
    repository: RepositoryRequestSchema.optional().describe('A git repository cloned into the workspace before it is reported ready'),
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
    /** Include unassigned warm-buffer members (hidden by default). */
    includeWarm: z.boolean().optional(),
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
  /** Warm buffers: ready and warming members per provider, image and size (not counted above). */
  warm: WarmStatus[];
  /** Where instances are opened, e.g. http://<id>.localhost:7080/; absent without a gateway. */
  gatewayUrlPattern?: string;
  idleTimeoutMinutes: number;
  execEnabled: boolean;
  stateDir: string;
}

export interface CreateResult {
  instance: VSCodeInstance;
  created: boolean;
  /** Served from the warm buffer rather than started for this request. */
  fromWarmPool: boolean;
  /** A fresh one-time link that opens the editor, when a gateway is configured. */
  access?: AccessLink;
}

export interface StopOptions {
  force?: boolean;
  /** Recorded as the reason of the stop. */
  reason?: string;
  by?: 'request' | 'idle' | 'provider';
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
  /** Where instance records live (the JSON registry or PostgreSQL); closed with the controller. */
  registry: InstanceStore;
  /** Providers by type, not yet initialised; types absent here are reported as disabled. */
  providers: Partial<Record<ProviderType, Provider>>;
  logger?: Logger;
  now?: () => Date;
  randomId?: () => string;
  /** Issues the links users open through the gateway; without it instances have no URL. */
  access?: AccessLinks;
  /** Signs of use seen in this process, shared with the gateway and the idle monitor. */
  activity?: ActivityTracker;
  /** Take the state directory's lock on initialize (default true): one controller per state directory. */
  lockStateDir?: boolean;
  /** Principals and their tokens; by default the store in the state directory. */
  principals?: PrincipalDirectory;
  /** Where every operation and system action is recorded; by default the audit trail of the configured store. */
  audit?: AuditTrail;
  /** Health records and migration journals (the services beside the controller keep them); by default the state directory's files. */
  documents?: DocumentStore;
}

function withResources(record: VSCodeInstance, resources: Resources): VSCodeInstance {
  return { ...record, config: { ...record.config, resources } };
}

/** Thrown inside a warm claim's write when the member is no longer in its buffer (another controller took it). */
const CLAIMED_ELSEWHERE = new SwarmError('CONFLICT', 'the warm member was claimed by another controller first');

/** The record, if it is still an unassigned member of `buffer`; CLAIMED_ELSEWHERE otherwise. */
function claimable(record: VSCodeInstance, buffer: string | undefined): VSCodeInstance {
  if (!buffer || record.warmPool !== buffer) throw CLAIMED_ELSEWHERE;
  return record;
}

/** Metadata key (and so container label content) that marks what was created as a warm-buffer member. */
export const WARM_METADATA_KEY = 'vscode-swarm/warm-pool';

/** The status reason of an instance whose container a recovery is re-creating (status `starting`). */
const RECREATING = 're-creating: ';

/**
 * With a shared store, how long past its last write an operation in a transitional status (creating,
 * re-creating, stopping, deleting) may belong to another controller still working on it: reconcile leaves
 * it alone until then, and settles it as interrupted only after. Added to the longest a create may take.
 */
const IN_FLIGHT_MARGIN_MS = 60_000;
const TRANSITIONAL: ReadonlySet<string> = new Set(['creating', 'starting', 'stopping', 'deleting']);
/**
 * How long a record's writer must have been seen without a connection to the database before reconcile
 * settles its operation: longer than a live controller's listener takes to reconnect after a blip.
 */
const ORPHAN_CONFIRM_MS = 10_000;
/** How far apart the clocks of controllers sharing a store may be, for comparing a record's updatedAt with this one's. */
const CLOCK_SKEW_MS = 5_000;

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
  /** The configuration it was built with (services started beside it read theirs from here). */
  readonly config: SwarmConfig;
  readonly registry: InstanceStore;
  private readonly now: () => Date;
  private readonly randomId: () => string;
  private readonly slots = new Map<ProviderType, ProviderSlot>();
  private readonly locks = new KeyedMutex();
  /** Records whose writer was first seen gone at this time (see orphanedWrites). */
  private readonly orphanSeen = new Map<string, number>();
  readonly access?: AccessLinks;
  readonly activity: ActivityTracker;
  readonly warm: WarmPool;
  private readonly lock?: StateLock;
  /** Who may use the swarm: principals, their tokens, their quotas (checked here, see admit). */
  readonly principals: PrincipalDirectory;
  /** The audit trail; every door's AuthorizedSwarm and every system action record into it. */
  readonly audit: AuditTrail;
  /** Where the health monitor and the migration manager keep their records (shared with PostgreSQL). */
  readonly documents: DocumentStore;
  readonly logger: Logger;
  /** Delivers the audit trail to the configured webhooks, from a cursor into the log. */
  private readonly webhooks?: ReturnType<typeof auditWebhooksFor>;
  /** Who does the work that must run once among controllers sharing the store (see useLeadership). */
  private leadership?: Leadership;

  constructor(deps: SwarmControllerDeps) {
    this.config = deps.config;
    this.registry = deps.registry;
    this.logger = (deps.logger ?? silentLogger()).child({ component: 'controller' });
    this.now = deps.now ?? (() => new Date());
    this.randomId = deps.randomId ?? (() => randomBytes(4).toString('hex'));
    if (deps.access) this.access = deps.access;
    if (deps.lockStateDir !== false) this.lock = new StateLock(this.config.stateDir);
    this.principals = deps.principals ?? new PrincipalStore({ stateDir: this.config.stateDir, logger: this.logger });
    this.audit = deps.audit ?? auditTrailFor(this.config, this.logger);
    this.documents = deps.documents ?? new FileDocumentStore(this.config.stateDir, this.logger);
    // Made before the log opens: its cursors hold the day files they still need against the prune at open.
    this.webhooks = auditWebhooksFor(this.audit, this.config.audit.webhooks, this.logger);
    this.activity = deps.activity ?? new ActivityTracker();
    for (const [type, provider] of Object.entries(deps.providers) as [ProviderType, Provider][]) {
      this.slots.set(type, { provider, state: 'unavailable', reason: 'not initialised yet', lastAttempt: 0 });
    }
    this.warm = new WarmPool(
      this.config.warm.flatMap((w) =>
        this.slots.has(w.provider) ? [{ provider: w.provider, image: w.image ?? this.defaultImage(w.provider), resources: w.resources ?? this.config.defaults, size: w.size }] : [],
      ),
      {
        registry: this.registry,
        createMember: (spec) => this.createWarmMember(spec),
        deleteMember: (id) => this.deleteInstance(id).then(() => this.recordSystemEvent('warm', 'warm.remove', { subject: id })),
        mayAct: () => this.leads,
        logger: this.logger,
      },
    );
  }

  /** Loads the registry, connects every provider (one that fails is reported, not fatal) and reconciles. */
  async initialize(): Promise<{ reconciled: ReconcileReport[]; unavailable: ProviderStatus[] }> {
    await this.lock?.acquire();
    await this.principals.open();
    await this.audit.open();
    await this.webhooks?.start();
    await this.access?.initialize();
    const load = await this.registry.load();
    if (load.setAside.length) this.logger.warn({ setAside: load.setAside }, 'some state files were set aside');
    await Promise.all([...this.slots.keys()].map((type) => this.connect(type)));
    const reconciled: ReconcileReport[] = [];
    for (const [type, slot] of this.slots) {
      if (slot.state === 'ready') reconciled.push(await this.reconcile(type));
    }
    const unavailable = this.providerStatuses().filter((p) => p.state === 'unavailable');
    for (const p of unavailable) this.logger.warn({ provider: p.type, reason: p.reason }, 'provider unavailable');
    void this.warm.refill();
    return { reconciled, unavailable };
  }

  /**
   * Shares the work that must run once with the other controllers of a shared store: reconcile, the warm
   * refill (and the monitors started beside the controller) act only while `leadership` leads, and so do
   * the providers' own background decisions (Provider.useLeadership: AWS scale-in, host replacement,
   * evacuations). Without it (the JSON store, or a controller made on its own) this controller always
   * leads. Set before initialize().
   */
  useLeadership(leadership: Leadership): void {
    this.leadership = leadership;
    for (const slot of this.slots.values()) slot.provider.useLeadership?.(leadership);
  }

  /** True while this controller may run the work that must run once (always, without a shared leadership). */
  get leads(): boolean {
    return this.leadership?.isLeader ?? true;
  }

  /**
   * True when other controllers may share the store (PostgreSQL), so a record may be another controller's
   * work in flight; from the leadership, or the configuration for a controller made without one (a CLI command).
   */
  private get sharedStore(): boolean {
    return this.leadership?.shared ?? Boolean(this.config.store?.databaseUrl);
  }

  /** Runs `work` once the shared store confirmed this controller still leads (CONFLICT, `work` not run, otherwise); at once without a shared leadership. */
  fenced<T>(work: () => Promise<T>): Promise<T> {
    return this.leadership ? this.leadership.fenced(work) : work();
  }

  /** The leader's periodic duty with a shared store: reconcile every ready provider (settling what a dead controller left), then refill the warm buffers. */
  async reconcileAll(): Promise<ReconcileReport[]> {
    const reports: ReconcileReport[] = [];
    for (const type of this.slots.keys()) {
      if (!this.leads) break;
      await this.reconcile(type).then(
        (report) => reports.push(report),
        (err: unknown) => this.logger.warn({ provider: type, err: asSwarmError(err).message }, 'reconcile failed; tried again at the next pass'),
      );
    }
    void this.warm.refill();
    return reports;
  }

  /**
   * Brings the registry in line with what a provider reports: instances nobody knows about are adopted,
   * registered ones that vanished are marked with the reason, interrupted operations are settled.
   *
   * With a shared store only the leader reconciles (another controller's reconcile returns an empty
   * report), and a record in a transitional status written recently may be another controller's operation
   * in flight: it is left alone until it is older than the longest that operation may take.
   */
  async reconcile(type: ProviderType): Promise<ReconcileReport> {
    const report: ReconcileReport = { provider: type, adopted: [], markedMissing: [], removed: [], updated: [] };
    if (!this.leads) return report;
    const provider = await this.provider(type);
    const orphaned = await this.orphanedWrites();
    const listedAt = this.now().getTime();
    const seen = new Map((await provider.listInstances()).map((i) => [i.id, i]));
    // With a shared store, what changed around the listing is judged at the next pass, not against an older
    // view; another controller's operation in flight is left alone unless its controller is gone.
    const settled = (record: Readonly<VSCodeInstance>): boolean => (orphaned.has(record.id) || !this.inFlightElsewhere(record)) && !this.writtenSince(record, listedAt);
    for (const [id, observed] of seen) {
      if (!this.leads) break; // lost the lead mid-pass: the new leader reconciles
      if (this.locks.isLocked(id)) continue; // an operation in flight owns it and will record the outcome
      const owner = this.registry.get(id);
      // A migration owns instances that exist on two providers at once; it settles them itself.
      if (owner && (owner.status === 'migrating' || owner.providerType !== type)) continue;
      if (owner && !settled(owner)) continue;
      await this.locks.run(id, async () => {
        const known = this.registry.get(id);
        if (!known) {
          // Warm membership is deliberately not restored from the label: a member claimed by a user keeps
          // its creation labels, and handing that workspace to someone else would leak its files.
          const adopted = await this.registry
            .register({
              ...observed,
              statusReason: `adopted: found on ${type} without a registry record${observed.statusReason ? `; ${observed.statusReason}` : ''}`,
            })
            .catch((err: unknown) => {
              // With a shared store the record may exist already: another controller's, not heard here yet.
              if (this.sharedStore && isSwarmError(err, 'CONFLICT')) return undefined;
              throw err;
            });
          if (!adopted) return;
          report.adopted.push(id);
          this.logger.info({ instanceId: id, provider: type }, 'adopted an unregistered instance');
        } else if (known.status === 'deleting') {
          await this.finishDelete(provider, known);
          report.removed.push(id);
        } else if (known.status === 'creating' && known.config.metadata?.[REPOSITORY_URL_METADATA] !== undefined) {
          // A create from a repository interrupted before its files were verified in: nobody got it, and
          // its workspace may hold part of the repository, so it is undone like a create interrupted earlier.
          await this.finishDelete(provider, { ...known, deleteRequest: { at: this.now().toISOString(), keepWorkspace: false } });
          report.removed.push(id);
        } else if (known.status === 'stopping' && observed.status === 'running') {
          // A stop interrupted after its intent was recorded (desiredState stopped): finished, as a delete is;
          // left running, nothing would ever stop it (the health monitor only repairs what should run).
          const stopped = await provider.stopInstance(id, false);
          await this.registry.update(id, this.merge(known, stopped, 'stopped: a stop interrupted by a controller restart, finished on start-up'));
          report.updated.push(id);
        } else if (this.differs(known, observed)) {
          await this.registry.update(id, this.merge(known, observed));
          report.updated.push(id);
        }
      });
    }
    for (const known of this.registry.list({ providerType: type })) {
      if (!this.leads) break;
      if (seen.has(known.id) || this.locks.isLocked(known.id) || known.status === 'migrating') continue;
      await this.locks.run(known.id, async () => {
        const current = this.registry.get(known.id); // as it is now that we hold the lock
        if (!current || current.providerType !== type || current.status === 'migrating' || !settled(current)) return;
        if (current.status === 'deleting') {
          // The container went first; the workspace volume may still be there. The user asked for it to go.
          await this.finishDelete(provider, current);
          report.removed.push(current.id);
        } else if (current.status === 'starting' && current.statusReason?.startsWith(RECREATING)) {
          // A re-create interrupted after the old instance went: the workspace was kept; finish it around it.
          const observed = await provider.createInstance(current.config, { instanceId: current.id }).catch((err: unknown) => {
            this.logger.warn({ instanceId: current.id, err: (err as Error).message }, 'could not finish an interrupted re-create');
            return undefined;
          });
          const postStart = observed ? await this.afterStart(provider, current.id, current.config, observed) : undefined;
          await this.registry.update(current.id, (now) =>
            observed ? this.merge(now, observed, joinReasons(current.statusReason, postStart)) : { ...now, status: 'failed', health: 'unknown', endpoint: undefined, statusReason: this.missingReason(now) },
          );
          report.updated.push(current.id);
        } else if (current.status === 'creating') {
          // A create interrupted before the provider made the instance (the process died): nobody got it
          // and nothing was written into it, so it is undone: whatever the provider had begun (a volume),
          // then the record. A retried create of the same name starts afresh.
          await this.finishDelete(provider, { ...current, deleteRequest: { at: this.now().toISOString(), keepWorkspace: false } });
          report.removed.push(current.id);
        } else if (current.status !== 'failed' || !current.statusReason?.startsWith('missing')) {
          await this.registry.update(current.id, { status: 'failed', health: 'unknown', endpoint: undefined, statusReason: this.missingReason(current) });
          report.markedMissing.push(current.id);
        }
      });
    }
    if (report.adopted.length + report.markedMissing.length + report.removed.length + report.updated.length) {
      this.logger.info(report, 'reconciled');
    }
    for (const id of report.adopted) await this.recordSystemEvent('reconcile', 'instance.adopt', { subject: id, reason: `found on ${type} without a registry record` });
    for (const id of report.markedMissing) await this.recordSystemEvent('reconcile', 'instance.mark-missing', { subject: id, reason: `its ${type} instance is gone` });
    for (const id of report.removed) await this.recordSystemEvent('reconcile', 'instance.finish-delete', { subject: id, reason: 'an interrupted delete or create was finished' });
    return report;
  }

  /** Creates a workspace (from the warm buffer when one matches), or returns the existing one of the same name. */
  async createInstance(request: CreateRequest, options: OperationOptions = {}): Promise<CreateResult> {
    const req = parseInput(CreateRequestSchema, request);
    const type = req.providerType ?? this.config.defaultProvider;
    const owner = req.owner ?? LOCAL_ADMIN_ID;
    // Names are unique per owner: two people may both call theirs "api".
    return this.locks.run(`name:${owner}/${req.name}`, async () => {
      // A record being deleted (a failed create waiting for reconcile among them) is not the workspace asked for.
      const existing = this.registry.list().find((i) => i.name === req.name && !i.warmPool && i.status !== 'deleting' && ownerOf(i) === owner);
      if (existing) return this.createResult(existing, false, false);

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
        ...(req.idleTimeoutMinutes !== undefined ? { idleTimeoutMinutes: req.idleTimeoutMinutes } : {}),
      };
      checkResources(config.resources, provider.getCapabilities(), type);
      const { regions } = provider.getCapabilities();
      if (req.region && !regions.includes(req.region)) {
        throw invalidInput('region', regions.length ? `one of ${regions.join(', ')} on ${type}` : `no region: ${type} has one place`, req.region);
      }

      if (req.repository) return this.createFromRepository(type, provider, config, req.repository, options, owner);
      const claimed = req.env || req.region ? undefined : await this.claimWarm(type, config, provider, owner);
      if (claimed) return this.createResult(claimed, true, true);

      const instance = await this.provision(type, provider, config, this.newId(req.name), options, undefined, owner);
      return this.createResult(instance, true, false);
    });
  }

  /** A fresh one-time link to open the instance; `revokeExisting` first invalidates every earlier link and session. */
  async issueAccessLink(instanceId: string, options: { ttlMinutes?: number; revokeExisting?: boolean } = {}): Promise<AccessLink> {
    if (!this.access) throw new SwarmError('DISABLED', 'the gateway is turned off in the configuration, so there is no link to open an editor with');
    if (options.ttlMinutes !== undefined && !(options.ttlMinutes >= 1 && options.ttlMinutes <= 10_080)) {
      throw invalidInput('ttlMinutes', 'a number of minutes from 1 to 10080', options.ttlMinutes);
    }
    this.registry.require(checkId(instanceId));
    return this.locks.run(instanceId, async () => {
      let current = this.registry.require(instanceId);
      if (current.warmPool) throw new SwarmError('CONFLICT', `instance ${instanceId} is an unassigned warm-buffer member; create a workspace to get one`);
      if (options.revokeExisting) {
        current = await this.registry.update(instanceId, { accessEpoch: (current.accessEpoch ?? 0) + 1 });
        this.logger.info({ instanceId, accessEpoch: current.accessEpoch }, 'access revoked; earlier links and sessions no longer work');
      }
      return this.access!.link(instanceId, current.accessEpoch ?? 0, options.ttlMinutes);
    });
  }

  /** Holds the instance awake for `minutes`, whatever its other activity: for an assistant that will be back. */
  async keepAlive(instanceId: string, minutes: number, holder?: string): Promise<VSCodeInstance> {
    if (!(minutes > 0 && minutes <= 1_440)) throw invalidInput('minutes', 'a number of minutes above 0 and at most 1440', minutes);
    this.registry.require(checkId(instanceId));
    return this.locks.run(instanceId, async () => {
      const at = this.now();
      const until = new Date(at.getTime() + minutes * 60_000).toISOString();
      this.activity.touch(instanceId, 'lease', at.getTime());
      const updated = await this.registry.update(instanceId, {
        lease: { until, ...(holder ? { holder } : {}) },
        lastActivity: { at: at.toISOString(), source: 'lease' },
      });
      return this.present(updated);
    });
  }

  /** The instance, refreshed from its provider when that answers. */
  async getInstance(instanceId: string): Promise<VSCodeInstance> {
    this.registry.require(checkId(instanceId));
    if (this.locks.isLocked(instanceId)) return this.present(this.registry.require(instanceId));
    return this.present(await this.locks.run(instanceId, () => this.refresh(instanceId)));
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
    return list
      .filter((i) => (f.includeWarm || !i.warmPool) && (!f.providerType || i.providerType === f.providerType) && (!statuses || statuses.has(i.status)))
      .map((i) => this.present(i));
  }

  async startInstance(instanceId: string, options: OperationOptions = {}): Promise<VSCodeInstance> {
    return this.withInstance(instanceId, async (current, provider) => {
      const admit = ACTIVE_STATUSES.has(current.status)
        ? undefined
        : this.admission({ owner: ownerOf(current), providerType: current.providerType, instanceId, newInstance: false, resources: current.config.resources }, provider);
      await this.registry.update(instanceId, { status: 'starting', statusReason: undefined, desiredState: 'running' }, admit && { admit });
      crashPoint('start.after-record');
      const exists = await provider.getInstance(instanceId);
      // A container removed behind our back is re-created around its workspace volume.
      const observed = exists
        ? await provider.startInstance(instanceId, options)
        : await provider.createInstance(current.config, { instanceId, ...options });
      crashPoint('start.after-provider');
      const postStart = await this.afterStart(provider, instanceId, current.config, observed);
      const reason = [exists ? undefined : 're-created: its container had gone missing', postStart].filter(Boolean).join('; ') || undefined;
      const at = this.now();
      this.activity.touch(instanceId, 'start', at.getTime());
      const started = await this.registry.update(instanceId, (now) => ({
        ...this.merge(now, observed, reason),
        lastActivity: { at: at.toISOString(), source: 'start' },
        desiredState: 'running',
      }));
      return this.present(started);
    });
  }

  async stopInstance(instanceId: string, options: StopOptions = {}): Promise<VSCodeInstance> {
    return this.withInstance(instanceId, async (_current, provider) => {
      await this.requireOnProvider(instanceId, provider);
      await this.registry.update(instanceId, { status: 'stopping', statusReason: undefined, desiredState: 'stopped' });
      crashPoint('stop.after-record');
      const observed = await provider.stopInstance(instanceId, options.force ?? false);
      crashPoint('stop.after-provider');
      const reason = options.reason ?? (options.force ? 'stopped by request (forced)' : 'stopped by request');
      const stopped = await this.registry.update(instanceId, (now) => ({
        ...this.merge(now, observed, reason),
        lastStop: { at: this.now().toISOString(), reason, by: options.by ?? 'request' },
      }));
      return this.present(stopped);
    });
  }

  /** Deletes the instance and, unless kept, its workspace files. */
  async deleteInstance(instanceId: string, options: { keepWorkspace?: boolean } = {}): Promise<{ instanceId: string; deleted: true; workspaceKept: boolean }> {
    const keepWorkspace = options.keepWorkspace ?? false;
    return this.withInstance(instanceId, async (_current, provider) => {
      // The intent is recorded first, with what to do with the files, so that a delete interrupted at
      // any point is finished the same way by reconcile.
      const recorded = await this.registry.update(instanceId, { status: 'deleting', statusReason: undefined, deleteRequest: { at: this.now().toISOString(), keepWorkspace } });
      crashPoint('delete.after-record');
      await this.finishDelete(provider, recorded);
      this.logger.info({ instanceId }, 'instance deleted');
      return { instanceId, deleted: true as const, workspaceKept: keepWorkspace };
    }, { whileDeleting: true });
  }

  /**
   * Deletes what the provider has of a `deleting` instance (its workspace too, unless the request
   * said to keep it), then the record. Records from before the intent was written keep their files:
   * when in doubt, nothing a user might want is destroyed.
   */
  private async finishDelete(provider: Provider, record: Readonly<VSCodeInstance>): Promise<void> {
    await provider.deleteInstance(record.id, { keepWorkspace: record.deleteRequest?.keepWorkspace ?? true });
    crashPoint('delete.after-provider');
    await this.registry.remove(record.id);
    this.activity.forget(record.id);
  }

  /** Changes image, env, metadata or resources: live where the provider can, else by re-creating around the same workspace. */
  async updateInstance(instanceId: string, patch: InstanceConfigPatch, options: OperationOptions = {}): Promise<VSCodeInstance & { updateMode: UpdateMode }> {
    const p = parseInput(InstanceConfigPatchSchema, patch);
    if (!p.image && !p.env && !p.metadata && !p.resources && p.idleTimeoutMinutes === undefined) {
      throw invalidInput('patch', 'at least one of image, env, metadata, resources, idleTimeoutMinutes');
    }
    return this.withInstance(instanceId, async (current, provider) => {
      const resources = { ...current.config.resources, ...p.resources };
      checkResources(resources, provider.getCapabilities(), current.providerType);
      await this.requireOnProvider(instanceId, provider);
      // A bigger running workspace needs room for the new size (its old share is counted out); a stopped one
      // is checked when it starts. The new size is written to the record by the admitted write, before the
      // provider acts, so that creates admitted meanwhile (by any controller) count it; it is put back if
      // the provider fails, and a crash in between is corrected by reconcile (the provider's size wins).
      const reserved = p.resources && ACTIVE_STATUSES.has(this.registry.require(instanceId).status) ? current.config.resources : undefined;
      if (reserved) {
        const admit = this.admission({ owner: ownerOf(current), providerType: current.providerType, instanceId, newInstance: false, resources }, provider);
        await this.registry.update(instanceId, (now) => withResources(now, resources), { admit });
      }
      const observed = await provider.updateInstance(instanceId, p, options).catch(async (err: unknown) => {
        if (reserved) await this.registry.update(instanceId, (now) => withResources(now, reserved)).catch(() => undefined);
        throw err;
      });
      crashPoint('update.after-provider');
      const updated = await this.registry.update(instanceId, (now) => {
        const merged = this.merge(now, observed);
        return {
          ...merged,
          config: {
            ...merged.config,
            ...(p.image ? { image: p.image } : {}),
            ...(p.env ? { env: p.env } : {}),
            ...(p.metadata ? { metadata: p.metadata } : {}),
            ...(p.idleTimeoutMinutes !== undefined ? { idleTimeoutMinutes: p.idleTimeoutMinutes } : {}),
          },
        };
      });
      return { ...this.present(updated), updateMode: observed.updateMode ?? 'recreate' };
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

  /** Counts by status, health and provider, over every instance or those `include` keeps. */
  getSwarmStatus(include?: (instance: Readonly<VSCodeInstance>) => boolean): SwarmStatus {
    const byStatus = Object.fromEntries(INSTANCE_STATUSES.map((s) => [s, 0])) as Record<InstanceStatus, number>;
    const byHealth = Object.fromEntries(HEALTH_STATUSES.map((h) => [h, 0])) as Record<HealthStatus, number>;
    const byProvider: SwarmStatus['byProvider'] = {};
    const instances = this.registry.list().filter((i) => !i.warmPool && (!include || include(i)));
    for (const i of instances) {
      byStatus[i.status]++;
      byHealth[i.health]++;
      const p = (byProvider[i.providerType] ??= { total: 0, byStatus: {}, byHealth: {} });
      p.total++;
      p.byStatus[i.status] = (p.byStatus[i.status] ?? 0) + 1;
      p.byHealth[i.health] = (p.byHealth[i.health] ?? 0) + 1;
    }
    return {
      total: instances.length,
      byStatus,
      byHealth,
      byProvider,
      providers: this.providerStatuses(),
      warm: this.warm.status(),
      ...(this.access ? { gatewayUrlPattern: this.access.urlFor('<id>') } : {}),
      idleTimeoutMinutes: this.config.idle.timeoutMinutes,
      execEnabled: this.config.exec.enabled,
      stateDir: this.config.stateDir,
    };
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

  /**
   * Checks now that a provider is there: a ready one is pinged (where it has a ping) and turns
   * unavailable with the reason when it does not answer; an unavailable one is connected again. Without
   * this a provider is only re-checked on use. For the provider failover.
   */
  async probeProvider(type: ProviderType): Promise<ProviderStatus> {
    const slot = this.slots.get(type);
    if (slot?.state === 'ready' && slot.provider.ping) {
      try {
        await slot.provider.ping();
      } catch (err) {
        slot.state = 'unavailable';
        slot.reason = asSwarmError(err, 'PROVIDER_UNAVAILABLE').message;
        slot.lastAttempt = Date.now();
        this.logger.warn({ provider: type, reason: slot.reason }, 'provider stopped answering');
      }
    } else if (slot && slot.state !== 'ready') {
      await this.connect(type);
      const now = this.providerStatuses().find((p) => p.type === type)!;
      if (now.state === 'ready') this.logger.info({ provider: type }, 'provider answers again');
      return now;
    }
    return this.providerStatuses().find((p) => p.type === type)!;
  }

  /** Waits for in-flight writes and releases provider resources. */
  async close(): Promise<void> {
    this.warm.close();
    await this.registry.flush();
    // Before the registry: with PostgreSQL the registry's close ends the pool the principal store writes through.
    await this.principals.close();
    await this.registry.close?.();
    await Promise.all([...this.slots.values()].map((s) => s.provider.close?.().catch(() => undefined)));
    await this.webhooks?.close();
    await this.audit.close();
    await this.lock?.release();
  }

  /** Records the newest sign of use (from the idle monitor); skipped while an operation holds the instance. */
  async recordActivity(instanceId: string, sign: { at: number; source: NonNullable<VSCodeInstance['lastActivity']>['source'] }): Promise<void> {
    if (this.locks.isLocked(instanceId)) return;
    await this.locks.run(instanceId, async () => {
      const current = this.registry.get(instanceId);
      if (!current || current.status !== 'running') return;
      if (current.lastActivity && Date.parse(current.lastActivity.at) >= sign.at) return;
      await this.registry.update(instanceId, { lastActivity: { at: new Date(sign.at).toISOString(), source: sign.source } });
    });
  }

  /** Repair by restart: a stopped, paused or hung editor is stopped (forced) and started again. */
  async restartInstance(instanceId: string, reason: string): Promise<VSCodeInstance> {
    return this.withInstance(instanceId, async (current, provider) => {
      await this.requireOnProvider(instanceId, provider);
      await provider.stopInstance(instanceId, true);
      crashPoint('recover.restart.after-stop');
      const observed = await provider.startInstance(instanceId);
      const postStart = await this.afterStart(provider, instanceId, current.config, observed);
      this.activity.touch(instanceId, 'start');
      return this.present(await this.registry.update(instanceId, (now) => ({ ...this.merge(now, observed, joinReasons(reason, postStart)), desiredState: 'running' })));
    });
  }

  /** Repair by re-creation: the container is replaced from the recorded config around the same workspace files. */
  async recreateInstance(instanceId: string, reason: string): Promise<VSCodeInstance> {
    return this.withInstance(instanceId, async (current, provider) => {
      // The intent first: a controller killed between the delete and the create finishes it on its next start (reconcile).
      await this.registry.update(instanceId, { status: 'starting', statusReason: `${RECREATING}${reason}`, desiredState: 'running' });
      await provider.deleteInstance(instanceId, { keepWorkspace: true });
      crashPoint('recover.recreate.after-delete');
      const observed = await provider.createInstance(current.config, { instanceId });
      const postStart = await this.afterStart(provider, instanceId, current.config, observed);
      this.activity.touch(instanceId, 'start');
      return this.present(await this.registry.update(instanceId, (now) => ({ ...this.merge(now, observed, joinReasons(reason, postStart)), desiredState: 'running' })));
    });
  }

  /** Records a health finding; an instance busy with an operation is left to that operation. */
  async recordHealth(instanceId: string, health: VSCodeInstance['health'], reason: string, extra: Partial<VSCodeInstance> = {}): Promise<void> {
    if (this.locks.isLocked(instanceId)) return;
    await this.locks.run(instanceId, async () => {
      const current = this.registry.get(instanceId);
      if (!current) return;
      if (current.health === health && current.healthReason === reason && Object.keys(extra).length === 0) return;
      await this.registry.update(instanceId, { health, healthReason: reason, ...extra });
    });
  }

  /** The provider behind an instance, for read-only checks by the health monitor. */
  async providerOf(instanceId: string): Promise<Provider> {
    return this.provider(this.registry.require(checkId(instanceId)).providerType);
  }

  /**
   * Something other than this controller stopped the instance (a host's own idle monitor, a host
   * draining before termination): record what the provider now reports, why, and that it should stay
   * stopped, so that the health monitor does not start it again.
   */
  async noteStopped(instanceId: string, reason: string, by: 'idle' | 'provider'): Promise<void> {
    this.registry.require(checkId(instanceId));
    await this.locks.run(instanceId, async () => {
      const current = this.registry.get(instanceId);
      if (!current || current.status === 'migrating') return;
      const observed = await (await this.provider(current.providerType)).getInstance(instanceId).catch(() => null);
      await this.registry.update(instanceId, (now) => ({
        ...(observed ? this.merge(now, observed, reason) : { ...now, status: 'stopped', statusReason: reason, endpoint: undefined }),
        desiredState: 'stopped',
        lastStop: { at: this.now().toISOString(), reason, by },
      }));
    });
  }

  /** A connected provider of this type (for the migration manager and the health monitor). */
  connectedProvider(type: ProviderType): Promise<Provider> {
    return this.provider(type);
  }

  /** Migration: from now on no other operation touches the instance. */
  async markMigrating(instanceId: string, reason: string): Promise<void> {
    await this.locks.run(instanceId, async () => {
      const current = this.registry.require(instanceId);
      if (current.status === 'deleting' || current.status === 'creating') throw new SwarmError('CONFLICT', `instance ${instanceId} is ${current.status}`);
      await this.registry.update(instanceId, { status: 'migrating', statusReason: reason });
    });
  }

  /** Migration done: the record now names the target provider and what it reports. */
  async completeMigration(instanceId: string, target: ProviderType, observed: VSCodeInstance, reason: string): Promise<void> {
    await this.locks.run(instanceId, async () => {
      const postStart = await this.afterStart(await this.provider(target), instanceId, this.registry.require(instanceId).config, observed);
      await this.registry.update(instanceId, (now) => ({ ...this.merge({ ...now, providerType: target }, observed, joinReasons(reason, postStart)), providerType: target, health: 'unknown', healthReason: undefined }));
    });
  }

  /** Migration rolled back: the record shows the source as it now is (or missing). */
  async endMigration(instanceId: string, observed: VSCodeInstance | null, reason: string): Promise<void> {
    await this.locks.run(instanceId, async () => {
      const now = this.registry.get(instanceId);
      if (!now) return;
      await this.registry.update(instanceId, observed ? this.merge(now, observed, reason) : { status: 'failed', statusReason: `${reason}; ${this.missingReason(now)}`, endpoint: undefined });
    });
  }

  /**
   * Records something the system did by itself (a health repair, an idle stop, a warm refill, a
   * migration step, a host agent's report, what reconcile found) as one audit event with the component as
   * its actor. Never throws: the action is done, and a trail that cannot be written is logged.
   */
  async recordSystemEvent(component: string, action: string, event: { subject?: string; outcome?: AuditOutcome; reason?: string; code?: string; request?: unknown } = {}): Promise<void> {
    const instance = event.subject && InstanceIdSchema.safeParse(event.subject).success ? this.registry.get(event.subject) : undefined;
    await this.audit
      .record({
        type: `dev.vscode-swarm.system.${action}`,
        action,
        actor: { type: 'system', id: component, door: 'system' },
        outcome: event.outcome ?? 'ok',
        ...(event.subject ? { subject: event.subject } : {}),
        ...(instance && !instance.warmPool ? { owner: ownerOf(instance) } : {}),
        ...(event.code ? { code: event.code } : {}),
        ...(event.reason ? { reason: event.reason.slice(0, 1_000) } : {}),
        ...(event.request !== undefined ? { request: event.request } : {}),
      })
      .then(
        () => undefined,
        (err: unknown) => this.logger.error({ err: (err as Error).message, component, action }, 'could not record an audit event'),
      );
  }

  /** The idle timeout that applies to an instance, in minutes (0: never). */
  idleTimeoutOf(instance: VSCodeInstance): number {
    return instance.config.idleTimeoutMinutes ?? this.config.idle.timeoutMinutes;
  }

  // ---- internals ----

  /**
   * The quota check, against the owner's limits (its own, else its role's; an owner with no principal
   * record gets a member's). Synchronous: it must run in the same step as the write that makes the change count.
   */
  private admit(request: Omit<AdmissionRequest, 'providerMaxInstances'>, provider: Provider): void {
    this.admission(request, provider).check(this.registry.list());
  }

  /**
   * The same check handed to the store with the write that makes the change count, so the store runs it
   * where that write is decided (in-process for the JSON files; in the transaction, under the owner's
   * lock, for PostgreSQL: see Admission).
   */
  private admission(request: Omit<AdmissionRequest, 'providerMaxInstances'>, provider: Provider): Admission {
    const principal = this.principals.getPrincipal(request.owner);
    const limits = limitsFor(principal?.role ?? 'member', principal?.quotas, this.config.quotas);
    const max = provider.getCapabilities().maxInstancesPerUser;
    const full = { ...request, ...(max !== undefined ? { providerMaxInstances: max } : {}) };
    return { owner: request.owner, check: (instances) => checkAdmission(full, limits, instances) };
  }

  /**
   * What every start of an instance runs once the provider reports it running (a start, a health restart
   * or re-create, an interrupted re-create finished by reconcile, a migration's target): the dev
   * container's postStartCommand. Not fatal: its failure is returned for the status reason.
   */
  private async afterStart(provider: Provider, instanceId: string, config: InstanceConfig, observed: VSCodeInstance): Promise<string | undefined> {
    if (observed.status !== 'running') return undefined;
    return runPostStart(provider, instanceId, config.metadata, { config: this.config.devcontainers, logger: this.logger });
  }

  /** Adds what is derived rather than stored: the URL users open. */
  private present(instance: VSCodeInstance): VSCodeInstance {
    return this.access ? { ...instance, url: this.access.urlFor(instance.id) } : instance;
  }

  private createResult(instance: VSCodeInstance, created: boolean, fromWarmPool: boolean): CreateResult {
    const access = this.access?.link(instance.id, instance.accessEpoch ?? 0);
    return { instance: this.present(instance), created, fromWarmPool, ...(access ? { access } : {}) };
  }

  /**
   * Registers, then asks the provider to create. The record is written before the provider acts, so a
   * crash mid-create leaves a trace that reconcile settles; a failed create leaves nothing behind.
   */
  private async provision(
    type: ProviderType,
    provider: Provider,
    config: InstanceConfig & { image: string },
    id: string,
    options: OperationOptions,
    warmPool?: string,
    owner?: string,
    /** Fills the new workspace (a repository) before it is recorded as running; a failure undoes the create. */
    populate?: (id: string) => Promise<void>,
  ): Promise<VSCodeInstance> {
    const at = this.now().toISOString();
    // Under the instance's lock from the first write: a reconcile (a list call) must never take a
    // `creating` record whose provider call has not started yet for one a crash left behind.
    return this.locks.run(id, async () => {
      const admit = owner ? this.admission({ owner, providerType: type, instanceId: id, newInstance: true, resources: config.resources }, provider) : undefined;
      await this.registry.register({
        id, name: config.name, providerType: type, status: 'creating', health: 'unknown', config, providerRef: {}, createdAt: at, updatedAt: at,
        desiredState: 'running',
        ...(warmPool ? { warmPool } : {}),
        ...(owner ? { owner } : {}),
      }, admit && { admit });
      crashPoint('create.after-record');
      try {
        const observed = await provider.createInstance(config, { instanceId: id, ...options });
        crashPoint('create.after-provider');
        if (populate) await populate(id);
        this.activity.touch(id, 'create');
        const instance = await this.registry.update(id, (current) => ({
          ...this.merge(current, observed),
          lastActivity: { at: this.now().toISOString(), source: 'create' },
        }));
        this.logger.info({ instanceId: id, provider: type, endpoint: instance.endpoint?.url, warmPool }, warmPool ? 'warm member ready' : 'instance created');
        return instance;
      } catch (err) {
        await this.settleFailedCreate(provider, id, err);
        throw asSwarmError(err, 'PROVIDER_ERROR');
      }
    });
  }

  /**
   * A create from a repository: cloned on the controller first (a bad URL, ref or credential fails before
   * anything exists), then streamed into the new workspace and verified before the instance is recorded as
   * running; a failure there deletes what was made. Never served from the warm buffer: a claimed member
   * whose import failed could be neither handed back clean nor kept.
   */
  private async createFromRepository(
    type: ProviderType,
    provider: Provider,
    config: InstanceConfig & { image: string },
    repository: RepositoryRequest,
    options: OperationOptions,
    owner: string,
  ): Promise<CreateResult> {
    if (!provider.getCapabilities().workspaceTransfer || !provider.importWorkspace || !provider.exportWorkspace) {
      throw invalidInput('repository', `a provider that can receive workspace files (${type} has no workspace transfer)`);
    }
    if (Object.keys(config.metadata ?? {}).length > 62) throw invalidInput('metadata', 'at most 62 entries on a create from a repository (2 more record the repository)');
    const limits = this.config.repositories;
    const report = options.onProgress;
    const within = (from: number, to: number) => report && ((e: ProgressEvent) => report({ fraction: from + e.fraction * (to - from), message: e.message }));
    const workDir = path.join(this.config.stateDir, 'clones');
    const id = this.newId(config.name);
    // The owner's quota first, so that a create that cannot count is refused before anything is fetched;
    // provision checks it again, atomically with the record that makes it count.
    this.admit({ owner, providerType: type, instanceId: id, newInstance: true, resources: config.resources }, provider);
    return withClonedRepository(repository, { config: limits, workDir, owner, logger: this.logger, ...(report ? { onProgress: report } : {}), ...(options.signal ? { signal: options.signal } : {}) }, async (clone) => {
      // Its dev container is read and checked before anything is made: a refusal leaves nothing behind.
      const dev = await readDevContainer(clone.dir);
      const devConfig = dev ? applyDevContainer(config, dev, { providerType: type, capabilities: provider.getCapabilities(), defaultImage: this.defaultImage(type) }) : config;
      const extensions = dev ? await resolveExtensions(dev.extensions, this.config.devcontainers) : [];
      const withRepository = { ...devConfig, metadata: { ...devConfig.metadata, ...repositoryMetadata(clone) } };
      const providerProgress = within(0.15, 0.8);
      let postStartFailure: string | undefined;
      const populate = async (id: string): Promise<void> => {
        await importClone(provider, id, clone, { maxBytes: limits.maxBytes * 2, deadline: Date.now() + limits.timeoutMs, logger: this.logger, ...(report ? { onProgress: report } : {}) });
        if (dev) postStartFailure = await setUpDevContainer(provider, id, dev, extensions, { config: this.config.devcontainers, logger: this.logger, ...(report ? { onProgress: report } : {}) });
      };
      let instance = await this.provision(type, provider, withRepository, id, { ...options, ...(providerProgress ? { onProgress: providerProgress } : {}) }, undefined, owner, populate);
      if (postStartFailure) instance = await this.locks.run(instance.id, () => this.registry.update(instance.id, { statusReason: postStartFailure }));
      return this.createResult(instance, true, false);
    });
  }

  /**
   * A failed create leaves nothing behind. The provider cleans up what it knows it made, but when the
   * connection broke it may not know (a volume or container made, the answer lost) and its own clean-up
   * may fail the same way: so the record becomes a delete of everything of this fresh id, finished here
   * or, when that fails too, by reconcile — the same path as any interrupted delete.
   */
  private async settleFailedCreate(provider: Provider, id: string, cause: unknown): Promise<void> {
    try {
      const reason = `create failed (${(cause as Error)?.message ?? String(cause)}); what it made is being removed`;
      const record = await this.registry.update(id, { status: 'deleting', statusReason: reason, deleteRequest: { at: this.now().toISOString(), keepWorkspace: false } });
      await this.finishDelete(provider, record);
    } catch (err) {
      this.logger.warn({ instanceId: id, err: (err as Error).message }, 'could not clean up after a failed create; left to reconcile');
    }
  }

  private async createWarmMember(spec: WarmSpec): Promise<void> {
    const provider = await this.provider(spec.provider);
    const id = `warm-${this.randomId()}${this.randomId()}`;
    const config = { name: id, image: spec.image, resources: spec.resources, metadata: { [WARM_METADATA_KEY]: spec.key } };
    try {
      await this.provision(spec.provider, provider, config, id, {}, spec.key);
      await this.recordSystemEvent('warm', 'warm.refill', { subject: id, reason: `warm buffer ${spec.key}` });
    } catch (err) {
      const error = asSwarmError(err);
      await this.recordSystemEvent('warm', 'warm.refill', { subject: id, outcome: 'failed', code: error.code, reason: error.message });
      throw err;
    }
  }

  /**
   * Hands a ready warm member to this request: checked alive with its provider, then renamed in the
   * registry. The container keeps its creation labels; the registry holds the new name and metadata.
   */
  private async claimWarm(type: ProviderType, config: InstanceConfig & { image: string }, provider: Provider, owner: string): Promise<VSCodeInstance | undefined> {
    for (let member = this.warm.take(type, config.image, config.resources); member; member = this.warm.take(type, config.image, config.resources)) {
      const id = member.id;
      try {
        const claimed = await this.locks.run(id, async () => {
          const live = await provider.getInstance(id);
          if (live?.status !== 'running') return undefined;
          crashPoint('warm.claim.after-check');
          const at = this.now();
          const admit = this.admission({ owner, providerType: type, instanceId: id, newInstance: true, resources: live.config.resources }, provider);
          const updated = await this.registry.update(
            id,
            // Decided on the row as the store holds it (locked, with PostgreSQL): a member another controller
            // claimed between our take and this write is no longer in a buffer, and is left to its new owner.
            (now) => ({
              ...this.merge(claimable(now, member.warmPool), live),
              owner,
              name: config.name,
              config: { ...now.config, name: config.name, metadata: config.metadata, idleTimeoutMinutes: config.idleTimeoutMinutes },
              warmPool: undefined,
              lastActivity: { at: at.toISOString(), source: 'create' },
            }),
            { admit },
          );
          this.activity.touch(id, 'create', at.getTime());
          return updated;
        });
        if (claimed) {
          this.logger.info({ instanceId: id, name: config.name }, 'served from the warm buffer');
          this.warm.settle(id);
          return claimed;
        }
        this.warm.settle(id); // dead member: the refill drops and replaces it
        await this.refresh(id).catch(() => undefined);
      } catch (err) {
        if (err === CLAIMED_ELSEWHERE) {
          // Stays taken here (our cache may not have heard of the claim yet); the pool forgets it once it has.
          this.logger.info({ instanceId: id }, 'warm member claimed by another controller first; trying the next');
          continue;
        }
        this.warm.release(id);
        if (isSwarmError(err, 'QUOTA_EXCEEDED')) throw err;
        this.logger.warn({ instanceId: id, err: (err as Error).message }, 'warm claim failed; creating instead');
        return undefined;
      }
    }
    return undefined;
  }

  private async withInstance<T>(
    instanceId: string,
    task: (current: VSCodeInstance, provider: Provider) => Promise<T>,
    options: { whileDeleting?: boolean } = {},
  ): Promise<T> {
    this.registry.require(checkId(instanceId));
    return this.locks.run(instanceId, async () => {
      const current = this.registry.require(instanceId); // it may have gone while we waited
      if (current.status === 'migrating') {
        throw new SwarmError('CONFLICT', `instance ${instanceId} is being migrated (${current.statusReason ?? ''}); cancel the migration or wait for it`);
      }
      // A delete that did not finish is finished by another delete or by reconcile, never undone by a start.
      if (current.status === 'deleting' && !options.whileDeleting) {
        throw new SwarmError('CONFLICT', `instance ${instanceId} is being deleted${current.statusReason ? ` (${current.statusReason})` : ''}; delete_swarm_instance finishes it`);
      }
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
    // A record being deleted keeps saying so until the delete is finished (by a delete or by reconcile):
    // its container may be gone already, which is not "removed outside vscode-swarm".
    if (!slot || slot.state !== 'ready' || known.status === 'migrating' || known.status === 'deleting') return known;
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
   * The registry owns the request (name, metadata); the provider owns what exists (status, endpoint,
   * native ids, the resources actually applied, the image and the env actually running).
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
      // Env the provider reports is what the instance runs with (a re-create interrupted after the provider
      // acted applied the new env before the record heard of it); a provider that reports none leaves the record's.
      config: { ...known.config, image: observed.config.image, resources: observed.config.resources, ...(observed.config.env ? { env: observed.config.env } : {}) },
    };
  }

  /**
   * With a shared store: records in a transitional status whose writer has had no connection to the
   * database for ORPHAN_CONFIRM_MS (seen by an earlier pass too): a controller killed in the middle of an
   * operation. Settled at once instead of after the grace period. A store that cannot tell gives none.
   */
  private async orphanedWrites(): Promise<Set<string>> {
    if (!this.sharedStore || !this.registry.orphanedWrites) return new Set();
    const now = this.now().getTime();
    const gone = await this.registry.orphanedWrites([...TRANSITIONAL]).catch((err: unknown) => {
      this.logger.warn({ err: (err as Error).message }, 'could not check for operations of controllers that are gone');
      return new Set<string>();
    });
    for (const id of this.orphanSeen.keys()) if (!gone.has(id)) this.orphanSeen.delete(id);
    for (const id of gone) if (!this.orphanSeen.has(id)) this.orphanSeen.set(id, now);
    return new Set([...gone].filter((id) => now - this.orphanSeen.get(id)! >= ORPHAN_CONFIRM_MS));
  }

  /**
   * With a shared store: true for a record in a transitional status written so recently that another
   * controller may still be working on it (its create waits for the editor, its delete for the provider).
   */
  private inFlightElsewhere(record: Readonly<VSCodeInstance>): boolean {
    if (!this.sharedStore || !TRANSITIONAL.has(record.status)) return false;
    const written = Date.parse(record.updatedAt);
    return !Number.isFinite(written) || this.now().getTime() - written < this.inFlightGraceMs();
  }

  /**
   * With a shared store: true for a record written after (or just before, allowing for clock skew between
   * machines) the provider was listed, by another controller: the listing cannot speak for it.
   */
  private writtenSince(record: Readonly<VSCodeInstance>, listedAt: number): boolean {
    if (!this.sharedStore) return false;
    const written = Date.parse(record.updatedAt);
    return !Number.isFinite(written) || written > listedAt - CLOCK_SKEW_MS;
  }

  /** The longest an operation of another controller may take between two writes of its record, plus a margin. */
  private inFlightGraceMs(): number {
    const { docker, fly } = this.config.providers;
    const aws = this.config.providers['aws-asg'];
    const longest = Math.max(
      docker.enabled ? docker.readinessTimeoutMs : 0,
      fly.enabled ? fly.readinessTimeoutMs : 0,
      aws.enabled ? aws.hostWaitTimeoutMs + aws.agentCreateTimeoutMs : 0,
    );
    return longest + IN_FLIGHT_MARGIN_MS;
  }

  private differs(known: VSCodeInstance, observed: VSCodeInstance): boolean {
    return (
      known.status !== observed.status ||
      known.endpoint?.url !== observed.endpoint?.url ||
      known.config.image !== observed.config.image ||
      known.config.resources.cpu !== observed.config.resources.cpu ||
      known.config.resources.memoryMb !== observed.config.resources.memoryMb ||
      (observed.config.env !== undefined && !sameJson(observed.config.env, known.config.env ?? {})) ||
      !sameJson(known.providerRef, observed.providerRef)
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
    if (type === 'fly') return this.config.providers.fly.image;
    if (type === 'aws-asg') return this.config.providers['aws-asg'].image;
    throw new SwarmError('PROVIDER_UNKNOWN', `providerType: no default image is configured for ${type}`, { field: 'providerType' });
  }

  /**
   * Readable and unique: the name, lower-cased and shortened, plus 8 random hex digits. Runs of separators
   * collapse to one "-", so an id never holds "--", which names a forwarded port's host (gateway/ports.ts).
   */
  private newId(name: string): string {
    const slug = name.toLowerCase().replace(/[^a-z0-9]+/g, '-').replace(/^-+|-+$/g, '').slice(0, 40) || 'ws';
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

/** Status reasons joined with "; ", the absent ones left out. */
function joinReasons(...reasons: (string | undefined)[]): string | undefined {
  return reasons.filter(Boolean).join('; ') || undefined;
}

/** Equal as stored JSON: key order and undefined properties aside (PostgreSQL's jsonb keeps neither). */
function sameJson(a: unknown, b: unknown): boolean {
  return isDeepStrictEqual(JSON.parse(JSON.stringify(a ?? null)), JSON.parse(JSON.stringify(b ?? null)));
}
