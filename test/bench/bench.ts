/**
 * npm run bench [-- --json] [-- --runs N] [-- --instances N] [-- --only SUBSTRING ...] [-- --skip-docker]
 *                 [-- --requests N] [-- --concurrency N] [-- --claims N]
 *
 * Each figure is measured beside a baseline in the same run, alternated run by run, so that a noisy
 * shared machine moves both:
 *   - registry load of N instance files: InstanceRegistry.load() vs a bare readdir + readFile + JSON.parse;
 *   - registry list over them: list() vs a bare filter over an array of the same records;
 *   - Docker create-to-running: SwarmController.createInstance (editor answering /healthz) vs the same
 *     work done straight through the engine API: the same volume, the same container spec (the provider's
 *     own `containerSpec`: labels, limits, privileges, network, mount), start, inspect for the address,
 *     /healthz polled every 20 ms as the provider does — so the ratio isolates the controller;
 *   - create-to-editor-ready through the gateway: createInstance, the one-time link exchanged for the
 *     session cookie, then /healthz through the gateway until 200, vs the same raw engine create
 *     (measured in the same runs as the previous figure);
 *   - warm-buffer claim: createInstance served from a warm buffer of 2 (p50, p95) vs a cold
 *     createInstance of the same spec without a buffer;
 *   - HTTP through the gateway vs straight to the upstream (an echo server in its own thread, and a real
 *     editor's /healthz): requests/second and p99 latency with a keep-alive client, many requests in flight;
 *   - WebSocket round trip through the gateway vs straight to the echo upstream: sequential small writes,
 *     each awaiting its echo;
 *   - gateway sign-in-failure handling: the failure limiter's bookkeeping per failed-credential request
 *     with 100,000 client addresses tracked vs 10;
 *   - tenancy (test/bench/tenancy-figures.ts): an MCP tool call with authorization and a durable audit
 *     event vs the same tool calling the controller directly; the audit log's append throughput
 *     (audit-figures.ts); the failure limiter for a never-seen address at 100,000 tracked vs 10;
 *   - the shared state store (store-figures.ts): get/list/update on PostgreSQL vs the JSON files, concurrent
 *     creates through three controller processes vs one, leader failover after SIGKILL vs a clean hand-over.
 * The load client runs in a worker thread and the echo upstream in another, so that neither shares the
 * gateway's event loop. New figures carry a goal and whether the measured numbers meet it; a missed
 * goal is reported, never a failure. Medians and ratios are printed as a table or, with --json, as JSON;
 * the JSON is also kept in test-artifacts/bench.json. `--only` (repeatable) runs the groups whose key or
 * figure names contain the substring (registry, docker, gateway, warm, http, code-server, websocket, limiter,
 * tenancy, audit, store).
 */
