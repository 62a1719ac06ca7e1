/**
 * The instance store contract against the JSON-file registry (a temp state directory) and the
 * PostgreSQL store (a real throw-away server, a fresh database per test).
 */
import { mkdtemp, rm } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll } from 'vitest';
import { InstanceRegistry } from '../../src/registry/instance-registry.js';
import { PgInstanceStore, StorePool, migrate, type InstanceStore } from '../../src/store/index.js';
import { startPostgres, type TestPostgres } from '../helpers/postgres.js';
import { describeInstanceStoreContract } from './instance-store-contract.js';

// The registry satisfies the store interface as it is.
const _typeCheck: InstanceStore = new InstanceRegistry({ stateDir: os.tmpdir() });
void _typeCheck;

describeInstanceStoreContract('JSON files (InstanceRegistry)', async () => {
  const dir = await mkdtemp(path.join(os.tmpdir(), 'store-contract-'));
  const store = new InstanceRegistry({ stateDir: dir });
  await store.load();
  return {
    store,
    async reopen() {
      await store.flush();
      const again = new InstanceRegistry({ stateDir: dir });
      await again.load();
      return again;
    },
    close: () => rm(dir, { recursive: true, force: true }),
  };
});

let server: TestPostgres;
let databases = 0;
beforeAll(async () => {
  server = await startPostgres();
});
afterAll(() => server?.stop());

describeInstanceStoreContract('PostgreSQL (PgInstanceStore)', async () => {
  // One database per test: a clean schema without dropping anything.
  const admin = new StorePool({ databaseUrl: server.url });
  const name = `contract_${++databases}`;
  await admin.query(`CREATE DATABASE ${name}`);
  await admin.close();
  const url = server.url.replace(/\/postgres$/, `/${name}`);
  const pools: StorePool[] = [];
  const stores: PgInstanceStore[] = [];
  const open = async (): Promise<PgInstanceStore> => {
    const pool = new StorePool({ databaseUrl: url });
    pools.push(pool);
    await migrate(pool);
    const store = new PgInstanceStore({ pool });
    stores.push(store);
    await store.load();
    return store;
  };
  const store = await open();
  return {
    store,
    reopen: open,
    async close() {
      for (const s of stores) await s.close();
      for (const p of pools) await p.close();
    },
  };
});
