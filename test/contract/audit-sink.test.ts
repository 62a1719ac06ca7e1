/**
 * The audit trail contract against both sinks: the JSON-lines AuditLog (a temp state directory) and
 * PgAuditLog (a real throw-away PostgreSQL, a fresh database per test). Then what only the shared store
 * has to do: an event recorded through one controller's pool reaches a live reader on another's, writes
 * from several pools come out in one seq order, prune keeps what a webhook has not delivered, and webhook
 * delivery from two controllers posts each event once.
 */
import { createServer, type Server } from 'node:http';
import { mkdtemp, rm } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { AuditConfigSchema, AuditLog, type AuditConfig, type AuditEvent, type AuditEventInput } from '../../src/audit/audit-log.js';
import { WebhookDelivery, verifyWebhookSignature } from '../../src/audit/webhooks.js';
import { isSwarmError } from '../../src/errors.js';
import { AUDIT_LOCK_KEY, PgAuditLog, PgWebhookDelivery, StorePool, auditTrailFor, auditWebhooksFor, migrate, type AuditTrail } from '../../src/store/index.js';
import { freePort } from '../helpers/ports.js';
import { startPostgres, type TestPostgres } from '../helpers/postgres.js';

const alice = { type: 'principal', id: 'alice', door: 'mcp-http' } as const;
const bob = { type: 'principal', id: 'bob', credentialId: 'tok-1', door: 'cli' } as const;
const system = { type: 'system', id: 'health-monitor', door: 'system' } as const;

function input(over: Partial<AuditEventInput> = {}): AuditEventInput {
  return { type: 'dev.vscode-swarm.instance.create', action: 'create_swarm_instance', actor: alice, outcome: 'ok', ...over };
}

/** A clock the test moves. */
function clock(start: string): { now: () => Date; set: (iso: string) => void } {
  let t = new Date(start);
  return { now: () => t, set: (iso) => (t = new Date(iso)) };
}

interface SinkFixture {
  open(config?: Partial<AuditConfig>, now?: () => Date): Promise<AuditTrail>;
  close(): Promise<void>;
}

let server: TestPostgres;
let databases = 0;
beforeAll(async () => {
  server = await startPostgres();
});
afterAll(() => server?.stop());

/** A fresh database on the shared server; its URL. */
async function freshDatabase(): Promise<string> {
  const admin = new StorePool({ databaseUrl: server.url });
  const name = `audit_${++databases}`;
  await admin.query(`CREATE DATABASE ${name}`);
  await admin.close();
  return server.url.replace(/\/postgres$/, `/${name}`);
}

