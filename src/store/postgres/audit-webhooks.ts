/**
 * Audit webhooks over the PostgreSQL trail (./audit-log.ts), for several controllers sharing one database:
 * the same signed POSTs, order and retries as ../../audit/webhooks.ts, with each webhook's position (the seq
 * of the last event it delivered) in the `audit_webhook_cursors` table instead of a cursor file.
 *
 * Each event must go out once across controllers, so a controller delivers for a webhook only inside a
 * transaction that holds that webhook's cursor row (SELECT … FOR UPDATE SKIP LOCKED): the others skip the
 * hook while it is held, and the cursor advances in the same transaction as the deliveries it records.
 * Claiming the row was chosen over "deliver on the leader only" because it needs nothing else to be
 * running (it holds whether or not leadership is in use), a controller that dies mid-delivery frees the row
 * with its connection at once instead of after a lease expiry, and there is no window in which a paused
 * ex-leader and the new leader both post. An event posted just before its controller died is posted again
 * by the next one (at least once, with the same `webhook-id`, as with the file trail).
 * The row is held for at most one batch of POSTs; retries wait outside the transaction.
 */
import { createHash } from 'node:crypto';
import { setTimeout as sleep } from 'node:timers/promises';
import { isSwarmError } from '../../errors.js';
import { silentLogger, type Logger } from '../../logger.js';
import { matchesType, type AuditConfig, type AuditWebhookConfig } from '../../audit/audit-log.js';
import { describeHook, postWebhookEvent, webhookSecret } from '../../audit/webhooks.js';
import { waitUntil } from '../../timing/wait-until.js';
import type { PgAuditLog } from './audit-log.js';
import type { Queryable, StorePool } from './pool.js';

export interface PgWebhookDeliveryOptions {
  log: PgAuditLog;
  pool: StorePool;
  webhooks: AuditConfig['webhooks'];
  logger?: Logger;
  fetch?: typeof fetch;
  /** Backoff between attempts of one event: base·2^(n-1), at most max, with jitter. Default 1 s .. 60 s. */
  retry?: { baseMs: number; maxMs: number };
  env?: NodeJS.ProcessEnv;
  /** The backstop poll (also how soon a hook another controller let go of is picked up); default 5 s. */
  pollMs?: number;
  requestTimeoutMs?: number;
  /** Events read per claim of a cursor row (default 100). */
  batch?: number;
}

export interface PgWebhookStatus {
  name: string;
  /** Deliveries by this controller. */
  delivered: number;
  failedAttempts: number;
}

/** The cursor row's key: the URL's hash, so URL credentials stay out of the database. */
export function webhookKey(url: string): string {
  return createHash('sha256').update(url).digest('hex');
}

type Step = 'progress' | 'idle' | 'busy' | 'failing';

export class PgWebhookDelivery {
  private readonly workers: PgWebhookWorker[];
  private readonly stop = new AbortController();
  private readonly releaseHold: () => void;
  private unsubscribe?: () => void;
  private poller?: NodeJS.Timeout;

  constructor(private readonly opts: PgWebhookDeliveryOptions) {
    const logger = (opts.logger ?? silentLogger()).child({ component: 'audit-webhooks' });
    this.workers = opts.webhooks.map(
      (hook, index) =>
        new PgWebhookWorker({
          hook,
          key: webhookKey(hook.url),
          secret: webhookSecret(hook, index, opts.env),
          opts,
          logger: logger.child({ webhook: describeHook(hook) }),
          signal: this.stop.signal,
        }),
    );
    // Registered before the log's first prune: nothing a cursor has not passed goes.
    const keys = this.workers.map((w) => w.key);
    this.releaseHold = opts.log.addHold(async () => {
      if (keys.length === 0) return [];
      const { rows } = await opts.pool.query<{ seq: string }>('SELECT seq FROM audit_webhook_cursors WHERE hook = ANY($1)', [keys]);
      return rows.map((r) => Number(r.seq));
    });
  }

  /** Makes the missing cursor rows (at the end of the trail as it is now) and starts a worker per webhook. */
  async start(): Promise<void> {
    if (this.unsubscribe || this.workers.length === 0) return;
    for (const worker of this.workers) {
      await this.opts.pool.query(
        `INSERT INTO audit_webhook_cursors (hook, name, seq) VALUES ($1, $2, (SELECT coalesce(max(seq), 0) FROM audit_events)) ON CONFLICT (hook) DO NOTHING`,
        [worker.key, worker.name],
      );
    }
    this.unsubscribe = this.opts.log.onAppend(() => this.wakeAll());
    this.poller = setInterval(() => this.wakeAll(), this.opts.pollMs ?? 5_000);
    this.poller.unref();
    for (const worker of this.workers) worker.start();
  }

  async close(): Promise<void> {
    this.stop.abort();
    this.unsubscribe?.();
    clearInterval(this.poller);
    this.wakeAll();
    await Promise.all(this.workers.map((w) => w.stopped()));
    this.releaseHold();
  }

  /** True once every webhook's cursor (whoever advanced it) is at the end of the trail; false after `timeoutMs`. */
  async drain(timeoutMs: number): Promise<boolean> {
    const keys = this.workers.map((w) => w.key);
    try {
      await waitUntil(
        async () => {
          const end = await this.opts.log.lastSeq();
          const { rows } = await this.opts.pool.query<{ seq: string }>('SELECT seq FROM audit_webhook_cursors WHERE hook = ANY($1)', [keys]);
          return rows.length === keys.length && rows.every((r) => Number(r.seq) >= end) ? true : undefined;
        },
        { timeoutMs, intervalMs: 20, what: 'audit webhook delivery' },
      );
      return true;
    } catch (err) {
      if (isSwarmError(err, 'TIMEOUT')) return false;
      throw err;
    }
  }

