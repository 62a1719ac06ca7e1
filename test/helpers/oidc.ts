/**
 * A real, certified OAuth authorization server for tests: oidc-provider on loopback, issuing JWT access
 * tokens (RFC 9068) by the client_credentials grant for resource indicators (RFC 8707), and, for the
 * dashboard's client, by the authorization code grant with PKCE, where a browser signs in as a test
 * subject on a one-field page of this helper's own (no password; consent is given without a page). One
 * copy, used by the resource-server module's own test (test/unit/oauth.test.ts), by the end-to-end one
 * through MCP over HTTP (test/unit/oauth-mcp.test.ts) and by the dashboard's OAuth sign-in test
 * (test/e2e/dashboard-oauth.test.ts); plus the tokens an attacker would forge from a real one.
 */
import { createPublicKey, randomBytes, type JsonWebKey } from 'node:crypto';
import http from 'node:http';
import { base64url, exportJWK, generateKeyPair, type JWK } from 'jose';
import Provider, { errors as oidcErrors, type ClientMetadata } from 'oidc-provider';
import { freePort } from './ports.js';

export const CLIENT_ID = 'swarm-agent';
/** Its access tokens live one second. */
export const SHORT_CLIENT_ID = 'short-lived';
/** The dashboard's client: authorization_code with PKCE, client_secret_basic with CLIENT_SECRET. */
export const DASHBOARD_CLIENT_ID = 'swarm-dashboard';
export const CLIENT_SECRET = randomBytes(24).toString('base64url');
/** The scopes every served resource offers; a token gets those of them it asks for. */
export const GRANTED = 'swarm:read swarm:write';

export interface AuthServer {
  issuer: string;
  /** A real access token from POST /token (client_credentials). */
  token(resource: string, scope?: string, clientId?: string): Promise<string>;
  /** The raw token endpoint answer, for checking what the provider itself refuses. */
  tokenResponse(resource: string, scope: string, clientId?: string): Promise<{ status: number; body: Record<string, unknown> }>;
  /** resource → the audience its access tokens name instead, from the next token on (a mis-minted token). */
  mintAudience: Map<string, string>;
  close(): Promise<void>;
}

/**
 * oidc-provider serving `resources` (each with GRANTED as its scopes, JWT access tokens signed RS256 with
 * `signingKey`) and refusing any other resource. Its clients are CLIENT_ID, SHORT_CLIENT_ID and
 * `clients` (all with CLIENT_SECRET; all but SHORT_CLIENT_ID get tokens that live ten minutes). With
 * `metadata: 'oauth'` the OpenID discovery document answers 404 and RFC 8414 metadata is served instead,
 * as an OAuth-only server would. With `dashboardRedirectUris`, DASHBOARD_CLIENT_ID may use the
 * authorization code grant to those redirect URIs: the browser is sent to /interaction/<uid>, a form
 * with one field, `subject` (button "Sign in"), whose value becomes the token's `sub`; the consent
 * prompt that follows grants what was asked without a page.
 */
export async function startAuthServer(opts: {
  signingKey: JWK;
  resources: string[];
  port?: number;
  metadata?: 'openid' | 'oauth';
  clients?: string[];
  dashboardRedirectUris?: string[];
}): Promise<AuthServer> {
  const port = opts.port ?? (await freePort());
  const issuer = `http://127.0.0.1:${port}`;
  const client = (client_id: string): ClientMetadata => ({
    client_id,
    client_secret: CLIENT_SECRET,
    grant_types: ['client_credentials'],
    response_types: [],
    redirect_uris: [],
    token_endpoint_auth_method: 'client_secret_basic',
  });
  const mintAudience = new Map<string, string>();
  const dashboardClient: ClientMetadata[] = opts.dashboardRedirectUris
    ? [
        {
          client_id: DASHBOARD_CLIENT_ID,
          client_secret: CLIENT_SECRET,
          grant_types: ['authorization_code'],
          response_types: ['code'],
          redirect_uris: opts.dashboardRedirectUris,
          token_endpoint_auth_method: 'client_secret_basic',
        },
      ]
    : [];
  const provider = new Provider(issuer, {
    clients: [...[CLIENT_ID, SHORT_CLIENT_ID, ...(opts.clients ?? [])].map(client), ...dashboardClient],
    jwks: { keys: [opts.signingKey] },
    cookies: { keys: [randomBytes(16).toString('hex')] },
    interactions: { url: (_ctx, interaction) => `/interaction/${interaction.uid}` },
    pkce: { required: () => true },
    features: {
      devInteractions: { enabled: false },
      clientCredentials: { enabled: true },
      resourceIndicators: {
        enabled: true,
        getResourceServerInfo: (_ctx, resource) => {
          if (!opts.resources.includes(resource)) throw new oidcErrors.InvalidTarget();
          return { scope: GRANTED, audience: mintAudience.get(resource) ?? resource, accessTokenFormat: 'jwt', jwt: { sign: { alg: 'RS256' } } };
        },
      },
    },
    ttl: { ClientCredentials: (_ctx, _token, c) => (c.clientId === SHORT_CLIENT_ID ? 1 : 600), AccessToken: 600 },
  });
  const callback = provider.callback();
  const server = http.createServer((req, res) => {
    if (req.url?.startsWith('/interaction/')) {
      interaction(provider, req, res).catch((err: unknown) => {
        if (!res.headersSent) res.writeHead(500, { 'content-type': 'text/plain' });
        res.end(`interaction failed: ${(err as Error).message}`);
      });
    } else if (opts.metadata === 'oauth' && req.url === '/.well-known/openid-configuration') {
      res.writeHead(404).end();
    } else if (opts.metadata === 'oauth' && req.url === '/.well-known/oauth-authorization-server') {
      res.writeHead(200, { 'content-type': 'application/json' });
      res.end(JSON.stringify({ issuer, token_endpoint: `${issuer}/token`, jwks_uri: `${issuer}/jwks`, grant_types_supported: ['client_credentials'] }));
    } else {
      void callback(req, res);
    }
  });
  await new Promise<void>((resolve) => server.listen(port, '127.0.0.1', resolve));

  async function tokenResponse(resource: string, scope: string, clientId = CLIENT_ID) {
    const response = await fetch(`${issuer}/token`, {
      method: 'POST',
      headers: {
        authorization: `Basic ${Buffer.from(`${clientId}:${CLIENT_SECRET}`).toString('base64')}`,
        'content-type': 'application/x-www-form-urlencoded',
      },
      body: new URLSearchParams({ grant_type: 'client_credentials', resource, scope }).toString(),
    });
    return { status: response.status, body: (await response.json()) as Record<string, unknown> };
  }

  return {
    issuer,
    tokenResponse,
    mintAudience,
    async token(resource, scope = 'swarm:read swarm:write swarm:exec', clientId = CLIENT_ID) {
      const { status, body } = await tokenResponse(resource, scope, clientId);
      if (status !== 200 || typeof body.access_token !== 'string') throw new Error(`token endpoint answered ${status}: ${JSON.stringify(body)}`);
      return body.access_token;
    },
    close: () =>
      new Promise<void>((resolve) => {
        server.close(() => resolve());
        server.closeAllConnections(); // keep-alive sockets from fetch would hold close() open
      }),
  };
}

