/**
 * Leadership through PostgreSQL for work that must run on one controller at a time (health sweeps, idle
 * checks, warm refill, reconcile): a row in `leases` names the holder and an expiry on the database's
 * clock. A holder renews before the expiry; one that stops renewing (dead, paused, cut off) loses the
 * lease to the next contender once it expires.
 *
 * Every new acquisition raises the lease's fencing token by one (a release expires the row and keeps the
 * token, so it never goes back). Expiry alone cannot stop a paused process that wakes up believing it
 * still leads, so writes made on the lease's authority check the token in the same transaction
 * (assertFencing, or fencedTransaction): a stale holder's write is refused by the database itself.
 */
import { randomBytes } from 'node:crypto';
import os from 'node:os';
import { performance } from 'node:perf_hooks';
import { SwarmError, invalidInput } from '../../errors.js';
import { silentLogger, type Logger } from '../../logger.js';
import type { Queryable, StorePool } from './pool.js';

export interface LeaderLeaseOptions {
  pool: StorePool;
  /** What the lease is for: `health-sweep`, `reconcile`, … */
  name: string;
  /** Who holds it; unique per process by default (host, pid, random). */
  holder?: string;
  /** How long an acquisition or a renewal lasts (default 15 s); renew well within it. */
  ttlMs?: number;
  logger?: Logger;
}

const LEASE_NAME = /^[a-z0-9][a-z0-9:._-]{0,127}$/;

export class LeaderLease {
  readonly name: string;
  readonly holder: string;
  readonly ttlMs: number;
  private readonly pool: StorePool;
  private readonly logger: Logger;
  private token?: string;
  /** performance.now() after which this process no longer counts itself leader, whatever the database says. */
  private deadline = 0;

  constructor(options: LeaderLeaseOptions) {
    if (!LEASE_NAME.test(options.name)) throw invalidInput('lease.name', 'a lease name of 1-128 characters a-z, 0-9, ":", ".", "_" and "-"', options.name);
    const ttlMs = options.ttlMs ?? 15_000;
    if (!Number.isInteger(ttlMs) || ttlMs < 100) throw invalidInput('lease.ttlMs', 'a whole number of milliseconds, at least 100', ttlMs);
    this.name = options.name;
    this.holder = options.holder ?? `${os.hostname()}:${process.pid}:${randomBytes(4).toString('hex')}`;
    this.ttlMs = ttlMs;
    this.pool = options.pool;
    this.logger = (options.logger ?? silentLogger()).child({ component: 'leader-lease', lease: options.name });
  }

  /**
   * True while this process holds the lease by its own clock: the local deadline is counted from before the
   * request was sent, so it passes no later than the database's expiry.
   */
  get isLeader(): boolean {
    return this.token !== undefined && performance.now() < this.deadline;
  }

  /** The token of the last acquisition (a decimal bigint); valid for writes only while it is the lease's current token. */
  get fencingToken(): string | undefined {
    return this.token;
  }

  /** Takes the lease when it is free or expired (a new, higher fencing token), or renews it when held. */
  async tryAcquire(): Promise<boolean> {
    if (this.token !== undefined && (await this.renew())) return true;
    const started = performance.now();
    const { rows } = await this.pool.query<{ fencing_token: string }>(
      `INSERT INTO leases (name, holder, fencing_token, expires_at)
       VALUES ($1, $2, 1, clock_timestamp() + $3 * interval '1 millisecond')
       ON CONFLICT (name) DO UPDATE
         SET holder = EXCLUDED.holder, fencing_token = leases.fencing_token + 1, expires_at = EXCLUDED.expires_at
         WHERE leases.expires_at <= clock_timestamp()
       RETURNING fencing_token`,
      [this.name, this.holder, this.ttlMs],
    );
    if (!rows.length) return false;
    this.token = rows[0]!.fencing_token;
    this.deadline = started + this.ttlMs;
    this.logger.info({ holder: this.holder, fencingToken: this.token }, 'lease acquired');
    return true;
  }

  /** Extends a lease still held; false (and no longer leader) when it expired or another took it. */
  async renew(): Promise<boolean> {
    if (this.token === undefined) return false;
    const started = performance.now();
    const { rowCount } = await this.pool.query(
      `UPDATE leases SET expires_at = clock_timestamp() + $4 * interval '1 millisecond'
       WHERE name = $1 AND holder = $2 AND fencing_token = $3 AND expires_at > clock_timestamp()`,
      [this.name, this.holder, this.token, this.ttlMs],
    );
    if (rowCount) {
      this.deadline = started + this.ttlMs;
      return true;
    }
    if (this.deadline > 0) this.logger.warn({ holder: this.holder, fencingToken: this.token }, 'lease lost');
    this.deadline = 0;
    return false;
  }

  /** Gives the lease up at once (it expires now; the token is kept so the next one is higher). */
  async release(): Promise<void> {
    if (this.token === undefined) return;
    const token = this.token;
    this.deadline = 0;
    await this.pool.query(`UPDATE leases SET expires_at = '-infinity' WHERE name = $1 AND holder = $2 AND fencing_token = $3`, [this.name, this.holder, token]);
  }

  /** Runs `work` in a transaction that first checks this holder's fencing token (see assertFencing). */
  async fencedTransaction<T>(work: (client: Queryable) => Promise<T>): Promise<T> {
    const token = this.token;
    if (token === undefined) throw new SwarmError('CONFLICT', `lease ${this.name}: not held by this controller; the write was refused`);
    return this.pool.transaction(async (client) => {
      await assertFencing(client, this.name, token);
      return work(client);
    });
  }
}

/**
 * Inside a write transaction: refuses (CONFLICT) unless `token` is the lease's current fencing token and
 * the lease has not expired. The row is share-locked until the transaction ends, so no one can take the
 * lease over between this check and the commit of the writes it guards.
 */
export async function assertFencing(client: Queryable, name: string, token: string): Promise<void> {
  const { rows } = await client.query<{ fencing_token: string; live: boolean }>(
    'SELECT fencing_token, expires_at > clock_timestamp() AS live FROM leases WHERE name = $1 FOR SHARE',
    [name],
  );
  const row = rows[0];
  if (!row) throw new SwarmError('CONFLICT', `lease ${name}: no one has held it; a write with fencing token ${token} was refused`, { details: { lease: name, token } });
  if (row.fencing_token !== token) {
    throw new SwarmError(
      'CONFLICT',
      `lease ${name}: fencing token ${token} is stale (the current one is ${row.fencing_token}); this controller lost the lease and its write was refused`,
      { details: { lease: name, token, current: row.fencing_token } },
    );
  }
  if (!row.live) {
    throw new SwarmError('CONFLICT', `lease ${name}: the lease of fencing token ${token} has expired; its write was refused`, { details: { lease: name, token } });
  }
}
