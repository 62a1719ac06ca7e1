/**
 * Principals and token hashes in PostgreSQL, for several controllers sharing one database: a token revoked
 * or a principal disabled through one controller is refused by every other as soon as it hears the change.
 *
 * The same pattern as the instance store (./instance-store.ts): the database is the truth; each write is
 * one transaction (FOR UPDATE where it reads first) that takes a fresh `version` from one sequence and
 * announces itself with NOTIFY on commit. Reads and authenticate() stay synchronous, as every door expects
 * (see PrincipalDirectory), answered from a cache that open() fills and the announcements keep fresh.
 * While the announcement connection is down a revoke may have been missed, so reads and authenticate()
 * fail closed (STORE_UNAVAILABLE) until it is back and the cache re-read.
 *
 * The rules (what a new principal or token is, what a credential must be to pass) are the ones of the JSON
 * store, shared from src/tenancy/principals.ts. The local admin's credential stays a file in this
 * controller's state directory: it proves "whoever runs this controller", which is machine-local.
 * A token's last use is written at most once a minute, without an announcement (it is informational).
 */
import { SwarmError } from '../../errors.js';
import { silentLogger, type Logger } from '../../logger.js';
import { LOCAL_ADMIN_ID } from '../../tenancy/identity.js';
import {
  PrincipalSchema,
  TokenRecordSchema,
  changedPrincipal,
  infoOf,
  localAdminRecord,
  newPrincipalRecord,
  newTokenRecord,
  principalExists,
  readLocalCredential,
  useWorthRecording,
  verifyCredential,
  type Authenticated,
  type NewPrincipal,
  type NewToken,
  type Principal,
  type PrincipalChange,
  type PrincipalDirectory,
  type TokenInfo,
  type TokenRecord,
} from '../../tenancy/principals.js';
import { CacheFreshness } from './cache-freshness.js';
import { migrate } from './migrations.js';
import { ChangeListener, notifyChange } from './notify.js';
import type { Queryable, StorePool } from './pool.js';

export const TENANCY_CHANNEL = 'swarm_tenancy';

export interface PgPrincipalStoreOptions {
  pool: StorePool;
  /** This controller's state directory: where the local admin's credential file is. */
  stateDir: string;
  /** Shared with other stores on the same pool; made (and closed with the store) when absent. */
  listener?: ChangeListener;
  logger?: Logger;
  now?: () => Date;
  /** Apply the schema migrations at the start of open() (for a store made before anything connects). */
  migrateOnOpen?: boolean;
}

type Kind = 'principal' | 'token';

/** What a write announces: enough for a listener to decide whether to re-read the row. */
interface TenancyChange {
  kind: Kind;
  id: string;
  version: string;
}

interface Row {
  id: string;
  data: unknown;
  version: string;
}

/** Records by id with the version each was read at; an older version never replaces a newer one. */
class VersionedCache<T> {
  readonly entries = new Map<string, { record: T; version: bigint }>();

  get(id: string): T | undefined {
    return this.entries.get(id)?.record;
  }

  isNewer(id: string, version: bigint): boolean {
    return version > (this.entries.get(id)?.version ?? -1n);
  }

  apply(id: string, record: T, version: bigint): void {
    if (this.isNewer(id, version)) this.entries.set(id, { record, version });
  }

  /** Makes the cache match a full read; rows missing from it are gone unless written after it. */
  replaceAll(rows: { id: string; record: T; version: bigint }[]): void {
    const seen = new Set<string>();
    let high = 0n;
    for (const row of rows) {
      seen.add(row.id);
      if (row.version > high) high = row.version;
      this.apply(row.id, row.record, row.version);
    }
    for (const [id, cached] of this.entries) if (!seen.has(id) && cached.version <= high) this.entries.delete(id);
  }
}

export class PgPrincipalStore implements PrincipalDirectory {
  private readonly pool: StorePool;
  private readonly listener: ChangeListener;
  private readonly ownsListener: boolean;
  private readonly stateDir: string;
  private readonly logger: Logger;
  private readonly now: () => Date;
  private migrateOnOpen: boolean;
  private readonly principals = new VersionedCache<Principal>();
  private readonly tokens = new VersionedCache<TokenRecord>();
  private readonly pending = new Set<Promise<unknown>>();
  private localCredential?: Buffer;
  private loaded = false;
  private readonly freshness: CacheFreshness;
  private unsubscribe: (() => Promise<void>)[] = [];