function describeAuditSinkContract(name: string, fixture: () => Promise<SinkFixture>): void {
  describe(`audit sink contract: ${name}`, () => {
    let f: SinkFixture;
    afterEach(async () => {
      await f?.close();
    });

    it('records a well-formed CloudEvent, redacted, and answers it from query', async () => {
      f = await fixture();
      const log = await f.open();
      const event = await log.record(input({ subject: 'ws-1', owner: 'alice', reason: 'token vss_abcdefghijklmnopqrstuvwx leaked', request: { name: 'a', password: 'hunter2', env: { K: 'v' } } }));
      expect(event).toMatchObject({ specversion: '1.0', source: 'urn:vscode-swarm', datacontenttype: 'application/json', subject: 'ws-1', owner: 'alice' });
      expect(JSON.stringify(event)).not.toContain('hunter2');
      expect(JSON.stringify(event)).not.toContain('vss_abcdefghijklmnopqrstuvwx');
      const [stored] = await log.query();
      expect(stored).toEqual(event);
      expect(log.stats().events).toBe(1);
    });

    it('keeps the order of the record calls, even when they come all at once', async () => {
      f = await fixture();
      const log = await f.open();
      const events = await Promise.all(Array.from({ length: 40 }, (_, i) => log.record(input({ subject: `ws-${i}` }))));
      const stored = await log.query({ limit: 1_000 });
      expect(stored.map((e) => e.id)).toEqual(events.map((e) => e.id));
      expect((await log.query({ limit: 5 })).map((e) => e.subject)).toEqual(['ws-35', 'ws-36', 'ws-37', 'ws-38', 'ws-39']);
    });

    it('filters by subject, actor, type (exact and prefix), owner, outcome, visibility and time', async () => {
      const c = clock('2025-03-01T10:00:00.000Z');
      f = await fixture();
      const log = await f.open({}, c.now);
      await log.record(input({ subject: 'ws-a', owner: 'alice' }));
      c.set('2025-03-02T10:00:00.000Z');
      await log.record(input({ actor: bob, type: 'dev.vscode-swarm.instance.delete', action: 'delete_swarm_instance', subject: 'ws-a', owner: 'alice', outcome: 'denied', code: 'FORBIDDEN' }));
      c.set('2025-03-03T10:00:00.000Z');
      await log.record(input({ actor: system, type: 'dev.vscode-swarm.health.recreate', action: 'health.recreate', subject: 'ws-b', owner: 'bob', outcome: 'failed' }));
      const subjects = async (q: Parameters<AuditTrail['query']>[0]): Promise<string[]> => (await log.query(q)).map((e) => `${e.actor.id}:${e.subject}`);
      expect(await subjects({ subject: 'ws-a' })).toEqual(['alice:ws-a', 'bob:ws-a']);
      expect(await subjects({ actorId: 'bob' })).toEqual(['bob:ws-a']);
      expect(await subjects({ type: 'dev.vscode-swarm.instance.delete' })).toEqual(['bob:ws-a']);
      expect(await subjects({ type: 'dev.vscode-swarm.instance.*' })).toEqual(['alice:ws-a', 'bob:ws-a']);
      expect(await subjects({ type: 'dev.vscode-swarm.instance' })).toEqual([]);
      expect(await subjects({ owner: 'bob' })).toEqual(['health-monitor:ws-b']);
      expect(await subjects({ outcome: 'failed' })).toEqual(['health-monitor:ws-b']);
      expect(await subjects({ visibleTo: { principalId: 'bob' } })).toEqual(['bob:ws-a', 'health-monitor:ws-b']);
      expect(await subjects({ since: '2025-03-02T10:00:00.000Z' })).toEqual(['bob:ws-a', 'health-monitor:ws-b']);
      expect(await subjects({ until: '2025-03-02T10:00:00.000Z' })).toEqual(['alice:ws-a']);
      expect(await subjects({ since: '2025-03-02T00:00:00Z', until: '2025-03-03T00:00:00Z' })).toEqual(['bob:ws-a']);
    });

    it('refuses a bad query or a bad event with INVALID_INPUT naming the field', async () => {
      f = await fixture();
      const log = await f.open();
      for (const [q, field] of [
        [{ limit: 0 }, 'limit'],
        [{ limit: 10_001 }, 'limit'],
        [{ since: 'yesterday' }, 'since'],
        [{ outcome: 'maybe' }, 'outcome'],
      ] as const) {
        const err = await log.query(q as never).catch((e: unknown) => e);
        expect(isSwarmError(err, 'INVALID_INPUT'), JSON.stringify(q)).toBe(true);
        expect((err as Error).message).toContain(field);
      }
      const bad = await log.record(input({ outcome: 'meh' as never })).catch((e: unknown) => e);
      expect(isSwarmError(bad, 'INVALID_INPUT')).toBe(true);
      expect(await log.query()).toEqual([]);
    });

    it('calls onAppend listeners after each durable write, until unsubscribed', async () => {
      f = await fixture();
      const log = await f.open();
      let calls = 0;
      let seenAtCall: AuditEvent[] = [];
      const off = log.onAppend(() => {
        calls++;
        void log.query().then((events) => (seenAtCall = events));
      });
      const event = await log.record(input());
      expect(calls).toBeGreaterThanOrEqual(1);
      await expect.poll(() => seenAtCall.map((e) => e.id)).toEqual([event.id]);
      off();
      const before = calls;
      await log.record(input());
      expect(calls).toBe(before);
    });

    it('prunes events whose day is past retention and keeps the rest', async () => {
      const c = clock('2025-01-01T12:00:00.000Z');
      f = await fixture();
      const log = await f.open({ retentionDays: 10 }, c.now);
      const old = await log.record(input({ subject: 'old' }));
      c.set('2025-01-09T12:00:00.000Z');
      const recent = await log.record(input({ subject: 'recent' }));
      c.set('2025-01-12T12:00:00.000Z');
      expect((await log.prune()).length).toBe(1);
      expect((await log.query()).map((e) => e.id)).toEqual([recent.id]);
      expect(old.id).not.toBe(recent.id);
      expect(await log.prune()).toEqual([]);
    });

    it('stores nothing when disabled, and refuses records after close', async () => {
      f = await fixture();
      const off = await f.open({ enabled: false });
      const event = await off.record(input());
      expect(event.id).toBeTruthy();
      expect(await off.query()).toEqual([]);
      const on = await f.open();
      await on.close();
      const err = await on.record(input()).catch((e: unknown) => e);
      expect(isSwarmError(err, 'STATE_ERROR')).toBe(true);
    });
  });
}

