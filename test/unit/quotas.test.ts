/**
 * Quotas (src/tenancy/quotas.ts): what an owner holds (`usageOf`), which limits are in force for it
 * (`limitsFor`), and the admission check the controller makes right before a change counts
 * (`checkAdmission`): each limit, per provider, a provider's own cap, and the two changes that replace an
 * instance's share rather than add one (a start of a stopped workspace, a resize). Then a property: for
 * random sequences of creates, warm claims, starts, stops, resizes, failures and deletes applied to an
 * in-memory list only when admitted, no owner's usage ever passes any limit, and every refusal names a
 * limit the change would really have passed.
 */
import { fc, test } from '@fast-check/vitest';
import { afterAll, describe, expect, it } from 'vitest';
import { PROVIDER_TYPES, type InstanceStatus, type ProviderType, type VSCodeInstance } from '../../providers/provider.js';
import { SwarmError } from '../../src/errors.js';
import { LOCAL_ADMIN_ID, ROLES, type Role } from '../../src/tenancy/identity.js';
import {
  QuotaConfigSchema,
  checkAdmission,
  limitsFor,
  usageOf,
  type AdmissionRequest,
  type LimitSet,
  type QuotaConfig,
  type QuotaLimits,
} from '../../src/tenancy/quotas.js';

const AT = '2026-03-01T12:00:00.000Z';

interface Spec {
  owner?: string;
  providerType?: ProviderType;
  status?: InstanceStatus;
  cpu?: number;
  memoryMb?: number;
  warmPool?: string;
}

let serial = 0;
function instance(spec: Spec = {}): VSCodeInstance {
  const id = `i${(serial++).toString(36)}`;
  const cpu = spec.cpu ?? 1;
  const memoryMb = spec.memoryMb ?? 1024;
  return {
    id,
    name: id,
    providerType: spec.providerType ?? 'docker',
    status: spec.status ?? 'running',
    health: 'unknown',
    config: { name: id, image: 'vscode-swarm/code-server:4.99.3', resources: { cpu, memoryMb } },
    providerRef: {},
    createdAt: AT,
    updatedAt: AT,
    ...(spec.owner !== undefined ? { owner: spec.owner } : {}),
    ...(spec.warmPool !== undefined ? { warmPool: spec.warmPool } : {}),
  };
}

function refusal(work: () => void): SwarmError {
  try {
    work();
  } catch (err) {
    expect(err).toBeInstanceOf(SwarmError);
    return err as SwarmError;
  }
  throw new Error('expected QUOTA_EXCEEDED, but the change was admitted');
}

function create(owner: string, resources = { cpu: 1, memoryMb: 1024 }, providerType: ProviderType = 'docker'): AdmissionRequest {
  return { owner, providerType, instanceId: `new-${serial++}`, newInstance: true, resources };
}

