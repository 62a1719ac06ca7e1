/**
 * Quotas per principal: how many workspaces it may hold, and how much CPU and memory its running ones
 * may use in total, overall and per provider. Defaults come per role; a principal may have its own.
 *
 * Checked by the controller at the moment a record starts to count (registered, claimed from the warm
 * buffer, marked starting, resized), in the same synchronous step as the in-memory write that makes it
 * count: Node runs one such step at a time, so twenty concurrent creates cannot all see room for one more.
 */
import { z } from 'zod';
import { PROVIDER_TYPES, type ProviderType, type VSCodeInstance } from '../../providers/provider.js';
import { SwarmError } from '../errors.js';
import { LOCAL_ADMIN_ID, type Role } from './identity.js';

const LimitSetSchema = z
  .object({
    instances: z.number().int().min(0).max(100_000).optional().describe('Workspaces held, whatever their status'),
    cpu: z.number().min(0).max(100_000).optional().describe('Cores of running workspaces, in total'),
    memoryMb: z.number().int().min(0).max(100_000_000).optional().describe('MiB of running workspaces, in total'),
  })
  .strict();
export type LimitSet = z.infer<typeof LimitSetSchema>;

export const QuotaLimitsSchema = LimitSetSchema.extend({
  perProvider: z.partialRecord(z.enum(PROVIDER_TYPES), LimitSetSchema).optional(),
}).strict();
export type QuotaLimits = z.infer<typeof QuotaLimitsSchema>;

/** Role defaults: an admin is unlimited unless configured; a member gets a team-sized share; a viewer holds nothing. */
export const QuotaConfigSchema = z
  .object({
    admin: QuotaLimitsSchema.default({}),
    member: QuotaLimitsSchema.default({ instances: 10, cpu: 16, memoryMb: 32_768 }),
    viewer: QuotaLimitsSchema.default({ instances: 0, cpu: 0, memoryMb: 0 }),
  })
  .strict();
export type QuotaConfig = z.infer<typeof QuotaConfigSchema>;

export interface UsageFigures {
  instances: number;
  cpu: number;
  memoryMb: number;
}
export interface Usage extends UsageFigures {
  byProvider: Partial<Record<ProviderType, UsageFigures>>;
}

/** A change the controller is about to make count against an owner. */
export interface AdmissionRequest {
  owner: string;
  providerType: ProviderType;
  /** The instance that changes; it is left out of the current usage (a start or a resize replaces its own share). */
  instanceId: string;
  /** A workspace the owner did not hold before (a create or a warm claim). */
  newInstance: boolean;
  /** What it will use while running; absent when it will not run. */
  resources?: { cpu: number; memoryMb: number };
  /** The provider's own cap on instances per user, when it has one. */
  providerMaxInstances?: number;
}

/** Statuses whose CPU and memory count: the workspace runs or is on its way to running. */
export const ACTIVE_STATUSES: ReadonlySet<VSCodeInstance['status']> = new Set(['creating', 'starting', 'running', 'migrating']);

export function ownerOf(instance: Pick<VSCodeInstance, 'owner'>): string {
  return instance.owner ?? LOCAL_ADMIN_ID;
}

/** What an owner holds now, leaving out one instance if asked. Warm members belong to nobody. */
export function usageOf(owner: string, instances: Iterable<Readonly<VSCodeInstance>>, except?: string): Usage {
  const usage: Usage = { instances: 0, cpu: 0, memoryMb: 0, byProvider: {} };
  for (const i of instances) {
    if (i.warmPool || i.id === except || i.status === 'deleting' || ownerOf(i) !== owner) continue;
    const p = (usage.byProvider[i.providerType] ??= { instances: 0, cpu: 0, memoryMb: 0 });
    usage.instances++;
    p.instances++;
    if (ACTIVE_STATUSES.has(i.status)) {
      usage.cpu += i.config.resources.cpu;
      usage.memoryMb += i.config.resources.memoryMb;
      p.cpu += i.config.resources.cpu;
      p.memoryMb += i.config.resources.memoryMb;
    }
  }
  return usage;
}

/** The limits in force for a principal of this role with these own limits (own ones win, field by field). */
export function limitsFor(role: Role, own: QuotaLimits | undefined, config: QuotaConfig): QuotaLimits {
  const base = config[role];
  const perProvider: NonNullable<QuotaLimits['perProvider']> = {};
  for (const type of PROVIDER_TYPES) {
    const merged = { ...base.perProvider?.[type], ...own?.perProvider?.[type] };
    if (Object.keys(merged).length) perProvider[type] = merged;
  }
  return { ...base, ...own, ...(Object.keys(perProvider).length ? { perProvider } : {}) };
}

/**
 * Throws QUOTA_EXCEEDED naming the limit, the usage and the request when the change would go past a
 * limit; otherwise returns. Synchronous on purpose (see the file comment).
 */
export function checkAdmission(request: AdmissionRequest, limits: QuotaLimits, instances: Iterable<Readonly<VSCodeInstance>>): void {
  const usage = usageOf(request.owner, instances, request.instanceId);
  const adds = { instances: request.newInstance ? 1 : 0, cpu: request.resources?.cpu ?? 0, memoryMb: request.resources?.memoryMb ?? 0 };
  const check = (where: string, limit: LimitSet | undefined, used: UsageFigures): void => {
    for (const key of ['instances', 'cpu', 'memoryMb'] as const) {
      const max = limit?.[key];
      if (max === undefined || adds[key] === 0) continue;
      if (used[key] + adds[key] > max) {
        const unit = key === 'cpu' ? ' cores' : key === 'memoryMb' ? ' MiB' : '';
        throw new SwarmError(
          'QUOTA_EXCEEDED',
          `${where}${key}: ${request.owner} may hold ${max}${unit}, holds ${round(used[key])}${unit} and asked for ${round(adds[key])}${unit} more`,
          { details: { quota: `${where}${key}`, limit: max, usage: round(used[key]), requested: round(adds[key]), owner: request.owner } },
        );
      }
    }
  };
  check('', limits, usage);
  const onProvider = usage.byProvider[request.providerType] ?? { instances: 0, cpu: 0, memoryMb: 0 };
  check(`${request.providerType}.`, limits.perProvider?.[request.providerType], onProvider);
  if (request.providerMaxInstances !== undefined) check(`${request.providerType}.maxInstancesPerUser.`, { instances: request.providerMaxInstances }, onProvider);
}

function round(n: number): number {
  return Math.round(n * 1000) / 1000;
}
