/**
 * Model-based test of the instance registry: random sequences of register, update, remove, get, list,
 * findByName, findByMetadata, overlapping writes, reloads into a new registry from the same folder (a
 * restart) and torn writes (leftover temp files, truncated or garbage instance files beside the good
 * ones) against a plain Map. After every command the registry, and the files on disk, say what the Map
 * says; a reload loads exactly the Map, removes every temp file and sets every bad file aside.
 */
import fc from 'fast-check';
import { mkdtemp, readdir, readFile, rm, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { INSTANCE_STATUSES, PROVIDER_TYPES, type VSCodeInstance } from '../../providers/provider.js';
import { InstanceRegistry } from '../../src/registry/instance-registry.js';

const SEED = Number(process.env.MODEL_SEED ?? 20_261_122);
const NUM_RUNS = Number(process.env.MODEL_RUNS ?? 150);

// ---- the model ----

type Garbage = { file: string; kind: string };
interface Model {
  records: Map<string, VSCodeInstance>;
  /** Bad files written since the last load: a reload must set each aside and keep the rest. */
  pendingGarbage: Garbage[];
  pendingTemp: string[];
  /** Files in quarantine/ so far: nothing set aside is ever lost. */
  quarantined: number;
}

interface Real {
  stateDir: string;
  registry: InstanceRegistry;
}

// ---- generators ----

const IDS = ['alpha', 'beta', 'gamma', 'web-1', 'web-2', 'x'] as const;
const NAMES = ['alpha', 'Alpha', 'beta', 'web-1', 'web-2', 'web.1', 'db_1', 'x'] as const;
const TIMES = ['2026-01-01T00:00:00.000Z', '2026-01-01T00:00:01.000Z', '2026-02-01T00:00:00.000Z'] as const;
const META_KEYS = ['owner', 'team', 'tier/x'] as const;
const META_VALUES = ['ann', 'bob', ''] as const;
const GLOBS = ['*', 'web-*', 'WEB-?', '?eta', 'web.1', 'web?1', 'a*a', '*_*', 'x', 'nothing', '*-*'] as const;

const metadataArb = fc.option(fc.dictionary(fc.constantFrom(...META_KEYS), fc.constantFrom(...META_VALUES), { maxKeys: 3 }), { nil: undefined });

const recordArb = (id: fc.Arbitrary<string>): fc.Arbitrary<VSCodeInstance> =>
  fc
    .record({
      id,
      name: fc.constantFrom(...NAMES),
      providerType: fc.constantFrom(...PROVIDER_TYPES),
      status: fc.constantFrom(...INSTANCE_STATUSES),
      createdAt: fc.constantFrom(...TIMES),
      cpu: fc.constantFrom(0.5, 1, 2),
      metadata: metadataArb,
      statusReason: fc.option(fc.string({ maxLength: 12 }), { nil: undefined }),
    })
    .map(({ id, name, providerType, status, createdAt, cpu, metadata, statusReason }) => ({
      id,
      name,
      providerType,
      status,
      health: 'unknown' as const,
      config: { name, image: 'vscode-swarm/code-server:4.99.3', resources: { cpu, memoryMb: 1024 }, ...(metadata ? { metadata } : {}) },
      providerRef: { containerId: `c-${id}` },
      createdAt,
      updatedAt: createdAt,
      ...(statusReason !== undefined ? { statusReason } : {}),
    }));

/** A change update() accepts, or (bad) one it must refuse without changing anything. */
const changeArb = fc.oneof(
  fc.record({ status: fc.constantFrom(...INSTANCE_STATUSES) }),
  fc.record({ statusReason: fc.string({ maxLength: 12 }) }),
  fc.record({ name: fc.constantFrom(...NAMES) }),
  fc.record({ desiredState: fc.constantFrom('running' as const, 'stopped' as const) }),
  fc.record({ status: fc.constant('exploded') }).map((c) => ({ ...c, bad: true })),
  fc.record({ name: fc.constant('no spaces allowed') }).map((c) => ({ ...c, bad: true })),
);
type Change = Partial<VSCodeInstance> & { bad?: boolean };

// ---- helpers ----

/** An independent oracle for the glob (`*`, `?`, case-insensitive): plain recursion, no regular expression. */
function globMatches(glob: string, text: string): boolean {
  const g = glob.toLowerCase();
  const t = text.toLowerCase();
  const at = (i: number, j: number): boolean => {
    if (i === g.length) return j === t.length;
    if (g[i] === '*') return at(i + 1, j) || (j < t.length && at(i, j + 1));
    return j < t.length && (g[i] === '?' || g[i] === t[j]) && at(i + 1, j + 1);
  };
  return at(0, 0);
}

function sorted(records: Iterable<VSCodeInstance>): VSCodeInstance[] {
  return [...records].sort((a, b) => (a.createdAt < b.createdAt ? -1 : a.createdAt > b.createdAt ? 1 : a.id < b.id ? -1 : a.id > b.id ? 1 : 0));
}

function applyChange(current: VSCodeInstance, change: Change, updatedAt: string): VSCodeInstance {
  const { bad: _bad, ...rest } = change;
  return { ...current, ...rest, id: current.id, updatedAt };
}

/** The registry's view, and the files on disk, equal the model. */
async function agree(m: Model, r: Real): Promise<void> {
  const expected = sorted(m.records.values());
  expect(r.registry.list()).toEqual(expected);
  expect(r.registry.size).toBe(m.records.size);
  for (const id of IDS) expect(r.registry.get(id)).toEqual(m.records.get(id));
  const files = (await readdir(r.registry.instancesDir)).sort();
  const expectedFiles = [...m.records.keys()].map((id) => `${id}.json`);
  expect(files).toEqual([...expectedFiles, ...m.pendingGarbage.map((g) => g.file), ...m.pendingTemp].sort());
  for (const id of m.records.keys()) {
    expect(JSON.parse(await readFile(r.registry.fileOf(id), 'utf8'))).toEqual(m.records.get(id));
  }
}

async function expectRejects(promise: Promise<unknown>, code: string): Promise<void> {
  await expect(promise).rejects.toMatchObject({ code });
}

// ---- commands ----

type Cmd = fc.AsyncCommand<Model, Real>;

class Register implements Cmd {
  constructor(readonly record: VSCodeInstance) {}
  check = (): boolean => true;
  async run(m: Model, r: Real): Promise<void> {
    if (m.records.has(this.record.id)) {
      await expectRejects(r.registry.register(this.record), 'CONFLICT');
    } else {
      const stored = await r.registry.register(this.record);
      expect(stored).toEqual(this.record);
      expect(Object.isFrozen(stored) && Object.isFrozen(stored.config)).toBe(true);
      m.records.set(this.record.id, this.record);
    }
    await agree(m, r);
  }
  toString = (): string => `register(${this.record.id} name=${this.record.name} status=${this.record.status} at=${this.record.createdAt.slice(5, 19)} meta=${JSON.stringify(this.record.config.metadata ?? null)})`;
}

class Update implements Cmd {
  constructor(readonly id: string, readonly change: Change, readonly asFunction: boolean) {}
  check = (): boolean => true;
  async run(m: Model, r: Real): Promise<void> {
    const { bad, ...change } = this.change;
    const arg = this.asFunction ? (current: VSCodeInstance) => ({ ...current, ...change }) : change;
    const current = m.records.get(this.id);
    if (!current) {
      await expectRejects(r.registry.update(this.id, arg), 'NOT_FOUND');
    } else if (bad) {
      await expectRejects(r.registry.update(this.id, arg), 'INVALID_INPUT');
    } else {
      const updated = await r.registry.update(this.id, arg);
      expect(Number.isNaN(Date.parse(updated.updatedAt))).toBe(false);
      const next = applyChange(current, this.change, updated.updatedAt);
      expect(updated).toEqual(next);
      m.records.set(this.id, next);
    }
    await agree(m, r);
  }
  toString = (): string => `update(${this.id}, ${JSON.stringify(this.change)}${this.asFunction ? ', as function' : ''})`;
}

class Remove implements Cmd {
  constructor(readonly id: string) {}
  check = (): boolean => true;
  async run(m: Model, r: Real): Promise<void> {
    expect(await r.registry.remove(this.id)).toBe(m.records.delete(this.id));
    await agree(m, r);
  }
  toString = (): string => `remove(${this.id})`;
}

class Query implements Cmd {
  constructor(readonly kind: 'get' | 'list' | 'name' | 'metadata', readonly arg: string, readonly value: string | undefined, readonly statuses: string[]) {}
  check = (): boolean => true;
  async run(m: Model, r: Real): Promise<void> {
    const all = sorted(m.records.values());
    switch (this.kind) {
      case 'get':
        expect(r.registry.get(this.arg)).toEqual(m.records.get(this.arg));
        if (m.records.has(this.arg)) expect(r.registry.require(this.arg)).toEqual(m.records.get(this.arg));
        else expect(() => r.registry.require(this.arg)).toThrow(expect.objectContaining({ code: 'NOT_FOUND' }));
        break;
      case 'list': {
        const providerType = this.arg === '*' ? undefined : (this.arg as VSCodeInstance['providerType']);
        const status = this.statuses.length ? (this.statuses as VSCodeInstance['status'][]) : undefined;
        expect(r.registry.list({ ...(providerType ? { providerType } : {}), ...(status ? { status } : {}) })).toEqual(
          all.filter((i) => (!providerType || i.providerType === providerType) && (!status || status.includes(i.status))),
        );
        const counts: Record<string, number> = {};
        for (const i of all) counts[i.providerType] = (counts[i.providerType] ?? 0) + 1;
        expect(r.registry.countByProvider()).toEqual(counts);
        break;
      }
      case 'name':
        expect(r.registry.findByName(this.arg)).toEqual(all.filter((i) => globMatches(this.arg, i.name)));
        break;
      case 'metadata':
        expect(r.registry.findByMetadata(this.arg, this.value)).toEqual(
          all.filter((i) => i.config.metadata && Object.hasOwn(i.config.metadata, this.arg) && (this.value === undefined || i.config.metadata[this.arg] === this.value)),
        );
        break;
    }
  }
  toString = (): string => `${this.kind}(${JSON.stringify(this.arg)}${this.value !== undefined ? `, ${JSON.stringify(this.value)}` : ''}${this.statuses.length ? `, ${this.statuses.join('|')}` : ''})`;
}

type BurstOp = { op: 'register'; record: VSCodeInstance } | { op: 'update'; id: string; change: Change } | { op: 'remove'; id: string };

/** Several operations started without waiting for each other: memory follows their order, the files converge on it. */
class Burst implements Cmd {
  constructor(readonly ops: BurstOp[]) {}
  check = (): boolean => true;
  async run(m: Model, r: Real): Promise<void> {
    const outcomes = this.ops.map((op) =>
      op.op === 'register' ? r.registry.register(op.record) : op.op === 'update' ? r.registry.update(op.id, op.change) : r.registry.remove(op.id),
    );
    const settled = await Promise.allSettled(outcomes);
    settled.forEach((outcome, n) => {
      const op = this.ops[n]!;
      if (op.op === 'register') {
        if (m.records.has(op.record.id)) expect(outcome).toMatchObject({ status: 'rejected', reason: { code: 'CONFLICT' } });
        else {
          expect(outcome).toMatchObject({ status: 'fulfilled' });
          m.records.set(op.record.id, op.record);
        }
      } else if (op.op === 'update') {
        const current = m.records.get(op.id);
        if (!current) expect(outcome).toMatchObject({ status: 'rejected', reason: { code: 'NOT_FOUND' } });
        else if (op.change.bad) expect(outcome).toMatchObject({ status: 'rejected', reason: { code: 'INVALID_INPUT' } });
        else {
          expect(outcome.status).toBe('fulfilled');
          const updated = (outcome as PromiseFulfilledResult<VSCodeInstance>).value;
          m.records.set(op.id, applyChange(current, op.change, updated.updatedAt));
        }
      } else {
        expect(outcome).toEqual({ status: 'fulfilled', value: m.records.delete(op.id) });
      }
    });
    await agree(m, r);
  }
  toString = (): string =>
    `burst[${this.ops.map((o) => (o.op === 'register' ? `register ${o.record.id}` : o.op === 'update' ? `update ${o.id} ${JSON.stringify(o.change)}` : `remove ${o.id}`)).join('; ')}]`;
}

/** The restart: a new registry loads the same folder. */
class Reload implements Cmd {
  check = (): boolean => true;
  async run(m: Model, r: Real): Promise<void> {
    await r.registry.flush();
    const again = new InstanceRegistry({ stateDir: r.stateDir, loadConcurrency: 3 });
    const report = await again.load();
    expect(report.loaded).toBe(m.records.size);
    expect(report.removedTemp).toBe(m.pendingTemp.length);
    expect(report.setAside.map((s) => path.basename(s.file).replace(/\.json\..*$/, '.json')).sort()).toEqual(m.pendingGarbage.map((g) => g.file).sort());
    for (const s of report.setAside) expect(path.dirname(s.file)).toBe(again.quarantineDir);
    m.quarantined += m.pendingGarbage.length;
    m.pendingGarbage = [];
    m.pendingTemp = [];
    const quarantine = await readdir(again.quarantineDir).catch(() => []);
    expect(quarantine.length, `quarantine/ holds ${quarantine.join(', ')}`).toBe(m.quarantined);
    r.registry = again;
    await agree(m, r);
  }
  toString = (): string => 'reload';
}

/**
 * The same bad file turns up and is set aside again and again, restart after restart with nothing in
 * between (quarantine names are made from the time: the same name twice in one millisecond must not
 * replace the first one set aside).
 */
class SetAsideAgain implements Cmd {
  constructor(readonly times: number) {}
  check = (m: Readonly<Model>): boolean => m.pendingGarbage.length === 0 && m.pendingTemp.length === 0;
  async run(m: Model, r: Real): Promise<void> {
    await r.registry.flush();
    for (let n = 0; n < this.times; n++) {
      await writeFile(path.join(r.registry.instancesDir, 'again.json'), `{"id":"again",${n}`);
      r.registry = new InstanceRegistry({ stateDir: r.stateDir });
      const report = await r.registry.load();
      expect(report.setAside).toHaveLength(1);
      expect(report.loaded).toBe(m.records.size);
    }
    m.quarantined += this.times;
    const quarantine = await readdir(r.registry.quarantineDir);
    expect(quarantine.length, `quarantine/ holds ${quarantine.join(', ')}`).toBe(m.quarantined);
    await agree(m, r);
  }
  toString = (): string => `setAsideAgain(${this.times})`;
}

const TORN_KINDS = ['temp', 'truncated', 'garbage', 'empty', 'wrong-id', 'bad-status', 'bad-name'] as const;
type TornKind = (typeof TORN_KINDS)[number];

/**
 * What a crash or a hand edit leaves: a temp file of an interrupted write, or an unusable instance file
 * beside the good ones (names from a small pool, so the same name is set aside more than once).
 */
class TornWrite implements Cmd {
  constructor(readonly kind: TornKind, readonly slot: number, readonly cut: number, readonly source: VSCodeInstance) {}
  check = (m: Readonly<Model>): boolean =>
    this.kind === 'temp' || !m.pendingGarbage.some((g) => g.file === this.fileName());
  private fileName(): string {
    if (this.kind === 'bad-name') return `Torn ${this.slot}.json`;
    return `torn-${this.slot}.json`;
  }
  async run(m: Model, r: Real): Promise<void> {
    const dir = r.registry.instancesDir;
    const json = JSON.stringify({ ...this.source, id: `torn-${this.slot}` }, null, 2);
    if (this.kind === 'temp') {
      // An interrupted write of a real record or of a new one: the temp file holds part of it.
      const file = `.tmp-${this.source.id}.json.${(m.pendingTemp.length + 1).toString(16).padStart(12, '0')}`;
      await writeFile(path.join(dir, file), json.slice(0, Math.floor((json.length * this.cut) / 100)));
      m.pendingTemp.push(file);
    } else {
      const content: Record<Exclude<TornKind, 'temp'>, string> = {
        truncated: json.slice(0, Math.max(1, Math.floor((json.length * this.cut) / 100) - 1)),
        garbage: `\u0000\u00ff${this.cut}garbage{{`,
        empty: '',
        'wrong-id': JSON.stringify({ ...this.source }),
        'bad-status': JSON.stringify({ ...this.source, id: `torn-${this.slot}`, status: 'exploded' }),
        'bad-name': JSON.stringify(this.source),
      };
      const file = this.fileName();
      await writeFile(path.join(dir, file), content[this.kind]);
      m.pendingGarbage.push({ file, kind: this.kind });
    }
    // The live registry does not read the folder again: its view is unchanged.
    await agree(m, r);
  }
  toString = (): string => `torn(${this.kind}, slot ${this.slot}, cut ${this.cut}%, from ${this.source.id})`;
}

const idArb = fc.constantFrom(...IDS);
const commandArbs = [
  recordArb(idArb).map((rec) => new Register(rec)),
  fc.tuple(idArb, changeArb, fc.boolean()).map(([id, change, fn]) => new Update(id, change as Change, fn)),
  idArb.map((id) => new Remove(id)),
  fc
    .tuple(
      fc.constantFrom('get' as const, 'list' as const, 'name' as const, 'metadata' as const),
      fc.constantFrom(...IDS),
      fc.constantFrom('*', ...PROVIDER_TYPES),
      fc.constantFrom(...GLOBS),
      fc.constantFrom(...META_KEYS),
      fc.option(fc.constantFrom(...META_VALUES), { nil: undefined }),
      fc.subarray([...INSTANCE_STATUSES], { maxLength: 3 }),
    )
    .map(([kind, id, provider, glob, key, value, statuses]) =>
      kind === 'get' ? new Query('get', id, undefined, []) : kind === 'list' ? new Query('list', provider, undefined, statuses) : kind === 'name' ? new Query('name', glob, undefined, []) : new Query('metadata', key, value, []),
    ),
  fc
    .array(
      fc.oneof(
        recordArb(idArb).map((record): BurstOp => ({ op: 'register', record })),
        fc.tuple(idArb, changeArb).map(([id, change]): BurstOp => ({ op: 'update', id, change: change as Change })),
        idArb.map((id): BurstOp => ({ op: 'remove', id })),
      ),
      { minLength: 2, maxLength: 8 },
    )
    .map((ops) => new Burst(ops)),
  fc.constant(new Reload()),
  fc.integer({ min: 2, max: 20 }).map((n) => new SetAsideAgain(n)),
  fc
    .tuple(fc.constantFrom(...TORN_KINDS), fc.integer({ min: 1, max: 3 }), fc.integer({ min: 0, max: 100 }), recordArb(idArb))
    .map(([kind, slot, cut, source]) => new TornWrite(kind, slot, cut, source)),
];

describe('instance registry against a Map model', () => {
  const dirs: string[] = [];
  afterAll(async () => {
    await Promise.all(dirs.map((d) => rm(d, { recursive: true, force: true })));
  });

  it(`agrees with the model after every command and every reload (seed ${SEED}, ${NUM_RUNS} runs)`, async () => {
    process.stderr.write(`registry model: seed ${SEED}, ${NUM_RUNS} runs (MODEL_SEED / MODEL_RUNS to change)\n`);
    await fc.assert(
      fc.asyncProperty(fc.commands(commandArbs, { maxCommands: 40 }), async (cmds) => {
        const stateDir = await mkdtemp(path.join(os.tmpdir(), 'registry-model-'));
        dirs.push(stateDir);
        let state: { model: Model; real: Real } | undefined;
        const setup = async () => {
          const registry = new InstanceRegistry({ stateDir });
          await registry.load();
          state = { model: { records: new Map(), pendingGarbage: [], pendingTemp: [], quarantined: 0 }, real: { stateDir, registry } };
          return state;
        };
        try {
          await fc.asyncModelRun(setup, cmds);
          // Whatever the run left behind, one more restart loads exactly the model.
          await new Reload().run(state!.model, state!.real);
        } finally {
          await rm(stateDir, { recursive: true, force: true });
        }
      }),
      { seed: SEED, numRuns: NUM_RUNS, verbose: 1 },
    );
  }, 120_000);
});
