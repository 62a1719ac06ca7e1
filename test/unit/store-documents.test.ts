/**
 * The document store (health records, migration journals) on both implementations: one contract run on
 * the files of a state directory and on a real PostgreSQL server (test/helpers/postgres.ts). Then what
 * only PostgreSQL has: the writer recorded on every row, orphans (a writer with no session left), claims,
 * and the migration manager of one controller seeing and leaving alone the live migration of another,
 * settling it only once that controller is gone; the same through startSwarmServices (the leader's
 * periodic pass); and health records one controller wrote read by the next.
 *
 * Another process is played by a plain connection named as its pool would be (`vscode-swarm/<id>`) and a
 * document store writing under that id: closing the connection is that process dying.
 */
import { mkdtemp, readFile, readdir, rm, writeFile, mkdir } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import pg from 'pg';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { loadConfig } from '../../src/config.js';
import { createSwarm, startSwarmServices } from '../../src/controller/create-swarm.js';
import { SwarmController } from '../../src/controller/swarm-controller.js';
import { HealthMonitor } from '../../src/health/health-monitor.js';
import { MigrationManager, type Migration, MIGRATION_STEPS } from '../../src/migration/migration-manager.js';
import { FileDocumentStore, PgDocumentStore, PgInstanceStore, StorePool, migrate, type DocumentStore } from '../../src/store/index.js';
import { APPLICATION_PREFIX, PROCESS_ID } from '../../src/store/postgres/pool.js';
import { waitUntil } from '../../src/timing/wait-until.js';
import { contractInstance } from '../contract/instance-store-contract.js';
import { createDatabase, startPostgres, type TestPostgres } from '../helpers/postgres.js';

let server: TestPostgres;
let databases = 0;
const opened: { close(): Promise<void> }[] = [];
const dirs: string[] = [];

beforeAll(async () => {
  server = await startPostgres();
});
afterAll(async () => {
  for (const o of opened.reverse()) await o.close().catch(() => undefined);
  await server?.stop();
  for (const dir of dirs) await rm(dir, { recursive: true, force: true });
});

async function tempDir(): Promise<string> {
  const dir = await mkdtemp(path.join(os.tmpdir(), 'swarm-docs-'));
  dirs.push(dir);
  return dir;
}

/** A new migrated database on the shared server; its URL. */
async function freshDatabase(): Promise<string> {
  const url = await createDatabase(server, `docs_${++databases}`);
  await migrate(pool(url));
  return url;
}

function pool(url: string): StorePool {
  const p = new StorePool({ databaseUrl: url, max: 3 });
  opened.push(p);
  return p;
}

/** A connection named as process `id`'s pool names its sessions: that process is alive while it is open. */
async function processSession(url: string, id: string): Promise<pg.Client> {
  const client = new pg.Client({ connectionString: url, application_name: `${APPLICATION_PREFIX}${id}` });
  await client.connect();
  opened.push({ close: () => client.end().catch(() => undefined) });
  return client;
}

/** Ends a process's session and waits until the server no longer lists it. */
async function endSession(client: pg.Client, db: StorePool, id: string): Promise<void> {
  await client.end();
  await waitUntil(
    async () => ((await db.query('SELECT 1 FROM pg_stat_activity WHERE application_name = $1', [`${APPLICATION_PREFIX}${id}`])).rowCount === 0 ? true : undefined),
    { timeoutMs: 10_000, what: `the session of ${id} to end` },
  );
}

async function rejection(work: Promise<unknown>): Promise<Error & { code?: string; field?: string }> {
  return work.then(
    (value) => expect.fail(`expected a rejection, got ${JSON.stringify(value)}`),
    (err: unknown) => err as Error & { code?: string; field?: string },
  );
}

interface Harness {
  /** Two stores on the same state (two controllers, or the same one reopened). */
  one: DocumentStore;
  two: DocumentStore;
}

const implementations: [string, () => Promise<Harness>][] = [
  ['files', async () => {
    const dir = await tempDir();
    return { one: new FileDocumentStore(dir), two: new FileDocumentStore(dir) };
  }],
  ['postgres', async () => {
    const url = await freshDatabase();
    return { one: new PgDocumentStore({ pool: pool(url) }), two: new PgDocumentStore({ pool: pool(url) }) };
  }],
];

