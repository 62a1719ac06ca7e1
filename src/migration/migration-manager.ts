/**
 * Moves an instance, workspace files included, from one provider to another, step by step:
 *
 *   prepare → validate-source → validate-target → export-source-config → create-target → start-target →
 *   verify-target → stop-source → cleanup-source → complete
 *
 * Strategies: `stop-and-recreate` stops the source first, so the files copied are final (downtime: the
 * whole copy); `create-then-stop` copies while the source runs, then stops it and copies again (downtime:
 * the final copy). The instance keeps its id (and so its URL) on the target.
 *
 * Each step's outcome is written to `<stateDir>/migrations/<id>.json` before the next starts. Until the
 * target is verified (every file of the source present with the same SHA-256, editor answering), any
 * failure, cancellation, timeout or controller restart rolls back: the target is removed and the source
 * is left as it was. After that point a restart resumes forward.
 *
 * The records are kept in a DocumentStore: the files above by default, or PostgreSQL shared by every
 * controller. Shared, `list`/`get` show every controller's migrations, and `recover` settles only those
 * whose controller is gone (no session on the database; see PgDocumentStore.orphaned): a live
 * controller's migration is its own to finish. The leader calls it then, at once and periodically.
 */
import { randomBytes } from 'node:crypto';
import { promises as fs } from 'node:fs';
import path from 'node:path';
import { z } from 'zod';
import { ProviderTypeSchema, type InstanceConfig, type Provider, type ProviderType, type VSCodeInstance } from '../../providers/provider.js';
import type { SwarmController } from '../controller/swarm-controller.js';
import { crashPoint, type CrashPoint } from '../crash/crash-points.js';
import { SwarmError, asSwarmError, invalidInput } from '../errors.js';
import { silentLogger, type Logger } from '../logger.js';
import { isTempFile } from '../state/atomic-file.js';
import { FileDocumentStore, MIGRATION_ID, checkMigrationId, type DocumentStore } from '../store/documents.js';
import { editorStatus } from '../timing/editor-probe.js';
import { manifestDifferences, manifestOf, openSpooled, spoolArchive, totalBytes, type Manifest, type SpooledArchive, type TransferLimits } from './workspace-archive.js';

export const MIGRATION_STEPS = [
  'prepare', 'validate-source', 'validate-target', 'export-source-config', 'create-target',
  'start-target', 'verify-target', 'stop-source', 'cleanup-source', 'complete',
] as const;
export type MigrationStep = (typeof MIGRATION_STEPS)[number];
export const MIGRATION_STATUSES = ['pending', 'in-progress', 'completed', 'failed', 'cancelled', 'timed-out'] as const;
export const MIGRATION_STRATEGIES = ['stop-and-recreate', 'create-then-stop'] as const;
export type MigrationStrategy = (typeof MIGRATION_STRATEGIES)[number];

const StepRecordSchema = z.object({
  name: z.enum(MIGRATION_STEPS),
  status: z.enum(['pending', 'in-progress', 'completed', 'failed', 'skipped']),
  startedAt: z.string().optional(),
  endedAt: z.string().optional(),
  detail: z.string().optional(),
});

export const MigrationSchema = z.object({
  id: z.string().regex(MIGRATION_ID),
  instanceId: z.string(),
  instanceName: z.string(),
  source: ProviderTypeSchema,
  target: ProviderTypeSchema,
  strategy: z.enum(MIGRATION_STRATEGIES),
  status: z.enum(MIGRATION_STATUSES),
  reason: z.string().optional(),
  createdAt: z.string(),
  updatedAt: z.string(),
  deadline: z.string(),
  sourceWasRunning: z.boolean(),
  steps: z.array(StepRecordSchema),
  files: z.number().int().optional(),
  bytes: z.number().int().optional(),
  downtimeStartedAt: z.string().optional(),
  downtimeMs: z.number().optional(),
});
export type Migration = z.infer<typeof MigrationSchema>;

