/**
 * Audit webhooks: every event of the audit log POSTed to each configured receiver, in log order, at least
 * once, signed the Standard Webhooks way (https://www.standardwebhooks.com/): headers `webhook-id` (the
 * event id, stable across retries, so receivers can drop duplicates), `webhook-timestamp` (unix seconds of
 * the attempt) and `webhook-signature: v1,<base64 HMAC-SHA256 of "<id>.<timestamp>.<body>">`.
 *
 * The durable outbox is the audit log itself: each webhook only keeps a cursor file
 * `<dir>/webhooks/<sha256(url)[0..16]>.cursor.json` = `{ url, file, offset, delivered }`, written atomically
 * after each delivery. A worker per webhook reads the events after its cursor across the day files, and
 * retries a failing event with exponential backoff and jitter without ever skipping it (unless the hook's
 * `maxAttempts` is reached). The log wakes the workers on each append, with a slow poll as a backstop.
 * A new webhook starts at the end of the log as it is when first started; a restart resumes at the cursor.
 * The log keeps the day files a cursor still points into past their retention (`AuditLog.addHold`).
 * HMAC keys never reach a log line or an error.
 */
import { createHash, createHmac, timingSafeEqual } from 'node:crypto';
import { promises as fs } from 'node:fs';
import path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { SwarmError, invalidInput, isSwarmError } from '../errors.js';
import { silentLogger, type Logger } from '../logger.js';
import { writeJsonAtomic } from '../state/atomic-file.js';
import { waitUntil } from '../timing/wait-until.js';
import { listDayFiles, matchesType, parseEventLine, type AuditConfig, type AuditLog, type AuditWebhookConfig, type LogPosition } from './audit-log.js';

export interface WebhookDeliveryOptions {
  log: AuditLog;
  /** Usually the audit folder; cursors go in `<dir>/webhooks`. */
  dir: string;
  webhooks: AuditConfig['webhooks'];
  logger?: Logger;
  fetch?: typeof fetch;
  /** Backoff between attempts of one event: base·2^(n-1), at most max, with jitter. Default 1 s .. 60 s. */
  retry?: { baseMs: number; maxMs: number };
  /** Where `secretEnv` is looked up; default process.env. */
  env?: NodeJS.ProcessEnv;
  /** The backstop poll; default 5 s. */
  pollMs?: number;
  /** One POST's time limit; default 10 s. */
  requestTimeoutMs?: number;
}

export interface WebhookCursor {
  url: string;
  /** The day file the next event is read from ('' = before the first file). */
  file: string;
  offset: number;
  delivered: number;
}

export interface WebhookStatus {
  /** The hook's name, or its URL without query or credentials. */
  name: string;
  delivered: number;
  position?: LogPosition;
  /** Attempts at the current event that have failed so far (0 when nothing is failing). */
  failedAttempts: number;
  caughtUp: boolean;
}

const DAY_FILE_OR_START = /^(|events-\d{4}-\d{2}-\d{2}\.jsonl)$/;
const CHUNK_BYTES = 256 * 1024;

/** The cursor file's name for a webhook URL. */
export function cursorFileName(url: string): string {
  return `${createHash('sha256').update(url).digest('hex').slice(0, 16)}.cursor.json`;
}

/** The HMAC key of a secret: a Standard Webhooks `whsec_<base64>` secret is its decoded bytes, any other its UTF-8. */
function hmacKey(secret: string): Buffer {
  return secret.startsWith('whsec_') ? Buffer.from(secret.slice('whsec_'.length), 'base64') : Buffer.from(secret, 'utf8');
}

/** The `webhook-signature` value: `v1,<base64 HMAC-SHA256 of "<id>.<timestamp>.<body>">`. */
export function signWebhook(secret: string, id: string, timestamp: number | string, body: string): string {
  return `v1,${createHmac('sha256', hmacKey(secret)).update(`${id}.${timestamp}.${body}`).digest('base64')}`;
}

/**
 * For receivers (and tests): whether one of the space-separated `v1,` signatures matches and the timestamp
 * is within `toleranceSeconds` (default 300) of now.
 */
export function verifyWebhookSignature(opts: {
  secret: string;
  id: string;
  timestamp: string | number;
  body: string;
  signature: string;
  toleranceSeconds?: number;
  nowSeconds?: number;
}): boolean {
  const timestamp = Number(opts.timestamp);
  if (!Number.isInteger(timestamp)) return false;
  const now = opts.nowSeconds ?? Math.floor(Date.now() / 1000);
  if (Math.abs(now - timestamp) > (opts.toleranceSeconds ?? 300)) return false;
  const expected = Buffer.from(signWebhook(opts.secret, opts.id, timestamp, opts.body));
  return opts.signature.split(' ').some((candidate) => {
    const given = Buffer.from(candidate);
    return given.length === expected.length && timingSafeEqual(given, expected);
  });
}

