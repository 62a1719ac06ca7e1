/**
 * The dashboard: a small web page, served by `up` beside the gateway, where a signed-in principal sees
 * their workspaces (every one for admins) and acts on them. It does what the MCP tools do, through the
 * same domain layer: each request acts through an AuthorizedSwarm made for the session's principal
 * (door `dashboard`), so authorization, quotas, NOT_FOUND for other tenants' ids and the audit trail are
 * exactly those of every other door.
 *
 * Protections, in the order a request meets them:
 * - Host must be one of the dashboard's own names (dashboard.<baseDomain>, the loopback names and the
 *   bound address on the listening port, plus `dashboard.allowedHosts`), else 421: a page on a rebound DNS
 *   name cannot talk to it.
 * - Sign-in with an API token (or the local admin's credential file) checked by the Authenticator, or,
 *   with `dashboard.oauth` and `oauth` configured, through the OAuth issuer (./oauth-signin.ts: code flow
 *   with PKCE, state and nonce; the access token then goes through the same Authenticator and verifier as
 *   at /mcp, and is dropped). Failed attempts are audit events and limited per client. The session is a random id in an HttpOnly,
 *   SameSite=Strict, host-only cookie (no Domain: never sent to the `<id>.<baseDomain>` editors); the
 *   credential is not kept, and the session is re-checked against the principal store on every request.
 * - Every state-changing request is a POST carrying the session's CSRF token (form field `csrf` or header
 *   `X-CSRF-Token`, compared in constant time) from the dashboard's own origin (see sameOrigin); GET changes nothing, but for the OAuth
 *   sign-in's two legs, which are GETs by the protocol (/oauth/start only remembers a pending flow;
 *   /oauth/callback is bound to the browser that started it).
 * - Every response carries a strict CSP (no inline script or style; forms go only to itself and, by Open's
 *   redirect, to the editors' gateway), nosniff, no referrer and no caching.
 */
import { readFile } from 'node:fs/promises';
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import { httpStatusOf } from '../../providers/aws-asg/agent/agent-protocol.js';
import { InstanceIdSchema, type ProviderType } from '../../providers/provider.js';
import type { DashboardConfig, SwarmConfig } from '../config.js';
import type { SwarmServices } from '../controller/create-swarm.js';
import type { SwarmController } from '../controller/swarm-controller.js';
import { SwarmError, asSwarmError, invalidInput } from '../errors.js';
import { FailureLimiter } from '../gateway/failure-limiter.js';
import type { HealthMonitor } from '../health/health-monitor.js';
import { silentLogger, type Logger } from '../logger.js';
import { allowList } from '../mcp/http.js';
import { auditQueryOf } from '../mcp/tools/tenancy-tools.js';
import type { MigrationManager } from '../migration/migration-manager.js';
import { Authenticator } from '../tenancy/authenticate.js';
import { AuthorizedSwarm } from '../tenancy/authorized-swarm.js';
import type { PrincipalActor } from '../tenancy/identity.js';
import { createJwtVerifier, type JwtVerifier, type VerifiedJwt } from '../tenancy/oauth.js';
import { ownerOf } from '../tenancy/quotas.js';
import { CLIENT_SCRIPT, STYLESHEET } from './assets.js';
import { OAuthSignIn, PENDING_TTL_MS } from './oauth-signin.js';
import { DashboardSessions, type DashboardSession } from './sessions.js';
import { confirmDeletePage, continuePage, errorPage, instanceView, listPage, loginPage, usageView, workspacePage, type ListView, type PageFrame } from './views.js';
import { readCappedBody } from '../streams/read-body.js';

export interface DashboardOptions {
  controller: SwarmController;
  health?: HealthMonitor;
  migrations?: MigrationManager;
  config: DashboardConfig;
  /** The gateway's base domain: the dashboard also answers as dashboard.<baseDomain>. */
  baseDomain: string;
  logger?: Logger;
  /** How often each live-update stream looks for changes (default 2 s). */
  pollMs?: number;
}