describe('usageOf', () => {
  it('counts what an owner holds: stopped ones as instances only, warm members and deletions not at all', () => {
    const list = [
      instance({ owner: 'alice', status: 'running', cpu: 2, memoryMb: 4096 }),
      instance({ owner: 'alice', status: 'creating', cpu: 0.5, memoryMb: 512, providerType: 'fly' }),
      instance({ owner: 'alice', status: 'starting', cpu: 1, memoryMb: 1024, providerType: 'fly' }),
      instance({ owner: 'alice', status: 'migrating', cpu: 1, memoryMb: 2048, providerType: 'aws-asg' }),
      instance({ owner: 'alice', status: 'stopped', cpu: 8, memoryMb: 16_384 }),
      instance({ owner: 'alice', status: 'stopping', cpu: 8, memoryMb: 16_384 }),
      instance({ owner: 'alice', status: 'failed', cpu: 8, memoryMb: 16_384, providerType: 'fly' }),
      instance({ owner: 'alice', status: 'deleting', cpu: 8, memoryMb: 16_384 }),
      instance({ owner: 'alice', status: 'running', cpu: 8, memoryMb: 16_384, warmPool: 'docker:default' }),
      instance({ status: 'running', cpu: 8, memoryMb: 16_384, warmPool: 'docker:default' }),
      instance({ owner: 'bob', status: 'running', cpu: 4, memoryMb: 8192 }),
    ];
    expect(usageOf('alice', list)).toEqual({
      instances: 7,
      cpu: 4.5,
      memoryMb: 7680,
      byProvider: {
        docker: { instances: 3, cpu: 2, memoryMb: 4096 },
        fly: { instances: 3, cpu: 1.5, memoryMb: 1536 },
        'aws-asg': { instances: 1, cpu: 1, memoryMb: 2048 },
      },
    });
    expect(usageOf('bob', list)).toEqual({ instances: 1, cpu: 4, memoryMb: 8192, byProvider: { docker: { instances: 1, cpu: 4, memoryMb: 8192 } } });
    expect(usageOf('carol', list)).toEqual({ instances: 0, cpu: 0, memoryMb: 0, byProvider: {} });
  });

  it('counts records without an owner as the local admin’s, and leaves out the instance asked to', () => {
    const mine = instance({ status: 'running', cpu: 2, memoryMb: 2048 });
    const other = instance({ owner: LOCAL_ADMIN_ID, status: 'running', cpu: 1, memoryMb: 1024 });
    expect(usageOf(LOCAL_ADMIN_ID, [mine, other])).toMatchObject({ instances: 2, cpu: 3, memoryMb: 3072 });
    expect(usageOf(LOCAL_ADMIN_ID, [mine, other], mine.id)).toMatchObject({ instances: 1, cpu: 1, memoryMb: 1024 });
  });
});

describe('limitsFor', () => {
  const config = QuotaConfigSchema.parse({
    member: { instances: 10, cpu: 16, memoryMb: 32_768, perProvider: { docker: { instances: 5, cpu: 8 }, fly: { memoryMb: 4096 } } },
  });

  it('gives the role defaults when the principal has no limits of its own', () => {
    expect(limitsFor('member', undefined, config)).toEqual(config.member);
    expect(limitsFor('admin', undefined, config)).toEqual({});
    expect(limitsFor('viewer', undefined, config)).toEqual({ instances: 0, cpu: 0, memoryMb: 0 });
    // The schema's own defaults.
    expect(QuotaConfigSchema.parse({}).member).toEqual({ instances: 10, cpu: 16, memoryMb: 32_768 });
  });

  it('lets own limits override the role defaults field by field, merging perProvider per provider and per field', () => {
    const own: QuotaLimits = { cpu: 4, perProvider: { docker: { cpu: 2 }, 'aws-asg': { instances: 1 } } };
    expect(limitsFor('member', own, config)).toEqual({
      instances: 10,
      cpu: 4,
      memoryMb: 32_768,
      perProvider: { docker: { instances: 5, cpu: 2 }, fly: { memoryMb: 4096 }, 'aws-asg': { instances: 1 } },
    });
    // An admin has no defaults: only its own limits apply.
    expect(limitsFor('admin', own, config)).toEqual({ cpu: 4, perProvider: { docker: { cpu: 2 }, 'aws-asg': { instances: 1 } } });
    // The defaults object is not changed by the merge.
    expect(config.member.perProvider?.docker).toEqual({ instances: 5, cpu: 8 });
  });
});