describeAuditSinkContract('JSON lines (AuditLog)', async () => {
  const dir = await mkdtemp(path.join(os.tmpdir(), 'audit-contract-'));
  const logs: AuditLog[] = [];
  return {
    async open(config = {}, now) {
      const log = new AuditLog({ dir: path.join(dir, `audit-${logs.length}`), config: AuditConfigSchema.parse(config), ...(now ? { now } : {}) });
      logs.push(log);
      await log.open();
      return log;
    },
    async close() {
      for (const log of logs) await log.close();
      await rm(dir, { recursive: true, force: true });
    },
  };
});

describeAuditSinkContract('PostgreSQL (PgAuditLog)', async () => {
  const logs: PgAuditLog[] = [];
  const pools: StorePool[] = [];
  return {
    async open(config = {}, now) {
      // Each open is a fresh database, as each AuditLog above is a fresh folder.
      const pool = new StorePool({ databaseUrl: await freshDatabase() });
      pools.push(pool);
      await migrate(pool);
      const log = new PgAuditLog({ pool, config: AuditConfigSchema.parse(config), ...(now ? { now } : {}) });
      logs.push(log);
      await log.open();
      return log;
    },
    async close() {
      for (const log of logs) await log.close();
      for (const pool of pools) await pool.close();
    },
  };
});

