/**
 * Model-based test of the SwarmController on the real Docker engine (stand-in editor image): random
 * sequences of create, start, stop, delete, update (live resize; env by re-creating), file writes through
 * exec, controller restarts, crashes (an operation run by the stdio server with VSCODE_SWARM_CRASH_AT,
 * then a new controller on the same state directory) and containers removed or stopped behind the
 * controller's back. The model holds which workspaces exist by name, what should run, their env and size,
 * and their files by SHA-256.
 *
 * After every command: the swarm's invariants (test/helpers/invariants.ts: the registry tells the truth,
 * one container per instance, nothing leaked, files identical) and the model's own expectations (status,
 * desired state, env, resources per name). After a crash the interrupted operation must have completed
 * or been undone; the model then follows whichever happened.
 */
import fc from 'fast-check';
import { createHash } from 'node:crypto';
import { rm } from 'node:fs/promises';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { LABEL_INSTANCE, LABEL_MANAGED, LABEL_NAME, LABEL_SWARM } from '../../providers/docker/docker-mapping.js';
import type { VSCodeInstance } from '../../providers/provider.js';
import { swarmIdFor } from '../../src/config.js';
import { createSwarm } from '../../src/controller/create-swarm.js';
import type { SwarmController } from '../../src/controller/swarm-controller.js';
import type { CrashPoint } from '../../src/crash/crash-points.js';
import { waitUntil } from '../../src/timing/wait-until.js';
import { docker, makeStateDir, testConfig } from '../helpers/docker.js';
import { swarmViolations } from '../helpers/invariants.js';
import { callTool, launchFromMcpJson, type LaunchedServer } from '../helpers/mcp.js';
import { ensureStandinImage, STANDIN_IMAGE } from '../helpers/standin-image.js';
import { isProcessAlive } from '../../src/state/state-lock.js';

const SEED = Number(process.env.MODEL_SEED ?? 7_2026);
const NUM_RUNS = Number(process.env.MODEL_RUNS ?? 5);
const MAX_COMMANDS = Number(process.env.MODEL_COMMANDS ?? 15);
const MIN_COMMANDS = Math.min(8, MAX_COMMANDS);
const VERBOSE = process.env.MODEL_VERBOSE === '1';
const TIME_LIMIT_MS = Number(process.env.MODEL_TIME_LIMIT_MS ?? 600_000);

/** Every workspace of this suite is named with this prefix (containers and volumes carry it as a label). */
const PREFIX = 'fcm-';
const NAMES = [`${PREFIX}a`, `${PREFIX}b`] as const;
const ENV_KEYS = ['FCM_A', 'FCM_B'] as const;

// ---- the model ----

type Env = Record<string, string>;
interface Resources {
  cpu: number;
  memoryMb: number;
}
interface MInstance {
  id: string;
  /** What the engine holds: a running or stopped container, or none. */
  container: 'running' | 'stopped' | 'missing';
  desired: 'running' | 'stopped';
  env: Env;
  resources: Resources;
  /** Workspace files: path relative to the workspace -> sha256 hex. */
  files: Record<string, string>;
}
interface Model {
  byName: Map<string, MInstance>;
  /** Instance ids deleted with keepWorkspace: their volumes stay, deliberately. */
  kept: string[];
}
interface Real {
  stateDir: string;
  swarmId: string;
  controller: SwarmController;
}

const STATUS_OF: Record<MInstance['container'], VSCodeInstance['status']> = { running: 'running', stopped: 'stopped', missing: 'failed' };

// ---- helpers ----

function newController(stateDir: string): SwarmController {
  return createSwarm(
    testConfig(stateDir, {
      providers: { docker: { image: STANDIN_IMAGE, stopTimeoutSeconds: 1 } },
      exec: { enabled: true, timeoutMs: 20_000 },
      defaults: { cpu: 0.5, memoryMb: 256 },
    }),
  );
}

function log(line: string): void {
  if (VERBOSE) process.stderr.write(`controller model: ${line}\n`);
}

