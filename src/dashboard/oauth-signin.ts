/**
 * Signing in to the dashboard through the configured OAuth issuer (`oauth.issuer`), besides API tokens:
 * the authorization code flow (RFC 6749 §4.1) with PKCE S256 (RFC 7636), `state` and an OpenID `nonce`,
 * the code exchanged server-side for an access token for this dashboard's resource (RFC 8707).
 *
 * This module only runs the flow; it never decides who someone is. The access token it returns goes
 * through the same Authenticator and JwtVerifier as a bearer token at /mcp (src/tenancy/authenticate.ts,
 * src/tenancy/oauth.ts): the same issuer, audience, algorithm and expiry rules and the same mapping from
 * subject to principal. The token is then dropped: the session is the dashboard's own.
 *
 * What a flow must get right before a code is even exchanged:
 * - `state` is single-use, known to this process, unexpired, and bound to the browser that started the
 *   flow (a random value in a short-lived HttpOnly cookie, compared in constant time), so a callback URL
 *   made by someone else (login CSRF) or replayed is refused;
 * - an `iss` in the response (RFC 9207) must be the configured issuer (mix-up defence), and is required
 *   when the issuer says it sends one;
 * - the ID token from the token endpoint must carry the flow's nonce, this issuer and this client. It is
 *   read, not verified: it came straight from the issuer's token endpoint (OpenID Connect Core §3.1.3.7
 *   allows that), and nothing is decided on it but the nonce; the access token is what is verified.
 */
import { createHash, randomBytes, timingSafeEqual } from 'node:crypto';
import { decodeJwt } from 'jose';
import type { DashboardOAuthConfig } from '../config.js';
import { SwarmError, printable } from '../errors.js';
import { silentLogger, type Logger } from '../logger.js';
import { discoverIssuerMetadata, type OAuthConfig } from '../tenancy/oauth.js';

export interface OAuthSignInOptions {
  /** The issuer as configured for every door (`oauth`). */
  issuer: OAuthConfig;
  /** The dashboard's client at that issuer (`dashboard.oauth`). */
  client: DashboardOAuthConfig;
  /** Where the issuer sends the browser back: <publicUrl>oauth/callback. */
  redirectUri: string;
  /** The resource the access token is asked for (RFC 8707), which is the audience it is verified against. */
  resource: string;
  /** The client's secret, when it is a confidential client. */
  clientSecret?: string;
  fetch?: typeof fetch;
  logger?: Logger;
  now?: () => number;
}

/** The flow's start: where to send the browser, and the value its binding cookie must hold. */
export interface SignInStart {
  location: string;
  binding: string;
}

interface Pending {
  verifier: string;
  nonce: string;
  binding: string;
  expiresAt: number;
}

interface Endpoints {
  authorization: string;
  token: string;
  /** The issuer said it puts `iss` in every authorization response (RFC 9207). */
  sendsIss: boolean;
}

/** How long a person has at the issuer before the flow they started is forgotten. */
export const PENDING_TTL_MS = 10 * 60_000;
const MAX_PENDING = 1_000;
const REQUEST_TIMEOUT_MS = 10_000;
const MAX_REASON_CHARS = 200;

export class OAuthSignIn {
  readonly issuer: string;
  private readonly pending = new Map<string, Pending>();
  private readonly fetchImpl: typeof fetch;
  private readonly now: () => number;
  private readonly logger: Logger;
  private endpoints: Promise<Endpoints> | undefined;
  private closing = new AbortController();

  constructor(private readonly options: OAuthSignInOptions) {
    this.issuer = options.issuer.issuer;
    this.fetchImpl = options.fetch ?? fetch;
    this.now = options.now ?? Date.now;
    this.logger = (options.logger ?? silentLogger()).child({ component: 'dashboard-oauth' });
  }

