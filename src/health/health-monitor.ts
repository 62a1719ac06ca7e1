/**
 * The health monitor: checks every instance that should be running, records what it found with the
 * reason, and (when enabled) repairs it: restart, then re-create around the same files, then give up
 * loudly with the instance marked failed and why.
 *
 * The last rung of the ladder, 'migrate', moves the instance with its files to `migrateTo` through the
 * MigrationManager (every file verified by SHA-256 before the source goes; files that cannot be read
 * mean no move at all, never an empty workspace elsewhere).
 *
 * Checks per instance: provider (the instance exists), status (it is running as desired),
 * connectivity (the editor answers /healthz at the endpoint the gateway uses), resources (memory
 * against its limit). A definite finding (the instance is gone, or stopped or failed when it should
 * run) counts at once. A flaky signal does not: an editor that does not answer turns the instance
 * unhealthy only after `failureThreshold` consecutive failed checks, and a slow answer only degrades it.
 * The status word never contradicts its reason: until a flaky failure is confirmed the status is
 * `unknown` ("not known to be healthy"), never `healthy`.
 * An instance its provider reports with status `unknown` (it cannot see it now but has not lost it, as an
 * AWS host whose agent is restarting) is waited for: no failure is counted and nothing is repaired.
 *
 * The records (counts, attempts, history) live in a DocumentStore: `<stateDir>/health/<id>.json` by
 * default, or PostgreSQL shared by every controller, so a new leader carries on where the last one stopped.
 */
import { HealthStatusSchema, type HealthStatus, type ProviderType, type VSCodeInstance } from '../../providers/provider.js';
import type { SwarmController } from '../controller/swarm-controller.js';
import type { MigrationManager } from '../migration/migration-manager.js';
import { SwarmError, asSwarmError } from '../errors.js';
import { silentLogger, type Logger } from '../logger.js';
import { FileDocumentStore, type DocumentStore } from '../store/documents.js';
import { checkInstanceId } from '../store/records.js';
import { editorStatus } from '../timing/editor-probe.js';
import { z } from 'zod';

export const RECOVERY_ACTIONS = ['restart', 'recreate', 'migrate'] as const;
export type RecoveryAction = (typeof RECOVERY_ACTIONS)[number];

export interface HealthConfig {
  intervalMs: number;
  /** Time allowed for the editor to answer /healthz. */
  timeoutMs: number;
  /** An answer slower than this degrades the instance. */
  slowMs: number;
  failureThreshold: number;
  /** Memory use above this fraction of the limit degrades the instance. */
  memoryDegradedRatio: number;
  historySize: number;
  concurrency: number;
  autoRecover: boolean;
  recoveryActions: RecoveryAction[];
  /** Where 'migrate' moves a failing instance. */
  migrateTo?: ProviderType | undefined;
  maxAttempts: number;
  backoffMs: number;
}

/** How long an unchanged history may stay unwritten; a restart loses at most this much of it. */
const HISTORY_FLUSH_MS = 5 * 60_000;

export const HealthCheckSchema = z.object({
  instanceId: z.string(),
  at: z.string(),
  status: HealthStatusSchema,
  reason: z.string(),
  checks: z.object({
    provider: z.enum(['pass', 'fail', 'skip']),
    status: z.enum(['pass', 'fail', 'skip']),
    connectivity: z.enum(['pass', 'fail', 'skip']),
    resources: z.enum(['pass', 'fail', 'skip']),
  }),
  latencyMs: z.number().optional(),
  memoryRatio: z.number().optional(),
  action: z.string().optional(),
});
export type HealthCheck = z.infer<typeof HealthCheckSchema>;

const HealthRecordSchema = z.object({
  instanceId: z.string(),
  consecutiveFailures: z.number().int(),
  recoveryAttempts: z.number().int(),
  lastAttemptAt: z.string().optional(),
  gaveUp: z.boolean().optional(),
  history: z.array(HealthCheckSchema),
});
export type HealthRecord = z.infer<typeof HealthRecordSchema>;

export interface HealthMonitorOptions {
  controller: SwarmController;
  stateDir: string;
  config: HealthConfig;
  /** Needed for the 'migrate' recovery action. */
  migrations?: MigrationManager;
  /** Where the records are kept (default: the files under `<stateDir>/health`). */
  documents?: DocumentStore;
  logger?: Logger;
  now?: () => number;
}