function sameEnv(a: Env, b: Env): boolean {
  return JSON.stringify(Object.entries(a).sort()) === JSON.stringify(Object.entries(b).sort());
}

function sha256(text: string): string {
  return createHash('sha256').update(text, 'utf8').digest('hex');
}

/** The suite's containers of one instance, as the engine lists them. */
async function containersOf(swarmId: string, id: string) {
  return docker.listContainers({ all: true, filters: { label: [`${LABEL_SWARM}=${swarmId}`, `${LABEL_INSTANCE}=${id}`] } });
}

/** The env a container really runs with (only this suite's keys). */
async function containerEnv(containerId: string): Promise<Env> {
  const info = await docker.getContainer(containerId).inspect();
  const env: Env = {};
  for (const entry of info.Config.Env ?? []) {
    const eq = entry.indexOf('=');
    const key = entry.slice(0, eq);
    if ((ENV_KEYS as readonly string[]).includes(key)) env[key] = entry.slice(eq + 1);
  }
  return env;
}

/** Removes everything this swarm created on the engine: containers first, then volumes. */
async function removeSwarm(swarmId: string): Promise<void> {
  const label = [`${LABEL_MANAGED}=true`, `${LABEL_SWARM}=${swarmId}`];
  for (const c of await docker.listContainers({ all: true, filters: { label } })) {
    await docker.getContainer(c.Id).remove({ force: true }).catch(() => undefined);
  }
  const { Volumes } = await docker.listVolumes({ filters: { label } });
  for (const v of Volumes ?? []) await docker.getVolume(v.Name).remove({ force: true }).catch(() => undefined);
}

/** Leftovers of an earlier, aborted run of this suite (by name prefix), whatever its swarm. */
async function removeLeftovers(): Promise<void> {
  const label = [`${LABEL_MANAGED}=true`];
  for (const c of await docker.listContainers({ all: true, filters: { label } })) {
    if (c.Labels[LABEL_NAME]?.startsWith(PREFIX)) await docker.getContainer(c.Id).remove({ force: true }).catch(() => undefined);
  }
  const { Volumes } = await docker.listVolumes({ filters: { label } });
  for (const v of Volumes ?? []) {
    if (v.Labels?.[LABEL_NAME]?.startsWith(PREFIX)) await docker.getVolume(v.Name).remove({ force: true }).catch(() => undefined);
  }
}

/** The registry's record of a name (warm members aside); at most one. */
function recordsNamed(r: Real, name: string): VSCodeInstance[] {
  return r.controller.registry.list().filter((i) => i.name === name && !i.warmPool);
}

/**
 * Everything that must hold between commands. The controller is asked to refresh first (as any list
 * does), so that what changed behind its back is in the registry before the invariants are read.
 */
async function agree(m: Model, r: Real, step: string): Promise<void> {
  await r.controller.listInstances();
  await r.controller.registry.flush();
  const files: Record<string, Record<string, string>> = {};
  for (const inst of m.byName.values()) if (inst.container !== 'missing') files[inst.id] = inst.files;
  const violations = await swarmViolations({ stateDir: r.stateDir, swarmId: r.swarmId, files, keptVolumes: m.kept });
  expect(violations, `invariants after ${step}`).toEqual([]);

  const records = r.controller.registry.list().filter((i) => !i.warmPool);
  expect(records.map((i) => i.name).sort(), `names in the registry after ${step}`).toEqual([...m.byName.keys()].sort());
  for (const [name, inst] of m.byName) {
    const [record] = recordsNamed(r, name);
    const at = `${name} (${inst.id}) after ${step}`;
    expect(record!.id, at).toBe(inst.id);
    expect(record!.status, `status of ${at}: ${record!.statusReason ?? ''}`).toBe(STATUS_OF[inst.container]);
    expect(record!.desiredState, `desired state of ${at}`).toBe(inst.desired);
    expect(record!.config.env ?? {}, `env recorded for ${at}`).toEqual(inst.env);
    if (inst.container !== 'missing') {
      expect(record!.config.resources, `resources of ${at}`).toEqual(inst.resources);
      const [container] = await containersOf(r.swarmId, inst.id);
      expect(await containerEnv(container!.Id), `env the container of ${at} runs with`).toEqual(inst.env);
    }
  }
}

