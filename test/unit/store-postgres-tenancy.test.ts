/**
 * Tenancy shared through PostgreSQL between controllers, each stood in for by its own pool and stores on
 * one real throw-away server: a token revoked through one controller is refused by another once it hears
 * the announcement, and refused (STORE_UNAVAILABLE, never passed) while that one's listener is down; a
 * one-time link spent through one controller's gateway cannot be spent through another's; and concurrent
 * creates for one owner from three controllers never overshoot the owner's quota. The JSON registry runs
 * the same admission in-process, checked here with the same figures.
 */
import { mkdtemp, rm } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { parseConfig } from '../../src/config.js';
import { createSwarm } from '../../src/controller/create-swarm.js';
import { isSwarmError } from '../../src/errors.js';
import type { TokenClaims } from '../../src/gateway/access-tokens.js';
import { freePort } from '../helpers/ports.js';
import { InstanceRegistry } from '../../src/registry/instance-registry.js';
import { ChangeListener, PgInstanceStore, PgPrincipalStore, PgSpentLinks, StorePool, migrate, type Admission, type InstanceStore } from '../../src/store/index.js';
import { checkAdmission } from '../../src/tenancy/quotas.js';
import { waitUntil } from '../../src/timing/wait-until.js';
import { contractInstance } from '../contract/instance-store-contract.js';
import { createDatabase, startPostgres, type TestPostgres } from '../helpers/postgres.js';

let server: TestPostgres;
let databases = 0;
const cleanups: (() => Promise<unknown>)[] = [];

beforeAll(async () => {
  server = await startPostgres();
});
afterAll(async () => {
  for (const c of cleanups.reverse()) await c().catch(() => undefined);
  await server?.stop();
});

async function freshDatabase(): Promise<string> {
  const url = await createDatabase(server, `tenancy_${++databases}`);
  const p = new StorePool({ databaseUrl: url });
  await migrate(p);
  await p.close();
  return url;
}

function pool(url: string): StorePool {
  const p = new StorePool({ databaseUrl: url });
  cleanups.push(() => p.close());
  return p;
}

/** One controller's principal store: its own pool, listener and state directory. */
async function principalStore(url: string, listenerOptions: { retryMs?: number } = {}): Promise<{ store: PgPrincipalStore; listener: ChangeListener; pool: StorePool }> {
  const p = pool(url);
  const dir = await mkdtemp(path.join(os.tmpdir(), 'pg-tenancy-'));
  const listener = new ChangeListener({ pool: p, ...listenerOptions });
  const store = new PgPrincipalStore({ pool: p, listener, stateDir: dir });
  cleanups.push(async () => {
    await store.close();
    await listener.close();
    await rm(dir, { recursive: true, force: true });
  });
  await store.open();
  return { store, listener, pool: p };
}

describe('PgPrincipalStore across controllers', () => {
  it('a token revoked on A is refused on B as soon as B hears it', async () => {
    const url = await freshDatabase();
    const a = await principalStore(url);
    const b = await principalStore(url);
    await a.store.addPrincipal({ id: 'alice' });
    const { token, info } = await a.store.createToken({ principalId: 'alice', name: 'laptop' });
    const onB = await waitUntil(async () => (b.store.getToken(info.id) ? b.store.authenticate(token) : undefined), { timeoutMs: 5_000, what: 'B to hear the new token' });
    expect(onB.principal.id).toBe('alice');
    await a.store.revokeToken(info.id);
    const refused = await waitUntil(
      async () => {
        try {
          b.store.authenticate(token);
          return undefined;
        } catch (err) {
          return err;
        }
      },
      { timeoutMs: 5_000, intervalMs: 20, what: 'B to refuse the revoked token' },
    );
    expect(refused).toMatchObject({ code: 'UNAUTHENTICATED' });
    expect((refused as Error).message).toContain('revoked');
  });

  it("fails closed while B's listener is down: STORE_UNAVAILABLE, not a pass", async () => {
    const url = await freshDatabase();
    const a = await principalStore(url);
    // B reconnects only after a minute, so the test sees it down.
    const b = await principalStore(`${url}?application_name=controller_b`, { retryMs: 60_000 });
    await a.store.addPrincipal({ id: 'alice' });
    const { token, info } = await a.store.createToken({ principalId: 'alice', name: 'laptop' });
    await waitUntil(async () => b.store.getToken(info.id), { timeoutMs: 5_000, what: 'B to hear the new token' });
    expect(b.store.authenticate(token).principal.id).toBe('alice');
    // Cut B's connections (its listener's among them) from the server side, A's untouched: the revoke
    // below is announced while B cannot hear it.
    const { rows } = await a.pool.query<{ ended: boolean }>(`SELECT pg_terminate_backend(pid) AS ended FROM pg_stat_activity WHERE application_name = 'controller_b'`);
    expect(rows.length).toBeGreaterThan(0);
    await waitUntil(async () => (b.listener.connected ? undefined : true), { timeoutMs: 10_000, what: "B's listener to notice" });
    await a.store.revokeToken(info.id);
    const err = (() => {
      try {
        b.store.authenticate(token);
      } catch (e) {
        return e;
      }
      return undefined;
    })();
    expect(isSwarmError(err, 'STORE_UNAVAILABLE')).toBe(true);
    expect(() => b.store.listPrincipals()).toThrow(/state store unavailable/);
  });
});

