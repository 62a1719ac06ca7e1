/**
 * The gateway: the only way a person reaches an editor. It routes by host name (`<id>.<baseDomain>`),
 * admits a request with a one-time link token (exchanged for an HttpOnly session cookie scoped to that
 * host) or with that cookie, and proxies HTTP and WebSockets to the instance's endpoint. Its own
 * credentials are never forwarded. Failed authentication is rate-limited per client address.
 *
 * Order of checks, so that nothing leaks before authentication: host → credentials → instance state.
 * A host that names no valid id is 404 at once; an id that parses but has no instance is 404 only
 * after a validly signed credential for it was shown.
 *
 * What an editor sends back is checked too: it may not set cookies for other hosts (a `Domain`
 * attribute) or under the gateway's own cookie name, and its pages may be framed by their own origin
 * only. Its own server is bounded: header and request timeouts, and caps on connections in total and
 * per client (an IPv4 address or an IPv6 /64).
 *
 * Forwarded ports (`<port>--<id>.<baseDomain>`, an app inside the workspace) are admitted by ports.ts,
 * with their own host-only sessions, and go through the same proxy to code-server's port proxy.
 */
import { createHash, timingSafeEqual } from 'node:crypto';
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import type { Duplex } from 'node:stream';
import httpProxy from 'http-proxy';
import type { VSCodeInstance } from '../../providers/provider.js';
import type { ActivityTracker } from '../activity/activity-tracker.js';
import type { GatewayConfig } from '../config.js';
import type { SwarmController } from '../controller/swarm-controller.js';
import { asSwarmError } from '../errors.js';
import { silentLogger, type Logger } from '../logger.js';
import { HOST_SESSION_COOKIE, SESSION_COOKIE, TOKEN_PARAM, type AccessLinks } from './access-links.js';
import { FailureLimiter, addressKey } from './failure-limiter.js';
import { page } from './pages.js';
import { ForwardedPorts, forwardedPath, isHandover, parsePortLabel, unprefixLocation } from './ports.js';

export interface GatewayDeps {
  controller: SwarmController;
  access: AccessLinks;
  activity: ActivityTracker;
  config: GatewayConfig;
  logger?: Logger;
  now?: () => number;
  /**
   * A credential an upstream gateway presents in UPSTREAM_HEADER: it admits to any instance here in place
   * of a link or session (the upstream checked the user, the origin and the rate limits). An AWS host
   * agent's proxy takes the host's own token, which the central gateway derives and the host already
   * holds, so it gives a compromised host nothing it did not have.
   */
  upstreamToken?: string;
}

/** The header an upstream gateway presents its credential in; stripped before an editor sees the request. */
export const UPSTREAM_HEADER = 'x-swarm-upstream-token';

/** Headers beyond this size are refused (431) by the HTTP parser before any of our code runs. */
export const MAX_HEADER_BYTES = 16 * 1024;

/** A refusal; a 302 (a forwarded port's sign-in through its instance host) goes to `location`. */
export type Denial = { status: 302 | 400 | 401 | 403 | 404 | 410 | 429 | 503; title: string; message: string; counts: boolean; retryAfter?: number; location?: string };
/** `port`: the request is for that forwarded port of the instance (ports.ts), not its editor. */
export type Admission =
  | { ok: true; instance: Readonly<VSCodeInstance>; setCookie?: string; redirectTo?: string; port?: number }
  | { ok: false; denial: Denial };

const STARTABLE = new Set(['stopped', 'failed', 'creating', 'starting', 'stopping', 'unknown']);

export class Gateway {
  private readonly server: http.Server;
  private readonly proxy: httpProxy;
  private readonly limiter: FailureLimiter;
  private readonly logger: Logger;
  private readonly sockets = new Set<Duplex>();
  /** Open connections per client (addressKey), for maxConnectionsPerAddress. */
  private readonly perClient = new Map<string, number>();
  /** Keeps connections to editors open across requests (http-proxy otherwise closes each one). */
  private readonly agent = new http.Agent({ keepAlive: true, maxSockets: 256 });
  /** Requests admitted on the upstream credential: their X-Forwarded-* are the upstream's, kept as sent. */
  private readonly fromUpstream = new WeakSet<http.IncomingMessage>();
  private readonly upstreamDigest?: Buffer;
  private readonly ports: ForwardedPorts;
  /** Requests for a forwarded port, by port: the app's redirects lose code-server's /proxy/<port> prefix. */
  private readonly forwarded = new WeakMap<http.IncomingMessage, number>();

