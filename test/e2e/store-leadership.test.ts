/**
 * Work that must run once runs once: three controllers as separate processes (`node dist/src/cli.js up`,
 * so run `npm run build` first) on one real PostgreSQL and the real Docker engine, each with its own state
 * directory and ports and the same swarm id. Exactly one leads; creates spread over all three while the
 * leader reconciles are never undone by its reconcile; SIGKILL of the leader hands the lead to another
 * within two check intervals, and that one repairs an editor the test kills; a paused leader (SIGSTOP) that
 * wakes up after losing the lease repairs nothing.
 *
 * The fencing and the lost database are shown on PgLeadership itself (in this process, on its own
 * PostgreSQL): a holder whose lease the database gave to another is refused by the database even while its
 * own clock still says it leads, and a holder that cannot reach the database stops leading until it can.
 * There too, a controller's reconcile on a shared store leaves a fresh `creating` record (another
 * controller's create in flight) alone and settles only one older than the grace.
 *
 * Editors are the light stand-in image. LEADERSHIP_TEST_LOGS=1 prints each controller's leadership, reconcile
 * and repair log lines at the end, to see who did what.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { LABEL_MANAGED, LABEL_NAME, LABEL_SWARM } from '../../providers/docker/docker-mapping.js';
import { createSwarm } from '../../src/controller/create-swarm.js';
import { PgLeadership } from '../../src/store/postgres/leadership.js';
import { migrate } from '../../src/store/postgres/migrations.js';
import { StorePool } from '../../src/store/postgres/pool.js';
import { waitUntil } from '../../src/timing/wait-until.js';
import { containerOf as containerOfSwarm, leaseHolder, leaseRow as leaseRowOf, logged, startControllerProcess, type ControllerProcess, type LeaseRow } from '../helpers/controller-process.js';
import { contractInstance } from '../contract/instance-store-contract.js';
import { cleanUp, docker, makeStateDir, testConfig } from '../helpers/docker.js';
import { callTool } from '../helpers/mcp.js';
import { startPostgres, type TestPostgres } from '../helpers/postgres.js';
import { ensureStandinImage, STANDIN_IMAGE } from '../helpers/standin-image.js';

const PREFIX = 'e2e-lead';
const SWARM_ID = 'e2e-lead-swarm';
const LEASE = `swarm:${SWARM_ID}`;
/** The health check interval, and so the lease TTL (the shortest interval of the leader's loops). */
const INTERVAL_MS = 2_500;

let server: TestPostgres;
let pool: StorePool;
const stateDirs: string[] = [];
const controllers: ControllerProcess[] = [];
/** Instances made by the concurrent creates: id → name. */
const made = new Map<string, string>();

const leaseRow = (): Promise<LeaseRow | undefined> => leaseRowOf(pool, LEASE);

/** The controller holding a live lease, or undefined. */
const leader = (among: ControllerProcess[] = controllers): Promise<ControllerProcess | undefined> => leaseHolder(pool, LEASE, among);

const containerOf = (instanceId: string): ReturnType<typeof containerOfSwarm> => containerOfSwarm(SWARM_ID, instanceId);

beforeAll(async () => {
  await ensureStandinImage();
  await cleanUp(PREFIX);
  server = await startPostgres();
  pool = new StorePool({ databaseUrl: server.url });
  await migrate(pool);
  // One after the other: each starts while the others run, as a controller joining a live swarm does.
  for (const label of ['a', 'b', 'c']) {
    const stateDir = await makeStateDir(`${PREFIX}-${label}`);
    stateDirs.push(stateDir);
    controllers.push(
      await startControllerProcess(label, stateDir, {
        swarmId: SWARM_ID,
        store: { databaseUrl: server.url },
        providers: { docker: { image: STANDIN_IMAGE, pullImages: false, stopTimeoutSeconds: 1 } },
        health: { intervalMs: INTERVAL_MS, backoffMs: 0, failureThreshold: 1 },
        idle: { enabled: false },
      }),
    );
  }
}, 180_000);

afterAll(async () => {
  if (process.env.LEADERSHIP_TEST_LOGS) for (const c of controllers) console.error(c.label, c.pid, JSON.stringify(c.logs().filter((l) => /lead|recovery|reconcil|lease/.test(String(l.msg))), null, 0));
  for (const c of controllers) await c.stop();
  await pool?.close();
  await server?.stop();
  await cleanUp(PREFIX);
  for (const dir of stateDirs) await cleanUp(PREFIX, dir);
}, 120_000);

