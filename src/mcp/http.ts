/**
 * MCP over Streamable HTTP, stateless: each POST gets a fresh server over the one controller, acting as
 * the principal its bearer credential names, so nothing is kept between requests. The v2 SDK's
 * `createMcpHandler` serves both revisions from that one factory: 2026-07-28 (every request carries its
 * version and capabilities; server/discover; Mcp-Method/Mcp-Name headers checked against the body) and,
 * for a request without the 2026 envelope, 2025-11-25 statelessly.
 * Credentials: a principal's API token, the local admin's `<stateDir>/mcp-http.token` (mode 0600), or,
 * with `oauth` configured, a JWT access token from that issuer, whose RFC 9728 protected-resource
 * metadata is served here and named in every challenge.
 *
 * Before the token, /mcp checks Host and Origin, as the MCP transport specification requires against DNS
 * rebinding (a web page whose name is made to resolve to 127.0.0.1): a Host, or an Origin when one is
 * sent, that is not allowed is 403. Allowed are the loopback names on the listening port, the bound
 * address, and whatever `mcpHttp.allowedHosts` / `allowedOrigins` add. A request without a valid
 * credential gets 401 with a `WWW-Authenticate: Bearer` challenge; a tool call whose scope the credential
 * lacks gets 403 with `error="insufficient_scope"` and the scope (the MCP authorization spec's step-up),
 * before any tool runs. Both are audit events. A JWT that cannot be checked because the issuer's keys
 * cannot be fetched gets 503 with Retry-After instead (the client did nothing wrong), also audited.
 */
import { toNodeHandler } from '@modelcontextprotocol/node';
import { createMcpHandler, type AuthInfo } from '@modelcontextprotocol/server';
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import type { SwarmController } from '../controller/swarm-controller.js';
import type { HealthMonitor } from '../health/health-monitor.js';
import type { MigrationManager } from '../migration/migration-manager.js';
import { asSwarmError } from '../errors.js';
import { silentLogger, type Logger } from '../logger.js';
import { Authenticator, bearerOf } from '../tenancy/authenticate.js';
import { OPERATIONS, type PrincipalActor } from '../tenancy/identity.js';
import { ownerOf } from '../tenancy/quotas.js';
import { bearerChallenge, createJwtVerifier, metadataPathsFor, protectedResourceMetadata, protectedResourceMetadataUrl, type JwtVerifier } from '../tenancy/oauth.js';
import { TOOL_OPERATIONS, createMcpServer } from './server.js';
import { readCappedBody } from '../streams/read-body.js';

export interface McpHttpOptions {
  controller: SwarmController;
  health?: HealthMonitor;
  migrations?: MigrationManager;
  /** Other routes served beside /mcp, each doing its own authentication (e.g. host agents' events). */
  routes?: Record<string, (req: http.IncomingMessage, res: http.ServerResponse) => Promise<void>>;
  host: string;
  port: number;
  stateDir: string;
  logger?: Logger;
}

const MAX_BODY_BYTES = 4 * 1024 * 1024;
/** Retry-After on a 503 when the OAuth issuer is down; discovery is tried again on every request. */
const AUTH_UNAVAILABLE_RETRY_SECONDS = 5;