  status(): PgWebhookStatus[] {
    return this.workers.map((w) => w.status());
  }

  private wakeAll(): void {
    for (const worker of this.workers) worker.wake();
  }
}

interface WorkerOptions {
  hook: AuditWebhookConfig;
  key: string;
  secret: string;
  opts: PgWebhookDeliveryOptions;
  logger: Logger;
  signal: AbortSignal;
}

class PgWebhookWorker {
  readonly key: string;
  readonly name: string;
  private running?: Promise<void>;
  private woken = false;
  private wakeUp?: () => void;
  private delivered = 0;
  /** Failed attempts at the event `failingId`. */
  private failedAttempts = 0;
  private failingId?: string;

  constructor(private readonly o: WorkerOptions) {
    this.key = o.key;
    this.name = describeHook(o.hook);
  }

  start(): void {
    this.running = this.run().catch((err) => this.o.logger.error({ err: (err as Error).message }, 'audit webhook worker stopped on an error'));
  }

  stopped(): Promise<void> {
    return this.running ?? Promise.resolve();
  }

  wake(): void {
    this.woken = true;
    this.wakeUp?.();
  }

  status(): PgWebhookStatus {
    return { name: this.name, delivered: this.delivered, failedAttempts: this.failedAttempts };
  }

  private async run(): Promise<void> {
    const { retry = { baseMs: 1_000, maxMs: 60_000 } } = this.o.opts;
    while (!this.o.signal.aborted) {
      this.woken = false;
      let step: Step;
      try {
        step = await this.o.opts.pool.transaction((client) => this.step(client));
      } catch (err) {
        this.o.logger.warn({ err: (err as Error).message }, 'audit webhook worker could not read the trail or save its cursor; retrying');
        step = 'failing';
      }
      if (step === 'progress') continue;
      if (step === 'failing') {
        const ceiling = Math.min(retry.maxMs, retry.baseMs * 2 ** Math.min(Math.max(this.failedAttempts, 1) - 1, 30));
        await sleep(ceiling / 2 + Math.random() * (ceiling / 2), undefined, { signal: this.o.signal }).catch(() => undefined);
        continue;
      }
      // Idle, or another controller holds the hook: wait for an append or the poll.
      if (!this.woken && !this.o.signal.aborted) await new Promise<void>((resolve) => (this.wakeUp = resolve));
      this.wakeUp = undefined;
    }
  }

  /** Inside a transaction: claim the hook, deliver what follows its cursor, advance the cursor. */
  private async step(client: Queryable): Promise<Step> {
    const claimed = await client.query<{ seq: string }>('SELECT seq FROM audit_webhook_cursors WHERE hook = $1 FOR UPDATE SKIP LOCKED', [this.key]);
    if (claimed.rows.length === 0) return 'busy';
    let seq = Number(claimed.rows[0]!.seq);
    const events = await this.o.opts.log.after(seq, this.o.opts.batch ?? 100, client);
    if (events.length === 0) return 'idle';
    let delivered = 0;
    let outcome: Step = 'progress';
    for (const { seq: next, event } of events) {
      if (this.o.signal.aborted) break;
      if (this.wanted(event.type)) {
        const result = await this.post(event.id, JSON.stringify(event));
        if (!result.ok && !this.giveUp(event.id, result.problem)) {
          outcome = 'failing';
          break;
        }
        if (result.ok) {
          if (this.failedAttempts > 0) this.o.logger.info({ eventId: event.id }, 'audit webhook delivering again');
          delivered++;
        }
        this.failedAttempts = 0;
        this.failingId = undefined;
      }
      seq = next;
    }
    await client.query('UPDATE audit_webhook_cursors SET seq = $2, delivered = delivered + $3, updated_at = now() WHERE hook = $1', [this.key, seq, delivered]);
    this.delivered += delivered;
    return outcome;
  }

  /** Counts a failed attempt; true when the hook's maxAttempts is reached and the event is passed over. */
  private giveUp(id: string, problem: string): boolean {
    if (this.failingId !== id) {
      this.failingId = id;
      this.failedAttempts = 0;
    }
    this.failedAttempts++;
    const { maxAttempts } = this.o.hook;
    if (maxAttempts > 0 && this.failedAttempts >= maxAttempts) {
      this.o.logger.warn({ eventId: id, attempts: this.failedAttempts, last: problem }, 'audit webhook gave up on an event after maxAttempts');
      return true;
    }
    if (this.failedAttempts === 1 || this.failedAttempts % 10 === 0) {
      this.o.logger.warn({ eventId: id, attempts: this.failedAttempts, last: problem }, 'audit webhook delivery failing; retrying');
    }
    return false;
  }

  private wanted(type: string): boolean {
    const { types } = this.o.hook;
    return !types || types.some((prefix) => matchesType(type, prefix, true));
  }

  private post(id: string, body: string): Promise<{ ok: true } | { ok: false; problem: string }> {
    const { fetch: fetchFn = fetch, requestTimeoutMs = 10_000 } = this.o.opts;
    return postWebhookEvent({ fetch: fetchFn, url: this.o.hook.url, secret: this.o.secret, id, body, signal: this.o.signal, timeoutMs: requestTimeoutMs });
  }
}
