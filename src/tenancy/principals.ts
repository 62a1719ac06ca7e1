/**
 * Principals and their API tokens, kept in `<stateDir>/principals.json` (mode 0600, written atomically).
 *
 * A token is shown once, when made: `vss_<id>_<secret>`. Only the SHA-256 of the secret is stored (the
 * secret is 32 random bytes, so a fast hash is as strong as a slow one), compared in constant time. A
 * revoked, expired or disabled principal's token fails on the very next request: every check reads the
 * in-memory copy that every change goes through first. `lastUsedAt` is written at most once a minute
 * per token, so a busy token does not turn every request into a disk write.
 *
 * The local admin always exists. Its local credential is `<stateDir>/mcp-http.token`, readable only by
 * the user who runs the controller: the CLI uses it to talk to a running controller, and MCP clients set
 * up before tenancy keep working with it.
 *
 * PrincipalDirectory is what the doors use; with a database, PgPrincipalStore
 * (src/store/postgres/principal-store.ts) implements it with the same rules, shared from the end of this file.
 */
import { createHash, randomBytes, timingSafeEqual } from 'node:crypto';
import { promises as fs } from 'node:fs';
import path from 'node:path';
import { z } from 'zod';
import { SwarmError, invalidInput } from '../errors.js';
import { silentLogger, type Logger } from '../logger.js';
import { writeJsonAtomic } from '../state/atomic-file.js';
import { readOrCreateSecret } from '../state/secret-file.js';
import { LOCAL_ADMIN_ID, PrincipalIdSchema, RoleSchema, ScopeSchema, SCOPES, ROLE_SCOPES, type Role, type Scope } from './identity.js';
import { QuotaLimitsSchema } from './quotas.js';

export const PrincipalSchema = z
  .object({
    id: PrincipalIdSchema,
    name: z.string().min(1).max(128),
    kind: z.enum(['person', 'service']),
    role: RoleSchema,
    disabled: z.boolean().optional(),
    /** Limits for this principal that differ from its role's defaults. */
    quotas: QuotaLimitsSchema.optional(),
    /** OAuth subjects (the configured claim's values) that sign in as this principal. */
    subjects: z.array(z.string().min(1).max(256)).max(16).optional(),
    createdAt: z.string(),
  })
  .strict();
export type Principal = z.infer<typeof PrincipalSchema>;

export const TokenRecordSchema = z
  .object({
    id: z.string().regex(/^t[0-9a-f]{12}$/),
    principalId: PrincipalIdSchema,
    name: z.string().min(1).max(128),
    /** SHA-256 of the secret, hex. */
    hash: z.string().regex(/^[0-9a-f]{64}$/),
    scopes: z.array(ScopeSchema),
    createdAt: z.string(),
    expiresAt: z.string().optional(),
    lastUsedAt: z.string().optional(),
    revokedAt: z.string().optional(),
  })
  .strict();
export type TokenRecord = z.infer<typeof TokenRecordSchema>;
/** What is shown about a token: everything but its hash. */
export type TokenInfo = Omit<TokenRecord, 'hash'>;

const FileSchema = z.object({ version: z.literal(1), principals: z.array(PrincipalSchema), tokens: z.array(TokenRecordSchema) }).strict();

export const NewPrincipalSchema = z
  .object({
    id: PrincipalIdSchema,
    name: z.string().min(1).max(128).optional(),
    kind: z.enum(['person', 'service']).default('person'),
    role: RoleSchema.default('member'),
    quotas: QuotaLimitsSchema.optional(),
    subjects: z.array(z.string().min(1).max(256)).max(16).optional(),
  })
  .strict();
export type NewPrincipal = z.input<typeof NewPrincipalSchema>;

export const NewTokenSchema = z
  .object({
    principalId: PrincipalIdSchema,
    name: z.string().min(1).max(128),
    /** Defaults to everything the principal's role allows. */
    scopes: z.array(ScopeSchema).min(1).optional(),
    expiresInDays: z.number().int().min(1).max(3650).optional(),
  })
  .strict();
export type NewToken = z.input<typeof NewTokenSchema>;

export interface Authenticated {
  principal: Principal;
  /** The token used; `local` for the local admin's credential file. */
  credentialId: string;
  scopes: Scope[];
}

const TOKEN_PATTERN = /^vss_(t[0-9a-f]{12})_([A-Za-z0-9_-]{43})$/;
const LAST_USED_WRITE_MS = 60_000;
export const LOCAL_CREDENTIAL_ID = 'local';
export const LOCAL_CREDENTIAL_FILE = 'mcp-http.token';

/**
 * What the controller and its doors need from wherever principals and token hashes live: the JSON file of
 * PrincipalStore (the embedded default) or PostgreSQL (PgPrincipalStore, several controllers on one
 * database). Reads and authenticate() are synchronous, answered from memory that every change goes through
 * first; writes are async and authoritative.
 */
