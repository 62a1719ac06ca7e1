/**
 * The host agent's control-plane API: JSON over HTTP for the central controller. Every request needs
 * `Authorization: Bearer <token>` (compared in constant time); bodies are size-capped and validated
 * with the zod schemas of agent-protocol.ts; errors are `{ error: { code, message, field?, details? } }`
 * with the status httpStatusOf() gives the code.
 *
 * Routes (all under /v1):
 *   GET    /host                          capacity and load
 *   POST   /drain                         [{ reason? }] stop taking work, stop every container (workspaces kept)
 *   GET    /instances                     every instance on the host
 *   POST   /instances                     { instanceId, config, accessEpoch? } → 201 { instance, created }
 *   GET    /instances/:id
 *   PATCH  /instances/:id                 InstanceConfigPatch
 *   DELETE /instances/:id[?keepWorkspace=1]
 *   POST   /instances/:id/start
 *   POST   /instances/:id/stop            { force?, reason? }
 *   GET    /instances/:id/logs[?tail=N&since=ISO]
 *   POST   /instances/:id/exec            { command, timeoutMs? }
 *   GET    /instances/:id/workspace       tar archive (application/x-tar)
 *   PUT    /instances/:id/workspace       tar body
 *   POST   /instances/:id/access          { accessEpoch }
 *   POST   /instances/:id/keep-alive      { minutes, holder? }
 */
import { createHash, timingSafeEqual } from 'node:crypto';
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import { pipeline } from 'node:stream/promises';
import { SwarmError, asSwarmError, invalidInput } from '../../../src/errors.js';
import { transferGuard } from '../../../src/migration/workspace-archive.js';
import { silentLogger, type Logger } from '../../../src/logger.js';
import { AGENT_API_PREFIX, httpStatusOf, type AgentErrorBody } from './agent-protocol.js';
import type { VSCodeInstance } from '../../provider.js';
import type { HostAgent } from './host-agent.js';
import { readCappedBody } from '../../../src/streams/read-body.js';

export interface AgentApiOptions {
  agent: HostAgent;
  token: string;
  logger?: Logger;
  /** Largest JSON body accepted. */
  maxJsonBytes?: number;
  /** Largest workspace archive accepted on PUT. */
  maxArchiveBytes?: number;
}

const DEFAULT_MAX_JSON = 1024 * 1024;
const DEFAULT_MAX_ARCHIVE = 1024 * 1024 * 1024;

type Handler = (req: http.IncomingMessage, res: http.ServerResponse, params: { id?: string; query: URLSearchParams }) => Promise<void>;

interface Route {
  method: string;
  pattern: RegExp;
  handler: Handler;
}

class HttpError extends Error {
  constructor(
    readonly status: number,
    readonly body: AgentErrorBody['error'],
  ) {
    super(body.message);
  }
}

export class AgentApi {
  private readonly server: http.Server;
  private readonly logger: Logger;
  private readonly expected: Buffer;
  private readonly routes: Route[];
  private readonly sockets = new Set<import('node:net').Socket>();

  constructor(private readonly options: AgentApiOptions) {
    this.logger = (options.logger ?? silentLogger()).child({ component: 'agent-api' });
    this.expected = digest(`Bearer ${options.token}`);
    this.routes = this.buildRoutes();
    this.server = http.createServer({ maxHeaderSize: 16 * 1024, headersTimeout: 30_000, requestTimeout: 0 }, (req, res) => {
      this.handle(req, res).catch((err) => {
        this.logger.error({ err: (err as Error).message }, 'agent API request failed');
        if (!res.headersSent) this.sendError(res, asSwarmError(err));
        else res.destroy();
      });
    });
    this.server.on('connection', (socket) => {
      this.sockets.add(socket);
      socket.on('close', () => this.sockets.delete(socket));
    });
  }

  async listen(port: number, host: string): Promise<AddressInfo> {
    await new Promise<void>((resolve, reject) => {
      this.server.once('error', reject);
      this.server.listen(port, host, () => {
        this.server.off('error', reject);
        resolve();
      });
    });
    return this.server.address() as AddressInfo;
  }

  async close(): Promise<void> {
    if (!this.server.listening) return;
    const closed = new Promise<void>((resolve) => this.server.close(() => resolve()));
    this.server.closeIdleConnections();
    // Requests still running get a moment to answer (a drain's response), then their sockets go.
    const timer = setTimeout(() => {
      for (const socket of this.sockets) socket.destroy();
    }, 2_000);
    await closed;
    clearTimeout(timer);
  }

