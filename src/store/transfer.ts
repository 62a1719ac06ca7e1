/**
 * Moving what a controller keeps between a state directory (the JSON-file store) and a PostgreSQL
 * database, both ways: `vscode-swarm store import --from-state-dir DIR` and `store export --to-state-dir DIR`.
 *
 * Controllers must be stopped while state moves, or the copy would miss what they write meanwhile: the
 * command holds the state directory's lock (the one every controller takes) for the whole move and refuses
 * when a live controller holds it. A target that already holds state is refused unless `force`, which
 * replaces that state with the source's; running the same move again gives the same target (idempotent).
 *
 * One small function per kind of state, each through that kind's store where it has one: instances through
 * InstanceRegistry and PgInstanceStore, the audit trail through its day files and PgAuditLog, spent links
 * through SpentLinks and the spent_links table. Principals move with their token hashes (never a plaintext
 * token, which exists nowhere but in its holder's hands): principals.json ↔ the principals and tokens tables.
 * The gateway's signing seed moves too (gateway/ed25519.key ↔ swarm_secrets), so links already handed out
 * keep opening. Health records and migration journals move through their DocumentStores (the files of
 * `health/` and `migrations/` ↔ the documents table). What is not moved is named in the report's `notMoved`.
 *
 * "Empty" ignores what a controller makes by itself on a first start: the local admin principal, and a
 * signing seed equal to the source's. Everything else the target holds counts.
 */
import { promises as fs } from 'node:fs';
import path from 'node:path';
import { z } from 'zod';
import type { VSCodeInstance } from '../../providers/provider.js';
import { AuditConfigSchema, dayFileName, listDayFiles, parseEventLine, type AuditEvent } from '../audit/audit-log.js';
import { SwarmError } from '../errors.js';
import { SpentLinks, readSigningSeed, writeSigningSeed } from '../gateway/access-tokens.js';
import { silentLogger, type Logger } from '../logger.js';
import { InstanceRegistry } from '../registry/instance-registry.js';
import { writeFileAtomic, writeJsonAtomic } from '../state/atomic-file.js';
import { StateLock } from '../state/state-lock.js';
import { LOCAL_ADMIN_ID } from '../tenancy/identity.js';
import { PrincipalSchema, TokenRecordSchema, type Principal, type TokenRecord } from '../tenancy/principals.js';
import { DOCUMENT_KINDS, FileDocumentStore, type DocumentKind, type DocumentStore } from './documents.js';
import { PgAuditLog } from './postgres/audit-log.js';
import { PgDocumentStore } from './postgres/documents.js';
import { readGatewaySeed, replaceGatewaySeed } from './postgres/gateway-key.js';
import { PgInstanceStore } from './postgres/instance-store.js';
import { migrate } from './postgres/migrations.js';
import { ChangeListener } from './postgres/notify.js';
import { StorePool, type Queryable } from './postgres/pool.js';

export interface TransferOptions {
  stateDir: string;
  databaseUrl: string;
  /** Replace what the target already holds (default: refuse a non-empty target). */
  force?: boolean;
  logger?: Logger;
}

/**
 * How much of each kind of state: what a move carried, or what the target held that it replaced (there
 * `principals` counts those besides the local admin, `signingKey` a seed other than the source's).
 */
export interface TransferCounts {
  instances: number;
  auditEvents: number;
  /** Principals (the local admin included) and their tokens (as hashes; revoked ones too). */
  principals: number;
  tokens: number;
  /** One-time links already spent and not yet expired: they stay spent on the target. */
  spentLinks: number;
  /** The gateway's signing seed (moved: false when the source had none, and the target's is kept). */
  signingKey: boolean;
  /** Health records and migration journals (see ./documents.ts). */
  documents: number;
}

export interface TransferReport extends TransferCounts {
  direction: 'import' | 'export';
  stateDir: string;
  /** The database as host:port/database (no credentials). */
  database: string;
  /** What the target held before and `force` replaced (zeros without force). */
  replaced: TransferCounts;
  /** Kinds of state this command does not move, each with what that means. */
  notMoved: string[];
}

/** Stated in every report (each printed as "not moved: …"): what stays where it is. */
export const NOT_MOVED = [
  'webhook cursors: delivery on the target starts at the end of the moved audit trail',
  'the local credential (mcp-http.token): it stays a file of each machine, it proves who runs the controller there',
  "snapshots: they stay in the state directory's snapshots folder (several controllers share them through snapshots.dir)",
  "migrations' spooled archives: an unfinished migration moved is settled (rolled back, or finished from a fresh copy) by the leader",
];

const NOTHING_HELD: TransferCounts = { instances: 0, auditEvents: 0, principals: 0, tokens: 0, spentLinks: 0, signingKey: false, documents: 0 };