export class HealthMonitor {
  private readonly records = new Map<string, HealthRecord>();
  private readonly savedAt = new Map<string, number>();
  private readonly documents: DocumentStore;
  /** With a shared store: whether the cached records were read while this controller led (see refresh). */
  private cacheLed = false;
  private readonly logger: Logger;
  private readonly now: () => number;
  private timer?: NodeJS.Timeout;
  private sweeping?: Promise<HealthCheck[]>;

  constructor(private readonly options: HealthMonitorOptions) {
    this.documents = options.documents ?? new FileDocumentStore(options.stateDir, options.logger);
    this.logger = (options.logger ?? silentLogger()).child({ component: 'health' });
    this.now = options.now ?? Date.now;
  }

  start(): void {
    this.timer ??= setInterval(() => void this.sweep().catch((err) => this.logger.warn({ err: (err as Error).message }, 'health sweep failed')), this.options.config.intervalMs);
    this.timer.unref();
  }

  async stop(): Promise<void> {
    clearInterval(this.timer);
    this.timer = undefined;
    await this.sweeping?.catch(() => undefined);
  }

  /** Checks every instance that should be running, with bounded concurrency; overlapping calls share one pass. */
  sweep(): Promise<HealthCheck[]> {
    this.sweeping ??= (async () => {
      const { controller, config } = this.options;
      // With a shared store only the leading controller sweeps (see Leadership).
      if (!controller.leads) return [];
      this.refresh();
      // Given up on and still failed: left alone until someone starts it again.
      const due = controller.registry.list().filter((i) => shouldRun(i) && !(this.records.get(i.id)?.gaveUp && i.status === 'failed'));
      const results: HealthCheck[] = [];
      let next = 0;
      const worker = async (): Promise<void> => {
        while (next < due.length) {
          const instance = due[next++]!;
          results.push(await this.checkAndRecover(instance.id).catch((err) => this.unknown(instance.id, asSwarmError(err).message)));
        }
      };
      await Promise.all(Array.from({ length: Math.min(config.concurrency, due.length) }, worker));
      return results;
    })().finally(() => {
      this.sweeping = undefined;
    });
    return this.sweeping;
  }

  /** One check of one instance, then a recovery step if it is unhealthy and recovery is on. */
  async checkAndRecover(instanceId: string, options: { recover?: boolean } = {}): Promise<HealthCheck> {
    this.refresh();
    const check = await this.check(instanceId);
    const record = await this.record(instanceId);
    if (check.status === 'unhealthy' && (options.recover ?? this.options.config.autoRecover)) {
      check.action = await this.recover(instanceId, record, check.reason);
      await this.save(record); // the finding's entry now says what was done about it
    }
    return check;
  }

  /** Runs a recovery step now, whatever the schedule says: for the recover_instance tool. */
  async recoverNow(instanceId: string, action?: RecoveryAction): Promise<HealthCheck> {
    this.refresh();
    const record = await this.record(instanceId);
    record.gaveUp = false;
    const check = await this.check(instanceId);
    check.action = await this.recover(instanceId, record, check.reason, action, true);
    await this.save(record);
    return check;
  }

  /** The persisted history of one instance, newest last. */
  async history(instanceId: string): Promise<HealthRecord> {
    this.refresh();
    return structuredClone(await this.record(instanceId));
  }

  /**
   * Adds a decision taken about an instance (a migration, a failover) to its persisted history, with its
   * reason. No check was made for it, so every check is 'skip'.
   */
  async recordDecision(instanceId: string, decision: { status: HealthStatus; reason: string; action: string }): Promise<HealthCheck> {
    this.refresh();
    const record = await this.record(instanceId);
    const entry: HealthCheck = {
      instanceId, at: new Date(this.now()).toISOString(), status: decision.status, reason: decision.reason, action: decision.action,
      checks: { provider: 'skip', status: 'skip', connectivity: 'skip', resources: 'skip' },
    };
    this.append(record, entry);
    await this.save(record);
    return entry;
  }

