/**
 * The dashboard's sign-in sessions: a random id in a host-only cookie stands for a principal and the
 * credential it signed in with. The credential itself is never kept: only its id, so that the session
 * ends on the next request once the token is revoked or expires, the principal is disabled or removed,
 * and a changed role narrows the scopes at once (the same rules as PrincipalStore.authenticate, re-read
 * from the store on every request; nothing is cached).
 *
 * A session from an OAuth sign-in (credential id `jwt:<jti>`) keeps the token's subject instead: on every
 * request the principal must still exist, be enabled, and still be the one that subject signs in as.
 *
 * Each session carries its own CSRF token; every state-changing request must send it back.
 */
import { randomBytes, timingSafeEqual } from 'node:crypto';
import { SwarmError } from '../errors.js';
import { effectiveScopes, type PrincipalActor, type Scope } from '../tenancy/identity.js';
import { LOCAL_CREDENTIAL_ID, type PrincipalDirectory } from '../tenancy/principals.js';

export interface DashboardSession {
  id: string;
  principalId: string;
  /** The API token's id, `local` for the local admin's credential file, or `jwt:<jti>` for an OAuth sign-in. */
  credentialId: string;
  /** The OAuth subject an OAuth sign-in's session stands for. */
  subject?: string;
  /** The scopes the credential carried at sign-in; the role in force can only narrow them. */
  scopes: readonly Scope[];
  csrfToken: string;
  createdAt: number;
  expiresAt: number;
  /** A one-time message for the next page (the result of an action). */
  flash?: string;
}

export interface DashboardSessionsOptions {
  principals: PrincipalDirectory;
  ttlMs: number;
  /** Sessions kept at most; the oldest is dropped first. */
  maxSessions?: number;
  now?: () => number;
}

const DEFAULT_MAX_SESSIONS = 10_000;

export class DashboardSessions {
  private readonly sessions = new Map<string, DashboardSession>();
  private readonly now: () => number;

  constructor(private readonly options: DashboardSessionsOptions) {
    this.now = options.now ?? Date.now;
  }

  /** Starts a session for an actor the Authenticator accepted (with the token's subject, for an OAuth sign-in). */
  create(actor: PrincipalActor, oauth?: { subject: string }): DashboardSession {
    if (!actor.credentialId) throw new SwarmError('INTERNAL', 'a dashboard session needs the id of the credential it signed in with');
    if (isOAuth(actor.credentialId) && !oauth?.subject) throw new SwarmError('UNAUTHENTICATED', 'a dashboard session from an OAuth sign-in needs the token’s subject, to re-check it on every request');
    const max = this.options.maxSessions ?? DEFAULT_MAX_SESSIONS;
    const at = this.now();
    for (const [id, old] of this.sessions) if (old.expiresAt <= at) this.sessions.delete(id);
    while (this.sessions.size >= max) this.sessions.delete(this.sessions.keys().next().value!);
    const session: DashboardSession = {
      id: randomBytes(32).toString('base64url'),
      principalId: actor.principalId,
      credentialId: actor.credentialId,
      ...(isOAuth(actor.credentialId) ? { subject: oauth!.subject } : {}),
      scopes: [...actor.scopes],
      csrfToken: randomBytes(32).toString('base64url'),
      createdAt: at,
      expiresAt: at + this.options.ttlMs,
    };
    this.sessions.set(session.id, session);
    return session;
  }

  /**
   * The session and the actor it acts as now, or UNAUTHENTICATED (and the session forgotten) when it
   * expired or its credential or principal no longer holds.
   */
  resume(sessionId: string | undefined): { session: DashboardSession; actor: PrincipalActor } {
    const session = sessionId ? this.sessions.get(sessionId) : undefined;
    if (!session) throw new SwarmError('UNAUTHENTICATED', 'not signed in (or the session ended)');
    try {
      return { session, actor: this.actorOf(session) };
    } catch (err) {
      this.sessions.delete(session.id);
      throw err;
    }
  }

  end(sessionId: string): void {
    this.sessions.delete(sessionId);
  }

  /** Whether a CSRF token sent with a request is this session's, compared in constant time. */
  checkCsrf(session: DashboardSession, sent: unknown): boolean {
    if (typeof sent !== 'string') return false;
    const expected = Buffer.from(session.csrfToken);
    const given = Buffer.from(sent);
    return given.length === expected.length && timingSafeEqual(given, expected);
  }

  get size(): number {
    return this.sessions.size;
  }

  private actorOf(session: DashboardSession): PrincipalActor {
    const at = this.now();
    if (at >= session.expiresAt) throw new SwarmError('UNAUTHENTICATED', 'the session expired; sign in again');
    const { principals } = this.options;
    const principal = principals.getPrincipal(session.principalId);
    if (!principal || principal.disabled) throw new SwarmError('UNAUTHENTICATED', `principal ${session.principalId} is disabled`);
    if (isOAuth(session.credentialId)) {
      if (principals.principalForSubject(session.subject ?? '')?.id !== principal.id) throw new SwarmError('UNAUTHENTICATED', `the OAuth subject no longer signs in as principal ${principal.id}`);
    } else if (session.credentialId !== LOCAL_CREDENTIAL_ID) {
      const token = principals.getToken(session.credentialId);
      if (!token || token.principalId !== principal.id) throw new SwarmError('UNAUTHENTICATED', `token ${session.credentialId} no longer exists`);
      if (token.revokedAt) throw new SwarmError('UNAUTHENTICATED', `token ${token.id} was revoked`);
      if (token.expiresAt && Date.parse(token.expiresAt) <= at) throw new SwarmError('UNAUTHENTICATED', `token ${token.id} expired at ${token.expiresAt}`);
    }
    return {
      kind: 'principal',
      principalId: principal.id,
      role: principal.role,
      scopes: effectiveScopes(principal.role, session.scopes),
      credentialId: session.credentialId,
      door: 'dashboard',
    };
  }
}

function isOAuth(credentialId: string): boolean {
  return credentialId.startsWith('jwt:');
}
