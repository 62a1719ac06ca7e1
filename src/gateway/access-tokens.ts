/**
 * Access tokens for the gateway: Ed25519 signed, expiring, bound to one instance and to that
 * instance's access epoch (bumping the epoch revokes every token and session issued before).
 *
 * Two kinds share one format, `v2.<payload>.<signature>` (base64url):
 *   - a link token travels in the URL the controller hands out and is good for one exchange;
 *   - a session token lives in an HttpOnly cookie scoped to the instance's host name.
 * The kind is inside the signed payload, so one can never stand in for the other.
 *
 * The signature is asymmetric so that a party can verify tokens without being able to mint them: the
 * AWS host agents get only the central gateway's public key (they check its links, they cannot issue
 * any), and sign their own sessions with a key of their own, which no other host and no other
 * gateway accepts.
 */
import { createHash, createPrivateKey, createPublicKey, randomBytes, sign, verify, type KeyObject } from 'node:crypto';
import { promises as fs } from 'node:fs';
import path from 'node:path';
import { SwarmError } from '../errors.js';
import { writeFileAtomic } from '../state/atomic-file.js';
import { readOrCreateSecret } from '../state/secret-file.js';

export type TokenKind = 'link' | 'session';

export interface TokenClaims {
  kind: TokenKind;
  instanceId: string;
  epoch: number;
  /** Expiry, ms since the epoch. */
  expiresAt: number;
  /** Unique id; link tokens are spent by it. */
  jti: string;
}

export type VerifyResult = { ok: true; claims: TokenClaims } | { ok: false; reason: 'malformed' | 'bad-signature' | 'expired' | 'wrong-kind' };

/** What signs and what verifies: without `signing` the tokens can be checked but not issued. */
export interface TokenKeys {
  signing?: KeyObject;
  verifying: KeyObject;
}

const VERSION = 'v2';
/** Far beyond any real token; longer input is refused before any work. */
export const MAX_TOKEN_LENGTH = 512;
/** PKCS#8 DER header of an Ed25519 private key; the 32-byte seed follows it. */
const ED25519_PKCS8_PREFIX = Buffer.from('302e020100300506032b657004220420', 'hex');
/** SPKI DER header of an Ed25519 public key; the 32 raw bytes follow it. */
const ED25519_SPKI_PREFIX = Buffer.from('302a300506032b6570032100', 'hex');

export class AccessTokens {
  constructor(
    private readonly keys: TokenKeys,
    private readonly now: () => number = Date.now,
  ) {
    if (keys.verifying.asymmetricKeyType !== 'ed25519') throw new SwarmError('INVALID_INPUT', 'gateway key: expected an Ed25519 public key');
  }

  /** Whether this side can issue tokens (it holds the private key). */
  get canIssue(): boolean {
    return this.keys.signing !== undefined;
  }

  issue(kind: TokenKind, instanceId: string, epoch: number, ttlMs: number): { token: string; claims: TokenClaims } {
    const key = this.keys.signing;
    if (!key) throw new SwarmError('FORBIDDEN', `access tokens: this side holds only the public key; it can check ${kind} tokens but not issue them`);
    const claims: TokenClaims = { kind, instanceId, epoch, expiresAt: this.now() + ttlMs, jti: randomBytes(12).toString('base64url') };
    const payload = Buffer.from(JSON.stringify({ k: kind, i: instanceId, e: epoch, x: claims.expiresAt, j: claims.jti })).toString('base64url');
    const signature = sign(null, Buffer.from(`${VERSION}.${payload}`), key).toString('base64url');
    return { token: `${VERSION}.${payload}.${signature}`, claims };
  }

  /** Checks format, signature, kind and expiry; the caller checks instance, epoch and (for links) reuse. */
  verify(token: string | undefined, kind: TokenKind): VerifyResult {
    if (!token || token.length > MAX_TOKEN_LENGTH) return { ok: false, reason: 'malformed' };
    const parts = token.split('.');
    if (parts.length !== 3 || parts[0] !== VERSION || !parts[1] || !parts[2]) return { ok: false, reason: 'malformed' };
    const signature = Buffer.from(parts[2], 'base64url');
    if (signature.length !== 64 || !verify(null, Buffer.from(`${VERSION}.${parts[1]}`), this.keys.verifying, signature)) return { ok: false, reason: 'bad-signature' };
    let raw: { k?: unknown; i?: unknown; e?: unknown; x?: unknown; j?: unknown };
    try {
      raw = JSON.parse(Buffer.from(parts[1], 'base64url').toString('utf8'));
    } catch {
      return { ok: false, reason: 'malformed' };
    }
    if (typeof raw.i !== 'string' || typeof raw.e !== 'number' || typeof raw.x !== 'number' || typeof raw.j !== 'string') {
      return { ok: false, reason: 'malformed' };
    }
    if (raw.k !== kind) return { ok: false, reason: 'wrong-kind' };
    if (raw.x <= this.now()) return { ok: false, reason: 'expired' };
    return { ok: true, claims: { kind, instanceId: raw.i, epoch: raw.e, expiresAt: raw.x, jti: raw.j } };
  }
}