/** Looks a name up in the model; the commands below only run on names their check() found. */
function must(m: Model, name: string): MInstance {
  const inst = m.byName.get(name);
  if (!inst) throw new Error(`model has no ${name}`);
  return inst;
}

// ---- commands ----

type Cmd = fc.AsyncCommand<Model, Real>;

abstract class Step implements Cmd {
  check(_m: Readonly<Model>): boolean {
    return true;
  }
  async run(m: Model, r: Real): Promise<void> {
    const t0 = Date.now();
    await this.act(m, r);
    const t1 = Date.now();
    await agree(m, r, this.toString());
    log(`${this.toString()}  [${t1 - t0} ms + ${Date.now() - t1} ms checks]`);
  }
  protected abstract act(m: Model, r: Real): Promise<void>;
  abstract toString(): string;
}

class Create extends Step {
  constructor(readonly name: string, readonly resources: Resources, readonly env: Env) {
    super();
  }
  protected async act(m: Model, r: Real): Promise<void> {
    const existing = m.byName.get(this.name);
    const result = await r.controller.createInstance({ name: this.name, resources: this.resources, ...(Object.keys(this.env).length ? { env: this.env } : {}) });
    if (existing) {
      expect(result).toMatchObject({ created: false, instance: { id: existing.id } });
      return;
    }
    expect(result).toMatchObject({ created: true, fromWarmPool: false, instance: { name: this.name, status: 'running' } });
    m.byName.set(this.name, { id: result.instance.id, container: 'running', desired: 'running', env: { ...this.env }, resources: { ...this.resources }, files: {} });
  }
  toString = (): string => `create(${this.name}, cpu ${this.resources.cpu}, ${this.resources.memoryMb} MiB, env ${JSON.stringify(this.env)})`;
}

/**
 * The same new name asked for twice at once while lists (each a reconcile) run beside: one workspace,
 * created once, and no list mistakes the create in flight for one a crash interrupted.
 */
class CreateRace extends Step {
  constructor(readonly name: string, readonly resources: Resources) {
    super();
  }
  override check = (m: Readonly<Model>): boolean => !m.byName.has(this.name);
  protected async act(m: Model, r: Real): Promise<void> {
    let settled = false;
    const creates = Promise.all([0, 1].map(() => r.controller.createInstance({ name: this.name, resources: this.resources }))).finally(() => {
      settled = true;
    });
    let lists = 0;
    while (!settled) {
      await r.controller.listInstances();
      lists++;
    }
    const [first, second] = await creates;
    expect([first!.created, second!.created].sort(), `after ${lists} lists`).toEqual([false, true]);
    expect(second!.instance.id).toBe(first!.instance.id);
    expect(first!.instance.status).toBe('running');
    m.byName.set(this.name, { id: first!.instance.id, container: 'running', desired: 'running', env: {}, resources: { ...this.resources }, files: {} });
  }
  toString = (): string => `createRace(${this.name}, cpu ${this.resources.cpu}, ${this.resources.memoryMb} MiB, twice at once, listing meanwhile)`;
}

class Start extends Step {
  constructor(readonly name: string) {
    super();
  }
  override check = (m: Readonly<Model>): boolean => m.byName.has(this.name);
  protected async act(m: Model, r: Real): Promise<void> {
    const inst = must(m, this.name);
    const started = await r.controller.startInstance(inst.id);
    expect(started.status).toBe('running');
    if (inst.container === 'missing') expect(started.statusReason).toMatch(/re-created/);
    inst.container = 'running';
    inst.desired = 'running';
  }
  toString = (): string => `start(${this.name})`;
}

