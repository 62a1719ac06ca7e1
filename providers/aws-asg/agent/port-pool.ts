/**
 * The host's pool of published editor ports: each instance on this host gets one port from a fixed range
 * (e.g. 20000-20999) for as long as it exists, stopped or running, so that its endpoint does not move
 * across stops, re-creations and agent restarts. Persisted as `<stateDir>/ports.json`, written
 * atomically after every change; no two instances ever hold the same port.
 */
import { promises as fs } from 'node:fs';
import net from 'node:net';
import path from 'node:path';
import { z } from 'zod';
import { InstanceIdSchema } from '../../provider.js';
import { SwarmError } from '../../../src/errors.js';
import { silentLogger, type Logger } from '../../../src/logger.js';
import { writeJsonAtomic } from '../../../src/state/atomic-file.js';

export interface PortRange {
  first: number;
  last: number;
}

export interface PortPoolOptions {
  /** The JSON file holding the assignments. */
  file: string;
  range: PortRange;
  /**
   * Whether a port is free to publish on right now; a port something else holds is skipped (not
   * assigned). Defaults to "always free"; the agent passes a probe of its bind address.
   */
  isFree?: (port: number) => Promise<boolean>;
  logger?: Logger;
}

const PortsFileSchema = z.object({
  range: z.object({ first: z.number().int(), last: z.number().int() }),
  assignments: z.record(InstanceIdSchema, z.number().int().min(1).max(65_535)),
});

/** Parses "20000-20999" (or a single port), naming what was expected. */
export function parsePortRange(text: string, field = 'portRange'): PortRange {
  const match = /^\s*(\d{1,5})\s*(?:-\s*(\d{1,5}))?\s*$/.exec(text);
  const first = match ? Number(match[1]) : NaN;
  const last = match ? Number(match[2] ?? match[1]) : NaN;
  if (!match || first < 1 || last > 65_535 || first > last) {
    throw new SwarmError('INVALID_INPUT', `${field}: expected a port range such as 20000-20999 within 1-65535 (got ${JSON.stringify(text)})`, { field });
  }
  return { first, last };
}

export class PortPool {
  private readonly byInstance = new Map<string, number>();
  private readonly byPort = new Map<number, string>();
  private readonly logger: Logger;
  private writing: Promise<void> = Promise.resolve();
  /** Where the next search starts, so a released port is not handed out again at once. */
  private cursor: number;

  constructor(private readonly options: PortPoolOptions) {
    this.logger = (options.logger ?? silentLogger()).child({ component: 'port-pool' });
    this.cursor = options.range.first;
  }

  get range(): PortRange {
    return { ...this.options.range };
  }

  get size(): number {
    return this.options.range.last - this.options.range.first + 1;
  }

  get used(): number {
    return this.byInstance.size;
  }

