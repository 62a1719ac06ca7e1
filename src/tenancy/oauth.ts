/**
 * vscode-swarm as an OAuth 2.1 resource server for its MCP HTTP endpoint, as the MCP authorization
 * specification asks: besides its own API tokens, /mcp may accept JWT access tokens (RFC 9068) issued by
 * one configured external authorization server.
 *
 * A token is accepted only when all of these hold: its header names an allow-listed asymmetric algorithm
 * (never `none`, never HS*, so that the issuer's public key can never be used as an HMAC secret), its
 * `typ` if present says it is an access token or a plain JWT, its signature verifies with a key from the
 * issuer's JWKS, `iss` is exactly the configured issuer, `aud` names this server's resource URL (RFC 8707:
 * a token minted for another service is not good here), and `exp` is present and not past (with a small
 * clock tolerance). The JWKS location comes from the configuration or from the issuer's metadata
 * (OpenID discovery, then RFC 8414), found on the first verification and kept; a failed discovery is
 * tried again on a later call rather than remembered.
 *
 * Refusals are SwarmError UNAUTHENTICATED with a short reason that never contains the token, and the
 * jose error (whose cause carries the token's claims) is not attached. The module also builds what a
 * client needs to find the authorization server: the RFC 9728 protected-resource metadata, the paths to
 * serve it at, and the RFC 6750 `WWW-Authenticate` challenge pointing to it.
 */
import { createRemoteJWKSet, customFetch, decodeProtectedHeader, errors, jwtVerify, type CryptoKey, type JWTPayload, type JWTVerifyGetKey, type JWTVerifyOptions } from 'jose';
import { z } from 'zod';
import { invalidInput, printable, SwarmError } from '../errors.js';
import { silentLogger, type Logger } from '../logger.js';
import { SCOPES } from './identity.js';

/** Asymmetric JWS algorithms only: a symmetric one would let anyone holding the public JWKS forge tokens. */
export const OAUTH_ALGORITHMS = ['RS256', 'RS384', 'RS512', 'PS256', 'PS384', 'PS512', 'ES256', 'ES384', 'EdDSA'] as const;
export type OAuthAlgorithm = (typeof OAUTH_ALGORITHMS)[number];

const DEFAULT_ALGORITHMS: OAuthAlgorithm[] = ['RS256', 'PS256', 'ES256', 'EdDSA'];
/** RFC 9068 §2.1 says `at+jwt`; many issuers still write `JWT`. Media types compare case-insensitively. */
const ACCEPTED_TYPES = new Set(['at+jwt', 'application/at+jwt', 'jwt', 'application/jwt']);
/** RFC 6749 §3.3 scope-token characters. */
const SCOPE_TOKEN = /^[\x21\x23-\x5b\x5d-\x7e]+$/;
const MAX_TOKEN_CHARS = 16_384;
const DISCOVERY_TIMEOUT_MS = 5_000;
const REALM = 'vscode-swarm';

const isHttpUrl = (text: string): boolean => URL.canParse(text) && /^https?:$/.test(new URL(text).protocol);
/** RFC 8414 §2 and RFC 8707 §2: neither an issuer nor a resource identifier has a query or a fragment. */
const isIdentifierUrl = (text: string): boolean => isHttpUrl(text) && !text.includes('?') && !text.includes('#');
const HttpUrl = z.string().refine(isHttpUrl, 'expected an http(s) URL');
const IdentifierUrl = z.string().refine(isIdentifierUrl, 'expected an http(s) URL without query or fragment');

export const OAuthConfigSchema = z
  .object({
    /** The authorization server's issuer identifier, compared exactly with the token's `iss`. */
    issuer: IdentifierUrl,
    /** The audience a token must name; default: the MCP endpoint URL the server listens at. */
    resource: IdentifierUrl.optional(),
    /** Where the issuer's keys are; default: `jwks_uri` from the issuer's metadata. */
    jwksUri: HttpUrl.optional(),
    /** The claim that names the principal. */
    principalClaim: z.string().min(1).default('sub'),
    algorithms: z.array(z.enum(OAUTH_ALGORITHMS)).min(1).default(DEFAULT_ALGORITHMS),
    clockToleranceSeconds: z.number().min(0).max(300).default(30),
    /** What the protected-resource metadata advertises. */
    scopesSupported: z.array(z.string().regex(SCOPE_TOKEN, 'expected a scope token (RFC 6749 §3.3)')).default([...SCOPES]),
  })
  .strict();
export type OAuthConfig = z.infer<typeof OAuthConfigSchema>;

export interface VerifiedJwt {
  /** The value of the configured principal claim (`sub` by default). */
  subject: string;
  /** From `scope` (space separated) or `scp` (an array, or space separated). */
  scopes: string[];
  /** `exp`, epoch seconds. */
  expiresAt?: number;
  /** `jti`. */
  tokenId?: string;
  issuer: string;
}