class Stop extends Step {
  constructor(readonly name: string, readonly force: boolean) {
    super();
  }
  override check = (m: Readonly<Model>): boolean => m.byName.has(this.name);
  protected async act(m: Model, r: Real): Promise<void> {
    const inst = must(m, this.name);
    if (inst.container === 'missing') {
      await expect(r.controller.stopInstance(inst.id, { force: this.force })).rejects.toMatchObject({ code: 'CONFLICT' });
      return;
    }
    const stopped = await r.controller.stopInstance(inst.id, { force: this.force });
    expect(stopped).toMatchObject({ status: 'stopped', desiredState: 'stopped', lastStop: { by: 'request' } });
    inst.container = 'stopped';
    inst.desired = 'stopped';
  }
  toString = (): string => `stop(${this.name}${this.force ? ', force' : ''})`;
}

class Delete extends Step {
  constructor(readonly name: string, readonly keepWorkspace: boolean) {
    super();
  }
  override check = (m: Readonly<Model>): boolean => m.byName.has(this.name);
  protected async act(m: Model, r: Real): Promise<void> {
    const inst = must(m, this.name);
    expect(await r.controller.deleteInstance(inst.id, { keepWorkspace: this.keepWorkspace })).toEqual({ instanceId: inst.id, deleted: true, workspaceKept: this.keepWorkspace });
    m.byName.delete(this.name);
    if (this.keepWorkspace) m.kept.push(inst.id);
  }
  toString = (): string => `delete(${this.name}${this.keepWorkspace ? ', keepWorkspace' : ''})`;
}

class Resize extends Step {
  constructor(readonly name: string, readonly resources: Resources) {
    super();
  }
  override check = (m: Readonly<Model>): boolean => m.byName.has(this.name);
  protected async act(m: Model, r: Real): Promise<void> {
    const inst = must(m, this.name);
    if (inst.container === 'missing') {
      await expect(r.controller.updateInstance(inst.id, { resources: this.resources })).rejects.toMatchObject({ code: 'CONFLICT' });
      return;
    }
    const same = this.resources.cpu === inst.resources.cpu && this.resources.memoryMb === inst.resources.memoryMb;
    const updated = await r.controller.updateInstance(inst.id, { resources: this.resources });
    expect(updated.updateMode).toBe(same ? 'none' : 'live');
    expect(updated.config.resources).toEqual(this.resources);
    expect(updated.status).toBe(STATUS_OF[inst.container]);
    inst.resources = { ...this.resources };
  }
  toString = (): string => `resize(${this.name}, cpu ${this.resources.cpu}, ${this.resources.memoryMb} MiB)`;
}

class SetEnv extends Step {
  constructor(readonly name: string, readonly env: Env) {
    super();
  }
  override check = (m: Readonly<Model>): boolean => m.byName.has(this.name);
  protected async act(m: Model, r: Real): Promise<void> {
    const inst = must(m, this.name);
    if (inst.container === 'missing') {
      await expect(r.controller.updateInstance(inst.id, { env: this.env })).rejects.toMatchObject({ code: 'CONFLICT' });
      return;
    }
    const updated = await r.controller.updateInstance(inst.id, { env: this.env });
    if (!sameEnv(this.env, inst.env)) expect(updated.updateMode).toBe('recreate');
    expect(updated.status).toBe(STATUS_OF[inst.container]);
    expect(updated.config.env ?? {}).toEqual(this.env);
    inst.env = { ...this.env };
  }
  toString = (): string => `setEnv(${this.name}, ${JSON.stringify(this.env)})`;
}

class WriteFile extends Step {
  constructor(readonly name: string, readonly file: string, readonly content: string) {
    super();
  }
  override check = (m: Readonly<Model>): boolean => m.byName.has(this.name);
  protected async act(m: Model, r: Real): Promise<void> {
    const inst = must(m, this.name);
    const dir = this.file.includes('/') ? this.file.slice(0, this.file.lastIndexOf('/')) : '.';
    const command = `mkdir -p '${dir}' && printf '%s' '${this.content}' > '${this.file}' && sha256sum '${this.file}'`;
    if (inst.container !== 'running') {
      await expect(r.controller.executeCommand(inst.id, command)).rejects.toMatchObject({ code: 'CONFLICT' });
      return;
    }
    const result = await r.controller.executeCommand(inst.id, command);
    const expected = sha256(this.content);
    expect(result, result.stderr).toMatchObject({ exitCode: 0, timedOut: false });
    expect(result.stdout.split(/\s+/)[0]).toBe(expected);
    inst.files[this.file] = expected;
  }
  toString = (): string => `write(${this.name}, ${this.file}, ${JSON.stringify(this.content)})`;
}