export async function startMcpHttp(options: McpHttpOptions): Promise<{ url: string; token: string; close: () => Promise<void> }> {
  const logger = (options.logger ?? silentLogger()).child({ component: 'mcp-http' });
  const { controller } = options;
  // The local admin's credential, made once and kept, so that a client configured with it keeps working across restarts.
  const token = controller.principals.localToken();
  const { allowedHosts, allowedOrigins } = controller.config.mcpHttp;
  const oauth = controller.config.oauth;
  let allowed: { hosts: Set<string>; origins: Set<string> } | undefined; // known once listening (port 0)
  let authenticator = new Authenticator(controller.principals);
  let resource: { url: string; metadataUrl: string; paths: Set<string>; document: string } | undefined; // with oauth, once listening
  let jwt: JwtVerifier | undefined;
  // One SDK handler for both revisions; each request's server is made for the principal checked below.
  const mcpHandler = createMcpHandler(
    ({ authInfo }) =>
      createMcpServer({
        controller,
        actor: actorOf(authInfo),
        logger,
        ...(options.health ? { health: options.health } : {}),
        ...(options.migrations ? { migrations: options.migrations } : {}),
      }).server,
    { legacy: 'stateless', maxRequestBodySize: MAX_BODY_BYTES, onerror: (err) => logger.debug({ err: err.message }, 'MCP request rejected or failed') },
  );
  const serveMcp = toNodeHandler(mcpHandler, { maxRequestBodySize: MAX_BODY_BYTES, onerror: (err) => logger.error({ err: err.message }, 'MCP HTTP request failed') });
  const server = http.createServer((req, res) => {
    void (async () => {
      const url = new URL(req.url ?? '/', 'http://mcp.invalid');
      const route = options.routes?.[url.pathname];
      if (route) return route(req, res);
      if (resource?.paths.has(url.pathname) && (req.method === 'GET' || req.method === 'HEAD')) {
        res.writeHead(200, { 'Content-Type': 'application/json', 'Cache-Control': 'max-age=300', 'Access-Control-Allow-Origin': '*' });
        return void res.end(req.method === 'HEAD' ? undefined : resource.document);
      }
      if (url.pathname !== '/mcp') return reply(res, 404, 'not found: the MCP endpoint is /mcp');
      const host = (req.headers.host ?? '').toLowerCase();
      if (!allowed?.hosts.has(host) && !allowed?.hosts.has(`${host}:80`)) return reply(res, 403, `Host ${JSON.stringify(req.headers.host ?? '')} is not allowed (mcpHttp.allowedHosts)`);
      const origin = req.headers.origin;
      if (origin !== undefined && !allowed?.origins.has(origin.toLowerCase())) return reply(res, 403, `Origin ${JSON.stringify(origin)} is not allowed (mcpHttp.allowedOrigins)`);
      const credential = bearerOf(req.headers.authorization);
      let actor: PrincipalActor;
      try {
        actor = await authenticator.authenticate(credential, 'mcp-http');
      } catch (err) {
        const error = asSwarmError(err);
        const reason = error.message;
        // The issuer's keys, or the shared state store, could not be had: nothing is known about the credential,
        // so not 401 but "try again".
        const unavailable = error.details?.unavailable === true || error.code === 'STORE_UNAVAILABLE';
        // RFC 6750 §3: no credentials, a bare challenge; wrong ones, invalid_token with why.
        if (!unavailable) res.setHeader('WWW-Authenticate', bearerChallenge({ ...(resource ? { resourceMetadataUrl: resource.metadataUrl } : {}), ...(credential ? { error: 'invalid_token', description: reason } : {}) }));
        await recordDenial(controller, { action: 'auth.authenticate', reason: credential ? reason : 'no credential', remote: req.socket.remoteAddress });
        if (unavailable) {
          res.setHeader('Retry-After', String(AUTH_UNAVAILABLE_RETRY_SECONDS));
          return reply(res, 503, `the credential could not be checked now: ${reason}`);
        }
        return reply(res, 401, credential ? `invalid credential: ${reason}` : 'a bearer credential is required');
      }
      if (req.method !== 'POST') return reply(res, 405, 'stateless server: POST only');
      const body = await readJson(req);
      if (body === undefined) return reply(res, 400, 'body: expected JSON of at most 4 MiB');
      const missing = missingToolScope(body, actor);
      if (missing) {
        res.setHeader('WWW-Authenticate', bearerChallenge({ ...(resource ? { resourceMetadataUrl: resource.metadataUrl } : {}), error: 'insufficient_scope', scope: missing.scope, description: `${missing.tool} needs ${missing.scope}` }));
        await recordDenial(controller, { action: missing.operation, reason: `${missing.tool} needs the ${missing.scope} scope`, actor, code: 'FORBIDDEN', ...(missing.instanceId ? { subject: missing.instanceId } : {}) });
        return reply(res, 403, `FORBIDDEN: ${missing.tool} needs the ${missing.scope} scope, which this credential does not carry`, (body as { id?: unknown }).id);
      }
      // The principal rides to the factory as the SDK's pass-through authInfo (never read from headers by the SDK).
      const auth: AuthInfo = { token: '', clientId: actor.credentialId ?? actor.principalId, scopes: [...actor.scopes], extra: { actor } };
      await serveMcp(Object.assign(req, { auth }), res, body);
    })().catch((err) => {
      logger.error({ err: (err as Error).message }, 'MCP HTTP request failed');
      if (!res.headersSent) reply(res, 500, 'internal error');
    });
  });
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(options.port, options.host, () => resolve());
  });
  const { port } = server.address() as AddressInfo;
  allowed = allowList(options.host, port, allowedHosts, allowedOrigins);
  const endpoint = `http://${options.host.includes(':') && !options.host.startsWith('[') ? `[${options.host}]` : options.host}:${port}/mcp`;
  if (oauth) {
    const resourceUrl = oauth.resource ?? endpoint;
    jwt = createJwtVerifier(oauth, { resource: resourceUrl, logger });
    authenticator = new Authenticator(controller.principals, jwt);
    resource = {
      url: resourceUrl,
      metadataUrl: protectedResourceMetadataUrl(resourceUrl),
      paths: new Set(metadataPathsFor(resourceUrl)),
      document: JSON.stringify(protectedResourceMetadata({ resource: resourceUrl, authorizationServers: [oauth.issuer], scopesSupported: oauth.scopesSupported })),
    };
  }
  return {
    url: endpoint,
    token,
    close: () =>
      new Promise<void>((resolve) => {
        jwt?.close?.();
        void mcpHandler.close();
        server.closeAllConnections(); // open subscriptions/listen streams would hold close() forever
        server.close(() => resolve());
      }),
  };
}

