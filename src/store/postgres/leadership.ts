/**
 * Which controller does the work that must run once (health sweeps and repairs, idle stops, warm refill,
 * provider failover, reconcile) when several controllers share one PostgreSQL store.
 *
 * One `PgLeadership` per controller process contends for one LeaderLease (`swarm:<swarmId>`), checking
 * every third of the lease's TTL: the holder renews, the others try to take it over once it has expired.
 * The TTL is at most the shortest check interval of those loops, so when the leader dies another controller
 * leads within two check intervals. Every loop asks `isLeader` at the start of each tick; a controller that
 * loses the lease, or its database (a failed renewal counts as lost at once), stops acting from its next
 * tick and resumes when it leads again. Repairs that change what runs go through `fenced`, which has the
 * database confirm this controller's fencing token first, so a leader that was paused and woke up after
 * another took over is refused instead of acting on stale authority.
 *
 * With the JSON-file store there is one controller per state directory (it holds the state lock), so
 * `SoleLeadership` always leads and fences nothing: nothing changes there.
 */
import { SwarmError } from '../../errors.js';
import { silentLogger, type Logger } from '../../logger.js';
import type { SwarmConfig } from '../../config.js';
import { LeaderLease, assertFencing } from './leader-lease.js';
import { StorePool } from './pool.js';

export interface Leadership {
  /** True while this controller may run the work that must run once. */
  readonly isLeader: boolean;
  /** True when other controllers may share the store (and so may have work in flight this one cannot see). */
  readonly shared: boolean;
  /** Runs `work` once the store confirmed this controller still leads; CONFLICT (and `work` not run) otherwise. */
  fenced<T>(work: () => Promise<T>): Promise<T>;
  /** Calls `listener` with true when this controller starts leading and false when it stops; returns the unsubscribe. */
  onChange(listener: (leading: boolean) => void): () => void;
  /**
   * Runs `work` every `intervalMs` while this controller leads, and at once each time it starts leading;
   * passes never overlap. Stopped by stop().
   */
  whileLeader(intervalMs: number, work: () => Promise<unknown>): void;
  /** Takes part: the first contention is awaited (a free lease is taken before this resolves). */
  start(): Promise<void>;
  /** Stops contending and gives the lease up (so another controller leads without waiting for it to expire). */
  stop(): Promise<void>;
}

/** The embedded store's leadership: one controller per state directory, always the leader. */
export class SoleLeadership implements Leadership {
  readonly isLeader = true;
  readonly shared = false;
  private readonly timers: NodeJS.Timeout[] = [];
  private readonly passes = new Set<Promise<unknown>>();
  private readonly logger: Logger;

  constructor(logger?: Logger) {
    this.logger = (logger ?? silentLogger()).child({ component: 'leadership' });
  }

  fenced<T>(work: () => Promise<T>): Promise<T> {
    return work();
  }

  onChange(): () => void {
    return () => undefined;
  }

  whileLeader(intervalMs: number, work: () => Promise<unknown>): void {
    const pass = onePassAtATime(work, () => true, this.logger, this.passes);
    this.timers.push(every(intervalMs, pass));
    pass();
  }

  async start(): Promise<void> {}

  async stop(): Promise<void> {
    for (const timer of this.timers.splice(0)) clearInterval(timer);
    await Promise.all(this.passes);
  }
}

export interface PgLeadershipOptions {
  pool: StorePool;
  /** The lease contended for: `swarm:<swarmId>`, so controllers of one swarm share it. */
  name: string;
  /** Lease TTL; the lease is checked (renewed, or contended for) every third of it. */
  ttlMs: number;
  /** Unique per process by default (see LeaderLease). */
  holder?: string;
  /** Close the pool in stop() (default false: the pool is the caller's). */
  ownsPool?: boolean;
  logger?: Logger;
}

export class PgLeadership implements Leadership {
  readonly shared = true;
  readonly lease: LeaderLease;
  private readonly pool: StorePool;
  private readonly ownsPool: boolean;
  private readonly logger: Logger;
  private readonly listeners = new Set<(leading: boolean) => void>();
  private readonly timers: NodeJS.Timeout[] = [];
  private readonly passes = new Set<Promise<unknown>>();
  private leading = false;
  private stopped = false;
  private checking?: Promise<void>;
  /** The store could not be reached at the last check (logged once per outage). */
  private unreachable = false;

  constructor(options: PgLeadershipOptions) {
    this.pool = options.pool;
    this.ownsPool = options.ownsPool ?? false;
    this.logger = (options.logger ?? silentLogger()).child({ component: 'leadership', lease: options.name });
    this.lease = new LeaderLease({ pool: options.pool, name: options.name, ttlMs: options.ttlMs, ...(options.holder ? { holder: options.holder } : {}), ...(options.logger ? { logger: options.logger } : {}) });
  }

  /** Leads by the last check and by this process's own clock (a paused process wakes up not leading). */
  get isLeader(): boolean {
    return this.leading && !this.stopped && this.lease.isLeader;
  }

  get holder(): string {
    return this.lease.holder;
  }

