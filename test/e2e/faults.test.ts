/**
 * Operations through a connection that breaks 30% of the time. A TCP fault proxy (test/helpers/fault-proxy.ts)
 * sits between each provider and what it talks to: the Docker engine's socket, the Fly Machines API
 * emulator, the AWS emulator. A seeded series of create / stop / start / resize / exec / delete runs
 * through a real controller, some of them concurrently; each must either complete or fail with a
 * SwarmError carrying a stable code and a message that says which provider and what (never a bare
 * "socket hang up", never a TypeError, never a hang). Then the faults stop, a new controller on the same
 * state directory initialises (reconciles) and lists, and the swarm must have converged: nothing leaked
 * (no container, Machine or volume without a record, one per instance), nothing stuck half-way, and the
 * files written before the faults intact. The stand-in image keeps it light.
 */
import { deriveHostToken } from '../../providers/aws-asg/host-credentials.js';
import { createHash } from 'node:crypto';
import { mkdtemp, rm } from 'node:fs/promises';
import http from 'node:http';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { LABEL_INSTANCE, LABEL_SWARM } from '../../providers/docker/docker-mapping.js';
import { FlyClientConstructor } from '../../providers/fly/fly-api.js';
import { META_INSTANCE, volumeName as flyVolumeName } from '../../providers/fly/fly-mapping.js';
import type { ProviderType, VSCodeInstance } from '../../providers/provider.js';
import { createSwarm } from '../../src/controller/create-swarm.js';
import type { SwarmController } from '../../src/controller/swarm-controller.js';
import { ERROR_CODES, SwarmError } from '../../src/errors.js';
import type { SwarmConfig } from '../../src/config.js';
import { waitUntil } from '../../src/timing/wait-until.js';
import { startAwsEmulator, type AwsEmulator } from '../emulators/aws/index.js';
import { removeFlyEmulatorLeftovers, startFlyEmulator, type FlyEmulator } from '../emulators/fly/index.js';
import { cleanUp, docker, makeStateDir, testConfig } from '../helpers/docker.js';
import { seededRandom, startFaultProxy, type FaultPlan, type FaultProxy } from '../helpers/fault-proxy.js';
import { swarmViolations } from '../helpers/invariants.js';
import { REPO_ROOT } from '../helpers/mcp.js';
import { ensureStandinImage } from '../helpers/standin-image.js';
import { freePort } from '../helpers/ports.js';

/** Instance names of this suite start with this (containers are found by it for clean-up). */
const PREFIX = 'flt';
/** Each operation must settle within this, faults and all; past it the operation hangs. */
const OP_DEADLINE_MS = 45_000;
/** Every request (not only every connection: the clients keep theirs alive) has a 30% chance of a fault. FAULTS_SEED varies the run. */
const FAULTS: FaultPlan = {
  probability: 0.3, kinds: ['delay', 'reset', 'stall', 'truncate'], delayMs: [20, 300], stallMs: 800, perExchange: true,
  seed: Number(process.env.FAULTS_SEED ?? 20261201),
};
const SMALL = { cpu: 0.1, memoryMb: 256 };
const SEED_FILE = 'seed.txt';

/** Codes a connection fault may honestly produce; never INVALID_INPUT (the caller did nothing wrong) or INTERNAL. */
const FAULT_CODES = new Set<string>(['PROVIDER_ERROR', 'PROVIDER_UNAVAILABLE', 'TIMEOUT', 'CONFLICT', 'NOT_FOUND']);
/** Messages that are only the socket's own words, without saying what was being done. */
const RAW_MESSAGE = /^(socket hang up|read ECONNRESET|aborted|other side closed|fetch failed|terminated|premature close|Unexpected end of JSON input)\b/i;

interface Outcome {
  op: string;
  ok: boolean;
  code?: string;
  message?: string;
  /** Why the failure is not acceptable, when it is not. */
  problem?: string;
}

const unhandled: unknown[] = [];
const onUnhandled = (reason: unknown): void => {
  unhandled.push(reason);
};

beforeAll(() => {
  process.on('unhandledRejection', onUnhandled);
});
afterAll(() => {
  process.off('unhandledRejection', onUnhandled);
});
afterEach(() => {
  expect(unhandled.map(String)).toEqual([]);
});

