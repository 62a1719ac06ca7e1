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

const TokenRecordSchema = z
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
type TokenRecord = z.infer<typeof TokenRecordSchema>;
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

export class PrincipalStore {
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
      this.principals.set(LOCAL_ADMIN_ID, { id: LOCAL_ADMIN_ID, name: 'Local administrator', kind: 'person', role: 'admin', createdAt: this.now().toISOString() });
      await this.save();
    }
    const secret = await readOrCreateSecret(path.join(this.stateDir, LOCAL_CREDENTIAL_FILE), 24);
    this.localCredential = Buffer.from(`${secret.toString('base64url')}`);
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
    const p = NewPrincipalSchema.parse(input);
    if (this.principals.has(p.id)) throw new SwarmError('CONFLICT', `principal ${p.id} already exists`, { field: 'id' });
    const principal: Principal = { id: p.id, name: p.name ?? p.id, kind: p.kind, role: p.role, createdAt: this.now().toISOString(), ...(p.quotas ? { quotas: p.quotas } : {}), ...(p.subjects ? { subjects: p.subjects } : {}) };
    this.principals.set(p.id, principal);
    await this.save();
    return principal;
  }

  /** Disables (or re-enables) a principal, changes its role or its quotas; takes effect on the next request. */
  async updatePrincipal(id: string, change: { disabled?: boolean; role?: Role; quotas?: Principal['quotas'] }): Promise<Principal> {
    const current = this.requirePrincipal(id);
    if (id === LOCAL_ADMIN_ID && (change.disabled || (change.role && change.role !== 'admin'))) {
      throw invalidInput('principalId', 'another principal: the local admin cannot be disabled or demoted (it is whoever runs the controller)', id);
    }
    const next: Principal = { ...current, ...(change.role ? { role: change.role } : {}), ...(change.quotas ? { quotas: change.quotas } : {}) };
    if (change.disabled !== undefined) {
      if (change.disabled) next.disabled = true;
      else delete next.disabled;
    }
    this.principals.set(id, next);
    await this.save();
    return next;
  }

  // ---- tokens ----

  /** Makes a token; the returned `token` is the only time its secret exists outside the caller's hands. */
  async createToken(input: NewToken): Promise<{ token: string; info: TokenInfo }> {
    const t = NewTokenSchema.parse(input);
    const principal = this.requirePrincipal(t.principalId);
    const allowed = ROLE_SCOPES[principal.role];
    const scopes = t.scopes ? [...new Set(t.scopes)] : [...allowed];
    const beyond = scopes.filter((s) => !allowed.includes(s));
    if (beyond.length) throw invalidInput('scopes', `scopes within the ${principal.role} role (${allowed.join(', ')})`, beyond.join(', '));
    let id: string;
    do id = `t${randomBytes(6).toString('hex')}`;
    while (this.tokens.has(id));
    const secret = randomBytes(32).toString('base64url');
    const at = this.now();
    const record: TokenRecord = {
      id,
      principalId: principal.id,
      name: t.name,
      hash: sha256(secret),
      scopes: SCOPES.filter((s) => scopes.includes(s)),
      createdAt: at.toISOString(),
      ...(t.expiresInDays ? { expiresAt: new Date(at.getTime() + t.expiresInDays * 86_400_000).toISOString() } : {}),
    };
    this.tokens.set(id, record);
    await this.save();
    return { token: `vss_${id}_${secret}`, info: infoOf(record) };
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
    if (this.localCredential && credential.length === this.localCredential.length && timingSafeEqual(Buffer.from(credential), this.localCredential)) {
      const principal = this.requirePrincipal(LOCAL_ADMIN_ID);
      return { principal, credentialId: LOCAL_CREDENTIAL_ID, scopes: [...SCOPES] };
    }
    const match = TOKEN_PATTERN.exec(credential);
    if (!match) throw new SwarmError('UNAUTHENTICATED', 'malformed or unknown token');
    const record = this.tokens.get(match[1]!);
    const given = Buffer.from(sha256(match[2]!), 'hex');
    // Compared even for an unknown id, so that timing does not tell which ids exist.
    const stored = Buffer.from(record?.hash ?? '0'.repeat(64), 'hex');
    if (!timingSafeEqual(given, stored) || !record) throw new SwarmError('UNAUTHENTICATED', 'malformed or unknown token');
    if (record.revokedAt) throw new SwarmError('UNAUTHENTICATED', `token ${record.id} was revoked`);
    const at = this.now();
    if (record.expiresAt && Date.parse(record.expiresAt) <= at.getTime()) throw new SwarmError('UNAUTHENTICATED', `token ${record.id} expired at ${record.expiresAt}`);
    const principal = this.principals.get(record.principalId);
    if (!principal || principal.disabled) throw new SwarmError('UNAUTHENTICATED', `principal ${record.principalId} is disabled`);
    this.noteUse(record, at);
    return { principal, credentialId: record.id, scopes: record.scopes.filter((s) => ROLE_SCOPES[principal.role].includes(s)) };
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
    const last = record.lastUsedAt ? Date.parse(record.lastUsedAt) : 0;
    if (at.getTime() - last < LAST_USED_WRITE_MS) return;
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

function sha256(text: string): string {
  return createHash('sha256').update(text).digest('hex');
}

function infoOf(record: TokenRecord): TokenInfo {
  const { hash: _hash, ...info } = record;
  return info;
}