  async fenced<T>(work: () => Promise<T>): Promise<T> {
    if (!this.isLeader) {
      throw new SwarmError('CONFLICT', `lease ${this.lease.name}: this controller does not lead the swarm now; the action was refused`, { details: { lease: this.lease.name } });
    }
    // The database has the last word: a stale token (another controller took over) or an expired lease is
    // refused. One statement, not a transaction around `work`: a process paused in the middle of `work` must
    // not hold the lease row locked, or no one could take the lead over until it woke up.
    await assertFencing(this.pool, this.lease.name, this.lease.fencingToken!).catch((err: unknown) => {
      void this.check();
      throw err;
    });
    return work();
  }

  onChange(listener: (leading: boolean) => void): () => void {
    this.listeners.add(listener);
    return () => this.listeners.delete(listener);
  }

  whileLeader(intervalMs: number, work: () => Promise<unknown>): void {
    const pass = onePassAtATime(work, () => this.isLeader, this.logger, this.passes);
    this.timers.push(every(intervalMs, pass));
    this.onChange((leading) => {
      if (leading) pass();
    });
    pass(); // already leading (start() took a free lease): the first pass need not wait an interval
  }

  async start(): Promise<void> {
    this.stopped = false;
    await this.check();
    this.timers.push(every(Math.max(1, Math.floor(this.lease.ttlMs / 3)), () => void this.check()));
  }

  async stop(): Promise<void> {
    this.stopped = true;
    for (const timer of this.timers.splice(0)) clearInterval(timer);
    await this.checking;
    await Promise.all(this.passes);
    if (this.leading) {
      await this.lease.release().catch((err: unknown) => this.logger.warn({ err: (err as Error).message }, 'could not release the lease; it expires by itself'));
      this.setLeading(false);
    }
    if (this.ownsPool) await this.pool.close();
  }

  /** One contention: renew when held, take over when free or expired; overlapping calls share one. */
  check(): Promise<void> {
    if (this.checking && this.leading && !this.lease.isLeader) {
      // The renewal has not come back (a stalled connection answers nothing, not even an error) and the lease
      // ran out by this process's clock: stop now and say so, rather than when the store finally answers.
      this.logger.warn({ holder: this.lease.holder }, 'the lease ran out while the state store did not answer; not acting as leader');
      this.setLeading(false);
    }
    this.checking ??= (async () => {
      if (this.stopped) return;
      let held = false;
      try {
        held = await this.lease.tryAcquire();
        if (this.unreachable) this.logger.info('state store reachable again');
        this.unreachable = false;
      } catch (err) {
        // No answer is no authority: stop acting until the store confirms the lease again.
        if (!this.unreachable) this.logger.warn({ err: (err as Error).message }, 'state store unreachable; not acting as leader until it is back');
        this.unreachable = true;
      }
      this.setLeading(held && !this.stopped);
    })().finally(() => {
      this.checking = undefined;
    });
    return this.checking;
  }

  private setLeading(leading: boolean): void {
    if (leading === this.leading) return;
    this.leading = leading;
    this.logger.info({ holder: this.lease.holder, fencingToken: this.lease.fencingToken }, leading ? 'leading the swarm' : 'no longer leading the swarm; its loops stop acting');
    for (const listener of this.listeners) {
      try {
        listener(leading);
      } catch (err) {
        this.logger.warn({ err: (err as Error).message }, 'leadership listener failed');
      }
    }
  }
}

/**
 * The lease TTL for a configuration: the shortest check interval of the loops the leader runs (so a dead
 * leader is replaced within two of them), at most 15 s and at least 300 ms (renewals stay cheap).
 */
export function leaseTtlFor(config: Pick<SwarmConfig, 'health' | 'idle' | 'failover'>): number {
  const intervals = [
    config.health.enabled ? config.health.intervalMs : undefined,
    config.idle.enabled ? config.idle.checkIntervalMs : undefined,
    config.failover.enabled ? config.failover.checkIntervalMs : undefined,
  ].filter((ms): ms is number => ms !== undefined);
  return Math.max(300, Math.min(15_000, ...intervals));
}

/** The leadership the configuration calls for: over PostgreSQL when `store.databaseUrl` is set (its own pool), sole otherwise. */
export function leadershipFor(config: Pick<SwarmConfig, 'swarmId' | 'store' | 'health' | 'idle' | 'failover'>, logger?: Logger): Leadership {
  const databaseUrl = config.store?.databaseUrl;
  if (!databaseUrl) return new SoleLeadership(logger);
  const pool = new StorePool({ databaseUrl, max: 2, ...(logger ? { logger } : {}) });
  return new PgLeadership({ pool, name: `swarm:${config.swarmId}`, ttlMs: leaseTtlFor(config), ownsPool: true, ...(logger ? { logger } : {}) });
}

/**
 * A pass of `work` when `when()` holds and no pass is running; failures are logged, never thrown. Each
 * pass is added to `running` until it ends, so stop() can wait for it.
 */
function onePassAtATime(work: () => Promise<unknown>, when: () => boolean, logger: Logger, running: Set<Promise<unknown>>): () => void {
  let current: Promise<unknown> | undefined;
  return () => {
    if (current || !when()) return;
    const pass = work()
      .catch((err: unknown) => logger.warn({ err: (err as Error).message }, 'leader duty failed; tried again at the next interval'))
      .finally(() => {
        current = undefined;
        running.delete(pass);
      });
    current = pass;
    running.add(pass);
  };
}

function every(intervalMs: number, tick: () => void): NodeJS.Timeout {
  const timer = setInterval(tick, intervalMs);
  timer.unref();
  return timer;
}