  constructor(private readonly deps: GatewayDeps) {
    this.logger = (deps.logger ?? silentLogger()).child({ component: 'gateway' });
    if (deps.upstreamToken !== undefined) this.upstreamDigest = sha256(deps.upstreamToken);
    const { config } = deps;
    this.limiter = new FailureLimiter(config.maxFailuresPerMinute, deps.now, config.maxTrackedAddresses);
    this.ports = new ForwardedPorts({ controller: deps.controller, access: deps.access, logger: this.logger, ...(deps.now ? { now: deps.now } : {}) });
    // X-Forwarded-* are set by prepareForEditor (http-proxy's xfwd appends to what the browser sent).
    this.proxy = httpProxy.createProxyServer({ xfwd: false, ws: true, changeOrigin: false, agent: this.agent });
    this.proxy.on('proxyRes', (proxyRes, req) => this.checkEditorHeaders(proxyRes.headers, req));
    // For WebSockets http-proxy writes the editor's answer itself; these listeners run before its own.
    this.proxy.on('proxyReqWs', (proxyReq, req) => {
      proxyReq.on('response', (proxyRes) => this.checkEditorHeaders(proxyRes.headers, req));
      proxyReq.on('upgrade', (proxyRes) => this.checkEditorHeaders(proxyRes.headers, req));
    });
    this.proxy.on('error', (err, _req, target) => {
      this.logger.warn({ err: err.message }, 'editor did not answer');
      if (target instanceof http.ServerResponse) {
        if (!target.headersSent) this.send(target, 502, 'Editor not answering', 'The workspace is running but its editor did not answer. Try again in a moment.');
        else target.destroy();
      } else {
        (target as Duplex | undefined)?.destroy();
      }
    });
    this.server = http.createServer({
      maxHeaderSize: MAX_HEADER_BYTES,
      // A client gets this long to send its headers, and this long to send its whole request (408 after).
      headersTimeout: config.headersTimeoutMs,
      requestTimeout: config.requestTimeoutMs,
      // Node checks both only this often, so a timeout is enforced within a quarter of it.
      connectionsCheckingInterval: Math.min(5_000, Math.max(50, Math.floor(config.headersTimeoutMs / 4))),
    }, (req, res) => {
      this.onRequest(req, res).catch((err) => {
        this.logger.error({ err: asSwarmError(err).message }, 'gateway request failed');
        if (!res.headersSent) this.send(res, 500, 'Gateway error', 'Something went wrong in the gateway.');
        else res.destroy();
      });
    });
    this.server.on('upgrade', (req, socket, head) => {
      socket.on('error', () => undefined);
      this.onUpgrade(req, socket, head).catch(() => socket.destroy());
    });
    this.server.on('clientError', (err: NodeJS.ErrnoException, socket) => {
      const status =
        err.code === 'HPE_HEADER_OVERFLOW' ? '431 Request Header Fields Too Large'
        : err.code === 'ERR_HTTP_REQUEST_TIMEOUT' ? '408 Request Timeout' // headersTimeoutMs / requestTimeoutMs
        : '400 Bad Request';
      if (socket.writable) socket.end(`HTTP/1.1 ${status}\r\nConnection: close\r\nContent-Length: 0\r\n\r\n`);
      else socket.destroy();
    });
    // Past the total, Node drops new connections itself; past the per-client cap, so do we.
    this.server.maxConnections = config.maxConnections;
    this.server.on('connection', (socket) => {
      const client = addressKey(socket.remoteAddress ?? 'unknown');
      const open = (this.perClient.get(client) ?? 0) + 1;
      if (open > config.maxConnectionsPerAddress) {
        this.logger.debug({ client, open: open - 1 }, 'connection refused: too many from this client');
        socket.destroy();
        return;
      }
      this.perClient.set(client, open);
      this.sockets.add(socket);
      socket.on('close', () => {
        this.sockets.delete(socket);
        const left = (this.perClient.get(client) ?? 1) - 1;
        if (left > 0) this.perClient.set(client, left);
        else this.perClient.delete(client);
      });
    });
  }