  /** A new flow: the issuer's authorization URL with PKCE, state, nonce and resource. */
  async begin(): Promise<SignInStart> {
    const { authorization } = await this.discover();
    const at = this.now();
    for (const [state, old] of this.pending) if (old.expiresAt <= at) this.pending.delete(state);
    while (this.pending.size >= MAX_PENDING) this.pending.delete(this.pending.keys().next().value!);
    const state = random();
    const flow: Pending = { verifier: random(), nonce: random(), binding: random(), expiresAt: at + PENDING_TTL_MS };
    this.pending.set(state, flow);
    const url = new URL(authorization);
    const { client } = this.options;
    url.searchParams.set('response_type', 'code');
    url.searchParams.set('client_id', client.clientId);
    url.searchParams.set('redirect_uri', this.options.redirectUri);
    url.searchParams.set('scope', ['openid', ...client.scopes.filter((s) => s !== 'openid')].join(' '));
    url.searchParams.set('state', state);
    url.searchParams.set('nonce', flow.nonce);
    url.searchParams.set('code_challenge', createHash('sha256').update(flow.verifier).digest('base64url'));
    url.searchParams.set('code_challenge_method', 'S256');
    url.searchParams.set('resource', this.options.resource);
    return { location: url.toString(), binding: flow.binding };
  }

  /**
   * The callback's query checked against the flow it names, and the code exchanged: the access token, to
   * be authenticated like any bearer token. UNAUTHENTICATED with a reason otherwise (never the code or a
   * token); `details.unavailable` when the issuer could not be asked.
   */
  async finish(query: URLSearchParams, binding: string | undefined): Promise<string> {
    const state = query.get('state');
    if (!state) throw refused('the issuer’s answer has no state; start the sign-in again');
    const flow = this.pending.get(state);
    this.pending.delete(state); // single use, whatever happens next
    if (!flow) throw refused('the sign-in’s state is unknown or already used; start the sign-in again');
    if (flow.expiresAt <= this.now()) throw refused('the sign-in took too long; start it again');
    if (!binding || !sameSecret(binding, flow.binding)) throw refused('the sign-in was started in another browser (its state is not this browser’s)');
    const endpoints = await this.discover();
    const iss = query.get('iss');
    if (iss !== null && iss !== this.issuer) throw refused(`wrong issuer: the answer comes from ${short(iss)}, not ${this.issuer}`);
    if (iss === null && endpoints.sendsIss) throw refused('the issuer’s answer has no iss, which this issuer always sends');
    const error = query.get('error');
    if (error) throw refused(`the issuer refused: ${short(error)}${query.get('error_description') ? ` (${short(query.get('error_description')!)})` : ''}`);
    const code = query.get('code');
    if (!code) throw refused('the issuer’s answer has no code');
    const answer = await this.exchange(endpoints.token, code, flow.verifier);
    this.checkIdToken(answer.id_token, flow.nonce);
    if (typeof answer.token_type !== 'string' || answer.token_type.toLowerCase() !== 'bearer') throw refused(`the issuer answered token type ${short(String(answer.token_type))}, not Bearer`);
    if (typeof answer.access_token !== 'string' || answer.access_token === '') throw refused('the issuer answered no access token');
    return answer.access_token;
  }

  /** Aborts requests in flight and forgets the flows and what discovery found. */
  close(): void {
    this.closing.abort();
    this.closing = new AbortController();
    this.pending.clear();
    this.endpoints = undefined;
  }

  /** The issuer's endpoints from its metadata, found once; a failed discovery is tried again next time. */
  private discover(): Promise<Endpoints> {
    if (!this.endpoints) {
      const attempt = discoverIssuerMetadata(this.issuer, this.fetchImpl, this.closing.signal, unavailable).then(({ url, metadata }) => endpointsOf(url, metadata));
      attempt.catch((err: unknown) => {
        if (this.endpoints === attempt) this.endpoints = undefined;
        this.logger.warn({ issuer: this.issuer, err: (err as Error).message }, 'OAuth issuer discovery failed');
      });
      this.endpoints = attempt;
    }
    return this.endpoints;
  }

