/**
 * Moving state between a state directory and a real throw-away PostgreSQL (src/store/transfer.ts): a
 * state directory with instances and an audit trail goes into the database and back out into a new
 * directory, equal; a non-empty target is refused unless forced, and forcing twice gives the same target;
 * a state directory a live controller holds is refused. Principals with their token hashes, spent links
 * and the gateway's signing seed move too: tokens made before the move verify after it (a revoked one
 * does not), a spent link stays spent and a link handed out before still opens.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { promises as fs } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { AuditConfigSchema, AuditLog, type AuditEvent } from '../../src/audit/audit-log.js';
import { parseConfig } from '../../src/config.js';
import { isSwarmError } from '../../src/errors.js';
import { AccessLinks, TOKEN_PARAM } from '../../src/gateway/access-links.js';
import { SpentLinks, readSigningSeed, type TokenClaims } from '../../src/gateway/access-tokens.js';
import { InstanceRegistry } from '../../src/registry/instance-registry.js';
import { FileDocumentStore, PgDocumentStore, PgPrincipalStore, PgSigningSeed, PgSpentLinks, StorePool } from '../../src/store/index.js';
import { readGatewaySeed } from '../../src/store/postgres/gateway-key.js';
import { PrincipalStore, type PrincipalDirectory } from '../../src/tenancy/principals.js';
import { describeTransfer, exportStateDir, importStateDir } from '../../src/store/transfer.js';
import { contractInstance } from '../contract/instance-store-contract.js';
import { tokenParts } from '../helpers/tenancy.js';
import { createDatabase, startPostgres, type TestPostgres } from '../helpers/postgres.js';

let server: TestPostgres;
let databases = 0;
let tmp: string;
beforeAll(async () => {
  server = await startPostgres();
  tmp = await fs.mkdtemp(path.join(os.tmpdir(), 'store-transfer-'));
});
afterAll(async () => {
  await server?.stop();
  await fs.rm(tmp, { recursive: true, force: true });
});

async function freshDatabase(): Promise<string> {
  return createDatabase(server, `transfer_${++databases}`);
}

let dirs = 0;
const newDir = (): string => path.join(tmp, `state-${++dirs}`);

/** A state directory as a controller leaves it: three instances (one a warm member) and events over two days. */
async function populatedStateDir(): Promise<{ dir: string; events: AuditEvent[] }> {
  const dir = newDir();
  const registry = new InstanceRegistry({ stateDir: dir });
  await registry.load();
  await registry.register(contractInstance('ws-one', { owner: 'alice' }));
  await registry.register(contractInstance('ws-two', { status: 'stopped' }));
  await registry.register(contractInstance('warm-1', { warmPool: 'docker:default' }));
  await registry.flush();
  // A health record and a migration journal, as the health monitor and the migration manager keep them.
  const documents = new FileDocumentStore(dir);
  await documents.put('health', 'ws-one', { instanceId: 'ws-one', consecutiveFailures: 2, recoveryAttempts: 1, history: [] });
  await documents.put('migrations', 'mig-0123456789ab', { id: 'mig-0123456789ab', instanceId: 'ws-two', status: 'completed' });
  let now = new Date('2026-01-01T23:59:00.000Z');
  const log = new AuditLog({ dir: path.join(dir, 'audit'), config: AuditConfigSchema.parse({ retentionDays: 3650 }), now: () => now });
  await log.open();
  const events: AuditEvent[] = [];
  for (let i = 0; i < 6; i++) {
    if (i === 3) now = new Date('2026-01-02T00:01:00.000Z');
    events.push(await log.record({ type: 'dev.vscode-swarm.instance.create', action: 'create_swarm_instance', actor: { type: 'principal', id: 'alice', door: 'cli' }, outcome: 'ok', subject: `ws-${i}`, request: { n: i } }));
  }
  await log.close();
  return { dir, events };
}