  /** Starts listening; the handed-out URLs follow the actual port unless a public port is configured. */
  async listen(): Promise<{ host: string; port: number }> {
    await new Promise<void>((resolve, reject) => {
      this.server.once('error', reject);
      this.server.listen(this.deps.config.port, this.deps.config.host, () => {
        this.server.off('error', reject);
        resolve();
      });
    });
    const { port } = this.server.address() as AddressInfo;
    if (this.deps.config.publicPort === undefined) this.deps.access.port = port;
    this.logger.info({ host: this.deps.config.host, port, urls: this.deps.access.urlFor('<id>') }, 'gateway listening');
    return { host: this.deps.config.host, port };
  }

  async close(): Promise<void> {
    for (const socket of this.sockets) socket.destroy();
    await new Promise<void>((resolve) => this.server.close(() => resolve()));
    this.proxy.close();
    this.agent.destroy();
  }

  private async onRequest(req: http.IncomingMessage, res: http.ServerResponse): Promise<void> {
    const client = req.socket.remoteAddress ?? 'unknown';
    let admission = await this.admit(req, true, client);
    // A forwarded port's sign-in, on its instance host, by a browser signed in there (never an upstream's request).
    if (admission.ok && admission.port === undefined && !admission.redirectTo && !this.fromUpstream.has(req) && isHandover(req)) admission = await this.ports.handover(req, admission.instance);
    if (!admission.ok) return this.deny(res, client, admission.denial);
    if (admission.setCookie) res.setHeader('Set-Cookie', admission.setCookie);
    if (admission.redirectTo) {
      res.setHeader('Location', admission.redirectTo);
      res.setHeader('Cache-Control', 'no-store');
      res.setHeader('Referrer-Policy', 'no-referrer');
      return this.send(res, 302, 'Signed in', 'Continue to your workspace.');
    }

    const instance = await this.ensureRunning(admission.instance, res);
    if (!instance) return;
    this.deps.activity.touch(instance.id, 'gateway');
    this.prepareForEditor(req);
    await this.addTargetHeaders(req, instance);
    this.toForwardedPort(req, admission.port);
    this.proxy.web(req, res, { target: instance.endpoint!.url });
  }

  private async onUpgrade(req: http.IncomingMessage, socket: Duplex, head: Buffer): Promise<void> {
    const client = req.socket.remoteAddress ?? 'unknown';
    const refuse = (status: string, extra = ''): void => {
      if (socket.writable) socket.end(`HTTP/1.1 ${status}\r\n${extra}Connection: close\r\nContent-Length: 0\r\n\r\n`);
      else socket.destroy();
    };
    const admission = await this.admit(req, false, client);
    if (!admission.ok) {
      const { denial } = admission;
      if (denial.counts) this.limiter.fail(client);
      return refuse(`${denial.status} ${http.STATUS_CODES[denial.status]}`, denial.retryAfter ? `Retry-After: ${denial.retryAfter}\r\n` : '');
    }
    const instance = admission.instance;
    if (instance.status !== 'running' || !instance.endpoint) return refuse('503 Service Unavailable');
    const id = instance.id;
    this.deps.activity.touch(id, 'gateway');
    socket.on('data', () => this.deps.activity.touch(id, 'gateway'));
    socket.pause(); // the listener above set it flowing; bytes sent early must wait for the editor's pipe
    this.prepareForEditor(req);
    await this.addTargetHeaders(req, instance);
    this.toForwardedPort(req, admission.port);
    this.proxy.ws(req, socket, head, { target: instance.endpoint.url });
  }

