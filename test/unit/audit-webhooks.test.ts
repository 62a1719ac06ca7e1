/**
 * Audit webhooks against real HTTP receivers on free ports, reading the real audit log: signed, in order,
 * nothing lost while the receiver is down or failing, resumed from the cursor after a restart, filtered
 * by type, and the HMAC key kept out of the logs.
 */
import { promises as fs } from 'node:fs';
import http from 'node:http';
import os from 'node:os';
import path from 'node:path';
import { PassThrough } from 'node:stream';
import { createHmac } from 'node:crypto';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { AuditConfigSchema, AuditLog, type AuditConfig, type AuditEvent, type AuditEventInput } from '../../src/audit/audit-log.js';
import { WebhookDelivery, cursorFileName, signWebhook, verifyWebhookSignature } from '../../src/audit/webhooks.js';
import { createLogger } from '../../src/logger.js';
import { waitUntil } from '../../src/timing/wait-until.js';
import { freePort } from '../helpers/ports.js';

const SECRET = 'audit-hook-hmac-key-0123456789';
const RETRY = { baseMs: 10, maxMs: 100 };

interface Delivery {
  event: AuditEvent;
  headers: http.IncomingHttpHeaders;
  body: string;
}

/** A receiver that verifies each request with its key and keeps what verified, or answers 500 / nothing. */
class Receiver {
  mode: 'ok' | 'fail' = 'ok';
  readonly received: Delivery[] = [];
  badSignatures = 0;
  failedRequests = 0;
  /** Event ids answered 500 whatever the mode. */
  readonly poison = new Set<string>();
  private server?: http.Server;

  constructor(readonly port: number, private readonly secret = SECRET) {}

  get url(): string {
    return `http://127.0.0.1:${this.port}/audit?channel=test`;
  }

  ids(): string[] {
    return this.received.map((d) => d.event.id);
  }

  async start(): Promise<void> {
    this.server = http.createServer((req, res) => {
      let body = '';
      req.setEncoding('utf8');
      req.on('data', (chunk: string) => (body += chunk));
      req.on('end', () => {
        const id = String(req.headers['webhook-id']);
        const ok = verifyWebhookSignature({ secret: this.secret, id, timestamp: String(req.headers['webhook-timestamp']), body, signature: String(req.headers['webhook-signature']) });
        if (!ok) this.badSignatures++;
        if (!ok || this.mode === 'fail' || this.poison.has(id)) {
          this.failedRequests++;
          res.writeHead(ok ? 500 : 401).end();
          return;
        }
        this.received.push({ event: JSON.parse(body) as AuditEvent, headers: req.headers, body });
        res.writeHead(204).end();
      });
    });
    await new Promise<void>((resolve) => this.server!.listen(this.port, '127.0.0.1', resolve));
  }

  /** Closed for real: connections dropped, the port refuses. */
  async stop(): Promise<void> {
    const server = this.server;
    this.server = undefined;
    if (!server) return;
    server.closeAllConnections();
    await new Promise((resolve) => server.close(resolve));
  }
}

let root: string;
let dir: string;
const cleanups: Array<() => Promise<void>> = [];

function event(i: number, type = 'dev.vscode-swarm.instance.create'): AuditEventInput {
  return { type, action: 'create_swarm_instance', actor: { type: 'principal', id: 'alice', door: 'mcp-http' }, outcome: 'ok', subject: `i-${i}` };
}

async function openLog(config: Partial<AuditConfig> = {}, now?: () => Date): Promise<AuditLog> {
  const log = new AuditLog({ dir, config: AuditConfigSchema.parse(config), ...(now ? { now } : {}) });
  await log.open();
  cleanups.push(() => log.close());
  return log;
}

async function receiver(secret = SECRET): Promise<Receiver> {
  const r = new Receiver(await freePort(), secret);
  await r.start();
  cleanups.push(() => r.stop());
  return r;
}

function hooks(list: Array<Record<string, unknown>>): AuditConfig['webhooks'] {
  return AuditConfigSchema.parse({ webhooks: list }).webhooks;
}

function delivery(log: AuditLog, webhooks: AuditConfig['webhooks'], extra: Partial<ConstructorParameters<typeof WebhookDelivery>[0]> = {}): WebhookDelivery {
  const d = new WebhookDelivery({ log, dir, webhooks, retry: RETRY, ...extra });
  cleanups.push(() => d.close());
  return d;
}

async function record(log: AuditLog, from: number, count: number, type?: string): Promise<AuditEvent[]> {
  const out: AuditEvent[] = [];
  for (let i = from; i < from + count; i++) out.push(await log.record(event(i, type)));
  return out;
}

beforeEach(async () => {
  root = await fs.mkdtemp(path.join(os.tmpdir(), 'vscode-swarm-audit-hooks-'));
  dir = path.join(root, 'audit');
});

afterEach(async () => {
  while (cleanups.length) await cleanups.pop()!();
  await fs.rm(root, { recursive: true, force: true });
});