/** The hook's key: `secret`, else the `secretEnv` variable. The error names the field, never the value. */
export function webhookSecret(hook: AuditWebhookConfig, index: number, env: NodeJS.ProcessEnv = process.env): string {
  if (hook.secret !== undefined) return hook.secret;
  const value = hook.secretEnv === undefined ? undefined : env[hook.secretEnv];
  if (value === undefined || value.length < 16) {
    throw invalidInput(`audit.webhooks[${index}].secretEnv`, `the variable ${hook.secretEnv ?? '(none)'} to hold an HMAC key of at least 16 characters`);
  }
  return value;
}

/** A URL fit for a log line: no user info, no query. */
export function describeHook(hook: AuditWebhookConfig): string {
  if (hook.name) return hook.name;
  const url = new URL(hook.url);
  return `${url.origin}${url.pathname}`;
}

export class WebhookDelivery {
  private readonly workers: WebhookWorker[];
  private readonly logger: Logger;
  private readonly stop = new AbortController();
  private readonly releaseHold: () => void;
  private unsubscribe?: () => void;
  private poller?: NodeJS.Timeout;

  constructor(private readonly opts: WebhookDeliveryOptions) {
    this.logger = (opts.logger ?? silentLogger()).child({ component: 'audit-webhooks' });
    const cursorDir = path.join(opts.dir, 'webhooks');
    this.workers = opts.webhooks.map(
      (hook, index) =>
        new WebhookWorker({
          hook,
          secret: webhookSecret(hook, index, opts.env),
          cursorPath: path.join(cursorDir, cursorFileName(hook.url)),
          log: opts.log,
          logger: this.logger.child({ webhook: describeHook(hook) }),
          fetch: opts.fetch ?? fetch,
          retry: opts.retry ?? { baseMs: 1_000, maxMs: 60_000 },
          requestTimeoutMs: opts.requestTimeoutMs ?? 10_000,
          signal: this.stop.signal,
        }),
    );
    // Registered now, before the log's first prune, so that no day file a cursor points into goes.
    this.releaseHold = opts.log.addHold(async () => (await Promise.all(this.workers.map((w) => w.heldFile()))).filter((f): f is string => f !== undefined));
  }

  /** Starts a worker per webhook. The log must be open: a new webhook starts at its end as of now. */
  start(): void {
    if (this.unsubscribe || this.workers.length === 0) return;
    const end = this.opts.log.end();
    if (!end) throw new SwarmError('STATE_ERROR', 'audit webhooks: open the audit log before starting delivery');
    this.unsubscribe = this.opts.log.onAppend(() => this.wakeAll());
    this.poller = setInterval(() => this.wakeAll(), this.opts.pollMs ?? 5_000);
    this.poller.unref();
    for (const worker of this.workers) worker.start(end);
  }

  /** Stops the workers; an event being posted is abandoned and posted again after a restart. */
  async close(): Promise<void> {
    this.stop.abort();
    this.unsubscribe?.();
    clearInterval(this.poller);
    this.wakeAll();
    await Promise.all(this.workers.map((w) => w.stopped()));
    this.releaseHold();
  }

  /** True once every webhook has delivered (or skipped) every durable event; false after `timeoutMs`. */
  async drain(timeoutMs: number): Promise<boolean> {
    try {
      await waitUntil(async () => (this.workers.every((w) => w.caughtUp()) ? true : undefined), { timeoutMs, intervalMs: 10, what: 'audit webhook delivery' });
      return true;
    } catch (err) {
      if (isSwarmError(err, 'TIMEOUT')) return false;
      throw err;
    }
  }

  status(): WebhookStatus[] {
    return this.workers.map((w) => w.status());
  }

  private wakeAll(): void {
    for (const worker of this.workers) worker.wake();
  }
}

interface WorkerOptions {
  hook: AuditWebhookConfig;
  secret: string;
  cursorPath: string;
  log: AuditLog;
  logger: Logger;
  fetch: typeof fetch;
  retry: { baseMs: number; maxMs: number };
  requestTimeoutMs: number;
  signal: AbortSignal;
}

type Outcome = 'delivered' | 'given-up' | 'stopped';

interface Line {
  text: string;
  /** The offset just after this line. */
  end: number;
}

/** One webhook's loop: read after the cursor, post, advance, persist; sleep until woken when caught up. */
class WebhookWorker {
  private cursor?: WebhookCursor;
  /** The cursor as last written to disk: what pruning must keep. */
  private persisted?: WebhookCursor;
  private running?: Promise<void>;
  private idle = false;
  private woken = false;
  private wakeUp?: () => void;
  /** The log end the last empty read looked up to. */
  private checkedEnd?: LogPosition;
  private failedAttempts = 0;

  constructor(private readonly o: WorkerOptions) {}

