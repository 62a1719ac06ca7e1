/**
 * Instance records in PostgreSQL, for several controllers sharing one database.
 *
 * The database is the truth; every write is one transaction that locks the row (SELECT … FOR UPDATE), so
 * updates of one instance from any controller are serialised, takes a fresh `version` from one sequence,
 * and announces itself with NOTIFY on commit. Names are unique per owner among live workspaces by a
 * partial unique index, so two controllers creating the same name at once get one row and one CONFLICT.
 *
 * Reads are synchronous, as the controller expects (see ../instance-store.ts): they come from a cache that
 * load() fills and the announcements keep fresh. Versions order every change, deletes included, so
 * announcements arriving late or twice never roll the cache back. While the announcement connection is
 * down the cache may miss changes: reads throw STORE_UNAVAILABLE until it is back and the cache re-read.
 */
import { VSCodeInstanceSchema, type VSCodeInstance } from '../../../providers/provider.js';
import { SwarmError } from '../../errors.js';
import { silentLogger, type Logger } from '../../logger.js';
import { ownerOf } from '../../tenancy/quotas.js';
import type { Admission, InstanceStore, InstanceUpdate, LoadReport, RegistryFilter, WriteOptions } from '../instance-store.js';
import { checkInstanceId as checkId, deepFreeze, listInstances, matchingMetadata, matchingName, validateInstance as validate } from '../records.js';
import { KeyedMutex } from '../../controller/keyed-mutex.js';
import { CacheFreshness } from './cache-freshness.js';
import { migrate } from './migrations.js';
import { ChangeListener, notifyChange } from './notify.js';
import { orphanedIds } from './documents.js';
import { PROCESS_ID, type Queryable, type StorePool } from './pool.js';

export const INSTANCE_CHANNEL = 'swarm_instances';

export interface PgInstanceStoreOptions {
  pool: StorePool;
  /** Shared with other stores on the same pool; made (and closed with the store) when absent. */
  listener?: ChangeListener;
  logger?: Logger;
  /** Apply the schema migrations at the start of load() (for a store made before anything connects). */
  migrateOnLoad?: boolean;
  /** Close the pool with the store (default false: the pool is the caller's). */
  ownsPool?: boolean;
  /** Close the listener with the store (default: only when the store made it). */
  ownsListener?: boolean;
}

/** What a write announces: enough for a listener to decide whether to re-read the row. */
interface InstanceChange {
  id: string;
  version: string;
  op: 'upsert' | 'delete';
}

interface Cached {
  record: Readonly<VSCodeInstance>;
  version: bigint;
}

interface Row {
  data: VSCodeInstance;
  version: string;
}

export class PgInstanceStore implements InstanceStore {
  private readonly pool: StorePool;
  private readonly listener: ChangeListener;
  private readonly ownsListener: boolean;
  private readonly ownsPool: boolean;
  private migrateOnLoad: boolean;
  private readonly logger: Logger;
  private readonly cache = new Map<string, Cached>();
  /** The version of each delete heard, so an older announcement cannot bring the record back. */
  private readonly tombstones = new Map<string, bigint>();
  private readonly pending = new Set<Promise<unknown>>();
  /** Admitting writes of one owner, one at a time in this process (see transaction()). */
  private readonly owners = new KeyedMutex();
  private loaded = false;
  private readonly freshness: CacheFreshness;
  private unsubscribe: (() => Promise<void>)[] = [];

  constructor(options: PgInstanceStoreOptions) {
    this.pool = options.pool;
    this.logger = (options.logger ?? silentLogger()).child({ component: 'pg-instance-store' });
    this.ownsListener = options.ownsListener ?? !options.listener;
    this.ownsPool = options.ownsPool ?? false;
    this.migrateOnLoad = options.migrateOnLoad ?? false;
    this.listener = options.listener ?? new ChangeListener({ pool: this.pool, logger: options.logger });
    this.freshness = new CacheFreshness({ listener: this.listener, reread: () => this.readAll(), logger: this.logger, what: 'instance store', where: this.pool.where });
  }