  constructor(options: PgPrincipalStoreOptions) {
    this.pool = options.pool;
    this.stateDir = options.stateDir;
    this.logger = (options.logger ?? silentLogger()).child({ component: 'pg-principal-store' });
    this.now = options.now ?? (() => new Date());
    this.migrateOnOpen = options.migrateOnOpen ?? false;
    this.ownsListener = !options.listener;
    this.listener = options.listener ?? new ChangeListener({ pool: this.pool, ...(options.logger ? { logger: options.logger } : {}) });
    this.freshness = new CacheFreshness({ listener: this.listener, reread: () => this.readAll(), logger: this.logger, what: 'principal store', where: this.pool.where });
  }

  /** Follows changes, reads every principal and token, makes sure the local admin exists, reads the local credential. */
  async open(): Promise<void> {
    if (this.migrateOnOpen) {
      await migrate(this.pool, this.logger);
      this.migrateOnOpen = false;
    }
    if (!this.loaded) {
      const offState = this.freshness.follow();
      this.unsubscribe.push(async () => offState());
      this.unsubscribe.push(await this.listener.onChange(TENANCY_CHANNEL, (payload) => this.heard(payload)));
    }
    await this.readAll();
    if (!this.principals.get(LOCAL_ADMIN_ID)) await this.insertLocalAdmin();
    this.localCredential = await readLocalCredential(this.stateDir);
    this.loaded = true;
    this.freshness.loadedNow();
    this.logger.info({ principals: this.principals.entries.size, tokens: this.tokens.entries.size }, 'principal store loaded');
  }

  localToken(): string {
    if (!this.localCredential) throw new SwarmError('INTERNAL', 'principal store not opened');
    return this.localCredential.toString();
  }

  // ---- principals ----

  listPrincipals(): Principal[] {
    this.checkFresh();
    return [...this.principals.entries.values()].map((e) => e.record).sort((a, b) => a.id.localeCompare(b.id));
  }

  getPrincipal(id: string): Principal | undefined {
    this.checkFresh();
    return this.principals.get(id);
  }

  requirePrincipal(id: string): Principal {
    const found = this.getPrincipal(id);
    if (!found) throw new SwarmError('NOT_FOUND', `principal ${id} does not exist`, { field: 'principalId' });
    return found;
  }

  principalForSubject(subject: string): Principal | undefined {
    return this.listPrincipals().find((p) => p.subjects?.includes(subject) || (!p.subjects && p.id === subject));
  }

  async addPrincipal(input: NewPrincipal): Promise<Principal> {
    const principal = newPrincipalRecord(input, this.now());
    return this.track(
      this.pool.transaction(async (client) => {
        const { rows } = await client.query<{ version: string }>(
          `INSERT INTO principals (id, data, version) VALUES ($1, $2, nextval('tenancy_version_seq')) ON CONFLICT (id) DO NOTHING RETURNING version`,
          [principal.id, principal],
        );
        if (!rows.length) throw principalExists(principal.id);
        await this.announce(client, 'principal', principal.id, rows[0]!.version);
        this.principals.apply(principal.id, principal, BigInt(rows[0]!.version));
        return principal;
      }),
    );
  }

  /** Disables (or re-enables) a principal, changes its role or its quotas; every controller refuses or narrows on hearing it. */
  async updatePrincipal(id: string, change: PrincipalChange): Promise<Principal> {
    return this.track(
      this.pool.transaction(async (client) => {
        const { rows: found } = await client.query<{ data: unknown }>('SELECT data FROM principals WHERE id = $1 FOR UPDATE', [id]);
        if (!found.length) throw new SwarmError('NOT_FOUND', `principal ${id} does not exist`, { field: 'principalId' });
        const next = changedPrincipal(parsePrincipal(found[0]!.data, id), change);
        const { rows } = await client.query<{ version: string }>(
          `UPDATE principals SET data = $2, version = nextval('tenancy_version_seq'), updated_at = now() WHERE id = $1 RETURNING version`,
          [id, next],
        );
        await this.announce(client, 'principal', id, rows[0]!.version);
        this.principals.apply(id, next, BigInt(rows[0]!.version));
        return next;
      }),
    );
  }