export interface PrincipalDirectory {
  /** Reads what is stored and makes sure the local admin and this machine's local credential exist. */
  open(): Promise<void>;
  /** The local admin's credential (the text of mcp-http.token), for `up` to print and the CLI to send. */
  localToken(): string;
  listPrincipals(): Principal[];
  getPrincipal(id: string): Principal | undefined;
  requirePrincipal(id: string): Principal;
  /** The principal an OAuth subject signs in as, if any. */
  principalForSubject(subject: string): Principal | undefined;
  addPrincipal(input: NewPrincipal): Promise<Principal>;
  updatePrincipal(id: string, change: PrincipalChange): Promise<Principal>;
  /** Makes a token; the returned `token` is the only time its secret exists outside the caller's hands. */
  createToken(input: NewToken): Promise<{ token: string; info: TokenInfo }>;
  listTokens(principalId?: string): TokenInfo[];
  getToken(id: string): TokenInfo | undefined;
  revokeToken(id: string): Promise<TokenInfo>;
  /** The principal behind a bearer credential, or UNAUTHENTICATED with a reason that never repeats the credential. */
  authenticate(credential: string): Authenticated;
  /** Waits for pending writes (last-use times included). */
  close(): Promise<void>;
}

export type PrincipalChange = { disabled?: boolean; role?: Role; quotas?: Principal['quotas'] };

export class PrincipalStore implements PrincipalDirectory {
  private readonly file: string;
  private readonly stateDir: string;
  private readonly logger: Logger;
  private readonly now: () => Date;
  private principals = new Map<string, Principal>();
  private tokens = new Map<string, TokenRecord>();
  private localCredential?: Buffer;
  private writes: Promise<void> = Promise.resolve();
  private lastUsedTimer?: NodeJS.Timeout;

  constructor(options: { stateDir: string; logger?: Logger; now?: () => Date }) {
    this.stateDir = options.stateDir;
    this.file = path.join(options.stateDir, 'principals.json');
    this.logger = (options.logger ?? silentLogger()).child({ component: 'principals' });
    this.now = options.now ?? (() => new Date());
  }

  /** Reads the file (a missing one is an empty store) and makes sure the local admin and its credential exist. */
  async open(): Promise<void> {
    let raw: string | undefined;
    try {
      raw = await fs.readFile(this.file, 'utf8');
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw new SwarmError('STATE_ERROR', `could not read ${this.file}: ${(err as Error).message}`, { cause: err });
    }
    if (raw !== undefined) {
      let parsed;
      try {
        parsed = FileSchema.safeParse(JSON.parse(raw));
      } catch (err) {
        parsed = { success: false as const, error: err };
      }
      // Refusing to start is right here: guessing would either lock everyone out or let a revoked token back in.
      if (!parsed.success) throw new SwarmError('STATE_ERROR', `${this.file} is not a valid principals file; fix or move it aside (${String(parsed.error).slice(0, 300)})`);
      this.principals = new Map(parsed.data.principals.map((p) => [p.id, p]));
      this.tokens = new Map(parsed.data.tokens.map((t) => [t.id, t]));
    }
    if (!this.principals.has(LOCAL_ADMIN_ID)) {
      this.principals.set(LOCAL_ADMIN_ID, localAdminRecord(this.now()));
      await this.save();
    }
    this.localCredential = await readLocalCredential(this.stateDir);
  }

  /** The local admin's credential (the text of mcp-http.token), for `up` to print and the CLI to send. */
  localToken(): string {
    if (!this.localCredential) throw new SwarmError('INTERNAL', 'principal store not opened');
    return this.localCredential.toString();
  }

  // ---- principals ----

  listPrincipals(): Principal[] {
    return [...this.principals.values()].sort((a, b) => a.id.localeCompare(b.id));
  }

  getPrincipal(id: string): Principal | undefined {
    return this.principals.get(id);
  }

  requirePrincipal(id: string): Principal {
    const found = this.principals.get(id);
    if (!found) throw new SwarmError('NOT_FOUND', `principal ${id} does not exist`, { field: 'principalId' });
    return found;
  }

  /** The principal an OAuth subject signs in as, if any. */
  principalForSubject(subject: string): Principal | undefined {
    for (const p of this.principals.values()) if (p.subjects?.includes(subject) || (!p.subjects && p.id === subject)) return p;
    return undefined;
  }

  async addPrincipal(input: NewPrincipal): Promise<Principal> {
    const principal = newPrincipalRecord(input, this.now());
    if (this.principals.has(principal.id)) throw principalExists(principal.id);
    this.principals.set(principal.id, principal);
    await this.save();
    return principal;
  }