  /**
   * Decides whether a request may reach an instance, and with which cookie or redirect. A client past its
   * failure limit gets 429 unless it holds a valid session: failures from its address (a shared NAT, a
   * neighbour in its /64) never lock out someone signed in; a link it brings is then dropped unread.
   */
  private async admit(req: http.IncomingMessage, allowLink: boolean, client: string): Promise<Admission> {
    const { access, controller } = this.deps;
    if (!req.url?.startsWith('/')) return deny(400, 'Bad request', 'The request target must be a path.', false);
    const id = access.instanceIdFromHost(req.headers.host);
    if (!id) return deny(404, 'No such workspace', 'This address names no workspace.', false);
    const upstream = req.headers[UPSTREAM_HEADER];
    if (this.upstreamDigest && upstream !== undefined) return this.admitUpstream(req, id, upstream);
    const forwarded = parsePortLabel(id);
    if (forwarded) return this.ports.admit(req, forwarded, allowLink, this.limiter.retryAfter(client));
    const session = this.checkSession(id, readCookies(req.headers.cookie, access.cookieName));
    const wait = this.limiter.retryAfter(client);
    if (wait && !session.ok) {
      return { ok: false, denial: { status: 429, title: 'Too many attempts', message: `Too many failed sign-ins from this address. Try again in ${wait} s.`, counts: false, retryAfter: wait } };
    }
    const url = new URL(req.url, 'http://gateway.invalid');
    const links = url.searchParams.getAll(TOKEN_PARAM);
    if (links.length > 1) return deny(400, 'Bad request', 'More than one access token was given.', true);
    if (links.length === 1 && !allowLink) return deny(401, 'Sign-in required', 'Access links are not accepted on WebSocket connections.', true);
    // Every instance lives on the same site (*.<baseDomain>), so SameSite cookies do not keep a page of
    // one instance from calling another: a cross-origin WebSocket or state-changing request is refused.
    if (!sameOrigin(req, !allowLink)) return deny(403, 'Cross-origin request', 'Requests from another origin are not accepted.', true);
    if (links.length === 0) return session;

    url.searchParams.delete(TOKEN_PARAM);
    const cleanPath = `/${url.pathname.replace(/^\/+/, '')}${url.search}`; // never a protocol-relative "//host" redirect
    if (wait && session.ok) return { ...session, redirectTo: cleanPath };
    const verified = access.verify(links[0], 'link');
    if (!verified.ok) {
      // A stale link in a browser that is already signed in just drops the link.
      if (session.ok) return { ...session, redirectTo: cleanPath };
      return deny(401, 'Sign-in link not valid', linkMessage(verified.reason), true);
    }
    const { claims } = verified;
    if (claims.instanceId !== id) return deny(403, 'Wrong workspace', 'This access link is for another workspace.', true);
    const instance = controller.registry.get(id);
    if (!instance || instance.warmPool) return deny(404, 'No such workspace', 'This workspace no longer exists.', false);
    if (claims.epoch !== (instance.accessEpoch ?? 0)) return deny(401, 'Sign-in link revoked', 'Access to this workspace was revoked. Ask for a new link.', true);
    let fresh: boolean;
    try {
      fresh = await access.spend(claims);
    } catch (err) {
      // Without the record of used links a used link cannot be told from a new one: refuse them all.
      this.logger.error({ instanceId: id, err: asSwarmError(err).message }, 'access link refused: the record of used links is unusable');
      if (session.ok) return { ...session, redirectTo: cleanPath };
      return deny(503, 'Sign-in unavailable', 'The gateway cannot read or update its record of used sign-in links, so it cannot tell whether this link was used before. Links are refused until an operator repairs that record (the gateway log names the file). Try again later.', false);
    }
    if (!fresh) {
      if (session.ok) return { ...session, redirectTo: cleanPath };
      return deny(401, 'Sign-in link already used', 'This link has already been used. Ask for a new link (get_instance_access_link).', true);
    }
    const cookie = access.session(id, claims.epoch);
    // Under https the name carries the __Host- prefix, which browsers accept only as Secure, Path=/, no Domain.
    const setCookie = `${access.cookieName}=${cookie.token}; Path=/; HttpOnly; SameSite=Lax; Max-Age=${cookie.maxAgeSeconds}${access.secureCookies ? '; Secure' : ''}`;
    this.logger.info({ instanceId: id }, 'access link exchanged for a session');
    return { ok: true, instance, setCookie, redirectTo: cleanPath };
  }