export interface Dashboard {
  /** Where a person opens it, e.g. http://127.0.0.1:8090/ */
  url: string;
  sessions: DashboardSessions;
  /** The Content-Security-Policy every response carries. */
  contentSecurityPolicy: string;
  /** Ends the live-update streams and stops listening. */
  close: () => Promise<void>;
}

export const SESSION_COOKIE = 'swarm_dashboard';
/** Binds an OAuth sign-in's callback to the browser that started it; sent only to /oauth/callback. */
export const OAUTH_COOKIE = 'swarm_dashboard_oauth';
const OAUTH_CALLBACK_PATH = '/oauth/callback';
export const CONTENT_SECURITY_POLICY =
  "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'";

/**
 * The policy a dashboard serves: CONTENT_SECURITY_POLICY with `formTargets` added to form-action, since
 * browsers hold a form's redirects to it too: Open is a POST answered by a redirect to the editor's
 * one-time link on the gateway (`<scheme>://*.<baseDomain>[:port]`).
 */
export function contentSecurityPolicy(formTargets: readonly string[] = []): string {
  return CONTENT_SECURITY_POLICY.replace("form-action 'self'", ["form-action 'self'", ...formTargets].join(' '));
}

const MAX_FORM_BYTES = 64 * 1024;
const DEFAULT_POLL_MS = 2_000;
const KEEPALIVE_MS = 15_000;
const LOG_TAIL = 200;
const AUDIT_LIMIT = 50;
const HEALTH_HISTORY = 100;
const ACTIONS = new Set(['open', 'start', 'stop', 'keep-alive', 'delete', 'create']);

const SECURITY_HEADERS: Record<string, string> = {
  'X-Content-Type-Options': 'nosniff',
  'Referrer-Policy': 'no-referrer',
  'X-Frame-Options': 'DENY',
  'Cross-Origin-Opener-Policy': 'same-origin',
  'Cross-Origin-Resource-Policy': 'same-origin',
};

/** One request, signed in: the session, the actor it acts as now, and the swarm as that actor may use it. */
interface SignedIn {
  session: DashboardSession;
  actor: PrincipalActor;
  swarm: AuthorizedSwarm;
  frame: PageFrame & { signedIn: NonNullable<PageFrame['signedIn']> };
}

/** The dashboard over a started swarm's services and configuration, as `up` runs it. */
export function startDashboardFor(services: SwarmServices, config: Pick<SwarmConfig, 'dashboard' | 'gateway'>, options: Pick<DashboardOptions, 'logger' | 'pollMs'> = {}): Promise<Dashboard> {
  return startDashboard({
    controller: services.controller,
    migrations: services.migrations,
    ...(services.health ? { health: services.health } : {}),
    config: config.dashboard,
    baseDomain: config.gateway.baseDomain,
    ...options,
  });
}