/** Why a failed operation's error is not a clear domain error naming the provider or the instance; undefined when it is. */
function errorProblem(err: unknown, provider: ProviderType, instanceId?: string): string | undefined {
  if (!(err instanceof SwarmError)) return `not a SwarmError: ${(err as Error)?.name}: ${(err as Error)?.message ?? String(err)}`;
  if (!(err.code in ERROR_CODES) || !FAULT_CODES.has(err.code)) return `code ${err.code} for a connection fault: ${err.message}`;
  if (RAW_MESSAGE.test(err.message)) return `a raw socket message without context: ${err.message}`;
  // Provider errors start with the provider's name and what it was doing ("docker: start x: ..."); the controller's name the instance.
  const named = err.message.startsWith(`${provider}:`) || (instanceId !== undefined && err.message.includes(instanceId));
  if (!named) return `the message names neither the provider and what it did nor the instance: ${err.message}`;
  for (let cause: unknown = err.cause, depth = 0; cause && depth < 10; cause = (cause as { cause?: unknown }).cause, depth++) {
    // undici (global fetch) reports a network failure as TypeError "fetch failed" / "terminated": not a bug.
    const network = cause instanceof TypeError && /^(fetch failed|terminated)$/.test(cause.message);
    if (!network && (cause instanceof TypeError || cause instanceof ReferenceError || cause instanceof RangeError)) {
      return `a programming error underneath: ${cause.name}: ${cause.message}`;
    }
  }
  return undefined;
}

/** FAULTS_TRACE=1 prints each outcome as it happens. */
function trace(outcome: Outcome): Outcome {
  if (process.env.FAULTS_TRACE) console.error(`[faults] ${new Date().toISOString()} ${outcome.op}: ${outcome.ok ? 'ok' : `${outcome.code ?? ''} ${outcome.message ?? ''} ${outcome.problem ?? ''}`}`);
  return outcome;
}

/** Runs one operation with a deadline; a failure is classified, a hang is a problem. */
async function runOp(op: string, provider: ProviderType, instanceId: string | undefined, fn: () => Promise<unknown>): Promise<Outcome> {
  let timer: NodeJS.Timeout | undefined;
  const hang = new Promise<'hang'>((resolve) => {
    timer = setTimeout(() => resolve('hang'), OP_DEADLINE_MS);
  });
  try {
    const result = await Promise.race([fn().then(() => 'done' as const), hang]);
    if (result === 'hang') return trace({ op, ok: false, problem: `no answer within ${OP_DEADLINE_MS} ms` });
    return trace({ op, ok: true });
  } catch (err) {
    const problem = errorProblem(err, provider, instanceId);
    return trace({ op, ok: false, code: (err as SwarmError).code, message: (err as Error).message, ...(problem ? { problem } : {}) });
  } finally {
    clearTimeout(timer);
  }
}

type OpKind = 'create' | 'stop' | 'start' | 'resize' | 'exec' | 'delete';

interface SeriesOptions {
  controller: SwarmController;
  provider: ProviderType;
  /** Instances whose files are checked afterwards: never deleted or resized to another image. */
  keep: Set<string>;
  steps: number;
  seed: number;
  image?: string;
  /** Operations this provider can do (Fly resizes by restarting; every provider here can exec). */
  kinds?: OpKind[];
  /** Memory sizes a resize picks from (what the provider sells). */
  memorySizes: number[];
}

/**
 * A seeded series of operations: mostly one at a time, every fourth step three at once. Instances are
 * picked from the controller's registry as it is then, so an operation may well meet an instance that a
 * faulted operation left stopped, failed or half-deleted: that is part of what is tested.
 */