/** What travels besides instances and the audit trail. */
interface Tenancy {
  principals: Principal[];
  tokens: TokenRecord[];
  /** Link id → expiry (ms), unexpired only. */
  spentLinks: Map<string, number>;
  seed?: Buffer;
}

const PAGE = 1_000;

/** State directory → database. */
export async function importStateDir(options: TransferOptions): Promise<TransferReport> {
  return withStopped(options, 'store import', async (db) => {
    const instances = await readDirInstances(options.stateDir, db.logger);
    const events = await readDirAudit(path.join(options.stateDir, 'audit'));
    const tenancy = await readDirTenancy(options.stateDir);
    const [fromDocs, toDocs] = [new FileDocumentStore(options.stateDir, db.logger), new PgDocumentStore({ pool: db.pool, logger: db.logger })];
    const documents = await readDocuments(fromDocs);
    const held = {
      instances: db.instances.list().length, auditEvents: await countDbAudit(db.pool), ...(await heldDbTenancy(db.pool, tenancy.seed)),
      documents: (await readDocuments(toDocs)).length,
    };
    refuseNonEmpty('database', db.pool.where, held, options.force);
    if (held.instances) await clearDbInstances(db.instances);
    if (held.auditEvents) await clearDbAudit(db.pool);
    await writeDbInstances(db.instances, instances);
    await db.audit.importEvents(events);
    await writeDbTenancy(db.pool, tenancy);
    await replaceDocuments(toDocs, documents);
    return report('import', options, db.pool.where, instances.length, events.length, documents.length, tenancy, held);
  });
}