  private async handle(req: http.IncomingMessage, res: http.ServerResponse): Promise<void> {
    if (!this.authorized(req.headers.authorization)) {
      req.resume();
      res.setHeader('WWW-Authenticate', 'Bearer realm="vscode-swarm-agent"');
      return this.send(res, 401, { error: { code: 'UNAUTHORIZED', message: 'missing or wrong bearer token' } });
    }
    const url = new URL(req.url ?? '/', 'http://agent.invalid');
    const matching = this.routes.map((r) => ({ route: r, match: r.pattern.exec(url.pathname) })).filter((m) => m.match);
    if (matching.length === 0) {
      req.resume();
      return this.send(res, 404, { error: { code: 'NOT_FOUND', message: `no such route: ${req.method} ${url.pathname}` } });
    }
    const hit = matching.find((m) => m.route.method === req.method);
    if (!hit) {
      req.resume();
      res.setHeader('Allow', [...new Set(matching.map((m) => m.route.method))].join(', '));
      return this.send(res, 405, { error: { code: 'METHOD_NOT_ALLOWED', message: `${req.method} is not allowed on ${url.pathname}` } });
    }
    // Ids are plain a-z0-9-, so the raw path segment is checked as it is (no decoding needed).
    const id = hit.match!.groups?.id;
    if (id !== undefined) {
      if (!/^[a-z0-9][a-z0-9-]{0,62}$/.test(id)) {
        req.resume();
        return this.sendError(res, invalidInput('instanceId', 'an instance id of 1-63 characters a-z, 0-9 and "-"', id));
      }
    }
    try {
      await hit.route.handler(req, res, { ...(id !== undefined ? { id } : {}), query: url.searchParams });
    } catch (err) {
      if (res.headersSent) {
        res.destroy();
        return;
      }
      if (err instanceof HttpError) return this.send(res, err.status, { error: err.body });
      const error = asSwarmError(err);
      if (error.code === 'INTERNAL') this.logger.error({ err: (err as Error).stack ?? error.message, method: req.method, path: url.pathname }, 'agent API fault');
      this.sendError(res, error);
    }
  }

  private buildRoutes(): Route[] {
    const { agent } = this.options;
    // Instances leave with the host's proxy as their endpoint: the editors' ports are on its loopback only.
    const out = <T extends VSCodeInstance>(instance: T): T => agent.exposed(instance) as T;
    const json = (status: number, produce: (req: http.IncomingMessage, p: { id?: string; query: URLSearchParams }, body: unknown) => Promise<unknown>): Handler =>
      async (req, res, p) => {
        const body = await this.readJson(req);
        this.send(res, status, await produce(req, p, body));
      };
    const route = (method: string, path: string, handler: Handler): Route => ({
      method,
      pattern: new RegExp(`^${AGENT_API_PREFIX}${path.replace(':id', '(?<id>[^/]+)')}/?$`),
      handler,
    });
    return [
      route('GET', '/host', json(200, () => agent.hostReport())),
      route('POST', '/drain', json(200, (_req, _p, body) => agent.drain(drainReason(body)))),
      route('GET', '/instances', json(200, async () => ({ instances: (await agent.listInstances()).map(out) }))),
      route('POST', '/instances', json(201, async (_req, _p, body) => {
        const created = await agent.createInstance(body);
        return { ...created, instance: out(created.instance) };
      })),
      route('GET', '/instances/:id', json(200, async (_req, p) => ({ instance: out(await agent.getInstance(p.id!)) }))),
      route('PATCH', '/instances/:id', json(200, async (_req, p, body) => ({ instance: out(await agent.updateInstance(p.id!, body)) }))),
      route('DELETE', '/instances/:id', json(200, (_req, p) => agent.deleteInstance(p.id!, flag(p.query, 'keepWorkspace')))),
      route('POST', '/instances/:id/start', json(200, async (_req, p) => ({ instance: out(await agent.startInstance(p.id!)) }))),
      route('POST', '/instances/:id/stop', json(200, async (_req, p, body) => ({ instance: out(await agent.stopInstance(p.id!, body ?? {})) }))),
      route('GET', '/instances/:id/logs', json(200, (_req, p) => agent.getLogs(p.id!, logOptions(p.query)))),
      route('POST', '/instances/:id/exec', json(200, (_req, p, body) => agent.exec(p.id!, body))),
      route('POST', '/instances/:id/access', json(200, async (_req, p, body) => ({ instance: out(await agent.setAccessEpoch(p.id!, body)) }))),
      route('POST', '/instances/:id/keep-alive', json(200, async (_req, p, body) => ({ instance: out(await agent.keepAlive(p.id!, body)) }))),
      // Archives stream through: the engine's export straight into the response (chunked: its size is
      // not known before the end; a failure part-way cuts the response, which the client reads as a
      // truncated archive), and the request body straight into the engine, counted against the cap.
      route('GET', '/instances/:id/workspace', async (req, res, p) => {
        req.resume();
        const archive = await agent.exportWorkspace(p.id!);
        res.writeHead(200, { 'Content-Type': 'application/x-tar', 'Cache-Control': 'no-store' });
        await pipeline(archive, res);
      }),
      route('PUT', '/instances/:id/workspace', async (req, res, p) => {
        const limit = this.options.maxArchiveBytes ?? DEFAULT_MAX_ARCHIVE;
        if (Number(req.headers['content-length'] ?? 0) > limit) {
          req.resume();
          throw new HttpError(413, { code: 'INVALID_INPUT', message: `body: the workspace archive is larger than ${limit} bytes`, field: 'body' });
        }
        let bytes = 0;
        req.on('data', (chunk: Buffer) => void (bytes += chunk.length));
        const guarded = req.pipe(transferGuard({ maxBytes: limit, what: 'body: the workspace archive' }));
        req.on('error', (err) => guarded.destroy(err));
        await agent.importWorkspace(p.id!, guarded);
        if (bytes === 0) throw invalidInput('body', 'a tar archive of the workspace');
        this.send(res, 200, { instanceId: p.id!, imported: true, bytes });
      }),
    ];
  }