describe.each(implementations)('document store contract: %s', (_label, make) => {
  it('puts, gets, lists by kind, overwrites and removes', async () => {
    const { one } = await make();
    expect(await one.get('health', 'ws-a')).toBeUndefined();
    await one.put('health', 'ws-a', { instanceId: 'ws-a', history: [1, 2] });
    await one.put('health', 'ws-b', ['a top-level array', { nested: true }]);
    await one.put('migrations', 'mig-0123456789ab', { id: 'mig-0123456789ab' });
    expect((await one.get('health', 'ws-a'))?.doc).toEqual({ instanceId: 'ws-a', history: [1, 2] });
    expect((await one.get('health', 'ws-b'))?.doc).toEqual(['a top-level array', { nested: true }]);
    expect((await one.list('health')).map((d) => d.id).sort()).toEqual(['ws-a', 'ws-b']);
    expect((await one.list('migrations')).map((d) => [d.id, d.doc])).toEqual([['mig-0123456789ab', { id: 'mig-0123456789ab' }]]);

    await one.put('health', 'ws-a', { instanceId: 'ws-a', history: [3] });
    expect((await one.get('health', 'ws-a'))?.doc).toEqual({ instanceId: 'ws-a', history: [3] });
    expect(await one.remove('health', 'ws-a')).toBe(true);
    expect(await one.remove('health', 'ws-a')).toBe(false);
    expect(await one.get('health', 'ws-a')).toBeUndefined();
    expect((await one.list('health')).map((d) => d.id)).toEqual(['ws-b']);
  });

  it('refuses ids its kind does not allow, and unknown kinds, before they name anything', async () => {
    const { one } = await make();
    for (const [kind, id] of [['health', '../escape'], ['health', 'UPPER'], ['health', ''], ['migrations', 'mig-../../x'], ['migrations', 'ws-a']] as const) {
      for (const work of [one.get(kind, id), one.put(kind, id, {}), one.remove(kind, id), one.claim(kind, id, 'x')]) {
        const err = await rejection(work);
        expect(err.code).toBe('INVALID_INPUT');
        expect(err.field).toBe(kind === 'health' ? 'instanceId' : 'migrationId');
      }
    }
    const err = await rejection(one.put('../etc' as 'health', 'ws-a', {}));
    expect(err).toMatchObject({ code: 'INVALID_INPUT', field: 'kind' });
    expect(await one.list('health')).toEqual([]);
  });

  it('shows what one store instance wrote to another on the same state', async () => {
    const { one, two } = await make();
    await one.put('migrations', 'mig-aaaaaaaaaaaa', { status: 'in-progress' });
    expect((await two.get('migrations', 'mig-aaaaaaaaaaaa'))?.doc).toEqual({ status: 'in-progress' });
    expect((await two.list('migrations')).map((d) => d.id)).toEqual(['mig-aaaaaaaaaaaa']);
    await two.put('migrations', 'mig-aaaaaaaaaaaa', { status: 'completed' });
    expect((await one.get('migrations', 'mig-aaaaaaaaaaaa'))?.doc).toEqual({ status: 'completed' });
  });
});

describe('document store: files', () => {
  it('keeps the layout the services always wrote, and lists past temp files and strays', async () => {
    const dir = await tempDir();
    const store = new FileDocumentStore(dir);
    await store.put('health', 'ws-a', { instanceId: 'ws-a' });
    expect(JSON.parse(await readFile(path.join(dir, 'health', 'ws-a.json'), 'utf8'))).toEqual({ instanceId: 'ws-a' });
    // What an older version left, written by hand: read as it is.
    await mkdir(path.join(dir, 'migrations'), { recursive: true });
    await writeFile(path.join(dir, 'migrations', 'mig-0123456789ab.json'), JSON.stringify({ id: 'mig-0123456789ab' }));
    await writeFile(path.join(dir, 'migrations', '.tmp-mig-0123456789ac.json.0a1b2c3d4e5f'), '{"half'); // an interrupted write
    await writeFile(path.join(dir, 'migrations', 'mig-0123456789ad.export.tar'), 'spooled archive');
    await writeFile(path.join(dir, 'migrations', 'mig-0123456789ae.json'), '{ not json');
    expect((await store.list('migrations')).map((d) => d.id)).toEqual(['mig-0123456789ab']);
    expect((await readdir(path.join(dir, 'migrations'))).length).toBe(4); // listing deletes nothing
    expect(store.shared).toBe(false);
    expect(await store.orphaned()).toEqual(new Set());
  });
});

