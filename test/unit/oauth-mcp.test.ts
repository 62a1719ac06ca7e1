/**
 * OAuth end to end: a real authorization server (oidc-provider, test/helpers/oidc.ts) issues a JWT access
 * token for vscode-swarm's MCP endpoint, and the real MCP SDK client opens a session with it against a real
 * controller (no providers: nothing here creates a workspace) served by src/mcp/http.ts. What is proven is
 * the whole door as a client meets it: the RFC 9728 metadata and the 401 that points to it, the SDK's own
 * discovery from there to the issuer, the token's subject mapped to a principal and its scopes capped by
 * the role, 403 insufficient_scope before a tool runs, every way a token is refused (401 invalid_token,
 * never echoing it), 503 with Retry-After while the issuer is down, and one audit event per refusal.
 */
import { discoverOAuthServerInfo, extractWWWAuthenticateParams } from '@modelcontextprotocol/sdk/client/auth.js';
import { Client } from '@modelcontextprotocol/sdk/client/index.js';
import { StreamableHTTPClientTransport, StreamableHTTPError } from '@modelcontextprotocol/sdk/client/streamableHttp.js';
import type { FetchLike } from '@modelcontextprotocol/sdk/shared/transport.js';
import type { CallToolResult } from '@modelcontextprotocol/sdk/types.js';
import { mkdtemp, readdir, readFile, rm } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { decodeJwt, SignJWT, type JWK, type JWTPayload } from 'jose';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { AuditEvent } from '../../src/audit/audit-log.js';
import { parseConfig } from '../../src/config.js';
import { SwarmController } from '../../src/controller/swarm-controller.js';
import { startMcpHttp } from '../../src/mcp/http.js';
import { InstanceRegistry } from '../../src/registry/instance-registry.js';
import { SCOPES } from '../../src/tenancy/identity.js';
import { CLIENT_ID, forged, publicKeySecrets, SHORT_CLIENT_ID, signingKey, startAuthServer, type AuthServer } from '../helpers/oidc.js';
import { freePort } from '../helpers/ports.js';

/** Clients of the provider besides CLIENT_ID (mapped to ci-bot, a member): */
const VIEWER_CLIENT = 'watch-bot'; // mapped to watcher, a viewer
const RETIRED_CLIENT = 'retired-bot'; // mapped to retired, disabled during a test
const STRANGER_CLIENT = 'stranger-bot'; // mapped to no principal

const INITIALIZE = {
  jsonrpc: '2.0',
  id: 1,
  method: 'initialize',
  params: { protocolVersion: '2025-06-18', capabilities: {}, clientInfo: { name: 'oauth-mcp-test', version: '1.0.0' } },
};
const AUTH_DENIALS = { type: 'dev.vscode-swarm.auth.*', outcome: 'denied', limit: 10_000 } as const;

interface Seen {
  method: string;
  url: string;
  status: number;
  headers: Headers;
  body: string;
}

/** A fetch (for the SDK client and for plain requests) that keeps every answer, body included. */
function recordingFetch(): { fetch: FetchLike; seen: Seen[] } {
  const seen: Seen[] = [];
  return {
    seen,
    fetch: async (url, init) => {
      const response = await fetch(url, init);
      // A stream (SSE) answer is recorded without its body, which stays open as long as the session.
      const streaming = response.headers.get('content-type')?.includes('text/event-stream') ?? false;
      seen.push({ method: init?.method ?? 'GET', url: String(url), status: response.status, headers: response.headers, body: streaming ? '' : await response.clone().text() });
      return response;
    },
  };
}

/** Everything a client was shown: status line aside, every header value and every body. */
function shownText(seen: readonly Seen[]): string {
  return seen.map((s) => `${[...s.headers.entries()].map(([k, v]) => `${k}: ${v}`).join('\n')}\n${s.body}`).join('\n');
}