describe('checkAdmission', () => {
  it('admits up to each limit exactly and refuses one past it, naming the limit, the usage and the request', () => {
    const held = [instance({ owner: 'alice', cpu: 2, memoryMb: 2048 }), instance({ owner: 'alice', cpu: 1, memoryMb: 1024 })];
    const cases: { limits: QuotaLimits; fits: AdmissionRequest; over: AdmissionRequest; quota: keyof LimitSet; message: string }[] = [
      { limits: { instances: 3 }, fits: create('alice'), over: create('alice'), quota: 'instances', message: 'instances: alice may hold 3, holds 3 and asked for 1 more' },
      {
        limits: { cpu: 4 },
        fits: create('alice', { cpu: 1, memoryMb: 1 }),
        over: create('alice', { cpu: 1.5, memoryMb: 1 }),
        quota: 'cpu',
        message: 'cpu: alice may hold 4 cores, holds 3 cores and asked for 1.5 cores more',
      },
      {
        limits: { memoryMb: 4096 },
        fits: create('alice', { cpu: 1, memoryMb: 1024 }),
        over: create('alice', { cpu: 1, memoryMb: 1025 }),
        quota: 'memoryMb',
        message: 'memoryMb: alice may hold 4096 MiB, holds 3072 MiB and asked for 1025 MiB more',
      },
    ];
    for (const c of cases) {
      expect(() => checkAdmission(c.fits, c.limits, held), c.quota).not.toThrow();
      // For the instance limit, one more held (stopped: it counts as an instance only).
      const more = c.quota === 'instances' ? [...held, instance({ owner: 'alice', status: 'stopped' })] : held;
      const err = refusal(() => checkAdmission(c.over, c.limits, more));
      expect(err.code).toBe('QUOTA_EXCEEDED');
      expect(err.message).toBe(c.message);
      const usage = c.quota === 'instances' ? 3 : c.quota === 'cpu' ? 3 : 3072;
      const requested = c.quota === 'instances' ? 1 : c.over.resources![c.quota];
      expect(err.details).toEqual({ quota: c.quota, limit: c.limits[c.quota], usage, requested, owner: 'alice' });
    }
  });

  it('counts only the owner’s own holdings', () => {
    const others = [instance({ owner: 'bob', cpu: 16 }), instance({ cpu: 16 }), instance({ owner: 'alice', cpu: 16, warmPool: 'k' })];
    expect(() => checkAdmission(create('alice', { cpu: 4, memoryMb: 1024 }), { instances: 1, cpu: 4 }, others)).not.toThrow();
  });

  it('checks the limits per provider against the usage on that provider only', () => {
    const held = [instance({ owner: 'alice', providerType: 'docker', cpu: 2 }), instance({ owner: 'alice', providerType: 'fly', cpu: 3 })];
    const limits: QuotaLimits = { cpu: 100, perProvider: { fly: { cpu: 4, instances: 1 } } };
    expect(() => checkAdmission(create('alice', { cpu: 50, memoryMb: 1 }, 'docker'), limits, held)).not.toThrow();
    expect(() => checkAdmission({ ...create('alice', { cpu: 1, memoryMb: 1 }, 'fly'), newInstance: false }, limits, held)).not.toThrow();
    const cpu = refusal(() => checkAdmission({ ...create('alice', { cpu: 1.5, memoryMb: 1 }, 'fly'), newInstance: false }, limits, held));
    expect(cpu.details).toMatchObject({ quota: 'fly.cpu', limit: 4, usage: 3, requested: 1.5 });
    expect(cpu.message).toBe('fly.cpu: alice may hold 4 cores, holds 3 cores and asked for 1.5 cores more');
    const count = refusal(() => checkAdmission(create('alice', { cpu: 0.5, memoryMb: 1 }, 'fly'), limits, held));
    expect(count.details).toMatchObject({ quota: 'fly.instances', limit: 1, usage: 1, requested: 1 });
  });

  it("applies a provider's own cap on instances per user (providerMaxInstances)", () => {
    const held = [instance({ owner: 'alice', providerType: 'aws-asg' }), instance({ owner: 'alice', providerType: 'aws-asg', status: 'stopped' }), instance({ owner: 'alice' })];
    expect(() => checkAdmission({ ...create('alice', undefined, 'aws-asg'), providerMaxInstances: 3 }, {}, held)).not.toThrow();
    const err = refusal(() => checkAdmission({ ...create('alice', undefined, 'aws-asg'), providerMaxInstances: 2 }, {}, held));
    expect(err.details).toMatchObject({ quota: 'aws-asg.maxInstancesPerUser.instances', limit: 2, usage: 2, requested: 1 });
    expect(err.message).toContain('aws-asg.maxInstancesPerUser.instances: alice may hold 2');
    // Starting one it already holds adds no instance, so the cap does not stand in the way.
    const stopped = held[1]!;
    expect(() =>
      checkAdmission({ owner: 'alice', providerType: 'aws-asg', instanceId: stopped.id, newInstance: false, resources: stopped.config.resources, providerMaxInstances: 2 }, {}, held),
    ).not.toThrow();
  });

  it('counts a start of a stopped workspace as CPU and memory, but not as another instance', () => {
    const stopped = instance({ owner: 'alice', status: 'stopped', cpu: 2, memoryMb: 2048 });
    const running = instance({ owner: 'alice', status: 'running', cpu: 2, memoryMb: 2048 });
    const start: AdmissionRequest = { owner: 'alice', providerType: 'docker', instanceId: stopped.id, newInstance: false, resources: stopped.config.resources };
    // At the instance limit already: a start is still fine.
    expect(() => checkAdmission(start, { instances: 2, cpu: 4, memoryMb: 4096 }, [stopped, running])).not.toThrow();
    const cpu = refusal(() => checkAdmission(start, { instances: 2, cpu: 3 }, [stopped, running]));
    expect(cpu.details).toMatchObject({ quota: 'cpu', limit: 3, usage: 2, requested: 2 });
    const memory = refusal(() => checkAdmission(start, { memoryMb: 4095 }, [stopped, running]));
    expect(memory.details).toMatchObject({ quota: 'memoryMb', limit: 4095, usage: 2048, requested: 2048 });
  });

  it("counts a resize as the new size in place of the instance's old share", () => {
    const big = instance({ owner: 'alice', status: 'running', cpu: 3, memoryMb: 3072 });
    const resize = (cpu: number, memoryMb: number): AdmissionRequest => ({ owner: 'alice', providerType: 'docker', instanceId: big.id, newInstance: false, resources: { cpu, memoryMb } });
    const limits: QuotaLimits = { instances: 1, cpu: 4, memoryMb: 4096 };
    expect(() => checkAdmission(resize(4, 4096), limits, [big])).not.toThrow();
    expect(refusal(() => checkAdmission(resize(4.5, 1024), limits, [big])).details).toMatchObject({ quota: 'cpu', usage: 0, requested: 4.5 });
    const small = instance({ owner: 'alice', status: 'running', cpu: 1, memoryMb: 1024 });
    expect(() => checkAdmission(resize(3, 3072), { cpu: 4, memoryMb: 4096 }, [big, small])).not.toThrow();
    const err = refusal(() => checkAdmission(resize(3.5, 3072), { cpu: 4, memoryMb: 4096 }, [big, small]));
    expect(err.details).toMatchObject({ quota: 'cpu', limit: 4, usage: 1, requested: 3.5 });
    expect(err.message).toBe('cpu: alice may hold 4 cores, holds 1 cores and asked for 3.5 cores more');
  });

  it('refuses a viewer anything that would count, and admits an admin without limits', () => {
    const config = QuotaConfigSchema.parse({});
    const viewer = refusal(() => checkAdmission(create('val'), limitsFor('viewer', undefined, config), []));
    expect(viewer.details).toMatchObject({ quota: 'instances', limit: 0, usage: 0, requested: 1 });
    const many = Array.from({ length: 500 }, () => instance({ owner: 'root', cpu: 64, memoryMb: 100_000 }));
    expect(() => checkAdmission(create('root', { cpu: 64, memoryMb: 100_000 }), limitsFor('admin', undefined, config), many)).not.toThrow();
  });
});