describe('three controller processes on one PostgreSQL', () => {
  it('have exactly one leader, and it stays the leader while it lives', async () => {
    const first = await waitUntil(() => leader(), { timeoutMs: 2 * INTERVAL_MS, what: 'a leader' });
    // A few renewals later the same one leads, with the same fencing token (no flapping).
    const token = (await leaseRow())!.fencing_token;
    await new Promise((resolve) => setTimeout(resolve, 2 * INTERVAL_MS));
    expect((await leader())?.label).toBe(first.label);
    expect((await leaseRow())!.fencing_token).toBe(token);
    expect(controllers.filter((c) => logged(c, 'leading the swarm').length > 0).map((c) => c.label)).toEqual([first.label]);
  });

  it('keep all of 20 concurrent creates spread over them while the leader reconciles', async () => {
    const results = await Promise.all(
      Array.from({ length: 20 }, (_, n) => callTool(controllers[n % 3]!.mcp, 'create_swarm_instance', { name: `${PREFIX}-w${n}` })),
    );
    for (const [n, result] of results.entries()) {
      expect(result.isError, `create ${n}: ${JSON.stringify(result.content)}`).toBeFalsy();
      const instance = (result.structuredContent as { instance: { id: string; name: string } }).instance;
      made.set(instance.id, instance.name);
    }
    expect(made.size).toBe(20);
    // Two more reconcile passes of the leader over what the others made.
    await new Promise((resolve) => setTimeout(resolve, 2 * INTERVAL_MS));
    const { rows } = await pool.query<{ id: string; status: string }>("SELECT id, data->>'status' AS status FROM instances WHERE name LIKE $1", [`${PREFIX}-w%`]);
    expect(rows.map((r) => [r.id, r.status]).sort()).toEqual([...made.keys()].map((id) => [id, 'running']).sort());
    const containers = await docker.listContainers({ filters: { label: [`${LABEL_MANAGED}=true`, `${LABEL_SWARM}=${SWARM_ID}`] } });
    expect(containers.map((c) => c.Labels[LABEL_NAME]).filter((n) => n?.startsWith(`${PREFIX}-w`)).sort()).toEqual([...made.values()].sort());
    for (const c of controllers) {
      const undone = c.logs().filter((l) => l.msg === 'reconciled' && Array.isArray(l.removed) && l.removed.length > 0);
      expect(undone, `controller ${c.label} removed records in reconcile`).toEqual([]);
    }
  });

  it('hand the lead to another within two intervals when the leader is SIGKILLed, and the new leader repairs a killed editor', async () => {
    const old = await waitUntil(() => leader(), { timeoutMs: 2 * INTERVAL_MS, what: 'the current leader' });
    const oldToken = BigInt((await leaseRow())!.fencing_token);
    old.signal('SIGKILL');
    const survivors = controllers.filter((c) => c !== old);
    const next = await waitUntil(() => leader(survivors), { timeoutMs: 2 * INTERVAL_MS, intervalMs: 50, what: 'a new leader within two check intervals' });
    expect(BigInt((await leaseRow())!.fencing_token)).toBeGreaterThan(oldToken);

    const [victim] = made.keys();
    const before = await containerOf(victim!);
    await docker.getContainer(before.id).kill();
    await waitUntil(async () => (logged(next, 'recovery step done', victim).length ? true : undefined), { timeoutMs: 30_000, what: `the new leader repairing ${victim}` });
    const after = await containerOf(victim!);
    expect(after.running).toBe(true);
    expect(after.startedAt).not.toBe(before.startedAt);
    const bystander = survivors.find((c) => c !== next)!;
    expect(logged(bystander, 'recovery step done', victim)).toEqual([]);
  });

  it('let a paused leader that wakes up after losing its lease repair nothing', async () => {
    const paused = await waitUntil(() => leader(), { timeoutMs: 2 * INTERVAL_MS, what: 'the current leader' });
    const others = controllers.filter((c) => c !== paused && c.child.signalCode === null);
    paused.signal('SIGSTOP');
    const next = await waitUntil(() => leader(others), { timeoutMs: 2 * INTERVAL_MS + 1_000, intervalMs: 50, what: 'another leader while the first is paused' });
    // Broken while the old leader sleeps: by the time it wakes, a repair by it would be stale authority.
    const victim = [...made.keys()][1]!;
    const before = await containerOf(victim);
    await docker.getContainer(before.id).kill();
    const repairsBefore = logged(paused, 'recovery step done').length;
    paused.signal('SIGCONT');
    await waitUntil(async () => (logged(paused, 'no longer leading the swarm; its loops stop acting').length ? true : undefined), { timeoutMs: 10_000, what: 'the woken controller noticing it lost the lead' });
    await waitUntil(async () => (logged(next, 'recovery step done', victim).length ? true : undefined), { timeoutMs: 30_000, what: `the current leader repairing ${victim}` });
    // Two more intervals in which the woken one could have acted.
    await new Promise((resolve) => setTimeout(resolve, 2 * INTERVAL_MS));
    expect(logged(paused, 'recovery step done').length).toBe(repairsBefore);
    expect(logged(paused, 'recovery step done', victim)).toEqual([]);
    expect((await leader())?.label).toBe(next.label);
    expect((await containerOf(victim)).running).toBe(true);
  });
});