/** The token and each of its parts long enough to be recognisable. */
function pieces(token: string): string[] {
  return [token, ...token.split('.')].filter((p) => p.length >= 8);
}

const rejection = (p: Promise<unknown>): Promise<unknown> =>
  p.then(
    () => new Error('it succeeded'),
    (e: unknown) => e,
  );

function structured<T>(result: unknown): T {
  const r = result as CallToolResult;
  expect(r.isError, JSON.stringify(r.content)).toBeFalsy();
  return r.structuredContent as T;
}

interface Swarm {
  stateDir: string;
  controller: SwarmController;
  server: Awaited<ReturnType<typeof startMcpHttp>>;
  /** SDK clients connected through `connect`, closed with the rest. */
  clients: Client[];
  close(): Promise<void>;
}

/** A controller without providers and with `oauth`, serving MCP over HTTP on `port`; ci-bot signs in as CLIENT_ID. */
async function startSwarm(port: number, oauth: Record<string, unknown>): Promise<Swarm> {
  const stateDir = await mkdtemp(path.join(os.tmpdir(), 'oauth-mcp-'));
  const config = parseConfig({ stateDir, logLevel: 'silent', gateway: { enabled: false }, mcpHttp: { port }, oauth });
  const controller = new SwarmController({ config, registry: new InstanceRegistry({ stateDir }), providers: {}, lockStateDir: false });
  await controller.initialize();
  await controller.principals.addPrincipal({ id: 'ci-bot', role: 'member', kind: 'service', subjects: [CLIENT_ID] });
  const server = await startMcpHttp({ controller, host: '127.0.0.1', port, stateDir });
  const clients: Client[] = [];
  return {
    stateDir,
    controller,
    server,
    clients,
    async close() {
      for (const client of clients) await client.close().catch(() => undefined);
      await server.close();
      await controller.close();
      await rm(stateDir, { recursive: true, force: true });
    },
  };
}

/** The SDK client with `Authorization: Bearer <token>` (none when undefined), connected (initialize), through `fetchImpl`. */
async function connect(swarm: Swarm, bearer: string | undefined, fetchImpl?: FetchLike): Promise<Client> {
  const transport = new StreamableHTTPClientTransport(new URL(swarm.server.url), {
    requestInit: { headers: bearer === undefined ? {} : { Authorization: `Bearer ${bearer}` } },
    ...(fetchImpl ? { fetch: fetchImpl } : {}),
  });
  const client = new Client({ name: 'oauth-mcp-test', version: '1.0.0' });
  swarm.clients.push(client);
  await client.connect(transport);
  return client;
}

/** A plain initialize POST, as any HTTP client would send it. */
function postInitialize(swarm: Swarm, fetchImpl: FetchLike, bearer?: string): Promise<Response> {
  return fetchImpl(swarm.server.url, {
    method: 'POST',
    headers: { 'content-type': 'application/json', accept: 'application/json, text/event-stream', ...(bearer === undefined ? {} : { authorization: `Bearer ${bearer}` }) },
    body: JSON.stringify(INITIALIZE),
  });
}

/** The text of every audit day file. */
async function auditFiles(stateDir: string): Promise<string> {
  const dir = path.join(stateDir, 'audit');
  const files = (await readdir(dir)).filter((f) => f.endsWith('.jsonl'));
  expect(files.length).toBeGreaterThan(0);
  return (await Promise.all(files.map((f) => readFile(path.join(dir, f), 'utf8')))).join('\n');
}