// ---- the property ----

const OWNERS = ['alice', 'bob', LOCAL_ADMIN_ID] as const;
type Owner = (typeof OWNERS)[number];
const CPUS = [0.5, 1, 1.5, 2, 4] as const;
const MEMORY = [512, 1024, 2048, 4096] as const;

const limitSetArb: fc.Arbitrary<LimitSet> = fc.record(
  { instances: fc.integer({ min: 0, max: 6 }), cpu: fc.constantFrom(0, 1, 2.5, 4, 8), memoryMb: fc.constantFrom(0, 1024, 3072, 8192) },
  { requiredKeys: [] },
);
const quotaLimitsArb: fc.Arbitrary<QuotaLimits> = fc
  .tuple(limitSetArb, fc.dictionary(fc.constantFrom(...PROVIDER_TYPES), limitSetArb, { maxKeys: 3 }))
  .map(([set, perProvider]) => (Object.keys(perProvider).length ? { ...set, perProvider } : set));
const quotaConfigArb: fc.Arbitrary<QuotaConfig> = fc.record({ admin: quotaLimitsArb, member: quotaLimitsArb, viewer: quotaLimitsArb });

const resourcesArb = fc.record({ cpu: fc.constantFrom(...CPUS), memoryMb: fc.constantFrom(...MEMORY) });
const pick = fc.nat({ max: 1000 });
type Op =
  | { kind: 'create'; owner: Owner; provider: ProviderType; resources: { cpu: number; memoryMb: number } }
  | { kind: 'warm'; provider: ProviderType; resources: { cpu: number; memoryMb: number } }
  | { kind: 'claim'; pick: number; owner: Owner }
  | { kind: 'start' | 'stop' | 'fail' | 'delete' | 'forget'; pick: number }
  | { kind: 'resize'; pick: number; resources: { cpu: number; memoryMb: number } };
