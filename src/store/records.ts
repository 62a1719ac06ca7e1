/**
 * The in-memory side of every instance store: validating a record before it is written, and the queries
 * the controller runs over the records a store holds (list with filters, find by name or metadata).
 * One definition, so the stores cannot drift apart in what a filter or a glob means.
 * (InstanceRegistry still has its own copies; it can import these when it is next edited.)
 */
import {
  InstanceIdSchema,
  VSCodeInstanceSchema,
  type VSCodeInstance,
} from '../../providers/provider.js';
import { invalidInput } from '../errors.js';
import type { RegistryFilter } from '../registry/instance-registry.js';

/** The record parsed, or INVALID_INPUT naming the first bad field. */
export function validateInstance(instance: unknown): VSCodeInstance {
  const parsed = VSCodeInstanceSchema.safeParse(instance);
  if (!parsed.success) {
    const issue = parsed.error.issues[0]!;
    throw invalidInput(issue.path.join('.') || 'instance', issue.message);
  }
  return parsed.data;
}

export function checkInstanceId(id: string): void {
  if (!InstanceIdSchema.safeParse(id).success) {
    throw invalidInput('instanceId', 'an instance id of 1-63 characters a-z, 0-9 and "-"', id);
  }
}

/** The records passing `filter`, sorted by creation time, then id. */
export function listInstances(records: Iterable<Readonly<VSCodeInstance>>, filter: RegistryFilter = {}): Readonly<VSCodeInstance>[] {
  const statuses = filter.status === undefined ? undefined : new Set([filter.status].flat());
  const out: Readonly<VSCodeInstance>[] = [];
  for (const record of records) {
    if (filter.providerType && record.providerType !== filter.providerType) continue;
    if (statuses && !statuses.has(record.status)) continue;
    out.push(record);
  }
  return out.sort((a, b) => a.createdAt.localeCompare(b.createdAt) || a.id.localeCompare(b.id));
}

/** Names matching a glob (`*`, `?`, case-insensitive) or a regular expression. */
export function matchingName(records: Readonly<VSCodeInstance>[], pattern: string | RegExp): Readonly<VSCodeInstance>[] {
  const regex = typeof pattern === 'string' ? globToRegExp(pattern) : pattern;
  return records.filter((i) => regex.test(i.name));
}

/** Records whose metadata has `key`, and equals `value` when given. */
export function matchingMetadata(records: Readonly<VSCodeInstance>[], key: string, value?: string): Readonly<VSCodeInstance>[] {
  return records.filter((i) => {
    const metadata = i.config.metadata ?? {};
    return Object.hasOwn(metadata, key) && (value === undefined || metadata[key] === value);
  });
}

export function globToRegExp(glob: string): RegExp {
  const escaped = glob.replace(/[.+^${}()|[\]\\]/g, '\\$&').replace(/\*/g, '.*').replace(/\?/g, '.');
  return new RegExp(`^${escaped}$`, 'i');
}

/** Records handed out are frozen: a change goes through the store's update(). */
export function deepFreeze<T>(value: T): T {
  if (value && typeof value === 'object' && !Object.isFrozen(value)) {
    Object.freeze(value);
    for (const child of Object.values(value)) deepFreeze(child);
  }
  return value;
}