export interface JwtVerifier {
  verify(token: string): Promise<VerifiedJwt>;
  /** Aborts a discovery in flight and forgets what was found. */
  close?(): void;
}

export interface JwtVerifierOptions {
  /** This server's resource URL (the MCP endpoint); the audience unless the configuration names one. */
  resource: string;
  fetch?: typeof fetch;
  logger?: Logger;
}

export function createJwtVerifier(config: OAuthConfig, opts: JwtVerifierOptions): JwtVerifier {
  const audience = config.resource ?? opts.resource;
  if (!isIdentifierUrl(audience)) throw invalidInput('oauth.resource', 'an http(s) URL without query or fragment', audience);
  const logger = (opts.logger ?? silentLogger()).child({ component: 'oauth' });
  const fetchImpl = opts.fetch ?? fetch;
  const allowed = new Set<string>(config.algorithms);
  const options: JWTVerifyOptions = {
    issuer: config.issuer,
    audience,
    algorithms: config.algorithms,
    clockTolerance: config.clockToleranceSeconds,
    requiredClaims: ['exp'],
  };
  let closing = new AbortController();
  let keys: Promise<JWTVerifyGetKey> | undefined;

  function remoteKeys(jwksUri: string): JWTVerifyGetKey {
    const remote = createRemoteJWKSet(new URL(jwksUri), { [customFetch]: fetchImpl });
    return async (header, token) => {
      try {
        return await remote(header, token);
      } catch (err) {
        // These two are answers about the token; anything else means the set itself could not be had.
        if (err instanceof errors.JWKSNoMatchingKey || err instanceof errors.JWKSMultipleMatchingKeys) throw err;
        throw keysUnavailable(`${jwksUri}: ${describeFailure(err)}`, err);
      }
    };
  }

  function getKeys(): Promise<JWTVerifyGetKey> {
    if (!keys) {
      const attempt: Promise<JWTVerifyGetKey> = (config.jwksUri ? Promise.resolve(config.jwksUri) : discoverJwksUri(config.issuer, fetchImpl, closing.signal)).then(
        (jwksUri) => {
          logger.debug({ issuer: config.issuer, jwksUri }, 'OAuth issuer keys located');
          return remoteKeys(jwksUri);
        },
        (err: unknown) => {
          if (keys === attempt) keys = undefined; // tried again on the next verification
          logger.warn({ issuer: config.issuer, err: (err as Error).message }, 'OAuth issuer discovery failed');
          throw err;
        },
      );
      keys = attempt;
    }
    return keys;
  }

  return {
    async verify(token) {
      checkHeader(token, allowed);
      const getKey = await getKeys();
      let payload: JWTPayload;
      try {
        ({ payload } = await verifyWithKeys(token, getKey, options));
      } catch (err) {
        const refusal = refusalFor(err);
        if (refusal) throw refusal;
        logger.warn({ err: (err as Error).message }, 'unexpected fault verifying an OAuth token');
        throw unauthenticated('token could not be verified');
      }
      return verified(payload, config.principalClaim);
    },
    close() {
      closing.abort();
      closing = new AbortController();
      keys = undefined;
    },
  };
}

/** Cheap refusals before any key is fetched: the shape, the algorithm and the type. */
function checkHeader(token: string, allowed: ReadonlySet<string>): void {
  if (typeof token !== 'string' || token.length === 0) throw unauthenticated('no token');
  if (token.length > MAX_TOKEN_CHARS) throw unauthenticated('malformed token (too long)');
  if (token.split('.').length !== 3) throw unauthenticated('malformed token');
  let header: ReturnType<typeof decodeProtectedHeader>;
  try {
    header = decodeProtectedHeader(token);
  } catch {
    throw unauthenticated('malformed token');
  }
  const alg = header.alg;
  if (typeof alg !== 'string' || !allowed.has(alg)) throw unauthenticated(`algorithm ${shown(alg)} not allowed`);
  const typ = header.typ;
  if (typ !== undefined && (typeof typ !== 'string' || !ACCEPTED_TYPES.has(typ.toLowerCase()))) {
    throw unauthenticated(`token type ${shown(typ)} is not an access token (expected at+jwt)`);
  }
}

/**
 * jwtVerify, and when the token names no `kid` and several keys of the set fit, each of them in turn
 * (jose leaves that loop to the caller).
 */
async function verifyWithKeys(token: string, getKey: JWTVerifyGetKey, options: JWTVerifyOptions) {
  try {
    return await jwtVerify(token, getKey, options);
  } catch (err) {
    if (!(err instanceof errors.JWKSMultipleMatchingKeys)) throw err;
    for await (const key of err as unknown as AsyncIterable<CryptoKey>) {
      try {
        return await jwtVerify(token, key, options);
      } catch (inner) {
        if (!(inner instanceof errors.JWSSignatureVerificationFailed)) throw inner;
      }
    }
    throw new errors.JWSSignatureVerificationFailed();
  }
}

