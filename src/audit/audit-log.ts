/**
 * The audit trail: every operation through every door, every denial and every action the system takes by
 * itself becomes one CloudEvents-shaped event in a durable JSON-lines log, one file per UTC day
 * (`events-YYYY-MM-DD.jsonl`, mode 0600, folder 0700). It is also the durable outbox webhook delivery
 * reads from (./webhooks.ts), so nothing is kept anywhere else.
 *
 * `record` resolves only once the event is written and fsync'ed. Records that arrive while a write is in
 * flight wait in a queue and go out together in one write and one fsync (group commit), so throughput grows
 * with the number of concurrent callers instead of being one fsync per event. The file order is the order
 * of the `record` calls. A line torn by a killed process is skipped by every reader, and the next append
 * starts on a fresh line. Requests are stored with secrets removed (`redactSecrets` of ../logger.ts).
 */
import { randomUUID } from 'node:crypto';
import { EventEmitter } from 'node:events';
import { promises as fs } from 'node:fs';
import path from 'node:path';
import { z } from 'zod';
import { SwarmError, invalidInput } from '../errors.js';
import { redactSecrets, redactString, silentLogger, type Logger } from '../logger.js';
import { syncDirectory } from '../state/atomic-file.js';

export type AuditOutcome = 'ok' | 'denied' | 'failed';

export const AUDIT_DOORS = ['mcp-stdio', 'mcp-http', 'cli', 'library', 'gateway', 'dashboard', 'agent', 'system'] as const;

export interface AuditActor {
  type: 'principal' | 'system';
  id: string;
  credentialId?: string;
  /** One of AUDIT_DOORS. */
  door: string;
}

export interface AuditEventInput {
  /** e.g. 'dev.vscode-swarm.instance.create', 'dev.vscode-swarm.token.revoke' */
  type: string;
  /** e.g. 'create_swarm_instance', 'health.recreate', 'idle.stop' */
  action: string;
  actor: AuditActor;
  outcome: AuditOutcome;
  /** The instance id (or principal/token id) acted on. */
  subject?: string;
  /** The owner principal id of the subject instance, for filtering "own events". */
  owner?: string;
  /** The error code when the outcome is denied or failed. */
  code?: string;
  reason?: string;
  /** The request, secrets removed by the caller; redacted again here. */
  request?: unknown;
}

export interface AuditEvent extends AuditEventInput {
  specversion: '1.0';
  id: string;
  source: string;
  time: string;
  datacontenttype: 'application/json';
}

export interface AuditQuery {
  /** Inclusive lower bound on `time` (ISO 8601). */
  since?: string;
  /** Exclusive upper bound on `time` (ISO 8601). */
  until?: string;
  subject?: string;
  actorId?: string;
  /** Exact, or a prefix ending in '*'. */
  type?: string;
  owner?: string;
  outcome?: AuditOutcome;
  /** How many of the newest matches to return; default 100, max 10000. */
  limit?: number;
  /** Only events whose actor.id or owner is this principal. */
  visibleTo?: { principalId: string };
}

export interface AuditSink {
  record(event: AuditEventInput): Promise<AuditEvent>;
}

/** A place in the log: a day file's name and a byte offset in it. `file: ''` is before the first file. */
export interface LogPosition {
  file: string;
  offset: number;
}

export interface AuditStats {
  events: number;
  writes: number;
  fsyncs: number;
}

const ENV_NAME = /^[A-Za-z_][A-Za-z0-9_]*$/;

export const AuditWebhookSchema = z
  .object({
    url: z
      .string()
      .url()
      .refine((url) => /^https?:$/.test(new URL(url).protocol), 'expected an http(s) URL'),
    /** The HMAC key: at least 16 characters; `whsec_<base64>` (Standard Webhooks) is decoded to its bytes. */
    secret: z.string().min(16).optional(),
    /** Or: the environment variable that holds the key, so it stays out of the config file. */
    secretEnv: z.string().regex(ENV_NAME, 'expected an environment variable name').optional(),
    /** Type prefixes (a trailing '*' is allowed); absent: every event. */
    types: z.array(z.string().min(1)).optional(),
    /** Attempts per event before it is given up with a warning; 0 retries forever. */
    maxAttempts: z.number().int().min(0).max(1_000_000).default(0),
    name: z.string().min(1).max(100).optional(),
  })
  .strict()
  .refine((hook) => hook.secret !== undefined || hook.secretEnv !== undefined, { message: 'expected secret or secretEnv', path: ['secret'] });

