/**
 * The OAuth resource-server module (src/tenancy/oauth.ts) against a real, certified authorization server:
 * oidc-provider on loopback, issuing JWT access tokens by the client_credentials grant for resource
 * indicators (RFC 8707). Every refusal the module promises is produced from a real token or from a real
 * token tampered with the way an attacker would: another audience, another issuer, expiry, `alg: none`,
 * HS256 keyed with the issuer's public key, truncation. Then the discovery paths (OpenID, RFC 8414, a
 * configured jwks_uri, an issuer that is down and comes up), and the metadata and challenge as the MCP
 * SDK's own client discovery reads them from a real HTTP server.
 */
import { discoverOAuthServerInfo, extractWWWAuthenticateParams } from '@modelcontextprotocol/sdk/client/auth.js';
import { randomBytes } from 'node:crypto';
import http from 'node:http';
import { base64url, decodeJwt, decodeProtectedHeader, importJWK, SignJWT, type JWK, type JWTPayload } from 'jose';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { SwarmError } from '../../src/errors.js';
import {
  bearerChallenge,
  createJwtVerifier,
  metadataPathsFor,
  OAuthConfigSchema,
  protectedResourceMetadata,
  protectedResourceMetadataUrl,
  type JwtVerifier,
  type OAuthConfig,
} from '../../src/tenancy/oauth.js';
import { CLIENT_ID, forged, GRANTED, publicKeySecrets, SHORT_CLIENT_ID, signingKey, startAuthServer, type AuthServer } from '../helpers/oidc.js';
import { freePort } from '../helpers/ports.js';

function config(input: Record<string, unknown>): OAuthConfig {
  return OAuthConfigSchema.parse(input);
}

/** The refusal `verify` throws, checked to be UNAUTHENTICATED and free of any piece of the token. */
async function refusal(verifier: JwtVerifier, token: string): Promise<SwarmError> {
  const err: unknown = await verifier.verify(token).then(
    () => new Error('the token was accepted'),
    (e: unknown) => e,
  );
  expect(err).toBeInstanceOf(SwarmError);
  const swarmError = err as SwarmError;
  expect(swarmError.code).toBe('UNAUTHENTICATED');
  const shown = `${swarmError.message}\n${swarmError.stack ?? ''}\n${JSON.stringify(swarmError)}`;
  for (const piece of [token, ...token.split('.')].filter((p) => p.length >= 8)) expect(shown).not.toContain(piece);
  return swarmError;
}

