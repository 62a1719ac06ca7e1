/**
 * The instance registry: the controller's record of every instance, one JSON file per instance at
 * `<stateDir>/instances/<id>.json`, written atomically and kept in memory for queries.
 *
 * Records handed out are frozen: the registry is the only writer, and a change goes through update().
 */
import { randomBytes } from 'node:crypto';
import { promises as fs } from 'node:fs';
import path from 'node:path';
import {
  InstanceIdSchema,
  VSCodeInstanceSchema,
  type InstanceStatus,
  type ProviderType,
  type VSCodeInstance,
} from '../../providers/provider.js';
import { SwarmError, invalidInput } from '../errors.js';
import { silentLogger, type Logger } from '../logger.js';
import { isTempFile, writeJsonAtomic } from '../state/atomic-file.js';
import type { WriteOptions } from '../store/instance-store.js';
import { deepFreeze, listInstances, matchingMetadata, matchingName } from '../store/records.js';

export interface RegistryOptions {
  stateDir: string;
  logger?: Logger;
  /** Files read at once while loading. */
  loadConcurrency?: number;
}

export interface RegistryFilter {
  providerType?: ProviderType;
  status?: InstanceStatus | InstanceStatus[];
}

export interface LoadReport {
  loaded: number;
  /** Files that could not be used, moved to `<stateDir>/quarantine/` with the reason. */
  setAside: { file: string; reason: string }[];
  /** Temp files of interrupted writes, removed. */
  removedTemp: number;
}

export type InstanceUpdate = Partial<Omit<VSCodeInstance, 'id'>> | ((current: VSCodeInstance) => VSCodeInstance);

export class InstanceRegistry {
  private readonly instances = new Map<string, Readonly<VSCodeInstance>>();
  private readonly writeChains = new Map<string, Promise<unknown>>();
  private readonly logger: Logger;
  private readonly loadConcurrency: number;
  readonly instancesDir: string;
  readonly quarantineDir: string;

  constructor(options: RegistryOptions) {
    this.logger = (options.logger ?? silentLogger()).child({ component: 'registry' });
    this.loadConcurrency = options.loadConcurrency ?? 64;
    this.instancesDir = path.join(options.stateDir, 'instances');
    this.quarantineDir = path.join(options.stateDir, 'quarantine');
  }

  /** Reads every instance file; a file that cannot be used is set aside with a log line, never fatal. */
  async load(): Promise<LoadReport> {
    await this.ensureDir(this.instancesDir);
    const names = await fs.readdir(this.instancesDir);
    const report: LoadReport = { loaded: 0, setAside: [], removedTemp: 0 };
    this.instances.clear();

    let next = 0;
    const worker = async (): Promise<void> => {
      while (next < names.length) {
        const name = names[next++]!;
        await this.loadOne(name, report);
      }
    };
    await Promise.all(Array.from({ length: Math.min(this.loadConcurrency, names.length) }, worker));
    this.logger.info({ loaded: report.loaded, setAside: report.setAside.length }, 'registry loaded');
    return report;
  }

  private async loadOne(name: string, report: LoadReport): Promise<void> {
    const file = path.join(this.instancesDir, name);
    if (isTempFile(name)) {
      await fs.rm(file, { force: true });
      report.removedTemp++;
      return;
    }
    if (!name.endsWith('.json')) return;
    const id = name.slice(0, -'.json'.length);
    let reason: string;
    if (!InstanceIdSchema.safeParse(id).success) {
      reason = 'file name is not a valid instance id';
    } else {
      try {
        const parsed = VSCodeInstanceSchema.safeParse(JSON.parse(await fs.readFile(file, 'utf8')));
        if (parsed.success && parsed.data.id === id) {
          this.instances.set(id, deepFreeze(parsed.data));
          report.loaded++;
          return;
        }
        reason = parsed.success
          ? `id inside (${parsed.data.id}) does not match the file name`
          : `not a valid instance record: ${parsed.error.issues.map((i) => `${i.path.join('.') || '(root)'}: ${i.message}`).join('; ')}`;
      } catch (err) {
        reason = `unreadable: ${(err as Error).message}`;
      }
    }
    const moved = await this.setAside(file, name);
    report.setAside.push({ file: moved, reason });
    this.logger.warn({ file: name, movedTo: moved, reason }, 'instance file set aside');
  }

  private async setAside(file: string, name: string): Promise<string> {
    await this.ensureDir(this.quarantineDir);
    // The random part keeps two files of the same name set aside within one millisecond apart: rename would replace the first.
    const target = path.join(this.quarantineDir, `${name}.${Date.now()}.${randomBytes(3).toString('hex')}`);
    await fs.rename(file, target);
    return target;
  }