describe('OAuth access tokens from a real authorization server on MCP over HTTP', () => {
  let port: number;
  let resource: string;
  let otherResource: string;
  let key: JWK;
  let as: AuthServer;
  let swarm: Swarm;
  let controller: SwarmController;
  let server: Swarm['server'];
  /** Every token the tests sent, to look for in the audit files at the end. */
  const sent: string[] = [];

  beforeAll(async () => {
    port = await freePort();
    resource = `http://127.0.0.1:${port}/mcp`;
    otherResource = `http://127.0.0.1:${port}/other-service`;
    key = await signingKey();
    as = await startAuthServer({ signingKey: key, resources: [resource, otherResource], clients: [VIEWER_CLIENT, RETIRED_CLIENT, STRANGER_CLIENT] });
    swarm = await startSwarm(port, { issuer: as.issuer, clockToleranceSeconds: 0 });
    ({ controller, server } = swarm);
    await controller.principals.addPrincipal({ id: 'watcher', role: 'viewer', kind: 'service', subjects: [VIEWER_CLIENT] });
    await controller.principals.addPrincipal({ id: 'retired', role: 'member', kind: 'service', subjects: [RETIRED_CLIENT] });
  });

  afterAll(async () => {
    await swarm?.close();
    await as?.close();
  });

  async function token(scope: string, clientId = CLIENT_ID, audience = resource): Promise<string> {
    const t = await as.token(audience, scope, clientId);
    sent.push(t);
    return t;
  }

  const metadataUrl = (): string => `http://127.0.0.1:${port}/.well-known/oauth-protected-resource/mcp`;

  it('serves the RFC 9728 metadata at both well-known paths, and the 401 leads the SDK from it to the issuer', async () => {
    expect(server.url).toBe(resource); // the default resource is the endpoint's own URL
    for (const wellKnown of ['/.well-known/oauth-protected-resource/mcp', '/.well-known/oauth-protected-resource']) {
      const response = await fetch(`http://127.0.0.1:${port}${wellKnown}`);
      expect(response.status, wellKnown).toBe(200);
      expect(response.headers.get('content-type')).toContain('application/json');
      expect(await response.json()).toEqual({
        resource,
        authorization_servers: [as.issuer],
        scopes_supported: [...SCOPES],
        bearer_methods_supported: ['header'],
        resource_name: 'vscode-swarm',
      });
    }

    const before = (await controller.audit.query(AUTH_DENIALS)).length;
    const recorder = recordingFetch();
    const first = await postInitialize(swarm, recorder.fetch);
    expect(first.status).toBe(401);
    expect(first.headers.get('www-authenticate')).toBe(`Bearer realm="vscode-swarm", resource_metadata="${metadataUrl()}"`);
    const params = extractWWWAuthenticateParams(first);
    expect(params.resourceMetadataUrl?.href).toBe(metadataUrl());

    const info = await discoverOAuthServerInfo(server.url, { resourceMetadataUrl: params.resourceMetadataUrl! });
    expect(info.resourceMetadata).toMatchObject({ resource, authorization_servers: [as.issuer] });
    expect(info.authorizationServerUrl).toBe(as.issuer);
    expect(info.authorizationServerMetadata?.token_endpoint).toBe(`${as.issuer}/token`);
    expect(info.authorizationServerMetadata?.grant_types_supported).toContain('client_credentials');
    // Without the hint the SDK finds the same document at the path-inserted well-known URL.
    expect((await discoverOAuthServerInfo(server.url)).resourceMetadata).toEqual(info.resourceMetadata);

    // The SDK client itself, given no credential, is refused the same way.
    const err = await rejection(connect(swarm, undefined, recorder.fetch));
    expect(err).toBeInstanceOf(StreamableHTTPError);
    expect((err as StreamableHTTPError).code).toBe(401);

    const posts = recorder.seen.filter((s) => s.method === 'POST');
    expect(posts.map((s) => s.status)).toEqual([401, 401]);
    const denials = (await controller.audit.query(AUTH_DENIALS)).slice(before);
    expect(denials).toHaveLength(posts.length);
    for (const event of denials) expect(event).toMatchObject({ outcome: 'denied', code: 'UNAUTHENTICATED', reason: 'no credential', actor: { id: 'anonymous', door: 'mcp-http' } });
  });

  it('opens an MCP session with a token from the provider, as the principal its client id maps to', async () => {
    const bearer = await token('swarm:read swarm:write');
    const claims = decodeJwt(bearer);
    expect(claims).toMatchObject({ iss: as.issuer, aud: resource, sub: CLIENT_ID, scope: 'swarm:read swarm:write' });

    const client = await connect(swarm, bearer);
    expect(client.getServerVersion()?.name).toBe('vscode-swarm');
    const tools = (await client.listTools()).tools.map((t) => t.name);
    expect(tools).toEqual(expect.arrayContaining(['get_swarm_status', 'create_swarm_instance', 'list_swarm_instances']));

    const status = structured<{ total: number }>(await client.callTool({ name: 'get_swarm_status', arguments: {} }));
    expect(status.total).toBe(0);
    // The call ran as ci-bot, with the token as its credential: what the audit trail says about it.
    const [statusEvent] = (await controller.audit.query({ type: 'dev.vscode-swarm.swarm.status', actorId: 'ci-bot', limit: 1 })) as AuditEvent[];
    expect(statusEvent).toMatchObject({ outcome: 'ok', actor: { type: 'principal', id: 'ci-bot', door: 'mcp-http', credentialId: `jwt:${claims.jti}` } });

    if (tools.includes('whoami')) {
      const me = structured<{ principal: { id: string; role: string }; scopes: string[]; credentialId: string; door: string }>(await client.callTool({ name: 'whoami', arguments: {} }));
      expect(me).toMatchObject({ principal: { id: 'ci-bot', role: 'member' }, scopes: ['swarm:read', 'swarm:write'], credentialId: `jwt:${claims.jti}`, door: 'mcp-http' });
    }

    // swarm:write is in the token and within the member role: the door lets create through to the
    // controller, which has no provider to create it with (no Docker here).
    const created = (await client.callTool({ name: 'create_swarm_instance', arguments: { name: 'oauth-ws' } })) as CallToolResult;
    expect(created.isError).toBe(true);
    expect(created.content).toEqual([{ type: 'text', text: expect.stringMatching(/^PROVIDER_UNKNOWN: /) }]); // not FORBIDDEN: authorized
    const [createEvent] = (await controller.audit.query({ type: 'dev.vscode-swarm.instance.create', actorId: 'ci-bot', limit: 1 })) as AuditEvent[];
    expect(createEvent?.outcome).toBe('failed');
    expect(controller.registry.list()).toEqual([]);
  });

  it('gives the token\'s scopes within the role: a read-only token gets 403 insufficient_scope before create runs', async () => {
    const recorder = recordingFetch();
    const readOnly = await token('swarm:read');
    const client = await connect(swarm, readOnly, recorder.fetch);
    const err = await rejection(client.callTool({ name: 'create_swarm_instance', arguments: { name: 'not-allowed' } }));
    expect(err).toBeInstanceOf(StreamableHTTPError);
    expect((err as StreamableHTTPError).code).toBe(403);
    const refused = recorder.seen.find((s) => s.status === 403)!;
    expect(refused.headers.get('www-authenticate')).toBe(
      `Bearer realm="vscode-swarm", resource_metadata="${metadataUrl()}", error="insufficient_scope", scope="swarm:write", error_description="create_swarm_instance needs swarm:write"`,
    );
    expect(extractWWWAuthenticateParams(new Response(null, { status: 403, headers: refused.headers }))).toMatchObject({ error: 'insufficient_scope', scope: 'swarm:write' });
    expect(refused.body).toContain('needs the swarm:write scope');
    // What the token does carry still works on the same session.
    expect(structured<{ total: number }>(await client.callTool({ name: 'get_swarm_status', arguments: {} })).total).toBe(0);
    const [denied] = (await controller.audit.query({ type: 'dev.vscode-swarm.instance.create', outcome: 'denied', actorId: 'ci-bot', limit: 1 })) as AuditEvent[];
    expect(denied).toMatchObject({ code: 'FORBIDDEN', actor: { credentialId: `jwt:${decodeJwt(readOnly).jti}` } });
    expect(denied!.reason).toContain('swarm:write');

    // A viewer's token asked for read and write, and the provider granted both; the role caps it at read.
    const viewerToken = await token('swarm:read swarm:write', VIEWER_CLIENT);
    expect(decodeJwt(viewerToken).scope).toBe('swarm:read swarm:write');
    const viewer = await connect(swarm, viewerToken, recorder.fetch);
    const viewerErr = await rejection(viewer.callTool({ name: 'create_swarm_instance', arguments: { name: 'not-allowed-either' } }));
    expect((viewerErr as StreamableHTTPError).code).toBe(403);
    expect(recorder.seen.at(-1)!.headers.get('www-authenticate')).toContain('scope="swarm:write"');
    if ((await viewer.listTools()).tools.some((t) => t.name === 'whoami')) {
      expect(structured<{ principal: { id: string }; scopes: string[] }>(await viewer.callTool({ name: 'whoami', arguments: {} }))).toMatchObject({ principal: { id: 'watcher' }, scopes: ['swarm:read'] });
    }
    expect(controller.registry.list()).toEqual([]);
  });

  it('refuses bad tokens with 401 invalid_token, one audit event each, never showing the token', async () => {
    const short = await token('swarm:read', SHORT_CLIENT_ID); // lives one second; the server allows no clock skew
    const good = await token('swarm:read swarm:write');
    const hmacForged = await Promise.all(
      (await publicKeySecrets(as.issuer, key.kid!)).map((secret) =>
        new SignJWT(decodeJwt(good) as JWTPayload).setProtectedHeader({ alg: 'HS256', typ: 'at+jwt', kid: key.kid! }).sign(new TextEncoder().encode(secret)),
      ),
    );
    const retired = await token('swarm:read', RETIRED_CLIENT);
    expect((await connect(swarm, retired)).getServerVersion()?.name).toBe('vscode-swarm'); // good until the principal is disabled
    await controller.principals.updatePrincipal('retired', { disabled: true });
    await new Promise((resolve) => setTimeout(resolve, 2_500));

    const cases: Array<[string, string, string | RegExp]> = [
      ['wrong audience', await token('swarm:read', CLIENT_ID, otherResource), 'wrong audience'],
      ['expired', short, 'token expired'],
      ['alg none', forged(good, { alg: 'none', typ: 'at+jwt' }), 'algorithm none not allowed'],
      ...hmacForged.map((t, i): [string, string, string] => [`HS256 keyed with the public key (${i})`, t, 'algorithm HS256 not allowed']),
      ['subject not a principal', await token('swarm:read', STRANGER_CLIENT), /^the token's subject is not a principal here/],
      ['disabled principal', retired, 'principal retired is disabled'],
    ];
    for (const [label, bad, reason] of cases) {
      sent.push(bad);
      const before = (await controller.audit.query(AUTH_DENIALS)).length;
      const recorder = recordingFetch();
      const plain = await postInitialize(swarm, recorder.fetch, bad);
      expect(plain.status, label).toBe(401);
      const challenge = extractWWWAuthenticateParams(plain);
      expect(challenge.error, label).toBe('invalid_token');
      expect(challenge.resourceMetadataUrl?.href, label).toBe(metadataUrl());
      const description = /error_description="([^"]*)"/.exec(plain.headers.get('www-authenticate') ?? '')?.[1];
      expect(description, label).toMatch(reason);

      const err = await rejection(connect(swarm, bad, recorder.fetch));
      expect(err, label).toBeInstanceOf(StreamableHTTPError);
      expect((err as StreamableHTTPError).code, label).toBe(401);

      const shown = `${shownText(recorder.seen)}\n${(err as Error).message}`;
      for (const piece of pieces(bad)) expect(shown.includes(piece), `${label}: the answer shows the token`).toBe(false);
      const posts = recorder.seen.filter((s) => s.method === 'POST');
      expect(posts.map((s) => s.status), label).toEqual([401, 401]);
      const denials = (await controller.audit.query(AUTH_DENIALS)).slice(before);
      expect(denials, label).toHaveLength(posts.length);
      for (const event of denials) {
        expect(event, label).toMatchObject({ action: 'auth.authenticate', outcome: 'denied', code: 'UNAUTHENTICATED', actor: { id: 'anonymous', door: 'mcp-http' } });
        expect(event.reason, label).toMatch(reason);
      }
    }
  });

  it('keeps every token out of the audit files', async () => {
    expect(sent.length).toBeGreaterThan(5);
    const text = await auditFiles(swarm.stateDir);
    expect(text).toContain('"dev.vscode-swarm.auth.authenticate"'); // the refusals are in there
    for (const t of sent) for (const piece of pieces(t)) expect(text.includes(piece), 'an audit file holds a token').toBe(false);
  });
});