describe('PgLeadership on its own PostgreSQL', () => {
  let own: TestPostgres;
  let ownPool: StorePool;
  const made: PgLeadership[] = [];
  const contender = (holder: string, ttlMs = 60_000): PgLeadership => {
    const l = new PgLeadership({ pool: ownPool, name: 'swarm:fence-test', ttlMs, holder });
    made.push(l);
    return l;
  };

  beforeAll(async () => {
    own = await startPostgres();
    ownPool = new StorePool({ databaseUrl: own.url, connectTimeoutMs: 1_000, queryTimeoutMs: 2_000 });
    await migrate(ownPool);
  }, 60_000);
  afterAll(async () => {
    for (const l of made) await l.stop().catch(() => undefined);
    await ownPool?.close();
    await own?.stop();
  });

  it('refuses a fenced action of a holder whose lease the database gave to another, though its own clock says it leads', async () => {
    const a = contender('a');
    const b = contender('b');
    await a.start();
    await b.start();
    expect([a.isLeader, b.isLeader]).toEqual([true, false]);
    // What a long pause looks like from the database: the lease expired and another took it.
    await ownPool.query("UPDATE leases SET expires_at = clock_timestamp() WHERE name = 'swarm:fence-test'");
    await b.check();
    expect(b.isLeader).toBe(true);
    expect(a.isLeader).toBe(true); // its 60 s deadline has not passed: only the database knows
    let ran = false;
    await expect(a.fenced(async () => (ran = true))).rejects.toMatchObject({ code: 'CONFLICT', message: expect.stringContaining('stale') });
    expect(ran).toBe(false);
    await expect(b.fenced(async () => 'done')).resolves.toBe('done');
    await a.check();
    expect(a.isLeader).toBe(false);
    await a.stop();
    await b.stop();
  });

  it("leaves another controller's create in flight alone in reconcile, and settles one older than the grace as interrupted", async () => {
    const stateDir = await makeStateDir(`${PREFIX}-grace`);
    stateDirs.push(stateDir);
    const c = createSwarm(
      testConfig(stateDir, { swarmId: `${PREFIX}-grace`, store: { databaseUrl: own.url }, providers: { docker: { image: STANDIN_IMAGE, stopTimeoutSeconds: 1 } } }),
    );
    await c.initialize();
    try {
      // What another controller's create looks like before its container exists: a fresh `creating` record.
      const fresh = new Date().toISOString();
      await c.registry.register(contractInstance(`${PREFIX}-inflight`, { status: 'creating', providerRef: {}, createdAt: fresh, updatedAt: fresh }));
      // And one whose controller died long ago (its last write is an hour old).
      const old = new Date(Date.now() - 3_600_000).toISOString();
      await c.registry.register(contractInstance(`${PREFIX}-abandoned`, { status: 'creating', providerRef: {}, createdAt: old, updatedAt: old }));
      const report = await c.reconcile('docker');
      expect(report.removed).toEqual([`${PREFIX}-abandoned`]);
      expect(c.registry.get(`${PREFIX}-inflight`)?.status).toBe('creating');
      expect(c.registry.get(`${PREFIX}-abandoned`)).toBeUndefined();
    } finally {
      await c.close();
    }
  });

  it('stops leading when the database is gone, and leads again when it is back', async () => {
    const c = contender('c', 5_000);
    await c.start();
    expect(c.isLeader).toBe(true);
    await own.kill();
    await c.check();
    expect(c.isLeader).toBe(false);
    await expect(c.fenced(async () => 'acted')).rejects.toMatchObject({ code: 'CONFLICT' });
    await own.restart();
    await waitUntil(async () => {
      await c.check();
      return c.isLeader ? true : undefined;
    }, { timeoutMs: 20_000, intervalMs: 200, what: 'leading again once the database is back' });
    await expect(c.fenced(async () => 'acted')).resolves.toBe('acted');
  }, 60_000);
});
