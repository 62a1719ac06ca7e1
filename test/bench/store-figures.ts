/**
 * The shared state store (issue 12), each figure beside a baseline measured in the same run:
 *   - registry get / list / update on PostgreSQL (PgInstanceStore: reads from its NOTIFY-fed cache, writes
 *     in a transaction with a row lock and an announcement) vs the JSON-file store (InstanceRegistry:
 *     reads from memory, writes an atomic file) over the same records;
 *   - create throughput: the same concurrent creates over MCP spread across three controller processes on
 *     one PostgreSQL vs all through one of them (stand-in image; the engine is shared, so this shows what
 *     the store and the coordination cost or save, not more Docker);
 *   - leader failover: the time from SIGKILL of the leading controller to another one holding the lease, vs
 *     the time to hand it over when the leader stops cleanly (it gives the lease up).
 * Needs a PostgreSQL (test/helpers/postgres.ts starts a throw-away one) and, for the process figures, a
 * build (`dist/src/cli.js`).
 */
import { rm } from 'node:fs/promises';
import type { VSCodeInstance } from '../../providers/provider.js';
import type { SwarmConfigInput } from '../../src/config.js';
import { InstanceRegistry } from '../../src/registry/instance-registry.js';
import type { InstanceStore } from '../../src/store/instance-store.js';
import { PgInstanceStore } from '../../src/store/postgres/instance-store.js';
import { migrate } from '../../src/store/postgres/migrations.js';
import { StorePool } from '../../src/store/postgres/pool.js';
import { waitUntil } from '../../src/timing/wait-until.js';
import { leaseHolder, startControllerProcess, type ControllerProcess } from '../helpers/controller-process.js';
import { cleanUp, makeStateDir } from '../helpers/docker.js';
import { callTool } from '../helpers/mcp.js';
import { startPostgres, type TestPostgres } from '../helpers/postgres.js';
import { ensureStandinImage, STANDIN_IMAGE } from '../helpers/standin-image.js';
import { figure, median, spread, time, type Figure } from './figures.js';

export const STORE_FIGURES = {
  get: 'store get by id: PostgreSQL (cache) vs JSON files',
  list: 'store list by status: PostgreSQL (cache) vs JSON files',
  update: 'store update: PostgreSQL (transaction + NOTIFY) vs JSON files (atomic file)',
  creates: 'concurrent creates over MCP: three controllers on one PostgreSQL vs one',
  failover: 'leader failover after SIGKILL vs clean hand-over',
} as const;

const RECORDS = 1_000;
const OWNERS = 50;
const STATUSES = ['running', 'stopped', 'failed'] as const;

function record(n: number, at: string): VSCodeInstance {
  const id = `bench-${n.toString(36).padStart(4, '0')}`;
  return {
    id, name: id, providerType: 'docker', status: STATUSES[n % 3]!, health: 'healthy', owner: `user-${n % OWNERS}`,
    config: { name: id, image: 'codercom/code-server:4.99.3', resources: { cpu: 1, memoryMb: 2048 } },
    endpoint: { url: `http://127.0.0.1:${20_000 + n}`, host: '127.0.0.1', port: 20_000 + n },
    providerRef: { containerId: n.toString(16).padStart(64, '0'), volume: `vscode-swarm-${id}-workspace` },
    createdAt: at, updatedAt: at,
  } as VSCodeInstance;
}

/** Per-operation cost in µs of `op` over `ids`, as the median of `runs` passes. */
async function perOp(ids: string[], op: (id: string, k: number) => unknown): Promise<number> {
  const ms = await time(async () => {
    for (const [k, id] of ids.entries()) await op(id, k);
  });
  return (ms * 1000) / ids.length;
}