export interface MigrationPlan {
  instanceId: string;
  instanceName: string;
  source: ProviderType;
  target: ProviderType;
  strategy: MigrationStrategy;
  resources: VSCodeInstance['config']['resources'];
  image: string;
  steps: { name: MigrationStep; what: string }[];
  /** A rough figure, from the workspace size and the provider's typical start time. */
  expectedDowntimeMs: number;
  workspaceBytes: number;
  warnings: string[];
}

export interface MigrationOptions {
  controller: SwarmController;
  stateDir: string;
  /** Default time a migration may take before it is stopped and rolled back. */
  timeoutMs?: number;
  /** The largest workspace a migration carries (default 64 GiB); a target's own smaller limit wins. */
  maxWorkspaceBytes?: number;
  /** Where the migration records are kept (default: the files under `<stateDir>/migrations`). */
  documents?: DocumentStore;
  /**
   * With a shared store: how long a migration's controller must have been seen gone (by an earlier
   * recover) before it is settled (default 10 s): longer than a live controller takes to reconnect after
   * a blip of the database, which cuts every session.
   */
  orphanConfirmMs?: number;
  logger?: Logger;
  now?: () => number;
  /** Test seam: runs before each step; a throw stops the run as a crash would (no rollback). */
  beforeStep?: (migration: Migration, step: MigrationStep) => Promise<void> | void;
}

/** Thrown by a `beforeStep` hook to simulate the controller dying at that point. */
export class SimulatedCrash extends Error {}

const TERMINAL = new Set(['completed', 'failed', 'cancelled', 'timed-out']);
/** See MigrationOptions.orphanConfirmMs; the same wait as the controller's for instance records. */
const ORPHAN_CONFIRM_MS = 10_000;
const VERIFIED_AT = MIGRATION_STEPS.indexOf('verify-target');
/** Throughput assumed for the downtime estimate; deliberately modest. */
const ASSUMED_BYTES_PER_MS = 20_000;
const ASSUMED_START_MS = 1_500;
const DEFAULT_MAX_WORKSPACE_BYTES = 64 * 2 ** 30;
/** Spooled archives beside the migration records: `<id>.<part>.tar`. */
const SPOOL_SUFFIX = '.tar';

/** A migration record as stored, with the process that last wrote it (shared stores only). */
interface StoredMigration {
  migration: Migration;
  writer?: string | undefined;
}

export class MigrationManager {
  /** Local to this process whatever the store: the spooled archives of its runs. */
  private readonly dir: string;
  private readonly documents: DocumentStore;
  private readonly logger: Logger;
  private readonly now: () => number;
  private readonly active = new Map<string, { migration: Migration; cancel: boolean; run: Promise<Migration> }>();
  /** With a shared store: when recover first saw each orphaned migration's controller gone. */
  private readonly orphanSeen = new Map<string, number>();

  constructor(private readonly options: MigrationOptions) {
    this.dir = path.join(options.stateDir, 'migrations');
    this.documents = options.documents ?? new FileDocumentStore(options.stateDir, options.logger);
    this.logger = (options.logger ?? silentLogger()).child({ component: 'migration' });
    this.now = options.now ?? Date.now;
  }