export async function startDashboard(options: DashboardOptions): Promise<Dashboard> {
  const logger = (options.logger ?? silentLogger()).child({ component: 'dashboard' });
  const { controller, config } = options;
  const pollMs = options.pollMs ?? DEFAULT_POLL_MS;
  const authenticator = new Authenticator(controller.principals);
  const sessions = new DashboardSessions({ principals: controller.principals, ttlMs: config.sessionTtlHours * 3_600_000 });
  const failures = new FailureLimiter(config.maxFailuresPerMinute);
  const streams = new Set<http.ServerResponse>();
  let allowed: { hosts: Set<string>; origins: Set<string> } | undefined; // known once listening (port 0)
  const oauthIssuer = config.oauth && controller.config.oauth ? controller.config.oauth.issuer : undefined;
  const clientSecret = config.oauth?.clientSecretFile ? await readClientSecret(config.oauth.clientSecretFile) : undefined;
  let oauth: { flow: OAuthSignIn; verifier: JwtVerifier } | undefined; // made once listening (the redirect URL may name the port)
  const signInPage = (message?: string): string => loginPage(message, oauthIssuer);
  // The editors' origins, for Open's redirect: every instance's URL differs only in its first label.
  const csp = contentSecurityPolicy(controller.access ? [controller.access.urlFor('*').replace(/\/$/, '')] : []);
  const headers: Record<string, string> = { 'Content-Security-Policy': csp, ...SECURITY_HEADERS };

  const swarmFor = (actor: PrincipalActor): AuthorizedSwarm =>
    new AuthorizedSwarm({ controller, ...(options.health ? { health: options.health } : {}), ...(options.migrations ? { migrations: options.migrations } : {}) }, actor);

  function signedIn(req: http.IncomingMessage): SignedIn {
    const { session, actor } = sessions.resume(cookieOf(req, SESSION_COOKIE));
    const frame = { title: 'Workspaces', signedIn: { principalId: actor.principalId, role: actor.role, csrf: session.csrfToken } };
    return { session, actor, swarm: swarmFor(actor), frame };
  }

  /** The list page's live part, through the domain layer (two audited reads). */
  async function listView(swarm: AuthorizedSwarm, refresh: boolean): Promise<ListView> {
    const [instances, who] = await Promise.all([swarm.listInstances({}, { refresh }), swarm.usage()]);
    const idleOn = controller.config.idle.enabled;
    return { instances: instances.map((i) => instanceView(i, idleOn ? controller.idleTimeoutOf(i) : 0, swarm.seesAll)), usage: usageView(who) };
  }

  /**
   * A cheap fingerprint of what the actor's list shows, read from the registry without an audit event:
   * the live stream asks the domain layer again only when it changes. It covers only what the actor may
   * see, so that nobody's stream (or audit trail) moves when someone else's workspace changes.
   */
  function fingerprint(actor: PrincipalActor): string {
    const all = actor.scopes.includes('swarm:admin');
    return controller.registry
      .list()
      .filter((i) => all || (!i.warmPool && ownerOf(i) === actor.principalId))
      .map((i) => `${i.id}:${i.updatedAt}:${i.status}:${i.health}`)
      .sort()
      .join('|');
  }

  async function handle(req: http.IncomingMessage, res: http.ServerResponse): Promise<void> {
    for (const [name, value] of Object.entries(headers)) res.setHeader(name, value);
    const host = (req.headers.host ?? '').toLowerCase();
    if (!allowed?.hosts.has(host)) return send(res, 421, 'text/plain; charset=utf-8', `Host ${JSON.stringify(req.headers.host ?? '')} is not this dashboard's (dashboard.allowedHosts)\n`);
    const url = new URL(req.url ?? '/', 'http://dashboard.invalid');
    const method = req.method === 'HEAD' ? 'GET' : req.method;
    if (method === 'GET' && url.pathname === '/static/dashboard.js') return send(res, 200, 'text/javascript; charset=utf-8', CLIENT_SCRIPT, 'no-cache');
    if (method === 'GET' && url.pathname === '/static/dashboard.css') return send(res, 200, 'text/css; charset=utf-8', STYLESHEET, 'no-cache');
    if (method !== 'GET' && method !== 'POST') {
      res.setHeader('Allow', 'GET, HEAD, POST');
      return send(res, 405, 'text/plain; charset=utf-8', 'only GET and POST\n');
    }
    if (method === 'POST' && !sameOrigin(req, allowed.origins)) {
      return page(res, 403, errorPage({ title: 'Refused' }, `Refused: a change must come from this dashboard's own page (Origin ${JSON.stringify(req.headers.origin ?? '(none)')}, Sec-Fetch-Site ${JSON.stringify(req.headers['sec-fetch-site'] ?? '(none)')})`));
    }
    if (url.pathname === '/login' && method === 'POST') return login(req, res);
    if (url.pathname === '/login' && method === 'GET') return page(res, 200, signInPage());
    if (url.pathname === '/oauth/start' && method === 'GET') return oauthStart(res);
    if (url.pathname === OAUTH_CALLBACK_PATH && method === 'GET') return oauthCallback(req, res, url.searchParams);

    let me: SignedIn;
    const cookie = cookieOf(req, SESSION_COOKIE);
    try {
      me = signedIn(req);
    } catch (err) {
      const reason = asSwarmError(err).message;
      if (cookie) res.setHeader('Set-Cookie', clearCookie());
      if (url.pathname === '/events') return send(res, 401, 'text/plain; charset=utf-8', `${reason}\n`);
      if (!cookie && method === 'GET' && url.pathname === '/') return page(res, 200, signInPage());
      return page(res, 401, signInPage(cookie ? `Signed out: ${reason}` : 'Sign in first.'));
    }

    if (method === 'POST') {
      const form = await readForm(req);
      if (!form) return page(res, 413, errorPage(me.frame, `INVALID_INPUT: the form must be at most ${MAX_FORM_BYTES} bytes of application/x-www-form-urlencoded`));
      const sent = form.get('csrf') ?? req.headers['x-csrf-token'];
      if (!sessions.checkCsrf(me.session, sent)) return page(res, 403, errorPage(me.frame, 'Refused: the form is missing this session’s CSRF token (reload the page and try again)'));
      if (url.pathname === '/logout') {
        sessions.end(me.session.id);
        res.setHeader('Set-Cookie', clearCookie());
        return redirect(res, '/');
      }
      const action = /^\/actions\/([a-z-]+)$/.exec(url.pathname)?.[1];
      if (!action || !ACTIONS.has(action)) return page(res, 404, errorPage(me.frame, 'Not found'));
      return act(res, me, action, form);
    }

    if (url.pathname === '/') return listPageFor(res, me);
    if (url.pathname === '/events') return events(req, res, me);
    const workspace = /^\/w\/([^/]+)(\/delete)?$/.exec(url.pathname);
    if (workspace) return workspaceFor(res, me, decodeURIComponent(workspace[1]!), workspace[2] !== undefined);
    return page(res, 404, errorPage(me.frame, 'Not found'));
  }

  async function login(req: http.IncomingMessage, res: http.ServerResponse): Promise<void> {
    const address = req.socket.remoteAddress ?? '';
    const wait = failures.retryAfter(address);
    if (wait > 0) {
      res.setHeader('Retry-After', String(wait));
      return page(res, 429, signInPage(`Too many failed sign-ins; try again in ${wait} s.`));
    }
    const form = await readForm(req);
    const token = form?.get('token')?.trim() ?? '';
    let actor: PrincipalActor;
    try {
      actor = await authenticator.authenticate(token, 'dashboard');
      const session = sessions.create(actor);
      res.setHeader('Set-Cookie', sessionCookie(session));
    } catch (err) {
      const reason = asSwarmError(err).message;
      failures.fail(address);
      await recordSignInDenial(controller, token ? reason : 'no credential', address);
      return page(res, 401, signInPage(`Sign-in refused: ${reason}`));
    }
    logger.info({ principal: actor.principalId, credential: actor.credentialId }, 'signed in');
    return redirect(res, '/');
  }

  /** The OAuth sign-in's first leg: a pending flow, its browser-binding cookie, and off to the issuer. */
  async function oauthStart(res: http.ServerResponse): Promise<void> {
    if (!oauth) return page(res, 404, signInPage('Sign-in through an OAuth issuer is not configured here (dashboard.oauth).'));
    try {
      const { location, binding } = await oauth.flow.begin();
      res.setHeader('Set-Cookie', oauthCookie(binding, Math.floor(PENDING_TTL_MS / 1000)));
      return redirect(res, location);
    } catch (err) {
      const reason = asSwarmError(err).message;
      logger.warn({ err: reason }, 'OAuth sign-in could not start');
      return page(res, 503, signInPage(`Sign-in through ${oauthIssuer ?? 'the issuer'} is unavailable now: ${reason}`));
    }
  }

  /**
   * The OAuth sign-in's second leg: the flow checked and the code exchanged (./oauth-signin.ts), then the
   * access token authenticated exactly as a bearer token at /mcp is (same verifier rules, same subject →
   * principal mapping). A refusal is an audit event and counts against the client, like a bad token.
   */
  async function oauthCallback(req: http.IncomingMessage, res: http.ServerResponse, query: URLSearchParams): Promise<void> {
    if (!oauth) return page(res, 404, signInPage('Sign-in through an OAuth issuer is not configured here (dashboard.oauth).'));
    const address = req.socket.remoteAddress ?? '';
    const wait = failures.retryAfter(address);
    if (wait > 0) {
      res.setHeader('Retry-After', String(wait));
      return page(res, 429, signInPage(`Too many failed sign-ins; try again in ${wait} s.`));
    }
    const { flow, verifier } = oauth;
    let actor: PrincipalActor;
    try {
      const accessToken = await flow.finish(query, cookieOf(req, OAUTH_COOKIE));
      if (accessToken.split('.').length !== 3) throw new SwarmError('UNAUTHENTICATED', 'the issuer’s access token is not a JWT (RFC 9068), which is all this dashboard can verify');
      let verified: VerifiedJwt | undefined;
      const remembering: JwtVerifier = { verify: async (token) => (verified = await verifier.verify(token)) };
      actor = await new Authenticator(controller.principals, remembering).authenticate(accessToken, 'dashboard');
      const session = sessions.create(actor, { subject: verified!.subject });
      res.setHeader('Set-Cookie', [sessionCookie(session), oauthCookie('', 0)]);
    } catch (err) {
      const refusal = asSwarmError(err);
      const unavailable = (refusal.details as { unavailable?: unknown } | undefined)?.unavailable === true;
      if (!unavailable) failures.fail(address);
      await recordSignInDenial(controller, `OAuth sign-in through ${flow.issuer}: ${refusal.message}`, address);
      res.setHeader('Set-Cookie', oauthCookie('', 0));
      return page(res, unavailable ? 503 : 401, signInPage(`Sign-in refused: ${refusal.message}`));
    }
    logger.info({ principal: actor.principalId, credential: actor.credentialId, issuer: flow.issuer }, 'signed in through OAuth');
    // A page of our own moves on to the list: a redirect chain that began at the issuer's site would not carry the SameSite=Strict cookie.
    return page(res, 200, continuePage('/'));
  }

  async function listPageFor(res: http.ServerResponse, me: SignedIn): Promise<void> {
    const flash = me.session.flash;
    delete me.session.flash;
    try {
      const [list, status] = await Promise.all([listView(me.swarm, true), me.swarm.getSwarmStatus()]);
      const enabled = status.providers.filter((p) => p.state !== 'disabled').map((p) => p.type);
      const preferred = controller.config.defaultProvider;
      const providers: ProviderType[] = enabled.includes(preferred) ? [preferred, ...enabled.filter((p) => p !== preferred)] : enabled;
      return page(res, 200, listPage({ frame: { ...me.frame, ...(flash ? { notice: { kind: 'ok', text: flash } } : {}) }, list, providers, showOwner: me.swarm.seesAll }));
    } catch (err) {
      return failure(res, me, err);
    }
  }

  async function workspaceFor(res: http.ServerResponse, me: SignedIn, instanceId: string, confirmDelete: boolean): Promise<void> {
    const idleOn = controller.config.idle.enabled;
    try {
      const instance = await me.swarm.getInstance(instanceId);
      const view = instanceView(instance, idleOn ? controller.idleTimeoutOf(instance) : 0, me.swarm.seesAll);
      if (confirmDelete) return page(res, 200, confirmDeletePage(me.frame, view));
      const flash = me.session.flash;
      delete me.session.flash;
      const settle = <T, U>(work: Promise<T>, shape: (value: T) => U): Promise<U | { error: string }> =>
        work.then(shape, (err: unknown) => {
          const e = asSwarmError(err);
          return { error: `${e.code}: ${e.message}` };
        });
      const [health, logs, audit] = await Promise.all([
        settle(me.swarm.checkHealth(instanceId), ({ record }) => ({ history: record.history.slice(-HEALTH_HISTORY) })),
        settle(me.swarm.getInstanceLogs(instanceId, { tail: LOG_TAIL }), (l) => ({ lines: l.lines, truncated: l.truncated })),
        settle(me.swarm.auditEvents(auditQueryOf({ instanceId, limit: AUDIT_LIMIT })), (events) => events),
      ]);
      // The check just made is fresher than the record read before it.
      const latest = 'history' in health ? health.history[health.history.length - 1] : undefined;
      const shown = latest ? { ...view, health: latest.status, healthReason: latest.reason } : view;
      return page(res, 200, workspacePage({ frame: { ...me.frame, ...(flash ? { notice: { kind: 'ok', text: flash } } : {}) }, instance: shown, health, logs, audit }));
    } catch (err) {
      return failure(res, me, err);
    }
  }

  async function act(res: http.ServerResponse, me: SignedIn, action: string, form: URLSearchParams): Promise<void> {
    const instanceId = form.get('instanceId') ?? '';
    const back = form.get('back') === 'workspace' && InstanceIdSchema.safeParse(instanceId).success ? `/w/${encodeURIComponent(instanceId)}` : '/';
    try {
      let done: string;
      switch (action) {
        case 'open': {
          const link = await me.swarm.issueAccessLink(instanceId);
          // The one place an access link's secret leaves the server: in the redirect the person asked for.
          return redirect(res, link.accessUrl);
        }
        case 'start':
          done = `Started ${(await me.swarm.startInstance(instanceId)).name}.`;
          break;
        case 'stop':
          done = `Stopped ${(await me.swarm.stopInstance(instanceId)).name}.`;
          break;
        case 'keep-alive': {
          const minutes = Number(form.get('minutes') ?? '');
          if (!Number.isInteger(minutes)) throw invalidInput('minutes', 'a whole number of minutes from 1 to 1440', form.get('minutes'));
          const kept = await me.swarm.keepAlive(instanceId, minutes);
          done = `${kept.name} is kept awake until ${kept.lease?.until ?? 'later'}.`;
          break;
        }
        case 'delete': {
          if (form.get('confirm') !== 'yes') throw invalidInput('confirm', "'yes', from the confirmation page", form.get('confirm'));
          await me.swarm.deleteInstance(instanceId);
          done = `Deleted ${instanceId}.`;
          return flashAndRedirect(res, me, done, '/');
        }
        case 'create': {
          const provider = form.get('provider');
          const result = await me.swarm.createInstance({ name: form.get('name') ?? '', ...(provider ? { providerType: provider as ProviderType } : {}) });
          done = result.created ? `Created ${result.instance.name}.` : `${result.instance.name} already exists.`;
          break;
        }
        default:
          throw new SwarmError('NOT_FOUND', `no action ${action}`);
      }
      return flashAndRedirect(res, me, done, back);
    } catch (err) {
      return failure(res, me, err);
    }
  }

  function flashAndRedirect(res: http.ServerResponse, me: SignedIn, message: string, to: string): void {
    me.session.flash = message;
    redirect(res, to);
  }

  /** A domain error as a page: its code and message, with the HTTP status the code maps to. */
  function failure(res: http.ServerResponse, me: SignedIn, err: unknown): void {
    const error = asSwarmError(err);
    if (error.code === 'INTERNAL') logger.error({ err: (err as Error).message }, 'dashboard request failed');
    page(res, httpStatusOf(error.code), errorPage(me.frame, `${error.code}: ${error.message}`));
  }

  /**
   * Server-Sent Events: the list as JSON (`event: list`) now and whenever it changes, looked for every
   * pollMs; `event: signed-out` and the end once the session no longer holds (checked on every poll).
   */
  async function events(req: http.IncomingMessage, res: http.ServerResponse, me: SignedIn): Promise<void> {
    res.writeHead(200, { 'Content-Type': 'text/event-stream; charset=utf-8', 'Cache-Control': 'no-store', Connection: 'keep-alive', 'X-Accel-Buffering': 'no' });
    streams.add(res);
    let lastPrint: string | undefined;
    let lastSent: string | undefined;
    let busy = false;
    let lastWrite = Date.now();
    const write = (chunk: string): void => {
      lastWrite = Date.now();
      res.write(chunk);
    };
    const tick = async (): Promise<void> => {
      if (busy || res.writableEnded) return;
      busy = true;
      try {
        let actor: PrincipalActor;
        try {
          actor = sessions.resume(me.session.id).actor;
        } catch (err) {
          write(`event: signed-out\ndata: ${JSON.stringify({ reason: asSwarmError(err).message })}\n\n`);
          return void res.end();
        }
        const print = fingerprint(actor);
        if (print !== lastPrint) {
          const list = JSON.stringify(await listView(swarmFor(actor), false));
          lastPrint = print;
          if (list !== lastSent) {
            lastSent = list;
            write(`event: list\ndata: ${list}\n\n`);
          }
        }
        if (Date.now() - lastWrite >= KEEPALIVE_MS) write(': keep-alive\n\n');
      } catch (err) {
        logger.warn({ err: (err as Error).message }, 'live update failed');
      } finally {
        busy = false;
      }
    };
    const timer = setInterval(() => void tick(), pollMs);
    const stop = (): void => {
      clearInterval(timer);
      streams.delete(res);
    };
    req.on('close', stop);
    res.on('close', stop);
    await tick();
  }

  const server = http.createServer((req, res) => {
    handle(req, res).catch((err: unknown) => {
      logger.error({ err: (err as Error).message }, 'dashboard request failed');
      if (!res.headersSent) send(res, 500, 'text/plain; charset=utf-8', 'internal error\n');
      else res.end();
    });
  });
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(config.port, config.host, () => resolve());
  });
  const { port } = server.address() as AddressInfo;
  const extraHosts = [`dashboard.${options.baseDomain}`, ...config.allowedHosts];
  const base = allowList(config.host, port, extraHosts, config.allowedOrigins);
  // Its own names over http are its origins too (allowList adds only the loopback ones).
  allowed = { hosts: base.hosts, origins: new Set([...base.origins, ...[...base.hosts].map((h) => `http://${h}`)]) };
  const shown = config.host === '0.0.0.0' || config.host === '::' ? '127.0.0.1' : config.host.includes(':') ? `[${config.host}]` : config.host;
  const dashboardUrl = `http://${shown}:${port}/`;
  if (config.oauth && controller.config.oauth) {
    const publicUrl = config.oauth.publicUrl ?? dashboardUrl;
    // The audience: the one configured for every door, else this dashboard's own address.
    const resource = controller.config.oauth.resource ?? publicUrl;
    const redirectUri = new URL(OAUTH_CALLBACK_PATH.slice(1), publicUrl.endsWith('/') ? publicUrl : `${publicUrl}/`).toString();
    oauth = {
      flow: new OAuthSignIn({ issuer: controller.config.oauth, client: config.oauth, redirectUri, resource, ...(clientSecret !== undefined ? { clientSecret } : {}), logger }),
      verifier: createJwtVerifier(controller.config.oauth, { resource, logger }),
    };
    logger.info({ issuer: oauthIssuer, redirectUri, resource }, 'dashboard sign-in through OAuth');
  }
  return {
    url: dashboardUrl,
    sessions,
    contentSecurityPolicy: csp,
    close: () =>
      new Promise<void>((resolve) => {
        oauth?.flow.close();
        oauth?.verifier.close?.();
        for (const stream of streams) stream.end();
        streams.clear();
        server.close(() => resolve());
        server.closeIdleConnections();
        // A browser holding a keep-alive connection (an event stream just ended) is not kept waiting for.
        setTimeout(() => server.closeAllConnections(), 1_000).unref();
      }),
  };
}