describe('document store: PostgreSQL', () => {
  it('records the writing process on every row and reports it with the document', async () => {
    const url = await freshDatabase();
    const db = pool(url);
    const mine = new PgDocumentStore({ pool: db });
    const other = new PgDocumentStore({ pool: db, processId: 'proc-other' });
    await mine.put('health', 'ws-a', { n: 1 });
    await other.put('health', 'ws-b', { n: 2 });
    const { rows } = await db.query<{ id: string; written_by: string }>('SELECT id, written_by FROM documents ORDER BY id');
    expect(rows).toEqual([{ id: 'ws-a', written_by: PROCESS_ID }, { id: 'ws-b', written_by: 'proc-other' }]);
    expect((await mine.get('health', 'ws-b'))?.writer).toBe('proc-other');
    expect(Object.fromEntries((await other.list('health')).map((d) => [d.id, d.writer]))).toEqual({ 'ws-a': PROCESS_ID, 'ws-b': 'proc-other' });
    // A later write takes the row over.
    await other.put('health', 'ws-a', { n: 3 });
    expect((await mine.get('health', 'ws-a'))?.writer).toBe('proc-other');
  });

  it('reports as orphaned what a process with no session left wrote, not what a live one or this one wrote', async () => {
    const url = await freshDatabase();
    const db = pool(url);
    const live = await processSession(url, 'proc-live');
    const dying = await processSession(url, 'proc-dying');
    await new PgDocumentStore({ pool: db, processId: 'proc-live' }).put('migrations', 'mig-11111111aaaa', { by: 'live' });
    await new PgDocumentStore({ pool: db, processId: 'proc-dying' }).put('migrations', 'mig-22222222aaaa', { by: 'dying' });
    await new PgDocumentStore({ pool: db, processId: 'proc-dying' }).put('health', 'ws-dying', { by: 'dying' });
    const mine = new PgDocumentStore({ pool: db });
    await mine.put('migrations', 'mig-33333333aaaa', { by: 'me' });

    expect(await mine.orphaned('migrations')).toEqual(new Set());
    await endSession(dying, db, 'proc-dying');
    expect(await mine.orphaned('migrations')).toEqual(new Set(['mig-22222222aaaa']));
    expect(await mine.orphaned('health')).toEqual(new Set(['ws-dying']));
    await endSession(live, db, 'proc-live');
    expect(await mine.orphaned('migrations')).toEqual(new Set(['mig-11111111aaaa', 'mig-22222222aaaa']));

    // The instance store asks the same question of its rows.
    const instances = new PgInstanceStore({ pool: db });
    opened.push(instances);
    await instances.load();
    await instances.register(contractInstance('ws-creating', { status: 'creating' }));
    await instances.register(contractInstance('ws-mine', { status: 'creating' }));
    await db.query(`UPDATE instances SET written_by = 'proc-dying' WHERE id = 'ws-creating'`);
    expect(await instances.orphanedWrites(['creating'])).toEqual(new Set(['ws-creating']));
    expect(await instances.orphanedWrites(['running'])).toEqual(new Set());
    // A live controller's write that keeps the status (a health check's findings) leaves the dead writer
    // named: the record is still orphaned. One that changes the status takes it over.
    await instances.update('ws-creating', { health: 'unhealthy', healthReason: 'checked by the leader' });
    expect(await instances.orphanedWrites(['creating'])).toEqual(new Set(['ws-creating']));
    await instances.update('ws-creating', { status: 'running' });
    expect(await instances.orphanedWrites(['creating', 'running'])).toEqual(new Set());
  });

  it('lets exactly one of several controllers claim an orphan', async () => {
    const url = await freshDatabase();
    const db = pool(url);
    await new PgDocumentStore({ pool: db, processId: 'proc-dead' }).put('migrations', 'mig-44444444aaaa', { by: 'dead' });
    const claimants = ['proc-b', 'proc-c', 'proc-d'].map((processId) => new PgDocumentStore({ pool: pool(url), processId }));
    const won = await Promise.all(claimants.map((c) => c.claim('migrations', 'mig-44444444aaaa', 'proc-dead')));
    expect(won.filter(Boolean)).toHaveLength(1);
    const winner = ['proc-b', 'proc-c', 'proc-d'][won.indexOf(true)];
    expect((await claimants[0]!.get('migrations', 'mig-44444444aaaa'))?.writer).toBe(winner);
    expect(await claimants[0]!.claim('migrations', 'mig-55555555aaaa', 'proc-dead')).toBe(false); // no such document
  });
});