  /** Adds a new instance; an id already present is a conflict. */
  async register(instance: VSCodeInstance, options?: WriteOptions): Promise<Readonly<VSCodeInstance>> {
    const record = this.validate(instance);
    if (this.instances.has(record.id)) {
      throw new SwarmError('CONFLICT', `instance ${record.id} is already registered`, { field: 'id' });
    }
    // In the same synchronous step as the write in commit(): no other admission can slip in between.
    options?.admit?.check(this.list());
    return this.commit(record.id, record, undefined);
  }

  /** Changes an instance; `updatedAt` is set here. */
  async update(id: string, change: InstanceUpdate, options?: WriteOptions): Promise<Readonly<VSCodeInstance>> {
    const current = this.require(id);
    const merged = typeof change === 'function' ? change(structuredClone(current)) : { ...current, ...change, id };
    const record = this.validate({ ...merged, id, updatedAt: new Date().toISOString() });
    options?.admit?.check(this.list());
    return this.commit(id, record, current);
  }

  /** Forgets an instance and deletes its file; false when it was not registered. */
  async remove(id: string): Promise<boolean> {
    this.checkId(id);
    const current = this.instances.get(id);
    if (!current) return false;
    this.instances.delete(id);
    try {
      await this.chain(id, () => fs.rm(this.fileOf(id), { force: true }));
    } catch (err) {
      this.instances.set(id, current);
      throw new SwarmError('STATE_ERROR', `could not delete the state file of ${id}: ${(err as Error).message}`, { cause: err });
    }
    return true;
  }

  get(id: string): Readonly<VSCodeInstance> | undefined {
    this.checkId(id);
    return this.instances.get(id);
  }

  /** The instance, or NOT_FOUND naming it. */
  require(id: string): Readonly<VSCodeInstance> {
    const found = this.get(id);
    if (!found) throw new SwarmError('NOT_FOUND', `instance ${id} does not exist`, { field: 'instanceId' });
    return found;
  }

  list(filter: RegistryFilter = {}): Readonly<VSCodeInstance>[] {
    return listInstances(this.instances.values(), filter);
  }

  get size(): number {
    return this.instances.size;
  }

  countByProvider(): Partial<Record<ProviderType, number>> {
    const counts: Partial<Record<ProviderType, number>> = {};
    for (const { providerType } of this.instances.values()) counts[providerType] = (counts[providerType] ?? 0) + 1;
    return counts;
  }

  /** Names matching a glob (`*`, `?`) or a regular expression. */
  findByName(pattern: string | RegExp): Readonly<VSCodeInstance>[] {
    return matchingName(this.list(), pattern);
  }

  /** Instances whose metadata has `key`, and equals `value` when given. */
  findByMetadata(key: string, value?: string): Readonly<VSCodeInstance>[] {
    return matchingMetadata(this.list(), key, value);
  }

  /** Resolves when every write started so far has reached the disk. */
  async flush(): Promise<void> {
    await Promise.allSettled([...this.writeChains.values()]);
  }

  fileOf(id: string): string {
    this.checkId(id);
    return path.join(this.instancesDir, `${id}.json`);
  }

  private async commit(id: string, record: VSCodeInstance, previous: Readonly<VSCodeInstance> | undefined): Promise<Readonly<VSCodeInstance>> {
    const frozen = deepFreeze(record);
    this.instances.set(id, frozen);
    try {
      // Each write persists whatever the record is when its turn comes, so the file converges on the
      // latest state even when updates overlap.
      await this.chain(id, async () => {
        const latest = this.instances.get(id);
        if (latest) await writeJsonAtomic(this.fileOf(id), latest);
      });
    } catch (err) {
      if (this.instances.get(id) === frozen) {
        if (previous) this.instances.set(id, previous);
        else this.instances.delete(id);
      }
      throw new SwarmError('STATE_ERROR', `could not write the state file of ${id}: ${(err as Error).message}`, { cause: err });
    }
    return frozen;
  }

  private chain<T>(id: string, task: () => Promise<T>): Promise<T> {
    const previous = this.writeChains.get(id) ?? Promise.resolve();
    const run = previous.catch(() => undefined).then(async () => {
      await this.ensureDir(this.instancesDir);
      return task();
    });
    this.writeChains.set(id, run);
    const cleanup = (): void => {
      if (this.writeChains.get(id) === run) this.writeChains.delete(id);
    };
    run.then(cleanup, cleanup);
    return run;
  }

  private validate(instance: unknown): VSCodeInstance {
    const parsed = VSCodeInstanceSchema.safeParse(instance);
    if (!parsed.success) {
      const issue = parsed.error.issues[0]!;
      throw invalidInput(issue.path.join('.') || 'instance', issue.message);
    }
    return parsed.data;
  }

  private checkId(id: string): void {
    if (!InstanceIdSchema.safeParse(id).success) {
      throw invalidInput('instanceId', 'an instance id of 1-63 characters a-z, 0-9 and "-"', id);
    }
  }

  private dirReady = new Set<string>();
  private async ensureDir(dir: string): Promise<void> {
    if (this.dirReady.has(dir)) return;
    await fs.mkdir(dir, { recursive: true });
    this.dirReady.add(dir);
  }
}
