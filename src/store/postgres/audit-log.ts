/**
 * The audit trail in PostgreSQL, for several controllers sharing one database: the same sink, query,
 * prune, stats and onAppend contract as the JSON-lines AuditLog (../../audit/audit-log.ts), kept in the
 * `audit_events` table (migrations 0001 and 0003).
 *
 * Order: every event gets a `seq` from the table's sequence, and the trail is read in seq order. A reader
 * that follows the trail by seq (webhook delivery, ./audit-webhooks.ts) must never see seq 11 committed
 * while seq 10 is still in flight on another controller, or it would pass 10 over for good. So each write
 * takes a transaction-scoped advisory lock before it draws its seqs and holds it until it commits: seqs
 * become visible in order, across controllers. Records that arrive while a write is in flight wait in a
 * queue and go out together in one INSERT (group commit), so the lock is taken once per batch, not per event.
 *
 * Append-only: a trigger refuses UPDATE on the table; rows only leave by retention (prune), which keeps
 * what a webhook has not delivered yet (`addHold`). Each write announces itself with NOTIFY on commit, so
 * `onAppend` listeners on every controller hear of events recorded on any of them.
 */
import { EventEmitter } from 'node:events';
import { randomUUID } from 'node:crypto';
import { SwarmError, invalidInput } from '../../errors.js';
import { silentLogger, type Logger } from '../../logger.js';
import {
  DEFAULT_QUERY_LIMIT,
  MAX_QUERY_LIMIT,
  buildAuditEvent,
  type AuditConfig,
  type AuditEvent,
  type AuditEventInput,
  type AuditQuery,
  type AuditSink,
  type AuditStats,
} from '../../audit/audit-log.js';
import { migrate } from './migrations.js';
import { ChangeListener, notifyChange } from './notify.js';
import type { Queryable, StorePool } from './pool.js';

export const AUDIT_CHANNEL = 'swarm_audit';
/** The advisory lock key that puts audit writes (and so their seqs) in commit order ("vss-audt" as 8 bytes). */
export const AUDIT_LOCK_KEY = '8535292357543027828';
const DAY_MS = 86_400_000;

/**
 * What the controller, the doors and the tools use of an audit trail, whichever store keeps it: the
 * JSON-lines AuditLog and PgAuditLog both satisfy it.
 */
export interface AuditTrail extends AuditSink {
  open(): Promise<void>;
  close(): Promise<void>;
  query(q?: AuditQuery): Promise<AuditEvent[]>;
  /** Removes what is past retention; answers the days (files for AuditLog) removed. */
  prune(): Promise<string[]>;
  stats(): AuditStats;
  onAppend(listener: () => void): () => void;
}

/** One stored event with its place in the trail. */
export interface SequencedEvent {
  seq: number;
  event: AuditEvent;
}

export interface PgAuditLogOptions {
  pool: StorePool;
  config: AuditConfig;
  /** Shared with other stores on the same pool; made (and closed with the log) when absent. */
  listener?: ChangeListener;
  logger?: Logger;
  now?: () => Date;
  /** Apply the schema migrations at the start of open() (for a log made before anything connects). */
  migrateOnOpen?: boolean;
  /** Close the pool with the log (default false: the pool is the caller's). */
  ownsPool?: boolean;
}

interface Pending {
  event: AuditEvent;
  resolve: (event: AuditEvent) => void;
  reject: (err: Error) => void;
}

/** What a write announces: the newest seq it committed, and which controller wrote it. */
interface AuditAppend {
  seq: string;
  origin: string;
}

const INSERT_EVENTS = `
  INSERT INTO audit_events (at, actor, action, subject, outcome, event_id, type, owner, data)
  SELECT (e->>'time')::timestamptz, e->'actor'->>'id', e->>'action', e->>'subject', e->>'outcome', e->>'id', e->>'type', e->>'owner', e
  FROM jsonb_array_elements($1::jsonb) WITH ORDINALITY AS t(e, n)
  ORDER BY n`;