async function runSeries(o: SeriesOptions): Promise<Outcome[]> {
  const random = seededRandom(o.seed);
  const pick = <T>(items: readonly T[]): T | undefined => (items.length ? items[Math.floor(random() * items.length)] : undefined);
  const kinds: OpKind[] = o.kinds ?? ['create', 'create', 'stop', 'start', 'resize', 'exec', 'delete'];
  const outcomes: Outcome[] = [];
  let created = 0;
  const one = (): Promise<Outcome> => {
    const kind = pick(kinds)!;
    const mine = o.controller.registry.list().filter((i) => i.providerType === o.provider && i.name.startsWith(PREFIX));
    const any = pick(mine.map((i) => i.id));
    const deletable = pick(mine.filter((i) => !o.keep.has(i.id)).map((i) => i.id));
    const c = o.controller;
    switch (kind) {
      case 'create': {
        const name = `${PREFIX}-${o.provider === 'aws-asg' ? 'aws' : o.provider}-${++created}`;
        return runOp(`create ${name}`, o.provider, undefined, () =>
          c.createInstance({ name, providerType: o.provider, resources: SMALL, ...(o.image ? { image: o.image } : {}) }),
        );
      }
      case 'stop':
        if (!any) return Promise.resolve({ op: 'stop (nothing to stop)', ok: true });
        return runOp(`stop ${any}`, o.provider, any, () => c.stopInstance(any, { force: random() < 0.3 }));
      case 'start':
        if (!any) return Promise.resolve({ op: 'start (nothing to start)', ok: true });
        return runOp(`start ${any}`, o.provider, any, () => c.startInstance(any));
      case 'resize': {
        if (!any) return Promise.resolve({ op: 'resize (nothing to resize)', ok: true });
        const memoryMb = pick(o.memorySizes)!;
        return runOp(`resize ${any} to ${memoryMb} MiB`, o.provider, any, () => c.updateInstance(any, { resources: { memoryMb } }));
      }
      case 'exec': {
        if (!any) return Promise.resolve({ op: 'exec (nowhere to run)', ok: true });
        // A refusal because the instance is not running is a clear CONFLICT, as good an outcome as output.
        return runOp(`exec in ${any}`, o.provider, any, () => c.executeCommand(any, `cat ${SEED_FILE} 2>/dev/null; echo ok`, { timeoutMs: 10_000 }));
      }
      case 'delete':
        if (!deletable) return Promise.resolve({ op: 'delete (nothing to delete)', ok: true });
        return runOp(`delete ${deletable}`, o.provider, deletable, () => c.deleteInstance(deletable));
    }
  };
  for (let step = 0; step < o.steps; ) {
    if (step % 4 === 3) {
      outcomes.push(...(await Promise.all([one(), one(), one()])));
      step += 3;
    } else {
      outcomes.push(await one());
      step += 1;
    }
  }
  return outcomes;
}

function summarise(label: string, outcomes: Outcome[], proxy: FaultProxy): void {
  const failed = outcomes.filter((o) => !o.ok);
  const byCode: Record<string, number> = {};
  for (const f of failed) byCode[f.code ?? 'hang'] = (byCode[f.code ?? 'hang'] ?? 0) + 1;
  console.info(
    `${label}: ${outcomes.length} operations, ${outcomes.length - failed.length} completed, ${failed.length} failed ${JSON.stringify(byCode)}; proxy ${JSON.stringify(proxy.stats())}`,
  );
  for (const f of failed) console.info(`  ${f.op}: ${f.code} ${f.message?.slice(0, 300)}`);
}

/** What the registry says before the reconcile (for the log: what the faults left half-done). */
function statusCounts(controller: SwarmController): string {
  const counts: Record<string, number> = {};
  const notable: string[] = [];
  for (const r of controller.registry.list()) {
    counts[r.status] = (counts[r.status] ?? 0) + 1;
    if (r.status !== 'running' && r.status !== 'stopped') notable.push(`${r.id} ${r.status}: ${r.statusReason ?? ''}`);
  }
  return [JSON.stringify(counts), ...notable].join('\n  ');
}

/** Faults the proxy injected: a run without any would prove nothing. */
function faultsInjected(proxy: FaultProxy): number {
  return Object.values(proxy.stats().faulted).reduce((a, b) => a + b, 0);
}

function problems(outcomes: Outcome[]): string[] {
  return outcomes.filter((o) => o.problem).map((o) => `${o.op}: ${o.problem}`);
}

/** States an instance may be left in only while an operation is in flight. */
const TRANSIENT = new Set(['creating', 'deleting', 'starting', 'stopping']);