/** The Ed25519 private key whose seed is these 32 bytes. */
export function signingKeyFromSeed(seed: Buffer): KeyObject {
  if (seed.length !== 32) throw new SwarmError('INVALID_INPUT', `gateway key: expected a 32-byte Ed25519 seed (got ${seed.length} bytes)`);
  return createPrivateKey({ key: Buffer.concat([ED25519_PKCS8_PREFIX, seed]), format: 'der', type: 'pkcs8' });
}

/**
 * The key a configured `gateway.secret` stands for: its SHA-256 is the Ed25519 seed, so every gateway
 * given the same secret signs alike, and a host can be given the matching public key instead.
 */
export function signingKeyFromSecret(secret: string): KeyObject {
  if (Buffer.byteLength(secret, 'utf8') < 32) throw new SwarmError('INVALID_INPUT', 'gateway secret: expected at least 32 bytes');
  return signingKeyFromSeed(createHash('sha256').update('vscode-swarm gateway ed25519 v1\0').update(secret, 'utf8').digest());
}

/** A public key as text: the 32 raw bytes, base64url (43 characters), as `--gateway-public-key` takes it. */
export function publicKeyText(key: KeyObject): string {
  const spki = createPublicKey(key).export({ format: 'der', type: 'spki' });
  return spki.subarray(ED25519_SPKI_PREFIX.length).toString('base64url');
}

/** Reads publicKeyText()'s form back, naming the field when it is not one. */
export function parsePublicKey(text: string, field = 'gatewayPublicKey'): KeyObject {
  const raw = /^[A-Za-z0-9_-]{43}$/.test(text.trim()) ? Buffer.from(text.trim(), 'base64url') : Buffer.alloc(0);
  if (raw.length !== 32) {
    throw new SwarmError('INVALID_INPUT', `${field}: expected an Ed25519 public key as 43 base64url characters (got ${text.length} characters)`, { field });
  }
  return createPublicKey({ key: Buffer.concat([ED25519_SPKI_PREFIX, raw]), format: 'der', type: 'spki' });
}

/**
 * Where the signing seed is kept when no secret is configured and several gateways must sign alike
 * (PostgreSQL: src/store/postgres/gateway-key.ts); without one it is the state directory's file.
 */
export interface SigningSeedStore {
  /** The stored seed; when there is none yet, `initial()` is stored first (of gateways starting at once, one wins and all get it). */
  seed(initial: () => Promise<Buffer>): Promise<Buffer>;
}

/**
 * The signing key: from the configured secret, else from `shared` when given (first filled with this state
 * directory's seed file if it has one, so links it signed stay valid; else a new seed), else the Ed25519 seed
 * in `<stateDir>/gateway/ed25519.key` (created once, mode 0600).
 */
export async function loadOrCreateSigningKey(stateDir: string, configured?: string, shared?: SigningSeedStore): Promise<KeyObject> {
  if (configured) return signingKeyFromSecret(configured);
  if (shared) return signingKeyFromSeed(await shared.seed(async () => (await readSigningSeed(stateDir)) ?? randomBytes(32)));
  const seed = await readOrCreateSecret(signingSeedFile(stateDir), 32);
  return signingKeyFromSeed(seed.subarray(0, 32));
}

/** The state directory's seed file. */
export function signingSeedFile(stateDir: string): string {
  return path.join(stateDir, 'gateway', 'ed25519.key');
}

/** The state directory's 32-byte seed, or undefined when it has none (nothing is created). */
export async function readSigningSeed(stateDir: string): Promise<Buffer | undefined> {
  let text: string;
  try {
    text = await fs.readFile(signingSeedFile(stateDir), 'utf8');
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return undefined;
    throw new SwarmError('STATE_ERROR', `gateway key: cannot read ${signingSeedFile(stateDir)}: ${(err as Error).message}`, { cause: err });
  }
  const seed = Buffer.from(text.trim(), 'base64url');
  return seed.length >= 32 ? seed.subarray(0, 32) : undefined;
}

