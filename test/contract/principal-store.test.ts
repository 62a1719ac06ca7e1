/**
 * What every principal store must do, run against the JSON file (PrincipalStore, a temp state directory)
 * and PostgreSQL (PgPrincipalStore on a real throw-away server, a fresh database per test): the doors may
 * be given either and must not tell them apart. A second store over the same persistence stands for a
 * restarted controller (JSON) or another controller (PostgreSQL). The clock is injected for expiry.
 */
import { mkdtemp, rm } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { afterAll, afterEach, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import { SwarmError } from '../../src/errors.js';
import { PgPrincipalStore, StorePool } from '../../src/store/index.js';
import { LOCAL_ADMIN_ID, SCOPES } from '../../src/tenancy/identity.js';
import { LOCAL_CREDENTIAL_ID, PrincipalStore, type PrincipalDirectory } from '../../src/tenancy/principals.js';
import { waitUntil } from '../../src/timing/wait-until.js';
import { startPostgres, type TestPostgres } from '../helpers/postgres.js';

const DAY_MS = 86_400_000;

interface Harness {
  store: PrincipalDirectory;
  /** Another store over the same persistence, opened; `stateDir` shares the local credential when given. */
  another(): Promise<PrincipalDirectory>;
  clock: { ms: number };
  close(): Promise<void>;
}

function refusal(work: () => unknown): SwarmError {
  try {
    work();
  } catch (err) {
    expect(err).toBeInstanceOf(SwarmError);
    return err as SwarmError;
  }
  throw new Error('expected the call to be refused, but it succeeded');
}

function describePrincipalStoreContract(label: string, makeHarness: () => Promise<Harness>): void {
  describe(`principal store contract: ${label}`, () => {
    let h: Harness;
    let store: PrincipalDirectory;
    beforeEach(async () => {
      h = await makeHarness();
      store = h.store;
    });
    afterEach(() => h.close());

    it('has the local admin, whose local credential authenticates with every scope', () => {
      expect(store.getPrincipal(LOCAL_ADMIN_ID)).toMatchObject({ id: LOCAL_ADMIN_ID, role: 'admin' });
      const who = store.authenticate(store.localToken());
      expect(who).toMatchObject({ credentialId: LOCAL_CREDENTIAL_ID, principal: { id: LOCAL_ADMIN_ID } });
      expect(who.scopes).toEqual([...SCOPES]);
    });

    it('adds principals (a second with the same id is CONFLICT), lists them sorted, finds them by subject', async () => {
      await store.addPrincipal({ id: 'zoe', subjects: ['sub-zoe'] });
      const bob = await store.addPrincipal({ id: 'bob', role: 'viewer' });
      expect(bob).toMatchObject({ id: 'bob', name: 'bob', role: 'viewer', kind: 'person' });
      await expect(store.addPrincipal({ id: 'bob' })).rejects.toMatchObject({ code: 'CONFLICT', field: 'id' });
      expect(store.listPrincipals().map((p) => p.id)).toEqual(['bob', LOCAL_ADMIN_ID, 'zoe']);
      expect(store.principalForSubject('sub-zoe')?.id).toBe('zoe');
      expect(store.principalForSubject('bob')?.id).toBe('bob');
      expect(store.principalForSubject('zoe')).toBeUndefined();
      expect(refusal(() => store.requirePrincipal('nobody'))).toMatchObject({ code: 'NOT_FOUND', field: 'principalId' });
    });

    it('makes tokens that authenticate with their scopes, shown once, and refuses a wrong secret', async () => {
      await store.addPrincipal({ id: 'alice' });
      const { token, info } = await store.createToken({ principalId: 'alice', name: 'laptop', scopes: ['swarm:read'] });
      expect(info).not.toHaveProperty('hash');
      expect(store.getToken(info.id)).toEqual(info);
      expect(store.listTokens('alice').map((t) => t.id)).toEqual([info.id]);
      expect(store.authenticate(token)).toMatchObject({ principal: { id: 'alice' }, credentialId: info.id, scopes: ['swarm:read'] });
      const wrong = `${token.slice(0, -4)}AAAA`;
      const err = refusal(() => store.authenticate(wrong));
      expect(err.code).toBe('UNAUTHENTICATED');
      expect(err.message).not.toContain(wrong);
      await expect(store.createToken({ principalId: 'alice', name: 'x', scopes: ['swarm:admin'] })).rejects.toMatchObject({ code: 'INVALID_INPUT', field: 'scopes' });
      await expect(store.createToken({ principalId: 'nobody', name: 'x' })).rejects.toMatchObject({ code: 'NOT_FOUND' });
    });

    it('refuses a revoked token, an expired one, and one of a disabled principal; the local admin cannot be disabled', async () => {
      await store.addPrincipal({ id: 'alice' });
      const a = await store.createToken({ principalId: 'alice', name: 'a' });
      const b = await store.createToken({ principalId: 'alice', name: 'b', expiresInDays: 1 });
      await store.revokeToken(a.info.id);
      expect(refusal(() => store.authenticate(a.token)).message).toContain('revoked');
      expect(store.authenticate(b.token).principal.id).toBe('alice');
      h.clock.ms += 2 * DAY_MS;
      expect(refusal(() => store.authenticate(b.token)).message).toContain('expired');
      h.clock.ms -= 2 * DAY_MS;
      await store.updatePrincipal('alice', { disabled: true });
      expect(refusal(() => store.authenticate(b.token)).message).toContain('disabled');
      await store.updatePrincipal('alice', { disabled: false });
      expect(store.authenticate(b.token).principal.id).toBe('alice');
      await expect(store.updatePrincipal(LOCAL_ADMIN_ID, { disabled: true })).rejects.toMatchObject({ code: 'INVALID_INPUT' });
      await expect(store.revokeToken('t000000000000')).rejects.toMatchObject({ code: 'NOT_FOUND', field: 'tokenId' });
    });

    it('narrows scopes to a changed role at once', async () => {
      await store.addPrincipal({ id: 'alice' });
      const { token } = await store.createToken({ principalId: 'alice', name: 'all' });
      expect(store.authenticate(token).scopes).toContain('swarm:write');
      await store.updatePrincipal('alice', { role: 'viewer' });
      expect(store.authenticate(token).scopes).not.toContain('swarm:write');
    });

    it('another store over the same persistence sees the same principals, tokens and revocations', async () => {
      await store.addPrincipal({ id: 'alice', quotas: { instances: 3 } });
      const kept = await store.createToken({ principalId: 'alice', name: 'kept' });
      const gone = await store.createToken({ principalId: 'alice', name: 'gone' });
      await store.revokeToken(gone.info.id);
      await store.close();
      const other = await h.another();
      expect(other.getPrincipal('alice')?.quotas).toEqual({ instances: 3 });
      expect(other.authenticate(kept.token).credentialId).toBe(kept.info.id);
      expect(refusal(() => other.authenticate(gone.token)).message).toContain('revoked');
      expect(other.listTokens('alice')).toHaveLength(2);
    });
  });
}

describePrincipalStoreContract('JSON file (PrincipalStore)', async () => {
  const dir = await mkdtemp(path.join(os.tmpdir(), 'principal-contract-'));
  const clock = { ms: Date.parse('2026-03-01T12:00:00.000Z') };
  const now = (): Date => new Date(clock.ms);
  const opened: PrincipalStore[] = [];
  const open = async (): Promise<PrincipalStore> => {
    const s = new PrincipalStore({ stateDir: dir, now });
    await s.open();
    opened.push(s);
    return s;
  };
  return {
    store: await open(),
    another: open,
    clock,
    async close() {
      for (const s of opened) await s.close();
      await rm(dir, { recursive: true, force: true });
    },
  };
});

let server: TestPostgres;
let databases = 0;
beforeAll(async () => {
  server = await startPostgres();
});
afterAll(() => server?.stop());

describePrincipalStoreContract('PostgreSQL (PgPrincipalStore)', async () => {
  const admin = new StorePool({ databaseUrl: server.url });
  const name = `principals_${++databases}`;
  await admin.query(`CREATE DATABASE ${name}`);
  await admin.close();
  const url = server.url.replace(/\/postgres$/, `/${name}`);
  const clock = { ms: Date.parse('2026-03-01T12:00:00.000Z') };
  const now = (): Date => new Date(clock.ms);
  const opened: { store: PgPrincipalStore; pool: StorePool; dir: string }[] = [];
  const open = async (): Promise<PgPrincipalStore> => {
    // Each is its own controller: its own pool and its own state directory (its own local credential).
    const pool = new StorePool({ databaseUrl: url });
    const dir = await mkdtemp(path.join(os.tmpdir(), 'pg-principals-'));
    const store = new PgPrincipalStore({ pool, stateDir: dir, now, migrateOnOpen: true });
    opened.push({ store, pool, dir });
    await store.open();
    return store;
  };
  const store = await open();
  return {
    store,
    async another() {
      const other = await open();
      // Announcements are asynchronous; another controller opened after the writes reads them, so this
      // only makes sure the store is usable.
      await waitUntil(async () => (other.available ? true : undefined), { timeoutMs: 5_000, what: 'the second store to be available' });
      return other;
    },
    clock,
    async close() {
      for (const o of opened) {
        await o.store.close();
        await o.pool.close();
        await rm(o.dir, { recursive: true, force: true });
      }
    },
  };
});