export const AuditConfigSchema = z
  .object({
    enabled: z.boolean().default(true),
    /** Day files older than this are removed (unless a webhook has not delivered them yet). */
    retentionDays: z.number().int().min(1).max(3_650).default(90),
    /** The CloudEvents `source` of every event. */
    source: z.string().min(1).default('urn:vscode-swarm'),
    webhooks: z.array(AuditWebhookSchema).default([]),
  })
  .strict();
export type AuditConfig = z.infer<typeof AuditConfigSchema>;
export type AuditWebhookConfig = z.infer<typeof AuditWebhookSchema>;

export const DEFAULT_QUERY_LIMIT = 100;
export const MAX_QUERY_LIMIT = 10_000;
const DAY_MS = 86_400_000;
const DAY_FILE = /^events-(\d{4}-\d{2}-\d{2})\.jsonl$/;

export function dayFileName(day: string): string {
  return `events-${day}.jsonl`;
}

/** `events-YYYY-MM-DD.jsonl` names in a folder, oldest first (the names sort by date). */
export async function listDayFiles(dir: string): Promise<string[]> {
  try {
    return (await fs.readdir(dir)).filter((name) => DAY_FILE.test(name)).sort();
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return [];
    throw err;
  }
}

/** A type filter: `pattern` exact, or a prefix when it ends in '*' (or always, with `prefix`). */
export function matchesType(type: string, pattern: string, prefix = false): boolean {
  if (pattern.endsWith('*')) return type.startsWith(pattern.slice(0, -1));
  return prefix ? type.startsWith(pattern) : type === pattern;
}

/** The full event for an input, validated; shared by the log and the no-op sink. */
export function buildAuditEvent(input: AuditEventInput, source: string, now: Date): AuditEvent {
  validateInput(input);
  const { actor } = input;
  const event: AuditEvent = {
    specversion: '1.0',
    id: randomUUID(),
    source,
    type: input.type,
    time: now.toISOString(),
    datacontenttype: 'application/json',
    action: input.action,
    actor: { type: actor.type, id: actor.id, ...(actor.credentialId !== undefined ? { credentialId: actor.credentialId } : {}), door: actor.door },
    outcome: input.outcome,
  };
  if (input.subject !== undefined) event.subject = input.subject;
  if (input.owner !== undefined) event.owner = input.owner;
  if (input.code !== undefined) event.code = input.code;
  if (input.reason !== undefined) event.reason = redactString(input.reason);
  // Secret-looking keys, every value of an `env` map at any depth, and tokens inside strings (URL
  // parameters, bearer values, `vss_` API tokens) are redacted, whatever the caller already removed.
  if (input.request !== undefined) event.request = redactSecrets(input.request);
  return event;
}

/** Records nothing, answers a well-formed event: for library use without a state folder, and tests. */
export const noopAuditSink: AuditSink = {
  record: async (input) => buildAuditEvent(input, 'urn:vscode-swarm', new Date()),
};

function validateInput(input: AuditEventInput): void {
  const text = (field: string, value: unknown): void => {
    if (typeof value !== 'string' || value === '') throw invalidInput(`audit.${field}`, 'a non-empty string', value);
  };
  text('type', input.type);
  text('action', input.action);
  if (!input.actor || (input.actor.type !== 'principal' && input.actor.type !== 'system')) {
    throw invalidInput('audit.actor.type', "'principal' or 'system'", input.actor?.type);
  }
  text('actor.id', input.actor.id);
  text('actor.door', input.actor.door);
  if (input.outcome !== 'ok' && input.outcome !== 'denied' && input.outcome !== 'failed') {
    throw invalidInput('audit.outcome', "'ok', 'denied' or 'failed'", input.outcome);
  }
  for (const field of ['subject', 'owner', 'code', 'reason'] as const) {
    if (input[field] !== undefined && typeof input[field] !== 'string') throw invalidInput(`audit.${field}`, 'a string', input[field]);
  }
}

export interface AuditLogOptions {
  /** `<stateDir>/audit` */
  dir: string;
  config: AuditConfig;
  logger?: Logger;
  now?: () => Date;
  /** Day files that must survive pruning, each with every later file ('' keeps them all); see `addHold`. */
  holds?: () => string[] | Promise<string[]>;
}

interface Pending {
  event: AuditEvent;
  line: string;
  resolve: (event: AuditEvent) => void;
  reject: (err: Error) => void;
}