  /**
   * Reads the file. Assignments outside the current range (the range was changed) are kept so running
   * containers keep their ports; an unreadable file is set aside with a log line and the pool starts empty.
   */
  async load(): Promise<void> {
    let text: string;
    try {
      text = await fs.readFile(this.options.file, 'utf8');
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'ENOENT') return;
      throw new SwarmError('STATE_ERROR', `could not read ${this.options.file}: ${(err as Error).message}`, { cause: err });
    }
    let parsed: z.infer<typeof PortsFileSchema>;
    try {
      parsed = PortsFileSchema.parse(JSON.parse(text));
    } catch (err) {
      const aside = `${this.options.file}.unreadable-${Date.now()}`;
      await fs.rename(this.options.file, aside).catch(() => undefined);
      this.logger.warn({ file: this.options.file, movedTo: aside, err: (err as Error).message }, 'port assignments unreadable; set aside, starting empty');
      return;
    }
    this.byInstance.clear();
    this.byPort.clear();
    for (const [id, port] of Object.entries(parsed.assignments)) {
      if (this.byPort.has(port)) {
        this.logger.warn({ instanceId: id, port, holder: this.byPort.get(port) }, 'port assigned twice in the file; keeping the first');
        continue;
      }
      this.byInstance.set(id, port);
      this.byPort.set(port, id);
    }
  }

  /** The port assigned to an instance, if any. */
  portOf(instanceId: string): number | undefined {
    return this.byInstance.get(instanceId);
  }

  /** Every assignment, instance id → port. */
  assignments(): Record<string, number> {
    return Object.fromEntries([...this.byInstance].sort(([a], [b]) => a.localeCompare(b)));
  }

  /** The instance's port: the one it has, else the next free one, persisted before it is returned. */
  async allocate(instanceId: string): Promise<number> {
    if (!InstanceIdSchema.safeParse(instanceId).success) {
      throw new SwarmError('INVALID_INPUT', `instanceId: expected an instance id of 1-63 characters a-z, 0-9 and "-" (got ${JSON.stringify(instanceId)})`, { field: 'instanceId' });
    }
    const existing = this.byInstance.get(instanceId);
    if (existing !== undefined) return existing;
    const { first, last } = this.options.range;
    const size = last - first + 1;
    let skippedBusy = 0;
    for (let i = 0; i < size; i++) {
      const port = first + ((this.cursor - first + i) % size);
      if (this.byPort.has(port)) continue;
      // Reserve before the (async) probe so a concurrent allocate cannot pick the same port.
      this.assign(instanceId, port);
      if (this.options.isFree && !(await this.options.isFree(port))) {
        this.unassign(instanceId);
        skippedBusy++;
        continue;
      }
      this.cursor = port === last ? first : port + 1;
      try {
        await this.persist();
      } catch (err) {
        this.unassign(instanceId);
        throw err;
      }
      return port;
    }
    throw new SwarmError(
      'CONFLICT',
      `port pool ${first}-${last} is exhausted: ${this.byInstance.size} of ${size} ports are assigned${skippedBusy ? ` and ${skippedBusy} more are held by other processes` : ''}; delete an instance or widen --port-range`,
      { details: { reason: 'PORTS_EXHAUSTED', range: `${first}-${last}`, assigned: this.byInstance.size, busy: skippedBusy } },
    );
  }

  /**
   * Records a port an instance already holds (found on a container after the file was lost); false when
   * another instance holds that port.
   */
  async claim(instanceId: string, port: number): Promise<boolean> {
    const holder = this.byPort.get(port);
    if (holder !== undefined) return holder === instanceId;
    if (this.byInstance.has(instanceId)) this.unassign(instanceId);
    this.assign(instanceId, port);
    await this.persist();
    return true;
  }

  /** Returns the instance's port to the pool; false when it held none. */
  async release(instanceId: string): Promise<boolean> {
    if (!this.byInstance.has(instanceId)) return false;
    this.unassign(instanceId);
    await this.persist();
    return true;
  }

  /** Resolves when every change so far is on disk. */
  async flush(): Promise<void> {
    await this.writing.catch(() => undefined);
  }

  private assign(instanceId: string, port: number): void {
    this.byInstance.set(instanceId, port);
    this.byPort.set(port, instanceId);
  }

  private unassign(instanceId: string): void {
    const port = this.byInstance.get(instanceId);
    this.byInstance.delete(instanceId);
    if (port !== undefined && this.byPort.get(port) === instanceId) this.byPort.delete(port);
  }

  /** Writes the latest assignments; writes are chained so the file converges on the newest state. */
  private persist(): Promise<void> {
    const run = this.writing.catch(() => undefined).then(async () => {
      await fs.mkdir(path.dirname(this.options.file), { recursive: true });
      await writeJsonAtomic(this.options.file, { range: this.options.range, assignments: this.assignments() });
    });
    this.writing = run;
    return run.catch((err) => {
      throw new SwarmError('STATE_ERROR', `could not write ${this.options.file}: ${(err as Error).message}`, { cause: err });
    });
  }
}

/** A probe for PortPool.isFree: can a listener be bound to `host:port` right now? */
export function portFreeOn(host: string): (port: number) => Promise<boolean> {
  return (port) =>
    new Promise((resolve) => {
      const server = net.createServer();
      server.unref();
      server.once('error', () => resolve(false));
      server.listen({ host, port, exclusive: true }, () => server.close(() => resolve(true)));
    });
}
