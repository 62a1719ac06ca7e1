/**
 * The PostgreSQL store on a real server (a throw-away cluster, test/helpers/postgres.ts): migrations under
 * concurrent start, the per-owner name constraint under concurrent creates from several pools (as from
 * several controllers), caches kept fresh by announcements, leadership with fencing, and the database
 * going away and coming back, without the password ever reaching an error or a log line.
 */
import { mkdtemp, rm } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { PassThrough } from 'node:stream';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { SwarmError, isSwarmError } from '../../src/errors.js';
import { loadConfig } from '../../src/config.js';
import { createLogger } from '../../src/logger.js';
import { InstanceRegistry } from '../../src/registry/instance-registry.js';
import {
  ChangeListener,
  LeaderLease,
  MIGRATIONS,
  PgInstanceStore,
  StorePool,
  assertFencing,
  instanceStoreFromConfig,
  migrate,
  notifyChange,
  openPostgresStore,
} from '../../src/store/index.js';
import { waitUntil } from '../../src/timing/wait-until.js';
import { contractInstance } from '../contract/instance-store-contract.js';
import { freePort } from '../helpers/ports.js';
import { startPostgres, type TestPostgres } from '../helpers/postgres.js';

let server: TestPostgres;
let databases = 0;
const opened: { close(): Promise<void> }[] = [];

beforeAll(async () => {
  server = await startPostgres();
});
afterAll(async () => {
  for (const o of opened.reverse()) await o.close().catch(() => undefined);
  await server?.stop();
});

/** A new empty database on the shared server; its URL (with the password). */
async function freshDatabase(): Promise<string> {
  const admin = new StorePool({ databaseUrl: server.url });
  const name = `pgtest_${++databases}`;
  await admin.query(`CREATE DATABASE ${name}`);
  await admin.close();
  return server.url.replace(/\/postgres$/, `/${name}`);
}

function pool(url: string, extra: Partial<ConstructorParameters<typeof StorePool>[0]> = {}): StorePool {
  const p = new StorePool({ databaseUrl: url, ...extra });
  opened.push(p);
  return p;
}

async function loadedStore(p: StorePool, listener?: ChangeListener): Promise<PgInstanceStore> {
  const store = new PgInstanceStore({ pool: p, ...(listener ? { listener } : {}) });
  opened.push(store);
  await store.load();
  return store;
}

function captureLogs(): { logger: ReturnType<typeof createLogger>; text: () => string } {
  const sink = new PassThrough();
  let text = '';
  sink.on('data', (chunk: Buffer) => (text += chunk.toString()));
  return { logger: createLogger('debug', sink), text: () => text };
}

describe('schema migrations', () => {
  it('three pools migrating one database at once apply each migration exactly once', async () => {
    const url = await freshDatabase();
    const pools = [pool(url), pool(url), pool(url)];
    const reports = await Promise.all(pools.map((p) => migrate(p)));
    const ids = MIGRATIONS.map((m) => m.id);
    expect(reports.flatMap((r) => r.applied).sort()).toEqual(ids);
    expect(reports.filter((r) => r.applied.length === 0)).toHaveLength(2);
    const { rows } = await pools[0]!.query<{ id: string; n: string }>('SELECT id, count(*) AS n FROM schema_migrations GROUP BY id ORDER BY id');
    expect(rows).toEqual(ids.map((id) => ({ id, n: '1' })));
    const tables = await pools[0]!.query<{ table_name: string }>("SELECT table_name FROM information_schema.tables WHERE table_schema = 'public'");
    expect(tables.rows.map((r) => r.table_name).sort()).toEqual(
      ['audit_events', 'audit_webhook_cursors', 'documents', 'instances', 'leases', 'principals', 'schema_migrations', 'spent_links', 'swarm_secrets', 'tokens'].sort(),
    );
    // Run again later: nothing to do.
    expect(await migrate(pools[1]!)).toEqual({ applied: [], alreadyApplied: ids.length });
  });

  it('refuses a database migrated by a newer version, and rolls back a failing migration whole', async () => {
    const url = await freshDatabase();
    const p = pool(url);
    await migrate(p);
    const newer = [...MIGRATIONS, { id: '9999-future', sql: 'CREATE TABLE future (x int)' }];
    await migrate(p, undefined, newer);
    await expect(migrate(p)).rejects.toThrow(/9999-future.*newer vscode-swarm/);

    const other = pool(await freshDatabase());
    const broken = [...MIGRATIONS, { id: '9000-broken', sql: 'CREATE TABLE half (x int); SELECT no_such_function()' }];
    await expect(migrate(other, undefined, broken)).rejects.toMatchObject({ code: 'STATE_ERROR', message: expect.stringContaining('9000-broken') });
    const { rows } = await other.query("SELECT to_regclass('public.half') AS half, to_regclass('public.instances') AS instances");
    expect(rows[0]).toEqual({ half: null, instances: null });
  });
});