class RestartController extends Step {
  protected async act(m: Model, r: Real): Promise<void> {
    await r.controller.close();
    r.controller = newController(r.stateDir);
    const { reconciled, unavailable } = await r.controller.initialize();
    expect(unavailable).toEqual([]);
    // Nothing it did not know about, nothing it had to mark: the last controller left it all recorded.
    expect(reconciled.flatMap((x) => [...x.adopted, ...x.removed])).toEqual([]);
    void m;
  }
  toString = (): string => 'restartController';
}

class BehindTheBack extends Step {
  constructor(readonly name: string, readonly action: 'remove' | 'kill') {
    super();
  }
  override check = (m: Readonly<Model>): boolean => {
    const inst = m.byName.get(this.name);
    return !!inst && (this.action === 'remove' ? inst.container !== 'missing' : inst.container === 'running');
  };
  protected async act(m: Model, r: Real): Promise<void> {
    const inst = must(m, this.name);
    const [container] = await containersOf(r.swarmId, inst.id);
    if (this.action === 'remove') {
      await docker.getContainer(container!.Id).remove({ force: true });
      inst.container = 'missing';
    } else {
      await docker.getContainer(container!.Id).kill();
      inst.container = 'stopped';
    }
  }
  toString = (): string => `${this.action === 'remove' ? 'docker rm -f' : 'docker kill'} ${this.name} behind the controller's back`;
}

type CrashOp =
  | { op: 'create'; resources: Resources; env: Env }
  | { op: 'start' }
  | { op: 'stop' }
  | { op: 'delete'; keepWorkspace: boolean }
  | { op: 'setEnv'; env: Env }
  | { op: 'resize'; resources: Resources };

const CRASH_POINTS_OF: Record<CrashOp['op'], CrashPoint[]> = {
  create: ['create.after-record', 'create.after-provider'],
  start: ['start.after-record', 'start.after-provider'],
  stop: ['stop.after-record', 'stop.after-provider'],
  delete: ['delete.after-record', 'docker.delete.after-container', 'delete.after-provider'],
  setEnv: ['docker.recreate.after-new-container', 'docker.recreate.after-old-removed', 'update.after-provider'],
  resize: ['update.after-provider'],
};

/**
 * The operation is run by the stdio server (launched from mcp.json like a client would) with a crash
 * point set: it dies there with SIGKILL. A new controller then takes the state directory over, and the
 * interrupted operation must have completed or been undone.
 */
class Crash extends Step {
  constructor(readonly name: string, readonly spec: CrashOp, readonly pointIndex: number) {
    super();
  }
  get point(): CrashPoint {
    const points = CRASH_POINTS_OF[this.spec.op];
    return points[this.pointIndex % points.length]!;
  }
  override check = (m: Readonly<Model>): boolean => {
    const inst = m.byName.get(this.name);
    switch (this.spec.op) {
      case 'create':
        return !inst;
      case 'start':
        return !!inst;
      case 'stop':
        return inst?.container === 'running';
      case 'delete':
        return !!inst && (this.point !== 'docker.delete.after-container' || inst.container !== 'missing');
      case 'setEnv':
        return !!inst && inst.container !== 'missing' && !sameEnv(inst.env, this.spec.env);
      case 'resize':
        return !!inst && inst.container !== 'missing';
    }
  };