  private async exchange(tokenEndpoint: string, code: string, verifier: string): Promise<Record<string, unknown>> {
    const { client, clientSecret, redirectUri, resource } = this.options;
    const body = new URLSearchParams({ grant_type: 'authorization_code', code, redirect_uri: redirectUri, code_verifier: verifier, resource });
    const headers: Record<string, string> = { 'content-type': 'application/x-www-form-urlencoded', accept: 'application/json' };
    if (clientSecret !== undefined) headers.authorization = `Basic ${Buffer.from(`${formEncode(client.clientId)}:${formEncode(clientSecret)}`).toString('base64')}`;
    else body.set('client_id', client.clientId);
    let response: Response;
    try {
      response = await this.fetchImpl(tokenEndpoint, { method: 'POST', headers, body: body.toString(), signal: AbortSignal.any([this.closing.signal, AbortSignal.timeout(REQUEST_TIMEOUT_MS)]) });
    } catch (err) {
      throw unavailable(`${tokenEndpoint}: ${(err as Error).name === 'TimeoutError' ? 'timed out' : short(String((err as { cause?: { code?: unknown } }).cause?.code ?? (err as Error).message))}`);
    }
    let answer: unknown;
    try {
      answer = await response.json();
    } catch {
      throw unavailable(`${tokenEndpoint}: HTTP ${response.status}, not JSON`);
    }
    const fields = (typeof answer === 'object' && answer !== null ? answer : {}) as Record<string, unknown>;
    if (!response.ok) {
      const what = typeof fields.error === 'string' ? short(fields.error) : `HTTP ${response.status}`;
      const why = typeof fields.error_description === 'string' ? ` (${short(fields.error_description)})` : '';
      throw refused(`the issuer refused the code: ${what}${why}`);
    }
    return fields;
  }

  private checkIdToken(idToken: unknown, nonce: string): void {
    if (typeof idToken !== 'string') throw refused('the issuer answered no ID token (the dashboard asks for openid to check the nonce)');
    let claims: ReturnType<typeof decodeJwt>;
    try {
      claims = decodeJwt(idToken);
    } catch {
      throw refused('the ID token is malformed');
    }
    if (claims.iss !== this.issuer) throw refused(`wrong issuer: the ID token names ${short(String(claims.iss))}, not ${this.issuer}`);
    const audiences = Array.isArray(claims.aud) ? claims.aud : [claims.aud];
    if (!audiences.includes(this.options.client.clientId)) throw refused('the ID token is not for this dashboard’s client');
    if (typeof claims.nonce !== 'string' || !sameSecret(claims.nonce, nonce)) throw refused('the ID token’s nonce is not this sign-in’s');
  }
}

function endpointsOf(url: string, metadata: Record<string, unknown>): Endpoints {
  const endpoint = (name: string): string => {
    const value = metadata[name];
    if (typeof value !== 'string' || !URL.canParse(value) || !/^https?:$/.test(new URL(value).protocol)) throw unavailable(`${url}: the metadata has no http(s) ${name}`);
    return value;
  };
  const methods = metadata.code_challenge_methods_supported;
  if (Array.isArray(methods) && !methods.includes('S256')) throw unavailable(`${url}: the issuer does not support PKCE with S256 (code_challenge_methods_supported)`);
  return { authorization: endpoint('authorization_endpoint'), token: endpoint('token_endpoint'), sendsIss: metadata.authorization_response_iss_parameter_supported === true };
}

function random(): string {
  return randomBytes(32).toString('base64url');
}

function sameSecret(given: string, expected: string): boolean {
  const a = Buffer.from(given);
  const b = Buffer.from(expected);
  return a.length === b.length && timingSafeEqual(a, b);
}

/** RFC 6749 §2.3.1: the client id and secret are form-encoded before Basic authentication. */
function formEncode(value: string): string {
  return new URLSearchParams({ v: value }).toString().slice(2);
}

/** Text from the issuer or the callback's query, safe and short enough for a page and a log. */
function short(text: string): string {
  const clean = printable(text);
  return clean.length > MAX_REASON_CHARS ? `${clean.slice(0, MAX_REASON_CHARS - 3)}...` : clean;
}

function refused(reason: string): SwarmError {
  return new SwarmError('UNAUTHENTICATED', reason);
}

function unavailable(detail: string): SwarmError {
  return new SwarmError('UNAUTHENTICATED', `the issuer could not be asked: ${detail}`, { details: { unavailable: true } });
}
