/**
 * Forwarded ports at the gateway over real loopback sockets: the real Gateway, SwarmController, registry
 * and AccessLinks (with a clock the test moves), an echo server standing in for code-server (it shows
 * which path reached it). Covers the host-name format, the sign-in hand-over through the instance host,
 * one-time codes, share links until they expire, revocation by the access epoch, and that none of it
 * opens the editor or another port.
 */
import { mkdtemp, rm } from 'node:fs/promises';
import http from 'node:http';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { VSCodeInstance } from '../../providers/provider.js';
import { parseConfig } from '../../src/config.js';
import { SwarmController } from '../../src/controller/swarm-controller.js';
import { AccessLinks, SESSION_COOKIE, TOKEN_PARAM } from '../../src/gateway/access-links.js';
import { Gateway } from '../../src/gateway/gateway.js';
import { HANDOVER_PARAM, HANDOVER_PATH, issuePortShare, parsePortLabel, portHostLabel, unprefixLocation } from '../../src/gateway/ports.js';
import { InstanceRegistry } from '../../src/registry/instance-registry.js';
import { startEchoUpstream, type EchoUpstream } from '../helpers/echo-upstream.js';

interface Reply {
  status: number;
  headers: http.IncomingHttpHeaders;
  body: string;
}

/** A request to the gateway with exactly this Host, target and cookie. */
function send(port: number, host: string, target: string, options: { cookie?: string; method?: string; headers?: http.OutgoingHttpHeaders } = {}): Promise<Reply> {
  return new Promise((resolve, reject) => {
    const req = http.request(
      { host: '127.0.0.1', port, path: target, method: options.method ?? 'GET', agent: false, headers: { host, ...(options.cookie ? { cookie: options.cookie } : {}), ...options.headers } },
      (res) => {
        const chunks: Buffer[] = [];
        res.on('data', (c: Buffer) => chunks.push(c));
        res.on('end', () => resolve({ status: res.statusCode ?? 0, headers: res.headers, body: Buffer.concat(chunks).toString('utf8') }));
        res.on('error', reject);
      },
    );
    req.on('error', reject);
    req.end();
  });
}

/** Opens a URL the gateway handed out, as a browser would (its host as Host). */
function open(port: number, url: string, cookie?: string): Promise<Reply> {
  const u = new URL(url);
  return send(port, u.host, `${u.pathname}${u.search}`, cookie ? { cookie } : {});
}

function cookieOf(reply: Reply): string {
  const line = reply.headers['set-cookie']?.find((l) => l.startsWith(`${SESSION_COOKIE}=`));
  if (!line) throw new Error(`no session cookie in ${reply.status} ${JSON.stringify(reply.headers)}`);
  return line.split(';')[0]!;
}

/** What reached the stand-in editor, as it echoed it. */
function echoed(reply: Reply): { url: string; headers: http.IncomingHttpHeaders } {
  expect(reply.status, reply.body).toBe(200);
  return JSON.parse(reply.body) as { url: string; headers: http.IncomingHttpHeaders };
}

/** A raw WebSocket upgrade; resolves with the status line. */
function upgrade(port: number, host: string, target: string, cookie?: string): Promise<string> {
  return new Promise((resolve, reject) => {
    const socket = net.connect({ host: '127.0.0.1', port });
    let text = '';
    socket.on('data', (c: Buffer) => {
      text += c.toString('latin1');
      if (text.includes('\r\n')) {
        socket.destroy();
        resolve(text.slice(0, text.indexOf('\r\n')));
      }
    });
    socket.on('error', reject);
    socket.on('close', () => resolve(text.split('\r\n')[0] ?? ''));
    socket.write(
      [`GET ${target} HTTP/1.1`, `Host: ${host}`, `Origin: http://${host}`, 'Connection: Upgrade', 'Upgrade: websocket', 'Sec-WebSocket-Version: 13', 'Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==', ...(cookie ? [`Cookie: ${cookie}`] : []), '', ''].join('\r\n'),
    );
  });
}