/** Writes a file of known content into each instance (faults off) and returns its sha256 per instance. */
async function seedFiles(controller: SwarmController, ids: string[]): Promise<Record<string, Record<string, string>>> {
  const files: Record<string, Record<string, string>> = {};
  for (const id of ids) {
    const content = `files of ${id} written before the faults`;
    const result = await controller.executeCommand(id, `printf '%s' '${content}' > ${SEED_FILE} && sha256sum ${SEED_FILE}`);
    expect(result.exitCode).toBe(0);
    const sha = createHash('sha256').update(content).digest('hex');
    expect(result.stdout.split(' ')[0]).toBe(sha);
    files[id] = { [SEED_FILE]: sha };
  }
  return files;
}

/** The seeded files read back through the provider (exec), for providers without a Docker-side check. */
async function fileProblems(controller: SwarmController, files: Record<string, Record<string, string>>): Promise<string[]> {
  const found: string[] = [];
  for (const [id, expected] of Object.entries(files)) {
    const record = controller.registry.get(id);
    if (!record) {
      found.push(`instance ${id} with files has no record`);
      continue;
    }
    if (record.status !== 'running') await controller.startInstance(id);
    const result = await controller.executeCommand(id, `sha256sum ${SEED_FILE}`);
    const got = result.stdout.split(' ')[0];
    if (got !== expected[SEED_FILE]) found.push(`workspace file ${SEED_FILE} of ${id}: sha256 ${got || '(missing)'} (${result.stderr.trim()}), expected ${expected[SEED_FILE]}`);
  }
  return found;
}

/**
 * Leaks and duplicates between the registry and what exists on a provider: each resource's instance id
 * must have a record of that provider, one machine (container) per instance, and a record that says
 * the instance exists must have one.
 */
function resourceProblems(records: readonly VSCodeInstance[], type: ProviderType, machines: Array<{ instanceId: string; what: string }>, volumes: Array<{ instanceId: string | undefined; what: string }>): string[] {
  const found: string[] = [];
  const byId = new Map(records.filter((r) => r.providerType === type).map((r) => [r.id, r]));
  const count = new Map<string, number>();
  for (const m of machines) {
    count.set(m.instanceId, (count.get(m.instanceId) ?? 0) + 1);
    if (!byId.has(m.instanceId)) found.push(`${m.what} of instance ${m.instanceId} has no ${type} record`);
  }
  for (const [id, n] of count) if (n > 1) found.push(`instance ${id} has ${n} machines/containers`);
  for (const v of volumes) if (!v.instanceId || !byId.has(v.instanceId)) found.push(`${v.what} has no ${type} record`);
  for (const r of byId.values()) {
    if (TRANSIENT.has(r.status)) found.push(`instance ${r.id} is still ${r.status} after reconcile`);
    if ((r.status === 'running' || r.status === 'stopped') && !count.has(r.id)) found.push(`instance ${r.id} is recorded ${r.status} but has nothing on ${type}`);
  }
  return found;
}


/** A controller on the state directory after the faults: initialise (reconcile) and list, faults off. */
async function reconcileWith(config: SwarmConfig, env?: NodeJS.ProcessEnv): Promise<SwarmController> {
  const controller = createSwarm(config, env ? { env } : {});
  await controller.initialize();
  await controller.listInstances();
  return controller;
}

