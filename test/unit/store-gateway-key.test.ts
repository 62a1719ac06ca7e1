/**
 * The gateway's signing key shared through a real throw-away PostgreSQL (src/store/postgres/gateway-key.ts):
 * gateways on one database with different state directories and no secret sign alike, so a link one hands
 * out opens through another; a state directory's existing seed becomes the shared one; a configured secret
 * stores nothing; gateways starting at once agree on one seed.
 */
import { promises as fs } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { parseConfig, type GatewayConfig } from '../../src/config.js';
import { createSwarm } from '../../src/controller/create-swarm.js';
import { AccessLinks, TOKEN_PARAM } from '../../src/gateway/access-links.js';
import { readSigningSeed, signingSeedFile, type SigningSeedStore } from '../../src/gateway/access-tokens.js';
import { GATEWAY_SEED_NAME, PgSigningSeed, StorePool, migrate } from '../../src/store/index.js';
import { readGatewaySeed } from '../../src/store/postgres/gateway-key.js';
import { freePort } from '../helpers/ports.js';
import { createDatabase, startPostgres, type TestPostgres } from '../helpers/postgres.js';

const SECRET = 'a configured gateway secret of at least 32 bytes';

let server: TestPostgres;
let tmp: string;
let databases = 0;
let dirs = 0;
const pools: StorePool[] = [];
const cleanups: (() => Promise<unknown>)[] = [];

beforeAll(async () => {
  server = await startPostgres();
  tmp = await fs.mkdtemp(path.join(os.tmpdir(), 'gateway-key-'));
});
afterEach(async () => {
  for (const cleanup of cleanups.splice(0).reverse()) await cleanup();
  for (const pool of pools.splice(0)) await pool.close();
});
afterAll(async () => {
  await server?.stop();
  await fs.rm(tmp, { recursive: true, force: true });
});

/** A new migrated database; its URL. */
async function freshDatabase(): Promise<string> {
  const url = await createDatabase(server, `gateway_key_${++databases}`);
  await migrate(openPool(url));
  return url;
}

/** A pool of its own, as each controller has. */
function openPool(databaseUrl: string): StorePool {
  const pool = new StorePool({ databaseUrl, max: 2 });
  pools.push(pool);
  return pool;
}

const newDir = (): string => path.join(tmp, `state-${++dirs}`);

function gateway(stateDir: string, secret?: string): GatewayConfig {
  return parseConfig({ stateDir, gateway: { port: 7080, ...(secret ? { secret } : {}) } }).gateway;
}

/** A gateway's AccessLinks on `databaseUrl` (its own pool), initialized. */
async function sharedLinks(databaseUrl: string, stateDir = newDir(), secret?: string, store?: SigningSeedStore): Promise<AccessLinks> {
  const links = new AccessLinks(gateway(stateDir, secret), stateDir, Date.now, { signingSeed: store ?? new PgSigningSeed({ pool: openPool(databaseUrl) }) });
  await links.initialize();
  return links;
}

const tokenOf = (accessUrl: string): string => new URL(accessUrl).searchParams.get(TOKEN_PARAM)!;

async function storedRows(databaseUrl: string): Promise<number> {
  const { rows } = await openPool(databaseUrl).query<{ n: string }>('SELECT count(*) AS n FROM swarm_secrets');
  return Number(rows[0]!.n);
}

