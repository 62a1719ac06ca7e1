/**
 * MCP over Streamable HTTP, stateless: each POST gets a fresh server and transport over the one
 * controller, so nothing is kept between requests. Guarded by a bearer token (generated into
 * `<stateDir>/mcp-http.token`, mode 0600) because anyone who can call these tools can start containers.
 *
 * Before the token, /mcp checks Host and Origin, as the MCP transport specification requires against DNS
 * rebinding (a web page whose name is made to resolve to 127.0.0.1): a Host, or an Origin when one is
 * sent, that is not allowed is 403. Allowed are the loopback names on the listening port, the bound
 * address, and whatever `mcpHttp.allowedHosts` / `allowedOrigins` add. A request without the token gets
 * 401 with a `WWW-Authenticate: Bearer` challenge.
 */
import { StreamableHTTPServerTransport } from '@modelcontextprotocol/sdk/server/streamableHttp.js';
import { timingSafeEqual } from 'node:crypto';
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import path from 'node:path';
import type { SwarmController } from '../controller/swarm-controller.js';
import type { HealthMonitor } from '../health/health-monitor.js';
import type { MigrationManager } from '../migration/migration-manager.js';
import { silentLogger, type Logger } from '../logger.js';
import { readOrCreateSecret } from '../state/secret-file.js';
import { createMcpServer } from './server.js';

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

export async function startMcpHttp(options: McpHttpOptions): Promise<{ url: string; token: string; close: () => Promise<void> }> {
  const logger = (options.logger ?? silentLogger()).child({ component: 'mcp-http' });
  // Made once and kept, so that a client configured with it keeps working across restarts.
  const token = (await readOrCreateSecret(path.join(options.stateDir, 'mcp-http.token'), 24)).toString('base64url');
  const expected = Buffer.from(`Bearer ${token}`);
  const { allowedHosts, allowedOrigins } = options.controller.config.mcpHttp;
  let allowed: { hosts: Set<string>; origins: Set<string> } | undefined; // known once listening (port 0)
  const server = http.createServer((req, res) => {
    void (async () => {
      const url = new URL(req.url ?? '/', 'http://mcp.invalid');
      const route = options.routes?.[url.pathname];
      if (route) return route(req, res);
      if (url.pathname !== '/mcp') return reply(res, 404, 'not found: the MCP endpoint is /mcp');
      const host = (req.headers.host ?? '').toLowerCase();
      if (!allowed?.hosts.has(host) && !allowed?.hosts.has(`${host}:80`)) return reply(res, 403, `Host ${JSON.stringify(req.headers.host ?? '')} is not allowed (mcpHttp.allowedHosts)`);
      const origin = req.headers.origin;
      if (origin !== undefined && !allowed?.origins.has(origin.toLowerCase())) return reply(res, 403, `Origin ${JSON.stringify(origin)} is not allowed (mcpHttp.allowedOrigins)`);
      const given = Buffer.from(req.headers.authorization ?? '');
      if (given.length !== expected.length || !timingSafeEqual(given, expected)) {
        // RFC 6750 §3: no credentials, a bare challenge; wrong ones, invalid_token.
        res.setHeader('WWW-Authenticate', given.length ? 'Bearer realm="vscode-swarm", error="invalid_token"' : 'Bearer realm="vscode-swarm"');
        return reply(res, 401, 'missing or wrong bearer token');
      }
      if (req.method !== 'POST') return reply(res, 405, 'stateless server: POST only');
      const body = await readJson(req);
      if (body === undefined) return reply(res, 400, 'body: expected JSON of at most 4 MiB');
      const { server: mcp } = createMcpServer({
        controller: options.controller,
        logger,
        ...(options.health ? { health: options.health } : {}),
        ...(options.migrations ? { migrations: options.migrations } : {}),
      });
      const transport = new StreamableHTTPServerTransport({ sessionIdGenerator: undefined });
      res.on('close', () => {
        void transport.close();
        void mcp.close();
      });
      await mcp.connect(transport);
      await transport.handleRequest(req, res, body);
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
  return {
    url: `http://${options.host}:${port}/mcp`,
    token,
    close: () => new Promise<void>((resolve) => server.close(() => resolve())),
  };
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

function reply(res: http.ServerResponse, status: number, message: string): void {
  res.writeHead(status, { 'Content-Type': 'application/json' });
  res.end(JSON.stringify({ jsonrpc: '2.0', error: { code: -32000, message }, id: null }));
}

async function readJson(req: http.IncomingMessage): Promise<unknown> {
  const chunks: Buffer[] = [];
  let size = 0;
  for await (const chunk of req as AsyncIterable<Buffer>) {
    size += chunk.length;
    if (size > MAX_BODY_BYTES) return undefined;
    chunks.push(chunk);
  }
  try {
    return JSON.parse(Buffer.concat(chunks).toString('utf8'));
  } catch {
    return undefined;
  }
}