const opArb: fc.Arbitrary<Op> = fc.oneof(
  { arbitrary: fc.record({ kind: fc.constant('create' as const), owner: fc.constantFrom(...OWNERS), provider: fc.constantFrom(...PROVIDER_TYPES), resources: resourcesArb }), weight: 4 },
  { arbitrary: fc.record({ kind: fc.constant('warm' as const), provider: fc.constantFrom(...PROVIDER_TYPES), resources: resourcesArb }), weight: 1 },
  { arbitrary: fc.record({ kind: fc.constant('claim' as const), pick, owner: fc.constantFrom(...OWNERS) }), weight: 2 },
  { arbitrary: fc.record({ kind: fc.constantFrom('start' as const, 'stop' as const, 'fail' as const, 'delete' as const, 'forget' as const), pick }), weight: 5 },
  { arbitrary: fc.record({ kind: fc.constant('resize' as const), pick, resources: resourcesArb }), weight: 2 },
);

interface World {
  limits: Record<Owner, QuotaLimits>;
  providerMax: Partial<Record<ProviderType, number>>;
}

/** Each limit in force the owner's usage is over, by the name checkAdmission gives it. */
function limitsPassed(world: World, owner: Owner, list: readonly VSCodeInstance[]): string[] {
  const usage = usageOf(owner, list);
  const passed: string[] = [];
  const over = (where: string, limit: LimitSet | undefined, used: { instances: number; cpu: number; memoryMb: number }): void => {
    for (const key of ['instances', 'cpu', 'memoryMb'] as const) if (limit?.[key] !== undefined && used[key] > limit[key]) passed.push(`${where}${key}`);
  };
  over('', world.limits[owner], usage);
  for (const type of PROVIDER_TYPES) {
    const used = usage.byProvider[type] ?? { instances: 0, cpu: 0, memoryMb: 0 };
    over(`${type}.`, world.limits[owner].perProvider?.[type], used);
    const max = world.providerMax[type];
    if (max !== undefined) over(`${type}.maxInstancesPerUser.`, { instances: max }, used);
  }
  return passed;
}

const ACTIVE = new Set<InstanceStatus>(['creating', 'starting', 'running', 'migrating']);

