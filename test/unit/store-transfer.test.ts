/**
 * Moving state between a state directory and a real throw-away PostgreSQL (src/store/transfer.ts): a
 * state directory with instances and an audit trail goes into the database and back out into a new
 * directory, equal; a non-empty target is refused unless forced, and forcing twice gives the same target;
 * a state directory a live controller holds is refused.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { promises as fs } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { AuditConfigSchema, AuditLog, type AuditEvent } from '../../src/audit/audit-log.js';
import { isSwarmError } from '../../src/errors.js';
import { InstanceRegistry } from '../../src/registry/instance-registry.js';
import { StorePool } from '../../src/store/index.js';
import { describeTransfer, exportStateDir, importStateDir } from '../../src/store/transfer.js';
import { contractInstance } from '../contract/instance-store-contract.js';
import { startPostgres, type TestPostgres } from '../helpers/postgres.js';

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
  const admin = new StorePool({ databaseUrl: server.url });
  const name = `transfer_${++databases}`;
  await admin.query(`CREATE DATABASE ${name}`);
  await admin.close();
  return server.url.replace(/\/postgres$/, `/${name}`);
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

async function readState(dir: string): Promise<{ instances: unknown[]; events: AuditEvent[]; files: string[] }> {
  const registry = new InstanceRegistry({ stateDir: dir });
  await registry.load();
  const log = new AuditLog({ dir: path.join(dir, 'audit'), config: AuditConfigSchema.parse({ retentionDays: 3650 }) });
  await log.open();
  const events = await log.query({ limit: 10_000 });
  await log.close();
  const files = (await fs.readdir(path.join(dir, 'audit'))).filter((f) => f.endsWith('.jsonl')).sort();
  return { instances: registry.list(), events, files };
}

describe('store transfer', () => {
  const children: ChildProcess[] = [];
  afterEach(() => {
    for (const child of children.splice(0)) child.kill('SIGKILL');
  });

  it('moves instances and the audit trail into the database and back out, equal', async () => {
    const { dir, events } = await populatedStateDir();
    const databaseUrl = await freshDatabase();
    const imported = await importStateDir({ stateDir: dir, databaseUrl });
    expect(imported).toMatchObject({ direction: 'import', instances: 3, auditEvents: 6, replaced: { instances: 0, auditEvents: 0 } });
    expect(imported.database).not.toContain(server.password);
    expect(describeTransfer(imported)).toContain('not yet moved: principals');

    const out = newDir();
    const exported = await exportStateDir({ stateDir: out, databaseUrl });
    expect(exported).toMatchObject({ direction: 'export', instances: 3, auditEvents: 6 });

    const before = await readState(dir);
    const after = await readState(out);
    expect(after.instances).toEqual(before.instances);
    expect(after.events).toEqual(before.events);
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
    expect((again as Error).message).toMatch(/3 instance\(s\) and 6 audit event\(s\).*--force/);
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