describe('the fault proxy', () => {
  it('faults each kind as asked and closes both sides of every faulted connection', async () => {
    const server = http.createServer((req, res) => {
      req.resume();
      req.on('end', () => res.end('x'.repeat(2_000)));
    });
    await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
    const proxy = await startFaultProxy({ target: { host: '127.0.0.1', port: (server.address() as net.AddressInfo).port } });
    try {
      /** One request on a fresh connection: the body length, or the error code. */
      const request = (): Promise<number | string> =>
        new Promise((resolve) => {
          const req = http.request(`${proxy.httpUrl}/`, { method: 'POST', agent: false }, (res) => {
            let n = 0;
            res.on('data', (c: Buffer) => (n += c.length));
            res.on('end', () => resolve(n));
            res.on('error', (e: NodeJS.ErrnoException) => resolve(e.code ?? e.message));
          });
          req.on('error', (e: NodeJS.ErrnoException) => resolve(e.code ?? e.message));
          req.end('ping');
        });
      expect(await request()).toBe(2_000);
      for (const kind of ['reset', 'stall', 'truncate'] as const) {
        proxy.setFaults({ probability: 1, kinds: [kind], stallMs: 200, seed: 3 });
        for (let i = 0; i < 3; i++) expect(await request()).toBe('ECONNRESET');
      }
      proxy.setFaults({ probability: 1, kinds: ['delay'], delayMs: [50, 100], seed: 3 });
      expect(await request()).toBe(2_000);
      proxy.setFaults(null);
      proxy.setDown(true);
      expect(await request()).toBe('ECONNRESET');
      proxy.setDown(false);
      expect(await request()).toBe(2_000);
      expect(proxy.stats()).toMatchObject({ connections: 13, faulted: { reset: 3, stall: 3, truncate: 3, delay: 1 } });
      await waitUntil(async () => (proxy.openConnections() === 0 ? true : undefined), { timeoutMs: 10_000, what: 'the fault proxy to hold no sockets' });
    } finally {
      await proxy.close();
      await new Promise((resolve) => server.close(resolve));
    }
  });
});