  /** Follows changes, then reads every record; the schema must be migrated already (see migrate()) unless migrateOnLoad. */
  async load(): Promise<LoadReport> {
    if (this.migrateOnLoad) {
      await migrate(this.pool, this.logger);
      this.migrateOnLoad = false;
    }
    if (!this.loaded) {
      const offState = this.freshness.follow();
      this.unsubscribe.push(async () => offState());
      this.unsubscribe.push(await this.listener.onChange(INSTANCE_CHANNEL, (payload) => this.heard(payload)));
    }
    await this.readAll();
    this.loaded = true;
    this.freshness.loadedNow();
    this.logger.info({ loaded: this.cache.size }, 'instance store loaded');
    return { loaded: this.cache.size, setAside: [], removedTemp: 0 };
  }

  async register(instance: VSCodeInstance, options?: WriteOptions): Promise<Readonly<VSCodeInstance>> {
    const record = validate(instance);
    return this.track(
      this.transaction(options, async (client) => {
        if (options?.admit) await admitIn(client, options.admit);
        const { rows } = await client
          .query<{ version: string }>(
            `INSERT INTO instances (id, owner, name, provider, status, warm_pool, data, version, written_by)
             VALUES ($1, $2, $3, $4, $5, $6, $7, nextval('instance_version_seq'), $8) RETURNING version`,
            [record.id, ownerOf(record), record.name, record.providerType, record.status, record.warmPool ?? null, record, PROCESS_ID],
          )
          .catch((err: unknown) => {
            throw conflictFrom(err, record);
          });
        const version = rows[0]!.version;
        await notifyChange(client, INSTANCE_CHANNEL, { id: record.id, version, op: 'upsert' } satisfies InstanceChange);
        return this.apply(record.id, record, BigInt(version))!;
      }),
    );
  }

  async update(id: string, change: InstanceUpdate, options?: WriteOptions): Promise<Readonly<VSCodeInstance>> {
    checkId(id);
    return this.track(
      this.transaction(options, async (client) => {
        if (options?.admit) await admitIn(client, options.admit);
        const current = await this.lockRow(client, id);
        const merged = typeof change === 'function' ? change(structuredClone(current)) : { ...current, ...change, id };
        const record = validate({ ...merged, id, updatedAt: new Date().toISOString() });
        // written_by names whoever put the record in its status (the operation's controller): a write that
        // keeps the status (a health check's findings, a progress note) leaves it, so a live controller
        // looking at a record a dead one left in `starting` does not hide that it is orphaned.
        const { rows } = await client
          .query<{ version: string }>(
            `UPDATE instances SET owner = $2, name = $3, provider = $4, status = $5, warm_pool = $6, data = $7,
               version = nextval('instance_version_seq'), updated_at = now(),
               written_by = CASE WHEN instances.status = $5 THEN instances.written_by ELSE $8 END
             WHERE id = $1 RETURNING version`,
            [id, ownerOf(record), record.name, record.providerType, record.status, record.warmPool ?? null, record, PROCESS_ID],
          )
          .catch((err: unknown) => {
            throw conflictFrom(err, record);
          });
        const version = rows[0]!.version;
        await notifyChange(client, INSTANCE_CHANNEL, { id, version, op: 'upsert' } satisfies InstanceChange);
        return this.apply(id, record, BigInt(version))!;
      }),
    );
  }

  async remove(id: string): Promise<boolean> {
    checkId(id);
    return this.track(
      this.pool.transaction(async (client) => {
        const { rows } = await client.query<{ version: string }>(`DELETE FROM instances WHERE id = $1 RETURNING nextval('instance_version_seq') AS version`, [id]);
        if (!rows.length) return false;
        await notifyChange(client, INSTANCE_CHANNEL, { id, version: rows[0]!.version, op: 'delete' } satisfies InstanceChange);
        this.apply(id, undefined, BigInt(rows[0]!.version));
        return true;
      }),
    );
  }