// ---- HTTP helpers ----

function send(res: http.ServerResponse, status: number, type: string, body: string, cache = 'no-store'): void {
  res.writeHead(status, { 'Content-Type': type, 'Cache-Control': cache });
  res.end(body);
}

function page(res: http.ServerResponse, status: number, html: string): void {
  send(res, status, 'text/html; charset=utf-8', html);
}

function redirect(res: http.ServerResponse, to: string): void {
  res.writeHead(303, { Location: to, 'Cache-Control': 'no-store' });
  res.end();
}

/**
 * Whether a POST comes from the dashboard's own pages: an Origin that is one of its own; or, since a
 * page served with `Referrer-Policy: no-referrer` makes browsers send `Origin: null` on its form posts,
 * a null Origin together with `Sec-Fetch-Site: same-origin`, which only the browser itself can set.
 */
export function sameOrigin(req: http.IncomingMessage, origins: ReadonlySet<string>): boolean {
  const origin = req.headers.origin;
  if (origin !== undefined && origin !== 'null') return origins.has(origin.toLowerCase());
  return origin === 'null' && req.headers['sec-fetch-site'] === 'same-origin';
}

function sessionCookie(session: DashboardSession): string {
  return `${SESSION_COOKIE}=${session.id}; Path=/; HttpOnly; SameSite=Strict; Max-Age=${Math.floor((session.expiresAt - session.createdAt) / 1000)}`;
}