async function readState(dir: string): Promise<{ instances: unknown[]; events: AuditEvent[]; files: string[]; documents: unknown[] }> {
  const registry = new InstanceRegistry({ stateDir: dir });
  await registry.load();
  const log = new AuditLog({ dir: path.join(dir, 'audit'), config: AuditConfigSchema.parse({ retentionDays: 3650 }) });
  await log.open();
  const events = await log.query({ limit: 10_000 });
  await log.close();
  const files = (await fs.readdir(path.join(dir, 'audit'))).filter((f) => f.endsWith('.jsonl')).sort();
  const store = new FileDocumentStore(dir);
  const documents = [...(await store.list('health')), ...(await store.list('migrations'))].map(({ id, doc }) => ({ id, doc }));
  return { instances: registry.list(), events, files, documents };
}

describe('store transfer', () => {
  const children: ChildProcess[] = [];
  afterEach(() => {
    for (const child of children.splice(0)) child.kill('SIGKILL');
  });

  it('moves instances, the audit trail, health records and migration journals into the database and back out, equal', async () => {
    const { dir, events } = await populatedStateDir();
    const databaseUrl = await freshDatabase();
    const imported = await importStateDir({ stateDir: dir, databaseUrl });
    expect(imported).toMatchObject({ direction: 'import', instances: 3, auditEvents: 6, documents: 2, replaced: { instances: 0, auditEvents: 0, documents: 0 } });
    const pool = new StorePool({ databaseUrl });
    expect((await new PgDocumentStore({ pool }).list('health')).map((d) => d.id)).toEqual(['ws-one']);
    await pool.close();
    expect(imported.database).not.toContain(server.password);
    expect(describeTransfer(imported)).toContain('principals: 0, with 0 token hash(es)');
    expect(describeTransfer(imported)).not.toMatch(/not (yet )?moved: principals/);

    const out = newDir();
    const exported = await exportStateDir({ stateDir: out, databaseUrl });
    expect(exported).toMatchObject({ direction: 'export', instances: 3, auditEvents: 6, documents: 2 });

    const before = await readState(dir);
    const after = await readState(out);
    expect(after.instances).toEqual(before.instances);
    expect(after.events).toEqual(before.events);
    expect(after.documents).toEqual(before.documents);
    expect(after.documents).toHaveLength(2);
    expect(after.events.map((e) => e.id)).toEqual(events.map((e) => e.id));
    expect(after.files).toEqual(['events-2026-01-01.jsonl', 'events-2026-01-02.jsonl']);
    expect(after.files).toEqual(before.files);
    const mode = (await fs.stat(path.join(out, 'audit', after.files[0]!))).mode & 0o777;
    expect(mode).toBe(0o600);
    // The locks were let go: a controller could start on either directory now.
    await expect(fs.access(path.join(dir, 'controller.lock'))).rejects.toThrow();
    await expect(fs.access(path.join(out, 'controller.lock'))).rejects.toThrow();
  });

  it('refuses a non-empty target unless forced, and forcing again gives the same target', async () => {
    const { dir } = await populatedStateDir();
    const databaseUrl = await freshDatabase();
    await importStateDir({ stateDir: dir, databaseUrl });
    const again = await importStateDir({ stateDir: dir, databaseUrl }).catch((e: unknown) => e);
    expect(isSwarmError(again, 'CONFLICT')).toBe(true);
    expect((again as Error).message).toMatch(/3 instance\(s\) and 6 audit event\(s\), 0 principal\(s\).*--force/);
    // The source shrinks (one instance, the second day's events): --force replaces, it does not merge.
    const source = new InstanceRegistry({ stateDir: dir });
    await source.load();
    await source.remove('ws-two');
    await source.flush();
    await fs.rm(path.join(dir, 'audit', 'events-2026-01-02.jsonl'));
    for (let run = 0; run < 2; run++) {
      const forced = await importStateDir({ stateDir: dir, databaseUrl, force: true });
      expect(forced).toMatchObject({ instances: 2, auditEvents: 3, replaced: run === 0 ? { instances: 3, auditEvents: 6 } : { instances: 2, auditEvents: 3 } });
    }

    const out = newDir();
    await exportStateDir({ stateDir: out, databaseUrl });
    const first = await readState(out);
    expect(first.instances).toEqual((await readState(dir)).instances);
    expect(first.events).toEqual((await readState(dir)).events);
    const refused = await exportStateDir({ stateDir: out, databaseUrl }).catch((e: unknown) => e);
    expect(isSwarmError(refused, 'CONFLICT')).toBe(true);
    const reforced = await exportStateDir({ stateDir: out, databaseUrl, force: true });
    expect(reforced).toMatchObject({ instances: 2, auditEvents: 3, replaced: { instances: 2, auditEvents: 3 } });
    expect(await readState(out)).toEqual(first);
  });

  it('refuses a state directory a running controller holds, and moves nothing', async () => {
    const { dir } = await populatedStateDir();
    const databaseUrl = await freshDatabase();
    // Another process takes the state directory's lock the way a controller does, and keeps running.
    const lockModule = path.resolve('dist/src/state/state-lock.js');
    const child = spawn(process.execPath, ['--input-type=module', '-e', `const { StateLock } = await import(${JSON.stringify(lockModule)}); await new StateLock(${JSON.stringify(dir)}).acquire('up'); console.log('locked'); setInterval(() => {}, 1000);`], {
      stdio: ['ignore', 'pipe', 'inherit'],
    });
    children.push(child);
    await new Promise<void>((resolve, reject) => {
      child.stdout!.on('data', (chunk: Buffer) => chunk.toString().includes('locked') && resolve());
      child.on('exit', (code) => reject(new Error(`the lock holder exited (${code})`)));
    });
    const err = await importStateDir({ stateDir: dir, databaseUrl }).catch((e: unknown) => e);
    expect(isSwarmError(err, 'CONFLICT')).toBe(true);
    expect((err as Error).message).toContain(`pid ${child.pid}`);
    const pool = new StorePool({ databaseUrl });
    const tables = await pool.query(`SELECT to_regclass('instances') AS t`);
    await pool.close();
    expect(tables.rows[0]!.t).toBeNull(); // refused before even touching the database

    // Once that controller is gone, its stale lock is taken over and the move goes through.
    const exited = new Promise((resolve) => child.once('exit', resolve));
    child.kill('SIGKILL');
    await exited;
    expect(await importStateDir({ stateDir: dir, databaseUrl })).toMatchObject({ instances: 3, auditEvents: 6 });
  });
});