interface OpenFile {
  name: string;
  handle: fs.FileHandle;
  size: number;
  /** The file does not end in '\n' (a torn last line): the next write starts with one. */
  needsNewline: boolean;
}

export class AuditLog implements AuditSink {
  readonly dir: string;
  private readonly config: AuditConfig;
  private readonly logger: Logger;
  private readonly now: () => Date;
  private readonly holds = new Set<() => string[] | Promise<string[]>>();
  private readonly appended = new EventEmitter();
  private queue: Pending[] = [];
  private flushing?: Promise<void>;
  private file?: OpenFile;
  /** The newest day file written to; appends never go back to an older file, so readers never miss one. */
  private lastFile = '';
  private tail?: LogPosition;
  private pruneTimer?: NodeJS.Timeout;
  private closed = false;
  private readonly counters: AuditStats = { events: 0, writes: 0, fsyncs: 0 };

  constructor(opts: AuditLogOptions) {
    this.dir = opts.dir;
    this.config = opts.config;
    this.logger = (opts.logger ?? silentLogger()).child({ component: 'audit-log' });
    this.now = opts.now ?? (() => new Date());
    if (opts.holds) this.holds.add(opts.holds);
    this.appended.setMaxListeners(0);
  }

  /** Makes the folder, finds the end of the log, prunes, and prunes again every day. */
  async open(): Promise<void> {
    if (!this.config.enabled) return;
    await fs.mkdir(this.dir, { recursive: true, mode: 0o700 });
    await fs.chmod(this.dir, 0o700);
    const files = await listDayFiles(this.dir);
    const newest = files.at(-1);
    this.lastFile = newest ?? '';
    this.tail = { file: this.lastFile, offset: newest ? (await fs.stat(path.join(this.dir, newest))).size : 0 };
    await this.prune().catch((err) => this.logger.warn({ err: (err as Error).message }, 'audit prune failed'));
    this.pruneTimer = setInterval(() => void this.prune().catch((err) => this.logger.warn({ err: (err as Error).message }, 'audit prune failed')), DAY_MS);
    this.pruneTimer.unref();
  }

  /** Resolves with the stored event once it is durable (written and fsync'ed). */
  record(input: AuditEventInput): Promise<AuditEvent> {
    if (this.closed) return Promise.reject(new SwarmError('STATE_ERROR', 'the audit log is closed'));
    let event: AuditEvent;
    try {
      event = buildAuditEvent(input, this.config.source, this.now());
    } catch (err) {
      return Promise.reject(err);
    }
    if (!this.config.enabled) return Promise.resolve(event);
    if (!this.tail) return Promise.reject(new SwarmError('STATE_ERROR', 'the audit log is not open; call open() first'));
    const line = `${JSON.stringify(event)}\n`;
    return new Promise<AuditEvent>((resolve, reject) => {
      this.queue.push({ event, line, resolve, reject });
      this.kick();
    });
  }

  /** Events matching every given filter, the newest `limit` of them, in log (time) order. Never throws on a corrupt line. */
  async query(q: AuditQuery = {}): Promise<AuditEvent[]> {
    const filter = compileQuery(q);
    // Events recorded before this call are part of its answer, whether or not their recorder waited for them.
    while (this.flushing) await this.flushing.catch(() => undefined);
    const files = (await listDayFiles(this.dir)).filter((name) => {
      const day = DAY_FILE.exec(name)![1]!;
      // A day file may hold a few events stamped the day before (appends never go back to an older file).
      return (filter.sinceDay === undefined || day >= filter.sinceDay) && (filter.untilDay === undefined || day <= filter.untilDay);
    });
    const newestFirst: AuditEvent[] = [];
    for (let i = files.length - 1; i >= 0 && newestFirst.length < filter.limit; i--) {
      const lines = (await readIfExists(path.join(this.dir, files[i]!))).split('\n');
      for (let j = lines.length - 1; j >= 0 && newestFirst.length < filter.limit; j--) {
        const event = parseEventLine(lines[j]!);
        if (event && filter.matches(event)) newestFirst.push(event);
      }
    }
    return newestFirst.reverse();
  }