  /** Constant time whatever the length: both sides are hashed to the same size first. */
  private authorized(header: string | undefined): boolean {
    return timingSafeEqual(digest(header ?? ''), this.expected) && header !== undefined;
  }

  /** The JSON body, or undefined when there is none. */
  private async readJson(req: http.IncomingMessage): Promise<unknown> {
    const raw = await this.readBody(req, this.options.maxJsonBytes ?? DEFAULT_MAX_JSON, 'JSON body');
    if (raw.length === 0) return undefined;
    const type = (req.headers['content-type'] ?? 'application/json').split(';')[0]!.trim().toLowerCase();
    if (type !== 'application/json') throw new HttpError(415, { code: 'INVALID_INPUT', message: `body: expected application/json (got ${type})`, field: 'body' });
    try {
      return JSON.parse(raw.toString('utf8'));
    } catch (err) {
      throw invalidInput('body', `valid JSON (${(err as Error).message})`);
    }
  }

  private async readBody(req: http.IncomingMessage, limit: number, what: string): Promise<Buffer> {
    const body = await readCappedBody(req, limit);
    if (body) return body;
    req.resume();
    throw new HttpError(413, { code: 'INVALID_INPUT', message: `body: the ${what} is larger than ${limit} bytes`, field: 'body' });
  }

  private sendError(res: http.ServerResponse, error: SwarmError): void {
    this.send(res, httpStatusOf(error.code), {
      error: {
        code: error.code,
        message: error.message,
        ...(error.field !== undefined ? { field: error.field } : {}),
        ...(error.details !== undefined ? { details: error.details } : {}),
      },
    });
  }

  private send(res: http.ServerResponse, status: number, body: unknown): void {
    const text = JSON.stringify(body);
    res.writeHead(status, { 'Content-Type': 'application/json; charset=utf-8', 'Content-Length': Buffer.byteLength(text), 'Cache-Control': 'no-store' });
    res.end(text);
  }
}

function digest(text: string): Buffer {
  return createHash('sha256').update(text).digest();
}

function flag(query: URLSearchParams, name: string): boolean {
  const value = query.get(name);
  if (value === null) return false;
  if (/^(1|true|yes|)$/i.test(value)) return true;
  if (/^(0|false|no)$/i.test(value)) return false;
  throw invalidInput(name, '1 or 0', value);
}

function logOptions(query: URLSearchParams): { tail?: number; since?: string } {
  const tail = query.get('tail');
  const since = query.get('since');
  const out: { tail?: number; since?: string } = {};
  if (tail !== null) {
    const n = Number(tail);
    if (!/^\d+$/.test(tail) || n < 1 || n > 10_000) throw invalidInput('tail', 'an integer from 1 to 10000', tail);
    out.tail = n;
  }
  if (since !== null) out.since = since;
  return out;
}

/** The optional `reason` of a drain request (e.g. the ASG lifecycle transition); other fields are ignored. */
function drainReason(body: unknown): string | undefined {
  const reason = (body as { reason?: unknown } | undefined)?.reason;
  return typeof reason === 'string' && reason.length > 0 ? reason.slice(0, 256) : undefined;
}