  /** What a migration would do, without doing it. */
  async plan(instanceId: string, target: ProviderType, strategy: MigrationStrategy = 'stop-and-recreate'): Promise<MigrationPlan> {
    const { controller } = this.options;
    const instance = await controller.getInstance(instanceId);
    const { source, targetProvider, sourceProvider } = await this.validate(instance, target);
    const warnings: string[] = [];
    const limit = targetProvider.getCapabilities().maxWorkspaceMb;
    const workspaceBytes = totalBytes(
      await manifestOf(await sourceProvider.exportWorkspace!(instanceId), { maxBytes: this.maxBytesFor(targetProvider), what: `the workspace of ${instanceId}` }).catch((err: unknown) => {
        if (err instanceof SwarmError && err.code === 'CONFLICT' && limit !== undefined) {
          throw invalidInput('target', `a provider that can hold the workspace of ${instanceId} (${target} holds at most ${limit} MiB)`);
        }
        throw err;
      }),
    );
    if (instance.status !== 'running') warnings.push(`the instance is ${instance.status}; it will be ${instance.status === 'stopped' ? 'left stopped on the target' : 'moved as it is'}`);
    const copyMs = workspaceBytes / ASSUMED_BYTES_PER_MS;
    const expectedDowntimeMs = Math.round(strategy === 'stop-and-recreate' ? 2 * copyMs + ASSUMED_START_MS : 2 * copyMs + 500);
    const what: Record<MigrationStep, string> = {
      prepare: `mark ${instanceId} as migrating; no other operation may touch it meanwhile`,
      'validate-source': `check it exists on ${source} and can export its files`,
      'validate-target': `check ${target} is reachable, can take ${instance.config.resources.cpu} CPU / ${instance.config.resources.memoryMb} MiB and import files`,
      'export-source-config': strategy === 'stop-and-recreate' ? `stop it on ${source} (downtime starts) and export its config and files` : `export its config and files while it keeps running`,
      'create-target': `create ${instanceId} on ${target} with image ${instance.config.image} and import the files`,
      'start-target': `make sure it runs on ${target}`,
      'verify-target': `check its editor answers on ${target} and every file arrived with the same SHA-256`,
      'stop-source': strategy === 'stop-and-recreate' ? `(already stopped)` : `stop it on ${source} (downtime starts), copy what changed meanwhile, verify again`,
      'cleanup-source': `delete it and its files on ${source}`,
      complete: `switch the registry to ${target}; the URL stays the same`,
    };
    return {
      instanceId, instanceName: instance.name, source, target, strategy,
      resources: instance.config.resources, image: instance.config.image,
      steps: MIGRATION_STEPS.map((name) => ({ name, what: what[name] })),
      expectedDowntimeMs, workspaceBytes, warnings,
    };
  }

  /** Starts a migration and returns it as soon as it is recorded; `wait` resolves when it ends. */
  async start(instanceId: string, target: ProviderType, options: { strategy?: MigrationStrategy; timeoutMs?: number } = {}): Promise<{ migration: Migration; wait: Promise<Migration> }> {
    const { controller } = this.options;
    const strategy = options.strategy ?? 'stop-and-recreate';
    if (!MIGRATION_STRATEGIES.includes(strategy)) throw invalidInput('strategy', MIGRATION_STRATEGIES.join(' or '), strategy);
    const timeoutMs = options.timeoutMs ?? this.options.timeoutMs ?? 600_000;
    if (!(timeoutMs >= 1_000 && timeoutMs <= 86_400_000)) throw invalidInput('timeoutMs', 'from 1000 to 86400000', timeoutMs);
    const instance = await controller.getInstance(instanceId);
    await this.validate(instance, target);
    if ([...this.active.values()].some((a) => a.migration.instanceId === instanceId)) {
      throw new SwarmError('CONFLICT', `instance ${instanceId} is already being migrated`);
    }
    const at = new Date(this.now()).toISOString();
    const migration: Migration = {
      id: `mig-${randomBytes(6).toString('hex')}`,
      instanceId, instanceName: instance.name, source: instance.providerType, target, strategy,
      status: 'pending', createdAt: at, updatedAt: at,
      deadline: new Date(this.now() + timeoutMs).toISOString(),
      sourceWasRunning: instance.status === 'running',
      steps: MIGRATION_STEPS.map((name) => ({ name, status: 'pending' as const })),
    };
    await this.save(migration);
    // Marked before returning, so that no operation slips in between this call and the first step.
    await controller.markMigrating(instanceId, `migrating to ${target} (${migration.id})`);
    const entry = { migration, cancel: false, run: Promise.resolve(migration) };
    entry.run = this.run(entry, 0).finally(() => this.active.delete(migration.id));
    this.active.set(migration.id, entry);
    return { migration: structuredClone(migration), wait: entry.run };
  }