describe('OAuth resource server against oidc-provider', () => {
  let resource: string;
  let otherResource: string;
  let key: JWK;
  let as: AuthServer;
  let verifier: JwtVerifier;

  beforeAll(async () => {
    const port = await freePort();
    resource = `http://127.0.0.1:${port}/mcp`;
    otherResource = `http://127.0.0.1:${port}/other-service`;
    key = await signingKey();
    as = await startAuthServer({ signingKey: key, resources: [resource, otherResource] });
    verifier = createJwtVerifier(config({ issuer: as.issuer }), { resource });
  });
  afterAll(async () => {
    verifier?.close?.();
    await as?.close();
  });

  it('accepts a real access token: subject is the client id, scopes are those granted for this resource', async () => {
    const token = await as.token(resource);
    // What oidc-provider issued, read without verification, to know what to expect.
    expect(decodeProtectedHeader(token)).toMatchObject({ alg: 'RS256', typ: 'at+jwt', kid: key.kid });
    const claims = decodeJwt(token);
    expect(claims).toMatchObject({ iss: as.issuer, aud: resource, sub: CLIENT_ID, client_id: CLIENT_ID, scope: GRANTED });

    const result = await verifier.verify(token);
    expect(result).toEqual({ subject: CLIENT_ID, scopes: ['swarm:read', 'swarm:write'], expiresAt: claims.exp, tokenId: claims.jti, issuer: as.issuer });
    // swarm:exec was asked for but is not among the resource's scopes: the provider left it out.
    expect(result.scopes).not.toContain('swarm:exec');
    expect(result.expiresAt! - Math.floor(Date.now() / 1000)).toBeGreaterThan(500);
  });

  it('reads the principal from another claim when configured', async () => {
    const token = await as.token(resource, 'swarm:read');
    const byClientId = createJwtVerifier(config({ issuer: as.issuer, principalClaim: 'client_id' }), { resource });
    expect(await byClientId.verify(token)).toMatchObject({ subject: CLIENT_ID, scopes: ['swarm:read'] });
    const byMissing = createJwtVerifier(config({ issuer: as.issuer, principalClaim: 'email' }), { resource });
    expect((await refusal(byMissing, token)).message).toMatch(/no email claim/);
  });

  it('the provider refuses a resource it does not serve', async () => {
    const { status, body } = await as.tokenResponse('http://127.0.0.1:1/elsewhere', 'swarm:read');
    expect(status).toBe(400);
    expect(body.error).toBe('invalid_target');
  });

  it('refuses a token minted for another resource: wrong audience', async () => {
    const token = await as.token(otherResource);
    expect(decodeJwt(token).aud).toBe(otherResource);
    expect((await refusal(verifier, token)).message).toBe('wrong audience');
    // The same token is good for the service it was minted for.
    const other = createJwtVerifier(config({ issuer: as.issuer }), { resource: otherResource });
    expect((await other.verify(token)).subject).toBe(CLIENT_ID);
    // The configured resource wins over the runtime default.
    const configured = createJwtVerifier(config({ issuer: as.issuer, resource: otherResource }), { resource });
    expect((await configured.verify(token)).subject).toBe(CLIENT_ID);
  });

  it('refuses an expired token', async () => {
    const token = await as.token(resource, 'swarm:read', SHORT_CLIENT_ID);
    const claims = decodeJwt(token);
    expect(claims.exp! - claims.iat!).toBe(1);
    const strict = createJwtVerifier(config({ issuer: as.issuer, clockToleranceSeconds: 0 }), { resource });
    await new Promise((resolve) => setTimeout(resolve, 2_500));
    expect((await refusal(strict, token)).message).toBe('token expired');
    // Within the default 30 s tolerance it still passes: the tolerance is applied.
    expect((await verifier.verify(token)).subject).toBe(SHORT_CLIENT_ID);
  });

  it('refuses alg none', async () => {
    const token = await as.token(resource);
    const unsigned = forged(token, { alg: 'none', typ: 'at+jwt' });
    expect((await refusal(verifier, unsigned)).message).toBe('algorithm none not allowed');
  });

  it('refuses HS256 keyed with the issuer\'s public key (key confusion)', async () => {
    const token = await as.token(resource);
    for (const secret of await publicKeySecrets(as.issuer, key.kid!)) {
      const hs = await new SignJWT(decodeJwt(token) as JWTPayload)
        .setProtectedHeader({ alg: 'HS256', typ: 'at+jwt', kid: key.kid! })
        .sign(new TextEncoder().encode(secret));
      expect((await refusal(verifier, hs)).message).toBe('algorithm HS256 not allowed');
    }
  });

  it('refuses a token from another issuer, even one signed with the same key', async () => {
    const impostor = await startAuthServer({ signingKey: key, resources: [resource] });
    try {
      const token = await impostor.token(resource);
      expect(decodeJwt(token)).toMatchObject({ iss: impostor.issuer, aud: resource });
      expect((await refusal(verifier, token)).message).toBe('wrong issuer');
      // Nothing else is wrong with it: a verifier trusting that issuer accepts it.
      const trusting = createJwtVerifier(config({ issuer: impostor.issuer }), { resource });
      expect((await trusting.verify(token)).subject).toBe(CLIENT_ID);
    } finally {
      await impostor.close();
    }
  });

  it('refuses a token signed by a key the issuer does not publish, and a tampered payload', async () => {
    const token = await as.token(resource);
    const stranger = await signingKey();
    const byStranger = await new SignJWT(decodeJwt(token) as JWTPayload)
      .setProtectedHeader({ alg: 'RS256', typ: 'at+jwt', kid: key.kid! })
      .sign(await importJWK(stranger, 'RS256'));
    expect((await refusal(verifier, byStranger)).message).toBe('signature invalid');
    const unknownKid = await new SignJWT(decodeJwt(token) as JWTPayload)
      .setProtectedHeader({ alg: 'RS256', typ: 'at+jwt', kid: stranger.kid! })
      .sign(await importJWK(stranger, 'RS256'));
    expect((await refusal(verifier, unknownKid)).message).toMatch(/^signature invalid/);

    const [header, payload, signature] = token.split('.') as [string, string, string];
    const escalated = { ...decodeJwt(token), scope: 'swarm:read swarm:write swarm:admin' };
    expect(payload).not.toBe(base64url.encode(JSON.stringify(escalated)));
    expect((await refusal(verifier, `${header}.${base64url.encode(JSON.stringify(escalated))}.${signature}`)).message).toBe('signature invalid');
  });

  it('refuses truncated tokens, random strings and junk', async () => {
    const token = await as.token(resource);
    expect((await refusal(verifier, token.slice(0, -12))).message).toBe('signature invalid');
    expect((await refusal(verifier, token.slice(0, token.indexOf('.') + 20))).message).toBe('malformed token');
    expect((await refusal(verifier, `${token.slice(0, token.lastIndexOf('.') - 5)}.${token.split('.')[2]}`)).message).toBe('signature invalid');
    expect((await refusal(verifier, randomBytes(40).toString('base64url'))).message).toBe('malformed token');
    expect((await refusal(verifier, 'a.b.c')).message).toBe('malformed token');
    expect((await refusal(verifier, '')).message).toBe('no token');
    expect((await refusal(verifier, `${token}.${token}`)).message).toBe('malformed token');
  });

  it('checks typ and requires exp, on tokens signed with the issuer\'s own key', async () => {
    const privateKey = await importJWK(key, 'RS256');
    const claims = decodeJwt(await as.token(resource));
    const sign = (payload: JWTPayload, typ: string | undefined) =>
      new SignJWT(payload).setProtectedHeader({ alg: 'RS256', kid: key.kid!, ...(typ === undefined ? {} : { typ }) }).sign(privateKey);

    for (const typ of ['at+jwt', 'application/at+jwt', 'JWT', undefined]) {
      expect((await verifier.verify(await sign(claims, typ))).subject).toBe(CLIENT_ID);
    }
    expect((await refusal(verifier, await sign(claims, 'dpop+jwt'))).message).toMatch(/token type dpop\+jwt is not an access token/);
    expect((await refusal(verifier, await sign(claims, 'logout+jwt'))).message).toMatch(/not an access token/);
    const { exp: _exp, ...noExp } = claims;
    expect((await refusal(verifier, await sign(noExp, 'at+jwt'))).message).toBe('token has no exp claim');
    const { scope: _scope, ...noScope } = claims;
    expect((await verifier.verify(await sign({ ...noScope, scp: ['swarm:read', 'swarm:exec'] }, 'at+jwt'))).scopes).toEqual(['swarm:read', 'swarm:exec']);
    expect((await verifier.verify(await sign(noScope, 'at+jwt'))).scopes).toEqual([]);
  });
});