// ---- principals, token hashes, spent links and the signing seed ----

interface Tenancy {
  dir: string;
  /** Plaintext tokens, as their holders keep them. */
  tokens: { alice: string; bob: string; admin: string; revoked: string };
  /** A link already opened (spent) and one handed out but not opened yet. */
  spent: TokenClaims;
  outstanding: string;
  seed: Buffer;
}

const gatewayConfig = (stateDir: string) => parseConfig({ stateDir, gateway: { port: 7080 } }).gateway;
const tokenOf = (accessUrl: string): string => new URL(accessUrl).searchParams.get(TOKEN_PARAM)!;

/** populatedStateDir plus two members and an admin with tokens (one revoked), a spent link, an expired spent one and a seed. */
async function tenancyStateDir(): Promise<Tenancy> {
  const { dir } = await populatedStateDir();
  const principals = new PrincipalStore({ stateDir: dir });
  await principals.open();
  await principals.addPrincipal({ id: 'alice' });
  await principals.addPrincipal({ id: 'bob' });
  await principals.addPrincipal({ id: 'carol', role: 'admin' });
  const token = async (principalId: string, name: string): Promise<string> => (await principals.createToken({ principalId, name })).token;
  const tokens = { alice: await token('alice', 'laptop'), bob: await token('bob', 'laptop'), admin: await token('carol', 'ops'), revoked: '' };
  const old = await principals.createToken({ principalId: 'bob', name: 'old laptop' });
  await principals.revokeToken(old.info.id);
  tokens.revoked = old.token;
  await principals.close();

  const access = new AccessLinks(gatewayConfig(dir), dir); // makes the seed file
  await access.initialize();
  const opened = access.verify(tokenOf(access.link('ws-one', 0).accessUrl), 'link');
  if (!opened.ok) throw new Error('the link just made does not verify');
  expect(await access.spend(opened.claims)).toBe(true);
  // Spent long ago and expired since: not worth moving.
  await access.spend({ ...opened.claims, jti: 'expired-link', expiresAt: Date.now() - 60_000 });
  const outstanding = tokenOf(access.link('ws-one', 0).accessUrl);
  return { dir, tokens, spent: opened.claims, outstanding, seed: (await readSigningSeed(dir))! };
}