  /**
   * Removes day files older than `retentionDays` (a file for day D goes once D is more than that many days
   * before today, UTC), except the file a webhook cursor still points into and every file after it.
   */
  async prune(): Promise<string[]> {
    const today = this.now().toISOString().slice(0, 10);
    const cutoff = new Date(Date.parse(`${today}T00:00:00.000Z`) - this.config.retentionDays * DAY_MS).toISOString().slice(0, 10);
    const expired = (await listDayFiles(this.dir)).filter((name) => DAY_FILE.exec(name)![1]! < cutoff);
    if (expired.length === 0) return [];
    const held = (await Promise.all([...this.holds].map((hold) => hold()))).flat();
    const oldestHeld = held.length ? held.reduce((a, b) => (a < b ? a : b)) : undefined;
    const removed: string[] = [];
    const kept: string[] = [];
    for (const name of expired) {
      if (oldestHeld !== undefined && name >= oldestHeld) kept.push(name);
      else {
        await fs.rm(path.join(this.dir, name), { force: true });
        removed.push(name);
      }
    }
    if (kept.length) {
      this.logger.warn({ kept, retentionDays: this.config.retentionDays }, 'webhook delivery is behind: keeping audit day files past their retention until they are delivered');
    }
    if (removed.length) this.logger.info({ removed }, 'pruned audit day files past retention');
    return removed;
  }

  /** Flushes what is queued, stops the timer and closes the file. Later records fail. */
  async close(): Promise<void> {
    this.closed = true;
    clearInterval(this.pruneTimer);
    this.pruneTimer = undefined;
    while (this.flushing) await this.flushing;
    const file = this.file;
    this.file = undefined;
    await file?.handle.close();
  }

  stats(): AuditStats {
    return { ...this.counters };
  }

  /** Where the durable log ends now; `undefined` before `open`. */
  end(): LogPosition | undefined {
    return this.tail ? { ...this.tail } : undefined;
  }

  /** Calls `listener` after each durable write; returns the unsubscribe function. */
  onAppend(listener: () => void): () => void {
    this.appended.on('append', listener);
    return () => this.appended.off('append', listener);
  }

  /** Adds day files that pruning must keep, with every later file ('' keeps them all); returns the removal function. */
  addHold(holds: () => string[] | Promise<string[]>): () => void {
    this.holds.add(holds);
    return () => this.holds.delete(holds);
  }

  /**
   * Starts a flush unless one runs. It waits one turn of the event loop first, so that every record of
   * this turn (callers woken by the last batch, say) joins the batch instead of the first going alone.
   */
  private kick(): void {
    this.flushing ??= new Promise<void>((resolve) => setImmediate(resolve)).then(() => this.flush()).finally(() => {
      this.flushing = undefined;
      if (this.queue.length) this.kick();
    });
  }

  /** Writes what is queued, batch after batch: one write and one fsync per batch (per day file). */
  private async flush(): Promise<void> {
    while (this.queue.length) {
      const batch = this.queue;
      this.queue = [];
      let start = 0;
      while (start < batch.length) {
        const name = this.fileFor(batch[start]!.event);
        let stop = start + 1;
        while (stop < batch.length && this.fileFor(batch[stop]!.event) === name) stop++;
        const group = batch.slice(start, stop);
        try {
          await this.append(name, group.map((p) => p.line).join(''));
          this.counters.events += group.length;
          for (const p of group) p.resolve(p.event);
          this.appended.emit('append');
        } catch (err) {
          this.logger.error({ err: (err as Error).message, events: group.length }, 'could not write audit events');
          const failure = new SwarmError('STATE_ERROR', `audit log: could not write ${name}: ${(err as Error).message}`, { cause: err });
          for (const p of group) p.reject(failure);
        }
        start = stop;
      }
    }
  }

  private fileFor(event: AuditEvent): string {
    const name = dayFileName(event.time.slice(0, 10));
    if (name > this.lastFile) this.lastFile = name;
    return this.lastFile;
  }

  private async append(name: string, text: string): Promise<void> {
    const file = await this.openFile(name);
    const data = Buffer.from(file.needsNewline ? `\n${text}` : text);
    try {
      let written = 0;
      while (written < data.length) written += (await file.handle.write(data, written, data.length - written, null)).bytesWritten;
      this.counters.writes++;
      file.needsNewline = false;
      file.size += data.length;
      await file.handle.sync();
      this.counters.fsyncs++;
    } catch (err) {
      // The file may now end mid-line: reopen (and look at its last byte) before the next write.
      this.file = undefined;
      await file.handle.close().catch(() => undefined);
      throw err;
    }
    this.tail = { file: name, offset: file.size };
  }