  start(end: LogPosition): void {
    this.running = this.run(end).catch((err) => {
      this.o.logger.error({ err: (err as Error).message }, 'audit webhook worker stopped on an error');
    });
  }

  stopped(): Promise<void> {
    return this.running ?? Promise.resolve();
  }

  wake(): void {
    this.woken = true;
    this.wakeUp?.();
  }

  caughtUp(): boolean {
    const end = this.o.log.end();
    return this.idle && !!end && !!this.checkedEnd && this.checkedEnd.file === end.file && this.checkedEnd.offset === end.offset;
  }

  status(): WebhookStatus {
    return {
      name: describeHook(this.o.hook),
      delivered: this.cursor?.delivered ?? 0,
      ...(this.cursor ? { position: { file: this.cursor.file, offset: this.cursor.offset } } : {}),
      failedAttempts: this.failedAttempts,
      caughtUp: this.caughtUp(),
    };
  }

  /** The saved cursor's file ('' = before the first file: everything is held); none before the first start. */
  async heldFile(): Promise<string | undefined> {
    return (this.persisted ?? (await this.readCursor()))?.file;
  }

  private async run(end: LogPosition): Promise<void> {
    const saved = await this.readCursor();
    if (saved) this.cursor = saved;
    else {
      this.cursor = { url: this.o.hook.url, file: end.file, offset: end.offset, delivered: 0 };
      await this.persist();
      this.o.logger.info({ position: end }, 'new audit webhook: delivering events from the end of the log on');
    }
    while (!this.o.signal.aborted) {
      this.woken = false;
      try {
        if (await this.step()) continue;
      } catch (err) {
        // A read or cursor write failed (disk full, say): try again later, from the same place.
        this.o.logger.warn({ err: (err as Error).message }, 'audit webhook worker could not read the log or save its cursor; retrying');
        await sleep(this.o.retry.maxMs, undefined, { signal: this.o.signal }).catch(() => undefined);
        continue;
      }
      this.idle = true;
      if (!this.woken && !this.o.signal.aborted) await new Promise<void>((resolve) => (this.wakeUp = resolve));
      this.wakeUp = undefined;
      this.idle = false;
    }
  }

  /** Handles what follows the cursor; false when there was nothing to read. */
  private async step(): Promise<boolean> {
    const cursor = this.cursor!;
    const end = this.o.log.end()!;
    const files = await listDayFiles(this.o.log.dir);
    const lines = files.includes(cursor.file) ? await this.readLines(cursor, end) : [];
    if (lines.length === 0) {
      const next = files.find((name) => name > cursor.file && name <= end.file);
      if (next === undefined) {
        this.checkedEnd = end;
        return false;
      }
      cursor.file = next;
      cursor.offset = 0;
      return true;
    }
    let unsaved = false;
    for (const line of lines) {
      const event = parseEventLine(line.text);
      if (event && this.wanted(event.type)) {
        const outcome = await this.deliver(event.id, line.text);
        if (outcome === 'stopped') break;
        if (outcome === 'delivered') cursor.delivered++;
        cursor.offset = line.end;
        await this.persist();
        unsaved = false;
      } else {
        // Not for this hook, or not an event at all (a torn line): passed over, saved with the next write.
        if (!event && line.text.trim() !== '') this.o.logger.warn({ file: cursor.file, offset: cursor.offset }, 'skipping an unreadable audit line');
        cursor.offset = line.end;
        unsaved = true;
      }
    }
    if (unsaved) await this.persist();
    return true;
  }

  private wanted(type: string): boolean {
    const { types } = this.o.hook;
    return !types || types.some((prefix) => matchesType(type, prefix, true));
  }