/** A migration as controller A's journal holds it while A runs it: in progress, before verification. */
function runningMigration(id: string, instanceId: string): Migration {
  const at = new Date().toISOString();
  return {
    id, instanceId, instanceName: instanceId, source: 'docker', target: 'fly', strategy: 'stop-and-recreate',
    status: 'in-progress', createdAt: at, updatedAt: at, deadline: new Date(Date.now() + 600_000).toISOString(), sourceWasRunning: true,
    steps: MIGRATION_STEPS.map((name, i) => ({ name, status: i < 3 ? ('completed' as const) : i === 3 ? ('in-progress' as const) : ('pending' as const) })),
  };
}

describe('migration journals shared by two controllers', () => {
  it("lists A's migration on B, leaves it alone while A lives, refuses to cancel it, and settles it once A is gone", async () => {
    const url = await freshDatabase();
    const db = pool(url);
    const stateDir = await tempDir();
    const config = await loadConfig({ file: false, env: { VSCODE_SWARM_STATE_DIR: stateDir } });
    const registry = new PgInstanceStore({ pool: db });
    // Controller B: a real controller on the shared instance store, no providers (none is needed to decide).
    const controllerB = new SwarmController({ config, registry, providers: {}, lockStateDir: false });
    opened.push(controllerB);
    await controllerB.initialize();
    await registry.register(contractInstance('ws-moving', { status: 'migrating', statusReason: 'migrating to fly (A)' }));

    // Controller A: alive while its session is open; its journal written through its own store.
    const sessionA = await processSession(url, 'ctrl-a');
    const journalA = new PgDocumentStore({ pool: db, processId: 'ctrl-a' });
    const migration = runningMigration('mig-a1a1a1a1a1a1', 'ws-moving');
    await journalA.put('migrations', migration.id, migration);

    let now = Date.now();
    const managerB = new MigrationManager({ controller: controllerB, stateDir, documents: new PgDocumentStore({ pool: db }), orphanConfirmMs: 10_000, now: () => now });
    expect(managerB.sharedStore).toBe(true);
    expect((await managerB.list()).map((m) => [m.id, m.status])).toEqual([[migration.id, 'in-progress']]);
    expect(await managerB.get(migration.id)).toEqual(migration);
    expect(await rejection(managerB.cancel(migration.id))).toMatchObject({ code: 'CONFLICT', message: expect.stringMatching(/running on another controller/) });

    // A is alive: B's recover (start-up, or the leader's pass) leaves its migration as it is.
    expect(await managerB.recover()).toEqual([]);
    now += 60_000;
    expect(await managerB.recover()).toEqual([]);
    expect(await journalA.get('migrations', migration.id)).toEqual({ id: migration.id, doc: migration, writer: 'ctrl-a' });
    expect(registry.require('ws-moving').status).toBe('migrating');

    // A dies. Seen gone once: not yet (a live controller reconnecting after a blip looks the same for a moment).
    await endSession(sessionA, db, 'ctrl-a');
    expect(await managerB.recover()).toEqual([]);
    expect((await managerB.get(migration.id)).status).toBe('in-progress');
    now += 10_000;
    const [settled] = await managerB.recover();
    expect(settled).toMatchObject({ id: migration.id, status: 'failed', reason: expect.stringMatching(/controller stopped during export-source-config; rolled back/) });
    const stored = await journalA.get('migrations', migration.id);
    expect(stored).toMatchObject({ writer: PROCESS_ID, doc: { status: 'failed' } });
    expect(registry.require('ws-moving').status).toBe('failed'); // no longer held as migrating
    expect(await managerB.recover()).toEqual([]); // settled once
  });
});