  /** Asks a running migration to stop and roll back; a finished one is a conflict. */
  async cancel(migrationId: string): Promise<Migration> {
    const entry = this.active.get(migrationId);
    if (!entry) {
      const stored = await this.get(migrationId);
      if (this.documents.shared && !TERMINAL.has(stored.status)) {
        throw new SwarmError('CONFLICT', `migration ${migrationId} is ${stored.status} and running on another controller; cancel it there`);
      }
      throw new SwarmError('CONFLICT', `migration ${migrationId} is ${stored.status}; only a pending or in-progress migration can be cancelled`);
    }
    entry.cancel = true;
    return entry.run;
  }

  async get(migrationId: string): Promise<Migration> {
    checkMigrationId(migrationId);
    const active = this.active.get(migrationId);
    if (active) return structuredClone(active.migration);
    const stored = await this.documents.get('migrations', migrationId);
    if (!stored) throw new SwarmError('NOT_FOUND', `migration ${migrationId} does not exist`, { field: 'migrationId' });
    return MigrationSchema.parse(stored.doc);
  }

  async list(filter: { instanceId?: string; status?: Migration['status'] } = {}): Promise<Migration[]> {
    const all = await this.loadAll();
    return all
      .filter((m) => (!filter.instanceId || m.instanceId === filter.instanceId) && (!filter.status || m.status === filter.status))
      .sort((a, b) => a.createdAt.localeCompare(b.createdAt));
  }

  /** True when other controllers share the records (see recover). */
  get sharedStore(): boolean {
    return this.documents.shared;
  }

  inProgress(): Migration[] {
    return [...this.active.values()].map((a) => structuredClone(a.migration));
  }

  /**
   * Settles migrations a previous controller left unfinished: forward when the target was already
   * verified, else back to the source. With the files: every unfinished one; call once after the
   * controller has initialised. With a shared store: only those whose controller is gone, each claimed
   * first so that one controller settles it; the leader calls it on taking the lead and periodically after.
   */
  async recover(): Promise<Migration[]> {
    await this.removeLeftovers();
    const orphans = this.documents.shared ? await this.confirmedOrphans() : undefined;
    const settled: Migration[] = [];
    for (const { migration, writer } of await this.loadStored()) {
      if (TERMINAL.has(migration.status) || this.active.has(migration.id)) continue;
      // Another controller's migration: its own to finish while that controller is alive.
      if (orphans && !orphans.has(migration.id)) continue;
      if (orphans && !(await this.documents.claim('migrations', migration.id, writer))) continue;
      const reached = lastCompleted(migration);
      const entry = { migration, cancel: false, run: Promise.resolve(migration) };
      this.active.set(migration.id, entry);
      try {
        if (reached >= VERIFIED_AT) {
          this.logger.info({ migrationId: migration.id, from: MIGRATION_STEPS[reached + 1] }, 'resuming a migration after a restart');
          entry.run = this.run(entry, reached + 1);
        } else {
          entry.run = this.rollback(migration, 'failed', `the controller stopped during ${MIGRATION_STEPS[reached + 1] ?? 'prepare'}; rolled back to the source`);
        }
        settled.push(await entry.run);
      } finally {
        this.active.delete(migration.id);
      }
    }
    return settled;
  }

  /** Orphaned migrations first seen at least orphanConfirmMs ago (see MigrationOptions.orphanConfirmMs). */
  private async confirmedOrphans(): Promise<Set<string>> {
    const now = this.now();
    const gone = await this.documents.orphaned('migrations');
    for (const id of this.orphanSeen.keys()) if (!gone.has(id)) this.orphanSeen.delete(id);
    for (const id of gone) if (!this.orphanSeen.has(id)) this.orphanSeen.set(id, now);
    const confirmMs = this.options.orphanConfirmMs ?? ORPHAN_CONFIRM_MS;
    return new Set([...gone].filter((id) => now - this.orphanSeen.get(id)! >= confirmMs));
  }