  /** Disables (or re-enables) a principal, changes its role or its quotas; takes effect on the next request. */
  async updatePrincipal(id: string, change: PrincipalChange): Promise<Principal> {
    const next = changedPrincipal(this.requirePrincipal(id), change);
    this.principals.set(id, next);
    await this.save();
    return next;
  }

  // ---- tokens ----

  /** Makes a token; the returned `token` is the only time its secret exists outside the caller's hands. */
  async createToken(input: NewToken): Promise<{ token: string; info: TokenInfo }> {
    const { token, record } = newTokenRecord(input, (id) => this.requirePrincipal(id), this.now(), (id) => this.tokens.has(id));
    this.tokens.set(record.id, record);
    await this.save();
    return { token, info: infoOf(record) };
  }

  listTokens(principalId?: string): TokenInfo[] {
    return [...this.tokens.values()].filter((t) => !principalId || t.principalId === principalId).map(infoOf).sort((a, b) => a.createdAt.localeCompare(b.createdAt));
  }

  getToken(id: string): TokenInfo | undefined {
    const t = this.tokens.get(id);
    return t ? infoOf(t) : undefined;
  }

  async revokeToken(id: string): Promise<TokenInfo> {
    const t = this.tokens.get(id);
    if (!t) throw new SwarmError('NOT_FOUND', `token ${id} does not exist`, { field: 'tokenId' });
    if (!t.revokedAt) {
      const revoked = { ...t, revokedAt: this.now().toISOString() };
      this.tokens.set(id, revoked);
      await this.save();
      return infoOf(revoked);
    }
    return infoOf(t);
  }

  /**
   * The principal behind a bearer credential, or UNAUTHENTICATED with a reason that never repeats the
   * credential. Reasons are deliberately coarse towards the caller where detail would help a guesser.
   */
  authenticate(credential: string): Authenticated {
    const at = this.now();
    const { authenticated, record } = verifyCredential(credential, {
      local: this.localCredential,
      token: (id) => this.tokens.get(id),
      principal: (id) => this.principals.get(id),
      at,
    });
    if (record) this.noteUse(record, at);
    return authenticated;
  }

  /** Waits for pending writes (last-use times included). */
  async close(): Promise<void> {
    if (this.lastUsedTimer) {
      clearTimeout(this.lastUsedTimer);
      this.lastUsedTimer = undefined;
      await this.save();
    }
    await this.writes;
  }

  private noteUse(record: TokenRecord, at: Date): void {
    if (!useWorthRecording(record, at)) return;
    this.tokens.set(record.id, { ...record, lastUsedAt: at.toISOString() });
    this.lastUsedTimer ??= setTimeout(() => {
      this.lastUsedTimer = undefined;
      void this.save().catch((err) => this.logger.warn({ err: (err as Error).message }, 'could not record token use'));
    }, 1_000).unref();
  }

  /** Writes the whole store; writes are queued so the file always ends as the latest state. */
  private save(): Promise<void> {
    const run = this.writes.catch(() => undefined).then(async () => {
      await fs.mkdir(this.stateDir, { recursive: true, mode: 0o700 });
      await writeJsonAtomic(this.file, { version: 1, principals: this.listPrincipals(), tokens: [...this.tokens.values()] }); // mode 0600
    });
    this.writes = run;
    return run.catch((err) => {
      throw new SwarmError('STATE_ERROR', `could not write ${this.file}: ${(err as Error).message}`, { cause: err });
    });
  }
}

// ---- the rules both stores share (the JSON file above, PostgreSQL in src/store/postgres/principal-store.ts) ----

/**
 * The local admin's credential: `<stateDir>/mcp-http.token`, made on first use. It stays a file on each
 * controller's machine whatever the store: it proves "whoever runs this controller", which is machine-local.
 */
export async function readLocalCredential(stateDir: string): Promise<Buffer> {
  const secret = await readOrCreateSecret(path.join(stateDir, LOCAL_CREDENTIAL_FILE), 24);
  return Buffer.from(secret.toString('base64url'));
}

export function localAdminRecord(at: Date): Principal {
  return { id: LOCAL_ADMIN_ID, name: 'Local administrator', kind: 'person', role: 'admin', createdAt: at.toISOString() };
}

/** A new principal from its input (checked); whether the id is taken is for the store to say (principalExists). */
export function newPrincipalRecord(input: NewPrincipal, at: Date): Principal {
  const p = NewPrincipalSchema.parse(input);
  return { id: p.id, name: p.name ?? p.id, kind: p.kind, role: p.role, createdAt: at.toISOString(), ...(p.quotas ? { quotas: p.quotas } : {}), ...(p.subjects ? { subjects: p.subjects } : {}) };
}

export function principalExists(id: string): SwarmError {
  return new SwarmError('CONFLICT', `principal ${id} already exists`, { field: 'id' });
}