function verified(payload: JWTPayload, principalClaim: string): VerifiedJwt {
  const subject = payload[principalClaim];
  if (typeof subject !== 'string' || subject === '') throw unauthenticated(`token has no ${shown(principalClaim)} claim naming the principal`);
  return {
    subject,
    scopes: scopesOf(payload),
    ...(typeof payload.exp === 'number' ? { expiresAt: payload.exp } : {}),
    ...(typeof payload.jti === 'string' ? { tokenId: payload.jti } : {}),
    issuer: payload.iss as string, // jwtVerify checked it equals the configured issuer
  };
}

function scopesOf(payload: JWTPayload): string[] {
  const raw = typeof payload.scope === 'string' ? payload.scope : payload.scp;
  const list = typeof raw === 'string' ? raw.split(' ') : Array.isArray(raw) ? raw : [];
  return [...new Set(list.filter((s): s is string => typeof s === 'string' && s !== ''))];
}

/** The refusal for what jose threw; undefined for a fault that says nothing about the token. */
function refusalFor(err: unknown): SwarmError | undefined {
  if (err instanceof SwarmError) return err;
  if (err instanceof errors.JWTExpired) return unauthenticated('token expired');
  if (err instanceof errors.JWTClaimValidationFailed) {
    if (err.reason === 'missing') return unauthenticated(`token has no ${shown(err.claim)} claim`);
    if (err.claim === 'aud') return unauthenticated('wrong audience');
    if (err.claim === 'iss') return unauthenticated('wrong issuer');
    if (err.claim === 'nbf') return unauthenticated('token not yet valid');
    return unauthenticated(`claim ${shown(err.claim)} invalid`);
  }
  if (err instanceof errors.JOSEAlgNotAllowed) return unauthenticated('algorithm not allowed');
  if (err instanceof errors.JWSSignatureVerificationFailed) return unauthenticated('signature invalid');
  if (err instanceof errors.JWKSNoMatchingKey) return unauthenticated('signature invalid (no key of the issuer matches the token)');
  if (err instanceof errors.JOSEError) return unauthenticated('malformed token');
  return undefined;
}

/** Candidate metadata URLs, in order: OpenID discovery appended to the issuer, then RFC 8414's inserted form. */
export function discoveryUrls(issuer: string): string[] {
  const url = new URL(issuer);
  const path = url.pathname.replace(/\/+$/, '');
  return [
    ...new Set([
      `${url.origin}${path}/.well-known/openid-configuration`,
      `${url.origin}/.well-known/oauth-authorization-server${path}`,
      `${url.origin}/.well-known/openid-configuration${path}`,
    ]),
  ];
}

async function discoverJwksUri(issuer: string, fetchImpl: typeof fetch, closed: AbortSignal): Promise<string> {
  const { url, metadata } = await discoverIssuerMetadata(issuer, fetchImpl, closed, keysUnavailable);
  const jwksUri = metadata.jwks_uri;
  if (typeof jwksUri !== 'string' || !isHttpUrl(jwksUri)) throw keysUnavailable(`${url}: the metadata has no http(s) jwks_uri`);
  return jwksUri;
}

/**
 * The issuer's metadata document (OpenID discovery, then RFC 8414; see discoveryUrls), which must name
 * exactly that issuer. `fail` makes the error from a detail (each caller says what it was looking for).
 */
export async function discoverIssuerMetadata(
  issuer: string,
  fetchImpl: typeof fetch,
  closed: AbortSignal,
  fail: (detail: string) => SwarmError,
): Promise<{ url: string; metadata: Record<string, unknown> }> {
  const failures: string[] = [];
  for (const url of discoveryUrls(issuer)) {
    let response: Response;
    try {
      response = await fetchImpl(url, { headers: { accept: 'application/json' }, signal: AbortSignal.any([closed, AbortSignal.timeout(DISCOVERY_TIMEOUT_MS)]) });
    } catch (err) {
      failures.push(`${url}: ${describeFailure(err)}`);
      continue;
    }
    if (!response.ok) {
      await response.body?.cancel();
      failures.push(`${url}: HTTP ${response.status}`);
      continue;
    }
    // A metadata document was found: it is the answer, so a bad one is an error, not a reason to look on.
    let metadata: unknown;
    try {
      metadata = await response.json();
    } catch {
      throw fail(`${url}: the metadata is not JSON`);
    }
    if (typeof metadata !== 'object' || metadata === null || Array.isArray(metadata)) throw fail(`${url}: the metadata is not a JSON object`);
    const named = (metadata as { issuer?: unknown }).issuer;
    if (named !== issuer) throw fail(`${url}: the metadata names issuer ${shown(named)}, not ${JSON.stringify(issuer)}`);
    return { url, metadata: metadata as Record<string, unknown> };
  }
  throw fail(`no metadata found (${failures.join('; ')})`);
}