  // ---- the run ----

  private async run(entry: { migration: Migration; cancel: boolean }, from: number): Promise<Migration> {
    try {
      return await this.runSteps(entry, from);
    } finally {
      await this.removeSpools(entry.migration.id).catch((err: unknown) => this.logger.warn({ migrationId: entry.migration.id, err: (err as Error).message }, 'could not remove a spooled archive'));
    }
  }

  private async runSteps(entry: { migration: Migration; cancel: boolean }, from: number): Promise<Migration> {
    const { migration } = entry;
    const { controller } = this.options;
    // The workspace travels through a file beside the migration record, never whole in memory: copied
    // once from the source (its manifest computed on the way), then streamed into the target.
    let spooled: SpooledArchive | undefined;
    let manifest: Manifest | undefined;
    const source = async (): Promise<Provider> => controller.connectedProvider(migration.source);
    const target = async (): Promise<Provider> => controller.connectedProvider(migration.target);
    const limits = async (): Promise<TransferLimits> => this.limitsFor(migration, await target(), `the workspace of ${migration.instanceId}`);
    const spool = async (part: string): Promise<SpooledArchive> =>
      spoolArchive(await (await source()).exportWorkspace!(migration.instanceId), this.spoolFile(migration.id, part), await limits());

    const steps: Record<MigrationStep, () => Promise<string | undefined>> = {
      prepare: async () => {
        await controller.markMigrating(migration.instanceId, `migrating to ${migration.target} (${migration.id})`);
        return undefined;
      },
      'validate-source': async () => {
        const p = await source();
        const observed = await p.getInstance(migration.instanceId);
        if (!observed) throw new SwarmError('CONFLICT', `the source instance disappeared from ${migration.source}`);
        return `found on ${migration.source} (${observed.status})`;
      },
      'validate-target': async () => {
        await this.validate(controller.registry.require(migration.instanceId), migration.target, true);
        const leftover = await (await target()).getInstance(migration.instanceId);
        if (leftover) await (await target()).deleteInstance(migration.instanceId);
        return leftover ? 'removed a leftover target from an earlier attempt' : `${migration.target} ready`;
      },
      'export-source-config': async () => {
        const p = await source();
        if (migration.strategy === 'stop-and-recreate' && migration.sourceWasRunning) {
          migration.downtimeStartedAt = new Date(this.now()).toISOString();
          await p.stopInstance(migration.instanceId);
        }
        // The target's size limit is enforced during the copy: an oversized workspace stops it at once.
        spooled = await spool('export');
        manifest = spooled.manifest;
        migration.files = Object.keys(manifest).length;
        migration.bytes = totalBytes(manifest);
        return `${migration.files} files, ${migration.bytes} bytes`;
      },
      'create-target': async () => {
        const record = controller.registry.require(migration.instanceId);
        const config: InstanceConfig & { image: string } = { ...record.config };
        const p = await target();
        await p.createInstance(config, { instanceId: migration.instanceId });
        spooled ??= await spool('export');
        manifest ??= spooled.manifest;
        await p.importWorkspace!(migration.instanceId, openSpooled(spooled));
        return `created on ${migration.target}, files imported`;
      },
      'start-target': async () => {
        const observed = await (await target()).startInstance(migration.instanceId);
        return `${observed.status} at ${observed.endpoint?.url ?? '(no endpoint)'}`;
      },
      'verify-target': async () =>
        this.verify(migration, await target(), manifest ?? (await manifestOf(await (await source()).exportWorkspace!(migration.instanceId), await limits()))),
      'stop-source': async () => {
        const p = await source();
        const observed = await p.getInstance(migration.instanceId);
        if (!observed) return 'already gone';
        if (observed.status === 'running') {
          migration.downtimeStartedAt ??= new Date(this.now()).toISOString();
          await p.stopInstance(migration.instanceId);
        }
        if (migration.strategy !== 'create-then-stop') return 'stopped';
        // What changed while both ran: copy the final state and verify again.
        const final = await spool('final');
        await (await target()).importWorkspace!(migration.instanceId, openSpooled(final));
        return `stopped; final copy: ${await this.verify(migration, await target(), final.manifest)}`;
      },
      'cleanup-source': async () => {
        await (await source()).deleteInstance(migration.instanceId);
        return `deleted on ${migration.source}`;
      },
      complete: async () => {
        const observed = await (await target()).getInstance(migration.instanceId);
        if (!observed) throw new SwarmError('PROVIDER_ERROR', `the instance vanished from ${migration.target} after it was verified`);
        if (!migration.sourceWasRunning && observed.status === 'running') await (await target()).stopInstance(migration.instanceId);
        const final = (await (await target()).getInstance(migration.instanceId)) ?? observed;
        await controller.completeMigration(migration.instanceId, migration.target, final, `migrated from ${migration.source} (${migration.id})`);
        if (migration.downtimeStartedAt) migration.downtimeMs = this.now() - Date.parse(migration.downtimeStartedAt);
        return `now on ${migration.target}`;
      },
    };

    migration.status = 'in-progress';
    await this.save(migration);
    for (let i = from; i < MIGRATION_STEPS.length; i++) {
      const name = MIGRATION_STEPS[i]!;
      const step = migration.steps[i]!;
      const beforeVerified = i <= VERIFIED_AT;
      if (entry.cancel && beforeVerified) return this.rollback(migration, 'cancelled', `cancelled before ${name}`);
      if (this.now() > Date.parse(migration.deadline) && beforeVerified) return this.rollback(migration, 'timed-out', `did not finish before ${migration.deadline} (at ${name})`);
      try {
        await this.options.beforeStep?.(migration, name);
      } catch (err) {
        if (err instanceof SimulatedCrash) return migration; // a crash: nothing more is written, as if the process died here
        throw err;
      }
      crashPoint(`migration.before.${name}` as CrashPoint);
      step.status = 'in-progress';
      step.startedAt = new Date(this.now()).toISOString();
      await this.save(migration);
      try {
        const detail = await this.withDeadline(migration, steps[name](), beforeVerified);
        step.status = 'completed';
        if (detail) step.detail = detail;
        await this.options.controller.recordSystemEvent('migration', `migration.${name}`, { subject: migration.instanceId, ...(detail ? { reason: detail } : {}), request: { migrationId: migration.id, source: migration.source, target: migration.target } });
      } catch (err) {
        const error = asSwarmError(err);
        const message = error.message;
        step.status = 'failed';
        step.detail = message;
        step.endedAt = new Date(this.now()).toISOString();
        this.logger.warn({ migrationId: migration.id, step: name, err: message }, 'migration step failed');
        await this.options.controller.recordSystemEvent('migration', `migration.${name}`, { subject: migration.instanceId, outcome: 'failed', code: error.code, reason: message, request: { migrationId: migration.id, source: migration.source, target: migration.target } });
        if (beforeVerified || name === 'stop-source') return this.rollback(migration, isTimeout(err) ? 'timed-out' : 'failed', `${name} failed: ${message}`);
        // Past verification the target holds everything: keep going forward on the next start-up.
        migration.reason = `${name} failed: ${message}; will resume on the next start-up`;
        await this.save(migration);
        throw err;
      }
      crashPoint(`migration.after.${name}` as CrashPoint);
      step.endedAt = new Date(this.now()).toISOString();
      await this.save(migration);
    }
    migration.status = 'completed';
    migration.reason = `moved to ${migration.target} with ${migration.files ?? 0} files verified`;
    await this.save(migration);
    this.logger.info({ migrationId: migration.id, downtimeMs: migration.downtimeMs }, 'migration completed');
    return migration;
  }

