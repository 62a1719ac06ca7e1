/**
 * The state store: the interface the controller uses and its two implementations, the JSON files of
 * InstanceRegistry (embedded default) and PostgreSQL (several controllers on one database), with the
 * pieces the PostgreSQL one is made of (pool, migrations, announcements, leadership).
 */
import path from 'node:path';
import { AuditLog, type AuditConfig } from '../audit/audit-log.js';
import { WebhookDelivery } from '../audit/webhooks.js';
import { InstanceRegistry } from '../registry/instance-registry.js';
import type { SwarmConfig } from '../config.js';
import { SwarmError } from '../errors.js';
import type { Logger } from '../logger.js';
import type { InstanceStore } from './instance-store.js';
import type { SpentLinkStore } from '../gateway/access-links.js';
import type { SigningSeedStore } from '../gateway/access-tokens.js';
import { PgSigningSeed } from './postgres/gateway-key.js';
import type { PrincipalDirectory } from '../tenancy/principals.js';
import { PgPrincipalStore } from './postgres/principal-store.js';
import { PgSpentLinks } from './postgres/spent-links.js';
import { PgAuditLog, type AuditTrail } from './postgres/audit-log.js';
import { PgWebhookDelivery } from './postgres/audit-webhooks.js';
import { migrate } from './postgres/migrations.js';
import { ChangeListener } from './postgres/notify.js';
import { PgInstanceStore } from './postgres/instance-store.js';
import { PgDocumentStore } from './postgres/documents.js';
import type { DocumentStore } from './documents.js';
import { StorePool } from './postgres/pool.js';

export type { Admission, InstanceStore, InstanceUpdate, LoadReport, RegistryFilter, WriteOptions } from './instance-store.js';
export { checkInstanceId, deepFreeze, globToRegExp, listInstances, matchingMetadata, matchingName, validateInstance } from './records.js';
export { StorePool, isUnavailableError, redactDatabaseUrl, type Queryable, type StorePoolOptions } from './postgres/pool.js';
export { MIGRATIONS, MIGRATION_LOCK_KEY, migrate, type Migration, type MigrationReport } from './postgres/migrations.js';
export { ChangeListener, notifyChange, type ChangeListenerOptions } from './postgres/notify.js';
export { PgInstanceStore, INSTANCE_CHANNEL, type PgInstanceStoreOptions } from './postgres/instance-store.js';
export { LeaderLease, assertFencing, type LeaderLeaseOptions } from './postgres/leader-lease.js';
export { PgPrincipalStore, TENANCY_CHANNEL, type PgPrincipalStoreOptions } from './postgres/principal-store.js';
export { PgSpentLinks, type PgSpentLinksOptions } from './postgres/spent-links.js';
export { PgSigningSeed, GATEWAY_SEED_NAME, type PgSigningSeedOptions } from './postgres/gateway-key.js';
export { PgAuditLog, AUDIT_CHANNEL, AUDIT_LOCK_KEY, type AuditTrail, type PgAuditLogOptions, type SequencedEvent } from './postgres/audit-log.js';
export { PgWebhookDelivery, webhookKey, type PgWebhookDeliveryOptions, type PgWebhookStatus } from './postgres/audit-webhooks.js';
export { DOCUMENT_KINDS, FileDocumentStore, checkDocumentId, type DocumentKind, type DocumentStore, type StoredDocument } from './documents.js';
export { PgDocumentStore, orphanedIds, type PgDocumentStoreOptions } from './postgres/documents.js';

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

/**
 * The audit trail the configuration asks for, made the same way as instanceStoreFor: PostgreSQL (its own
 * small pool, migrated at open()) when `store.databaseUrl` is set, the JSON-lines day files under
 * `<stateDir>/audit` otherwise. Nothing connects before open().
 */
export function auditTrailFor(config: Pick<SwarmConfig, 'stateDir' | 'store' | 'audit'>, logger?: Logger): AuditTrail {
  const databaseUrl = config.store?.databaseUrl;
  if (!databaseUrl) return new AuditLog({ dir: path.join(config.stateDir, 'audit'), config: config.audit, ...(logger ? { logger } : {}) });
  const pool = new StorePool({ databaseUrl, max: 4, ...(logger ? { logger } : {}) });
  return new PgAuditLog({ pool, config: config.audit, migrateOnOpen: true, ownsPool: true, ...(logger ? { logger } : {}) });
}

/** Delivery of a trail's events to the configured webhooks, for either kind of trail; made before the trail opens. */
export function auditWebhooksFor(
  audit: AuditTrail,
  webhooks: AuditConfig['webhooks'],
  logger?: Logger,
): { start(): void | Promise<void>; close(): Promise<void> } | undefined {
  if (webhooks.length === 0) return undefined;
  if (audit instanceof AuditLog) return new WebhookDelivery({ log: audit, dir: audit.dir, webhooks, ...(logger ? { logger } : {}) });
  if (audit instanceof PgAuditLog) return new PgWebhookDelivery({ log: audit, pool: audit.pool, webhooks, ...(logger ? { logger } : {}) });
  throw new SwarmError('INVALID_INPUT', 'audit.webhooks: webhook delivery needs the audit trail of the state directory or of the PostgreSQL store');
}

/** What createSwarm builds from the store choice; absent parts are the controller's and the gateway's file defaults. */
export interface ConfiguredStores {
  registry: InstanceStore;
  principals?: PrincipalDirectory;
  spentLinks?: SpentLinkStore;
  /** Where the gateway's signing seed is shared when no gateway.secret is configured (PostgreSQL only). */
  signingSeed?: SigningSeedStore;
  /** Health records and migration journals; absent: the files of the state directory (see FileDocumentStore). */
  documents?: DocumentStore;
}

/**
 * instanceStoreFor's choice for everything the controllers must share: with PostgreSQL, the instance
 * store, the principal store, the spent links and the gateway's signing seed on one pool and one change listener. Nothing connects
 * before initialize (the instance store's load and the principal store's open each apply the migrations
 * first; the second finds them done); the instance store's close() ends the listener and the pool, so the
 * controller closes the principal store before it. With the JSON files, the registry alone: the controller
 * and AccessLinks make their file stores in the state directory themselves.
 */
export function storesFor(config: Pick<SwarmConfig, 'stateDir' | 'store'>, logger?: Logger): ConfiguredStores {
  const databaseUrl = config.store?.databaseUrl;
  if (!databaseUrl) return { registry: instanceStoreFor(config, logger) };
  const withLogger = logger ? { logger } : {};
  const pool = new StorePool({ databaseUrl, ...withLogger });
  const listener = new ChangeListener({ pool, ...withLogger });
  return {
    registry: new PgInstanceStore({ pool, listener, migrateOnLoad: true, ownsPool: true, ownsListener: true, ...withLogger }),
    principals: new PgPrincipalStore({ pool, listener, stateDir: config.stateDir, migrateOnOpen: true, ...withLogger }),
    spentLinks: new PgSpentLinks({ pool, ...withLogger }),
    signingSeed: new PgSigningSeed({ pool, ...withLogger }),
    documents: new PgDocumentStore({ pool, ...withLogger }),
  };
}