/** get, list and update on both stores over the same RECORDS records, alternated run by run. */
export async function storeOpFigures(runs: number): Promise<Figure[]> {
  const server = await startPostgres();
  const stateDir = await makeStateDir('bench-store');
  const pool = new StorePool({ databaseUrl: server.url });
  const stores: { pg?: PgInstanceStore; file?: InstanceRegistry } = {};
  try {
    await migrate(pool);
    stores.pg = new PgInstanceStore({ pool });
    stores.file = new InstanceRegistry({ stateDir });
    await stores.pg.load();
    await stores.file.load();
    const at = new Date().toISOString();
    const records = Array.from({ length: RECORDS }, (_, n) => record(n, at));
    for (const store of [stores.pg, stores.file] as InstanceStore[]) {
      for (let i = 0; i < records.length; i += 50) await Promise.all(records.slice(i, i + 50).map((r) => store.register(r)));
    }
    // Measured as a controller holds them after a start: each store loaded afresh from what it persisted
    // (the concurrent registers above leave the PostgreSQL cache out of creation order, which a loaded
    // cache is not, and list()'s sort costs n log n instead of n on it).
    await stores.pg.close();
    stores.pg = new PgInstanceStore({ pool });
    stores.file = new InstanceRegistry({ stateDir });
    await stores.pg.load();
    await stores.file.load();
    const ids = records.map((r) => r.id);
    const sample = ids.filter((_, k) => k % 10 === 0); // 100 writes per pass
    const result = { get: { pg: [] as number[], file: [] as number[] }, list: { pg: [] as number[], file: [] as number[] }, update: { pg: [] as number[], file: [] as number[] } };
    let sink = 0;
    for (let r = 0; r < runs; r++) {
      for (const side of r % 2 ? (['file', 'pg'] as const) : (['pg', 'file'] as const)) {
        const store: InstanceStore = stores[side]!;
        result.get[side].push(await perOp(ids, (id) => (sink += store.get(id) ? 1 : 0)));
        result.list[side].push(await perOp(ids.slice(0, 200), (_, k) => (sink += store.list({ status: STATUSES[k % 3]! }).length)));
        result.update[side].push(await perOp(sample, (id, k) => store.update(id, { health: (r + k) % 2 ? 'unhealthy' : 'healthy' })));
      }
    }
    if (sink === 0) throw new Error('the stores returned nothing');
    const unit = 'µs' as const;
    const fig = (name: string, ours: number[], base: number[]): Figure => ({
      ...figure(name, ours, `JSON-file store (${RECORDS} records)`, base, unit),
      spread: spread(ours),
      baselineSpread: spread(base),
    });
    return [
      fig(STORE_FIGURES.get, result.get.pg, result.get.file),
      { ...fig(STORE_FIGURES.list, result.list.pg, result.list.file), detail: `a third of ${RECORDS} records per call, 200 calls per run` },
      { ...fig(STORE_FIGURES.update, result.update.pg, result.update.file), detail: `${sample.length} sequential updates per run` },
    ];
  } finally {
    await stores.pg?.close().catch(() => undefined);
    await pool.close().catch(() => undefined);
    await server.stop();
    await rm(stateDir, { recursive: true, force: true });
  }
}

const SWARM_ID = 'bench-store-swarm';
const PREFIX = 'bench-pg';

async function controllers(server: TestPostgres, n: number, stateDirs: string[]): Promise<ControllerProcess[]> {
  const config: SwarmConfigInput = {
    swarmId: SWARM_ID,
    store: { databaseUrl: server.url },
    providers: { docker: { image: STANDIN_IMAGE, pullImages: false, stopTimeoutSeconds: 1 } },
    health: { intervalMs: 2_500 },
    idle: { enabled: false },
  };
  const started: ControllerProcess[] = [];
  for (let i = 0; i < n; i++) {
    const dir = await makeStateDir(`${PREFIX}-${i}`);
    stateDirs.push(dir);
    started.push(await startControllerProcess(`c${i}`, dir, config));
  }
  return started;
}