  /** Back to the source as it was: the target goes, the source runs again if it ran before. */
  private async rollback(migration: Migration, status: 'failed' | 'cancelled' | 'timed-out', reason: string): Promise<Migration> {
    const { controller } = this.options;
    const problems: string[] = [];
    try {
      await (await controller.connectedProvider(migration.target)).deleteInstance(migration.instanceId);
    } catch (err) {
      problems.push(`could not remove the target: ${asSwarmError(err).message}`);
    }
    let observed: VSCodeInstance | null = null;
    try {
      const source = await controller.connectedProvider(migration.source);
      observed = await source.getInstance(migration.instanceId);
      if (observed && migration.sourceWasRunning && observed.status !== 'running') observed = await source.startInstance(migration.instanceId);
    } catch (err) {
      problems.push(`could not restore the source: ${asSwarmError(err).message}`);
    }
    migration.status = status;
    migration.reason = `${reason}; ${problems.length ? problems.join('; ') : 'the source is as it was'}`;
    await controller.endMigration(migration.instanceId, observed, `migration ${migration.id} ${status}: ${migration.reason}`);
    await this.save(migration);
    this.logger.warn({ migrationId: migration.id, status, reason: migration.reason }, 'migration rolled back');
    return migration;
  }

  private async verify(migration: Migration, target: Provider, expected: Manifest): Promise<string> {
    const observed = await target.getInstance(migration.instanceId);
    if (!observed || observed.status !== 'running' || !observed.endpoint) throw new SwarmError('PROVIDER_ERROR', `the target is ${observed?.status ?? 'missing'}`);
    if ((await editorStatus(observed, target, '/healthz', 5_000)) !== 200) throw new SwarmError('PROVIDER_ERROR', 'the editor on the target does not answer /healthz');
    const differences = manifestDifferences(
      expected,
      await manifestOf(await target.exportWorkspace!(migration.instanceId), this.limitsFor(migration, target, `the workspace of ${migration.instanceId} on ${migration.target}`)),
    );
    if (differences.length) throw new SwarmError('PROVIDER_ERROR', `files differ on the target: ${differences.slice(0, 5).join('; ')}${differences.length > 5 ? ` and ${differences.length - 5} more` : ''}`);
    return `editor answers; ${Object.keys(expected).length} files match by SHA-256`;
  }