  /** A request from the upstream gateway: its credential alone admits, to an instance that exists here. */
  private admitUpstream(req: http.IncomingMessage, id: string, given: string | string[]): Admission {
    const ok = typeof given === 'string' && timingSafeEqual(sha256(given), this.upstreamDigest!);
    if (!ok) return deny(401, 'Upstream credential not valid', 'The upstream gateway credential is not valid for this host.', true);
    const instance = this.deps.controller.registry.get(id);
    if (!instance || instance.warmPool) return deny(404, 'No such workspace', 'This workspace is not on this host.', false);
    this.fromUpstream.add(req);
    return { ok: true, instance };
  }

  /**
   * Where the endpoint is a proxy serving several editors: the Host header naming this one, and the
   * provider's credential for that proxy (never the user's; prepareForEditor dropped any sent).
   */
  private async addTargetHeaders(req: http.IncomingMessage, instance: Readonly<VSCodeInstance>): Promise<void> {
    if (!instance.endpoint?.hostHeader) return; // an editor of its own at the endpoint: nothing to add
    req.headers.host = instance.endpoint.hostHeader;
    const provider = await this.deps.controller.providerOf(instance.id).catch((err: unknown) => {
      this.logger.warn({ instanceId: instance.id, err: asSwarmError(err).message }, "no credential for the editor's proxy: its provider is unavailable");
      return undefined;
    });
    const extra = provider?.editorRequestHeaders?.(instance);
    for (const [name, value] of Object.entries(extra ?? {})) req.headers[name.toLowerCase()] = value;
  }

  /** A forwarded port's request goes to code-server's port proxy on the same endpoint. */
  private toForwardedPort(req: http.IncomingMessage, port: number | undefined): void {
    if (port === undefined) return;
    req.url = forwardedPath(port, req.url ?? '/');
    this.forwarded.set(req, port);
  }

  /** Any one valid session among the cookies admits (a stale cookie can sit beside a fresh one); else the first one's denial. */
  private checkSession(id: string, tokens: string[]): Admission {
    if (tokens.length === 0) return deny(401, 'Sign-in required', 'Open this workspace with the link vscode-swarm gave you; get_instance_access_link issues a new one.', true);
    let first: Admission | undefined;
    for (const token of tokens) {
      const admission = this.checkOneSession(id, token);
      if (admission.ok) return admission;
      first ??= admission;
    }
    return first!;
  }

  private checkOneSession(id: string, token: string): Admission {
    const verified = this.deps.access.verify(token, 'session');
    if (!verified.ok) return deny(401, 'Session not valid', 'Your session has expired or is not valid. Ask for a new link.', true);
    if (verified.claims.instanceId !== id) return deny(403, 'Wrong workspace', 'This session is for another workspace.', true);
    const instance = this.deps.controller.registry.get(id);
    if (!instance || instance.warmPool) return deny(404, 'No such workspace', 'This workspace no longer exists.', false);
    if (verified.claims.epoch !== (instance.accessEpoch ?? 0)) return deny(401, 'Session revoked', 'Access to this workspace was revoked. Ask for a new link.', true);
    return { ok: true, instance };
  }