  // ---- tokens ----

  async createToken(input: NewToken): Promise<{ token: string; info: TokenInfo }> {
    const { token, record } = newTokenRecord(input, (id) => this.requirePrincipal(id), this.now(), (id) => this.tokens.get(id) !== undefined);
    return this.track(
      this.pool.transaction(async (client) => {
        const { rows } = await client
          .query<{ version: string }>(
            `INSERT INTO tokens (id, principal_id, hash, data, created_at, expires_at, version)
             VALUES ($1, $2, $3, $4, $5, $6, nextval('tenancy_version_seq')) RETURNING version`,
            [record.id, record.principalId, record.hash, record, record.createdAt, record.expiresAt ?? null],
          )
          .catch((err: unknown) => {
            const code = (err as { code?: string }).code;
            if (code === '23503') throw new SwarmError('NOT_FOUND', `principal ${record.principalId} does not exist`, { field: 'principalId', cause: err });
            if (code === '23505') throw new SwarmError('CONFLICT', `token ${record.id} already exists; try again`, { field: 'tokenId', cause: err });
            throw err;
          });
        await this.announce(client, 'token', record.id, rows[0]!.version);
        this.tokens.apply(record.id, record, BigInt(rows[0]!.version));
        return { token, info: infoOf(record) };
      }),
    );
  }

  listTokens(principalId?: string): TokenInfo[] {
    this.checkFresh();
    return [...this.tokens.entries.values()]
      .map((e) => e.record)
      .filter((t) => !principalId || t.principalId === principalId)
      .map(infoOf)
      .sort((a, b) => a.createdAt.localeCompare(b.createdAt));
  }

  getToken(id: string): TokenInfo | undefined {
    this.checkFresh();
    const t = this.tokens.get(id);
    return t ? infoOf(t) : undefined;
  }

  async revokeToken(id: string): Promise<TokenInfo> {
    return this.track(
      this.pool.transaction(async (client) => {
        const { rows: found } = await client.query<{ data: unknown }>('SELECT data FROM tokens WHERE id = $1 FOR UPDATE', [id]);
        if (!found.length) throw new SwarmError('NOT_FOUND', `token ${id} does not exist`, { field: 'tokenId' });
        const current = parseToken(found[0]!.data, id);
        if (current.revokedAt) return infoOf(current);
        const revoked: TokenRecord = { ...current, revokedAt: this.now().toISOString() };
        const { rows } = await client.query<{ version: string }>(
          `UPDATE tokens SET data = $2, revoked_at = $3, version = nextval('tenancy_version_seq') WHERE id = $1 RETURNING version`,
          [id, revoked, revoked.revokedAt],
        );
        await this.announce(client, 'token', id, rows[0]!.version);
        this.tokens.apply(id, revoked, BigInt(rows[0]!.version));
        return infoOf(revoked);
      }),
    );
  }

  /** As the JSON store's; STORE_UNAVAILABLE (never a pass) while a revoke could have been missed. */
  authenticate(credential: string): Authenticated {
    this.checkFresh();
    const at = this.now();
    const { authenticated, record } = verifyCredential(credential, {
      local: this.localCredential,
      token: (id) => this.tokens.get(id),
      principal: (id) => this.principals.get(id),
      at,
    });
    if (record && useWorthRecording(record, at)) this.noteUse(record, at);
    return authenticated;
  }

  /** True when reads can be answered (opened, and no announcement can have been missed). */
  get available(): boolean {
    return this.freshness.available;
  }

  /** Waits for pending writes, stops following changes; the pool is the caller's. */
  async close(): Promise<void> {
    await Promise.allSettled([...this.pending]);
    for (const off of this.unsubscribe.splice(0)) await off().catch(() => undefined);
    if (this.ownsListener) await this.listener.close();
    this.freshness.stop();
  }

  // ---- internals ----

  private async insertLocalAdmin(): Promise<void> {
    const admin = localAdminRecord(this.now());
    await this.pool.transaction(async (client) => {
      // Several controllers may start at once: the first inserts, the others find it.
      const { rows } = await client.query<{ version: string }>(
        `INSERT INTO principals (id, data, version) VALUES ($1, $2, nextval('tenancy_version_seq')) ON CONFLICT (id) DO NOTHING RETURNING version`,
        [admin.id, admin],
      );
      if (!rows.length) return;
      await this.announce(client, 'principal', admin.id, rows[0]!.version);
      this.principals.apply(admin.id, admin, BigInt(rows[0]!.version));
    });
    if (!this.principals.get(LOCAL_ADMIN_ID)) await this.readAll();
  }