  private async validate(instance: Readonly<VSCodeInstance>, target: ProviderType, resuming = false): Promise<{ source: ProviderType; sourceProvider: Provider; targetProvider: Provider }> {
    const { controller } = this.options;
    if (!ProviderTypeSchema.safeParse(target).success) throw invalidInput('target', 'a provider type (docker, aws-asg, fly)', target);
    if (instance.providerType === target) throw invalidInput('target', `a provider other than the one it is on (${target})`, target);
    if (!resuming && (instance.status === 'migrating' || instance.status === 'deleting' || instance.status === 'creating')) {
      throw new SwarmError('CONFLICT', `instance ${instance.id} is ${instance.status}; try again when it is done`);
    }
    if (instance.warmPool) throw new SwarmError('CONFLICT', `instance ${instance.id} is an unassigned warm-buffer member`);
    const sourceProvider = await controller.connectedProvider(instance.providerType);
    const targetProvider = await controller.connectedProvider(target);
    for (const [role, p] of [['source', sourceProvider], ['target', targetProvider]] as const) {
      if (!p.getCapabilities().workspaceTransfer || !p.exportWorkspace || !p.importWorkspace) {
        throw new SwarmError('CONFLICT', `${role} provider ${p.type} cannot transfer workspace files, so a migration would lose them`);
      }
    }
    const { minCpu, maxCpu, minMemoryMb, maxMemoryMb } = targetProvider.getCapabilities().resourceLimits;
    const { cpu, memoryMb } = instance.config.resources;
    if (cpu < minCpu || cpu > maxCpu || memoryMb < minMemoryMb || memoryMb > maxMemoryMb) {
      throw invalidInput('target', `a provider that can give ${cpu} CPU and ${memoryMb} MiB (${target}: ${minCpu}-${maxCpu} CPU, ${minMemoryMb}-${maxMemoryMb} MiB)`);
    }
    return { source: instance.providerType, sourceProvider, targetProvider };
  }