  /**
   * The complete lines after the cursor in its file, up to the durable end of the log. A torn fragment at
   * the end of a file the log has moved past never completes: `step` passes it over for the next file.
   */
  private async readLines(cursor: WebhookCursor, end: LogPosition): Promise<Line[]> {
    let handle: fs.FileHandle;
    try {
      handle = await fs.open(path.join(this.o.log.dir, cursor.file), 'r');
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'ENOENT') return [];
      throw err;
    }
    try {
      const size = (await handle.stat()).size;
      const limit = cursor.file < end.file ? size : Math.min(size, end.offset);
      for (let want = CHUNK_BYTES; ; want *= 2) {
        const length = Math.min(want, limit - cursor.offset);
        if (length <= 0) return [];
        const buffer = Buffer.alloc(length);
        const { bytesRead } = await handle.read(buffer, 0, length, cursor.offset);
        const lastNewline = buffer.subarray(0, bytesRead).lastIndexOf(0x0a);
        if (lastNewline >= 0) return splitLines(buffer, lastNewline + 1, cursor.offset);
        if (cursor.offset + bytesRead >= limit) return [];
      }
    } finally {
      await handle.close();
    }
  }

  /** Posts one event until a 2xx, the stop signal, or `maxAttempts`. */
  private async deliver(id: string, body: string): Promise<Outcome> {
    const { hook, logger, retry, signal } = this.o;
    for (let attempt = 1; ; attempt++) {
      if (signal.aborted) return 'stopped';
      const result = await this.post(id, body);
      if (result.ok) {
        if (this.failedAttempts > 0) logger.info({ eventId: id, attempts: attempt }, 'audit webhook delivering again');
        this.failedAttempts = 0;
        return 'delivered';
      }
      if (signal.aborted) return 'stopped';
      this.failedAttempts = attempt;
      if (hook.maxAttempts > 0 && attempt >= hook.maxAttempts) {
        logger.warn({ eventId: id, attempts: attempt, last: result.problem }, 'audit webhook gave up on an event after maxAttempts');
        this.failedAttempts = 0;
        return 'given-up';
      }
      if (attempt === 1 || attempt % 10 === 0) logger.warn({ eventId: id, attempts: attempt, last: result.problem }, 'audit webhook delivery failing; retrying');
      const ceiling = Math.min(retry.maxMs, retry.baseMs * 2 ** Math.min(attempt - 1, 30));
      await sleep(ceiling / 2 + Math.random() * (ceiling / 2), undefined, { signal }).catch(() => undefined);
    }
  }

  private post(id: string, body: string): Promise<{ ok: true } | { ok: false; problem: string }> {
    return postWebhookEvent({ fetch: this.o.fetch, url: this.o.hook.url, secret: this.o.secret, id, body, signal: this.o.signal, timeoutMs: this.o.requestTimeoutMs });
  }

  private async readCursor(): Promise<WebhookCursor | undefined> {
    let text: string;
    try {
      text = await fs.readFile(this.o.cursorPath, 'utf8');
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'ENOENT') return undefined;
      throw err;
    }
    try {
      const c = JSON.parse(text) as Partial<WebhookCursor>;
      if (c.url === this.o.hook.url && typeof c.file === 'string' && DAY_FILE_OR_START.test(c.file) && isCount(c.offset) && isCount(c.delivered)) {
        return { url: c.url, file: c.file, offset: c.offset, delivered: c.delivered };
      }
    } catch {
      // Reported below.
    }
    // At least once: a cursor that cannot be read replays what the log still holds, never skips it.
    this.o.logger.warn({ cursor: this.o.cursorPath }, 'unreadable audit webhook cursor; delivering from the oldest retained event');
    return { url: this.o.hook.url, file: '', offset: 0, delivered: 0 };
  }

  private async persist(): Promise<void> {
    const cursor = { ...this.cursor! };
    await fs.mkdir(path.dirname(this.o.cursorPath), { recursive: true, mode: 0o700 });
    await writeJsonAtomic(this.o.cursorPath, cursor);
    this.persisted = cursor;
  }
}

/** One signed POST of one event (shared with the PostgreSQL trail's delivery); ok on a 2xx, else what went wrong, never the key. */
export async function postWebhookEvent(o: {
  fetch: typeof fetch;
  url: string;
  secret: string;
  id: string;
  body: string;
  signal: AbortSignal;
  timeoutMs: number;
}): Promise<{ ok: true } | { ok: false; problem: string }> {
  const timestamp = Math.floor(Date.now() / 1000);
  const signal = AbortSignal.any([o.signal, AbortSignal.timeout(o.timeoutMs)]);
  try {
    const res = await o.fetch(o.url, {
      method: 'POST',
      redirect: 'manual',
      signal,
      headers: {
        'content-type': 'application/cloudevents+json; charset=utf-8',
        'webhook-id': o.id,
        'webhook-timestamp': String(timestamp),
        'webhook-signature': signWebhook(o.secret, o.id, timestamp, o.body),
      },
      body: o.body,
    });
    await res.body?.cancel().catch(() => undefined);
    return res.status >= 200 && res.status < 300 ? { ok: true } : { ok: false, problem: `HTTP ${res.status}` };
  } catch (err) {
    const cause = (err as { cause?: { code?: unknown } }).cause;
    return { ok: false, problem: typeof cause?.code === 'string' ? cause.code : (err as Error).name };
  }
}

function isCount(value: unknown): value is number {
  return typeof value === 'number' && Number.isInteger(value) && value >= 0;
}

/** The '\n'-terminated lines of `chunk[0..length)`, without their '\n', with absolute end offsets. */
function splitLines(chunk: Buffer, length: number, base: number): Line[] {
  const lines: Line[] = [];
  for (let start = 0; start < length; ) {
    const stop = chunk.indexOf(0x0a, start) + 1;
    lines.push({ text: chunk.subarray(start, stop - 1).toString('utf8'), end: base + stop });
    start = stop;
  }
  return lines;
}
