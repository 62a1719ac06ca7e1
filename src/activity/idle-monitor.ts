/**
 * Stops instances nobody uses. An instance's last activity is the newest of: the editor's own heartbeat
 * (`/healthz` `lastHeartbeat`, which code-server moves while a browser is connected), traffic through
 * the gateway, a start or create, and a lease an MCP caller took ("keep this alive for N minutes"),
 * which holds it awake until it runs out whatever else happens. Each sweep folds what it saw into the
 * registry, so the status tools show the last activity, and the reason of a stop is recorded.
 */
import type { VSCodeInstance } from '../../providers/provider.js';
import type { SwarmController } from '../controller/swarm-controller.js';
import { silentLogger, type Logger } from '../logger.js';
import { editorJson } from '../timing/editor-probe.js';
import type { ActivitySign, ActivityTracker } from './activity-tracker.js';

export interface IdleMonitorOptions {
  controller: SwarmController;
  activity: ActivityTracker;
  checkIntervalMs: number;
  /** Heartbeat probes at once. */
  concurrency?: number;
  logger?: Logger;
  now?: () => number;
}

export interface SweepReport {
  checked: number;
  stopped: { instanceId: string; reason: string }[];
}

export class IdleMonitor {
  private timer?: NodeJS.Timeout;
  private sweeping?: Promise<SweepReport>;
  private readonly logger: Logger;
  private readonly now: () => number;

  constructor(private readonly options: IdleMonitorOptions) {
    this.logger = (options.logger ?? silentLogger()).child({ component: 'idle-monitor' });
    this.now = options.now ?? Date.now;
  }

  start(): void {
    this.timer ??= setInterval(() => void this.sweep().catch((err) => this.logger.warn({ err: (err as Error).message }, 'idle sweep failed')), this.options.checkIntervalMs);
    this.timer.unref();
  }

  async stop(): Promise<void> {
    clearInterval(this.timer);
    this.timer = undefined;
    await this.sweeping?.catch(() => undefined);
  }

  /** One pass over every running, assigned instance; overlapping calls share one pass. */
  sweep(): Promise<SweepReport> {
    this.sweeping ??= this.runSweep().finally(() => {
      this.sweeping = undefined;
    });
    return this.sweeping;
  }

  private async runSweep(): Promise<SweepReport> {
    const { controller } = this.options;
    // With a shared store only the leading controller stops idle instances (see Leadership).
    if (!controller.leads) return { checked: 0, stopped: [] };
    const candidates = controller.registry.list({ status: 'running' }).filter((i) => !i.warmPool);
    const report: SweepReport = { checked: candidates.length, stopped: [] };
    let next = 0;
    const worker = async (): Promise<void> => {
      while (next < candidates.length) await this.check(candidates[next++]!, report);
    };
    await Promise.all(Array.from({ length: Math.min(this.options.concurrency ?? 8, candidates.length) }, worker));
    return report;
  }

  private async check(instance: Readonly<VSCodeInstance>, report: SweepReport): Promise<void> {
    const { controller, activity } = this.options;
    const now = this.now();
    const signs: ActivitySign[] = [];
    if (instance.lastActivity) signs.push({ at: Date.parse(instance.lastActivity.at), source: instance.lastActivity.source });
    const seen = activity.last(instance.id);
    if (seen) signs.push(seen);
    const provider = instance.endpoint?.hostHeader ? await controller.providerOf(instance.id).catch(() => undefined) : undefined;
    const heartbeat = await editorJson<{ lastHeartbeat?: number }>(instance, provider, '/healthz', 2_000);
    if (heartbeat?.lastHeartbeat) signs.push({ at: heartbeat.lastHeartbeat, source: 'heartbeat' });
    // An instance with no recorded activity (adopted, say) counts from its last registry change.
    const floor: ActivitySign = { at: instance.lastActivity ? 0 : Date.parse(instance.updatedAt), source: 'start' };
    const newest = signs.reduce<ActivitySign>((a, b) => (b.at > a.at ? b : a), floor);

    const leaseUntil = instance.lease ? Date.parse(instance.lease.until) : 0;
    const timeoutMinutes = controller.idleTimeoutOf(instance);
    const idleMs = now - Math.max(newest.at, leaseUntil);
    if (timeoutMinutes > 0 && leaseUntil <= now && idleMs > timeoutMinutes * 60_000) {
      const reason = `idle: no editor heartbeat, gateway traffic or lease for ${formatMinutes(idleMs)} (timeout ${timeoutMinutes} min; last sign: ${newest.source} at ${new Date(newest.at).toISOString()})`;
      try {
        await controller.fenced(() => controller.stopInstance(instance.id, { reason, by: 'idle' }));
        report.stopped.push({ instanceId: instance.id, reason });
        this.logger.info({ instanceId: instance.id, reason }, 'stopped an idle instance');
        await controller.recordSystemEvent('idle', 'instance.idle-stop', { subject: instance.id, reason });
      } catch (err) {
        this.logger.warn({ instanceId: instance.id, err: (err as Error).message }, 'could not stop an idle instance');
        await controller.recordSystemEvent('idle', 'instance.idle-stop', { subject: instance.id, outcome: 'failed', reason: `${reason}: ${(err as Error).message}` });
      }
      return;
    }
    const recorded = instance.lastActivity ? Date.parse(instance.lastActivity.at) : 0;
    if (newest.at > recorded) await controller.recordActivity(instance.id, newest).catch(() => undefined);
  }
}

function formatMinutes(ms: number): string {
  const minutes = ms / 60_000;
  return minutes >= 1 ? `${minutes.toFixed(1)} min` : `${Math.round(ms / 1000)} s`;
}