function describeFailure(err: unknown): string {
  if (err instanceof errors.JWKSTimeout || (err instanceof Error && err.name === 'TimeoutError')) return 'timed out';
  if (err instanceof Error && err.name === 'AbortError') return 'aborted';
  const cause = err instanceof Error ? (err.cause as { code?: unknown; message?: unknown } | undefined) : undefined;
  if (typeof cause?.code === 'string') return cause.code;
  const message = err instanceof Error ? err.message : String(err);
  return printable(message.length > 200 ? `${message.slice(0, 197)}...` : message);
}

/**
 * The issuer could not be asked, so nothing is known about the token: `details.unavailable` tells a door
 * to answer "try again later" (HTTP 503) rather than "your credential is bad" (401).
 */
function keysUnavailable(detail: string, cause?: unknown): SwarmError {
  return new SwarmError('UNAUTHENTICATED', `issuer's keys could not be fetched: ${detail}`, { details: { unavailable: true }, ...(cause === undefined ? {} : { cause }) });
}

function unauthenticated(reason: string): SwarmError {
  return new SwarmError('UNAUTHENTICATED', reason);
}

/** A value from the token (header or claim name) made short and safe to put in a message. */
function shown(value: unknown): string {
  if (typeof value === 'string' && /^[\w+.:/-]{1,40}$/.test(value)) return value;
  const text = printable(typeof value === 'string' ? JSON.stringify(value) : String(value));
  return text.length > 40 ? `${text.slice(0, 37)}...` : text;
}

export interface ProtectedResourceMetadata {
  resource: string;
  authorization_servers: string[];
  scopes_supported: string[];
  bearer_methods_supported: ['header'];
  resource_name: string;
}

/** The RFC 9728 §2 document: which authorization servers issue tokens for this resource, and what for. */
export function protectedResourceMetadata(opts: { resource: string; authorizationServers: string[]; scopesSupported: string[] }): ProtectedResourceMetadata {
  return {
    resource: opts.resource,
    authorization_servers: [...opts.authorizationServers],
    scopes_supported: [...opts.scopesSupported],
    bearer_methods_supported: ['header'],
    resource_name: REALM,
  };
}

const METADATA_PATH = '/.well-known/oauth-protected-resource';

/**
 * Where to serve the metadata (RFC 9728 §3.1): the well-known prefix inserted before the resource's path
 * (`/mcp` → `/.well-known/oauth-protected-resource/mcp`), first, and the bare well-known path for
 * clients that look at the root.
 */
export function metadataPathsFor(resourceUrl: string): string[] {
  const url = parseResource(resourceUrl);
  const path = url.pathname === '/' ? '' : url.pathname;
  return path ? [`${METADATA_PATH}${path}`, METADATA_PATH] : [METADATA_PATH];
}

/** The absolute URL of the metadata for a resource: what `resource_metadata` in a challenge points to. */
export function protectedResourceMetadataUrl(resourceUrl: string): string {
  const url = parseResource(resourceUrl);
  return `${url.origin}${metadataPathsFor(resourceUrl)[0]}`;
}

function parseResource(resourceUrl: string): URL {
  if (!isIdentifierUrl(resourceUrl)) throw invalidInput('resource', 'an http(s) URL without query or fragment', resourceUrl);
  return new URL(resourceUrl);
}

/**
 * The `WWW-Authenticate` value for a 401 or 403 (RFC 6750 §3, with RFC 9728 §5.1's `resource_metadata`).
 * Values are quoted strings: `"` and `\` are escaped, other characters outside printable ASCII become `?`,
 * and anything shaped like a JWT in the description is cut out, so no token text reaches the header.
 */
export function bearerChallenge(opts: {
  resourceMetadataUrl?: string;
  error?: 'invalid_token' | 'insufficient_scope';
  scope?: string;
  description?: string;
}): string {
  const params: Array<[string, string]> = [['realm', REALM]];
  if (opts.resourceMetadataUrl !== undefined) params.push(['resource_metadata', opts.resourceMetadataUrl]);
  if (opts.error !== undefined) params.push(['error', opts.error]);
  if (opts.scope !== undefined) params.push(['scope', opts.scope]);
  if (opts.description !== undefined) params.push(['error_description', opts.description.replace(/eyJ[\w-]*\.[\w-]*\.?[\w-]*/g, '[token]')]);
  return `Bearer ${params.map(([name, value]) => `${name}=${quoted(value)}`).join(', ')}`;
}

function quoted(value: string): string {
  return `"${value.replace(/[^\x20-\x7e]/g, '?').replace(/["\\]/g, '\\$&')}"`;
}