  private async check(instanceId: string): Promise<HealthCheck> {
    const { controller, config } = this.options;
    const instance = controller.registry.require(instanceId);
    const record = await this.record(instanceId);
    const checks: HealthCheck['checks'] = { provider: 'skip', status: 'skip', connectivity: 'skip', resources: 'skip' };
    const at = new Date(this.now()).toISOString();
    let provider;
    try {
      provider = await controller.providerOf(instanceId);
    } catch (err) {
      return this.finish(record, instance, { instanceId, at, status: 'unknown', reason: `provider unreachable: ${asSwarmError(err).message}`, checks });
    }
    const observed = await provider.getInstance(instanceId);
    let failure: string | undefined;
    /** Not a flaky signal: the provider itself says the instance is gone or not running. */
    let definite = false;
    let degraded: string | undefined;
    let latencyMs: number | undefined;
    let memoryRatio: number | undefined;
    checks.provider = observed ? 'pass' : 'fail';
    if (observed?.status === 'unknown') {
      // The provider cannot see it now (e.g. its host's agent is restarting) but has not lost it: wait.
      // Not a failure, so no recovery re-creates it elsewhere while it may come back as it was.
      return this.finish(record, instance, { instanceId, at, status: 'unknown', reason: `provider: state unknown${observed.statusReason ? ` (${observed.statusReason})` : ''}; waiting`, checks });
    }
    if (!observed) {
      failure = `missing: no ${instance.providerType} instance exists for it`;
      definite = true;
    } else {
      checks.status = observed.status === 'running' ? 'pass' : 'fail';
      if (observed.status !== 'running') {
        failure = `status: expected running, found ${observed.status}${observed.statusReason ? ` (${observed.statusReason})` : ''}`;
        // A settled state is a fact; a transition (starting, stopping, a restart in progress) may pass.
        definite = SETTLED_NOT_RUNNING.has(observed.status);
      }
      else if (observed.endpoint) {
        const started = this.now();
        const code = await editorStatus(observed, provider, '/healthz', config.timeoutMs);
        latencyMs = this.now() - started;
        checks.connectivity = code === 200 ? 'pass' : 'fail';
        if (code !== 200) failure = `connectivity: the editor did not answer /healthz within ${config.timeoutMs} ms${code ? ` (HTTP ${code})` : ''}`;
        else if (latencyMs > config.slowMs) degraded = `connectivity: /healthz took ${latencyMs} ms`;
      }
      if (!failure && provider.getCapabilities().stats && provider.getInstanceStats) {
        const stats = await provider.getInstanceStats(instanceId).catch(() => undefined);
        if (stats?.memoryLimitBytes) {
          memoryRatio = stats.memoryBytes / stats.memoryLimitBytes;
          checks.resources = memoryRatio > config.memoryDegradedRatio ? 'fail' : 'pass';
          if (memoryRatio > config.memoryDegradedRatio) degraded ??= `resources: memory at ${Math.round(memoryRatio * 100)}% of its limit`;
        }
      }
    }

    let status: HealthStatus;
    let reason: string;
    if (failure) {
      record.consecutiveFailures++;
      const confirmed = definite || record.consecutiveFailures >= config.failureThreshold;
      status = confirmed ? 'unhealthy' : 'unknown';
      reason = confirmed ? failure : `${failure} (${record.consecutiveFailures} of ${config.failureThreshold} failed checks before it counts)`;
    } else {
      if (record.recoveryAttempts > 0) this.logger.info({ instanceId, attempts: record.recoveryAttempts }, 'instance recovered');
      record.consecutiveFailures = 0;
      record.recoveryAttempts = 0;
      record.gaveUp = false;
      status = degraded ? 'degraded' : 'healthy';
      reason = degraded ?? 'all checks passed';
    }
    return this.finish(record, instance, {
      instanceId, at, status, reason, checks,
      ...(latencyMs !== undefined ? { latencyMs } : {}),
      ...(memoryRatio !== undefined ? { memoryRatio } : {}),
    });
  }