describe('the gateway signing key in PostgreSQL', () => {
  it('lets a link made by one gateway open through another with a different state directory', async () => {
    const url = await freshDatabase();
    const [dirA, dirB] = [newDir(), newDir()];
    const a = await sharedLinks(url, dirA);
    const b = await sharedLinks(url, dirB);
    expect(b.publicKey).toBe(a.publicKey);
    const fromA = b.verify(tokenOf(a.link('ws-one', 3).accessUrl), 'link');
    expect(fromA).toMatchObject({ ok: true, claims: { instanceId: 'ws-one', epoch: 3 } });
    expect(a.verify(tokenOf(b.link('ws-two', 1).accessUrl), 'link').ok).toBe(true);
    expect(a.verify(b.session('ws-two', 1).token, 'session').ok).toBe(true);
    // The seed lives in the database only: neither state directory got a file of its own.
    expect(await storedRows(url)).toBe(1);
    for (const dir of [dirA, dirB]) await expect(fs.access(signingSeedFile(dir))).rejects.toThrow();
  });

  it('keeps a state directory seed as the shared one, so links it handed out stay valid', async () => {
    const url = await freshDatabase();
    const dir = newDir();
    const before = new AccessLinks(gateway(dir), dir); // the file store, before PostgreSQL
    await before.initialize();
    const outstanding = tokenOf(before.link('ws-one', 0).accessUrl);
    const fileSeed = await readSigningSeed(dir);

    const moved = await sharedLinks(url, dir);
    const other = await sharedLinks(url);
    expect(moved.publicKey).toBe(before.publicKey);
    expect(other.verify(outstanding, 'link').ok).toBe(true);
    expect(await readGatewaySeed(openPool(url))).toEqual(fileSeed);
  });

  it('stores nothing when a secret is configured, and the secret still signs', async () => {
    const url = await freshDatabase();
    const a = await sharedLinks(url, newDir(), SECRET);
    const b = await sharedLinks(url, newDir(), SECRET);
    expect(b.verify(tokenOf(a.link('ws-one', 0).accessUrl), 'link').ok).toBe(true);
    expect(await storedRows(url)).toBe(0);
    // A gateway without the secret signs with the (then stored) shared seed, which the secret's gateways refuse.
    const unconfigured = await sharedLinks(url);
    expect(await storedRows(url)).toBe(1);
    expect(a.verify(tokenOf(unconfigured.link('ws-one', 0).accessUrl), 'link')).toEqual({ ok: false, reason: 'bad-signature' });
  });

  it('makes gateways starting at once, each with a seed file of its own, agree on one seed', async () => {
    const url = await freshDatabase();
    const n = 6;
    // Every gateway has read "no seed yet" before any offers its own: all of them race to insert.
    let arrived = 0;
    let release!: () => void;
    const allRead = new Promise<void>((resolve) => (release = resolve));
    const racing = (): SigningSeedStore => {
      const store = new PgSigningSeed({ pool: openPool(url) });
      return {
        seed: (initial) =>
          store.seed(async () => {
            const offered = await initial();
            if (++arrived === n) release();
            await allRead;
            return offered;
          }),
      };
    };
    const dirsWithSeeds = await Promise.all(
      Array.from({ length: n }, async () => {
        const dir = newDir();
        await new AccessLinks(gateway(dir), dir).initialize(); // a seed file of its own
        return dir;
      }),
    );
    const gateways = await Promise.all(dirsWithSeeds.map((dir) => sharedLinks(url, dir, undefined, racing())));
    expect(arrived).toBe(n);
    expect(new Set(gateways.map((g) => g.publicKey)).size).toBe(1);
    const stored = (await readGatewaySeed(openPool(url)))!;
    const fileSeeds = await Promise.all(dirsWithSeeds.map((dir) => readSigningSeed(dir)));
    expect(fileSeeds.filter((seed) => seed!.equals(stored))).toHaveLength(1); // one offer won, the others took it
    const { rows } = await openPool(url).query<{ name: string }>('SELECT name FROM swarm_secrets');
    expect(rows.map((r) => r.name)).toEqual([GATEWAY_SEED_NAME]);
  });

  it('is what createSwarm gives two controllers on one database', async () => {
    const url = await freshDatabase();
    const controllers = [];
    for (const label of ['a', 'b']) {
      const stateDir = newDir();
      const config = parseConfig({ stateDir, store: { databaseUrl: url }, providers: { docker: { enabled: false } }, gateway: { port: await freePort() } });
      const controller = createSwarm(config);
      cleanups.push(() => controller.close());
      await controller.initialize();
      controllers.push({ controller, stateDir });
    }
    const [a, b] = controllers.map((c) => c.controller.access!);
    expect(b!.verify(tokenOf(a!.link('ws-one', 0).accessUrl), 'link').ok).toBe(true);
    for (const { stateDir } of controllers) expect(await readSigningSeed(stateDir)).toBeUndefined();
  });
});
