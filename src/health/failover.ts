/**
 * Provider failover (opt-in, `failover.enabled`): when a provider has been unavailable for longer than
 * `afterMs`, each of its instances that should be running moves to the `to` provider:
 *
 *   1. with its files, through the MigrationManager (every file verified by SHA-256 on the target before
 *      the source goes), where the source can still be read;
 *   2. otherwise from its newest snapshot (a seam: snapshots do not exist yet, see restoreFromNewestSnapshot);
 *   3. otherwise not at all: the instance is marked failed with the reason. An empty workspace is never
 *      created in its place.
 *
 * Providers are probed every `checkIntervalMs` (SwarmController.probeProvider: a ping for a ready one, a
 * reconnect for an unavailable one), so an outage is noticed without waiting for someone to use the
 * provider. A decision is taken once per instance per outage; a provider that answers again before
 * `afterMs` has passed moves nothing, and one that comes back is reconciled, so that instances marked
 * failed while it was unreachable show what it reports again. Every decision is recorded with its reason
 * in the instance's health history, its statusReason and a log line.
 */
import type { ProviderType, VSCodeInstance } from '../../providers/provider.js';
import type { SwarmController } from '../controller/swarm-controller.js';
import { SwarmError, asSwarmError } from '../errors.js';
import { silentLogger, type Logger } from '../logger.js';
import type { Migration, MigrationManager } from '../migration/migration-manager.js';
import { shouldRun, type HealthMonitor } from './health-monitor.js';

export interface FailoverConfig {
  enabled: boolean;
  /** Providers watched; every enabled provider but `to` when absent. */
  from?: ProviderType[] | undefined;
  to?: ProviderType | undefined;
  afterMs: number;
  checkIntervalMs: number;
}

export interface FailoverOptions {
  controller: SwarmController;
  migrations: MigrationManager;
  /** Keeps the per-instance history the decisions are written to. */
  health: HealthMonitor;
  config: FailoverConfig;
  logger?: Logger;
  now?: () => number;
}

export type FailoverOutcome = 'migrated' | 'restored-from-snapshot' | 'failed';

/** One decision about one instance; also what the audit event will carry. */
export interface FailoverDecision {
  instanceId: string;
  from: ProviderType;
  to: ProviderType;
  /** When the outage was first seen. */
  unavailableSince: string;
  at: string;
  outcome: FailoverOutcome;
  reason: string;
  migrationId?: string;
}

interface Outage {
  since: number;
  reason: string;
  /** Instances decided in this outage: each one is decided once. */
  decided: Set<string>;
  /** The target was down when the decisions were due (logged once). */
  targetWarned?: boolean;
}

/** Steps at which a failed migration means the source's files could not be read. */
const READ_STEPS = new Set(['validate-source', 'export-source-config']);

export class ProviderFailover {
  private readonly outages = new Map<ProviderType, Outage>();
  private readonly logger: Logger;
  private readonly now: () => number;
  private timer?: NodeJS.Timeout;
  private ticking?: Promise<FailoverDecision[]>;

  constructor(private readonly options: FailoverOptions) {
    if (!options.config.to) throw new SwarmError('INVALID_INPUT', 'failover.to: required: the provider type instances move to', { field: 'failover.to' });
    this.logger = (options.logger ?? silentLogger()).child({ component: 'failover' });
    this.now = options.now ?? Date.now;
  }

  start(): void {
    this.timer ??= setInterval(() => void this.tick().catch((err) => this.logger.warn({ err: (err as Error).message }, 'failover pass failed')), this.options.config.checkIntervalMs);
    this.timer.unref();
  }

  async stop(): Promise<void> {
    clearInterval(this.timer);
    this.timer = undefined;
    await this.ticking?.catch(() => undefined);
  }

  /** Providers in an outage now, and since when (ISO). */
  outagesNow(): { provider: ProviderType; since: string; reason: string }[] {
    return [...this.outages].map(([provider, o]) => ({ provider, since: new Date(o.since).toISOString(), reason: o.reason }));
  }

  /** One pass: probe every watched provider, then decide for those down longer than afterMs. Overlapping calls share one pass. */
  tick(): Promise<FailoverDecision[]> {
    this.ticking ??= this.pass().finally(() => {
      this.ticking = undefined;
    });
    return this.ticking;
  }

  private watched(): ProviderType[] {
    const { controller, config } = this.options;
    return (config.from ?? controller.providerStatuses().filter((p) => p.state !== 'disabled').map((p) => p.type)).filter((t) => t !== config.to);
  }

  private async pass(): Promise<FailoverDecision[]> {
    const { controller, config } = this.options;
    const to = config.to!;
    const decisions: FailoverDecision[] = [];
    // With a shared store only the leading controller fails over (see Leadership).
    if (!controller.leads) return decisions;
    for (const type of this.watched()) {
      const status = await controller.probeProvider(type);
      const outage = this.outages.get(type);
      if (status.state === 'ready') {
        if (outage) {
          this.outages.delete(type);
          this.logger.info({ provider: type, since: new Date(outage.since).toISOString(), decided: outage.decided.size }, 'provider available again; outage over');
          // Records marked failed while it could not be reached show what it reports again.
          await controller.reconcile(type).catch((err) => this.logger.warn({ provider: type, err: asSwarmError(err).message }, 'reconcile after the outage failed'));
        }
        continue;
      }
      if (status.state !== 'unavailable') continue;
      if (!outage) {
        this.outages.set(type, { since: this.now(), reason: status.reason ?? 'unavailable', decided: new Set() });
        this.logger.warn({ provider: type, reason: status.reason, afterMs: config.afterMs, to }, `provider unavailable; its instances fail over to ${to} if it stays so`);
        continue;
      }
      if (this.now() - outage.since < config.afterMs) continue;
      const due = controller.registry.list().filter((i) => i.providerType === type && shouldRun(i) && !outage.decided.has(i.id) && !decidedEarlier(i, type));
      if (due.length === 0) continue;
      const target = await controller.probeProvider(to);
      if (target.state !== 'ready') {
        // Not a decision: nothing can go there now; tried again on the next pass.
        if (!outage.targetWarned) this.logger.error({ provider: type, to, reason: target.reason }, `cannot fail over: ${to} is unavailable too`);
        outage.targetWarned = true;
        continue;
      }
      for (const instance of due) {
        // Fenced: a controller that lost the lead mid-pass moves nothing (the pass fails and is logged).
        const decision = await controller.fenced(async () => {
          outage.decided.add(instance.id);
          return this.decide(instance, type, outage);
        });
        decisions.push(decision);
      }
    }
    return decisions;
  }