/** Creates `count` instances at once over MCP, round-robin over `via`; then deletes them. Wall time in ms. */
async function createBurst(via: ControllerProcess[], count: number, tag: string): Promise<number> {
  const ids: string[] = [];
  const ms = await time(async () => {
    const results = await Promise.all(Array.from({ length: count }, (_, n) => callTool(via[n % via.length]!.mcp, 'create_swarm_instance', { name: `${PREFIX}-${tag}-${n}` })));
    for (const r of results) {
      if (r.isError) throw new Error(`create failed: ${JSON.stringify(r.content)}`);
      ids.push((r.structuredContent as { instance: { id: string } }).instance.id);
    }
  });
  await Promise.all(ids.map((id, n) => callTool(via[n % via.length]!.mcp, 'delete_swarm_instance', { instanceId: id })));
  return ms;
}

/** Three `up` processes on one PostgreSQL; the same burst through all three and through one, alternated. */
export async function storeCreateFigures(runs: number, count = 12): Promise<Figure[]> {
  await ensureStandinImage();
  await cleanUp(PREFIX);
  const server = await startPostgres();
  const stateDirs: string[] = [];
  let procs: ControllerProcess[] = [];
  try {
    procs = await controllers(server, 3, stateDirs);
    const three: number[] = [];
    const one: number[] = [];
    for (let r = 0; r < runs; r++) {
      if (r % 2) one.push(await createBurst(procs.slice(0, 1), count, `o${r}`));
      three.push(await createBurst(procs, count, `t${r}`));
      if (r % 2 === 0) one.push(await createBurst(procs.slice(0, 1), count, `o${r}`));
    }
    return [
      {
        ...figure(STORE_FIGURES.creates, three, 'the same creates all through one controller', one),
        spread: spread(three),
        baselineSpread: spread(one),
        detail: `${count} concurrent creates per burst (stand-in image, one engine); ${(count / (median(three) / 1000)).toFixed(1)} vs ${(count / (median(one) / 1000)).toFixed(1)} creates/s`,
      },
    ];
  } finally {
    for (const p of procs) await p.stop();
    await server.stop();
    await cleanUp(PREFIX);
    for (const dir of stateDirs) await cleanUp(PREFIX, dir);
  }
}

/**
 * Two `up` processes per run: the leader is SIGKILLed (or, for the baseline, stopped cleanly) and the time
 * until the other holds the lease is measured from the database. Lease TTL = the health interval (2.5 s).
 */
export async function leaderFailoverFigures(runs: number): Promise<Figure[]> {
  await ensureStandinImage();
  const server = await startPostgres();
  const pool = new StorePool({ databaseUrl: server.url });
  const stateDirs: string[] = [];
  const crash: number[] = [];
  const clean: number[] = [];
  try {
    await migrate(pool);
    const lease = `swarm:${SWARM_ID}`;
    const once = async (how: 'kill' | 'stop'): Promise<number> => {
      const procs = await controllers(server, 2, stateDirs);
      try {
        const first = await waitUntil(() => leaseHolder(pool, lease, procs), { timeoutMs: 30_000, intervalMs: 20, what: 'a leader' });
        const other = procs.find((p) => p !== first)!;
        const started = performance.now();
        if (how === 'kill') first.signal('SIGKILL');
        else void first.stop();
        await waitUntil(async () => ((await leaseHolder(pool, lease, procs)) === other ? true : undefined), { timeoutMs: 60_000, intervalMs: 10, what: 'the other controller leading' });
        return performance.now() - started;
      } finally {
        for (const p of procs) await p.stop();
      }
    };
    for (let r = 0; r < runs; r++) {
      for (const how of r % 2 ? (['stop', 'kill'] as const) : (['kill', 'stop'] as const)) (how === 'kill' ? crash : clean).push(await once(how));
    }
    const goal = 2 * 2_500;
    return [
      {
        ...figure(STORE_FIGURES.failover, crash, 'the leader stopping cleanly (gives the lease up)', clean),
        spread: spread(crash),
        baselineSpread: spread(clean),
        goal: `≤ two check intervals (${goal} ms)`,
        meetsGoal: Math.max(...crash) <= goal,
      },
    ];
  } finally {
    await pool.close().catch(() => undefined);
    await server.stop();
    for (const dir of stateDirs) await cleanUp(PREFIX, dir);
  }
}