import { once } from 'node:events';
import http from 'node:http';
import { mkdir, readdir, readFile, rm, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { parseArgs } from 'node:util';
import { Worker } from 'node:worker_threads';
import type Docker from 'dockerode';
import { DEFAULT_NETWORK, DockerProvider } from '../../providers/docker/docker-provider.js';
import { EDITOR_PORT, LABEL_MANAGED, LABEL_NAME, containerName, volumeName } from '../../providers/docker/docker-mapping.js';
import type { VSCodeInstance } from '../../providers/provider.js';
import { createSwarm, startSwarmServices, type SwarmServices } from '../../src/controller/create-swarm.js';
import { SwarmController, type CreateResult } from '../../src/controller/swarm-controller.js';
import { AccessLinks, SESSION_COOKIE } from '../../src/gateway/access-links.js';
import { Gateway } from '../../src/gateway/gateway.js';
import { FailureLimiter } from '../../src/gateway/failure-limiter.js';
import { InstanceRegistry } from '../../src/registry/instance-registry.js';
import { waitUntil } from '../../src/timing/wait-until.js';
import { TEST_IMAGE, cleanUp, docker, httpStatus, makeStateDir, testConfig } from '../helpers/docker.js';
import { figure, median, percentile, spread, time, type Figure } from './figures.js';
import { awsBurstFigures, awsEvacuationFigures } from './aws-figures.js';
import { REPOSITORY_FIGURE, repositoryFigures } from './repository-figures.js';
import { SNAPSHOT_FIGURES, snapshotFigures } from './snapshot-figures.js';
import { STORE_FIGURES, leaderFailoverFigures, storeCreateFigures, storeOpFigures } from './store-figures.js';
import { TENANCY_FIG, auditThroughputFigures, limiterFreshAddressFigure, mcpAuthorizationFigures } from './tenancy-figures.js';
import { flyFigures, healthSweepFigure, migrationFigures } from './provider-figures.js';
import type { HttpJob, HttpResult, Job, JobResult, WsJob, WsResult } from './load-worker.js';

interface Options {
  runs: number;
  count: number;
  requests: number;
  concurrency: number;
  claims: number;
  skipDocker: boolean;
}

interface Group {
  key: string;
  names: string[];
  docker: boolean;
  run: (o: Options) => Promise<Figure[]>;
}

const FIG = {
  dockerCreate: 'docker create-to-running',
  gatewayReady: 'create-to-editor-ready through the gateway',
  warm: 'warm-buffer claim',
  echoHttp: 'HTTP req/s, p99 through the gateway (echo)',
  csHttp: 'HTTP req/s, p99 through the gateway (code-server /healthz)',
  ws: 'WebSocket echo round trip through the gateway',
  limiter: 'gateway sign-in-failure handling',
} as const;

function groups(count: number): Group[] {
  return [
    { key: 'registry', names: [`registry load (${count} files)`, `registry list (${count}, filtered)`], docker: false, run: (o) => registryFigures(o.count, o.runs) },
    { key: 'docker', names: [FIG.dockerCreate, FIG.gatewayReady], docker: true, run: (o) => dockerFigures(o.runs) },
    { key: 'warm', names: [FIG.warm], docker: true, run: (o) => warmFigure(o.runs, o.claims).then((f) => [f]) },
    { key: 'http-echo', names: [FIG.echoHttp], docker: false, run: (o) => echoHttpFigures(o) },
    { key: 'http-code-server', names: [FIG.csHttp], docker: true, run: (o) => codeServerHttpFigures(o) },
    { key: 'websocket', names: [FIG.ws], docker: false, run: (o) => wsFigure(o.runs).then((f) => [f]) },
    { key: 'fly', names: ['fly create-to-running (Machines API emulator)'], docker: true, run: (o) => flyFigures(o.runs) },
    { key: 'health', names: ['health sweep over 1000 instances'], docker: false, run: (o) => healthSweepFigure(o.runs).then((f) => [f]) },
    { key: 'migration', names: ['migration downtime'], docker: true, run: (o) => migrationFigures(Math.min(o.runs, 3)) },
    { key: 'limiter', names: [FIG.limiter], docker: false, run: (o) => limiterFigure(o.runs).then((f) => [f]) },
    { key: 'tenancy-mcp', names: [TENANCY_FIG.mcp, TENANCY_FIG.mcpNoAudit], docker: false, run: (o) => mcpAuthorizationFigures(o.runs) },
    { key: 'tenancy-audit', names: [TENANCY_FIG.audit], docker: false, run: (o) => auditThroughputFigures(Math.min(o.runs, 3)) },
    { key: 'tenancy-limiter', names: [TENANCY_FIG.limiterFresh], docker: false, run: (o) => limiterFreshAddressFigure(o.runs).then((f) => [f]) },
    { key: 'aws', names: ['aws-asg burst: 100 concurrent creates to a running editor (emulator, 2 s boot, 20 per host)'], docker: true, run: () => awsBurstFigures() },
    { key: 'repository', names: [REPOSITORY_FIGURE], docker: true, run: (o) => repositoryFigures(Math.min(o.runs, 5)) },
    { key: 'snapshot', names: [SNAPSHOT_FIGURES.snapshot, SNAPSHOT_FIGURES.fork], docker: true, run: (o) => snapshotFigures(Math.min(o.runs, 5)) },
    { key: 'store-ops', names: [STORE_FIGURES.get, STORE_FIGURES.list, STORE_FIGURES.update], docker: false, run: (o) => storeOpFigures(o.runs) },
    { key: 'store-creates', names: [STORE_FIGURES.creates], docker: true, run: (o) => storeCreateFigures(Math.min(o.runs, 3)) },
    { key: 'store-failover', names: [STORE_FIGURES.failover], docker: true, run: (o) => leaderFailoverFigures(Math.min(o.runs, 3)) },
    { key: 'aws-evacuate', names: ['aws-asg: two 50 MiB workspaces moved off a host being terminated (lifecycle hook, emulator)'], docker: true, run: (o) => awsEvacuationFigures(Math.min(o.runs, 3)) },
  ];
}

async function main(): Promise<void> {
  const { values } = parseArgs({
    options: {
      json: { type: 'boolean' },
      runs: { type: 'string' },
      instances: { type: 'string' },
      'skip-docker': { type: 'boolean' },
      only: { type: 'string', multiple: true },
      requests: { type: 'string' },
      concurrency: { type: 'string' },
      claims: { type: 'string' },
    },
  });
  const options: Options = {
    runs: Number(values.runs ?? 5),
    count: Number(values.instances ?? 10_000),
    requests: Number(values.requests ?? 20_000),
    concurrency: Number(values.concurrency ?? 32),
    claims: Number(values.claims ?? 20),
    skipDocker: values['skip-docker'] ?? false,
  };
  for (const [k, v] of Object.entries(options)) {
    if (typeof v === 'number' && !(Number.isInteger(v) && v > 0)) throw new Error(`--${k}: expected a positive integer, got ${v}`);
  }
  const only = (values.only ?? []).map((o) => o.toLowerCase());
  const selected = groups(options.count).filter(
    (g) => (!g.docker || !options.skipDocker) && (only.length === 0 || only.some((o) => [g.key, ...g.names].some((n) => n.toLowerCase().includes(o)))),
  );
  if (selected.length === 0) throw new Error(`--only ${only.join(', ')}: no figure matches (groups: ${groups(options.count).map((g) => g.key).join(', ')})`);

  const figures: Figure[] = [];
  for (const group of selected) {
    const started = performance.now();
    figures.push(...(await group.run(options)));
    if (!values.json) process.stderr.write(`[bench] ${group.key}: ${((performance.now() - started) / 1000).toFixed(1)} s\n`);
  }

  const table = [
    ['figure', 'runs', 'median', 'baseline', 'baseline median', 'ratio', 'goal', 'meets', 'detail'],
    ...figures.map((f) => [
      f.name,
      String(f.runs),
      formatValue(f.median, f.unit),
      f.baselineName,
      formatValue(f.baselineMedian, f.unit),
      `${f.ratio.toFixed(2)}x`,
      f.goal ?? '',
      f.meetsGoal === undefined ? '' : f.meetsGoal ? 'yes' : 'NO',
      f.detail ?? '',
    ]),
  ];
  const widths = table[0]!.map((_, c) => Math.max(...table.map((row) => row[c]!.length)));
  const lines = table.map((row) => row.map((cell, c) => cell.padEnd(widths[c]!)).join('  ').trimEnd());
  lines.splice(1, 0, widths.map((w) => '-'.repeat(w)).join('  '));
  const machine = { measuredAt: new Date().toISOString(), cpus: os.availableParallelism(), memoryGiB: Math.round(os.totalmem() / 2 ** 30), node: process.version, image: TEST_IMAGE };
  await mkdir('test-artifacts', { recursive: true });
  await writeFile('test-artifacts/bench.json', `${JSON.stringify({ machine, figures }, null, 2)}\n`);
  if (values.json) {
    process.stdout.write(`${JSON.stringify({ machine, figures }, null, 2)}\n`);
  } else {
    process.stdout.write(`${lines.join('\n')}\n\nmachine: ${JSON.stringify(machine)}\n`);
  }
}

function formatValue(value: number, unit: Figure['unit']): string {
  if (unit === 'req/s') return `${value.toFixed(0)} req/s`;
  if (unit === 'µs') return `${value.toFixed(value < 10 ? 3 : 0)} µs`;
  return `${value.toFixed(2)} ms`;
}

async function registryFigures(count: number, runs: number): Promise<Figure[]> {
  const stateDir = await makeStateDir('bench-registry');
  try {
    const dir = path.join(stateDir, 'instances');
    await mkdir(dir, { recursive: true });
    const at = new Date().toISOString();
    const statuses = ['running', 'stopped', 'failed'] as const;
    for (let start = 0; start < count; start += 500) {
      await Promise.all(
        Array.from({ length: Math.min(500, count - start) }, (_, k) => {
          const n = start + k;
          const id = `bench-${n.toString(36)}`;
          const record: VSCodeInstance = {
            id, name: id, providerType: 'docker', status: statuses[n % 3]!, health: 'unknown',
            config: { name: id, image: 'codercom/code-server:4.99.3', resources: { cpu: 1, memoryMb: 2048 }, metadata: { owner: `user-${n % 97}` } },
            endpoint: { url: `http://127.0.0.1:${20000 + (n % 40000)}`, host: '127.0.0.1', port: 20000 + (n % 40000) },
            providerRef: { containerId: n.toString(16).padStart(64, '0'), volume: `vscode-swarm-${id}-workspace` },
            createdAt: at, updatedAt: at,
          };
          return writeFile(path.join(dir, `${id}.json`), JSON.stringify(record, null, 2));
        }),
      );
    }

    const loadOurs: number[] = [];
    const loadBase: number[] = [];
    let registry!: InstanceRegistry;
    let plain: VSCodeInstance[] = [];
    const base = async (): Promise<void> => {
      loadBase.push(await time(async () => {
        const names = await readdir(dir);
        plain = [];
        for (let i = 0; i < names.length; i += 64) {
          plain.push(...(await Promise.all(names.slice(i, i + 64).map(async (n) => JSON.parse(await readFile(path.join(dir, n), 'utf8')) as VSCodeInstance))));
        }
      }));
    };
    const ours = async (): Promise<void> => {
      loadOurs.push(await time(async () => {
        registry = new InstanceRegistry({ stateDir });
        const report = await registry.load();
        if (report.loaded !== count) throw new Error(`loaded ${report.loaded} of ${count}`);
      }));
    };
    for (let r = 0; r < runs; r++) {
      // Alternated: the page cache and the JIT favour whichever side runs second.
      for (const side of r % 2 ? [ours, base] : [base, ours]) await side();
    }

    const listOurs: number[] = [];
    const listBase: number[] = [];
    for (let r = 0; r < runs * 4; r++) {
      const listBaseOnce = async (): Promise<void> => void listBase.push(await time(async () => void plain.filter((i) => i.providerType === 'docker' && i.status === 'running')));
      const listOursOnce = async (): Promise<void> => void listOurs.push(await time(async () => void registry.list({ providerType: 'docker', status: 'running' })));
      for (const side of r % 2 ? [listOursOnce, listBaseOnce] : [listBaseOnce, listOursOnce]) await side();
    }
    return [
      figure(`registry load (${count} files)`, loadOurs, 'readdir+readFile+JSON.parse', loadBase),
      figure(`registry list (${count}, filtered)`, listOurs, 'Array.filter', listBase),
    ];
  } finally {
    await rm(stateDir, { recursive: true, force: true });
  }
}

/**
 * Two figures from the same runs, each beside the same raw engine create (alternated, order swapped every
 * run): createInstance returning (the editor answers /healthz on its own address), and the same create
 * carried on until the editor answers through the gateway: the one-time link exchanged for the session
 * cookie, then /healthz with that cookie until 200. The gateway runs as in `serve` (startSwarmServices).
 */
async function dockerFigures(runs: number): Promise<Figure[]> {
  const prefix = 'bench-docker';
  await cleanUp(prefix);
  const stateDir = await makeStateDir(prefix);
  const config = testConfig(stateDir);
  const created: number[] = [];
  const ready: number[] = [];
  const raw: number[] = [];
  let services: SwarmServices | undefined;
  try {
    services = await startSwarmServices(createSwarm(config));
    const { controller } = services;
    const spec = new DockerProvider({ defaultImage: TEST_IMAGE, pullImages: false, swarmId: `${prefix}-raw` });
    for (let r = 0; r < runs; r++) {
      const ours = async (): Promise<void> => {
        const start = performance.now();
        const result = await controller.createInstance({ name: `${prefix}-${r}` });
        created.push(performance.now() - start);
        const session = await signIn(result);
        await waitUntil(async () => ((await statusOf(session, '/healthz')) === 200 ? true : undefined), { timeoutMs: 60_000, intervalMs: 50, what: 'healthz through the gateway' });
        ready.push(performance.now() - start);
        await controller.deleteInstance(result.instance.id);
      };
      if (r % 2 === 0) {
        raw.push(await rawEngineCreate(spec, `${prefix}-raw-${r}`));
        await ours();
      } else {
        await ours();
        raw.push(await rawEngineCreate(spec, `${prefix}-raw-${r}`));
      }
    }
  } finally {
    await services?.close();
    await cleanUp(prefix, stateDir);
  }
  const baseline = 'same volume + container spec via the engine API, to /healthz 200';
  const readyFigure = figure(FIG.gatewayReady, ready, baseline, raw);
  const extra = median(ready) - median(created);
  return [
    figure(FIG.dockerCreate, created, baseline, raw),
    {
      ...readyFigure,
      goal: 'ratio ≤ 1.15',
      meetsGoal: readyFigure.ratio <= 1.15,
      detail: `link→cookie→/healthz via gateway adds ${extra.toFixed(1)} ms to createInstance (medians)`,
    },
  ];
}

/**
 * Claims from a warm buffer of 2: before each, the buffer is back to 2 ready members; the claim is a
 * createInstance that must come back fromWarmPool. The claimed instance is deleted (untimed). Baseline:
 * a cold createInstance of the same spec on a controller without a buffer, interleaved with the claims
 * (with the buffer full, so no refill runs beside it).
 */
async function warmFigure(runs: number, claims: number): Promise<Figure> {
  const coldPrefix = 'bench-cold';
  await cleanUp(coldPrefix);
  const coldDir = await makeStateDir(coldPrefix);
  const warmDir = await makeStateDir('bench-warm');
  // The cold controller first: initialize adopts every managed container on the engine, and it should not adopt the buffer's.
  const cold = createSwarm(testConfig(coldDir));
  const warm = createSwarm(testConfig(warmDir, { warm: [{ provider: 'docker', size: 2 }] }));
  const claimMs: number[] = [];
  const coldMs: number[] = [];
  let misses = 0;
  const full = (): Promise<true> =>
    waitUntil(
      async () => {
        const w = warm.getSwarmStatus().warm[0];
        return w && w.ready === 2 && w.warming === 0 ? true : undefined;
      },
      { timeoutMs: 120_000, intervalMs: 20, what: 'a warm buffer of 2 ready members' },
    );
  try {
    await cold.initialize();
    await warm.initialize();
    const coldRuns = Math.max(3, Math.min(runs, claims));
    for (let c = 0; c < claims; c++) {
      await full();
      let result!: CreateResult;
      claimMs.push(await time(async () => {
        result = await warm.createInstance({ name: `bench-warm-${c}` });
      }));
      if (!result.fromWarmPool) misses++;
      await warm.deleteInstance(result.instance.id);
      // Spread the cold runs over the claims.
      if (coldMs.length < coldRuns && (c * coldRuns) % claims < coldRuns) {
        await full();
        let id = '';
        coldMs.push(await time(async () => {
          id = (await cold.createInstance({ name: `${coldPrefix}-${c}` })).instance.id;
        }));
        await cold.deleteInstance(id);
      }
    }
    await full().catch(() => undefined); // let the last refill finish, so nothing is created after the clean-up
  } finally {
    await warm.close().catch(() => undefined);
    await cold.close().catch(() => undefined);
    await cleanUp('warm-', warmDir);
    await cleanUp(coldPrefix, coldDir);
  }
  const sorted = [...claimMs].sort((a, b) => a - b);
  const p50 = percentile(sorted, 0.5);
  const p95 = percentile(sorted, 0.95);
  return {
    ...figure(FIG.warm, claimMs, 'cold createInstance (no buffer)', coldMs),
    goal: 'p95 < 50 ms, every claim from the buffer',
    meetsGoal: p95 < 50 && misses === 0,
    p50,
    p95,
    detail: `p50 ${p50.toFixed(1)} ms, p95 ${p95.toFixed(1)} ms (nearest rank of ${claimMs.length}), ${misses} not fromWarmPool; cold runs ${coldMs.length}`,
  };
}

// ---- gateway traffic ----

interface Session {
  /** Where to connect (the gateway listens on loopback). */
  port: number;
  /** Host header: <id>.localhost:<port>. */
  host: string;
  cookie: string;
}

interface Answer {
  status: number;
  headers: http.IncomingHttpHeaders;
}

/** One GET to 127.0.0.1 (or `address`) with the given Host header; the body is discarded. */
function get(port: number, host: string, pathAndQuery: string, headers: http.OutgoingHttpHeaders = {}, address = '127.0.0.1'): Promise<Answer> {
  return new Promise((resolve, reject) => {
    const req = http.request({ host: address, port, path: pathAndQuery, agent: false, headers: { ...headers, host } }, (res) => {
      res.resume();
      res.on('end', () => resolve({ status: res.statusCode ?? 0, headers: res.headers }));
      res.on('error', reject);
    });
    req.setTimeout(5_000, () => req.destroy(new Error('timed out')));
    req.on('error', reject);
    req.end();
  });
}

async function statusOf(session: Session, pathAndQuery: string): Promise<number> {
  return get(session.port, session.host, pathAndQuery, { cookie: session.cookie }).then(
    (a) => a.status,
    () => 0,
  );
}

/** Opens the one-time link as a browser would: 302 with the session cookie. */
async function signIn(link: Pick<CreateResult, 'access'> | string): Promise<Session> {
  const accessUrl = typeof link === 'string' ? link : link.access?.accessUrl;
  if (!accessUrl) throw new Error('no access link: is the gateway enabled?');
  const url = new URL(accessUrl);
  const port = Number(url.port);
  const answer = await get(port, url.host, `${url.pathname}${url.search}`);
  const cookie = answer.headers['set-cookie']?.find((c) => c.startsWith(`${SESSION_COOKIE}=`))?.split(';')[0];
  if (answer.status !== 302 || !cookie) throw new Error(`signing in with ${url.origin}: HTTP ${answer.status}, ${cookie ? 'a' : 'no'} session cookie`);
  return { port, host: url.host, cookie };
}

/** The echo upstream in a worker thread, registered as a running instance, behind a gateway of its own. */
async function echoRig(): Promise<{ echoPort: number; session: Session; reset: () => void; close: () => Promise<void> }> {
  const echo = new Worker(new URL('./echo-worker.js', import.meta.url));
  const [{ port: echoPort }] = (await once(echo, 'message')) as [{ port: number }];
  const stateDir = await makeStateDir('bench-gateway');
  const config = testConfig(stateDir);
  const registry = new InstanceRegistry({ stateDir });
  const access = new AccessLinks(config.gateway, stateDir);
  const controller = new SwarmController({ config, registry, providers: {}, access, lockStateDir: false });
  let gateway: Gateway | undefined;
  const close = async (): Promise<void> => {
    await gateway?.close();
    await controller.close();
    echo.postMessage('close');
    await once(echo, 'message');
    await echo.terminate();
    await rm(stateDir, { recursive: true, force: true });
  };
  try {
    await controller.initialize();
    const id = 'bench-echo';
    const at = new Date().toISOString();
    await registry.register({
      id, name: id, providerType: 'docker', status: 'running', health: 'healthy',
      config: { name: id, image: TEST_IMAGE, resources: { cpu: 1, memoryMb: 2048 } },
      endpoint: { url: `http://127.0.0.1:${echoPort}`, host: '127.0.0.1', port: echoPort },
      providerRef: {}, createdAt: at, updatedAt: at,
    });
    gateway = new Gateway({ controller, access, activity: controller.activity, config: config.gateway });
    await gateway.listen();
    const session = await signIn((await controller.issueAccessLink(id)).accessUrl);
    return { echoPort, session, reset: () => echo.postMessage('reset'), close };
  } catch (err) {
    await close().catch(() => undefined);
    throw err;
  }
}

/** A worker thread running load-worker.ts jobs one at a time. */
class LoadClient {
  private readonly worker = new Worker(new URL('./load-worker.js', import.meta.url));

  async run<R extends HttpResult | WsResult>(job: Job): Promise<R> {
    this.worker.postMessage(job);
    const [result] = (await once(this.worker, 'message')) as [JobResult];
    if (result.kind === 'error') throw new Error(`load worker: ${result.message}`);
    return result as R;
  }

  close(): Promise<number> {
    return this.worker.terminate();
  }
}

type Target = Omit<HttpJob, 'kind' | 'requests' | 'concurrency' | 'maxMs'>;

interface LoadPlan {
  rounds: number;
  /** Requests per run, at most; a run also ends after maxMs, so fast and slow targets get comparable time. */
  perRun: number;
  maxMs: number;
  concurrency: number;
  /** Sequential requests per run for the unloaded latency (1 in flight), and their time bound. */
  serial: number;
  serialMaxMs: number;
  beforeEach?: () => void;
}

/**
 * `rounds` rounds, each a loaded run (`concurrency` in flight) and a sequential one (1 in flight),
 * direct and through the gateway, the order swapped each round. Three figures: req/s and p99 under
 * load, and p99 with one request in flight (what the hop itself adds, without queueing).
 */
async function httpPair(label: { name: string; direct: string }, client: LoadClient, direct: Target, gateway: Target, plan: LoadPlan): Promise<Figure[]> {
  const loaded = { ours: [] as HttpResult[], base: [] as HttpResult[] };
  const serial = { ours: [] as HttpResult[], base: [] as HttpResult[] };
  const one = async (target: Target, into: HttpResult[], requests: number, concurrency: number, maxMs: number): Promise<void> => {
    plan.beforeEach?.();
    into.push(await client.run<HttpResult>({ kind: 'http', ...target, requests, concurrency, maxMs }));
  };
  // Untimed warm-up of both sides (JIT, the editor's first requests), then the rounds.
  for (const target of [direct, gateway]) await one(target, [], plan.perRun, plan.concurrency, 300);
  for (let r = 0; r < plan.rounds; r++) {
    const order: [Target, 'ours' | 'base'][] = r % 2 === 0 ? [[direct, 'base'], [gateway, 'ours']] : [[gateway, 'ours'], [direct, 'base']];
    for (const [target, side] of order) await one(target, loaded[side], plan.perRun, plan.concurrency, plan.maxMs);
    for (const [target, side] of order) await one(target, serial[side], plan.serial, 1, plan.serialMaxMs);
  }
  const all = [...loaded.ours, ...loaded.base, ...serial.ours, ...serial.base];
  const sum = (rs: HttpResult[], k: 'requests' | 'errors' | 'non200'): number => rs.reduce((n, x) => n + x[k], 0);
  const firstError = all.find((x) => x.firstError)?.firstError;
  const problems = all.some((x) => x.errors || x.non200)
    ? `; errors/non-200: gateway ${sum([...loaded.ours, ...serial.ours], 'errors')}/${sum([...loaded.ours, ...serial.ours], 'non200')}, direct ${sum([...loaded.base, ...serial.base], 'errors')}/${sum([...loaded.base, ...serial.base], 'non200')}${firstError ? ` (${firstError})` : ''}`
    : '';
  const clean = !problems;
  const p99Figure = (name: string, side: { ours: HttpResult[]; base: HttpResult[] }, inFlight: number): Figure => {
    const f = figure(name, side.ours.map((x) => x.p99), label.direct, side.base.map((x) => x.p99));
    const added = f.median - f.baselineMedian;
    const p50 = median(side.ours.map((x) => x.p50));
    const baselineP50 = median(side.base.map((x) => x.p50));
    const ours = spread(side.ours.map((x) => x.p99));
    const base = spread(side.base.map((x) => x.p99));
    return {
      ...f,
      goal: 'p99 added ≤ 2 ms',
      meetsGoal: clean && added <= 2,
      added,
      p50,
      baselineP50,
      spread: ours,
      baselineSpread: base,
      detail: `${inFlight} in flight; added ${added.toFixed(2)} ms; p99 per run ${ours[0].toFixed(2)}–${ours[1].toFixed(2)} vs ${base[0].toFixed(2)}–${base[1].toFixed(2)} ms over ${side.ours.length} runs each; p50 ${p50.toFixed(2)} vs ${baselineP50.toFixed(2)} ms; ${sum(side.ours, 'requests')} via gateway, ${sum(side.base, 'requests')} direct${problems}`,
    };
  };
  const rps = figure(`HTTP req/s through the gateway (${label.name})`, loaded.ours.map((x) => x.rps), label.direct, loaded.base.map((x) => x.rps), 'req/s');
  return [
    {
      ...rps,
      goal: 'req/s ≥ 0.70x direct',
      meetsGoal: clean && rps.ratio >= 0.7,
      detail: `${plan.concurrency} in flight, keep-alive; ${sum(loaded.ours, 'requests')} via gateway, ${sum(loaded.base, 'requests')} direct in ${plan.rounds} runs each (≤ ${plan.perRun} req or ${(plan.maxMs / 1000).toFixed(1)} s per run)${problems}`,
    },
    p99Figure(`HTTP p99 through the gateway (${label.name})`, loaded, plan.concurrency),
    p99Figure(`HTTP p99 through the gateway, 1 in flight (${label.name})`, serial, 1),
  ];
}

async function echoHttpFigures(o: Options): Promise<Figure[]> {
  const rig = await echoRig();
  const client = new LoadClient();
  try {
    return await httpPair(
      { name: 'echo', direct: 'direct to the echo upstream' },
      client,
      { port: rig.echoPort, host: `127.0.0.1:${rig.echoPort}`, path: '/bench' },
      { port: rig.session.port, host: rig.session.host, cookie: rig.session.cookie, path: '/bench' },
      // p99 per run is itself a tail: enough runs that its median and spread mean something.
      { rounds: 9, perRun: o.requests, maxMs: 1_200, concurrency: o.concurrency, serial: 2_000, serialMaxMs: 300, beforeEach: rig.reset },
    );
  } finally {
    await client.close();
    await rig.close();
  }
}

/** The same load against a real editor's /healthz, direct on the Docker network vs through the gateway. */
async function codeServerHttpFigures(o: Options): Promise<Figure[]> {
  const prefix = 'bench-http';
  await cleanUp(prefix);
  const stateDir = await makeStateDir(prefix);
  const config = testConfig(stateDir);
  const client = new LoadClient();
  let services: SwarmServices | undefined;
  try {
    services = await startSwarmServices(createSwarm(config));
    const result = await services.controller.createInstance({ name: `${prefix}-0` });
    const endpoint = result.instance.endpoint!;
    const session = await signIn(result);
    return await httpPair(
      { name: 'code-server /healthz', direct: 'direct to the editor (Docker network)' },
      client,
      { port: endpoint.port, host: `${endpoint.host}:${endpoint.port}`, address: endpoint.host, path: '/healthz' },
      { port: session.port, host: session.host, cookie: session.cookie, path: '/healthz' },
      { rounds: 7, perRun: o.requests, maxMs: 1_200, concurrency: o.concurrency, serial: 1_000, serialMaxMs: 300 },
    );
  } finally {
    await client.close();
    await services?.close();
    await cleanUp(prefix, stateDir);
  }
}

/** Upgrade, then 1000 sequential 32-byte writes each awaiting its echo; direct vs gateway, alternated. */
async function wsFigure(runs: number): Promise<Figure> {
  const rig = await echoRig();
  const client = new LoadClient();
  const messages = 1000;
  const ours: WsResult[] = [];
  const base: WsResult[] = [];
  try {
    const direct: WsJob = { kind: 'ws', port: rig.echoPort, host: `127.0.0.1:${rig.echoPort}`, path: '/ws', messages, size: 32 };
    const gateway: WsJob = { kind: 'ws', port: rig.session.port, host: rig.session.host, cookie: rig.session.cookie, path: '/ws', messages, size: 32 };
    for (let r = 0; r < runs; r++) {
      if (r % 2 === 0) {
        base.push(await client.run<WsResult>(direct));
        ours.push(await client.run<WsResult>(gateway));
      } else {
        ours.push(await client.run<WsResult>(gateway));
        base.push(await client.run<WsResult>(direct));
      }
    }
  } finally {
    await client.close();
    await rig.close();
  }
  const f = figure(FIG.ws, ours.map((x) => x.medianMs * 1000), 'direct to the echo upstream', base.map((x) => x.medianMs * 1000), 'µs');
  const added = f.median - f.baselineMedian;
  const p99 = median(ours.map((x) => x.p99Ms * 1000));
  return {
    ...f,
    goal: 'round trip added ≤ 1000 µs (bench-chosen)',
    meetsGoal: added <= 1000,
    added,
    p99,
    detail: `${messages} round trips of 32 B per run; added ${added.toFixed(0)} µs; p99 ${p99.toFixed(0)} vs ${median(base.map((x) => x.p99Ms * 1000)).toFixed(0)} µs`,
  };
}

/**
 * The failure limiter's bookkeeping for one failed-credential request (retryAfter, then fail, as the
 * gateway does), with 100,000 client addresses tracked vs 10: the same cost per check shows there is no
 * scan over the table. Each run makes `checks` checks cycling through the tracked addresses (a quarter of
 * them IPv6, counted per /64), so every check finds its entry and the table stays full; the two sides
 * alternate run by run.
 */
async function limiterFigure(runs: number, checks = 200_000): Promise<Figure> {
  const addresses = (n: number): string[] =>
    Array.from({ length: n }, (_, i) => (i % 4 === 3 ? `2001:db8:${(i >> 16).toString(16)}:${(i & 0xffff).toString(16)}::${i % 7}` : `10.${(i >> 16) & 255}.${(i >> 8) & 255}.${i & 255}`));
  const blocked = { ours: 0, base: 0 };
  const run = (tracked: string[], side: keyof typeof blocked): number => {
    const limiter = new FailureLimiter(20, Date.now, tracked.length);
    // The table full before timing, and one untimed pass over it, so that its entries have left the young
    // generation (else the first collection inside the timed loop copies all 100,000 of them).
    for (const a of tracked) limiter.fail(a);
    for (const a of tracked) if (limiter.retryAfter(a) >= 0) limiter.fail(a);
    if (limiter.size !== tracked.length) throw new Error(`limiter tracks ${limiter.size} of ${tracked.length}`);
    let refused = 0;
    const start = performance.now();
    for (let i = 0; i < checks; i++) {
      const address = tracked[i % tracked.length]!;
      if (limiter.retryAfter(address)) refused++;
      limiter.fail(address);
    }
    const elapsed = performance.now() - start;
    blocked[side] += refused;
    return (elapsed * 1000) / checks;
  };
  const few = addresses(10);
  const many = addresses(100_000);
  run(few, 'base'); // untimed warm-up (JIT)
  blocked.base = 0;
  const ours: number[] = [];
  const base: number[] = [];
  for (let r = 0; r < runs; r++) {
    for (const side of r % 2 ? [() => ours.push(run(many, 'ours')), () => base.push(run(few, 'base'))] : [() => base.push(run(few, 'base')), () => ours.push(run(many, 'ours'))]) side();
  }
  const share = (n: number): string => `${((100 * n) / (runs * checks)).toFixed(0)}%`;
  const f = figure(`${FIG.limiter} (µs per check, 100,000 addresses tracked)`, ours, 'the same with 10 addresses tracked', base, 'µs');
  return {
    ...f,
    goal: 'per-check cost at 100,000 addresses ≤ 2x that at 10 (O(1), no scan)',
    meetsGoal: f.ratio <= 2,
    spread: spread(ours),
    baselineSpread: spread(base),
    detail: `${checks} checks per run (retryAfter + fail), ${runs} runs each; ${f.median.toFixed(3)} vs ${f.baselineMedian.toFixed(3)} µs per check; checks on an address past its limit: ${share(blocked.ours)} vs ${share(blocked.base)}`,
  };
}

/**
 * What the Docker provider's create does, done directly through the engine API with no controller: the
 * workspace volume, the provider's own container spec (so image, arguments, labels, limits, privileges and
 * network are identical), start, inspect for the address, /healthz every 20 ms until 200. Removal (of the
 * container and the volume) is not timed.
 */
async function rawEngineCreate(spec: DockerProvider, id: string): Promise<number> {
  let container: Docker.Container | undefined;
  const volume = volumeName(id);
  try {
    return await time(async () => {
      await docker.createVolume({ Name: volume, Labels: { [LABEL_MANAGED]: 'true', [LABEL_NAME]: id } });
      container = await docker.createContainer(spec.containerSpec(id, { name: id, image: TEST_IMAGE, resources: { cpu: 1, memoryMb: 2048 } }, containerName(id)));
      await container.start();
      const ip = (await container.inspect()).NetworkSettings.Networks[DEFAULT_NETWORK]?.IPAddress;
      if (!ip) throw new Error(`raw engine create: ${id} has no address on ${DEFAULT_NETWORK}`);
      const url = `http://${ip}:${EDITOR_PORT}/healthz`;
      await waitUntil(async () => ((await httpStatus(url)) === 200 ? true : undefined), { timeoutMs: 60_000, intervalMs: 20, what: 'raw engine create' });
    });
  } finally {
    await container?.remove({ force: true }).catch(() => undefined);
    await docker.getVolume(volume).remove().catch(() => undefined);
  }
}





main().catch((err: unknown) => {
  process.stderr.write(`bench failed: ${err instanceof Error ? err.stack : String(err)}\n`);
  process.exitCode = 1;
});