describe('PgInstanceStore across controllers', () => {
  it('50 concurrent creates of 10 names from 3 pools give exactly 10 rows and CONFLICT naming the name for the rest', async () => {
    const url = await freshDatabase();
    const pools = [pool(url), pool(url), pool(url)];
    await Promise.all(pools.map((p) => migrate(p)));
    const stores = await Promise.all(pools.map((p) => loadedStore(p)));
    const outcomes = await Promise.allSettled(
      Array.from({ length: 50 }, (_, i) =>
        stores[i % 3]!.register(contractInstance(`inst-${i}`, { name: `ws-${i % 10}`, config: { name: `ws-${i % 10}`, image: 'codercom/code-server:4.99.3', resources: { cpu: 1, memoryMb: 1024 } }, owner: 'alice' })),
      ),
    );
    const created = outcomes.filter((o) => o.status === 'fulfilled');
    const refused = outcomes.flatMap((o) => (o.status === 'rejected' ? [o.reason as unknown] : []));
    expect(created).toHaveLength(10);
    expect(refused).toHaveLength(40);
    for (const err of refused) {
      expect(isSwarmError(err, 'CONFLICT')).toBe(true);
      expect((err as SwarmError).message).toMatch(/an instance named "ws-\d" already exists for alice/);
    }
    const { rows } = await pools[0]!.query<{ name: string; n: string }>('SELECT name, count(*) AS n FROM instances GROUP BY name');
    expect(rows).toHaveLength(10);
    expect(rows.every((r) => r.n === '1')).toBe(true);

    // The same name is free for another owner, for a warm member, and once the holder is being deleted.
    const winner = stores[0]!.list().find((i) => i.name === 'ws-0') ?? (await waitUntil(async () => stores[0]!.list().find((i) => i.name === 'ws-0'), { timeoutMs: 10_000, what: 'ws-0 announced' }));
    await expect(stores[1]!.register(contractInstance('bob-ws-0', { name: 'ws-0', owner: 'bob' }))).resolves.toMatchObject({ owner: 'bob' });
    await expect(stores[1]!.register(contractInstance('warm-1', { name: 'ws-0', warmPool: 'docker-default' }))).resolves.toMatchObject({ warmPool: 'docker-default' });
    // Claiming the warm member under a taken name is refused by the same constraint.
    await expect(stores[2]!.update('warm-1', (now) => ({ ...now, warmPool: undefined, owner: 'alice' }))).rejects.toMatchObject({ code: 'CONFLICT', field: 'name' });
    await stores[2]!.update(winner.id, { status: 'deleting' });
    await expect(stores[2]!.update('warm-1', (now) => ({ ...now, warmPool: undefined, owner: 'alice' }))).resolves.toMatchObject({ owner: 'alice', name: 'ws-0' });
  });

  it('keeps every controller’s cache fresh through announcements, and serialises updates from all of them', async () => {
    const url = await freshDatabase();
    const pools = [pool(url), pool(url), pool(url)];
    await migrate(pools[0]!);
    const [a, b, c] = await Promise.all(pools.map((p) => loadedStore(p)));
    await a!.register(contractInstance('shared', { accessEpoch: 0 }));
    await waitUntil(async () => b!.get('shared') && c!.get('shared'), { timeoutMs: 10_000, what: 'register announced' });

    await Promise.all([a!, b!, c!].flatMap((s) => Array.from({ length: 10 }, () => s.update('shared', (now) => ({ ...now, accessEpoch: (now.accessEpoch ?? 0) + 1 })))));
    const { rows } = await pools[0]!.query<{ data: { accessEpoch: number }; version: string }>("SELECT data, version FROM instances WHERE id = 'shared'");
    expect(rows[0]!.data.accessEpoch).toBe(30);
    for (const s of [a!, b!, c!]) await waitUntil(async () => (s.get('shared')?.accessEpoch === 30 ? true : undefined), { timeoutMs: 10_000, what: 'last update announced' });

    await b!.remove('shared');
    await waitUntil(async () => (a!.get('shared') === undefined && c!.get('shared') === undefined ? true : undefined), { timeoutMs: 10_000, what: 'remove announced' });
    // A late copy of an older announcement does not bring the record back.
    await notifyChange(pools[0]!, 'swarm_instances', { id: 'shared', version: rows[0]!.version, op: 'upsert' });
    await a!.register(contractInstance('marker'));
    await waitUntil(async () => c!.get('marker'), { timeoutMs: 10_000, what: 'marker announced' });
    expect(c!.get('shared')).toBeUndefined();
  });
});