describe('audit webhooks', () => {
  it('posts each new event signed, as CloudEvents JSON, in order, starting from the end of the log', async () => {
    const log = await openLog();
    const before = await record(log, 0, 2);
    const r = await receiver();
    const d = delivery(log, hooks([{ url: r.url, secret: SECRET }]));
    d.start();
    const events = await record(log, 2, 5);
    expect(await d.drain(10_000)).toBe(true);
    expect(r.ids()).toEqual(events.map((e) => e.id));
    expect(r.ids()).not.toContain(before[0]!.id);
    expect(r.badSignatures).toBe(0);
    const first = r.received[0]!;
    expect(first.event).toEqual(events[0]);
    expect(first.headers['content-type']).toBe('application/cloudevents+json; charset=utf-8');
    expect(first.headers['webhook-id']).toBe(events[0]!.id);
    expect(first.headers['webhook-signature']).toBe(signWebhook(SECRET, events[0]!.id, String(first.headers['webhook-timestamp']), first.body));
    const cursor = JSON.parse(await fs.readFile(path.join(dir, 'webhooks', cursorFileName(r.url)), 'utf8'));
    expect(cursor).toMatchObject({ url: r.url, delivered: 5, file: expect.stringMatching(/^events-\d{4}-\d{2}-\d{2}\.jsonl$/) });
    expect(d.status()).toEqual([expect.objectContaining({ name: `http://127.0.0.1:${r.port}/audit`, delivered: 5, failedAttempts: 0, caughtUp: true })]);
  });

  it('delivers, in order and once each, what was recorded while the receiver refused connections and then answered 500', async () => {
    const log = await openLog();
    const r = await receiver();
    const lines = new PassThrough();
    let logText = '';
    lines.on('data', (chunk: Buffer) => (logText += chunk.toString()));
    const d = delivery(log, hooks([{ url: r.url, secret: SECRET }]), { logger: createLogger('debug', lines) });
    d.start();
    const all = await record(log, 0, 2);
    expect(await d.drain(10_000)).toBe(true);

    await r.stop();
    all.push(...(await record(log, 2, 4)));
    expect(await d.drain(300)).toBe(false);

    r.mode = 'fail';
    await r.start();
    all.push(...(await record(log, 6, 3)));
    await waitUntil(async () => (r.failedRequests >= 2 ? true : undefined), { timeoutMs: 10_000, what: 'failed attempts' });
    expect(d.status()[0]!.failedAttempts).toBeGreaterThan(0);
    expect(await d.drain(200)).toBe(false);

    r.mode = 'ok';
    all.push(...(await record(log, 9, 2)));
    expect(await d.drain(10_000)).toBe(true);
    expect(r.ids()).toEqual(all.map((e) => e.id));
    expect(r.received.map((x) => x.event.subject)).toEqual(Array.from({ length: 11 }, (_, i) => `i-${i}`));
    // The failures were logged, the key was not.
    expect(logText).toContain('audit webhook delivery failing');
    expect(logText).not.toContain(SECRET);
  });

  it('resumes from its cursor after a restart, losing nothing and delivering nothing twice', async () => {
    const log = await openLog();
    const r = await receiver();
    const webhooks = hooks([{ url: r.url, secret: SECRET }]);
    const first = delivery(log, webhooks);
    first.start();
    const all = await record(log, 0, 3);
    expect(await first.drain(10_000)).toBe(true);
    await first.close();

    all.push(...(await record(log, 3, 4)));
    expect(r.received).toHaveLength(3);

    const second = delivery(log, webhooks);
    second.start();
    all.push(...(await record(log, 7, 1)));
    expect(await second.drain(10_000)).toBe(true);
    expect(r.ids()).toEqual(all.map((e) => e.id));
  });

  it('passes over torn lines left by a killed process, at the end of a finished day file and mid-file', async () => {
    let now = new Date('2025-07-01T12:00:00.000Z');
    const firstLog = await openLog({}, () => now);
    const r = await receiver();
    const webhooks = hooks([{ url: r.url, secret: SECRET }]);
    const first = delivery(firstLog, webhooks);
    first.start();
    const all = await record(firstLog, 0, 1);
    expect(await first.drain(10_000)).toBe(true);
    await first.close();
    all.push(...(await record(firstLog, 1, 1)));
    await firstLog.close();
    await fs.appendFile(path.join(dir, 'events-2025-07-01.jsonl'), '{"specversion":"1.0","id":"torn-at-the-end');

    now = new Date('2025-07-02T12:00:00.000Z');
    const log = await openLog({}, () => now);
    const second = delivery(log, webhooks);
    second.start();
    all.push(...(await record(log, 2, 1)));
    expect(await second.drain(10_000)).toBe(true);
    await second.close();
    await log.close();
    await fs.appendFile(path.join(dir, 'events-2025-07-02.jsonl'), '{"torn":');
    const reopened = await openLog({}, () => now);
    const third = delivery(reopened, webhooks);
    third.start();
    all.push(...(await record(reopened, 3, 1)));
    expect(await third.drain(10_000)).toBe(true);
    expect(r.ids()).toEqual(all.map((e) => e.id));
  });

  it('delivers only the types a hook asks for, and passes the others over', async () => {
    const log = await openLog();
    const r = await receiver();
    const d = delivery(log, hooks([{ url: r.url, secret: SECRET, types: ['dev.vscode-swarm.token.', 'dev.vscode-swarm.instance.stop*'] }]));
    d.start();
    await record(log, 0, 2);
    const revoked = await record(log, 2, 1, 'dev.vscode-swarm.token.revoke');
    await record(log, 3, 1, 'dev.vscode-swarm.instance.start');
    const stopped = await record(log, 4, 1, 'dev.vscode-swarm.instance.stop');
    await record(log, 5, 2);
    expect(await d.drain(10_000)).toBe(true);
    expect(r.ids()).toEqual([...revoked, ...stopped].map((e) => e.id));
  });

  it('gives an event up after maxAttempts and goes on with the next one', async () => {
    const log = await openLog();
    const r = await receiver();
    const d = delivery(log, hooks([{ url: r.url, secret: SECRET, maxAttempts: 3 }]));
    d.start();
    const [bad] = await record(log, 0, 1);
    r.poison.add(bad!.id);
    const [good] = await record(log, 1, 1);
    expect(await d.drain(10_000)).toBe(true);
    expect(r.failedRequests).toBe(3);
    expect(r.ids()).toEqual([good!.id]);
  });

  it('is refused by a receiver holding another key; signatures fail on a changed body or a stale timestamp', async () => {
    const log = await openLog();
    const r = await receiver('some-other-key-0123456789abcdef');
    const d = delivery(log, hooks([{ url: r.url, secret: SECRET, maxAttempts: 2 }]));
    d.start();
    await record(log, 0, 1);
    expect(await d.drain(10_000)).toBe(true);
    expect(r.badSignatures).toBe(2);
    expect(r.received).toHaveLength(0);

    const now = Math.floor(Date.now() / 1000);
    const body = '{"id":"evt-1"}';
    const signature = signWebhook(SECRET, 'evt-1', now, body);
    expect(verifyWebhookSignature({ secret: SECRET, id: 'evt-1', timestamp: now, body, signature })).toBe(true);
    expect(verifyWebhookSignature({ secret: 'wrong-key-0123456789abcdef', id: 'evt-1', timestamp: now, body, signature })).toBe(false);
    expect(verifyWebhookSignature({ secret: SECRET, id: 'evt-1', timestamp: now, body: '{"id":"evt-2"}', signature })).toBe(false);
    expect(verifyWebhookSignature({ secret: SECRET, id: 'evt-1', timestamp: now, body, signature, nowSeconds: now + 301 })).toBe(false);
    expect(verifyWebhookSignature({ secret: SECRET, id: 'evt-1', timestamp: now, body, signature: `v1,bogus ${signature}` })).toBe(true);
    // A Standard Webhooks `whsec_` secret keys the HMAC with its decoded bytes, as other implementations do.
    const key = Buffer.from('raw key bytes for the hmac 0123');
    const expected = `v1,${createHmac('sha256', key).update(`evt-1.${now}.${body}`).digest('base64')}`;
    expect(signWebhook(`whsec_${key.toString('base64')}`, 'evt-1', now, body)).toBe(expected);
  });

  it('takes the key from secretEnv, and names the variable, not a value, when it is missing', async () => {
    const log = await openLog();
    const r = await receiver();
    const webhooks = hooks([{ url: r.url, secretEnv: 'AUDIT_TEST_HOOK_KEY' }]);
    expect(() => delivery(log, webhooks, { env: {} })).toThrow(/AUDIT_TEST_HOOK_KEY/);
    const d = delivery(log, webhooks, { env: { AUDIT_TEST_HOOK_KEY: SECRET } });
    d.start();
    await record(log, 0, 1);
    expect(await d.drain(10_000)).toBe(true);
    expect(r.received).toHaveLength(1);
    expect(r.badSignatures).toBe(0);
  });

  it('keeps day files past retention while a webhook has not delivered them, and lets them go after', async () => {
    let now = new Date('2025-01-01T12:00:00.000Z');
    const log = await openLog({ retentionDays: 10 }, () => now);
    const r = await receiver();
    await r.stop();
    const d = delivery(log, hooks([{ url: r.url, secret: SECRET }]));
    d.start();
    const old = await record(log, 0, 2);
    now = new Date('2025-01-20T12:00:00.000Z');
    const recent = await record(log, 2, 1);
    expect(await log.prune()).toEqual([]);
    expect(await fs.readdir(dir)).toContain('events-2025-01-01.jsonl');

    await r.start();
    expect(await d.drain(10_000)).toBe(true);
    expect(r.ids()).toEqual([...old, ...recent].map((e) => e.id));
    expect(await log.prune()).toEqual(['events-2025-01-01.jsonl']);
  });
});