/**
 * The sign-in and consent steps of an authorization: GET of a login prompt shows the one-field form;
 * its POST signs that subject in; a consent prompt is answered at once with a grant of everything the
 * client asked for (what oidc-provider's own development interactions grant on a click).
 */
async function interaction(provider: Provider, req: http.IncomingMessage, res: http.ServerResponse): Promise<void> {
  const details = await provider.interactionDetails(req, res);
  const { prompt, params, session, grantId } = details;
  if (prompt.name === 'login' && req.method === 'GET') {
    res.writeHead(200, { 'content-type': 'text/html; charset=utf-8', 'cache-control': 'no-store' });
    res.end(
      `<!doctype html><html><head><title>Test issuer sign-in</title></head><body><h1>Test issuer</h1>` +
        `<form method="post" action="/interaction/${details.uid}"><label>Subject <input name="subject" required></label><button type="submit">Sign in</button></form></body></html>`,
    );
    return;
  }
  if (prompt.name === 'login' && req.method === 'POST') {
    const chunks: Buffer[] = [];
    for await (const chunk of req) chunks.push(chunk as Buffer);
    const subject = new URLSearchParams(Buffer.concat(chunks).toString('utf8')).get('subject') ?? '';
    if (!subject) throw new Error('no subject');
    await provider.interactionFinished(req, res, { login: { accountId: subject } }, { mergeWithLastSubmission: false });
    return;
  }
  if (prompt.name === 'consent') {
    const grant = grantId ? await provider.Grant.find(grantId) : new provider.Grant({ accountId: session!.accountId, clientId: params.client_id as string });
    if (!grant) throw new Error(`grant ${grantId} not found`);
    const missing = prompt.details as { missingOIDCScope?: string[]; missingOIDCClaims?: string[]; missingResourceScopes?: Record<string, string[]> };
    if (missing.missingOIDCScope) grant.addOIDCScope(missing.missingOIDCScope.join(' '));
    if (missing.missingOIDCClaims) grant.addOIDCClaims(missing.missingOIDCClaims);
    for (const [indicator, scopes] of Object.entries(missing.missingResourceScopes ?? {})) grant.addResourceScope(indicator, scopes.join(' '));
    await provider.interactionFinished(req, res, { consent: { grantId: await grant.save() } }, { mergeWithLastSubmission: true });
    return;
  }
  throw new Error(`prompt ${prompt.name} (${req.method}) is not handled by this test issuer`);
}

/** A fresh RS256 private signing key for the provider, with a random kid. */
export async function signingKey(): Promise<JWK> {
  const { privateKey } = await generateKeyPair('RS256', { extractable: true });
  return { ...(await exportJWK(privateKey)), kid: randomBytes(6).toString('hex'), alg: 'RS256', use: 'sig' };
}

/** A compact JWS with the given header over the real token's payload and the given signature (none by default). */
export function forged(realToken: string, header: Record<string, unknown>, signature = ''): string {
  const payload = realToken.split('.')[1]!;
  return `${base64url.encode(JSON.stringify(header))}.${payload}.${signature}`;
}

/**
 * The issuer's published RSA key `kid` the ways a key-confusion attacker would use it as an HMAC secret:
 * PEM (SPKI), the JWK as JSON, and the bare modulus.
 */
export async function publicKeySecrets(issuer: string, kid: string): Promise<string[]> {
  const jwks = (await (await fetch(`${issuer}/jwks`)).json()) as { keys: JWK[] };
  const publicJwk = jwks.keys.find((k) => k.kid === kid);
  if (!publicJwk) throw new Error(`${issuer}/jwks has no key ${kid}`);
  if (publicJwk.d !== undefined) throw new Error(`${issuer}/jwks publishes a private key`);
  const pem = createPublicKey({ key: publicJwk as JsonWebKey, format: 'jwk' }).export({ type: 'spki', format: 'pem' }) as string;
  return [pem, JSON.stringify(publicJwk), publicJwk.n!];
}