describe('OAuth on MCP over HTTP while the issuer is down', () => {
  let issuerPort: number;
  let key: JWK;
  let swarm: Swarm;
  let as: AuthServer | undefined;

  beforeAll(async () => {
    issuerPort = await freePort();
    key = await signingKey();
    swarm = await startSwarm(await freePort(), { issuer: `http://127.0.0.1:${issuerPort}` });
  });

  afterAll(async () => {
    await swarm?.close();
    await as?.close();
  });

  it('answers 503 with Retry-After (not 401), audits it, and takes the same token once the issuer is back', async () => {
    // A real token from the issuer, which then goes down before the server has ever fetched its keys.
    const first = await startAuthServer({ signingKey: key, resources: [swarm.server.url], port: issuerPort });
    const bearer = await first.token(swarm.server.url, 'swarm:read');
    await first.close();

    const recorder = recordingFetch();
    const response = await postInitialize(swarm, recorder.fetch, bearer);
    expect(response.status).toBe(503);
    expect(Number(response.headers.get('retry-after'))).toBeGreaterThan(0);
    expect(response.headers.get('www-authenticate')).toBeNull(); // not a challenge: the credential was not judged
    const body = (await response.json()) as { error: { message: string } };
    expect(body.error.message).toMatch(/issuer's keys could not be fetched: .*ECONNREFUSED/);
    const err = await rejection(connect(swarm, bearer, recorder.fetch));
    expect(err).toBeInstanceOf(StreamableHTTPError);
    expect((err as StreamableHTTPError).code).toBe(503);
    for (const piece of pieces(bearer)) expect(`${shownText(recorder.seen)}\n${(err as Error).message}`.includes(piece)).toBe(false);

    const posts = recorder.seen.filter((s) => s.method === 'POST');
    expect(posts.map((s) => s.status)).toEqual([503, 503]);
    const denials = await swarm.controller.audit.query(AUTH_DENIALS);
    expect(denials).toHaveLength(posts.length);
    for (const event of denials) {
      expect(event).toMatchObject({ outcome: 'denied', code: 'UNAUTHENTICATED', actor: { id: 'anonymous', door: 'mcp-http' } });
      expect(event.reason).toMatch(/^issuer's keys could not be fetched/);
    }
    // The metadata does not depend on the issuer being up.
    expect((await fetch(`${new URL(swarm.server.url).origin}/.well-known/oauth-protected-resource/mcp`)).status).toBe(200);

    as = await startAuthServer({ signingKey: key, resources: [swarm.server.url], port: issuerPort });
    const client = await connect(swarm, bearer);
    expect(structured<{ total: number }>(await client.callTool({ name: 'get_swarm_status', arguments: {} })).total).toBe(0);
    const text = await auditFiles(swarm.stateDir);
    for (const piece of pieces(bearer)) expect(text.includes(piece)).toBe(false);
  });
});