describe('PgAuditLog shared by several controllers', () => {
  const cleanup: (() => Promise<void>)[] = [];
  afterEach(async () => {
    for (const step of cleanup.splice(0).reverse()) await step();
  });

  /** A controller's view of the trail: its own pool and listener on the shared database. */
  async function controllerOn(url: string, config: Partial<AuditConfig> = {}, now?: () => Date): Promise<PgAuditLog> {
    const pool = new StorePool({ databaseUrl: url });
    await migrate(pool);
    const log = new PgAuditLog({ pool, config: AuditConfigSchema.parse(config), ...(now ? { now } : {}) });
    await log.open();
    cleanup.push(async () => {
      await log.close();
      await pool.close();
    });
    return log;
  }

  it('an event recorded through pool A reaches a live reader on pool B', async () => {
    const url = await freshDatabase();
    const a = await controllerOn(url);
    const b = await controllerOn(url);
    const heard: AuditEvent[][] = [];
    b.onAppend(() => void b.query().then((events) => heard.push(events)));
    const event = await a.record(input({ subject: 'ws-from-a' }));
    await expect.poll(() => heard.at(-1)?.map((e) => e.id), { timeout: 5_000 }).toEqual([event.id]);
  });

  it('writes from several controllers at once come out in one seq order, the same for every reader', async () => {
    const url = await freshDatabase();
    const a = await controllerOn(url);
    const b = await controllerOn(url);
    const recorded = await Promise.all(Array.from({ length: 60 }, (_, i) => (i % 2 ? a : b).record(input({ subject: `ws-${i}` }))));
    const fromA = await a.after(0, 1_000);
    const fromB = await b.after(0, 1_000);
    expect(fromA.map((r) => r.event.id)).toEqual(fromB.map((r) => r.event.id));
    expect(new Set(fromA.map((r) => r.event.id))).toEqual(new Set(recorded.map((e) => e.id)));
    // Each controller's own events keep its call order.
    const order = fromA.map((r) => r.event.subject ?? '');
    const mine = (parity: number): string[] => order.filter((s) => Number(s.slice(3)) % 2 === parity);
    expect(mine(1)).toEqual(recorded.filter((_, i) => i % 2 === 1).map((e) => e.subject));
    expect(mine(0)).toEqual(recorded.filter((_, i) => i % 2 === 0).map((e) => e.subject));
  });

  it('a write waits while another controller has one in flight, so a follower never sees a later seq first', async () => {
    const url = await freshDatabase();
    const a = await controllerOn(url);
    const b = await controllerOn(url);
    // Controller A mid-write: it holds the order lock and has drawn a seq, not committed yet.
    const inFlight = await new StorePool({ databaseUrl: url }).connectClient();
    cleanup.push(() => inFlight.end());
    await inFlight.query('BEGIN');
    await inFlight.query('SELECT pg_advisory_xact_lock($1::bigint)', [AUDIT_LOCK_KEY]);
    await inFlight.query(`INSERT INTO audit_events (action, event_id, data) VALUES ('x', 'in-flight', '{"id":"in-flight","type":"t","time":"2026-01-01T00:00:00Z"}')`);
    const recording = b.record(input({ subject: 'from-b' }));
    const waiting = async (): Promise<number> =>
      Number((await a.pool.query<{ n: string }>(`SELECT count(*) AS n FROM pg_locks WHERE locktype = 'advisory' AND NOT granted`)).rows[0]!.n);
    await expect.poll(waiting, { timeout: 5_000 }).toBe(1);
    expect(await a.after(0, 100)).toEqual([]); // B's event is not visible ahead of A's
    await inFlight.query('COMMIT');
    await recording;
    expect((await a.after(0, 100)).map((r) => r.event.id).slice(0, 1)).toEqual(['in-flight']);
    expect((await a.after(0, 100)).map((r) => r.event.subject)).toEqual([undefined, 'from-b']);
  });

  it('is append-only: the database refuses to change a stored event', async () => {
    const url = await freshDatabase();
    const log = await controllerOn(url);
    await log.record(input());
    const err = await log.pool.query(`UPDATE audit_events SET outcome = 'denied'`).catch((e: unknown) => e);
    expect((err as Error).message).toContain('append-only');
  });

  it('prune keeps what a webhook has not delivered yet, past retention', async () => {
    const c = clock('2025-01-01T12:00:00.000Z');
    const url = await freshDatabase();
    const log = await controllerOn(url, { retentionDays: 5 }, c.now);
    const first = await log.record(input({ subject: 'first' }));
    const second = await log.record(input({ subject: 'second' }));
    const [firstSeq] = (await log.after(0, 1)).map((r) => r.seq);
    const release = log.addHold(() => [firstSeq!]); // the webhook delivered `first`, not `second`
    c.set('2025-01-20T12:00:00.000Z');
    expect(await log.prune()).toEqual(['2025-01-01']);
    expect((await log.query()).map((e) => e.id)).toEqual([second.id]);
    release();
    expect(await log.prune()).toEqual(['2025-01-01']);
    expect(await log.query()).toEqual([]);
    expect(first.id).not.toBe(second.id);
  });

  it('webhook delivery running on two controllers posts each event once, in order', async () => {
    const url = await freshDatabase();
    const secret = 'a-webhook-secret-of-some-length';
    const received: string[] = [];
    let badSignatures = 0;
    const receiver: Server = createServer((req, res) => {
      let body = '';
      req.on('data', (chunk: Buffer) => (body += chunk.toString()));
      req.on('end', () => {
        const ok = verifyWebhookSignature({ secret, id: String(req.headers['webhook-id']), timestamp: String(req.headers['webhook-timestamp']), body, signature: String(req.headers['webhook-signature']) });
        if (!ok) badSignatures++;
        received.push(String(req.headers['webhook-id']));
        res.writeHead(204).end();
      });
    });
    const port = await freePort();
    await new Promise<void>((resolve) => receiver.listen(port, '127.0.0.1', resolve));
    cleanup.push(() => new Promise<void>((resolve) => receiver.close(() => resolve())));
    const webhooks = AuditConfigSchema.parse({ webhooks: [{ url: `http://127.0.0.1:${port}/hook`, secret }] }).webhooks;
    const a = await controllerOn(url);
    const b = await controllerOn(url);
    const deliveries = [a, b].map((log) => new PgWebhookDelivery({ log, pool: log.pool, webhooks, pollMs: 50, retry: { baseMs: 10, maxMs: 50 } }));
    for (const d of deliveries) {
      await d.start();
      cleanup.push(() => d.close());
    }
    const recorded: AuditEvent[] = [];
    for (let i = 0; i < 30; i++) recorded.push(await (i % 2 ? a : b).record(input({ subject: `ws-${i}` })));
    expect(await deliveries[0]!.drain(10_000)).toBe(true);
    const order = (await a.after(0, 1_000)).map((r) => r.event.id);
    expect(received).toEqual(order);
    expect(new Set(received)).toEqual(new Set(recorded.map((e) => e.id)));
    expect(badSignatures).toBe(0);
  });
});

describe('auditTrailFor: the trail the configuration asks for', () => {
  it('is the day files without store.databaseUrl and PostgreSQL (migrated at open) with it, with matching webhook delivery', async () => {
    const stateDir = await mkdtemp(path.join(os.tmpdir(), 'audit-config-'));
    const audit = AuditConfigSchema.parse({ webhooks: [{ url: 'http://127.0.0.1:9/hook', secret: 'a-webhook-secret-of-some-length' }] });
    const files = auditTrailFor({ stateDir, audit });
    expect(files).toBeInstanceOf(AuditLog);
    expect(auditWebhooksFor(files, audit.webhooks)).toBeInstanceOf(WebhookDelivery);

    const shared = auditTrailFor({ stateDir, audit, store: { databaseUrl: await freshDatabase() } });
    expect(shared).toBeInstanceOf(PgAuditLog);
    expect(auditWebhooksFor(shared, audit.webhooks)).toBeInstanceOf(PgWebhookDelivery);
    await shared.open(); // a fresh database: the schema comes with open()
    const event = await shared.record(input());
    expect((await shared.query()).map((e) => e.id)).toEqual([event.id]);
    await shared.close();
    await rm(stateDir, { recursive: true, force: true });
  });
});