  protected async act(m: Model, r: Real): Promise<void> {
    const before = m.byName.get(this.name);
    const prior = before ? structuredClone(before) : undefined;
    const t0 = Date.now();
    await r.controller.close();
    const server: LaunchedServer = await launchFromMcpJson({
      VSCODE_SWARM_STATE_DIR: r.stateDir,
      VSCODE_SWARM_DOCKER_IMAGE: STANDIN_IMAGE,
      VSCODE_SWARM_CRASH_AT: this.point,
      VSCODE_SWARM_LOG_LEVEL: 'warn',
      VSCODE_SWARM_AUTO_RECOVER: '0',
      VSCODE_SWARM_HEALTH_INTERVAL_MS: '3600000',
      VSCODE_SWARM_IDLE_CHECK_MS: '3600000',
    });
    const launched = Date.now();
    let answered: unknown;
    try {
      const spec = this.spec;
      const id = prior?.id;
      const call =
        spec.op === 'create'
          ? callTool(server.client, 'create_swarm_instance', { name: this.name, resources: spec.resources, ...(Object.keys(spec.env).length ? { env: spec.env } : {}) })
          : spec.op === 'start'
            ? callTool(server.client, 'start_swarm_instance', { instanceId: id })
            : spec.op === 'stop'
              ? callTool(server.client, 'stop_swarm_instance', { instanceId: id, force: true })
              : spec.op === 'delete'
                ? callTool(server.client, 'delete_swarm_instance', { instanceId: id, keepWorkspace: spec.keepWorkspace })
                : spec.op === 'setEnv'
                  ? callTool(server.client, 'update_swarm_instance', { instanceId: id, env: spec.env })
                  : callTool(server.client, 'update_swarm_instance', { instanceId: id, resources: spec.resources });
      // The call never answers: the server dies at the crash point.
      answered = await call.then((result) => result, () => undefined);
      await waitUntil(async () => (isProcessAlive(server.pid) ? undefined : true), { timeoutMs: 30_000, what: `the server to die at ${this.point}` });
      expect(answered, `${this.spec.op} answered instead of dying at ${this.point}: ${JSON.stringify(answered)}\n${server.stderr()}`).toBeUndefined();
      expect(server.stderr()).toContain(`crash point ${this.point} reached`);
      log(`  server up in ${launched - t0} ms, dead ${Date.now() - launched} ms later`);
    } finally {
      if (isProcessAlive(server.pid)) process.kill(server.pid, 'SIGKILL');
      await server.close().catch(() => undefined);
    }

    r.controller = newController(r.stateDir);
    const t1 = Date.now();
    const { unavailable } = await r.controller.initialize();
    expect(unavailable).toEqual([]);
    log(`  new controller initialised in ${Date.now() - t1} ms`);
    await r.controller.listInstances();
    this.settle(m, r, prior);
  }

  /** Which outcome happened (completed, undone, or a documented in-between), and the model follows it. */
  private settle(m: Model, r: Real, prior: MInstance | undefined): void {
    const records = recordsNamed(r, this.name);
    expect(records.length, `records named ${this.name}`).toBeLessThanOrEqual(1);
    const record = records[0];
    const spec = this.spec;
    const what = `after a crash at ${this.point} during ${spec.op}: ${record ? `${record.status} (${record.statusReason ?? ''}), desired ${record.desiredState}` : 'no record'}`;
    if (!record) {
      // Gone: only a create undone or a delete completed.
      expect(spec.op === 'create' || spec.op === 'delete', what).toBe(true);
      m.byName.delete(this.name);
      if (spec.op === 'delete' && spec.keepWorkspace) m.kept.push(prior!.id);
      return;
    }
    const container = ({ running: 'running', stopped: 'stopped', failed: 'missing' } as const)[record.status as 'running' | 'stopped' | 'failed'];
    expect(container, what).toBeDefined();
    const desired = record.desiredState;
    // Nothing ever stops an instance that runs against its desired state: that outcome is neither done nor undone.
    expect(!(desired === 'stopped' && container === 'running'), what).toBe(true);
    let files = prior?.files ?? {};
    switch (spec.op) {
      case 'create':
        // Completed, or marked: the record written before the provider acted, with nothing behind it
        // (start re-creates it).
        expect(container === 'running' || (container === 'missing' && /creation was interrupted/.test(record.statusReason ?? '')), what).toBe(true);
        expect(desired, what).toBe('running');
        files = {};
        break;
      case 'start':
        // Completed, undone, or the intent kept (desired running) for the health monitor to finish.
        expect(container === 'running' || container === prior!.container || desired === 'running', what).toBe(true);
        break;
      case 'stop':
        expect((container === 'stopped' && desired === 'stopped') || (container === 'running' && desired === prior!.desired), what).toBe(true);
        break;
      case 'delete':
        // Not completed: then nothing changed.
        expect({ container, desired }, what).toEqual({ container: prior!.container, desired: prior!.desired });
        break;
      case 'setEnv':
      case 'resize':
        expect(desired, what).toBe(prior!.desired);
        expect(container === prior!.container || (prior!.container === 'running' && container === 'stopped'), what).toBe(true);
        break;
    }
    const env = record.config.env ?? {};
    if (spec.op === 'setEnv') expect(sameEnv(env, prior!.env) || sameEnv(env, spec.env), what).toBe(true);
    m.byName.set(this.name, {
      id: record.id,
      container,
      desired: desired!,
      env: { ...env },
      resources: { ...record.config.resources },
      files,
    });
  }
  toString = (): string => `crash(${this.spec.op} ${this.name} at ${this.point}${this.spec.op === 'delete' && this.spec.keepWorkspace ? ', keepWorkspace' : ''}${'env' in this.spec ? `, env ${JSON.stringify(this.spec.env)}` : ''}${'resources' in this.spec ? `, cpu ${this.spec.resources.cpu}, ${this.spec.resources.memoryMb} MiB` : ''})`;
}