describe('PgSpentLinks across controllers', () => {
  it('a link spent on A cannot be spent on B, even when both try at once', async () => {
    const url = await freshDatabase();
    const a = new PgSpentLinks({ pool: pool(url) });
    const b = new PgSpentLinks({ pool: pool(url) });
    const claims: TokenClaims = { kind: 'link', instanceId: 'alpha', epoch: 0, expiresAt: Date.now() + 60_000, jti: 'link-once-1' };
    const first = await Promise.all([a.spend(claims), b.spend(claims), a.spend(claims), b.spend(claims)]);
    expect(first.filter(Boolean)).toHaveLength(1);
    expect(await b.spend(claims)).toBe(false);
    expect(await a.spend({ ...claims, jti: 'link-once-2' })).toBe(true);
  });

  it('prunes rows whose links expired', async () => {
    const url = await freshDatabase();
    const p = pool(url);
    let now = Date.now();
    const links = new PgSpentLinks({ pool: p, now: () => now });
    await links.spend({ kind: 'link', instanceId: 'alpha', epoch: 0, expiresAt: now + 1_000, jti: 'short' });
    now += 120_000;
    await links.spend({ kind: 'link', instanceId: 'alpha', epoch: 0, expiresAt: now + 60_000, jti: 'later' });
    const ids = await waitUntil(
      async () => {
        const { rows } = await p.query<{ link_id: string }>('SELECT link_id FROM spent_links ORDER BY link_id');
        return rows.length === 1 ? rows.map((r) => r.link_id) : undefined;
      },
      { timeoutMs: 5_000, what: 'the expired row to be pruned' },
    );
    expect(ids).toEqual(['later']);
  });
});

/** At most `limit` workspaces for alice, through the one admission function. */
function quota(limit: number): Admission {
  return {
    owner: 'alice',
    check: (instances) => checkAdmission({ owner: 'alice', providerType: 'docker', instanceId: 'new', newInstance: true }, { instances: limit }, instances),
  };
}

/** 30 creates for alice at once, spread over the stores; the outcomes. */
async function createMany(stores: InstanceStore[], count: number, limit: number): Promise<{ created: number; refused: number }> {
  const results = await Promise.allSettled(
    Array.from({ length: count }, (_, i) => stores[i % stores.length]!.register(contractInstance(`ws-${i}`, { owner: 'alice', name: `ws-${i}` }), { admit: quota(limit) })),
  );
  const failures = results.filter((r): r is PromiseRejectedResult => r.status === 'rejected');
  for (const f of failures) expect(isSwarmError(f.reason, 'QUOTA_EXCEEDED')).toBe(true);
  return { created: results.length - failures.length, refused: failures.length };
}

describe('quotas across controllers', () => {
  it('three controllers creating 30 workspaces for one owner with a limit of 5 make exactly 5', async () => {
    const url = await freshDatabase();
    const stores = await Promise.all(
      [0, 1, 2].map(async () => {
        const s = new PgInstanceStore({ pool: pool(url) });
        cleanups.push(() => s.close());
        await s.load();
        return s;
      }),
    );
    expect(await createMany(stores, 30, 5)).toEqual({ created: 5, refused: 25 });
    const { rows } = await pool(url).query<{ n: string }>(`SELECT count(*) AS n FROM instances WHERE owner = 'alice'`);
    expect(Number(rows[0]!.n)).toBe(5);
  });

  it('the JSON registry runs the same admission in-process: 30 at once, limit 5, exactly 5', async () => {
    const dir = await mkdtemp(path.join(os.tmpdir(), 'registry-quota-'));
    cleanups.push(() => rm(dir, { recursive: true, force: true }));
    const registry = new InstanceRegistry({ stateDir: dir });
    await registry.load();
    expect(await createMany([registry], 30, 5)).toEqual({ created: 5, refused: 25 });
    await registry.flush();
    const again = new InstanceRegistry({ stateDir: dir });
    await again.load();
    expect(again.list()).toHaveLength(5);
  });
});

describe('createSwarm with a database URL', () => {
  it('gives every controller the shared principal store and spent links', async () => {
    const url = await freshDatabase();
    const controllers = await Promise.all(
      ['a', 'b'].map(async (label) => {
        const stateDir = await mkdtemp(path.join(os.tmpdir(), `pg-swarm-${label}-`));
        const config = parseConfig({ stateDir, store: { databaseUrl: url }, providers: { docker: { enabled: false } }, gateway: { port: await freePort() } });
        const controller = createSwarm(config);
        cleanups.push(async () => {
          await controller.close();
          await rm(stateDir, { recursive: true, force: true });
        });
        await controller.initialize();
        return controller;
      }),
    );
    const [a, b] = controllers as [(typeof controllers)[0], (typeof controllers)[0]];
    expect(a.principals).toBeInstanceOf(PgPrincipalStore);
    expect(b.access?.spent).toBeInstanceOf(PgSpentLinks);
    // Each controller keeps its own local credential: it is machine-local.
    expect(a.principals.localToken()).not.toBe(b.principals.localToken());
    await a.principals.addPrincipal({ id: 'carol' });
    const { token, info } = await a.principals.createToken({ principalId: 'carol', name: 'ci' });
    const onB = await waitUntil(async () => (b.principals.getToken(info.id) ? b.principals.authenticate(token) : undefined), { timeoutMs: 5_000, what: 'B to hear the token' });
    expect(onB.principal.id).toBe('carol');
    const claims: TokenClaims = { kind: 'link', instanceId: 'alpha', epoch: 0, expiresAt: Date.now() + 60_000, jti: 'via-controllers' };
    expect(await a.access!.spend(claims)).toBe(true);
    expect(await b.access!.spend(claims)).toBe(false);
  });
});
