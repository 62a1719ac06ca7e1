/**
 * The state store: the interface the controller uses and its two implementations, the JSON files of
 * InstanceRegistry (embedded default) and PostgreSQL (several controllers on one database), with the
 * pieces the PostgreSQL one is made of (pool, migrations, announcements, leadership).
 */
import { InstanceRegistry } from '../registry/instance-registry.js';
import type { SwarmConfig } from '../config.js';
import type { Logger } from '../logger.js';
import type { InstanceStore } from './instance-store.js';
import { migrate } from './postgres/migrations.js';
import { ChangeListener } from './postgres/notify.js';
import { PgInstanceStore } from './postgres/instance-store.js';
import { StorePool } from './postgres/pool.js';

export type { InstanceStore, InstanceUpdate, LoadReport, RegistryFilter } from './instance-store.js';
export { checkInstanceId, deepFreeze, globToRegExp, listInstances, matchingMetadata, matchingName, validateInstance } from './records.js';
export { StorePool, isUnavailableError, redactDatabaseUrl, type Queryable, type StorePoolOptions } from './postgres/pool.js';
export { MIGRATIONS, MIGRATION_LOCK_KEY, migrate, type Migration, type MigrationReport } from './postgres/migrations.js';
export { ChangeListener, notifyChange, type ChangeListenerOptions } from './postgres/notify.js';
export { PgInstanceStore, INSTANCE_CHANNEL, type PgInstanceStoreOptions } from './postgres/instance-store.js';
export { LeaderLease, assertFencing, type LeaderLeaseOptions } from './postgres/leader-lease.js';

/** A PostgreSQL store ready to load: pool open, schema migrated. close() ends the listener and the pool. */
export interface PostgresStore {
  pool: StorePool;
  listener: ChangeListener;
  instances: PgInstanceStore;
  close(): Promise<void>;
}

export async function openPostgresStore(databaseUrl: string, logger?: Logger): Promise<PostgresStore> {
  const pool = new StorePool({ databaseUrl, ...(logger ? { logger } : {}) });
  try {
    await migrate(pool, logger);
  } catch (err) {
    await pool.close();
    throw err;
  }
  const listener = new ChangeListener({ pool, ...(logger ? { logger } : {}) });
  const instances = new PgInstanceStore({ pool, listener, ...(logger ? { logger } : {}) });
  return {
    pool,
    listener,
    instances,
    async close() {
      await instances.close();
      await listener.close();
      await pool.close();
    },
  };
}

/**
 * The instance store the configuration asks for: PostgreSQL when `store.databaseUrl` (or
 * VSCODE_SWARM_DATABASE_URL) is set, the JSON files under `stateDir` otherwise. Not loaded yet.
 */
export async function instanceStoreFromConfig(
  config: Pick<SwarmConfig, 'stateDir' | 'store'>,
  logger?: Logger,
): Promise<{ store: InstanceStore; close(): Promise<void> }> {
  const databaseUrl = config.store?.databaseUrl;
  if (!databaseUrl) {
    return { store: new InstanceRegistry({ stateDir: config.stateDir, ...(logger ? { logger } : {}) }), close: async () => undefined };
  }
  const pg = await openPostgresStore(databaseUrl, logger);
  return { store: pg.instances, close: () => pg.close() };
}

/**
 * The same choice made synchronously, for createSwarm: nothing connects until the store's load() (the
 * controller's initialize), which applies the schema migrations first; the store's close() (called by the
 * controller's close) ends its listener and its pool.
 */
export function instanceStoreFor(config: Pick<SwarmConfig, 'stateDir' | 'store'>, logger?: Logger): InstanceStore {
  const databaseUrl = config.store?.databaseUrl;
  if (!databaseUrl) return new InstanceRegistry({ stateDir: config.stateDir, ...(logger ? { logger } : {}) });
  const pool = new StorePool({ databaseUrl, ...(logger ? { logger } : {}) });
  return new PgInstanceStore({ pool, migrateOnLoad: true, ownsPool: true, ...(logger ? { logger } : {}) });
}