/** Writes the state directory's seed file as readOrCreateSecret makes it (base64url, mode 0600, folder 0700). */
export async function writeSigningSeed(stateDir: string, seed: Buffer): Promise<void> {
  signingKeyFromSeed(seed); // refuses anything but 32 bytes
  await fs.mkdir(path.dirname(signingSeedFile(stateDir)), { recursive: true, mode: 0o700 });
  await writeFileAtomic(signingSeedFile(stateDir), seed.toString('base64url'));
}

/**
 * Link tokens already exchanged, until they expire: a link works once, so a leaked URL (history,
 * screenshots, logs) does not open the editor again. Persisted so a restart does not re-arm them.
 *
 * A missing file is a fresh start. A file that exists but cannot be read or parsed is not: forgetting it
 * would let every used link be replayed, so spending fails (STATE_ERROR) until the file is repaired or
 * removed; each spend tries to read it again, so a repair takes effect without a restart.
 */
export class SpentLinks {
  private readonly spent = new Map<string, number>();
  readonly file: string;
  private loading?: Promise<void>;
  private writing: Promise<void> = Promise.resolve();

  constructor(
    stateDir: string,
    private readonly now: () => number = Date.now,
  ) {
    this.file = path.join(stateDir, 'gateway', 'spent-links.json');
  }

  /** Marks a link spent; false when it already was. Throws STATE_ERROR when the record cannot be read or written. */
  async spend(claims: TokenClaims): Promise<boolean> {
    await this.load();
    this.prune();
    if (this.spent.has(claims.jti)) return false;
    this.spent.set(claims.jti, claims.expiresAt);
    await this.save(); // on failure kept spent in memory: refusing the link again is the safe side
    return true;
  }

  /** The links spent and not yet expired, link id → expiry (ms): what `store export|import` moves. */
  async unexpired(): Promise<Map<string, number>> {
    await this.load();
    this.prune();
    return new Map(this.spent);
  }

  /** Replaces what is recorded with `entries` (link id → expiry, ms), for `store export`. */
  async replaceAll(entries: ReadonlyMap<string, number>): Promise<void> {
    this.loading = Promise.resolve();
    this.spent.clear();
    for (const [jti, exp] of entries) this.spent.set(jti, exp);
    await this.save();
  }

  private async save(): Promise<void> {
    const snapshot = JSON.stringify(Object.fromEntries(this.spent));
    // Chained so writes land in order; a failed write does not stop the ones after it.
    const write = this.writing.then(async () => {
      await fs.mkdir(path.dirname(this.file), { recursive: true, mode: 0o700 });
      await writeFileAtomic(this.file, snapshot);
    });
    this.writing = write.catch(() => undefined);
    try {
      await write;
    } catch (err) {
      throw new SwarmError('STATE_ERROR', `spent links: cannot write ${this.file}: ${(err as Error).message}`, { cause: err });
    }
  }

  /** Every spend awaits the one read of the file, so a burst right after a restart cannot slip past it. */
  private load(): Promise<void> {
    this.loading ??= this.read().catch((err: unknown) => {
      this.loading = undefined; // read again on the next spend
      throw err;
    });
    return this.loading;
  }

  private async read(): Promise<void> {
    let text: string;
    try {
      text = await fs.readFile(this.file, 'utf8');
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'ENOENT') return; // never written: nothing spent yet
      throw new SwarmError('STATE_ERROR', `spent links: cannot read ${this.file}: ${(err as Error).message}`, { cause: err });
    }
    let raw: unknown;
    try {
      raw = JSON.parse(text);
    } catch (err) {
      throw new SwarmError('STATE_ERROR', `spent links: ${this.file} is not valid JSON (${(err as Error).message}); repair or remove it`, { cause: err });
    }
    if (typeof raw !== 'object' || raw === null || Array.isArray(raw)) {
      throw new SwarmError('STATE_ERROR', `spent links: ${this.file}: expected an object of link id → expiry; repair or remove it`);
    }
    const entries = Object.entries(raw);
    const bad = entries.find(([, exp]) => typeof exp !== 'number' || !Number.isFinite(exp));
    if (bad) throw new SwarmError('STATE_ERROR', `spent links: ${this.file}: ${JSON.stringify(bad[0])}: expected an expiry in ms; repair or remove it`);
    for (const [jti, exp] of entries) this.spent.set(jti, exp as number);
  }

  private prune(): void {
    const now = this.now();
    for (const [jti, exp] of this.spent) if (exp <= now) this.spent.delete(jti);
  }
}