/** The principal src/mcp/http.ts authenticated for this request; a request reaching the SDK without one is a bug here. */
function actorOf(authInfo: AuthInfo | undefined): PrincipalActor {
  const actor = (authInfo?.extra as { actor?: PrincipalActor } | undefined)?.actor;
  if (!actor) throw new Error('MCP HTTP: a request reached the server without an authenticated principal');
  return actor;
}

/** For a `tools/call` whose tool needs a scope the caller's credential lacks: which, so that it is refused up front. */
function missingToolScope(body: unknown, actor: PrincipalActor): { tool: string; operation: string; scope: string; instanceId?: string } | undefined {
  const message = body as { method?: unknown; params?: { name?: unknown; arguments?: { instanceId?: unknown } } } | null;
  if (!message || typeof message !== 'object' || message.method !== 'tools/call' || typeof message.params?.name !== 'string') return undefined;
  const tool = message.params.name;
  const operation = Object.hasOwn(TOOL_OPERATIONS, tool) ? TOOL_OPERATIONS[tool as keyof typeof TOOL_OPERATIONS] : undefined;
  if (!operation) return undefined;
  const scope = OPERATIONS[operation].scope;
  if (actor.scopes.includes(scope)) return undefined;
  const instanceId = message.params.arguments?.instanceId;
  return { tool, operation, scope, ...(typeof instanceId === 'string' ? { instanceId: instanceId.slice(0, 63) } : {}) };
}

/** A refusal at the door (no or a bad credential, a missing scope) is an audit event like any other. */
async function recordDenial(
  controller: SwarmController,
  d: { action: string; reason: string; actor?: PrincipalActor; code?: string; subject?: string; remote?: string | undefined },
): Promise<void> {
  // The owner of the instance acted on, as every other denial records it, so that its owner sees the attempt.
  const instance = d.subject ? controller.registry.get(d.subject) : undefined;
  await controller.audit
    .record({
      type: `dev.vscode-swarm.${d.action}`,
      action: d.action,
      actor: d.actor
        ? { type: 'principal', id: d.actor.principalId, door: 'mcp-http', ...(d.actor.credentialId ? { credentialId: d.actor.credentialId } : {}) }
        : { type: 'principal', id: 'anonymous', door: 'mcp-http' },
      outcome: 'denied',
      code: d.code ?? 'UNAUTHENTICATED',
      reason: d.reason,
      ...(d.subject ? { subject: d.subject } : {}),
      ...(instance && !instance.warmPool ? { owner: ownerOf(instance) } : {}),
      ...(d.remote ? { request: { remoteAddress: d.remote } } : {}),
    })
    .catch((err: unknown) => controller.logger.error({ err: (err as Error).message }, 'could not record an audit event'));
}

const WILDCARD = new Set(['0.0.0.0', '::', '[::]', '']);

/**
 * Host and Origin values /mcp accepts, lower-case: the loopback names and the bound address (unless it is
 * a wildcard) on the listening port, plus the configured ones (a host without a port gets the listening port).
 */
export function allowList(bindHost: string, port: number, extraHosts: readonly string[], extraOrigins: readonly string[]): { hosts: Set<string>; origins: Set<string> } {
  const bound = bindHost.includes(':') && !bindHost.startsWith('[') ? `[${bindHost}]` : bindHost;
  const names = ['localhost', '127.0.0.1', '[::1]', ...(WILDCARD.has(bound) ? [] : [bound])].map((n) => `${n}:${port}`.toLowerCase());
  const withPort = (h: string): string => (/:\d+$/.test(h) && !h.endsWith(']') ? h : `${h}:${port}`).toLowerCase();
  return {
    hosts: new Set([...names, ...extraHosts.map(withPort)]),
    origins: new Set([...names.map((n) => `http://${n}`), ...extraOrigins.map((o) => o.toLowerCase())]),
  };
}

/** A refusal at the door, as JSON-RPC; with the request's id once the body was read (2026-07-28 forbids id null then). */
function reply(res: http.ServerResponse, status: number, message: string, id: unknown = null): void {
  res.writeHead(status, { 'Content-Type': 'application/json' });
  res.end(JSON.stringify({ jsonrpc: '2.0', error: { code: -32000, message }, id: typeof id === 'string' || typeof id === 'number' ? id : null }));
}

async function readJson(req: http.IncomingMessage): Promise<unknown> {
  const body = await readCappedBody(req, MAX_BODY_BYTES);
  if (!body) return undefined;
  try {
    return JSON.parse(body.toString('utf8'));
  } catch {
    return undefined;
  }
}