export class PgAuditLog implements AuditTrail {
  /** The connections the trail uses; webhook delivery claims its cursor rows through them too. */
  readonly pool: StorePool;
  private readonly config: AuditConfig;
  private readonly listener: ChangeListener;
  private readonly ownsListener: boolean;
  private readonly ownsPool: boolean;
  private migrateOnOpen: boolean;
  private readonly logger: Logger;
  private readonly now: () => Date;
  /** Tells this controller's own announcements from the others' (it already woke its listeners). */
  private readonly origin = randomUUID();
  private readonly holds = new Set<() => number[] | Promise<number[]>>();
  private readonly appended = new EventEmitter();
  private readonly counters: AuditStats = { events: 0, writes: 0, fsyncs: 0 };
  private queue: Pending[] = [];
  private flushing?: Promise<void>;
  private opened = false;
  private closed = false;
  private pruneTimer?: NodeJS.Timeout;
  private unsubscribe: (() => Promise<void>)[] = [];

  constructor(options: PgAuditLogOptions) {
    this.pool = options.pool;
    this.config = options.config;
    this.logger = (options.logger ?? silentLogger()).child({ component: 'pg-audit-log' });
    this.now = options.now ?? (() => new Date());
    this.ownsListener = !options.listener;
    this.ownsPool = options.ownsPool ?? false;
    this.migrateOnOpen = options.migrateOnOpen ?? false;
    this.listener = options.listener ?? new ChangeListener({ pool: this.pool, ...(options.logger ? { logger: options.logger } : {}) });
    this.appended.setMaxListeners(0);
  }

  /** Follows the other controllers' appends, prunes, and prunes again every day. */
  async open(): Promise<void> {
    if (!this.config.enabled || this.opened) return;
    if (this.migrateOnOpen) {
      await migrate(this.pool, this.logger);
      this.migrateOnOpen = false;
    }
    // After a lost connection, appends may have been missed: wake the readers so they look for themselves.
    const offState = this.listener.onConnectionChange((connected) => connected && this.appended.emit('append'));
    this.unsubscribe.push(async () => offState());
    this.unsubscribe.push(await this.listener.onChange(AUDIT_CHANNEL, (payload) => this.heard(payload)));
    this.opened = true;
    await this.prune().catch((err) => this.logger.warn({ err: (err as Error).message }, 'audit prune failed'));
    this.pruneTimer = setInterval(() => void this.prune().catch((err) => this.logger.warn({ err: (err as Error).message }, 'audit prune failed')), DAY_MS);
    this.pruneTimer.unref();
  }

  /** Resolves with the stored event once it is committed. */
  record(input: AuditEventInput): Promise<AuditEvent> {
    if (this.closed) return Promise.reject(new SwarmError('STATE_ERROR', 'the audit log is closed'));
    let event: AuditEvent;
    try {
      event = buildAuditEvent(input, this.config.source, this.now());
    } catch (err) {
      return Promise.reject(err);
    }
    if (!this.config.enabled) return Promise.resolve(event);
    if (!this.opened) return Promise.reject(new SwarmError('STATE_ERROR', 'the audit log is not open; call open() first'));
    return new Promise<AuditEvent>((resolve, reject) => {
      this.queue.push({ event, resolve, reject });
      this.kick();
    });
  }

  /** Events matching every given filter, the newest `limit` of them, in trail (seq) order. */
  async query(q: AuditQuery = {}): Promise<AuditEvent[]> {
    const { where, values, limit } = compileQuery(q);
    // Events recorded before this call are part of its answer, whether or not their recorder waited for them.
    while (this.flushing) await this.flushing.catch(() => undefined);
    values.push(limit);
    const { rows } = await this.pool.query<{ data: AuditEvent }>(
      `SELECT data FROM audit_events ${where.length ? `WHERE ${where.join(' AND ')}` : ''} ORDER BY seq DESC LIMIT $${values.length}`,
      values,
    );
    return rows.map((r) => r.data).reverse();
  }

  /** Up to `limit` events after `seq`, in order: what a follower of the trail reads next. */
  async after(seq: number, limit: number, db: Queryable = this.pool): Promise<SequencedEvent[]> {
    const { rows } = await db.query<{ seq: string; data: AuditEvent }>('SELECT seq, data FROM audit_events WHERE seq > $1 ORDER BY seq LIMIT $2', [seq, limit]);
    return rows.map((r) => ({ seq: Number(r.seq), event: r.data }));
  }