describe('a controller started on PostgreSQL (startSwarmServices)', () => {
  it("settles, as the leader, a dead controller's migration and leaves a live one's alone", async () => {
    const url = await freshDatabase();
    const db = pool(url);
    const seed = new PgInstanceStore({ pool: db });
    opened.push(seed);
    await seed.load();
    await seed.register(contractInstance('ws-dead', { status: 'migrating' }));
    await seed.register(contractInstance('ws-live', { status: 'migrating' }));
    await processSession(url, 'ctrl-live');
    const dead = runningMigration('mig-dddddddddddd', 'ws-dead');
    const live = runningMigration('mig-eeeeeeeeeeee', 'ws-live');
    // ctrl-dead's journal: its controller has no session (killed before this one started).
    await new PgDocumentStore({ pool: db, processId: 'ctrl-dead' }).put('migrations', dead.id, dead);
    await new PgDocumentStore({ pool: db, processId: 'ctrl-live' }).put('migrations', live.id, live);

    const stateDir = await tempDir();
    const base = await loadConfig({ file: false, env: { VSCODE_SWARM_STATE_DIR: stateDir, VSCODE_SWARM_DATABASE_URL: url, VSCODE_SWARM_HEALTH_INTERVAL_MS: '300' } });
    const config = { ...base, gateway: { ...base.gateway, enabled: false }, providers: { ...base.providers, docker: { ...base.providers.docker, enabled: false } } };
    const services = await startSwarmServices(createSwarm(config));
    opened.push(services);
    expect(services.leadership.shared).toBe(true);
    expect((await services.migrations.list()).map((m) => m.id).sort()).toEqual([dead.id, live.id]);

    const settled = await waitUntil(async () => {
      const m = await services.migrations.get(dead.id);
      return m.status === 'in-progress' ? undefined : m;
    }, { timeoutMs: 30_000, what: "the leader to settle the dead controller's migration" });
    expect(settled).toMatchObject({ status: 'failed', reason: expect.stringMatching(/rolled back/) });
    expect(services.controller.registry.require('ws-dead').status).toBe('failed');
    expect(await services.migrations.get(live.id)).toEqual(live);
    expect(services.controller.registry.require('ws-live').status).toBe('migrating');
    expect(await readdir(path.join(stateDir, 'migrations')).catch(() => [])).toEqual([]); // journals are the database's
  });
});

describe('health records shared by two controllers', () => {
  it("lets a new leader carry on from the counts and history the last one wrote", async () => {
    const url = await freshDatabase();
    const db = pool(url);
    const registry = new PgInstanceStore({ pool: db });
    const controllers: SwarmController[] = [];
    for (const _ of [1, 2]) {
      const stateDir = await tempDir();
      const config = await loadConfig({ file: false, env: { VSCODE_SWARM_STATE_DIR: stateDir } });
      const c = new SwarmController({ config, registry: controllers.length ? new PgInstanceStore({ pool: db }) : registry, providers: {}, lockStateDir: false });
      opened.push(c);
      await c.initialize();
      controllers.push(c);
    }
    await registry.register(contractInstance('ws-watched'));
    const [a, b] = controllers.map((controller) => new HealthMonitor({ controller: controller!, stateDir: controller!.config.stateDir, config: controller!.config.health, documents: new PgDocumentStore({ pool: db }) }));
    await a!.recordDecision('ws-watched', { status: 'unhealthy', reason: 'provider gone', action: 'failover' });
    const seen = await b!.history('ws-watched');
    expect(seen.history.map((h) => [h.reason, h.action])).toEqual([['provider gone', 'failover']]);
    await b!.recordDecision('ws-watched', { status: 'recovering', reason: 'moved', action: 'migrate' });
    // The next leader (a monitor that has not read it yet) finds both.
    const next = new HealthMonitor({ controller: controllers[0]!, stateDir: controllers[0]!.config.stateDir, config: controllers[0]!.config.health, documents: new PgDocumentStore({ pool: db }) });
    expect((await next.history('ws-watched')).history.map((h) => h.reason)).toEqual(['provider gone', 'moved']);
    // Nothing in either state directory: the records are the database's.
    for (const c of controllers) expect(await readdir(path.join(c.config.stateDir, 'health')).catch(() => [])).toEqual([]);
  });
});