/** Who each token authenticates as, or the error code it is refused with. */
function whoIs(store: PrincipalDirectory, tokens: Tenancy['tokens']): Record<string, string> {
  const out: Record<string, string> = {};
  for (const [name, token] of Object.entries(tokens)) {
    try {
      const { principal } = store.authenticate(token);
      out[name] = `${principal.id}:${principal.role}`;
    } catch (err) {
      out[name] = (err as { code?: string }).code ?? String(err);
    }
  }
  return out;
}

const EXPECTED_AUTH = { alice: 'alice:member', bob: 'bob:member', admin: 'carol:admin', revoked: 'UNAUTHENTICATED' };

/** What the database holds of principals, spent links and the seed, seen as the controllers see it. */
async function dbTenancy(databaseUrl: string, t: Tenancy): Promise<{ auth: Record<string, string>; principals: string[]; spent: string[]; seed?: Buffer; outstandingOpens: boolean }> {
  const pool = new StorePool({ databaseUrl });
  const stateDir = newDir(); // another controller's machine
  const principals = new PgPrincipalStore({ pool, stateDir });
  try {
    await principals.open();
    const access = new AccessLinks(gatewayConfig(stateDir), stateDir, Date.now, { signingSeed: new PgSigningSeed({ pool }) }, new PgSpentLinks({ pool }));
    await access.initialize();
    return {
      auth: whoIs(principals, t.tokens),
      principals: principals.listPrincipals().map((p) => p.id),
      spent: (await pool.query<{ link_id: string }>('SELECT link_id FROM spent_links WHERE expires_at > now() ORDER BY link_id')).rows.map((r) => r.link_id),
      ...((await readGatewaySeed(pool)) ? { seed: (await readGatewaySeed(pool))! } : {}),
      outstandingOpens: access.verify(t.outstanding, 'link').ok,
    };
  } finally {
    await principals.close();
    await pool.close();
  }
}

/** The same seen from a state directory (spending on a throw-away copy of the spent-links file). */
async function dirTenancy(dir: string, t: Tenancy): Promise<{ auth: Record<string, string>; principals: string[]; spent: string[]; seed?: Buffer; outstandingOpens: boolean }> {
  const principals = new PrincipalStore({ stateDir: dir });
  await principals.open();
  const auth = whoIs(principals, t.tokens);
  const ids = principals.listPrincipals().map((p) => p.id);
  await principals.close();
  const access = new AccessLinks(gatewayConfig(dir), dir);
  await access.initialize();
  const seed = await readSigningSeed(dir);
  return { auth, principals: ids, spent: [...(await new SpentLinks(dir).unexpired()).keys()], ...(seed ? { seed } : {}), outstandingOpens: access.verify(t.outstanding, 'link').ok };
}