  /** The seq of the newest committed event (0 for an empty trail). */
  async lastSeq(db: Queryable = this.pool): Promise<number> {
    const { rows } = await db.query<{ seq: string }>('SELECT coalesce(max(seq), 0) AS seq FROM audit_events');
    return Number(rows[0]!.seq);
  }

  /**
   * Stores events recorded elsewhere as they are (ids and times kept), in the given order, skipping ids
   * already stored; for moving a trail between stores. Answers how many were new.
   */
  async importEvents(events: readonly AuditEvent[]): Promise<number> {
    let added = 0;
    for (let start = 0; start < events.length; start += 1_000) {
      const batch = events.slice(start, start + 1_000);
      added += await this.write(batch, 'ON CONFLICT (event_id) DO NOTHING');
    }
    if (added) this.appended.emit('append');
    return added;
  }

  /**
   * Removes events whose UTC day is more than `retentionDays` before today, except those a webhook has
   * not delivered yet (seq above the lowest held seq). Answers the days removed from.
   */
  async prune(): Promise<string[]> {
    const today = this.now().toISOString().slice(0, 10);
    const cutoff = new Date(Date.parse(`${today}T00:00:00.000Z`) - this.config.retentionDays * DAY_MS).toISOString();
    const held = (await Promise.all([...this.holds].map((hold) => hold()))).flat();
    const oldestHeld = held.length ? Math.min(...held) : null;
    const { rows } = await this.pool.query<{ day: string }>(
      `WITH gone AS (DELETE FROM audit_events WHERE at < $1 AND ($2::bigint IS NULL OR seq <= $2) RETURNING at)
       SELECT DISTINCT to_char(at AT TIME ZONE 'UTC', 'YYYY-MM-DD') AS day FROM gone ORDER BY day`,
      [cutoff, oldestHeld],
    );
    const removed = rows.map((r) => r.day);
    if (oldestHeld !== null) {
      const kept = await this.pool.query<{ n: string }>('SELECT count(*) AS n FROM audit_events WHERE at < $1 AND seq > $2', [cutoff, oldestHeld]);
      const n = Number(kept.rows[0]!.n);
      if (n > 0) this.logger.warn({ kept: n, retentionDays: this.config.retentionDays }, 'webhook delivery is behind: keeping audit events past their retention until they are delivered');
    }
    if (removed.length) this.logger.info({ days: removed }, 'pruned audit events past retention');
    return removed;
  }

  /** Adds seqs that pruning must keep every later event of; returns the removal function. */
  addHold(holds: () => number[] | Promise<number[]>): () => void {
    this.holds.add(holds);
    return () => this.holds.delete(holds);
  }

  /** Calls `listener` after each committed write, on this controller or another; returns the unsubscribe. */
  onAppend(listener: () => void): () => void {
    this.appended.on('append', listener);
    return () => this.appended.off('append', listener);
  }

  stats(): AuditStats {
    return { ...this.counters };
  }

  /** Writes what is queued, stops the timer and the announcements. Later records fail. */
  async close(): Promise<void> {
    this.closed = true;
    clearInterval(this.pruneTimer);
    this.pruneTimer = undefined;
    while (this.flushing) await this.flushing.catch(() => undefined);
    for (const off of this.unsubscribe.splice(0)) await off().catch(() => undefined);
    if (this.ownsListener) await this.listener.close();
    if (this.ownsPool) await this.pool.close();
  }

  private heard(payload: unknown): void {
    const change = payload as Partial<AuditAppend> | undefined;
    if (change?.origin !== this.origin) this.appended.emit('append');
  }

  /** Starts a flush unless one runs; waits one turn first so that the records of this turn join the batch. */
  private kick(): void {
    this.flushing ??= new Promise<void>((resolve) => setImmediate(resolve))
      .then(() => this.flush())
      .finally(() => {
        this.flushing = undefined;
        if (this.queue.length) this.kick();
      });
  }