  private async openFile(name: string): Promise<OpenFile> {
    if (this.file?.name === name) return this.file;
    const previous = this.file;
    this.file = undefined;
    await previous?.handle.close();
    const target = path.join(this.dir, name);
    const handle = await fs.open(target, 'a+', 0o600);
    try {
      const stat = await handle.stat();
      if ((stat.mode & 0o777) !== 0o600) await handle.chmod(0o600);
      let needsNewline = false;
      if (stat.size > 0) {
        const last = Buffer.alloc(1);
        await handle.read(last, 0, 1, stat.size - 1);
        needsNewline = last[0] !== 0x0a;
      } else {
        // A new file: make its folder entry durable too, or a crash could lose the file with its events.
        await syncDirectory(this.dir);
        this.counters.fsyncs++;
      }
      if (needsNewline) this.logger.warn({ file: name }, 'audit day file ends in a torn line; the next event starts on a new line');
      this.file = { name, handle, size: stat.size, needsNewline };
      return this.file;
    } catch (err) {
      await handle.close().catch(() => undefined);
      throw err;
    }
  }
}

interface CompiledQuery {
  limit: number;
  sinceDay?: string;
  untilDay?: string;
  matches(event: AuditEvent): boolean;
}

function compileQuery(q: AuditQuery): CompiledQuery {
  const since = q.since === undefined ? undefined : parseTime('since', q.since);
  const until = q.until === undefined ? undefined : parseTime('until', q.until);
  const limit = q.limit ?? DEFAULT_QUERY_LIMIT;
  if (!Number.isInteger(limit) || limit < 1 || limit > MAX_QUERY_LIMIT) throw invalidInput('limit', `an integer from 1 to ${MAX_QUERY_LIMIT}`, q.limit);
  if (q.outcome !== undefined && !['ok', 'denied', 'failed'].includes(q.outcome)) throw invalidInput('outcome', "'ok', 'denied' or 'failed'", q.outcome);
  if (q.type !== undefined && (typeof q.type !== 'string' || q.type === '')) throw invalidInput('type', "an event type, or a prefix ending in '*'", q.type);
  if (q.visibleTo !== undefined && (typeof q.visibleTo.principalId !== 'string' || q.visibleTo.principalId === '')) {
    throw invalidInput('visibleTo.principalId', 'a principal id', q.visibleTo.principalId);
  }
  const viewer = q.visibleTo?.principalId;
  return {
    limit,
    ...(since !== undefined ? { sinceDay: new Date(since).toISOString().slice(0, 10) } : {}),
    // Events stamped on the until day may sit in the next day's file.
    ...(until !== undefined ? { untilDay: new Date(until + DAY_MS).toISOString().slice(0, 10) } : {}),
    matches: (e) => {
      const time = Date.parse(e.time);
      return (
        (since === undefined || time >= since) &&
        (until === undefined || time < until) &&
        (q.subject === undefined || e.subject === q.subject) &&
        (q.actorId === undefined || e.actor?.id === q.actorId) &&
        (q.type === undefined || matchesType(e.type, q.type)) &&
        (q.owner === undefined || e.owner === q.owner) &&
        (q.outcome === undefined || e.outcome === q.outcome) &&
        (viewer === undefined || e.actor?.id === viewer || e.owner === viewer)
      );
    },
  };
}

function parseTime(field: string, value: unknown): number {
  const ms = typeof value === 'string' ? Date.parse(value) : Number.NaN;
  if (Number.isNaN(ms)) throw invalidInput(field, 'an ISO 8601 time such as 2025-01-31T12:00:00Z', value);
  return ms;
}

/** One stored event, or undefined for a blank, torn or foreign line. */
export function parseEventLine(line: string): AuditEvent | undefined {
  if (line.trim() === '') return undefined;
  try {
    const value = JSON.parse(line) as unknown;
    if (!value || typeof value !== 'object' || Array.isArray(value)) return undefined;
    const e = value as Partial<AuditEvent>;
    if (typeof e.id !== 'string' || typeof e.type !== 'string' || typeof e.time !== 'string' || Number.isNaN(Date.parse(e.time))) return undefined;
    return e as AuditEvent;
  } catch {
    return undefined;
  }
}

async function readIfExists(file: string): Promise<string> {
  try {
    return await fs.readFile(file, 'utf8');
  } catch (err) {
    // Pruned between the listing and the read.
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return '';
    throw err;
  }
}