// ---- generators ----

const nameArb = fc.constantFrom(...NAMES);
const resourcesArb = fc.record({ cpu: fc.constantFrom(0.25, 0.5, 1), memoryMb: fc.constantFrom(256, 320, 384) });
const envArb = fc.dictionary(fc.constantFrom(...ENV_KEYS), fc.constantFrom('1', '2', 'x-y'), { maxKeys: 2 });
const FILES = ['a.txt', 'src/main.ts', 'docs/notes.md', 'deep/er/x.bin'] as const;
const contentArb = fc.string({ unit: fc.constantFrom(...'abcXYZ019 .,_-'.split('')), maxLength: 40 });

const crashOpArb: fc.Arbitrary<CrashOp> = fc.oneof(
  fc.record({ op: fc.constant('create' as const), resources: resourcesArb, env: envArb }),
  fc.record({ op: fc.constant('start' as const) }),
  fc.record({ op: fc.constant('stop' as const) }),
  fc.record({ op: fc.constant('delete' as const), keepWorkspace: fc.boolean() }),
  fc.record({ op: fc.constant('setEnv' as const), env: envArb }),
  fc.record({ op: fc.constant('resize' as const), resources: resourcesArb }),
);

// Repeated entries weigh more: fc.commands picks among them uniformly, and most commands need a workspace.
const createArb = fc.tuple(nameArb, resourcesArb, envArb).map(([name, res, env]) => new Create(name, res, env));
const writeArb = fc.tuple(nameArb, fc.constantFrom(...FILES), contentArb).map(([name, file, content]) => new WriteFile(name, file, content));
const crashArb = fc.tuple(nameArb, crashOpArb, fc.nat({ max: 5 })).map(([name, spec, point]) => new Crash(name, spec, point));
const commandArbs: fc.Arbitrary<Cmd>[] = [
  createArb,
  createArb,
  createArb,
  nameArb.map((name) => new Start(name)),
  fc.tuple(nameArb, fc.boolean()).map(([name, force]) => new Stop(name, force)),
  fc.tuple(nameArb, fc.boolean()).map(([name, keep]) => new Delete(name, keep)),
  fc.tuple(nameArb, resourcesArb).map(([name, res]) => new Resize(name, res)),
  fc.tuple(nameArb, envArb).map(([name, env]) => new SetEnv(name, env)),
  writeArb,
  writeArb,
  writeArb,
  fc.constant(new RestartController()),
  fc.tuple(nameArb, resourcesArb).map(([name, res]) => new CreateRace(name, res)),
  fc.tuple(nameArb, fc.constantFrom('remove' as const, 'kill' as const)).map(([name, action]) => new BehindTheBack(name, action)),
  crashArb,
  crashArb,
];

