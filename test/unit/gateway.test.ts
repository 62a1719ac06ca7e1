/**
 * The gateway over real loopback sockets: the real Gateway, SwarmController, registry and AccessLinks,
 * with small echo servers standing in for editors (no Docker). Requests are written with node:http (or
 * raw TCP) so the Host header and the request-target are exactly what a test says.
 */
import { mkdir, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import http from 'node:http';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { VSCodeInstance } from '../../providers/provider.js';
import { parseConfig, type GatewayConfig, type SwarmConfig } from '../../src/config.js';
import { SwarmController } from '../../src/controller/swarm-controller.js';
import { AccessLinks, HOST_SESSION_COOKIE, SESSION_COOKIE, TOKEN_PARAM } from '../../src/gateway/access-links.js';
import { FailureLimiter, addressKey } from '../../src/gateway/failure-limiter.js';
import { Gateway, withFrameAncestors } from '../../src/gateway/gateway.js';
import { InstanceRegistry } from '../../src/registry/instance-registry.js';
import { waitUntil } from '../../src/timing/wait-until.js';
import { startEchoUpstream, type EchoUpstream } from '../helpers/echo-upstream.js';
import { upgradeRequest } from '../helpers/upgrade-request.js';

// ---- the graph under test ----

interface Stack {
  stateDir: string;
  config: SwarmConfig;
  registry: InstanceRegistry;
  access: AccessLinks;
  controller: SwarmController;
  gateway: Gateway;
  port: number;
}

const cleanups: (() => Promise<unknown>)[] = [];

async function startStack(label: string, maxFailuresPerMinute: number, instances: VSCodeInstance[], gateway: Partial<GatewayConfig> = {}): Promise<Stack> {
  const stateDir = await mkdtemp(path.join(os.tmpdir(), `gateway-${label}-`));
  cleanups.push(() => rm(stateDir, { recursive: true, force: true }));
  const config = parseConfig({ stateDir, logLevel: 'silent', gateway: { port: 0, maxFailuresPerMinute, autoStart: false, ...gateway } });
  const registry = new InstanceRegistry({ stateDir });
  const access = new AccessLinks(config.gateway, stateDir);
  const controller = new SwarmController({ config, registry, providers: {}, access, lockStateDir: false });
  await controller.initialize();
  cleanups.push(() => controller.close());
  for (const instance of instances) await registry.register(instance);
  const server = new Gateway({ controller, access, activity: controller.activity, config: config.gateway });
  const { port } = await server.listen();
  cleanups.push(() => server.close());
  return { stateDir, config, registry, access, controller, gateway: server, port };
}

/** A running instance whose editor answers on `port`, or a stopped one without an endpoint. */
function record(id: string, port: number | undefined, extra: Partial<VSCodeInstance> = {}): VSCodeInstance {
  const at = new Date().toISOString();
  return {
    id,
    name: id,
    providerType: 'docker',
    status: port ? 'running' : 'stopped',
    health: port ? 'healthy' : 'unknown',
    config: { name: id, image: 'codercom/code-server:4.99.3', resources: { cpu: 1, memoryMb: 1024 } },
    ...(port ? { endpoint: { url: `http://127.0.0.1:${port}`, host: '127.0.0.1', port } } : {}),
    providerRef: {},
    createdAt: at,
    updatedAt: at,
    ...extra,
  };
}

// ---- a client that controls Host and the request-target ----

interface Reply {
  status: number;
  headers: http.IncomingHttpHeaders;
  body: string;
}

interface SendOptions {
  cookie?: string;
  headers?: http.OutgoingHttpHeaders;
  method?: string;
  localAddress?: string;
}

function send(port: number, host: string, target: string, options: SendOptions = {}): Promise<Reply> {
  return new Promise((resolve, reject) => {
    const req = http.request(
      {
        host: '127.0.0.1',
        port,
        path: target,
        method: options.method ?? 'GET',
        agent: false,
        ...(options.localAddress ? { localAddress: options.localAddress } : {}),
        headers: { host, ...(options.cookie ? { cookie: options.cookie } : {}), ...options.headers },
      },
      (res) => {
        const chunks: Buffer[] = [];
        res.on('data', (chunk: Buffer) => chunks.push(chunk));
        res.on('error', reject);
        res.on('end', () => resolve({ status: res.statusCode ?? 0, headers: res.headers, body: Buffer.concat(chunks).toString('utf8') }));
      },
    );
    req.on('error', reject);
    req.end();
  });
}

/** Opens a handed-out URL the way a browser would: to the gateway, with the URL's host as Host. */
function open(port: number, url: string, options: SendOptions = {}): Promise<Reply> {
  const u = new URL(url);
  return send(port, u.host, `${u.pathname}${u.search}`, options);
}

function tokenOf(accessUrl: string): string {
  const token = new URL(accessUrl).searchParams.get(TOKEN_PARAM);
  if (!token) throw new Error(`no ${TOKEN_PARAM} in ${accessUrl}`);
  return token;
}

/** `swarm_session=<value>` from a reply's Set-Cookie. */
function sessionCookie(reply: Reply): string {
  const line = (reply.headers['set-cookie'] ?? []).find((c) => c.startsWith(`${SESSION_COOKIE}=`));
  if (!line) throw new Error(`no ${SESSION_COOKIE} cookie in ${JSON.stringify(reply.headers)}`);
  return line.split(';')[0]!;
}

interface Echo {
  method: string;
  url: string;
  headers: http.IncomingHttpHeaders;
}

function echoed(reply: Reply): Echo {
  expect(reply.headers['content-type']).toBe('application/json');
  return JSON.parse(reply.body) as Echo;
}

// ---- raw TCP, for request-targets node:http will not write and for upgrades ----

interface RawConnection {
  socket: net.Socket;
  /** Resolves with everything received so far once `until` holds (or the peer closed). */
  read(until: (text: string) => boolean, timeoutMs?: number): Promise<string>;
  closed: Promise<void>;
}

function connectRaw(port: number): Promise<RawConnection> {
  return new Promise((resolve, reject) => {
    const socket = net.connect({ host: '127.0.0.1', port }, () => {
      let text = '';
      let ended = false;
      const waiters = new Set<() => void>();
      const wake = (): void => waiters.forEach((w) => w());
      socket.on('data', (chunk: Buffer) => {
        text += chunk.toString('latin1');
        wake();
      });
      const closed = new Promise<void>((done) => {
        socket.on('close', () => {
          ended = true;
          wake();
          done();
        });
      });
      socket.on('error', () => undefined);
      resolve({
        socket,
        closed,
        read(until, timeoutMs = 2_000) {
          return new Promise((done, fail) => {
            const check = (): void => {
              if (until(text) || ended) {
                waiters.delete(check);
                clearTimeout(timer);
                done(text);
              }
            };
            const timer = setTimeout(() => {
              waiters.delete(check);
              fail(new Error(`timed out waiting on the socket; received so far: ${JSON.stringify(text)}`));
            }, timeoutMs);
            waiters.add(check);
            check();
          });
        },
      });
    });
    socket.once('error', reject);
  });
}

/** Writes a whole request and returns everything the gateway answered before closing. */
/** A loopback port nothing listens on. */
async function closedPort(): Promise<number> {
  const server = net.createServer();
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const { port } = server.address() as net.AddressInfo;
  await new Promise<void>((resolve) => server.close(() => resolve()));
  return port;
}

async function rawExchange(port: number, request: string): Promise<string> {
  const conn = await connectRaw(port);
  conn.socket.write(request);
  const text = await conn.read(() => false);
  conn.socket.destroy();
  return text;
}

const headEnd = (text: string): boolean => text.includes('\r\n\r\n');

/** A connection that sends `first` and then one more byte every `dripMs` (if given) until the gateway closes it. */
interface HeldConnection {
  socket: net.Socket;
  received: () => string;
  isClosed: () => boolean;
  /** Resolves with everything received once the gateway (or the test) closed it. */
  closed: Promise<string>;
}

function holdConnection(port: number, localAddress: string, first: string, dripMs?: number): Promise<HeldConnection> {
  return new Promise((resolve, reject) => {
    let text = '';
    let ended = false;
    let drip: NodeJS.Timeout | undefined;
    const socket = net.connect({ host: '127.0.0.1', port, localAddress });
    socket.on('data', (chunk: Buffer) => void (text += chunk.toString('latin1')));
    const closed = new Promise<string>((done) =>
      socket.on('close', () => {
        ended = true;
        clearInterval(drip);
        done(text);
      }),
    );
    socket.once('connect', () => {
      socket.on('error', () => undefined); // writes racing the gateway's close
      socket.write(first);
      if (dripMs) drip = setInterval(() => socket.writable && socket.write('x'), dripMs);
      resolve({ socket, received: () => text, isClosed: () => ended, closed });
    });
    socket.once('error', reject);
  });
}

/** An editor that answers each path with the headers a test gives it, and its WebSocket upgrades with Set-Cookie lines. */
async function startHeaderUpstream(byPath: Record<string, http.OutgoingHttpHeaders>, upgradeCookies: string[]): Promise<{ port: number; close: () => Promise<void> }> {
  const sockets = new Set<net.Socket>();
  const server = http.createServer((req, res) => {
    req.resume();
    res.writeHead(200, { 'Content-Type': 'text/plain', ...byPath[req.url ?? ''] });
    res.end('editor');
  });
  server.on('upgrade', (_req, socket: net.Socket) => {
    socket.on('error', () => undefined);
    socket.write(`HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n${upgradeCookies.map((c) => `Set-Cookie: ${c}\r\n`).join('')}\r\n`);
    socket.pipe(socket);
  });
  server.on('connection', (socket) => {
    sockets.add(socket);
    socket.on('close', () => sockets.delete(socket));
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  return {
    port: (server.address() as net.AddressInfo).port,
    close: async () => {
      for (const socket of sockets) socket.destroy();
      await new Promise<void>((resolve) => server.close(() => resolve()));
    },
  };
}

// ---- the suite ----

describe('Gateway over loopback', () => {
  let upA: EchoUpstream;
  let upB: EchoUpstream;
  let main: Stack;
  const host = (id: string): string => `${id}.localhost:${main.port}`;
  const signIn = async (id: string): Promise<string> => {
    const link = await main.controller.issueAccessLink(id);
    const reply = await open(main.port, link.accessUrl);
    expect(reply.status).toBe(302);
    return sessionCookie(reply);
  };
  /** Requests each upstream has seen; compared before and after a step to show nothing got through. */
  const seen = (): [number, number] => [upA.requests.length, upB.requests.length];

  beforeAll(async () => {
    upA = await startEchoUpstream();
    cleanups.push(() => upA.close());
    upB = await startEchoUpstream();
    cleanups.push(() => upB.close());
    main = await startStack('main', 10_000, [
      record('alpha', upA.port),
      record('bravo', upB.port),
      record('rev', upA.port),
      record('act', upA.port),
      record('dead', await closedPort()),
      record('sleepy', undefined, { lastStop: { at: new Date().toISOString(), reason: 'idle for 15 minutes', by: 'idle' } }),
    ]);
  });

  afterAll(async () => {
    for (const cleanup of cleanups.reverse()) await cleanup().catch(() => undefined);
  });

  it('answers 401 to a request with neither link nor cookie, and forwards nothing', async () => {
    const before = seen();
    const reply = await send(main.port, host('alpha'), '/');
    expect(reply.status).toBe(401);
    expect(reply.headers['content-type']).toBe('text/html; charset=utf-8');
    expect(reply.body).toContain('Sign-in required');
    expect(reply.headers['set-cookie']).toBeUndefined();
    expect(seen()).toEqual(before);
  });

  it('exchanges a link for a host-only HttpOnly session cookie and a clean redirect, then proxies without its own credentials', async () => {
    const link = await main.controller.issueAccessLink('alpha');
    expect(link.url).toBe(`http://alpha.localhost:${main.port}/`);
    expect(link.accessUrl.startsWith(`${link.url}?${TOKEN_PARAM}=`)).toBe(true);

    const before = seen();
    const exchange = await open(main.port, link.accessUrl);
    expect(exchange.status).toBe(302);
    expect(exchange.headers.location).toBe('/');
    expect(exchange.headers['cache-control']).toBe('no-store');
    expect(exchange.headers['referrer-policy']).toBe('no-referrer');
    const setCookie = exchange.headers['set-cookie'];
    expect(setCookie).toHaveLength(1);
    const attributes = setCookie![0]!.split(';').map((a) => a.trim());
    expect(attributes[0]).toMatch(new RegExp(`^${SESSION_COOKIE}=v2\\.[A-Za-z0-9_-]+\\.[A-Za-z0-9_-]+$`));
    expect(attributes).toContain('HttpOnly');
    expect(attributes).toContain('SameSite=Lax');
    expect(attributes).toContain('Path=/');
    expect(attributes.some((a) => /^domain=/i.test(a))).toBe(false); // host-only: alpha.localhost alone
    expect(attributes.some((a) => /^secure$/i.test(a))).toBe(false); // plain http here
    expect(seen()).toEqual(before); // the exchange itself is answered by the gateway
    const cookie = sessionCookie(exchange);

    const proxied = await send(main.port, host('alpha'), '/static/app.js?v=2', { cookie: `other=1; ${cookie}; theme=dark` });
    expect(proxied.status).toBe(200);
    const echo = echoed(proxied);
    expect(echo.method).toBe('GET');
    expect(echo.url).toBe('/static/app.js?v=2');
    expect(echo.headers.host).toBe(host('alpha'));
    expect(echo.headers.cookie).toBe('other=1; theme=dark');
    expect(echo.headers['x-forwarded-for']).toBe('127.0.0.1');
    expect(JSON.stringify(echo)).not.toContain(SESSION_COOKIE);
    expect(JSON.stringify(echo)).not.toContain(TOKEN_PARAM);
    expect(upA.requests.length).toBe(before[0] + 1);
    expect(upB.requests.length).toBe(before[1]);

    // Only our cookie: the editor gets no Cookie header at all.
    const alone = echoed(await send(main.port, host('alpha'), '/', { cookie }));
    expect(alone.headers.cookie).toBeUndefined();
  });

  it('keeps the path and the other query parameters when it drops the token from a link', async () => {
    const link = await main.controller.issueAccessLink('alpha');
    const reply = await send(main.port, host('alpha'), `/some/dir/?folder=%2Fhome%2Fcoder&${TOKEN_PARAM}=${tokenOf(link.accessUrl)}&x=1`);
    expect(reply.status).toBe(302);
    expect(reply.headers.location).toBe('/some/dir/?folder=%2Fhome%2Fcoder&x=1');
    const echo = echoed(await send(main.port, host('alpha'), reply.headers.location!, { cookie: sessionCookie(reply) }));
    expect(echo.url).toBe('/some/dir/?folder=%2Fhome%2Fcoder&x=1');
  });

  it('accepts a link once: a replay is 401, and a signed-in browser replaying it is sent to the clean path', async () => {
    const link = await main.controller.issueAccessLink('alpha');
    const first = await open(main.port, link.accessUrl);
    expect(first.status).toBe(302);
    const cookie = sessionCookie(first);

    const before = seen();
    const replay = await open(main.port, link.accessUrl);
    expect(replay.status).toBe(401);
    expect(replay.body).toContain('already been used');
    expect(replay.headers['set-cookie']).toBeUndefined();

    const signedIn = await open(main.port, link.accessUrl, { cookie });
    expect(signedIn.status).toBe(302);
    expect(signedIn.headers.location).toBe('/');
    expect(signedIn.headers['set-cookie']).toBeUndefined(); // no second session for a spent link
    expect(seen()).toEqual(before);
  });

  it('refuses forged, truncated, garbage and wrong-kind tokens with 401', async () => {
    const link = await main.controller.issueAccessLink('alpha');
    const token = tokenOf(link.accessUrl);
    const [version, payload, signature] = token.split('.') as [string, string, string];
    const flip = (c: string): string => (c === 'A' ? 'B' : 'A');
    const forgedSignature = `${version}.${payload}.${flip(signature[0]!)}${signature.slice(1)}`;
    // A payload naming another epoch, under the original signature.
    const claims = JSON.parse(Buffer.from(payload, 'base64url').toString('utf8')) as Record<string, unknown>;
    const forgedPayload = `${version}.${Buffer.from(JSON.stringify({ ...claims, e: 7 })).toString('base64url')}.${signature}`;
    const truncated = token.slice(0, Math.floor(token.length / 2));
    const cookie = await signIn('alpha');
    const sessionValue = cookie.slice(SESSION_COOKIE.length + 1);

    const before = seen();
    for (const bad of [forgedSignature, forgedPayload, truncated, token.slice(0, -1), 'garbage', 'v1..', sessionValue]) {
      const reply = await send(main.port, host('alpha'), `/?${TOKEN_PARAM}=${encodeURIComponent(bad)}`);
      expect(reply.status, bad).toBe(401);
      expect(reply.body, bad).toContain('not valid');
      expect(reply.headers['set-cookie'], bad).toBeUndefined();
    }
    // The other way round: a link token, or a forged session, in the cookie.
    for (const bad of [token, `${sessionValue.slice(0, -2)}AA`, 'x']) {
      const reply = await send(main.port, host('alpha'), '/', { cookie: `${SESSION_COOKIE}=${bad}` });
      expect(reply.status, bad).toBe(401);
      expect(reply.body, bad).toContain('Session not valid');
    }
    expect(seen()).toEqual(before);

    // The untouched link still works: none of the above spent it.
    expect((await open(main.port, link.accessUrl)).status).toBe(302);
  });

  it('refuses an expired link and an expired session with 401', async () => {
    // A second gateway over the same state (and so the same signing key) whose clock we move.
    let fakeNow = Date.now();
    const access = new AccessLinks(main.config.gateway, main.stateDir, () => fakeNow);
    await access.initialize();
    const gateway = new Gateway({ controller: main.controller, access, activity: main.controller.activity, config: main.config.gateway, now: () => fakeNow });
    const { port } = await gateway.listen();
    cleanups.push(() => gateway.close());
    const at = `alpha.localhost:${port}`;

    // Links issued by the controller (real clock, 1 minute) are good here while the clock agrees ...
    const fresh = await main.controller.issueAccessLink('alpha', { ttlMinutes: 1 });
    const exchange = await send(port, at, `/?${TOKEN_PARAM}=${tokenOf(fresh.accessUrl)}`);
    expect(exchange.status).toBe(302);
    const cookie = sessionCookie(exchange);
    expect((await send(port, at, '/', { cookie })).status).toBe(200);

    // ... and expired two minutes later.
    const stale = await main.controller.issueAccessLink('alpha', { ttlMinutes: 1 });
    fakeNow += 2 * 60_000;
    const before = seen();
    const expired = await send(port, at, `/?${TOKEN_PARAM}=${tokenOf(stale.accessUrl)}`);
    expect(expired.status).toBe(401);
    expect(expired.body).toContain('expired');
    expect(expired.headers['set-cookie']).toBeUndefined();

    // The session outlives the link, not the configured session lifetime.
    expect((await send(port, at, '/', { cookie })).status).toBe(200);
    fakeNow += main.config.gateway.sessionTtlHours * 3_600_000;
    const late = await send(port, at, '/', { cookie });
    expect(late.status).toBe(401);
    expect(late.body).toContain('expired');
    expect(upA.requests.length).toBe(before[0] + 1);
  });

  it("keeps instances apart: A's link or A's cookie on B's host is 403", async () => {
    const linkA = await main.controller.issueAccessLink('alpha');
    const cookieA = await signIn('alpha');
    const before = seen();

    const linkOnB = await send(main.port, host('bravo'), `/?${TOKEN_PARAM}=${tokenOf(linkA.accessUrl)}`);
    expect(linkOnB.status).toBe(403);
    expect(linkOnB.body).toContain('another workspace');
    expect(linkOnB.headers['set-cookie']).toBeUndefined();

    const cookieOnB = await send(main.port, host('bravo'), '/', { cookie: cookieA });
    expect(cookieOnB.status).toBe(403);
    expect(cookieOnB.body).toContain('another workspace');
    expect(seen()).toEqual(before);

    // A's link was not spent on B's host: it still opens A.
    expect((await open(main.port, linkA.accessUrl)).status).toBe(302);
    // And B's own cookie reaches B's upstream, never A's.
    const echo = echoed(await send(main.port, host('bravo'), '/', { cookie: await signIn('bravo') }));
    expect(echo.headers.host).toBe(host('bravo'));
    expect(upB.requests.length).toBe(before[1] + 1);
    expect(upA.requests.length).toBe(before[0]);
  });

  it('routes by host: an unknown id answers like a known one without credentials; foreign and invalid hosts are 404', async () => {
    const known = await send(main.port, host('alpha'), '/');
    const unknown = await send(main.port, host('nosuch'), '/');
    expect(unknown.status).toBe(401); // no existence oracle ...
    expect(unknown.body).toBe(known.body); // ... not even in the page

    for (const h of [`example.com:${main.port}`, 'example.com', 'localhost', `UPPER_CASE.localhost:${main.port}`, `a..b.localhost:${main.port}`, `evil.alpha.localhost:${main.port}`, `-x.localhost:${main.port}`]) {
      const reply = await send(main.port, h, '/', { cookie: await signIn('alpha') });
      expect(reply.status, h).toBe(404);
    }
    // Host names are case-insensitive.
    expect((await send(main.port, `ALPHA.LocalHost:${main.port}`, '/', { cookie: await signIn('alpha') })).status).toBe(200);

    // A validly signed link for an id with no instance is where 404 is finally told.
    const orphan = main.access.link('nosuch', 0);
    expect((await send(main.port, host('nosuch'), `/?${TOKEN_PARAM}=${tokenOf(orphan.accessUrl)}`)).status).toBe(404);
  });

  it('never redirects to a protocol-relative URL', async () => {
    for (const target of ['//evil.example/x', '/\\evil.example/x', '///evil.example/x', '/x/..//evil.example/']) {
      const link = await main.controller.issueAccessLink('alpha');
      const reply = await send(main.port, host('alpha'), `${target}?${TOKEN_PARAM}=${tokenOf(link.accessUrl)}`);
      expect(reply.status, target).toBe(302);
      const location = reply.headers.location ?? '';
      expect(location, target).toMatch(/^\/(?![/\\])/);
      expect(location, target).not.toContain(TOKEN_PARAM);
    }
  });

  it('refuses an absolute-form request-target with 400', async () => {
    const cookie = await signIn('alpha');
    const before = seen();
    const text = await rawExchange(
      main.port,
      `GET http://bravo.localhost:${main.port}/ HTTP/1.1\r\nHost: ${host('alpha')}\r\nCookie: ${cookie}\r\nConnection: close\r\n\r\n`,
    );
    expect(text).toMatch(/^HTTP\/1\.1 400 /);
    expect(text).toContain('The request target must be a path.');
    expect(seen()).toEqual(before);
  });

  it("passes dot-dot paths to the instance's own editor and nowhere else", async () => {
    const cookie = await signIn('alpha');
    const before = seen();
    const reply = await send(main.port, host('alpha'), '/../../etc/passwd', { cookie });
    expect(reply.status).toBe(200);
    const echo = echoed(reply);
    expect(echo.url).toBe('/../../etc/passwd');
    expect(echo.headers.host).toBe(host('alpha'));
    expect(upA.requests.length).toBe(before[0] + 1);
    expect(upB.requests.length).toBe(before[1]);
  });

  it('refuses two access tokens with 400', async () => {
    const one = tokenOf((await main.controller.issueAccessLink('alpha')).accessUrl);
    const two = tokenOf((await main.controller.issueAccessLink('alpha')).accessUrl);
    const before = seen();
    for (const pair of [[one, two], [one, one]]) {
      const reply = await send(main.port, host('alpha'), `/?${TOKEN_PARAM}=${pair[0]}&${TOKEN_PARAM}=${pair[1]}`);
      expect(reply.status).toBe(400);
      expect(reply.body).toContain('More than one access token');
      expect(reply.headers['set-cookie']).toBeUndefined();
    }
    expect(seen()).toEqual(before);
    // Neither was spent.
    expect((await send(main.port, host('alpha'), `/?${TOKEN_PARAM}=${one}`)).status).toBe(302);
    expect((await send(main.port, host('alpha'), `/?${TOKEN_PARAM}=${two}`)).status).toBe(302);
  });

  it('refuses oversized headers with 431 before anything is forwarded', async () => {
    const cookie = await signIn('alpha');
    const before = seen();
    const reply = await send(main.port, host('alpha'), '/', { cookie, headers: { 'x-big': 'x'.repeat(20 * 1024) } });
    expect(reply.status).toBe(431);
    expect(seen()).toEqual(before);
    // Just under the limit is fine.
    expect((await send(main.port, host('alpha'), '/', { cookie, headers: { 'x-big': 'x'.repeat(8 * 1024) } })).status).toBe(200);
  });

  it('admits WebSocket upgrades with the cookie only, then pipes bytes both ways', async () => {
    const cookie = await signIn('alpha');
    const before = seen();

    const anonymous = await rawExchange(main.port, upgradeRequest(host('alpha'), '/ws'));
    expect(anonymous).toMatch(/^HTTP\/1\.1 401 Unauthorized\r\n/);

    const link = await main.controller.issueAccessLink('alpha');
    const withLink = await rawExchange(main.port, upgradeRequest(host('alpha'), `/ws?${TOKEN_PARAM}=${tokenOf(link.accessUrl)}`));
    expect(withLink).toMatch(/^HTTP\/1\.1 401 Unauthorized\r\n/);

    const elsewhere = await rawExchange(main.port, upgradeRequest(host('bravo'), '/ws', cookie));
    expect(elsewhere).toMatch(/^HTTP\/1\.1 403 Forbidden\r\n/);
    expect(seen()).toEqual(before);

    const conn = await connectRaw(main.port);
    conn.socket.write(upgradeRequest(host('alpha'), '/ws?room=1', `other=1; ${cookie}`));
    const head = await conn.read(headEnd);
    expect(head).toMatch(/^HTTP\/1\.1 101 Switching Protocols\r\n/);
    expect(head.toLowerCase()).toContain('upgrade: websocket');
    const afterHead = head.length;
    conn.socket.write('ping-1');
    expect((await conn.read((t) => t.length >= afterHead + 6)).slice(afterHead)).toBe('ping-1');
    const big = Buffer.alloc(256 * 1024, 'z').toString('latin1');
    conn.socket.write(big);
    expect((await conn.read((t) => t.length >= afterHead + 6 + big.length)).slice(afterHead + 6)).toBe(big);
    conn.socket.destroy();

    const upgrade = upA.requests.at(-1)!;
    expect(upgrade).toMatchObject({ upgrade: true, url: '/ws?room=1' });
    expect(upgrade.headers.cookie).toBe('other=1');
    expect(upgrade.headers.host).toBe(host('alpha'));

    // The link refused on the upgrade was not spent.
    expect((await open(main.port, link.accessUrl)).status).toBe(302);
  });

  it('revokes: after revokeExisting the old cookie and older links are 401, the new link works', async () => {
    const oldCookie = await signIn('rev');
    const unused = await main.controller.issueAccessLink('rev');
    expect((await send(main.port, host('rev'), '/', { cookie: oldCookie })).status).toBe(200);

    const fresh = await main.controller.issueAccessLink('rev', { revokeExisting: true });
    expect(main.registry.get('rev')?.accessEpoch).toBe(1);

    const before = seen();
    const cookieAfter = await send(main.port, host('rev'), '/', { cookie: oldCookie });
    expect(cookieAfter.status).toBe(401);
    expect(cookieAfter.body).toContain('revoked');
    const linkAfter = await open(main.port, unused.accessUrl);
    expect(linkAfter.status).toBe(401);
    expect(linkAfter.body).toContain('revoked');
    const wsAfter = await rawExchange(main.port, upgradeRequest(host('rev'), '/', oldCookie));
    expect(wsAfter).toMatch(/^HTTP\/1\.1 401 /);
    expect(seen()).toEqual(before);

    const exchange = await open(main.port, fresh.accessUrl);
    expect(exchange.status).toBe(302);
    expect((await send(main.port, host('rev'), '/', { cookie: sessionCookie(exchange) })).status).toBe(200);
    // Other instances keep their sessions.
    expect((await send(main.port, host('alpha'), '/', { cookie: await signIn('alpha') })).status).toBe(200);
  });

  it('shows a 503 page for a stopped instance when autoStart is off, and forwards nothing', async () => {
    const cookie = await signIn('sleepy');
    const before = seen();
    const reply = await send(main.port, host('sleepy'), '/', { cookie });
    expect(reply.status).toBe(503);
    expect(reply.headers['retry-after']).toBe('5');
    expect(reply.body).toContain('This workspace is stopped (idle for 15 minutes)');
    expect(reply.body).toContain('start_swarm_instance');
    const ws = await rawExchange(main.port, upgradeRequest(host('sleepy'), '/', cookie));
    expect(ws).toMatch(/^HTTP\/1\.1 503 /);
    expect(seen()).toEqual(before);
    expect(main.controller.activity.last('sleepy')).toBeUndefined();
    expect(main.registry.get('sleepy')?.status).toBe('stopped'); // not started behind our back
  });

  it('answers 502 when the editor of a running instance does not answer', async () => {
    const cookie = await signIn('dead');
    const reply = await send(main.port, host('dead'), '/', { cookie });
    expect(reply.status).toBe(502);
    expect(reply.body).toContain('Editor not answering');
    const ws = await rawExchange(main.port, upgradeRequest(host('dead'), '/', cookie));
    expect(ws).not.toMatch(/^HTTP\/1\.1 101 /); // the socket is dropped, never switched
  });

  it('remembers spent links across a restart', async () => {
    const link = await main.controller.issueAccessLink('alpha');
    const unused = await main.controller.issueAccessLink('alpha');
    expect((await open(main.port, link.accessUrl)).status).toBe(302);

    // A new AccessLinks and gateway over the same state directory, as after a restart.
    const access = new AccessLinks(main.config.gateway, main.stateDir);
    await access.initialize();
    const gateway = new Gateway({ controller: main.controller, access, activity: main.controller.activity, config: main.config.gateway });
    const { port } = await gateway.listen();
    cleanups.push(() => gateway.close());
    const replay = await send(port, `alpha.localhost:${port}`, `/?${TOKEN_PARAM}=${tokenOf(link.accessUrl)}`);
    expect(replay.status).toBe(401);
    expect(replay.body).toContain('already been used');
    expect((await send(port, `alpha.localhost:${port}`, `/?${TOKEN_PARAM}=${tokenOf(unused.accessUrl)}`)).status).toBe(302);
  });

  it('pipes bytes that arrive with the upgrade request to the editor', async () => {
    // Regression: a data listener attached before the pipe set the socket flowing and swallowed them.
    const cookie = await signIn('alpha');
    const conn = await connectRaw(main.port);
    conn.socket.write(`${upgradeRequest(host('alpha'), '/ws', cookie)}early`);
    const text = await conn.read((t) => t.endsWith('\r\n\r\nearly'), 1_000).finally(() => conn.socket.destroy());
    expect(text).toMatch(/^HTTP\/1\.1 101 [^]*\r\n\r\nearly$/);
  });

  it('refuses a spent link even when two spends race the first load after a restart', async () => {
    const link = await main.controller.issueAccessLink('alpha');
    const exchanged = await open(main.port, link.accessUrl);
    expect(exchanged.status).toBe(302);
    const restarted = new AccessLinks(main.config.gateway, main.stateDir);
    await restarted.initialize();
    const verified = restarted.verify(tokenOf(link.accessUrl), 'link');
    if (!verified.ok) throw new Error('precondition: the link should verify');
    expect(await Promise.all([restarted.spend(verified.claims), restarted.spend(verified.claims)])).toEqual([false, false]);
  });

  it('refuses cross-origin WebSockets and state-changing requests from another instance\'s page', async () => {
    const cookie = await signIn('alpha');
    const foreign = `http://${host('beta')}`;
    expect(await rawExchange(main.port, upgradeRequest(host('alpha'), '/ws', cookie, foreign))).toMatch(/^HTTP\/1\.1 403/);
    expect(await rawExchange(main.port, upgradeRequest(host('alpha'), '/ws', cookie, 'null'))).toMatch(/^HTTP\/1\.1 403/);
    expect((await send(main.port, host('alpha'), '/save', { cookie, method: 'POST', headers: { origin: foreign } })).status).toBe(403);
    // Same origin, or a plain navigation from elsewhere, goes through.
    const conn = await connectRaw(main.port);
    conn.socket.write(upgradeRequest(host('alpha'), '/ws', cookie, `http://${host('alpha')}`));
    expect(await conn.read(headEnd, 1_000).finally(() => conn.socket.destroy())).toMatch(/^HTTP\/1\.1 101/);
    expect((await send(main.port, host('alpha'), '/', { cookie, headers: { origin: foreign } })).status).toBe(200);
    expect((await send(main.port, host('alpha'), '/save', { cookie, method: 'POST', headers: { origin: `http://${host('alpha')}` } })).status).toBe(200);
  });

  it("records gateway activity for proxied requests only", async () => {
    const { activity } = main.controller;
    expect(activity.last('act')).toBeUndefined();
    await send(main.port, host('act'), '/');
    await send(main.port, host('act'), `/?${TOKEN_PARAM}=garbage`);
    await rawExchange(main.port, upgradeRequest(host('act'), '/'));
    await send(main.port, host('act'), '/', { cookie: await signIn('alpha') }); // 403
    expect(activity.last('act')).toBeUndefined();

    const cookie = await signIn('act');
    const t0 = Date.now();
    expect((await send(main.port, host('act'), '/', { cookie })).status).toBe(200);
    const sign = activity.last('act');
    expect(sign?.source).toBe('gateway');
    expect(sign!.at).toBeGreaterThanOrEqual(t0);
    expect(sign!.at).toBeLessThanOrEqual(Date.now());
  });

  it('rate-limits failed sign-ins per client address with 429 and Retry-After, but never a valid session', async () => {
    const limited = await startStack('limit', 5, [record('alpha', upA.port)]);
    const at = `alpha.localhost:${limited.port}`;
    const link = await limited.controller.issueAccessLink('alpha');
    const cookie = sessionCookie(await open(limited.port, link.accessUrl));
    expect((await send(limited.port, at, '/', { cookie })).status).toBe(200);

    // Five failures are answered; the sixth attempt is already refused.
    const statuses: number[] = [];
    for (let i = 0; i < 6; i++) statuses.push((await send(limited.port, at, `/?${TOKEN_PARAM}=bad-${i}`)).status);
    expect(statuses).toEqual([401, 401, 401, 401, 401, 429]);

    const before = seen();
    const blocked = await send(limited.port, at, '/');
    expect(blocked.status).toBe(429);
    const retryAfter = Number(blocked.headers['retry-after']);
    expect(retryAfter).toBeGreaterThanOrEqual(1);
    expect(retryAfter).toBeLessThanOrEqual(60);
    expect(blocked.body).toContain('Too many');
    expect(blocked.headers.connection).toBe('close');
    expect(await rawExchange(limited.port, upgradeRequest(at, '/'))).toMatch(/^HTTP\/1\.1 429 [^]*\r\nRetry-After: \d+\r\n/);
    // A stale cookie is no way past the limit; neither is a fresh link (and the refusal does not spend it).
    expect((await send(limited.port, at, '/', { cookie: `${SESSION_COOKIE}=v1.stale.x` })).status).toBe(429);
    const fresh = await limited.controller.issueAccessLink('alpha');
    expect((await open(limited.port, fresh.accessUrl)).status).toBe(429);
    expect(seen()).toEqual(before);

    // Someone signed in from the same address is not locked out by the failures: HTTP, WebSocket, and a
    // link they open is dropped unread (sent on to the clean path, not spent).
    expect((await send(limited.port, at, '/after', { cookie })).status).toBe(200);
    const conn = await connectRaw(limited.port);
    conn.socket.write(upgradeRequest(at, '/ws', cookie));
    expect(await conn.read(headEnd).finally(() => conn.socket.destroy())).toMatch(/^HTTP\/1\.1 101 /);
    const dropped = await open(limited.port, fresh.accessUrl, { cookie });
    expect(dropped.status).toBe(302);
    expect(dropped.headers.location).toBe('/');
    expect(dropped.headers['set-cookie']).toBeUndefined();

    // Per address: another loopback address is not affected, and there the fresh link was never spent.
    expect((await send(limited.port, at, '/', { localAddress: '127.0.0.2' })).status).toBe(401);
    expect((await open(limited.port, fresh.accessUrl, { localAddress: '127.0.0.2' })).status).toBe(302);
    // And the main gateway keeps its own count.
    expect((await send(main.port, host('alpha'), '/', { cookie: await signIn('alpha') })).status).toBe(200);
  });

  it("drops an editor's cookies for other hosts or under the gateway's name, and keeps framing to the page's own origin", async () => {
    const setCookies = [
      'theme=dark; Path=/',
      'wide=1; Domain=localhost; Path=/', // would reach every instance
      'dotted=1; Path=/; domain=.cookies.localhost',
      `${SESSION_COOKIE}=forged; Path=/; HttpOnly`, // would overwrite the session
      `${HOST_SESSION_COOKIE}=forged; Path=/; Secure`,
      'last=1; Path=/; HttpOnly',
    ];
    const editor = await startHeaderUpstream(
      {
        '/cookies': { 'Set-Cookie': setCookies, 'Content-Security-Policy': "default-src 'self'; script-src 'self'" },
        '/framed': { 'Content-Security-Policy': "default-src 'self'; frame-ancestors *" },
        '/plain': {},
      },
      ['ws=1; Path=/', 'wswide=1; Domain=localhost', `${SESSION_COOKIE}=forged`],
    );
    cleanups.push(() => editor.close());
    await main.registry.register(record('cookies', editor.port));
    const cookie = await signIn('cookies');

    const reply = await send(main.port, host('cookies'), '/cookies', { cookie });
    expect(reply.status).toBe(200);
    expect(reply.headers['set-cookie']).toEqual(['theme=dark; Path=/', 'last=1; Path=/; HttpOnly']);
    expect(reply.headers['content-security-policy']).toBe("default-src 'self'; script-src 'self'; frame-ancestors 'self'");
    // An editor's own frame-ancestors stays, beside ours as a second policy (browsers enforce both).
    expect((await send(main.port, host('cookies'), '/framed', { cookie })).headers['content-security-policy']).toBe("default-src 'self'; frame-ancestors *, frame-ancestors 'self'");
    expect((await send(main.port, host('cookies'), '/plain', { cookie })).headers['content-security-policy']).toBe("frame-ancestors 'self'");
    // The gateway's own pages too.
    expect((await send(main.port, host('cookies'), '/')).headers['content-security-policy']).toContain("frame-ancestors 'self'");
    // The session still works after the editor tried to overwrite it.
    expect((await send(main.port, host('cookies'), '/plain', { cookie })).status).toBe(200);

    // The same on a WebSocket's 101.
    const conn = await connectRaw(main.port);
    conn.socket.write(upgradeRequest(host('cookies'), '/ws', cookie));
    const head = await conn.read(headEnd).finally(() => conn.socket.destroy());
    expect(head).toMatch(/^HTTP\/1\.1 101 /);
    expect(head.match(/^set-cookie: .*$/gim)).toEqual(['set-cookie: ws=1; Path=/']);

    expect(withFrameAncestors(undefined)).toBe("frame-ancestors 'self'");
    expect(withFrameAncestors("default-src 'none';  ")).toBe("default-src 'none'; frame-ancestors 'self'");
    expect(withFrameAncestors("script-src 'self', FRAME-ANCESTORS 'none'")).toBe("script-src 'self', FRAME-ANCESTORS 'none', frame-ancestors 'self'");
  });

  it('accepts any one valid session cookie among several (a stale one beside a fresh one)', async () => {
    const alpha = await signIn('alpha');
    const bravo = await signIn('bravo');
    const stale = `${SESSION_COOKIE}=v1.c3RhbGU.c2lnbmF0dXJl`;
    for (const header of [`${stale}; ${alpha}`, `${alpha}; ${stale}`, `${bravo}; theme=dark; ${alpha}`]) {
      const reply = await send(main.port, host('alpha'), '/', { cookie: header });
      expect(reply.status, header).toBe(200);
      expect(JSON.stringify(echoed(reply)), header).not.toContain(SESSION_COOKIE); // none of them is forwarded
    }
    // None valid: the first one's reason.
    const refused = await send(main.port, host('alpha'), '/', { cookie: `${stale}; ${bravo}` });
    expect(refused.status).toBe(401);
    expect(refused.body).toContain('Session not valid');
    expect((await send(main.port, host('alpha'), '/', { cookie: `${bravo}; ${stale}` })).status).toBe(403);
  });

  it('replaces browser-supplied X-Forwarded-* with its own, on HTTP and on WebSockets', async () => {
    const cookie = await signIn('alpha');
    const spoofed = { 'x-forwarded-for': '203.0.113.9', 'x-forwarded-host': 'evil.example', 'x-forwarded-proto': 'https', 'x-forwarded-port': '1', forwarded: 'for=203.0.113.9;host=evil.example' };
    const echo = echoed(await send(main.port, host('alpha'), '/', { cookie, headers: spoofed }));
    expect(echo.headers).toMatchObject({ 'x-forwarded-for': '127.0.0.1', 'x-forwarded-host': host('alpha'), 'x-forwarded-proto': 'http', 'x-forwarded-port': String(main.port) });
    expect(echo.headers.forwarded).toBeUndefined();

    const conn = await connectRaw(main.port);
    const request = upgradeRequest(host('alpha'), '/ws-fwd', cookie).replace('\r\n\r\n', `\r\n${Object.entries(spoofed).map(([k, v]) => `${k}: ${v}`).join('\r\n')}\r\n\r\n`);
    conn.socket.write(request);
    expect(await conn.read(headEnd).finally(() => conn.socket.destroy())).toMatch(/^HTTP\/1\.1 101 /);
    const upgrade = upA.requests.findLast((r) => r.url === '/ws-fwd')!;
    expect(upgrade.headers).toMatchObject({ 'x-forwarded-for': '127.0.0.1', 'x-forwarded-host': host('alpha'), 'x-forwarded-proto': 'http' });
    expect(upgrade.headers.forwarded).toBeUndefined();
  });

  it('under https names the session cookie __Host- (Secure, Path=/, no Domain) and accepts no other', async () => {
    const secure = await startStack('https', 10_000, [record('alpha', upA.port)], { scheme: 'https' });
    const at = `alpha.localhost:${secure.port}`;
    const link = await secure.controller.issueAccessLink('alpha');
    expect(link.url).toBe(`https://${at}/`);
    const exchange = await open(secure.port, link.accessUrl);
    expect(exchange.status).toBe(302);
    const [line] = exchange.headers['set-cookie']!;
    const attributes = line!.split(';').map((a) => a.trim());
    expect(attributes[0]!.startsWith(`${HOST_SESSION_COOKIE}=v2.`)).toBe(true);
    expect(attributes).toEqual(expect.arrayContaining(['Secure', 'Path=/', 'HttpOnly', 'SameSite=Lax']));
    expect(attributes.some((a) => /^domain=/i.test(a))).toBe(false);
    const value = attributes[0]!.slice(HOST_SESSION_COOKIE.length + 1);

    const echo = echoed(await send(secure.port, at, '/', { cookie: `${HOST_SESSION_COOKIE}=${value}; theme=dark` }));
    expect(echo.headers.cookie).toBe('theme=dark');
    expect(echo.headers['x-forwarded-proto']).toBe('https');
    // The same token under the plain name (which a sibling host could have planted) is no session here.
    expect((await send(secure.port, at, '/', { cookie: `${SESSION_COOKIE}=${value}` })).status).toBe(401);
  });

  it('refuses link exchanges with 503 while the record of used links cannot be read, and changes nothing', async () => {
    const stack = await startStack('spent', 10_000, [record('alpha', upA.port)]);
    const at = `alpha.localhost:${stack.port}`;
    const file = path.join(stack.stateDir, 'gateway', 'spent-links.json');
    const link = await stack.controller.issueAccessLink('alpha');
    const signedIn = `${SESSION_COOKIE}=${stack.access.session('alpha', 0).token}`;
    await mkdir(path.dirname(file), { recursive: true });

    const broken: [string, () => Promise<void>][] = [
      ['not JSON', () => writeFile(file, '{"truncated": 17')],
      ['an array', () => writeFile(file, '[]')],
      ['an entry that is no expiry', () => writeFile(file, JSON.stringify({ abc: Date.now() + 60_000, def: 'soon' }))],
      ['a directory', async () => {
        await rm(file, { force: true });
        await mkdir(file);
      }],
    ];
    for (const [what, breakIt] of broken) {
      await breakIt();
      const before = await readFile(file, 'utf8').catch((err: NodeJS.ErrnoException) => err.code);
      const reply = await open(stack.port, link.accessUrl);
      expect(reply.status, what).toBe(503);
      expect(reply.body, what).toContain('cannot read or update its record of used sign-in links');
      expect(reply.headers['set-cookie'], what).toBeUndefined();
      expect(await readFile(file, 'utf8').catch((err: NodeJS.ErrnoException) => err.code), what).toEqual(before);
      // Someone already signed in is sent on to the clean path; the link stays unspent.
      const dropped = await open(stack.port, link.accessUrl, { cookie: signedIn });
      expect(dropped.status, what).toBe(302);
      expect(dropped.headers['set-cookie'], what).toBeUndefined();
      expect((await send(stack.port, at, '/', { cookie: signedIn })).status, what).toBe(200);
    }

    // Repaired (here: emptied by an operator), links work again without a restart, once.
    await rm(file, { recursive: true });
    await writeFile(file, '{}');
    expect((await open(stack.port, link.accessUrl)).status).toBe(302);
    expect((await open(stack.port, link.accessUrl)).status).toBe(401);
    expect(Object.keys(JSON.parse(await readFile(file, 'utf8')) as object)).toHaveLength(1);
  });

  it('caps connections per client and in total; a signed-in request gets through once there is room', async () => {
    const stack = await startStack('caps', 10_000, [record('alpha', upA.port)], { maxConnectionsPerAddress: 3, maxConnections: 5 });
    const at = `alpha.localhost:${stack.port}`;
    const cookie = `${SESSION_COOKIE}=${stack.access.session('alpha', 0).token}`;
    const partial = `GET / HTTP/1.1\r\nHost: ${at}\r\n`; // headers never finished: held until headersTimeoutMs
    const held: HeldConnection[] = [];
    for (let i = 0; i < 3; i++) held.push(await holdConnection(stack.port, '127.0.0.1', partial));
    // Connections are accepted in order, so the fourth from 127.0.0.1 is seen after the three above.
    expect(await (await holdConnection(stack.port, '127.0.0.1', partial)).closed).toBe('');
    held.push(await holdConnection(stack.port, '127.0.0.2', partial), await holdConnection(stack.port, '127.0.0.3', partial));
    expect(await (await holdConnection(stack.port, '127.0.0.4', partial)).closed).toBe(''); // the total of 5
    expect(held.some((c) => c.isClosed())).toBe(false);

    // Room for one: a signed-in request from another address gets through while 127.0.0.1 holds its cap.
    held.pop()!.socket.destroy();
    const reply = await waitUntil(
      () => send(stack.port, at, '/', { cookie, localAddress: '127.0.0.4' }).catch(() => undefined), // refused until the gateway saw the close
      { timeoutMs: 10_000, intervalMs: 50, what: 'a signed-in request through the freed slot' },
    );
    expect(reply.status).toBe(200);
    for (const c of held) c.socket.destroy();
    const again = await waitUntil(() => send(stack.port, at, '/', { cookie }).catch(() => undefined), { timeoutMs: 10_000, intervalMs: 50, what: 'a signed-in request from 127.0.0.1' });
    expect(again.status).toBe(200);
  });

  it('closes 200 slow unauthenticated requests and slow headers promptly, while signed-in requests get through', async () => {
    const stack = await startStack('flood', 5, [record('alpha', upA.port)], { headersTimeoutMs: 500, requestTimeoutMs: 1_000, maxConnectionsPerAddress: 150 });
    const at = `alpha.localhost:${stack.port}`;
    const cookie = `${SESSION_COOKIE}=${stack.access.session('alpha', 0).token}`;
    const before = seen();
    const slowBody = `POST /upload HTTP/1.1\r\nHost: ${at}\r\nContent-Type: application/octet-stream\r\nContent-Length: 1000000\r\n\r\n`;
    const slowHeaders = `GET / HTTP/1.1\r\nHost: ${at}\r\nX-Slow: `;
    const flood = await Promise.all([
      ...Array.from({ length: 200 }, () => holdConnection(stack.port, '127.0.0.1', slowBody, 100)),
      ...Array.from({ length: 20 }, () => holdConnection(stack.port, '127.0.0.3', slowHeaders, 100)),
    ]);
    expect((await send(stack.port, at, '/during', { cookie, localAddress: '127.0.0.2' })).status).toBe(200);

    // Before: each held for minutes (no request timeout, the unread body drained). Now: answered and closed,
    // refused at the per-client cap, or cut by the header or request timeout.
    const texts = await waitUntil(async () => (flood.every((c) => c.isClosed()) ? Promise.all(flood.map((c) => c.closed)) : undefined), {
      timeoutMs: 20_000,
      intervalMs: 50,
      what: 'every slow connection closed by the gateway',
    });
    for (const text of texts) expect(text).toMatch(/^(|HTTP\/1\.1 (401|408|429) [^]*)$/);
    expect(texts.slice(200).every((t) => t.startsWith('HTTP/1.1 408 '))).toBe(true); // the slow headers: timed out
    expect(texts.some((t) => t.startsWith('HTTP/1.1 401 '))).toBe(true);

    // 127.0.0.1 is now past its failure limit, yet a signed-in request from it goes through; nothing else reached the editor.
    expect((await send(stack.port, at, '/')).status).toBe(429);
    expect((await send(stack.port, at, '/after', { cookie })).status).toBe(200);
    expect(seen()).toEqual([before[0] + 2, before[1]]);
  });
});

describe('FailureLimiter', () => {
  it('counts IPv4 addresses one by one and IPv6 addresses by /64', () => {
    expect(addressKey('203.0.113.7')).toBe('203.0.113.7');
    expect(addressKey('::ffff:203.0.113.7')).toBe('203.0.113.7');
    expect(addressKey('::ffff:cb00:7107')).toBe('203.0.113.7');
    expect(addressKey('2001:DB8:1:2:aaaa:bbbb:cccc:dddd')).toBe('2001:db8:1:2::/64');
    expect(addressKey('2001:db8:1:2::9')).toBe('2001:db8:1:2::/64');
    expect(addressKey('2001:db8::1')).toBe('2001:db8:0:0::/64');
    expect(addressKey('::1')).toBe('0:0:0:0::/64');
    expect(addressKey('fe80::1%eth0')).toBe('fe80:0:0:0::/64');
    expect(addressKey('64:ff9b::192.0.2.33')).toBe('64:ff9b:0:0::/64');

    const limiter = new FailureLimiter(3, () => 1_000_000);
    for (const a of ['2001:db8:1:2::1', '2001:db8:1:2::2', '2001:db8:1:2:ffff:ffff:ffff:ffff']) limiter.fail(a);
    expect(limiter.retryAfter('2001:db8:1:2::77')).toBe(60); // another address of the same /64
    expect(limiter.retryAfter('2001:db8:1:3::1')).toBe(0); // the next /64
    limiter.fail('10.0.0.1');
    limiter.fail('::ffff:10.0.0.1');
    limiter.fail('10.0.0.2');
    expect(limiter.retryAfter('10.0.0.1')).toBe(0);
    limiter.fail('10.0.0.1');
    expect(limiter.retryAfter('::ffff:10.0.0.1')).toBe(60);
    expect(limiter.retryAfter('10.0.0.2')).toBe(0);
  });

  it('blocks for exactly a sliding minute after the limit', () => {
    let now = 5_000_000;
    const limiter = new FailureLimiter(3, () => now);
    for (const dt of [0, 10_000, 20_000]) {
      now = 5_000_000 + dt;
      expect(limiter.retryAfter('a')).toBe(0);
      limiter.fail('a');
    }
    expect(limiter.retryAfter('a')).toBe(40); // the first failure ages out at +60 s
    now = 5_060_000;
    expect(limiter.retryAfter('a')).toBe(0);
    limiter.fail('a'); // three in the last minute again: +10, +20, +60
    expect(limiter.retryAfter('a')).toBe(10);
    now = 5_070_001;
    expect(limiter.retryAfter('a')).toBe(0);
    now += 60_000; // nothing left in the window: forgotten
    expect(limiter.retryAfter('a')).toBe(0);
    expect(limiter.size).toBe(0);
  });

  it('remembers at most maxTracked clients, forgetting the least recently failing first', () => {
    const limiter = new FailureLimiter(2, () => 7_000_000, 100);
    limiter.fail('192.0.2.1');
    for (let i = 0; i < 1_000; i++) {
      limiter.fail(`10.1.${i >> 8}.${i & 255}`);
      limiter.fail(`10.1.${i >> 8}.${i & 255}`);
      if (i % 50 === 0) limiter.fail('192.0.2.1'); // failing again makes it the most recent: never evicted
    }
    expect(limiter.size).toBe(100);
    expect(limiter.retryAfter('192.0.2.1')).toBe(60);
    expect(limiter.retryAfter('10.1.3.231')).toBe(60); // i = 999, the last
    expect(limiter.retryAfter('10.1.3.133')).toBe(60); // i = 901: the 100th most recent
    expect(limiter.retryAfter('10.1.3.132')).toBe(0); // i = 900: evicted
    expect(limiter.retryAfter('10.1.0.1')).toBe(0);
    expect(() => new FailureLimiter(0)).toThrow(/maxPerMinute/);
  });
});

describe('gateway and mcpHttp configuration', () => {
  it('names the field of a bad value', () => {
    expect(() => parseConfig({ gateway: { headersTimeoutMs: 30_000, requestTimeoutMs: 10_000 } })).toThrow(/gateway\.headersTimeoutMs: expected at most requestTimeoutMs/);
    expect(() => parseConfig({ gateway: { maxConnectionsPerAddress: 0 } })).toThrow(/gateway\.maxConnectionsPerAddress/);
    expect(() => parseConfig({ gateway: { maxTrackedAddresses: 1.5 } })).toThrow(/gateway\.maxTrackedAddresses/);
    const defaults = parseConfig({}).gateway;
    expect(defaults).toMatchObject({ headersTimeoutMs: 20_000, requestTimeoutMs: 60_000, maxConnections: 4_096, maxConnectionsPerAddress: 256, maxTrackedAddresses: 10_000 });
  });
});