  private async recover(instanceId: string, record: HealthRecord, why: string, forced?: RecoveryAction, now = false): Promise<string> {
    const { controller, config } = this.options;
    if (!now) {
      // A repair the schedule decided is fenced: a controller that lost the lead (paused, cut off) writes and repairs nothing.
      const refused = await controller.fenced(async () => undefined).then(() => undefined, (err: unknown) => asSwarmError(err));
      if (refused) {
        this.logger.warn({ instanceId, err: refused.message }, 'repair refused: this controller does not lead the swarm');
        return `refused: ${refused.message}`;
      }
    }
    if (record.recoveryAttempts >= config.maxAttempts && !now) {
      const reason = `health: gave up after ${record.recoveryAttempts} recovery attempts; last finding: ${why}`;
      record.gaveUp = true;
      await this.save(record);
      await controller.recordHealth(instanceId, 'unhealthy', reason, { status: 'failed', statusReason: reason });
      this.logger.error({ instanceId, reason }, 'recovery given up');
      return 'gave up';
    }
    const wait = config.backoffMs * 2 ** Math.max(0, record.recoveryAttempts - 1);
    if (!now && record.lastAttemptAt && this.now() - Date.parse(record.lastAttemptAt) < wait) return 'waiting (backoff)';

    const allowed = config.recoveryActions;
    const missing = why.startsWith('missing');
    let action: RecoveryAction | undefined = forced ?? allowed[Math.min(record.recoveryAttempts, allowed.length - 1)];
    if (missing && action === 'restart') action = allowed.includes('recreate') ? 'recreate' : undefined; // nothing to restart
    if (action === 'migrate') {
      const on = controller.registry.require(instanceId).providerType;
      const refusal = !config.migrateTo || !this.options.migrations
        ? new SwarmError('DISABLED', "action: 'migrate' needs health.migrateTo in the configuration (the provider type to move to)", { field: 'action' })
        : on === config.migrateTo
          ? new SwarmError('CONFLICT', `instance ${instanceId} is already on ${on}, where health.migrateTo would move it`)
          : undefined;
      if (refusal && forced) throw refusal;
      // Already where a migration would take it (or no way to migrate): re-creation is what is left.
      if (refusal) action = allowed.includes('recreate') ? 'recreate' : undefined;
    }
    if (!action) return 'no allowed recovery action';
    record.recoveryAttempts++;
    record.lastAttemptAt = new Date(this.now()).toISOString();
    await this.save(record);
    const attempt = `(attempt ${record.recoveryAttempts} of ${config.maxAttempts})`;
    if (action === 'migrate') {
      await controller.recordHealth(instanceId, 'recovering', `migrate to ${config.migrateTo} ${attempt} because ${why}`);
      return this.migrate(instanceId, config.migrateTo!, `migrate to ${config.migrateTo} ${attempt} because ${why}`);
    }
    await controller.recordHealth(instanceId, 'recovering', `${action} ${attempt} because ${why}`);
    const reason = `health: ${action} (attempt ${record.recoveryAttempts}) because ${why}`;
    try {
      if (action === 'restart') await controller.restartInstance(instanceId, reason);
      else await controller.recreateInstance(instanceId, reason);
      this.logger.info({ instanceId, action, why }, 'recovery step done');
      await controller.recordSystemEvent('health', `instance.${action}`, { subject: instanceId, reason });
      return `${action}: done`;
    } catch (err) {
      const error = asSwarmError(err);
      const message = error.message;
      this.logger.warn({ instanceId, action, err: message }, 'recovery step failed');
      await controller.recordSystemEvent('health', `instance.${action}`, { subject: instanceId, outcome: 'failed', code: error.code, reason: `${reason}: ${message}` });
      await controller.recordHealth(instanceId, 'unhealthy', `${action} failed: ${message}`);
      return `${action}: failed (${message})`;
    }
  }