  private async withDeadline<T>(migration: Migration, work: Promise<T>, enforce: boolean): Promise<T> {
    if (!enforce) return work;
    const left = Date.parse(migration.deadline) - this.now();
    let timer: NodeJS.Timeout | undefined;
    try {
      return await Promise.race([
        work,
        new Promise<never>((_, reject) => {
          timer = setTimeout(() => reject(new SwarmError('TIMEOUT', `the migration's time ran out (deadline ${migration.deadline})`)), Math.max(0, left));
        }),
      ]);
    } finally {
      clearTimeout(timer);
    }
  }

  private async save(migration: Migration): Promise<void> {
    migration.updatedAt = new Date(this.now()).toISOString();
    await this.documents.put('migrations', migration.id, migration);
  }

  private async loadAll(): Promise<Migration[]> {
    return (await this.loadStored()).map((s) => s.migration);
  }

  /** Every record with its writer; the ones running here as they are in memory now. */
  private async loadStored(): Promise<StoredMigration[]> {
    const out: StoredMigration[] = [];
    for (const { id, doc, writer } of await this.documents.list('migrations')) {
      const active = this.active.get(id);
      if (active) {
        out.push({ migration: structuredClone(active.migration), writer });
        continue;
      }
      const parsed = MigrationSchema.safeParse(doc);
      if (parsed.success) out.push({ migration: parsed.data, writer });
      else this.logger.warn({ migrationId: id, err: parsed.error.issues[0]?.message }, 'unreadable migration record skipped');
    }
    return out;
  }

  private spoolFile(id: string, part: string): string {
    return path.join(this.dir, `${id}.${part}${SPOOL_SUFFIX}`);
  }

  /** What every copy of a migration is held to: the target's size limit and the migration's deadline. */
  private limitsFor(migration: Migration, target: Provider, what: string): TransferLimits {
    return { maxBytes: this.maxBytesFor(target), deadline: Date.parse(migration.deadline), now: this.now, what };
  }

  private maxBytesFor(target: Provider): number {
    const own = this.options.maxWorkspaceBytes ?? DEFAULT_MAX_WORKSPACE_BYTES;
    const limit = target.getCapabilities().maxWorkspaceMb;
    return limit === undefined ? own : Math.min(own, limit * 2 ** 20);
  }

  /** Spooled archives and temp files of migrations no longer running: a crash may have left them. */
  private async removeLeftovers(): Promise<void> {
    const names = await fs.readdir(this.dir).catch(() => [] as string[]);
    for (const name of names) {
      const spool = name.endsWith(SPOOL_SUFFIX) && !this.active.has(name.split('.')[0]!);
      if (spool || isTempFile(name)) await fs.rm(path.join(this.dir, name), { force: true });
    }
  }

  /** The run's spooled archives go when it ends, whatever the outcome. */
  private async removeSpools(id: string): Promise<void> {
    await Promise.all(['export', 'final'].map((part) => fs.rm(this.spoolFile(id, part), { force: true })));
  }
}

function lastCompleted(migration: Migration): number {
  let reached = -1;
  migration.steps.forEach((s, i) => {
    if (s.status === 'completed') reached = i;
  });
  return reached;
}

function isTimeout(err: unknown): boolean {
  return err instanceof SwarmError && err.code === 'TIMEOUT';
}