describe('LeaderLease', () => {
  it('one leader of two; after its lease expires the other takes over with a higher token and the old holder’s fenced write is refused', async () => {
    const url = await freshDatabase();
    const [pa, pb] = [pool(url), pool(url)];
    await migrate(pa);
    await pa.query('CREATE TABLE sweeps (by text, token text)');
    const a = new LeaderLease({ pool: pa, name: 'health-sweep', holder: 'controller-a', ttlMs: 400 });
    const b = new LeaderLease({ pool: pb, name: 'health-sweep', holder: 'controller-b', ttlMs: 400 });

    const first = await Promise.all([a.tryAcquire(), b.tryAcquire()]);
    expect(first.filter(Boolean)).toHaveLength(1);
    const [leader, other] = first[0] ? [a, b] : [b, a];
    expect(leader.isLeader).toBe(true);
    expect(other.isLeader).toBe(false);
    expect(await other.tryAcquire()).toBe(false);
    const oldToken = leader.fencingToken!;
    await leader.fencedTransaction((c) => c.query('INSERT INTO sweeps VALUES ($1, $2)', [leader.holder, oldToken]));

    // The leader pauses (no renewals); the other takes over once the lease expires.
    await waitUntil(async () => ((await other.tryAcquire()) ? true : undefined), { timeoutMs: 10_000, intervalMs: 50, what: 'takeover after expiry' });
    expect(BigInt(other.fencingToken!)).toBe(BigInt(oldToken) + 1n);
    expect(other.isLeader).toBe(true);

    // The paused holder wakes up: its write with the stale token is refused, and it learns it lost.
    const stale = leader.fencedTransaction((c) => c.query('INSERT INTO sweeps VALUES ($1, $2)', [leader.holder, oldToken]));
    await expect(stale).rejects.toMatchObject({ code: 'CONFLICT', message: expect.stringMatching(new RegExp(`fencing token ${oldToken} is stale \\(the current one is ${other.fencingToken}\\)`)) });
    await expect(pa.transaction((c) => assertFencing(c, 'health-sweep', oldToken))).rejects.toMatchObject({ code: 'CONFLICT' });
    expect(await leader.renew()).toBe(false);
    expect(leader.isLeader).toBe(false);
    await other.fencedTransaction((c) => c.query('INSERT INTO sweeps VALUES ($1, $2)', [other.holder, other.fencingToken]));
    const { rows } = await pa.query<{ by: string; token: string }>('SELECT by, token FROM sweeps ORDER BY token');
    expect(rows).toEqual([
      { by: leader.holder, token: oldToken },
      { by: other.holder, token: other.fencingToken },
    ]);

    // Renewal keeps the token; a release lets the next acquisition in at once, with the token one higher.
    expect(await other.renew()).toBe(true);
    const held = other.fencingToken!;
    await other.release();
    expect(other.isLeader).toBe(false);
    expect(await leader.tryAcquire()).toBe(true);
    expect(BigInt(leader.fencingToken!)).toBe(BigInt(held) + 1n);
  });
});