  /** The instance, running; starts it first when allowed, else answers with a page and returns undefined. */
  private async ensureRunning(instance: Readonly<VSCodeInstance>, res: http.ServerResponse): Promise<Readonly<VSCodeInstance> | undefined> {
    if (instance.status === 'running' && instance.endpoint) return instance;
    if (instance.status === 'migrating') {
      res.setHeader('Retry-After', '5');
      this.send(res, 503, 'Workspace moving', 'This workspace is being moved to another host with all its files. This page retries by itself.', 5);
      return undefined;
    }
    if (!STARTABLE.has(instance.status)) {
      this.send(res, 410, 'Workspace unavailable', `This workspace is ${instance.status}.`);
      return undefined;
    }
    if (!this.deps.config.autoStart) {
      res.setHeader('Retry-After', '5');
      this.send(res, 503, 'Workspace stopped', `This workspace is ${instance.status}${instance.lastStop ? ` (${instance.lastStop.reason})` : ''}. Start it with start_swarm_instance.`);
      return undefined;
    }
    this.logger.info({ instanceId: instance.id, status: instance.status }, 'starting a workspace for a visitor');
    let timer: NodeJS.Timeout | undefined;
    try {
      const started = await Promise.race([
        this.deps.controller.startInstance(instance.id),
        new Promise<never>((_, reject) => {
          timer = setTimeout(() => reject(new Error('timed out')), this.deps.config.startTimeoutMs);
        }),
      ]);
      await this.deps.controller.recordSystemEvent('gateway', 'instance.wake', { subject: instance.id, reason: 'a signed-in visitor opened a stopped workspace' });
      if (started.status === 'running' && started.endpoint) return started;
      throw new Error(`it is ${started.status}`);
    } catch (err) {
      res.setHeader('Retry-After', '5');
      this.send(res, 503, 'Workspace starting', `This workspace could not be started yet (${asSwarmError(err).message}). This page retries by itself.`, 5);
      return undefined;
    } finally {
      clearTimeout(timer);
    }
  }

  private deny(res: http.ServerResponse, client: string, denial: Denial): void {
    if (denial.counts) this.limiter.fail(client);
    if (denial.retryAfter) res.setHeader('Retry-After', String(denial.retryAfter));
    if (denial.location) {
      res.setHeader('Location', denial.location);
      res.setHeader('Referrer-Policy', 'no-referrer');
    }
    // Answered without reading the body: close, rather than wait for (and drain) whatever the client still sends.
    res.setHeader('Connection', 'close');
    this.send(res, denial.status, denial.title, denial.message);
  }

  /**
   * What the editor is told: none of the gateway's own credentials, and X-Forwarded-* from the gateway
   * alone (whatever the browser sent is replaced, never appended to). A browser's `Forwarded` is dropped:
   * code-server takes the host for its WebSocket origin check from `Forwarded: host=` before anything else.
   */
  private prepareForEditor(req: http.IncomingMessage): void {
    stripOwnCredentials(req);
    const { headers } = req;
    delete headers[UPSTREAM_HEADER];
    delete headers.forwarded;
    if (this.fromUpstream.has(req)) return; // the upstream set X-Forwarded-* for the browser's request
    headers['x-forwarded-for'] = req.socket.remoteAddress ?? '';
    headers['x-forwarded-host'] = headers.host ?? '';
    headers['x-forwarded-proto'] = this.deps.config.scheme;
    headers['x-forwarded-port'] = String(this.deps.access.port);
  }

  /**
   * An editor's answer, before it is passed on: cookies for other hosts (a Domain attribute) or under the
   * gateway's cookie names are dropped, and the page may be framed by its own origin only.
   */
  private checkEditorHeaders(headers: http.IncomingHttpHeaders, req: http.IncomingMessage): void {
    const port = this.forwarded.get(req);
    if (port !== undefined) unprefixLocation(headers, port);
    const cookies = headers['set-cookie'];
    if (cookies) {
      const kept = cookies.filter((line) => !isForeignCookie(line));
      if (kept.length < cookies.length) {
        const dropped = cookies.filter((line) => isForeignCookie(line)).map((line) => line.slice(0, Math.max(0, line.indexOf('='))).trim());
        this.logger.warn({ instanceId: this.deps.access.instanceIdFromHost(req.headers.host), cookies: dropped }, "dropped cookies an editor set for other hosts or under the gateway's name");
      }
      if (kept.length) headers['set-cookie'] = kept;
      else delete headers['set-cookie'];
    }
    const policy = headers['content-security-policy'];
    headers['content-security-policy'] = withFrameAncestors(Array.isArray(policy) ? policy.join(', ') : policy);
  }

