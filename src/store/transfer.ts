/**
 * Moving what a controller keeps between a state directory (the JSON-file store) and a PostgreSQL
 * database, both ways: `vscode-swarm store import --from-state-dir DIR` and `store export --to-state-dir DIR`.
 *
 * Controllers must be stopped while state moves, or the copy would miss what they write meanwhile: the
 * command holds the state directory's lock (the one every controller takes) for the whole move and refuses
 * when a live controller holds it. A target that already holds state is refused unless `force`, which
 * replaces that state with the source's; running the same move again gives the same target (idempotent).
 *
 * One small function per kind of state, each through that kind's store: instances through InstanceRegistry
 * and PgInstanceStore, the audit trail through its day files and PgAuditLog. What is not moved is named in
 * the report's `notMoved`.
 */
import { promises as fs } from 'node:fs';
import path from 'node:path';
import type { VSCodeInstance } from '../../providers/provider.js';
import { AuditConfigSchema, dayFileName, listDayFiles, parseEventLine, type AuditEvent } from '../audit/audit-log.js';
import { SwarmError } from '../errors.js';
import { silentLogger, type Logger } from '../logger.js';
import { InstanceRegistry } from '../registry/instance-registry.js';
import { writeFileAtomic } from '../state/atomic-file.js';
import { StateLock } from '../state/state-lock.js';
import { PgAuditLog } from './postgres/audit-log.js';
import { PgInstanceStore } from './postgres/instance-store.js';
import { migrate } from './postgres/migrations.js';
import { ChangeListener } from './postgres/notify.js';
import { StorePool } from './postgres/pool.js';

export interface TransferOptions {
  stateDir: string;
  databaseUrl: string;
  /** Replace what the target already holds (default: refuse a non-empty target). */
  force?: boolean;
  logger?: Logger;
}

export interface TransferReport {
  direction: 'import' | 'export';
  stateDir: string;
  /** The database as host:port/database (no credentials). */
  database: string;
  instances: number;
  auditEvents: number;
  /** What the target held before and `force` replaced (zeros without force). */
  replaced: { instances: number; auditEvents: number };
  /** Kinds of state this command does not move, each with what that means. */
  notMoved: string[];
}

/** Stated in every report (each printed as "not yet moved: …"): what stays where it is. */
export const NOT_MOVED = [
  'principals: principals and token hashes stay where they are (principals.json, or the principals and tokens tables)',
  'webhook cursors: delivery on the target starts at the end of the moved audit trail',
  'health history, migrations, snapshots, gateway keys and clones: they stay in the state directory',
];

const PAGE = 1_000;

/** State directory → database. */
export async function importStateDir(options: TransferOptions): Promise<TransferReport> {
  return withStopped(options, 'store import', async (db) => {
    const instances = await readDirInstances(options.stateDir, db.logger);
    const events = await readDirAudit(path.join(options.stateDir, 'audit'));
    const held = { instances: db.instances.list().length, auditEvents: await countDbAudit(db.pool) };
    refuseNonEmpty('database', db.pool.where, held, options.force);
    if (held.instances) await clearDbInstances(db.instances);
    if (held.auditEvents) await clearDbAudit(db.pool);
    await writeDbInstances(db.instances, instances);
    await db.audit.importEvents(events);
    return report('import', options, db.pool.where, instances.length, events.length, held);
  });
}

/** Database → state directory. */
export async function exportStateDir(options: TransferOptions): Promise<TransferReport> {
  return withStopped(options, 'store export', async (db) => {
    const instances = db.instances.list();
    const events = await readDbAudit(db.audit);
    const registry = new InstanceRegistry({ stateDir: options.stateDir, logger: db.logger });
    await registry.load();
    const auditDir = path.join(options.stateDir, 'audit');
    const dayFiles = await listDayFiles(auditDir);
    const held = { instances: registry.list().length, auditEvents: await countDirAudit(auditDir, dayFiles) };
    refuseNonEmpty('state directory', options.stateDir, held, options.force, dayFiles.length > 0);
    await clearDirInstances(registry);
    await clearDirAudit(auditDir, dayFiles);
    await writeDirInstances(registry, instances);
    await writeDirAudit(auditDir, events);
    return report('export', options, db.pool.where, instances.length, events.length, held);
  });
}

interface Database {
  pool: StorePool;
  instances: PgInstanceStore;
  audit: PgAuditLog;
  logger: Logger;
}

/**
 * Runs `move` with the state directory's lock held (refused, CONFLICT, while a controller holds it) and
 * the database open and migrated; lets go of both whatever happens.
 */
async function withStopped(options: TransferOptions, command: string, move: (db: Database) => Promise<TransferReport>): Promise<TransferReport> {
  const logger = (options.logger ?? silentLogger()).child({ component: 'store-transfer' });
  const lock = new StateLock(options.stateDir);
  await lock.acquire(command);
  const pool = new StorePool({ databaseUrl: options.databaseUrl, max: 4, logger });
  const listener = new ChangeListener({ pool, logger });
  const instances = new PgInstanceStore({ pool, listener, logger });
  const audit = new PgAuditLog({ pool, listener, logger, config: AuditConfigSchema.parse({}) });
  try {
    await migrate(pool, logger);
    await instances.load();
    const result = await move({ pool, instances, audit, logger });
    logger.info({ ...result }, `${command} done`);
    return result;
  } finally {
    await instances.close().catch(() => undefined);
    await audit.close().catch(() => undefined);
    await listener.close();
    await pool.close();
    await lock.release();
  }
}