describe('store transfer of principals, spent links and the signing key', () => {
  it('moves them into the database and back out: tokens verify, the revoked one does not, the link stays spent, the seed is the same', async () => {
    const t = await tenancyStateDir();
    const databaseUrl = await freshDatabase();
    const imported = await importStateDir({ stateDir: t.dir, databaseUrl });
    expect(imported).toMatchObject({ principals: 4, tokens: 4, spentLinks: 1, signingKey: true });
    const text = describeTransfer(imported);
    expect(text).toContain('principals: 4, with 4 token hash(es)');
    expect(text).toContain('spent links (not yet expired): 1');
    expect(text).not.toContain(tokenParts(t.tokens.alice).secret);

    const inDb = await dbTenancy(databaseUrl, t);
    expect(inDb.auth).toEqual(EXPECTED_AUTH);
    expect(inDb.principals).toEqual(['alice', 'bob', 'carol', 'local-admin']);
    expect(inDb.spent).toEqual([t.spent.jti]);
    expect(inDb.seed).toEqual(t.seed);
    expect(inDb.outstandingOpens).toBe(true);
    const pool = new StorePool({ databaseUrl });
    expect(await new PgSpentLinks({ pool }).spend(t.spent)).toBe(false); // spent already, through any controller
    // Only hashes went into the database.
    const dump = JSON.stringify((await pool.query('SELECT * FROM tokens')).rows);
    await pool.close();
    for (const token of Object.values(t.tokens)) expect(dump).not.toContain(tokenParts(token).secret);

    const out = newDir();
    const exported = await exportStateDir({ stateDir: out, databaseUrl });
    expect(exported).toMatchObject({ principals: 4, tokens: 4, spentLinks: 1, signingKey: true });
    const back = await dirTenancy(out, t);
    expect(back).toEqual({ auth: EXPECTED_AUTH, principals: ['alice', 'bob', 'carol', 'local-admin'], spent: [t.spent.jti], seed: t.seed, outstandingOpens: true });
    const mode = (await fs.stat(path.join(out, 'principals.json'))).mode & 0o777;
    expect(mode).toBe(0o600);
  });

  it('refuses a target holding other principals or another seed, changing nothing; --force replaces them', async () => {
    const t = await tenancyStateDir();
    const databaseUrl = await freshDatabase();
    // The database already holds another swarm's principal and signing seed, nothing else.
    const other = newDir();
    const otherStore = new PrincipalStore({ stateDir: other });
    await otherStore.open();
    await otherStore.addPrincipal({ id: 'mallory' });
    await otherStore.close();
    await new AccessLinks(gatewayConfig(other), other).initialize();
    await importStateDir({ stateDir: other, databaseUrl });
    const before = await dbTenancy(databaseUrl, t);

    const refused = await importStateDir({ stateDir: t.dir, databaseUrl }).catch((e: unknown) => e);
    expect(isSwarmError(refused, 'CONFLICT')).toBe(true);
    expect((refused as Error).message).toMatch(/1 principal\(s\) besides the local admin.*a different gateway signing key; pass --force/);
    expect(await dbTenancy(databaseUrl, t)).toEqual(before);
    expect(before.principals).toEqual(['local-admin', 'mallory']);

    // A state directory holding one principal is not an empty target for export either: its file stays as it was.
    const target = newDir();
    const targetStore = new PrincipalStore({ stateDir: target });
    await targetStore.open();
    await targetStore.addPrincipal({ id: 'trent' });
    await targetStore.close();
    const file = await fs.readFile(path.join(target, 'principals.json'), 'utf8');
    const refusedOut = await exportStateDir({ stateDir: target, databaseUrl }).catch((e: unknown) => e);
    expect(isSwarmError(refusedOut, 'CONFLICT')).toBe(true);
    expect(await fs.readFile(path.join(target, 'principals.json'), 'utf8')).toBe(file);
    await expect(fs.access(path.join(target, 'gateway'))).rejects.toThrow();

    const forced = await importStateDir({ stateDir: t.dir, databaseUrl, force: true });
    expect(forced.replaced).toEqual({ instances: 0, auditEvents: 0, principals: 1, tokens: 0, spentLinks: 0, signingKey: true, documents: 0 });
    const after = await dbTenancy(databaseUrl, t);
    expect(after).toEqual({ auth: EXPECTED_AUTH, principals: ['alice', 'bob', 'carol', 'local-admin'], spent: [t.spent.jti], seed: t.seed, outstandingOpens: true });
    // Forcing the same move again gives the same database.
    await importStateDir({ stateDir: t.dir, databaseUrl, force: true });
    expect(await dbTenancy(databaseUrl, t)).toEqual(after);
  });
});
