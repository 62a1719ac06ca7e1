/**
 * What the controller needs from wherever instance records live: the JSON files of InstanceRegistry (the
 * embedded default) or PostgreSQL (PgInstanceStore, several controllers on one database).
 *
 * The shape is exactly the part of InstanceRegistry the controller and its services use, so the registry
 * satisfies it unchanged. Reads stay synchronous (dozens of call sites read a record in the middle of a
 * decision): a store answers them from memory, and the PostgreSQL store keeps that memory fresh with
 * LISTEN/NOTIFY and refuses to answer (STORE_UNAVAILABLE) while it cannot be sure it is. Writes are async
 * and authoritative: they go to the store first and are serialised per instance there.
 */
import type { VSCodeInstance } from '../../providers/provider.js';
import type { InstanceUpdate, LoadReport, RegistryFilter } from '../registry/instance-registry.js';

export type { InstanceUpdate, LoadReport, RegistryFilter };

/**
 * A quota check a write must pass (the controller's checkAdmission with the owner's limits), run by the
 * store where the write is decided: the JSON registry runs it in the same synchronous step as its
 * in-memory write; PostgreSQL runs it inside the write's transaction, under a transaction advisory lock on
 * the owner, against the owner's rows in the database, so controllers admitting for one owner at once are
 * serialised and never overshoot. `check` throws (QUOTA_EXCEEDED) to refuse; nothing is written then.
 */
export interface Admission {
  /** Whose usage the write counts against. */
  owner: string;
  /** Given the owner's records as the store holds them now (possibly more); throws to refuse. */
  check(instances: readonly Readonly<VSCodeInstance>[]): void;
}

export interface WriteOptions {
  admit?: Admission;
}

export interface InstanceStore {
  /** Reads every record into memory (and, for a shared store, starts following changes). */
  load(): Promise<LoadReport>;
  /** Adds a new instance; an id already present is CONFLICT. */
  register(instance: VSCodeInstance, options?: WriteOptions): Promise<Readonly<VSCodeInstance>>;
  /** Changes an instance (a patch, or a function of the current record); `updatedAt` is set by the store. */
  update(id: string, change: InstanceUpdate, options?: WriteOptions): Promise<Readonly<VSCodeInstance>>;
  /** Forgets an instance; false when it was not there. */
  remove(id: string): Promise<boolean>;
  get(id: string): Readonly<VSCodeInstance> | undefined;
  /** The instance, or NOT_FOUND naming it. */
  require(id: string): Readonly<VSCodeInstance>;
  /** Sorted by creation time, then id. */
  list(filter?: RegistryFilter): Readonly<VSCodeInstance>[];
  /** Names matching a glob (`*`, `?`) or a regular expression. */
  findByName(pattern: string | RegExp): Readonly<VSCodeInstance>[];
  /** Instances whose metadata has `key`, and equals `value` when given. */
  findByMetadata(key: string, value?: string): Readonly<VSCodeInstance>[];
  /** Resolves when every write started so far is durable. */
  flush(): Promise<void>;
  /**
   * With a store shared by several controllers: ids of records in one of `statuses` whose last writer is no
   * longer connected (it died mid-operation), for reconcile to settle without waiting out the grace period.
   */
  orphanedWrites?(statuses: readonly string[]): Promise<Set<string>>;
  /** Lets go of what the store holds open (connections, listeners); the controller calls it from close(). */
  close?(): Promise<void>;
}
