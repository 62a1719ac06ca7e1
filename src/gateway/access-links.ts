/**
 * Where users open an instance and the tokens that let them in: `<scheme>://<id>.<baseDomain>:<port>/`.
 * The controller issues links with it; the gateway checks what comes back with the same keys.
 *
 * A host agent's proxy uses it in verify-only mode (`linkPublicKey`): links are checked with the central
 * gateway's public key and cannot be issued here, and the sessions it hands out are signed with the
 * host's own key (its state directory), which no other host and not the central gateway accept.
 */
import type { GatewayConfig } from '../config.js';
import { AccessTokens, SpentLinks, loadOrCreateSigningKey, parsePublicKey, publicKeyText, type SigningSeedStore, type TokenClaims, type TokenKind } from './access-tokens.js';

export const TOKEN_PARAM = 'swarm_token';
export const SESSION_COOKIE = 'swarm_session';
/**
 * The session cookie's name under https: browsers accept a `__Host-` cookie only when it is Secure, has
 * Path=/ and no Domain, so no sibling host (another instance's editor) can set or shadow it.
 */
export const HOST_SESSION_COOKIE = `__Host-${SESSION_COOKIE}`;

export interface AccessLink {
  /** The instance's address, no credentials. */
  url: string;
  /** The address with a one-time token; opening it sets the session cookie. */
  accessUrl: string;
  expiresAt: string;
}

/**
 * Where spent one-time links are remembered: the state directory's file (SpentLinks) for one controller,
 * PostgreSQL (PgSpentLinks) when several controllers share a database and any gateway may be handed a link.
 */
export interface SpentLinkStore {
  /** Marks a link spent; false when it already was. Throws when that cannot be known (the link is then refused). */
  spend(claims: TokenClaims): Promise<boolean>;
}

export interface AccessLinkKeys {
  /** Verify links with this Ed25519 public key (publicKeyText form) and issue none; `config.secret` is then ignored. */
  linkPublicKey?: string;
  /**
   * Where the signing seed is kept when no `config.secret` is set (default: the state directory's file):
   * PostgreSQL when several gateways share a database, so each opens the others' links. Not with `linkPublicKey`.
   */
  signingSeed?: SigningSeedStore;
}

export class AccessLinks {
  private links?: AccessTokens;
  private sessions?: AccessTokens;
  /** This side's own public key (base64url), once initialized: what hosts are given to check its links. */
  publicKey = '';
  readonly spent: SpentLinkStore;
  /** The port users connect to; the gateway sets it once it listens. */
  port: number;

  constructor(
    private readonly config: GatewayConfig,
    private readonly stateDir: string,
    private readonly now: () => number = Date.now,
    private readonly keys: AccessLinkKeys = {},
    spent?: SpentLinkStore,
  ) {
    this.port = config.publicPort ?? config.port;
    this.spent = spent ?? new SpentLinks(stateDir, now);
  }

  async initialize(): Promise<void> {
    if (this.sessions) return;
    const own = this.keys.linkPublicKey
      ? await loadOrCreateSigningKey(this.stateDir)
      : await loadOrCreateSigningKey(this.stateDir, this.config.secret, this.keys.signingSeed);
    const sessions = new AccessTokens({ signing: own, verifying: own }, this.now);
    this.links = this.keys.linkPublicKey ? new AccessTokens({ verifying: parsePublicKey(this.keys.linkPublicKey) }, this.now) : sessions;
    this.sessions = sessions;
    this.publicKey = publicKeyText(own);
  }

  urlFor(instanceId: string): string {
    const port = (this.config.scheme === 'https' && this.port === 443) || (this.config.scheme === 'http' && this.port === 80) ? '' : `:${this.port}`;
    return `${this.config.scheme}://${instanceId}.${this.config.baseDomain}${port}/`;
  }

  /** The instance id named by a Host header, or undefined when it names none. */
  instanceIdFromHost(host: string | undefined): string | undefined {
    if (!host) return undefined;
    const name = host.replace(/:\d+$/, '').toLowerCase();
    const suffix = `.${this.config.baseDomain}`;
    if (!name.endsWith(suffix)) return undefined;
    const id = name.slice(0, -suffix.length);
    return /^[a-z0-9][a-z0-9-]{0,62}$/.test(id) ? id : undefined;
  }

  link(instanceId: string, epoch: number, ttlMinutes?: number): AccessLink {
    const ttlMs = (ttlMinutes ?? this.config.linkTtlMinutes) * 60_000;
    const { token, claims } = this.require(this.links).issue('link', instanceId, epoch, ttlMs);
    const url = this.urlFor(instanceId);
    return { url, accessUrl: `${url}?${TOKEN_PARAM}=${token}`, expiresAt: new Date(claims.expiresAt).toISOString() };
  }

  session(instanceId: string, epoch: number): { token: string; maxAgeSeconds: number } {
    const ttlMs = this.config.sessionTtlHours * 3_600_000;
    return { token: this.require(this.sessions).issue('session', instanceId, epoch, ttlMs).token, maxAgeSeconds: Math.floor(ttlMs / 1000) };
  }

  /**
   * A token of either kind for a subject other than an instance's own host: a forwarded port's hand-over,
   * code, session or share (src/gateway/ports.ts), told apart by the subject inside the signed payload.
   */
  token(kind: TokenKind, subject: string, epoch: number, ttlMs: number): { token: string; claims: TokenClaims } {
    return this.require(kind === 'link' ? this.links : this.sessions).issue(kind, subject, epoch, ttlMs);
  }

  verify(token: string | undefined, kind: 'link' | 'session'): ReturnType<AccessTokens['verify']> {
    return this.require(kind === 'link' ? this.links : this.sessions).verify(token, kind);
  }

  spend(claims: TokenClaims): Promise<boolean> {
    return this.spent.spend(claims);
  }

  get secureCookies(): boolean {
    return this.config.scheme === 'https';
  }

  /** The session cookie's name for this scheme. */
  get cookieName(): string {
    return this.secureCookies ? HOST_SESSION_COOKIE : SESSION_COOKIE;
  }

  private require(tokens: AccessTokens | undefined): AccessTokens {
    if (!tokens) throw new Error('AccessLinks used before initialize()');
    return tokens;
  }
}