  /**
   * A write in one transaction. A write that admits takes its owner's advisory lock in the database; here
   * such writes also queue per owner before taking a connection, so thirty creates for one person waiting
   * on that lock hold one connection of the pool, not all of them (the others' reads would time out).
   */
  private transaction<T>(options: WriteOptions | undefined, work: (client: Queryable) => Promise<T>): Promise<T> {
    const run = (): Promise<T> => this.pool.transaction(work);
    return options?.admit ? this.owners.run(options.admit.owner, run) : run();
  }

  /**
   * Records in one of `statuses` last written by another process that has no session open on the database
   * now: a controller that died (SIGKILL, a lost machine) in the middle of an operation. A live controller
   * keeps its listening connection open, so only a dead one, or one cut off from the database (whose
   * writes fail anyway), looks like this; the caller should see it twice before acting.
   */
  async orphanedWrites(statuses: readonly string[]): Promise<Set<string>> {
    return orphanedIds(this.pool, 'instances', 't.status = ANY($3)', [[...statuses]]);
  }

  get(id: string): Readonly<VSCodeInstance> | undefined {
    checkId(id);
    this.checkFresh();
    return this.cache.get(id)?.record;
  }

  require(id: string): Readonly<VSCodeInstance> {
    const found = this.get(id);
    if (!found) throw new SwarmError('NOT_FOUND', `instance ${id} does not exist`, { field: 'instanceId' });
    return found;
  }

  list(filter: RegistryFilter = {}): Readonly<VSCodeInstance>[] {
    this.checkFresh();
    return listInstances(recordsOf(this.cache.values()), filter);
  }

  findByName(pattern: string | RegExp): Readonly<VSCodeInstance>[] {
    return matchingName(this.list(), pattern);
  }

  findByMetadata(key: string, value?: string): Readonly<VSCodeInstance>[] {
    return matchingMetadata(this.list(), key, value);
  }

  /** Every write is committed before its promise resolves; this waits for those still running. */
  async flush(): Promise<void> {
    await Promise.allSettled([...this.pending]);
  }

  /** True when reads can be answered (loaded, and no announcement can have been missed). */
  get available(): boolean {
    return this.freshness.available;
  }

  /** Stops following changes; the pool stays open (it is the caller's) unless ownsPool. */
  async close(): Promise<void> {
    for (const off of this.unsubscribe.splice(0)) await off().catch(() => undefined);
    if (this.ownsListener) await this.listener.close();
    this.freshness.stop();
    if (this.ownsPool) {
      await this.flush();
      await this.pool.close();
    }
  }

  private async lockRow(client: Queryable, id: string): Promise<VSCodeInstance> {
    const { rows } = await client.query<Row>('SELECT data, version FROM instances WHERE id = $1 FOR UPDATE', [id]);
    if (!rows.length) throw new SwarmError('NOT_FOUND', `instance ${id} does not exist`, { field: 'instanceId' });
    return rows[0]!.data;
  }

  private track<T>(work: Promise<T>): Promise<T> {
    this.pending.add(work);
    const done = (): void => void this.pending.delete(work);
    work.then(done, done);
    return work;
  }

  /** Puts a record (or its absence) in the cache unless something newer is known already. */
  private apply(id: string, record: VSCodeInstance | undefined, version: bigint): Readonly<VSCodeInstance> | undefined {
    const known = this.cache.get(id)?.version ?? this.tombstones.get(id) ?? -1n;
    if (version <= known) return record ? deepFreeze(record) : undefined;
    if (record) {
      const frozen = deepFreeze(record);
      this.cache.set(id, { record: frozen, version });
      this.tombstones.delete(id);
      return frozen;
    }
    this.cache.delete(id);
    this.tombstones.set(id, version);
    return undefined;
  }