describe('losing the database', () => {
  it('answers STORE_UNAVAILABLE while the server is gone and works again when it is back, without the password anywhere', async () => {
    const own = await startPostgres();
    opened.push({ close: () => own.stop() });
    const logs = captureLogs();
    const p = pool(own.url, { logger: logs.logger, connectTimeoutMs: 2_000 });
    await migrate(p, logs.logger);
    const listener = new ChangeListener({ pool: p, logger: logs.logger, retryMs: 50, maxRetryMs: 300, heartbeatMs: 500 });
    opened.push(listener);
    const store = await loadedStore(p, listener);
    await store.register(contractInstance('before'));
    const heard: unknown[] = [];
    await listener.onChange('test_channel', (payload) => heard.push(payload));
    const lease = new LeaderLease({ pool: p, name: 'reconcile', ttlMs: 5_000 });
    expect(await lease.tryAcquire()).toBe(true);

    await own.kill();
    const errors: unknown[] = [];
    const capture = async (work: () => Promise<unknown>): Promise<void> => {
      await expect(work()).rejects.toMatchObject({ code: 'STORE_UNAVAILABLE', message: expect.stringMatching(/^state store unavailable: /) });
      await work().catch((err: unknown) => errors.push(err));
    };
    await capture(() => store.register(contractInstance('during')));
    await capture(() => store.update('before', { status: 'stopped' }));
    await capture(() => store.remove('before'));
    await capture(() => lease.renew());
    await capture(() => p.query('SELECT 1'));
    // Reads stop too once the store knows it may have missed changes: no guessing from a stale cache.
    const readError = await waitUntil(
      async () => {
        try {
          store.list();
          return undefined;
        } catch (err) {
          return err;
        }
      },
      { timeoutMs: 10_000, what: 'reads refused while the database is gone' },
    );
    expect(readError).toMatchObject({ code: 'STORE_UNAVAILABLE' });
    expect(() => store.get('before')).toThrow(/state store unavailable/);
    errors.push(readError);

    await own.restart();
    // The same store, pool and listener recover by themselves.
    await waitUntil(async () => (store.available ? true : undefined), { timeoutMs: 20_000, what: 'store fresh again' });
    expect(store.require('before').status).toBe('running');
    await expect(store.register(contractInstance('after'))).resolves.toMatchObject({ id: 'after' });
    await expect(store.update('before', { status: 'stopped' })).resolves.toMatchObject({ status: 'stopped' });
    expect(store.list().map((i) => i.id).sort()).toEqual(['after', 'before']);
    await notifyChange(p, 'test_channel', { hello: 'again' });
    await waitUntil(async () => (heard.length ? true : undefined), { timeoutMs: 10_000, what: 'announcement after reconnect' });
    expect(heard).toEqual([{ hello: 'again' }]);

    expect(errors.length).toBeGreaterThanOrEqual(6);
    for (const err of errors) {
      expect(JSON.stringify(err)).not.toContain(own.password);
      expect(String((err as Error).message)).not.toContain(own.password);
      expect(String((err as Error).stack)).not.toContain(own.password);
    }
    expect(logs.text()).toContain('change listener lost its connection');
    expect(logs.text()).not.toContain(own.password);
  });

  it('a server that never answers is STORE_UNAVAILABLE; a refused statement keeps its own error; neither shows the password', async () => {
    const port = await freePort();
    const password = 'top-secret-pw-123';
    const nowhere = pool(`postgres://swarm:${password}@127.0.0.1:${port}/postgres`, { connectTimeoutMs: 1_000 });
    const err = await nowhere.query('SELECT 1').catch((e: unknown) => e);
    expect(err).toMatchObject({ code: 'STORE_UNAVAILABLE', message: expect.stringContaining(`127.0.0.1:${port}/postgres`) });
    expect(JSON.stringify(err)).not.toContain(password);
    expect((err as Error).message).not.toContain(password);
    await expect(openPostgresStore(`postgres://swarm:${password}@127.0.0.1:${port}/postgres`)).rejects.toMatchObject({ code: 'STORE_UNAVAILABLE' });

    const missing = pool(server.url.replace(/\/postgres$/, '/no_such_db'));
    const refused = await missing.query('SELECT 1').catch((e: unknown) => e);
    expect(refused).toMatchObject({ code: '3D000' });
    expect((refused as Error).message).not.toContain(server.password);
    expect(() => new StorePool({ databaseUrl: 'mysql://u:pw@host/db' })).toThrow(/store.databaseUrl: expected a postgres:\/\/ URL/);
  });
});

describe('choosing the store from configuration', () => {
  it('VSCODE_SWARM_DATABASE_URL selects PostgreSQL; without it the JSON files under stateDir', async () => {
    const url = await freshDatabase();
    const stateDir = await mkdtemp(path.join(os.tmpdir(), 'store-config-'));
    opened.push({ close: () => rm(stateDir, { recursive: true, force: true }) });
    const withDb = await loadConfig({ file: false, env: { VSCODE_SWARM_DATABASE_URL: url, VSCODE_SWARM_STATE_DIR: stateDir } });
    expect(withDb.store?.databaseUrl).toBe(url);
    const chosen = await instanceStoreFromConfig(withDb);
    opened.push(chosen);
    expect(chosen.store).toBeInstanceOf(PgInstanceStore);
    await chosen.store.load();
    await chosen.store.register(contractInstance('from-config'));
    expect(chosen.store.require('from-config').id).toBe('from-config');

    const withoutDb = await loadConfig({ file: false, env: { VSCODE_SWARM_STATE_DIR: stateDir } });
    const files = await instanceStoreFromConfig(withoutDb);
    expect(files.store).toBeInstanceOf(InstanceRegistry);
    await expect(loadConfig({ file: false, env: { VSCODE_SWARM_DATABASE_URL: 'mysql://x@y/z' } })).rejects.toThrow(/store\.databaseUrl/);
  });
});

describe('openPostgresStore', () => {
  it('opens, migrates and loads a store that round-trips a record', async () => {
    const url = await freshDatabase();
    const pg = await openPostgresStore(url);
    opened.push(pg);
    await pg.instances.load();
    await pg.instances.register(contractInstance('one'));
    expect(pg.instances.require('one').name).toBe('one');
    const { rows } = await pg.pool.query<{ n: string }>('SELECT count(*) AS n FROM schema_migrations');
    expect(Number(rows[0]!.n)).toBe(MIGRATIONS.length);
  });
});