const [A, B] = NAMES;
const small = { cpu: 0.5, memoryMb: 256 };
/** Sequences worth running every time (two found defects, see each), before the random ones. */
const SCENARIOS: Cmd[][] = [
  // A stop interrupted after its intent was recorded came back running with desiredState 'stopped':
  // nothing would ever stop it. Reconcile now finishes it.
  [new Crash(A, { op: 'stop' }, 0), new CreateRace(B, small)],
  // Env cleared ({}) by a re-create the controller died after: the registry kept the old env, because the
  // provider reported "no env" by leaving it out, which reads as "unknown". It now reports {}.
  [new SetEnv(A, { FCM_A: '1' }), new Crash(A, { op: 'setEnv', env: {} }, 2)],
  // A re-create interrupted after the old container went leaves the new one under its staging name (the
  // provider settles it at start-up); then another re-create, files, and an interrupted create beside it.
  [new Crash(A, { op: 'setEnv', env: { FCM_A: '1' } }, 1), new SetEnv(A, { FCM_B: '2' }), new WriteFile(A, 'a.txt', 'kept'), new Crash(B, { op: 'create', resources: small, env: {} }, 0)],
];

describe('SwarmController against a model, on the real Docker engine', () => {
  beforeAll(async () => {
    await ensureStandinImage();
    await removeLeftovers();
  });
  afterAll(async () => {
    await removeLeftovers();
  });

  it(`agrees with the model after every command, restart and crash (seed ${SEED}, ${NUM_RUNS} runs of up to ${MAX_COMMANDS} commands)`, async () => {
    process.stderr.write(`controller model: seed ${SEED}, ${NUM_RUNS} runs of ${MIN_COMMANDS} to ${MAX_COMMANDS} commands, each after create(${NAMES[0]}) (MODEL_SEED, MODEL_RUNS, MODEL_COMMANDS, MODEL_VERBOSE=1)\n`);
    let run = 0;
    // The scenarios run first (fast-check counts them among the runs), then NUM_RUNS random sequences.
    const scenarios = (process.env.MODEL_SCENARIOS ?? SCENARIOS.map((_, n) => n).join(',')).split(',').filter(Boolean).map((n) => SCENARIOS[Number(n)]!);
    const details = await fc.check(
      fc.asyncProperty(fc.commands(commandArbs, { maxCommands: MAX_COMMANDS, size: 'max' }).filter((cmds) => [...cmds].length >= MIN_COMMANDS), async (cmds) => {
        const stateDir = await makeStateDir(`model-${++run}`);
        const swarmId = swarmIdFor(stateDir);
        let real: Real | undefined;
        log(`run ${run} in ${stateDir} (swarm ${swarmId})`);
        // Every run starts with one workspace, so that most commands have something to act on.
        const setup = async () => {
          const controller = newController(stateDir);
          await controller.initialize();
          real = { stateDir, swarmId, controller };
          const model: Model = { byName: new Map(), kept: [] };
          await new Create(NAMES[0], small, {}).run(model, real);
          return { model, real };
        };
        try {
          await fc.asyncModelRun(setup, cmds);
        } finally {
          await real?.controller.close().catch(() => undefined);
          await removeSwarm(swarmId);
          await rm(stateDir, { recursive: true, force: true });
        }
      }),
      {
        seed: SEED,
        numRuns: NUM_RUNS + scenarios.length,
        verbose: 1,
        examples: scenarios.map((s): [Cmd[]] => [s]),
        // Shrinking re-runs sequences on Docker: past this, the smallest counterexample so far is reported
        // rather than the test timing out with none.
        interruptAfterTimeLimit: TIME_LIMIT_MS,
      },
    );
    if (details.interrupted) process.stderr.write(`controller model: stopped after ${TIME_LIMIT_MS} ms, ${details.numRuns} runs done${details.failed ? ', shrinking cut short' : ''}\n`);
    if (details.failed) throw new Error(fc.defaultReportMessage(details), { cause: details.errorInstance });
  }, TIME_LIMIT_MS + 120_000);
});