describe('operations through a connection with 30% faults, then reconcile', () => {
  let image: string;
  const cleanups: Array<() => Promise<unknown>> = [];

  beforeAll(async () => {
    image = await ensureStandinImage();
  });
  afterEach(async () => {
    for (const fn of cleanups.splice(0).reverse()) await fn().catch((err) => console.warn('clean-up failed:', (err as Error).message));
  });

  it('docker: every operation completes or fails clearly; a new controller converges with nothing leaked and files intact', async () => {
    await cleanUp(`${PREFIX}-docker`);
    const stateDir = await makeStateDir('faults-docker');
    const proxy = await startFaultProxy({ target: { socketPath: '/var/run/docker.sock' } });
    cleanups.push(() => cleanUp(`${PREFIX}-docker`, stateDir), () => proxy.close());
    const config = testConfig(stateDir, {
      gateway: { enabled: false },
      health: { enabled: false },
      idle: { enabled: false },
      exec: { enabled: true, timeoutMs: 30_000 },
      providers: { docker: { image, dockerHost: proxy.url, readinessTimeoutMs: 20_000, stopTimeoutSeconds: 1 } },
    });

    let controller = createSwarm(config);
    cleanups.push(() => controller.close());
    await controller.initialize();
    const seeds: string[] = [];
    for (const name of [`${PREFIX}-docker-seed-a`, `${PREFIX}-docker-seed-b`]) {
      seeds.push((await controller.createInstance({ name, resources: SMALL })).instance.id);
    }
    const files = await seedFiles(controller, seeds);

    proxy.setFaults(FAULTS);
    const outcomes = await runSeries({ controller, provider: 'docker', keep: new Set(seeds), steps: 30, seed: 7, memorySizes: [256, 384, 512] });
    proxy.setFaults(null);
    summarise('docker', outcomes, proxy);
    console.info(`docker: records before reconcile ${statusCounts(controller)}`);
    expect(problems(outcomes)).toEqual([]);
    expect(faultsInjected(proxy)).toBeGreaterThan(0);

    await controller.close();
    controller = await reconcileWith(config);
    const records = controller.registry.list();
    expect(records.filter((r) => TRANSIENT.has(r.status)).map((r) => `${r.id}: ${r.status}`)).toEqual([]);
    expect(await swarmViolations({ stateDir, swarmId: config.swarmId, files })).toEqual([]);
    // The seeded instances are still usable: started if a faulted operation left them stopped.
    for (const id of seeds) expect((await controller.startInstance(id)).status).toBe('running');
    // Once the controller is gone, the proxy holds nothing: faulted connections were closed on both sides
    // and the engine client's idle kept-alive ones time out.
    await controller.close();
    await waitUntil(async () => (proxy.openConnections() === 0 ? true : undefined), { timeoutMs: 20_000, what: 'the fault proxy to hold no sockets' });
  }, 150_000);

  it('fly (Machines API emulator): every operation completes or fails clearly; a new controller converges with nothing leaked', async () => {
    await removeFlyEmulatorLeftovers(docker);
    const emulator: FlyEmulator = await startFlyEmulator({ rateLimit: false });
    cleanups.push(() => emulator.close());
    const proxy = await startFaultProxy({ target: { host: '127.0.0.1', port: Number(new URL(emulator.url).port) } });
    cleanups.push(() => proxy.close());
    const stateDir = await makeStateDir('faults-fly');
    cleanups.push(() => rm(stateDir, { recursive: true, force: true }));
    const app = `vscode-swarm-faults-${Date.now().toString(36)}`;
    const config = testConfig(stateDir, {
      defaultProvider: 'fly',
      gateway: { enabled: false },
      health: { enabled: false },
      idle: { enabled: false },
      exec: { enabled: true, timeoutMs: 30_000 },
      providers: { docker: { enabled: false }, fly: { enabled: true, app, apiUrl: proxy.httpUrl, image, readinessTimeoutMs: 30_000 } },
    });
    const env = { ...process.env, FLY_API_TOKEN: emulator.token };

    let controller = createSwarm(config, { env });
    cleanups.push(() => controller.close());
    await controller.initialize();
    const seed = (await controller.createInstance({ name: `${PREFIX}-fly-seed`, resources: SMALL })).instance.id;
    const files = await seedFiles(controller, [seed]);

    proxy.setFaults({ ...FAULTS, seed: FAULTS.seed! + 1 });
    const outcomes = await runSeries({ controller, provider: 'fly', keep: new Set([seed]), steps: 14, seed: 11, memorySizes: [256, 512] });
    proxy.setFaults(null);
    summarise('fly', outcomes, proxy);
    console.info(`fly: records before reconcile ${statusCounts(controller)}`);
    expect(problems(outcomes)).toEqual([]);
    expect(faultsInjected(proxy)).toBeGreaterThan(0);

    await controller.close();
    controller = await reconcileWith(config, env);
    const client = new FlyClientConstructor(emulator.token, { apiUrl: emulator.url });
    const machines = (await client.Machine.listMachines(app))
      .filter((m) => m.state !== 'destroyed' && m.state !== 'destroying')
      .map((m) => ({ instanceId: (m.config as { metadata?: Record<string, string> }).metadata?.[META_INSTANCE] ?? '(none)', what: `machine ${m.id} (${m.state})` }));
    const byVolumeName = new Map(controller.registry.list().map((r) => [flyVolumeName(r.id, config.swarmId), r.id]));
    const volumes = (await client.Volume.listVolumes(app))
      .filter((v) => !/destroy/.test(v.state ?? ''))
      .map((v) => ({ instanceId: byVolumeName.get(v.name), what: `volume ${v.name} (${v.id}, ${v.state})` }));
    expect(resourceProblems(controller.registry.list(), 'fly', machines, volumes)).toEqual([]);
    expect(await fileProblems(controller, files)).toEqual([]);
  }, 150_000);

  it('aws-asg (AWS emulator): every operation completes or fails clearly; a new controller converges with nothing leaked', async () => {
    const saved = { id: process.env.AWS_ACCESS_KEY_ID, secret: process.env.AWS_SECRET_ACCESS_KEY };
    process.env.AWS_ACCESS_KEY_ID = 'AKIAEMULATOR000000';
    process.env.AWS_SECRET_ACCESS_KEY = 'emulator-secret';
    cleanups.push(async () => {
      for (const [k, v] of [['AWS_ACCESS_KEY_ID', saved.id], ['AWS_SECRET_ACCESS_KEY', saved.secret]] as const) {
        if (v === undefined) delete process.env[k];
        else process.env[k] = v;
      }
    });
    const group = 'vscode-swarm-faults';
    const token = 'faults-agent-token-0123456789abcdef0123';
    const agentState = await mkdtemp(path.join(os.tmpdir(), 'vscode-swarm-faults-agents-'));
    cleanups.push(() => rm(agentState, { recursive: true, force: true }));
    const agentPort = await freePort();
    const proxyPort = await freePort();
    const emulator: AwsEmulator = await startAwsEmulator({
      addresses: { first: '127.0.47.2', size: 10 },
      groups: [{ name: group, minSize: 1, maxSize: 2 }],
      agent: {
        cwd: REPO_ROOT,
        token,
        apiPort: agentPort,
        // Each host runs with its own credential, derived from the swarm's token and its id.
        extraArgs: (host) => [
          '--api-port', String(agentPort), '--proxy-port', String(proxyPort), '--token', deriveHostToken(token, host.hostId), '--gateway-secret', 'faults-gateway-secret-0123456789abcdef01234',
          '--capacity', '8', '--image', image, '--no-pull', '--state-dir', path.join(agentState, host.hostId),
          '--stop-timeout-seconds', '1', '--idle-timeout-minutes', '0', '--log-level', 'warn',
        ],
      },
    });
    const hostLabels = (): string[] => emulator.hosts().map((h) => `${LABEL_SWARM}=host-${h.id}`);
    const seenLabels = new Set<string>();
    cleanups.push(async () => {
      for (const l of hostLabels()) seenLabels.add(l);
      await emulator.close();
      for (const label of seenLabels) {
        for (const c of await docker.listContainers({ all: true, filters: { label: [label] } })) await docker.getContainer(c.Id).remove({ force: true }).catch(() => undefined);
        const { Volumes } = await docker.listVolumes({ filters: { label: [label] } });
        for (const v of Volumes ?? []) await docker.getVolume(v.Name).remove().catch(() => undefined);
      }
    });
    await emulator.waitForGroupStable(group, 30_000);
    const proxy = await startFaultProxy({ target: { host: '127.0.0.1', port: Number(new URL(emulator.url).port) } });
    cleanups.push(() => proxy.close());
    const stateDir = await makeStateDir('faults-aws');
    cleanups.push(() => rm(stateDir, { recursive: true, force: true }));
    const config = testConfig(stateDir, {
      defaultProvider: 'aws-asg',
      gateway: { enabled: false },
      health: { enabled: false },
      idle: { enabled: false },
      exec: { enabled: true, timeoutMs: 30_000 },
      providers: {
        docker: { enabled: false },
        'aws-asg': {
          enabled: true, region: 'eu-west-1', groupName: group, endpoint: proxy.httpUrl, image, perHostCapacity: 8, bufferSlots: 0, agentPort,
          hostCacheTtlMs: 1_000, hostPollMs: 250, reconcileIntervalMs: 1_000, hostWaitTimeoutMs: 30_000, agentCreateTimeoutMs: 30_000,
        },
      },
    });
    const env = { ...process.env, VSCODE_SWARM_AWS_AGENT_TOKEN: token };

    let controller = createSwarm(config, { env });
    cleanups.push(() => controller.close());
    await controller.initialize();
    const seed = (await controller.createInstance({ name: `${PREFIX}-aws-seed`, resources: SMALL })).instance.id;
    const files = await seedFiles(controller, [seed]);

    proxy.setFaults({ ...FAULTS, seed: FAULTS.seed! + 2 });
    const outcomes = await runSeries({ controller, provider: 'aws-asg', keep: new Set([seed]), steps: 14, seed: 13, memorySizes: [256, 384, 512] });
    proxy.setFaults(null);
    summarise('aws-asg', outcomes, proxy);
    console.info(`aws-asg: records before reconcile ${statusCounts(controller)}`);
    expect(problems(outcomes)).toEqual([]);
    expect(faultsInjected(proxy)).toBeGreaterThan(0);

    await controller.close();
    controller = await reconcileWith(config, env);
    for (const l of hostLabels()) seenLabels.add(l);
    const machines: Array<{ instanceId: string; what: string }> = [];
    const volumes: Array<{ instanceId: string | undefined; what: string }> = [];
    for (const label of seenLabels) {
      for (const c of await docker.listContainers({ all: true, filters: { label: [label] } })) {
        machines.push({ instanceId: c.Labels[LABEL_INSTANCE] ?? '(none)', what: `container ${c.Names.join(',')} (${c.State}) on ${label}` });
      }
      const { Volumes } = await docker.listVolumes({ filters: { label: [label] } });
      for (const v of Volumes ?? []) volumes.push({ instanceId: v.Labels?.[LABEL_INSTANCE], what: `volume ${v.Name} on ${label}` });
    }
    expect(resourceProblems(controller.registry.list(), 'aws-asg', machines, volumes)).toEqual([]);
    expect(await fileProblems(controller, files)).toEqual([]);
  }, 180_000);
});