/** SameSite=Lax: the callback is a top-level navigation from the issuer's site, which a Strict cookie would not ride on. */
function oauthCookie(value: string, maxAgeSeconds: number): string {
  return `${OAUTH_COOKIE}=${value}; Path=${OAUTH_CALLBACK_PATH}; HttpOnly; SameSite=Lax; Max-Age=${maxAgeSeconds}`;
}

/** The dashboard's OAuth client secret, from the file `dashboard.oauth.clientSecretFile` names. */
async function readClientSecret(file: string): Promise<string> {
  let secret: string;
  try {
    secret = (await readFile(file, 'utf8')).trim();
  } catch (err) {
    throw invalidInput('dashboard.oauth.clientSecretFile', 'a readable file holding the client secret', `${file} (${(err as NodeJS.ErrnoException).code ?? 'unreadable'})`);
  }
  if (!secret) throw invalidInput('dashboard.oauth.clientSecretFile', 'a file holding the client secret', `${file} (empty)`);
  return secret;
}

function clearCookie(): string {
  return `${SESSION_COOKIE}=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0`;
}

/** A cookie's value from the request, or undefined. */
export function cookieOf(req: http.IncomingMessage, name: string): string | undefined {
  for (const part of (req.headers.cookie ?? '').split(';')) {
    const eq = part.indexOf('=');
    if (eq > 0 && part.slice(0, eq).trim() === name) return part.slice(eq + 1).trim() || undefined;
  }
  return undefined;
}

/** An application/x-www-form-urlencoded body, or undefined when it is too large. */
async function readForm(req: http.IncomingMessage): Promise<URLSearchParams | undefined> {
  const body = await readCappedBody(req, MAX_FORM_BYTES);
  return body && new URLSearchParams(body.toString('utf8'));
}

/** A refused sign-in is an audit event like a refused bearer credential at the MCP door; the credential is never recorded. */
async function recordSignInDenial(controller: SwarmController, reason: string, remote: string): Promise<void> {
  await controller.audit
    .record({
      type: 'dev.vscode-swarm.auth.authenticate',
      action: 'auth.authenticate',
      actor: { type: 'principal', id: 'anonymous', door: 'dashboard' },
      outcome: 'denied',
      code: 'UNAUTHENTICATED',
      reason,
      ...(remote ? { request: { remoteAddress: remote } } : {}),
    })
    .catch((err: unknown) => controller.logger.error({ err: (err as Error).message }, 'could not record an audit event'));
}