  /**
   * The last rung: moves the instance with its files through the MigrationManager and waits for it. The
   * manager refuses to lose files: a source it cannot read means no move (rolled back), never an empty
   * workspace on the target. The outcome goes to the history, the instance's statusReason and the log.
   */
  private async migrate(instanceId: string, to: ProviderType, intro: string): Promise<string> {
    const { controller } = this.options;
    let outcome: string;
    let moved = false;
    try {
      const { wait } = await this.options.migrations!.start(instanceId, to, { strategy: 'stop-and-recreate' });
      const done = await wait;
      if (done.status === 'completed') {
        moved = true;
        outcome = `migration ${done.id} completed with ${done.files ?? 0} files verified`;
        const now = controller.registry.get(instanceId);
        // The failing source was seldom running, and a migration leaves the target as it found the source.
        if (now && now.desiredState !== 'stopped' && now.status !== 'running') {
          await controller.startInstance(instanceId).catch((err) => {
            outcome += `, but it did not start on ${to}: ${asSwarmError(err).message}`;
          });
        }
      } else {
        outcome = `migration ${done.id} ${done.status}: ${done.reason ?? 'no reason recorded'}`;
      }
    } catch (err) {
      outcome = `the migration could not run: ${asSwarmError(err).message}`;
    }
    const reason = `${intro}; ${outcome}`;
    await this.recordDecision(instanceId, { status: moved ? 'recovering' : 'unhealthy', reason, action: 'migrate' });
    await controller.recordHealth(instanceId, moved ? 'recovering' : 'unhealthy', reason, { statusReason: `health: ${reason}` });
    if (moved) this.logger.info({ instanceId, to, reason }, 'recovered by migration');
    else this.logger.warn({ instanceId, to, reason }, 'recovery by migration failed');
    await controller.recordSystemEvent('health', 'instance.migrate', { subject: instanceId, outcome: moved ? 'ok' : 'failed', reason });
    return `migrate: ${moved ? 'done' : 'failed'} (${outcome})`;
  }

  private append(record: HealthRecord, check: HealthCheck): void {
    record.history.push(check);
    if (record.history.length > this.options.config.historySize) record.history.splice(0, record.history.length - this.options.config.historySize);
  }

  private async finish(record: HealthRecord, instance: Readonly<VSCodeInstance>, check: HealthCheck): Promise<HealthCheck> {
    const previous = record.history.at(-1);
    this.append(record, check);
    // A steady healthy swarm would otherwise fsync one file per instance per sweep: write when something
    // changed, and otherwise now and then.
    const changed = !previous || previous.status !== check.status || previous.reason !== check.reason || record.consecutiveFailures > 0;
    const lastSaved = this.savedAt.get(record.instanceId) ?? 0;
    if (changed || this.now() - lastSaved >= HISTORY_FLUSH_MS) await this.save(record);
    if (instance.health !== check.status || instance.healthReason !== check.reason) {
      await this.options.controller.recordHealth(instance.id, check.status, check.reason);
    }
    return check;
  }

  private unknown(instanceId: string, reason: string): HealthCheck {
    return { instanceId, at: new Date(this.now()).toISOString(), status: 'unknown', reason, checks: { provider: 'skip', status: 'skip', connectivity: 'skip', resources: 'skip' } };
  }

  /**
   * With a shared store other controllers write the records too: the leader's cache is current only from
   * the moment it took the lead (everything written since went through it), and a controller that does
   * not lead reads afresh on every call. Called at the start of each public entry point, so one call
   * works on one copy of a record. Nothing to do with the files (one controller).
   */
  private refresh(): void {
    if (!this.documents.shared) return;
    const leads = this.options.controller.leads;
    if (!leads || !this.cacheLed) {
      this.records.clear();
      this.savedAt.clear();
    }
    this.cacheLed = leads;
  }

  private async record(instanceId: string): Promise<HealthRecord> {
    checkInstanceId(instanceId);
    let record = this.records.get(instanceId);
    if (!record) {
      record = await this.load(instanceId);
      this.records.set(instanceId, record);
    }
    return record;
  }

  private async load(instanceId: string): Promise<HealthRecord> {
    try {
      const parsed = HealthRecordSchema.safeParse((await this.documents.get('health', instanceId))?.doc);
      if (parsed.success) return parsed.data;
    } catch (err) {
      // A shared store that does not answer is not an empty history: starting afresh would overwrite the counts.
      if (this.documents.shared) throw err;
      // absent or unreadable file: start a fresh history
    }
    return { instanceId, consecutiveFailures: 0, recoveryAttempts: 0, history: [] };
  }

  private async save(record: HealthRecord): Promise<void> {
    await this.documents.put('health', record.instanceId, record);
    this.savedAt.set(record.instanceId, this.now());
  }
}

const SETTLED_NOT_RUNNING: ReadonlySet<string> = new Set(['stopped', 'failed', 'deleted']);

/** Instances the controller wants running: created or started, not stopped on purpose, not a warm member. */
export function shouldRun(instance: Readonly<VSCodeInstance>): boolean {
  if (instance.warmPool || instance.status === 'migrating') return false;
  if (instance.desiredState) return instance.desiredState === 'running' && instance.status !== 'creating' && instance.status !== 'deleting';
  return instance.status === 'running';
}