describe('finding the issuer\'s keys', () => {
  let resource: string;
  let key: JWK;

  beforeAll(async () => {
    resource = `http://127.0.0.1:${await freePort()}/mcp`;
    key = await signingKey();
  });

  /** fetch that records the URLs asked for. */
  function recordingFetch(): { fetch: typeof fetch; urls: string[] } {
    const urls: string[] = [];
    return {
      urls,
      fetch: (input, init) => {
        urls.push(String(input instanceof Request ? input.url : input));
        return fetch(input, init);
      },
    };
  }

  it('discovers once through OpenID metadata and keeps what it found', async () => {
    const as = await startAuthServer({ signingKey: key, resources: [resource] });
    try {
      const recorder = recordingFetch();
      const verifier = createJwtVerifier(config({ issuer: as.issuer }), { resource, fetch: recorder.fetch });
      expect(recorder.urls).toEqual([]); // lazy: nothing before the first verification
      await verifier.verify(await as.token(resource));
      await verifier.verify(await as.token(resource));
      expect(recorder.urls).toEqual([`${as.issuer}/.well-known/openid-configuration`, `${as.issuer}/jwks`]);
    } finally {
      await as.close();
    }
  });

  it('falls back to RFC 8414 metadata when there is no OpenID discovery document', async () => {
    const as = await startAuthServer({ signingKey: key, resources: [resource], metadata: 'oauth' });
    try {
      const recorder = recordingFetch();
      const verifier = createJwtVerifier(config({ issuer: as.issuer }), { resource, fetch: recorder.fetch });
      expect((await verifier.verify(await as.token(resource))).subject).toBe(CLIENT_ID);
      expect(recorder.urls).toEqual([
        `${as.issuer}/.well-known/openid-configuration`,
        `${as.issuer}/.well-known/oauth-authorization-server`,
        `${as.issuer}/jwks`,
      ]);
    } finally {
      await as.close();
    }
  });

  it('uses a configured jwksUri without discovery', async () => {
    const as = await startAuthServer({ signingKey: key, resources: [resource] });
    try {
      const recorder = recordingFetch();
      const verifier = createJwtVerifier(config({ issuer: as.issuer, jwksUri: `${as.issuer}/jwks` }), { resource, fetch: recorder.fetch });
      expect((await verifier.verify(await as.token(resource))).subject).toBe(CLIENT_ID);
      expect(recorder.urls).toEqual([`${as.issuer}/jwks`]);
    } finally {
      await as.close();
    }
  });

  it('refuses metadata that names another issuer', async () => {
    const as = await startAuthServer({ signingKey: key, resources: [resource] });
    try {
      const verifier = createJwtVerifier(config({ issuer: `${as.issuer}/` }), { resource });
      expect((await refusal(verifier, await as.token(resource))).message).toMatch(/^issuer's keys could not be fetched: .*names issuer/);
    } finally {
      await as.close();
    }
  });

  it('reports an issuer that is down, and retries discovery once it is up', async () => {
    const port = await freePort();
    const issuer = `http://127.0.0.1:${port}`;
    const verifier = createJwtVerifier(config({ issuer }), { resource });
    // Any well-formed RS256 token will do to reach discovery; this one is from an issuer that is up.
    const elsewhere = await startAuthServer({ signingKey: key, resources: [resource] });
    const early = await elsewhere.token(resource);
    await elsewhere.close();
    const down = await refusal(verifier, early);
    expect(down.message).toMatch(/^issuer's keys could not be fetched: no metadata found \(.*ECONNREFUSED/);
    expect(down.message).toContain(`${issuer}/.well-known/openid-configuration`);
    expect(down.details).toEqual({ unavailable: true }); // a door answers 503 for it, not 401

    const as = await startAuthServer({ signingKey: key, resources: [resource], port });
    try {
      expect(await verifier.verify(await as.token(resource))).toMatchObject({ subject: CLIENT_ID, issuer });
    } finally {
      await as.close();
    }
  });

  it('reports a JWKS that cannot be fetched', async () => {
    const as = await startAuthServer({ signingKey: key, resources: [resource] });
    try {
      const verifier = createJwtVerifier(config({ issuer: as.issuer, jwksUri: `${as.issuer}/no-such-jwks` }), { resource });
      expect((await refusal(verifier, await as.token(resource))).message).toMatch(/^issuer's keys could not be fetched: .*no-such-jwks: Expected 200 OK/);
    } finally {
      await as.close();
    }
  });
});

describe('OAuthConfigSchema', () => {
  it('fills the defaults', () => {
    expect(config({ issuer: 'https://login.example.com' })).toEqual({
      issuer: 'https://login.example.com',
      principalClaim: 'sub',
      algorithms: ['RS256', 'PS256', 'ES256', 'EdDSA'],
      clockToleranceSeconds: 30,
      scopesSupported: ['swarm:read', 'swarm:write', 'swarm:exec', 'swarm:admin'],
    });
  });

  it.each([
    [{ issuer: 'https://a.example', algorithms: ['HS256'] }, 'algorithms'],
    [{ issuer: 'https://a.example', algorithms: ['none'] }, 'algorithms'],
    [{ issuer: 'https://a.example', algorithms: [] }, 'algorithms'],
    [{ issuer: 'https://a.example', clockToleranceSeconds: 301 }, 'clockToleranceSeconds'],
    [{ issuer: 'https://a.example', clockToleranceSeconds: -1 }, 'clockToleranceSeconds'],
    [{ issuer: 'ftp://a.example' }, 'issuer'],
    [{ issuer: 'https://a.example?tenant=1' }, 'issuer'],
    [{ issuer: 'not a url' }, 'issuer'],
    [{}, 'issuer'],
    [{ issuer: 'https://a.example', resource: 'https://b.example/mcp#x' }, 'resource'],
    [{ issuer: 'https://a.example', jwksUri: 'file:///etc/passwd' }, 'jwksUri'],
    [{ issuer: 'https://a.example', scopesSupported: ['has space'] }, 'scopesSupported'],
    [{ issuer: 'https://a.example', audience: 'x' }, ''],
  ])('refuses %j (at %s)', (input, field) => {
    const result = OAuthConfigSchema.safeParse(input);
    expect(result.success).toBe(false);
    expect(result.error!.issues.map((i) => String(i.path[0] ?? ''))).toContain(field);
  });
});

describe('protected-resource metadata and the bearer challenge', () => {
  it('builds the RFC 9728 document', () => {
    expect(
      protectedResourceMetadata({ resource: 'https://swarm.example/mcp', authorizationServers: ['https://login.example.com'], scopesSupported: ['swarm:read'] }),
    ).toEqual({
      resource: 'https://swarm.example/mcp',
      authorization_servers: ['https://login.example.com'],
      scopes_supported: ['swarm:read'],
      bearer_methods_supported: ['header'],
      resource_name: 'vscode-swarm',
    });
  });

  it('serves it at the well-known path with the resource path inserted, and at the bare one', () => {
    expect(metadataPathsFor('http://127.0.0.1:7081/mcp')).toEqual(['/.well-known/oauth-protected-resource/mcp', '/.well-known/oauth-protected-resource']);
    expect(metadataPathsFor('https://swarm.example/team/a/mcp')).toEqual(['/.well-known/oauth-protected-resource/team/a/mcp', '/.well-known/oauth-protected-resource']);
    expect(metadataPathsFor('https://swarm.example/')).toEqual(['/.well-known/oauth-protected-resource']);
    expect(metadataPathsFor('https://swarm.example')).toEqual(['/.well-known/oauth-protected-resource']);
    expect(protectedResourceMetadataUrl('http://127.0.0.1:7081/mcp')).toBe('http://127.0.0.1:7081/.well-known/oauth-protected-resource/mcp');
    expect(() => metadataPathsFor('https://swarm.example/mcp?x=1')).toThrow(/resource: expected an http\(s\) URL without query or fragment/);
  });

  it('writes RFC 6750 challenges', () => {
    expect(
      bearerChallenge({
        resourceMetadataUrl: 'http://127.0.0.1:7081/.well-known/oauth-protected-resource/mcp',
        error: 'invalid_token',
        description: 'token expired',
      }),
    ).toBe(
      'Bearer realm="vscode-swarm", resource_metadata="http://127.0.0.1:7081/.well-known/oauth-protected-resource/mcp", error="invalid_token", error_description="token expired"',
    );
    expect(bearerChallenge({})).toBe('Bearer realm="vscode-swarm"');
    expect(bearerChallenge({ error: 'insufficient_scope', scope: 'swarm:write' })).toBe('Bearer realm="vscode-swarm", error="insufficient_scope", scope="swarm:write"');
  });

  it('escapes quotes, drops line breaks and never carries a token', () => {
    const jwt = 'eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJ4In0.c2lnbmF0dXJl';
    const value = bearerChallenge({ error: 'invalid_token', description: `bad "x" \\ y\r\nSet-Cookie: a=b ${jwt} é` });
    expect(value).toBe('Bearer realm="vscode-swarm", error="invalid_token", error_description="bad \\"x\\" \\\\ y??Set-Cookie: a=b [token] ?"');
    expect(value).not.toContain('eyJ');
    // Node accepts it as a header value (no CR/LF or other forbidden characters).
    expect(() => http.validateHeaderValue('WWW-Authenticate', value)).not.toThrow();
  });
});

describe('the pieces together, as the MCP SDK client discovers them', () => {
  let as: AuthServer;
  let rs: http.Server;
  let resource: string;

  beforeAll(async () => {
    const port = await freePort();
    resource = `http://127.0.0.1:${port}/mcp`;
    as = await startAuthServer({ signingKey: await signingKey(), resources: [resource] });
    const verifier = createJwtVerifier(config({ issuer: as.issuer }), { resource });
    const metadata = protectedResourceMetadata({ resource, authorizationServers: [as.issuer], scopesSupported: ['swarm:read', 'swarm:write'] });
    const paths = new Set(metadataPathsFor(resource));
    // A minimal resource server wired the way src/mcp/http.ts is meant to be.
    rs = http.createServer((req, res) => {
      void (async () => {
        if (paths.has(req.url ?? '')) {
          res.writeHead(200, { 'content-type': 'application/json' }).end(JSON.stringify(metadata));
          return;
        }
        const bearer = /^Bearer (.+)$/.exec(req.headers.authorization ?? '')?.[1];
        const challenge = { resourceMetadataUrl: protectedResourceMetadataUrl(resource) };
        if (!bearer) {
          res.writeHead(401, { 'www-authenticate': bearerChallenge(challenge) }).end();
          return;
        }
        try {
          const who = await verifier.verify(bearer);
          res.writeHead(200, { 'content-type': 'application/json' }).end(JSON.stringify(who));
        } catch (err) {
          res.writeHead(401, { 'www-authenticate': bearerChallenge({ ...challenge, error: 'invalid_token', description: (err as Error).message }) }).end();
        }
      })();
    });
    await new Promise<void>((resolve) => rs.listen(port, '127.0.0.1', resolve));
  });
  afterAll(async () => {
    await new Promise((resolve) => rs?.close(resolve));
    await as?.close();
  });

  it('leads a client from a 401 to the authorization server, and the token it gets there is accepted', async () => {
    const first = await fetch(resource, { method: 'POST' });
    expect(first.status).toBe(401);
    const params = extractWWWAuthenticateParams(first);
    expect(params.resourceMetadataUrl?.href).toBe(protectedResourceMetadataUrl(resource));

    const info = await discoverOAuthServerInfo(resource, { resourceMetadataUrl: params.resourceMetadataUrl! });
    expect(info.resourceMetadata).toMatchObject({ resource, authorization_servers: [as.issuer] });
    expect(info.authorizationServerUrl).toBe(as.issuer);
    expect(info.authorizationServerMetadata?.token_endpoint).toBe(`${as.issuer}/token`);
    // Without the challenge's hint the client finds the same document by the path-inserted well-known URL.
    expect((await discoverOAuthServerInfo(resource)).resourceMetadata).toEqual(info.resourceMetadata);

    const token = await as.token(resource);
    const ok = await fetch(resource, { method: 'POST', headers: { authorization: `Bearer ${token}` } });
    expect(ok.status).toBe(200);
    expect(await ok.json()).toMatchObject({ subject: CLIENT_ID, scopes: ['swarm:read', 'swarm:write'], issuer: as.issuer });

    const bad = await fetch(resource, { method: 'POST', headers: { authorization: `Bearer ${token.slice(0, -12)}` } });
    expect(bad.status).toBe(401);
    expect(extractWWWAuthenticateParams(bad).error).toBe('invalid_token');
    expect(bad.headers.get('www-authenticate')).toContain('error_description="signature invalid"');
  });
});