function record(id: string, editorPort: number, extra: Partial<VSCodeInstance> = {}): VSCodeInstance {
  const at = new Date().toISOString();
  return {
    id,
    name: id,
    providerType: 'docker',
    status: 'running',
    health: 'healthy',
    config: { name: id, image: 'codercom/code-server:4.99.3', resources: { cpu: 1, memoryMb: 1024 } },
    endpoint: { url: `http://127.0.0.1:${editorPort}`, host: '127.0.0.1', port: editorPort },
    providerRef: {},
    createdAt: at,
    updatedAt: at,
    ...extra,
  };
}

describe('forwarded ports at the gateway', () => {
  let stateDir: string;
  let editor: EchoUpstream;
  let registry: InstanceRegistry;
  let access: AccessLinks;
  let controller: SwarmController;
  let gateway: Gateway;
  let port: number;
  let clock = Date.now();
  const host = (label: string): string => `${label}.localhost:${port}`;

  /** A browser signed in to the instance host of `id`: its session cookie. */
  async function signedIn(id: string): Promise<string> {
    const link = access.link(id, registry.get(id)!.accessEpoch ?? 0);
    const reply = await open(port, link.accessUrl);
    expect(reply.status).toBe(302);
    return cookieOf(reply);
  }

  /** The whole sign-in for a port host, as a browser follows it; returns the port-host cookie and each hop. */
  async function portSignIn(id: string, forwarded: number, path: string, instanceCookie: string): Promise<{ cookie: string; hops: Reply[] }> {
    const first = await send(port, host(portHostLabel({ instanceId: id, port: forwarded })), path);
    expect(first.status).toBe(302);
    const handover = await open(port, first.headers.location!, instanceCookie);
    expect(handover.status, handover.body).toBe(302);
    const back = await open(port, handover.headers.location!);
    expect(back.status, back.body).toBe(302);
    return { cookie: cookieOf(back), hops: [first, handover, back] };
  }

  beforeAll(async () => {
    stateDir = await mkdtemp(path.join(os.tmpdir(), 'ports-gateway-'));
    editor = await startEchoUpstream();
    const config = parseConfig({ stateDir, logLevel: 'silent', gateway: { port: 0, autoStart: false, maxFailuresPerMinute: 10_000 } });
    registry = new InstanceRegistry({ stateDir });
    access = new AccessLinks(config.gateway, stateDir, () => clock);
    controller = new SwarmController({ config, registry, providers: {}, access, lockStateDir: false });
    await controller.initialize();
    for (const id of ['alpha-1a2b3c4d', 'beta-5e6f7a8b']) await registry.register(record(id, editor.port));
    gateway = new Gateway({ controller, access, activity: controller.activity, config: config.gateway, now: () => clock });
    ({ port } = await gateway.listen());
  });

  afterAll(async () => {
    await gateway?.close();
    await controller?.close();
    await editor?.close();
    await rm(stateDir, { recursive: true, force: true });
  });

  it('names a port host <port>--<id> and reads only that form as a port', () => {
    expect(portHostLabel({ instanceId: 'alpha-1a2b3c4d', port: 3000 })).toBe('3000--alpha-1a2b3c4d');
    expect(parsePortLabel('3000--alpha-1a2b3c4d')).toEqual({ instanceId: 'alpha-1a2b3c4d', port: 3000 });
    for (const label of ['alpha-1a2b3c4d', '0--alpha', '65536--alpha', '3000--', '3000--a--b', 'x3000--alpha', '3000--Alpha', '3000---alpha']) {
      expect(parsePortLabel(label), label).toBeUndefined();
    }
    expect(access.urlFor(portHostLabel({ instanceId: 'alpha-1a2b3c4d', port: 3000 }))).toBe(`http://3000--alpha-1a2b3c4d.localhost:${port}/`);
  });

  it('sends a browser without a port session to the instance host, the same whether the instance or port exists', async () => {
    const existing = await send(port, host('3000--alpha-1a2b3c4d'), '/page?q=1');
    const missing = await send(port, host('3000--gone-00000000'), '/page?q=1');
    for (const [reply, id] of [[existing, 'alpha-1a2b3c4d'], [missing, 'gone-00000000']] as const) {
      expect(reply.status).toBe(302);
      const to = new URL(reply.headers.location!);
      expect(to.host).toBe(host(id));
      expect(to.pathname).toBe(HANDOVER_PATH);
      expect(to.searchParams.get('next')).toBe('/page?q=1');
      expect(reply.headers['set-cookie']).toBeUndefined();
    }
    // Without a session there, the instance host refuses it like any unsigned visit, whether it exists or not.
    const refused = await open(port, existing.headers.location!);
    const refusedMissing = await open(port, missing.headers.location!);
    expect([refused.status, refusedMissing.status]).toEqual([401, 401]);
    expect(refused.body).toBe(refusedMissing.body);
    expect(editor.requests.length).toBe(0);
  });

  it('signs a browser in to the port through its instance session, then serves the app through /proxy/<port>', async () => {
    const instanceCookie = await signedIn('alpha-1a2b3c4d');
    const { cookie, hops } = await portSignIn('alpha-1a2b3c4d', 3000, '/page?q=1', instanceCookie);
    const code = new URL(hops[1]!.headers.location!);
    expect(code.host).toBe(host('3000--alpha-1a2b3c4d'));
    expect(code.pathname).toBe('/page');
    expect(hops[2]!.headers.location).toBe('/page?q=1'); // the code is dropped from the address
    expect(hops[2]!.headers['set-cookie']![0]).toMatch(/; HttpOnly; SameSite=Lax; Max-Age=\d+$/);
    expect(hops[2]!.headers['set-cookie']![0]).not.toMatch(/domain=/i); // host-only

    const seen = echoed(await send(port, host('3000--alpha-1a2b3c4d'), '/page?q=1', { cookie: `${cookie}; app=1` }));
    expect(seen.url).toBe('/proxy/3000/page?q=1');
    expect(seen.headers.cookie).toBe('app=1'); // the gateway's cookie never reaches the app
    expect(seen.headers['x-forwarded-host']).toBe(host('3000--alpha-1a2b3c4d'));
    expect(await upgrade(port, host('3000--alpha-1a2b3c4d'), '/ws', cookie)).toBe('HTTP/1.1 101 Switching Protocols');
    expect(editor.requests.at(-1)).toMatchObject({ url: '/proxy/3000/ws', upgrade: true });

    // Both one-time steps are spent.
    expect((await open(port, hops[0]!.headers.location!, instanceCookie)).status).toBe(401);
    expect((await open(port, hops[1]!.headers.location!)).status).toBe(401);
  });

  it('keeps a port session to that port: not another port, not the editor, not another instance', async () => {
    const { cookie } = await portSignIn('alpha-1a2b3c4d', 3000, '/', await signedIn('alpha-1a2b3c4d'));
    const before = editor.requests.length;
    expect((await send(port, host('3001--alpha-1a2b3c4d'), '/', { cookie })).status).toBe(302); // asked to sign in again
    expect((await send(port, host('alpha-1a2b3c4d'), '/', { cookie })).status).toBe(403);
    expect((await send(port, host('3000--beta-5e6f7a8b'), '/', { cookie, method: 'POST' })).status).toBe(403);
    expect(await upgrade(port, host('3001--alpha-1a2b3c4d'), '/ws', cookie)).toMatch(/^HTTP\/1.1 40[13]/);
    expect(editor.requests.length).toBe(before);
  });

  it("does not hand over a port of one instance to a session of another (another principal's browser)", async () => {
    const betaCookie = await signedIn('beta-5e6f7a8b');
    const first = await send(port, host('3000--alpha-1a2b3c4d'), '/');
    // Beta's session is not sent to alpha's host; shown there anyway, it is refused.
    const refused = await open(port, first.headers.location!, betaCookie);
    expect(refused.status).toBe(403);
    // A hand-over for alpha's port brought to beta's host is refused too.
    const moved = new URL(first.headers.location!);
    moved.host = host('beta-5e6f7a8b');
    expect((await open(port, moved.toString(), betaCookie)).status).toBe(403);
    expect((await send(port, host('3000--alpha-1a2b3c4d'), '/', { cookie: betaCookie })).status).toBe(302);
  });

  it('opens a port, never the editor, with a share link until it expires', async () => {
    const share = issuePortShare(access, registry.get('alpha-1a2b3c4d')!, 5173, 5);
    expect(share.url).toBe(`http://5173--alpha-1a2b3c4d.localhost:${port}/`);
    const entered = await open(port, share.shareUrl);
    expect(entered.status).toBe(302);
    expect(entered.headers.location).toBe('/');
    const cookie = cookieOf(entered);
    expect(echoed(await send(port, host('5173--alpha-1a2b3c4d'), '/app', { cookie })).url).toBe('/proxy/5173/app');
    expect((await open(port, share.shareUrl)).status).toBe(302); // usable by more than one browser, again and again
    // Not the editor, not another port.
    const token = new URL(share.shareUrl).searchParams.get(TOKEN_PARAM)!;
    expect((await send(port, host('alpha-1a2b3c4d'), `/?${TOKEN_PARAM}=${token}`)).status).toBe(403);
    expect((await send(port, host('alpha-1a2b3c4d'), '/', { cookie })).status).toBe(401); // a share is no session there
    expect((await send(port, host('5174--alpha-1a2b3c4d'), `/?${TOKEN_PARAM}=${token}`)).status).toBe(403);

    clock += 6 * 60_000;
    try {
      expect((await send(port, host('5173--alpha-1a2b3c4d'), '/app', { cookie, method: 'POST' })).status).toBe(401);
      expect((await open(port, share.shareUrl)).status).toBe(401);
    } finally {
      clock -= 6 * 60_000;
    }
  });

  it('revokes port sessions and share links with the instance access epoch', async () => {
    const { cookie } = await portSignIn('alpha-1a2b3c4d', 3000, '/', await signedIn('alpha-1a2b3c4d'));
    const share = issuePortShare(access, registry.get('alpha-1a2b3c4d')!, 3000, 30);
    expect(echoed(await send(port, host('3000--alpha-1a2b3c4d'), '/', { cookie })).url).toBe('/proxy/3000/');
    await controller.issueAccessLink('alpha-1a2b3c4d', { revokeExisting: true });
    expect((await send(port, host('3000--alpha-1a2b3c4d'), '/', { cookie, method: 'POST' })).status).toBe(401);
    expect((await open(port, share.shareUrl)).status).toBe(401);
  });

  it("refuses the editor's own port and bad share requests with errors that name the field", () => {
    const instance = registry.get('beta-5e6f7a8b')!;
    expect(() => issuePortShare(access, instance, 8080, 5)).toThrow(/port: expected a TCP port from 1 to 65535 other than the editor's own 8080/);
    expect(() => issuePortShare(access, instance, 0, 5)).toThrow(/^port: /);
    expect(() => issuePortShare(access, instance, 3000, 0)).toThrow(/^minutes: expected a number of minutes from 1 to 1440/);
    expect(() => issuePortShare(access, instance, 3000, 2000)).toThrow(/^minutes: /);
  });

  it('answers the editor port host 404 before anything else', async () => {
    expect((await send(port, host('8080--alpha-1a2b3c4d'), '/')).status).toBe(404);
  });

  it("takes code-server's /proxy/<port> prefix off an app's redirects", () => {
    const cases: [string, string][] = [
      ['/proxy/3000/login', '/login'],
      ['/proxy/3000', '/'],
      ['/proxy/3000?x=1', '/?x=1'],
      ['/proxy/30000/login', '/proxy/30000/login'],
      ['https://elsewhere.example/', 'https://elsewhere.example/'],
    ];
    for (const [given, expected] of cases) {
      const headers: http.IncomingHttpHeaders = { location: given };
      unprefixLocation(headers, 3000);
      expect(headers.location, given).toBe(expected);
    }
  });

  it('refuses a hand-over that is not one', async () => {
    const instanceCookie = await signedIn('alpha-1a2b3c4d');
    expect((await send(port, host('alpha-1a2b3c4d'), `${HANDOVER_PATH}?${HANDOVER_PARAM}=v2.bad.sig`, { cookie: instanceCookie })).status).toBe(401);
    expect((await send(port, host('alpha-1a2b3c4d'), HANDOVER_PATH, { cookie: instanceCookie })).status).toBe(400);
  });
});
