/**
 * The gateway over real loopback sockets: the real Gateway, SwarmController, registry and AccessLinks,
 * with small echo servers standing in for editors (no Docker). Requests are written with node:http (or
 * raw TCP) so the Host header and the request-target are exactly what a test says.
 */
import { mkdtemp, rm } from 'node:fs/promises';
import http from 'node:http';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { VSCodeInstance } from '../../providers/provider.js';
import { parseConfig, type SwarmConfig } from '../../src/config.js';
import { SwarmController } from '../../src/controller/swarm-controller.js';
import { AccessLinks, SESSION_COOKIE, TOKEN_PARAM } from '../../src/gateway/access-links.js';
import { Gateway } from '../../src/gateway/gateway.js';
import { InstanceRegistry } from '../../src/registry/instance-registry.js';
import { startEchoUpstream, type EchoUpstream } from '../helpers/echo-upstream.js';

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

async function startStack(label: string, maxFailuresPerMinute: number, instances: VSCodeInstance[]): Promise<Stack> {
  const stateDir = await mkdtemp(path.join(os.tmpdir(), `gateway-${label}-`));
  cleanups.push(() => rm(stateDir, { recursive: true, force: true }));
  const config = parseConfig({ stateDir, logLevel: 'silent', gateway: { port: 0, maxFailuresPerMinute, autoStart: false } });
  const registry = new InstanceRegistry({ stateDir });
  const access = new AccessLinks(config.gateway, stateDir);
  const controller = new SwarmController({ config, registry, providers: {}, access, lockStateDir: false });
  await controller.initialize();
  cleanups.push(() => controller.close());
  for (const instance of instances) await registry.register(instance);
  const gateway = new Gateway({ controller, access, activity: controller.activity, config: config.gateway });
  const { port } = await gateway.listen();
  cleanups.push(() => gateway.close());
  return { stateDir, config, registry, access, controller, gateway, port };
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

function upgradeRequest(host: string, target: string, cookie?: string, origin?: string): string {
  return [
    `GET ${target} HTTP/1.1`,
    `Host: ${host}`,
    ...(origin ? [`Origin: ${origin}`] : []),
    'Connection: Upgrade',
    'Upgrade: websocket',
    'Sec-WebSocket-Version: 13',
    'Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==',
    ...(cookie ? [`Cookie: ${cookie}`] : []),
    '',
    '',
  ].join('\r\n');
}

const headEnd = (text: string): boolean => text.includes('\r\n\r\n');

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
    expect(attributes[0]).toMatch(new RegExp(`^${SESSION_COOKIE}=v1\\.[A-Za-z0-9_-]+\\.[A-Za-z0-9_-]+$`));
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

  it('rate-limits failed sign-ins per client address with 429 and Retry-After', async () => {
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
    const blocked = await send(limited.port, at, '/', { cookie });
    expect(blocked.status).toBe(429);
    const retryAfter = Number(blocked.headers['retry-after']);
    expect(retryAfter).toBeGreaterThanOrEqual(1);
    expect(retryAfter).toBeLessThanOrEqual(60);
    expect(blocked.body).toContain('Too many');
    expect(await rawExchange(limited.port, upgradeRequest(at, '/', cookie))).toMatch(/^HTTP\/1\.1 429 /);
    expect(seen()).toEqual(before);

    // Per address: another loopback address is not affected.
    expect((await send(limited.port, at, '/', { cookie, localAddress: '127.0.0.2' })).status).toBe(200);
    // And the main gateway keeps its own count.
    expect((await send(main.port, host('alpha'), '/', { cookie: await signIn('alpha') })).status).toBe(200);
  });
});