/** Database → state directory. */
export async function exportStateDir(options: TransferOptions): Promise<TransferReport> {
  return withStopped(options, 'store export', async (db) => {
    const instances = db.instances.list();
    const events = await readDbAudit(db.audit);
    const tenancy = await readDbTenancy(db.pool);
    const [fromDocs, toDocs] = [new PgDocumentStore({ pool: db.pool, logger: db.logger }), new FileDocumentStore(options.stateDir, db.logger)];
    const documents = await readDocuments(fromDocs);
    const registry = new InstanceRegistry({ stateDir: options.stateDir, logger: db.logger });
    await registry.load();
    const auditDir = path.join(options.stateDir, 'audit');
    const dayFiles = await listDayFiles(auditDir);
    const held = {
      instances: registry.list().length, auditEvents: await countDirAudit(auditDir, dayFiles), ...(await heldDirTenancy(options.stateDir, tenancy.seed)),
      documents: (await readDocuments(toDocs)).length,
    };
    refuseNonEmpty('state directory', options.stateDir, held, options.force, dayFiles.length > 0);
    await clearDirInstances(registry);
    await clearDirAudit(auditDir, dayFiles);
    await writeDirInstances(registry, instances);
    await writeDirAudit(auditDir, events);
    await writeDirTenancy(options.stateDir, tenancy);
    await replaceDocuments(toDocs, documents);
    return report('export', options, db.pool.where, instances.length, events.length, documents.length, tenancy, held);
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
function refuseNonEmpty(kind: string, where: string, held: TransferCounts, force = false, auditFiles = false): void {
  const empty = !held.instances && !held.auditEvents && !held.principals && !held.tokens && !held.spentLinks && !held.signingKey && !held.documents && !auditFiles;
  if (force || empty) return;
  throw new SwarmError(
    'CONFLICT',
    `the target ${kind} ${where} is not empty: it holds ${held.instances} instance(s) and ${held.auditEvents} audit event(s), ` +
      `${held.principals} principal(s) besides the local admin, ${held.tokens} token(s), ${held.spentLinks} spent link(s), ` +
      `${held.documents} health record(s) and migration journal(s)` +
      `${held.signingKey ? ' and a different gateway signing key' : ''}; pass --force to replace them`,
  );
}

function report(
  direction: TransferReport['direction'],
  options: TransferOptions,
  database: string,
  instances: number,
  auditEvents: number,
  documents: number,
  tenancy: Tenancy,
  held: TransferCounts,
): TransferReport {
  return {
    direction,
    stateDir: options.stateDir,
    database,
    instances,
    auditEvents,
    principals: tenancy.principals.length,
    tokens: tenancy.tokens.length,
    spentLinks: tenancy.spentLinks.size,
    signingKey: tenancy.seed !== undefined,
    documents,
    replaced: options.force ? held : { ...NOTHING_HELD },
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
  const lines = [
    `moved from ${from} to ${to}:`,
    `  instances: ${r.instances}`,
    `  audit events: ${r.auditEvents}`,
    `  principals: ${r.principals}, with ${r.tokens} token hash(es)`,
    `  spent links (not yet expired): ${r.spentLinks}`,
    `  health records and migration journals: ${r.documents}`,
    `  gateway signing key: ${r.signingKey ? 'moved (links already handed out keep opening)' : "none in the source (the target's is kept)"}`,
  ];
  const x = r.replaced;
  if (x.instances || x.auditEvents || x.principals || x.tokens || x.spentLinks || x.signingKey || x.documents) {
    lines.push(
      `  replaced on the target (--force): ${x.instances} instance(s), ${x.auditEvents} audit event(s), ${x.principals} principal(s), ${x.tokens} token(s), ${x.spentLinks} spent link(s), ${x.documents} document(s)` +
        (x.signingKey ? ', its gateway signing key (links it handed out no longer open)' : ''),
    );
  }
  for (const line of r.notMoved) lines.push(`not moved: ${line}`);
  return lines.join('\n');
}

// ---- health records and migration journals ----

type Document = { kind: DocumentKind; id: string; doc: unknown };

async function readDocuments(store: DocumentStore): Promise<Document[]> {
  const out: Document[] = [];
  for (const kind of DOCUMENT_KINDS) for (const { id, doc } of await store.list(kind)) out.push({ kind, id, doc });
  return out;
}

/** The target's documents become exactly `documents` (what it held is gone: refused before unless --force). */
async function replaceDocuments(store: DocumentStore, documents: readonly Document[]): Promise<void> {
  const keep = new Set(documents.map((d) => `${d.kind}/${d.id}`));
  for (const held of await readDocuments(store)) if (!keep.has(`${held.kind}/${held.id}`)) await store.remove(held.kind, held.id);
  for (const { kind, id, doc } of documents) await store.put(kind, id, doc);
}

// ---- principals, token hashes, spent links, the signing seed ----

const PrincipalsFileSchema = z.object({ version: z.literal(1), principals: z.array(PrincipalSchema), tokens: z.array(TokenRecordSchema) });

/** The state directory's principals.json (absent: none), unexpired spent links and seed file; refused when any is unreadable. */
async function readDirTenancy(stateDir: string): Promise<Tenancy> {
  const { principals, tokens } = await readPrincipalsFile(stateDir);
  checkTokenOwners(principals, tokens, path.join(stateDir, 'principals.json'));
  const spentLinks = await new SpentLinks(stateDir).unexpired();
  const seed = await readSigningSeed(stateDir);
  return { principals, tokens, spentLinks, ...(seed ? { seed } : {}) };
}

async function readPrincipalsFile(stateDir: string): Promise<{ principals: Principal[]; tokens: TokenRecord[] }> {
  const file = path.join(stateDir, 'principals.json');
  let raw: string;
  try {
    raw = await fs.readFile(file, 'utf8');
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return { principals: [], tokens: [] };
    throw new SwarmError('STATE_ERROR', `could not read ${file}: ${(err as Error).message}`, { cause: err });
  }
  let parsed;
  try {
    parsed = PrincipalsFileSchema.safeParse(JSON.parse(raw));
  } catch (err) {
    parsed = { success: false as const, error: err };
  }
  if (!parsed.success) throw new SwarmError('STATE_ERROR', `${file} is not a valid principals file; fix or move it aside, then run the command again (${String(parsed.error).slice(0, 300)})`);
  return parsed.data;
}

/** A token whose principal is missing would break the tokens table's foreign key half-way: refused before anything is written. */
function checkTokenOwners(principals: Principal[], tokens: TokenRecord[], where: string): void {
  const ids = new Set(principals.map((p) => p.id));
  const orphan = tokens.find((t) => !ids.has(t.principalId));
  if (orphan) throw new SwarmError('STATE_ERROR', `${where}: token ${orphan.id} belongs to principal ${orphan.principalId}, which does not exist there`);
}

async function heldDirTenancy(stateDir: string, sourceSeed: Buffer | undefined): Promise<Omit<TransferCounts, 'instances' | 'auditEvents' | 'documents'>> {
  const { principals, tokens } = await readPrincipalsFile(stateDir);
  const seed = await readSigningSeed(stateDir);
  return {
    principals: principals.filter((p) => p.id !== LOCAL_ADMIN_ID).length,
    tokens: tokens.length,
    spentLinks: (await new SpentLinks(stateDir).unexpired()).size,
    signingKey: otherSeed(seed, sourceSeed),
  };
}

/** Replaces principals.json (removed when the database has none), the spent links, and the seed file when the database has a seed. */
async function writeDirTenancy(stateDir: string, tenancy: Tenancy): Promise<void> {
  const file = path.join(stateDir, 'principals.json');
  if (tenancy.principals.length || tenancy.tokens.length) {
    await fs.mkdir(stateDir, { recursive: true, mode: 0o700 });
    await writeJsonAtomic(file, { version: 1, principals: tenancy.principals, tokens: tenancy.tokens }); // mode 0600
  } else {
    await fs.rm(file, { force: true });
  }
  await new SpentLinks(stateDir).replaceAll(tenancy.spentLinks);
  if (tenancy.seed) await writeSigningSeed(stateDir, tenancy.seed);
}

interface DataRow {
  id: string;
  data: unknown;
}

/** Every principal and token row (a row that is not a valid record is refused, naming it), unexpired spent links, the seed. */
async function readDbTenancy(pool: StorePool): Promise<Tenancy> {
  const principalRows = await pool.query<DataRow>('SELECT id, data FROM principals ORDER BY id');
  const tokenRows = await pool.query<DataRow>('SELECT id, data FROM tokens ORDER BY created_at, id');
  const principals = principalRows.rows.map((row) => parseRow(PrincipalSchema, row, 'principal'));
  const tokens = tokenRows.rows.map((row) => parseRow(TokenRecordSchema, row, 'token'));
  const { rows } = await pool.query<{ link_id: string; expires_ms: string }>(
    'SELECT link_id, round(extract(epoch FROM expires_at) * 1000)::bigint AS expires_ms FROM spent_links WHERE expires_at > now() ORDER BY link_id',
  );
  const seed = await readGatewaySeed(pool);
  return { principals, tokens, spentLinks: new Map(rows.map((r) => [r.link_id, Number(r.expires_ms)])), ...(seed ? { seed } : {}) };
}

function parseRow<T extends { id: string }>(schema: z.ZodType<T>, row: DataRow, kind: string): T {
  const parsed = schema.safeParse(row.data);
  if (!parsed.success || parsed.data.id !== row.id) throw new SwarmError('STATE_ERROR', `${kind} row ${row.id}: not a valid ${kind} record; fix or delete the row, then run the command again`);
  return parsed.data;
}

async function heldDbTenancy(pool: StorePool, sourceSeed: Buffer | undefined): Promise<Omit<TransferCounts, 'instances' | 'auditEvents' | 'documents'>> {
  const { rows } = await pool.query<{ principals: string; tokens: string; spent: string }>(
    `SELECT (SELECT count(*) FROM principals WHERE id <> $1) AS principals, (SELECT count(*) FROM tokens) AS tokens,
            (SELECT count(*) FROM spent_links WHERE expires_at > now()) AS spent`,
    [LOCAL_ADMIN_ID],
  );
  const counts = rows[0]!;
  return { principals: Number(counts.principals), tokens: Number(counts.tokens), spentLinks: Number(counts.spent), signingKey: otherSeed(await readGatewaySeed(pool), sourceSeed) };
}

/**
 * Replaces the principals, tokens and spent links in one transaction, and the seed when the source has one.
 * Rows take fresh versions from the tenancy sequence, so a controller's cache orders them after anything it held.
 */
async function writeDbTenancy(pool: StorePool, tenancy: Tenancy): Promise<void> {
  await pool.transaction(async (client) => {
    await client.query('DELETE FROM tokens');
    await client.query('DELETE FROM principals');
    for (const p of tenancy.principals) {
      await client.query(`INSERT INTO principals (id, data, version) VALUES ($1, $2, nextval('tenancy_version_seq'))`, [p.id, p]);
    }
    for (const t of tenancy.tokens) {
      await client.query(
        `INSERT INTO tokens (id, principal_id, hash, data, created_at, expires_at, revoked_at, version)
         VALUES ($1, $2, $3, $4, $5, $6, $7, nextval('tenancy_version_seq'))`,
        [t.id, t.principalId, t.hash, t, t.createdAt, t.expiresAt ?? null, t.revokedAt ?? null],
      );
    }
    await writeDbSpentLinks(client, tenancy.spentLinks);
    if (tenancy.seed) await replaceGatewaySeed(client, tenancy.seed);
  });
}

async function writeDbSpentLinks(client: Queryable, spent: ReadonlyMap<string, number>): Promise<void> {
  await client.query('DELETE FROM spent_links');
  if (spent.size === 0) return;
  await client.query(
    'INSERT INTO spent_links (link_id, expires_at) SELECT id, to_timestamp(ms / 1000) FROM unnest($1::text[], $2::double precision[]) AS s(id, ms)',
    [[...spent.keys()], [...spent.values()]],
  );
}

/** True when the target holds a seed and the source brings a different one (replacing it would break the target's links). */
function otherSeed(target: Buffer | undefined, source: Buffer | undefined): boolean {
  return target !== undefined && source !== undefined && !target.equals(source);
}