  private heard(payload: unknown): void {
    const change = payload as Partial<InstanceChange> | undefined;
    if (!change || typeof change.id !== 'string' || typeof change.version !== 'string') return;
    const version = BigInt(change.version);
    const id = change.id;
    const known = this.cache.get(id)?.version ?? this.tombstones.get(id) ?? -1n;
    if (version <= known) return;
    if (change.op === 'delete') {
      this.apply(id, undefined, version);
      return;
    }
    // The announcement names the change; the row itself is read (it may be newer still).
    this.pool
      .query<Row>('SELECT data, version FROM instances WHERE id = $1', [id])
      .then(({ rows }) => {
        const row = rows[0];
        if (row) this.apply(id, validate(row.data), BigInt(row.version));
      })
      .catch((err: unknown) => {
        // The change is known to exist but not what it is: refuse reads until everything is re-read.
        this.logger.warn({ id, err: (err as Error).message }, 'could not read an announced change; re-reading all');
        this.freshness.missed();
      });
  }

  /**
   * Reads every row and makes the cache match, keeping what local writes or announcements put there
   * meanwhile when it is newer than what was read.
   */
  private async readAll(): Promise<void> {
    // In the order list() returns them: the cache keeps insertion order, and sorting a list already in
    // order costs one comparison per record; out of order (as rows come unsorted) it costs n log n, which
    // made list() about three times slower than the JSON files' (see the store-ops bench).
    const { rows } = await this.pool.query<Row & { id: string }>(`SELECT id, data, version FROM instances ORDER BY data->>'createdAt', id`);
    const seen = new Set<string>();
    for (const row of rows) {
      seen.add(row.id);
      const parsed = VSCodeInstanceSchema.safeParse(row.data);
      if (!parsed.success) {
        this.logger.warn({ id: row.id }, 'instance row is not a valid record; skipped');
        continue;
      }
      this.apply(row.id, parsed.data, BigInt(row.version));
    }
    // A record absent from the table was deleted by someone whose announcement we missed.
    const high = rows.reduce((max, r) => (BigInt(r.version) > max ? BigInt(r.version) : max), 0n);
    for (const [id, cached] of this.cache) {
      if (!seen.has(id) && cached.version <= high) this.cache.delete(id);
    }
  }

  private checkFresh(): void {
    this.freshness.check();
  }
}

/**
 * Runs a quota check inside the write's transaction: first the owner's transaction advisory lock (held to
 * commit, so admissions for one owner from every controller run one after the other, each seeing the rows
 * the previous committed), then the check against the owner's rows as they are in the database.
 */
async function admitIn(client: Queryable, admit: Admission): Promise<void> {
  await client.query(`SELECT pg_advisory_xact_lock(hashtextextended($1, 0))`, [`vss-quota:${admit.owner}`]);
  const { rows } = await client.query<{ data: VSCodeInstance }>('SELECT data FROM instances WHERE owner = $1', [admit.owner]);
  admit.check(rows.map((r) => r.data));
}

/** A unique violation as the CONFLICT it means, naming the id or the name; anything else unchanged. */
function conflictFrom(err: unknown, record: VSCodeInstance): unknown {
  if ((err as { code?: string }).code !== '23505') return err;
  const constraint = (err as { constraint?: string }).constraint;
  if (constraint === 'instances_live_owner_name') {
    return new SwarmError('CONFLICT', `an instance named "${record.name}" already exists for ${ownerOf(record)}`, { field: 'name', cause: err });
  }
  return new SwarmError('CONFLICT', `instance ${record.id} is already registered`, { field: 'id', cause: err });
}

/** The records of cache entries, without copying the cache first (list() runs on every read of the controller). */
function* recordsOf(entries: Iterable<{ record: Readonly<VSCodeInstance> }>): Iterable<Readonly<VSCodeInstance>> {
  for (const entry of entries) yield entry.record;
}