  private async decide(instance: Readonly<VSCodeInstance>, from: ProviderType, outage: Outage): Promise<FailoverDecision> {
    const { controller, migrations, config } = this.options;
    const to = config.to!;
    const since = new Date(outage.since).toISOString();
    const head = `failover: ${from} unavailable since ${since}`;
    const decision = (outcome: FailoverOutcome, reason: string, migrationId?: string): FailoverDecision => ({
      instanceId: instance.id, from, to, unavailableSince: since, at: new Date(this.now()).toISOString(), outcome, reason,
      ...(migrationId ? { migrationId } : {}),
    });

    // 1. With its files: the migration verifies every one on the target, and moves nothing it cannot read.
    let unreadable = false;
    let problem: string;
    let done: Migration | undefined;
    try {
      done = await (await migrations.start(instance.id, to, { strategy: 'stop-and-recreate' })).wait;
      if (done.status === 'completed') {
        let reason = `${head}; moved to ${to} with its files (migration ${done.id}, ${done.files ?? 0} files verified)`;
        const now = controller.registry.get(instance.id);
        if (now && now.status !== 'running') {
          await controller.startInstance(instance.id).catch((err) => {
            reason += `, but it did not start on ${to}: ${asSwarmError(err).message}`;
          });
        }
        await controller.recordHealth(instance.id, 'recovering', reason, { statusReason: reason });
        return this.record(decision('migrated', reason, done.id), 'recovering');
      }
      const failedAt = done.steps.find((s) => s.status === 'failed')?.name;
      unreadable = failedAt !== undefined && READ_STEPS.has(failedAt);
      problem = `migration ${done.id} ${done.status}: ${done.reason ?? ''}`;
    } catch (err) {
      const e = asSwarmError(err);
      // The target answered a moment ago, so an unavailable provider here is the source.
      unreadable = e.code === 'PROVIDER_UNAVAILABLE';
      problem = e.message;
    }

    // 2. From its newest snapshot.
    const snapshot = await restoreFromNewestSnapshot(instance, to);
    if (snapshot.restored) {
      const reason = `${head}; ${unreadable ? 'files unreadable' : 'files not moved'} (${problem}); ${snapshot.detail}`;
      await controller.recordHealth(instance.id, 'recovering', reason, { statusReason: reason });
      return this.record(decision('restored-from-snapshot', reason), 'recovering');
    }

    // 3. Not at all.
    const reason = `${head}; ${unreadable ? 'files unreadable' : 'files not moved'} (${problem}) and ${snapshot.why}; not re-created empty on ${to}`;
    await controller.recordHealth(instance.id, 'unhealthy', reason, { status: 'failed', statusReason: reason });
    return this.record(decision('failed', reason, done?.id), 'unhealthy');
  }

  /** Every decision: the instance's health history, a log line, and one audit event. */
  private async record(decision: FailoverDecision, status: 'recovering' | 'unhealthy'): Promise<FailoverDecision> {
    await this.options.health.recordDecision(decision.instanceId, { status, reason: decision.reason, action: `failover: ${decision.outcome}` });
    if (decision.outcome === 'failed') this.logger.error({ ...decision }, 'failover: instance left failed');
    else this.logger.warn({ ...decision }, `failover: instance ${decision.outcome}`);
    await this.options.controller.recordSystemEvent('failover', `instance.failover.${decision.outcome}`, {
      subject: decision.instanceId,
      outcome: decision.outcome === 'failed' ? 'failed' : 'ok',
      reason: decision.reason,
      request: { from: decision.from, to: decision.to, unavailableSince: decision.unavailableSince, ...(decision.migrationId ? { migrationId: decision.migrationId } : {}) },
    });
    return decision;
  }
}

/** Already marked failed by a failover decision about this provider (by an earlier run of the controller, say). */
function decidedEarlier(instance: Readonly<VSCodeInstance>, from: ProviderType): boolean {
  return instance.status === 'failed' && (instance.statusReason ?? '').startsWith(`failover: ${from} unavailable`);
}

/**
 * SEAM (snapshots): snapshots do not exist yet in this codebase (every provider declares
 * `capabilities.snapshots: false`). When they do, this restores the instance on `to` from its newest
 * snapshot and says which one, and when it was taken, in `detail`.
 */
async function restoreFromNewestSnapshot(
  _instance: Readonly<VSCodeInstance>,
  _to: ProviderType,
): Promise<{ restored: true; detail: string } | { restored: false; why: string }> {
  return { restored: false, why: 'no snapshot (snapshots are not implemented yet)' };
}