  private send(res: http.ServerResponse, status: number, title: string, message: string, refreshSeconds?: number): void {
    const body = page(title, message, refreshSeconds ? { refreshSeconds } : {});
    res.writeHead(status, {
      'Content-Type': 'text/html; charset=utf-8',
      'Content-Length': Buffer.byteLength(body),
      'Cache-Control': 'no-store',
      'X-Content-Type-Options': 'nosniff',
      'Content-Security-Policy': `default-src 'none'; style-src 'unsafe-inline'; ${FRAME_ANCESTORS}`,
    });
    res.end(body);
  }
}

function sha256(text: string): Buffer {
  return createHash('sha256').update(text).digest();
}

export function deny(status: Denial['status'], title: string, message: string, counts: boolean): Admission {
  return { ok: false, denial: { status, title, message, counts } };
}

function linkMessage(reason: 'malformed' | 'bad-signature' | 'expired' | 'wrong-kind'): string {
  if (reason === 'expired') return 'This access link has expired. Ask for a new link (get_instance_access_link).';
  return 'This access link is not valid. Ask for a new link (get_instance_access_link).';
}

const SAFE_METHODS = new Set(['GET', 'HEAD', 'OPTIONS']);

/** An Origin header, when sent, must name the host the request is for (always checked for WebSockets). */
export function sameOrigin(req: http.IncomingMessage, upgrade: boolean): boolean {
  const origin = req.headers.origin;
  if (!origin || (!upgrade && SAFE_METHODS.has(req.method ?? 'GET'))) return true;
  try {
    return new URL(origin).host.toLowerCase() === (req.headers.host ?? '').toLowerCase();
  } catch {
    return false;
  }
}

/** Every value of the named cookie, in the order sent (a browser can hold several: other paths, stale ones). */
export function readCookies(header: string | undefined, name: string): string[] {
  if (!header) return [];
  const values: string[] = [];
  for (const part of header.split(';')) {
    const eq = part.indexOf('=');
    if (eq > 0 && part.slice(0, eq).trim() === name) values.push(part.slice(eq + 1).trim());
  }
  return values;
}

const OWN_COOKIES = new Set([SESSION_COOKIE, HOST_SESSION_COOKIE].map((n) => n.toLowerCase()));

/** A Set-Cookie line an editor may not send: one for other hosts (Domain) or under the gateway's cookie names. */
function isForeignCookie(line: string): boolean {
  const [pair = '', ...attributes] = line.split(';');
  if (OWN_COOKIES.has(pair.slice(0, Math.max(0, pair.indexOf('='))).trim().toLowerCase())) return true;
  return attributes.some((a) => a.split('=')[0]!.trim().toLowerCase() === 'domain');
}

const FRAME_ANCESTORS = "frame-ancestors 'self'";

/**
 * The editor's Content-Security-Policy with framing limited to its own origin. Its own directives are
 * kept; where it already names frame-ancestors, ours is added as a second policy (browsers enforce
 * every policy, so the stricter one wins).
 */
export function withFrameAncestors(policy: string | undefined): string {
  const existing = policy?.trim().replace(/[;,\s]+$/, '');
  if (!existing) return FRAME_ANCESTORS;
  if (/(^|[;,])\s*frame-ancestors(\s|;|,|$)/i.test(existing)) return `${existing}, ${FRAME_ANCESTORS}`;
  return `${existing}; ${FRAME_ANCESTORS}`;
}

/** Our session cookie is for the gateway alone; the editor never sees it. */
function stripOwnCredentials(req: http.IncomingMessage): void {
  const cookie = req.headers.cookie;
  if (!cookie) return;
  const kept = cookie
    .split(';')
    .filter((part) => !OWN_COOKIES.has(part.slice(0, Math.max(0, part.indexOf('='))).trim().toLowerCase()))
    .join(';')
    .trim();
  if (kept) req.headers.cookie = kept;
  else delete req.headers.cookie;
}