/** The admission an op needs (if any) and the list after it, as the controller would make them. */
function plan(op: Op, list: VSCodeInstance[]): { request?: AdmissionRequest; owner?: Owner; next: VSCodeInstance[] } | undefined {
  const at = (predicate: (i: VSCodeInstance) => boolean): VSCodeInstance | undefined => {
    const candidates = list.filter(predicate);
    return 'pick' in op && candidates.length ? candidates[op.pick % candidates.length] : undefined;
  };
  const replace = (target: VSCodeInstance, change: Partial<VSCodeInstance>): VSCodeInstance[] => list.map((i) => (i === target ? { ...i, ...change } : i));
  const ownerOf = (i: VSCodeInstance): Owner => (i.owner ?? LOCAL_ADMIN_ID) as Owner;
  switch (op.kind) {
    case 'create': {
      const made = { ...instance({ owner: op.owner, providerType: op.provider, status: 'creating', ...op.resources }) };
      return { owner: op.owner, request: { owner: op.owner, providerType: op.provider, instanceId: made.id, newInstance: true, resources: op.resources }, next: [...list, { ...made, status: 'running' }] };
    }
    case 'warm':
      return { next: [...list, instance({ providerType: op.provider, warmPool: `${op.provider}:default`, ...op.resources })] };
    case 'claim': {
      const member = at((i) => i.warmPool !== undefined && ACTIVE.has(i.status)); // only ready members are claimed
      if (!member) return undefined;
      const { warmPool: _warm, ...claimed } = member;
      return {
        owner: op.owner,
        request: { owner: op.owner, providerType: member.providerType, instanceId: member.id, newInstance: true, resources: member.config.resources },
        next: list.map((i) => (i === member ? { ...claimed, owner: op.owner } : i)),
      };
    }
    case 'start': {
      const target = at((i) => !i.warmPool && !ACTIVE.has(i.status) && i.status !== 'deleting');
      if (!target) return undefined;
      const owner = ownerOf(target);
      return { owner, request: { owner, providerType: target.providerType, instanceId: target.id, newInstance: false, resources: target.config.resources }, next: replace(target, { status: 'starting' }) };
    }
    case 'resize': {
      const target = at((i) => !i.warmPool && i.status !== 'deleting');
      if (!target) return undefined;
      const next = replace(target, { config: { ...target.config, resources: op.resources } });
      // A stopped workspace is checked when it starts, not when it is resized.
      if (!ACTIVE.has(target.status)) return { next };
      const owner = ownerOf(target);
      return { owner, request: { owner, providerType: target.providerType, instanceId: target.id, newInstance: false, resources: op.resources }, next };
    }
    case 'stop':
    case 'fail': {
      const target = at((i) => ACTIVE.has(i.status));
      return target ? { next: replace(target, { status: op.kind === 'stop' ? 'stopped' : 'failed' }) } : undefined;
    }
    case 'delete': {
      const target = at((i) => i.status !== 'deleting');
      return target ? { next: replace(target, { status: 'deleting' }) } : undefined;
    }
    case 'forget': {
      const target = at((i) => i.status === 'deleting');
      return target ? { next: list.filter((i) => i !== target) } : undefined;
    }
  }
}

describe('quota admissions (property)', () => {
  const seen = { admitted: 0, refused: 0 };
  // The generators must reach both sides of the check, or the property says nothing.
  afterAll(() => {
    expect(seen.admitted).toBeGreaterThan(100);
    expect(seen.refused).toBeGreaterThan(100);
  });

  const worldArb = fc.record({
    config: quotaConfigArb,
    own: fc.record({ alice: fc.option(quotaLimitsArb, { nil: undefined }), bob: fc.option(quotaLimitsArb, { nil: undefined }) }),
    roles: fc.record({ alice: fc.constantFrom<Role>(...ROLES), bob: fc.constantFrom<Role>(...ROLES) }),
    providerMax: fc.dictionary(fc.constantFrom(...PROVIDER_TYPES), fc.integer({ min: 0, max: 4 }), { maxKeys: 3 }),
  });

  test.prop([worldArb, fc.array(opArb, { maxLength: 80 })], { numRuns: 400 })(
    'never lets an owner past a limit, and refuses only what would pass one',
    ({ config, own, roles, providerMax }, ops) => {
      const world: World = {
        limits: {
          alice: limitsFor(roles.alice, own.alice, config),
          bob: limitsFor(roles.bob, own.bob, config),
          [LOCAL_ADMIN_ID]: limitsFor('admin', undefined, config),
        } as Record<Owner, QuotaLimits>,
        providerMax,
      };
      let list: VSCodeInstance[] = [];
      for (const op of ops) {
        const step = plan(op, list);
        if (!step) continue;
        if (step.request) {
          const max = world.providerMax[step.request.providerType];
          const request = max === undefined ? step.request : { ...step.request, providerMaxInstances: max };
          try {
            checkAdmission(request, world.limits[step.owner!], list);
          } catch (err) {
            // A refusal is QUOTA_EXCEEDED and names a limit the change would really have passed.
            expect(err).toBeInstanceOf(SwarmError);
            expect((err as SwarmError).code).toBe('QUOTA_EXCEEDED');
            const quota = (err as SwarmError).details?.quota;
            expect(limitsPassed(world, step.owner!, step.next)).toContain(quota);
            seen.refused++;
            continue;
          }
          seen.admitted++;
        }
        list = step.next;
        for (const owner of OWNERS) expect(limitsPassed(world, owner, list), `${owner} after ${JSON.stringify(op)}`).toEqual([]);
      }
    },
  );
});