  /** Records a token's use in the cache at once (so the next request does not write again) and in the row after. */
  private noteUse(record: TokenRecord, at: Date): void {
    const entry = this.tokens.entries.get(record.id);
    if (entry) this.tokens.entries.set(record.id, { record: { ...record, lastUsedAt: at.toISOString() }, version: entry.version });
    void this.track(
      this.pool.query(`UPDATE tokens SET data = jsonb_set(data, '{lastUsedAt}', to_jsonb($2::text)) WHERE id = $1`, [record.id, at.toISOString()]),
    ).catch((err: unknown) => this.logger.warn({ tokenId: record.id, err: (err as Error).message }, 'could not record token use'));
  }

  private announce(client: Queryable, kind: Kind, id: string, version: string): Promise<void> {
    return notifyChange(client, TENANCY_CHANNEL, { kind, id, version } satisfies TenancyChange);
  }

  private track<T>(work: Promise<T>): Promise<T> {
    this.pending.add(work);
    const done = (): void => void this.pending.delete(work);
    work.then(done, done);
    return work;
  }

  private heard(payload: unknown): void {
    const change = payload as Partial<TenancyChange> | undefined;
    if (!change || typeof change.id !== 'string' || typeof change.version !== 'string' || (change.kind !== 'principal' && change.kind !== 'token')) return;
    const { kind, id } = change;
    const cache = kind === 'principal' ? this.principals : this.tokens;
    if (!cache.isNewer(id, BigInt(change.version))) return;
    // The announcement names the change; the row itself is read (it may be newer still).
    this.pool
      .query<Row>(`SELECT id, data, version FROM ${kind === 'principal' ? 'principals' : 'tokens'} WHERE id = $1`, [id])
      .then(({ rows }) => {
        const row = rows[0];
        if (!row) return;
        if (kind === 'principal') this.principals.apply(id, parsePrincipal(row.data, id), BigInt(row.version));
        else this.tokens.apply(id, parseToken(row.data, id), BigInt(row.version));
      })
      .catch((err: unknown) => {
        // A change is known to exist but not what it is (a revoke, perhaps): refuse until everything is re-read.
        this.logger.warn({ kind, id, err: (err as Error).message }, 'could not read an announced change; re-reading all');
        this.freshness.missed();
      });
  }

  /** Reads every principal and token; a row that is not a valid record is skipped (its tokens then fail). */
  private async readAll(): Promise<void> {
    const [principals, tokens] = await Promise.all([
      this.pool.query<Row>('SELECT id, data, version FROM principals'),
      this.pool.query<Row>('SELECT id, data, version FROM tokens'),
    ]);
    this.principals.replaceAll(this.validRows(principals.rows, (data, id) => parsePrincipal(data, id)));
    this.tokens.replaceAll(this.validRows(tokens.rows, (data, id) => parseToken(data, id)));
  }

  private validRows<T>(rows: Row[], parse: (data: unknown, id: string) => T): { id: string; record: T; version: bigint }[] {
    const out: { id: string; record: T; version: bigint }[] = [];
    for (const row of rows) {
      try {
        out.push({ id: row.id, record: parse(row.data, row.id), version: BigInt(row.version) });
      } catch (err) {
        this.logger.warn({ id: row.id, err: (err as Error).message }, 'tenancy row is not a valid record; skipped');
      }
    }
    return out;
  }

  private checkFresh(): void {
    this.freshness.check();
  }
}

function parsePrincipal(data: unknown, id: string): Principal {
  const parsed = PrincipalSchema.safeParse(data);
  if (!parsed.success || parsed.data.id !== id) throw new SwarmError('STATE_ERROR', `principal row ${id}: not a valid principal record`);
  return parsed.data;
}

function parseToken(data: unknown, id: string): TokenRecord {
  const parsed = TokenRecordSchema.safeParse(data);
  if (!parsed.success || parsed.data.id !== id) throw new SwarmError('STATE_ERROR', `token row ${id}: not a valid token record`);
  return parsed.data;
}