/** The principal after a change; the local admin cannot be disabled or demoted. */
export function changedPrincipal(current: Principal, change: PrincipalChange): Principal {
  if (current.id === LOCAL_ADMIN_ID && (change.disabled || (change.role && change.role !== 'admin'))) {
    throw invalidInput('principalId', 'another principal: the local admin cannot be disabled or demoted (it is whoever runs the controller)', current.id);
  }
  const next: Principal = { ...current, ...(change.role ? { role: change.role } : {}), ...(change.quotas ? { quotas: change.quotas } : {}) };
  if (change.disabled !== undefined) {
    if (change.disabled) next.disabled = true;
    else delete next.disabled;
  }
  return next;
}

/** A new token for a principal (found by `principalOf`, which throws when there is none), its scopes within its role. */
export function newTokenRecord(input: NewToken, principalOf: (id: string) => Principal, at: Date, taken: (id: string) => boolean): { token: string; record: TokenRecord } {
  const t = NewTokenSchema.parse(input);
  const principal = principalOf(t.principalId);
  const allowed = ROLE_SCOPES[principal.role];
  const scopes = t.scopes ? [...new Set(t.scopes)] : [...allowed];
  const beyond = scopes.filter((s) => !allowed.includes(s));
  if (beyond.length) throw invalidInput('scopes', `scopes within the ${principal.role} role (${allowed.join(', ')})`, beyond.join(', '));
  let id: string;
  do id = `t${randomBytes(6).toString('hex')}`;
  while (taken(id));
  const secret = randomBytes(32).toString('base64url');
  const record: TokenRecord = {
    id,
    principalId: principal.id,
    name: t.name,
    hash: sha256(secret),
    scopes: SCOPES.filter((s) => scopes.includes(s)),
    createdAt: at.toISOString(),
    ...(t.expiresInDays ? { expiresAt: new Date(at.getTime() + t.expiresInDays * 86_400_000).toISOString() } : {}),
  };
  return { token: `vss_${id}_${secret}`, record };
}

export interface CredentialLookup {
  /** The local admin's credential, once read. */
  local: Buffer | undefined;
  token(id: string): TokenRecord | undefined;
  principal(id: string): Principal | undefined;
  at: Date;
}

/**
 * Checks a bearer credential against what the store holds: the local credential, else a token by id and
 * hash (in constant time), not revoked, not expired, of an enabled principal. `record` is the token used.
 * Reasons are deliberately coarse towards the caller where detail would help a guesser.
 */
export function verifyCredential(credential: string, lookup: CredentialLookup): { authenticated: Authenticated; record?: TokenRecord } {
  const local = lookup.local;
  if (local && credential.length === local.length && timingSafeEqual(Buffer.from(credential), local)) {
    const principal = lookup.principal(LOCAL_ADMIN_ID);
    if (!principal) throw new SwarmError('NOT_FOUND', `principal ${LOCAL_ADMIN_ID} does not exist`, { field: 'principalId' });
    return { authenticated: { principal, credentialId: LOCAL_CREDENTIAL_ID, scopes: [...SCOPES] } };
  }
  const match = TOKEN_PATTERN.exec(credential);
  if (!match) throw new SwarmError('UNAUTHENTICATED', 'malformed or unknown token');
  const record = lookup.token(match[1]!);
  const given = Buffer.from(sha256(match[2]!), 'hex');
  // Compared even for an unknown id, so that timing does not tell which ids exist.
  const stored = Buffer.from(record?.hash ?? '0'.repeat(64), 'hex');
  if (!timingSafeEqual(given, stored) || !record) throw new SwarmError('UNAUTHENTICATED', 'malformed or unknown token');
  if (record.revokedAt) throw new SwarmError('UNAUTHENTICATED', `token ${record.id} was revoked`);
  if (record.expiresAt && Date.parse(record.expiresAt) <= lookup.at.getTime()) throw new SwarmError('UNAUTHENTICATED', `token ${record.id} expired at ${record.expiresAt}`);
  const principal = lookup.principal(record.principalId);
  if (!principal || principal.disabled) throw new SwarmError('UNAUTHENTICATED', `principal ${record.principalId} is disabled`);
  return { authenticated: { principal, credentialId: record.id, scopes: record.scopes.filter((s) => ROLE_SCOPES[principal.role].includes(s)) }, record };
}

/** True when a token's last use is old enough to record again (at most once a minute per token). */
export function useWorthRecording(record: TokenRecord, at: Date): boolean {
  const last = record.lastUsedAt ? Date.parse(record.lastUsedAt) : 0;
  return at.getTime() - last >= LAST_USED_WRITE_MS;
}

function sha256(text: string): string {
  return createHash('sha256').update(text).digest('hex');
}

export function infoOf(record: TokenRecord): TokenInfo {
  const { hash: _hash, ...info } = record;
  return info;
}