/** CONFLICT unless `force` or the target holds nothing (`auditFiles`: day files exist, even without a readable event). */
function refuseNonEmpty(kind: string, where: string, held: { instances: number; auditEvents: number }, force = false, auditFiles = false): void {
  if (force || (held.instances === 0 && held.auditEvents === 0 && !auditFiles)) return;
  throw new SwarmError(
    'CONFLICT',
    `the target ${kind} ${where} is not empty: it holds ${held.instances} instance(s) and ${held.auditEvents} audit event(s); pass --force to replace them`,
  );
}

function report(
  direction: TransferReport['direction'],
  options: TransferOptions,
  database: string,
  instances: number,
  auditEvents: number,
  held: { instances: number; auditEvents: number },
): TransferReport {
  return {
    direction,
    stateDir: options.stateDir,
    database,
    instances,
    auditEvents,
    replaced: options.force ? held : { instances: 0, auditEvents: 0 },
    notMoved: [...NOT_MOVED],
  };
}

// ---- instances ----

async function readDirInstances(stateDir: string, logger: Logger): Promise<Readonly<VSCodeInstance>[]> {
  const registry = new InstanceRegistry({ stateDir, logger });
  const load = await registry.load();
  if (load.setAside.length) throw new SwarmError('STATE_ERROR', `some instance files in ${stateDir} are unreadable (set aside to quarantine/: ${load.setAside.map((s) => s.file).join(', ')}); look at them, then run the command again`);
  return registry.list();
}

async function writeDbInstances(store: PgInstanceStore, records: readonly Readonly<VSCodeInstance>[]): Promise<void> {
  for (const record of records) await store.register(structuredClone(record) as VSCodeInstance);
}

async function clearDbInstances(store: PgInstanceStore): Promise<void> {
  for (const record of store.list()) await store.remove(record.id);
}

async function writeDirInstances(registry: InstanceRegistry, records: readonly Readonly<VSCodeInstance>[]): Promise<void> {
  for (const record of records) await registry.register(structuredClone(record) as VSCodeInstance);
  await registry.flush();
}

async function clearDirInstances(registry: InstanceRegistry): Promise<void> {
  for (const record of registry.list()) await registry.remove(record.id);
  await registry.flush();
}

// ---- audit trail ----

/** Every readable event of the day files, in log order (torn and foreign lines skipped, as every reader does). */
async function readDirAudit(dir: string): Promise<AuditEvent[]> {
  const events: AuditEvent[] = [];
  for (const name of await listDayFiles(dir)) {
    for (const line of (await fs.readFile(path.join(dir, name), 'utf8')).split('\n')) {
      const event = parseEventLine(line);
      if (event) events.push(event);
    }
  }
  return events;
}

async function countDirAudit(dir: string, dayFiles: string[]): Promise<number> {
  let n = 0;
  for (const name of dayFiles) n += (await fs.readFile(path.join(dir, name), 'utf8')).split('\n').filter((line) => parseEventLine(line)).length;
  return n;
}

/** One day file per UTC day of the events' times, in trail order; a later event never goes to an earlier file. */
async function writeDirAudit(dir: string, events: readonly AuditEvent[]): Promise<void> {
  await fs.mkdir(dir, { recursive: true, mode: 0o700 });
  await fs.chmod(dir, 0o700);
  const files = new Map<string, string[]>();
  let last = '';
  for (const event of events) {
    const name = dayFileName(event.time.slice(0, 10));
    if (name > last) last = name;
    let lines = files.get(last);
    if (!lines) files.set(last, (lines = []));
    lines.push(JSON.stringify(event));
  }
  for (const [name, lines] of files) await writeFileAtomic(path.join(dir, name), `${lines.join('\n')}\n`);
}

async function clearDirAudit(dir: string, dayFiles: string[]): Promise<void> {
  for (const name of dayFiles) await fs.rm(path.join(dir, name), { force: true });
  // Cursors into files that are gone would point nowhere; webhooks start again at the end of the new trail.
  await fs.rm(path.join(dir, 'webhooks'), { recursive: true, force: true });
}

async function readDbAudit(log: PgAuditLog): Promise<AuditEvent[]> {
  const events: AuditEvent[] = [];
  for (let seq = 0; ; ) {
    const page = await log.after(seq, PAGE);
    if (page.length === 0) return events;
    for (const row of page) events.push(row.event);
    seq = page.at(-1)!.seq;
  }
}

async function countDbAudit(pool: StorePool): Promise<number> {
  const { rows } = await pool.query<{ n: string }>('SELECT count(*) AS n FROM audit_events');
  return Number(rows[0]!.n);
}

/** Empties the trail and the webhook cursors into it (the cursors' seqs would point into the old trail). */
async function clearDbAudit(pool: StorePool): Promise<void> {
  await pool.transaction(async (client) => {
    await client.query('DELETE FROM audit_events');
    await client.query('DELETE FROM audit_webhook_cursors');
  });
}

/** The report as lines for a person: counts, what was replaced, what was not moved. */
export function describeTransfer(r: TransferReport): string {
  const [from, to] = r.direction === 'import' ? [r.stateDir, r.database] : [r.database, r.stateDir];
  const lines = [`moved from ${from} to ${to}:`, `  instances: ${r.instances}`, `  audit events: ${r.auditEvents}`];
  if (r.replaced.instances || r.replaced.auditEvents) lines.push(`  replaced on the target (--force): ${r.replaced.instances} instance(s), ${r.replaced.auditEvents} audit event(s)`);
  for (const line of r.notMoved) lines.push(`not yet moved: ${line}`);
  return lines.join('\n');
}