  private async flush(): Promise<void> {
    while (this.queue.length) {
      const batch = this.queue;
      this.queue = [];
      try {
        await this.write(
          batch.map((p) => p.event),
          '',
        );
        for (const p of batch) p.resolve(p.event);
        this.appended.emit('append');
      } catch (err) {
        this.logger.error({ err: (err as Error).message, events: batch.length }, 'could not write audit events');
        const failure = err instanceof SwarmError ? err : new SwarmError('STATE_ERROR', `audit log: could not write ${batch.length} event(s): ${(err as Error).message}`, { cause: err });
        for (const p of batch) p.reject(failure);
      }
    }
  }

  /** One transaction: the order lock, the INSERT, the announcement. Answers how many rows went in. */
  private async write(events: readonly AuditEvent[], onConflict: string): Promise<number> {
    const added = await this.pool.transaction(async (client) => {
      await client.query('SELECT pg_advisory_xact_lock($1::bigint)', [AUDIT_LOCK_KEY]);
      const { rows } = await client.query<{ seq: string }>(`${INSERT_EVENTS} ${onConflict} RETURNING seq`, [JSON.stringify(events)]);
      const newest = rows.reduce((max, r) => (BigInt(r.seq) > max ? BigInt(r.seq) : max), 0n);
      if (rows.length) await notifyChange(client, AUDIT_CHANNEL, { seq: newest.toString(), origin: this.origin } satisfies AuditAppend);
      return rows.length;
    });
    this.counters.events += added;
    this.counters.writes++;
    this.counters.fsyncs++;
    return added;
  }
}

/** The WHERE clauses (and their values) of a query, validated as AuditLog validates them. */
function compileQuery(q: AuditQuery): { where: string[]; values: unknown[]; limit: number } {
  const limit = q.limit ?? DEFAULT_QUERY_LIMIT;
  if (!Number.isInteger(limit) || limit < 1 || limit > MAX_QUERY_LIMIT) throw invalidInput('limit', `an integer from 1 to ${MAX_QUERY_LIMIT}`, q.limit);
  if (q.outcome !== undefined && !['ok', 'denied', 'failed'].includes(q.outcome)) throw invalidInput('outcome', "'ok', 'denied' or 'failed'", q.outcome);
  if (q.type !== undefined && (typeof q.type !== 'string' || q.type === '')) throw invalidInput('type', "an event type, or a prefix ending in '*'", q.type);
  if (q.visibleTo !== undefined && (typeof q.visibleTo.principalId !== 'string' || q.visibleTo.principalId === '')) {
    throw invalidInput('visibleTo.principalId', 'a principal id', q.visibleTo.principalId);
  }
  const where: string[] = [];
  const values: unknown[] = [];
  const add = (clause: (param: string) => string, value: unknown): void => {
    values.push(value);
    where.push(clause(`$${values.length}`));
  };
  if (q.since !== undefined) add((p) => `at >= ${p}`, new Date(parseTime('since', q.since)).toISOString());
  if (q.until !== undefined) add((p) => `at < ${p}`, new Date(parseTime('until', q.until)).toISOString());
  if (q.subject !== undefined) add((p) => `subject = ${p}`, q.subject);
  if (q.actorId !== undefined) add((p) => `actor = ${p}`, q.actorId);
  if (q.type !== undefined) {
    if (q.type.endsWith('*')) add((p) => `starts_with(type, ${p})`, q.type.slice(0, -1));
    else add((p) => `type = ${p}`, q.type);
  }
  if (q.owner !== undefined) add((p) => `owner = ${p}`, q.owner);
  if (q.outcome !== undefined) add((p) => `outcome = ${p}`, q.outcome);
  if (q.visibleTo !== undefined) add((p) => `(actor = ${p} OR owner = ${p})`, q.visibleTo.principalId);
  return { where, values, limit };
}

function parseTime(field: string, value: unknown): number {
  const ms = typeof value === 'string' ? Date.parse(value) : Number.NaN;
  if (Number.isNaN(ms)) throw invalidInput(field, 'an ISO 8601 time such as 2025-01-31T12:00:00Z', value);
  return ms;
}
