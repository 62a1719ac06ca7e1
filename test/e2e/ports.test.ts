/**
 * Forwarded ports end to end, on the real engine with the real editor image (code-server 4.99.3): a small
 * HTTP + WebSocket app is written into a workspace and started there through execute_command, then opened
 * in Chromium at `<port>--<id>.localhost:<gatewayPort>` through the gateway and code-server's own port proxy.
 *
 * What it proves: the owner's browser, signed in to the workspace, gets the app's page and a WebSocket
 * echo; another principal's browser (signed in to her own workspace) and a browser with no session are
 * refused, and the refusal reads the same for a port where nothing listens; a share link opens the app
 * without a session until it expires, and never the editor; list_instance_ports shows the app's port with
 * its address, through a real MCP client over HTTP. Instance ids never contain "--".
 *
 * The gateway's clock is the test's (an AccessLinks over the same state folder, so the same signing key),
 * so that a share link's expiry is reached by moving the clock rather than by waiting.
 */
import type { Client } from '@modelcontextprotocol/sdk/client/index.js';
import type { Browser, BrowserContext } from 'playwright-core';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { VSCodeInstance } from '../../providers/provider.js';
import type { SwarmConfig } from '../../src/config.js';
import { createSwarm } from '../../src/controller/create-swarm.js';
import type { SwarmController } from '../../src/controller/swarm-controller.js';
import { AccessLinks, TOKEN_PARAM } from '../../src/gateway/access-links.js';
import { Gateway } from '../../src/gateway/gateway.js';
import { startMcpHttp } from '../../src/mcp/http.js';
import { waitUntil } from '../../src/timing/wait-until.js';
import { launchChromium } from '../helpers/browser.js';
import { cleanUp, makeStateDir, testConfig } from '../helpers/docker.js';
import { callTool, type ToolResult } from '../helpers/mcp.js';
import { freePort } from '../helpers/ports.js';
import { ensureStandinImage } from '../helpers/standin-image.js';
import { connectMcpHttp } from '../helpers/tenancy.js';

const PREFIX = 'e2e-ports';
const APP_PORT = 5173;
const QUIET_PORT = 5174; // nothing listens here
/** code-server's bundled node, the one the editor image runs on. */
const NODE = '/usr/local/bin/node';

/**
 * The app: a page that opens a WebSocket back to where it came from and shows what the server echoed,
 * and a WebSocket echo written on node's own modules (RFC 6455 handshake, short text frames).
 */
const APP = String.raw`
const http = require('node:http');
const crypto = require('node:crypto');
const page = '<!doctype html><title>ports app</title><h1 id="greeting">hello from inside the workspace</h1><p id="echo">waiting</p>' +
  '<script>const ws = new WebSocket((location.protocol === "https:" ? "wss://" : "ws://") + location.host + "/echo");' +
  'ws.onopen = () => ws.send("ping over the gateway"); ws.onmessage = (e) => { document.getElementById("echo").textContent = e.data; };' +
  'ws.onerror = () => { document.getElementById("echo").textContent = "websocket failed"; };</script>';
const server = http.createServer((req, res) => {
  if (req.url === '/redirect') { res.writeHead(302, { Location: '/landed' }); return res.end(); }
  res.writeHead(200, { 'Content-Type': 'text/html' });
  res.end(req.url === '/landed' ? '<p id="landed">landed at ' + req.url + '</p>' : page);
});
server.on('upgrade', (req, socket) => {
  const accept = crypto.createHash('sha1').update(req.headers['sec-websocket-key'] + '258EAFA5-E914-47DA-95CA-C5AB0DC85B11').digest('base64');
  socket.write('HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: ' + accept + '\r\n\r\n');
  socket.on('data', (frame) => {
    if ((frame[0] & 0x0f) !== 1) return socket.end();
    const length = frame[1] & 0x7f;
    const mask = frame.subarray(2, 6);
    const text = Buffer.from(frame.subarray(6, 6 + length).map((b, i) => b ^ mask[i % 4])).toString();
    const reply = Buffer.from('echo: ' + text + ' (path ' + req.url + ')');
    socket.write(Buffer.concat([Buffer.from([0x81, reply.length]), reply]));
  });
});
server.listen(${APP_PORT}, '0.0.0.0');
`;

function ok(result: ToolResult, what: string): Record<string, unknown> {
  expect(result.isError, `${what}: ${JSON.stringify(result.content)}`).toBeFalsy();
  return result.structuredContent ?? {};
}

describe('forwarded ports: an app inside a workspace, through the gateway, in Chromium', () => {
  let stateDir: string;
  let config: SwarmConfig;
  let controller: SwarmController;
  let gateway: Gateway;
  let mcp: Awaited<ReturnType<typeof startMcpHttp>>;
  let browser: Browser;
  let alice: Client;
  let bob: Client;
  let workspace: VSCodeInstance;
  let bobs: VSCodeInstance;
  let gatewayPort: number;
  let clock = Date.now();
  const contexts: BrowserContext[] = [];
  const portUrl = (port: number): string => `http://${port}--${workspace.id}.localhost:${gatewayPort}/`;

  async function context(): Promise<BrowserContext> {
    const made = await browser.newContext();
    contexts.push(made);
    return made;
  }

  /** A browser signed in to a workspace with a fresh access link. */
  async function signedIn(client: Client, instanceId: string): Promise<BrowserContext> {
    const link = ok(await callTool(client, 'get_instance_access_link', { instanceId }), 'access link') as { accessUrl: string };
    const browserContext = await context();
    await (await browserContext.newPage()).goto(link.accessUrl, { waitUntil: 'commit' });
    const cookies = await browserContext.cookies(new URL(link.accessUrl).origin);
    expect(cookies.map((c) => c.name)).toContain('swarm_session');
    return browserContext;
  }

  beforeAll(async () => {
    await cleanUp(PREFIX);
    stateDir = await makeStateDir(PREFIX);
    gatewayPort = await freePort();
    config = testConfig(stateDir, { exec: { enabled: true }, idle: { enabled: false }, health: { enabled: false }, gateway: { port: gatewayPort, autoStart: false } });
    controller = createSwarm(config);
    await controller.initialize();
    const access = new AccessLinks(config.gateway, stateDir, () => clock);
    await access.initialize();
    gateway = new Gateway({ controller, access, activity: controller.activity, config: config.gateway, now: () => clock });
    await gateway.listen();
    mcp = await startMcpHttp({ controller, host: '127.0.0.1', port: 0, stateDir });
    for (const id of ['alice', 'bob']) await controller.principals.addPrincipal({ id, role: 'member' });
    alice = await connectMcpHttp(mcp.url, (await controller.principals.createToken({ principalId: 'alice', name: 'ports-e2e' })).token, 'alice');
    bob = await connectMcpHttp(mcp.url, (await controller.principals.createToken({ principalId: 'bob', name: 'ports-e2e' })).token, 'bob');
    browser = await launchChromium();
  }, 240_000);

  afterAll(async () => {
    for (const c of contexts) await c.close().catch(() => undefined);
    await browser?.close();
    await alice?.close();
    await bob?.close();
    await mcp?.close();
    await gateway?.close();
    await controller?.close();
    await cleanUp(PREFIX, stateDir);
  });

  it('creates workspaces whose ids never hold "--", and starts the app in one through execute_command', async () => {
    workspace = ok(await callTool(alice, 'create_swarm_instance', { name: `${PREFIX}--app..one` }), 'create').instance as VSCodeInstance;
    expect(workspace.id).not.toContain('--');
    expect(workspace.id).toMatch(/^e2e-ports-app-one-[0-9a-f]{8}$/);
    bobs = ok(await callTool(bob, 'create_swarm_instance', { name: `${PREFIX}-bob`, image: await ensureStandinImage() }), 'create bob').instance as VSCodeInstance;

    const write = `cat > /tmp/app.js <<'APP'\n${APP}\nAPP\nnohup ${NODE} /tmp/app.js > /tmp/app.log 2>&1 < /dev/null &\necho started`;
    const started = ok(await callTool(alice, 'execute_command', { instanceId: workspace.id, command: write }), 'start the app');
    expect(started.stdout).toContain('started');
  }, 240_000);

  it('list_instance_ports shows the app port with its forwarded address, and not the editor', async () => {
    const listed = await waitUntil(
      async () => {
        const ports = ok(await callTool(alice, 'list_instance_ports', { instanceId: workspace.id }), 'list ports').ports as { port: number; url: string; reachable: boolean; addresses: string[] }[];
        return ports.some((p) => p.port === APP_PORT) ? ports : undefined;
      },
      { timeoutMs: 30_000, intervalMs: 500, what: `port ${APP_PORT} listening in the workspace` },
    );
    expect(listed.find((p) => p.port === APP_PORT)).toEqual({ port: APP_PORT, addresses: ['0.0.0.0'], reachable: true, listening: true, declared: false, url: portUrl(APP_PORT) });
    expect(listed.some((p) => p.port === 8080)).toBe(false);
    // Bob may not list Alice's ports: the same answer as for a workspace that does not exist.
    const hidden = await callTool(bob, 'list_instance_ports', { instanceId: workspace.id });
    expect(hidden.isError).toBe(true);
    expect(JSON.stringify(hidden.content)).toContain(`NOT_FOUND: instance ${workspace.id} does not exist`);
  });

  it("serves the app's page and a WebSocket echo to the owner's browser, signed in through the workspace", async () => {
    const owner = await signedIn(alice, workspace.id);
    const page = await owner.newPage();
    const response = await page.goto(`${portUrl(APP_PORT)}?from=owner`);
    expect(response?.status()).toBe(200);
    expect(page.url()).toBe(`${portUrl(APP_PORT)}?from=owner`); // back where it started, the sign-in code dropped
    await expect.poll(() => page.locator('#greeting').textContent()).toBe('hello from inside the workspace');
    await expect.poll(() => page.locator('#echo').textContent(), { timeout: 15_000 }).toBe('echo: ping over the gateway (path /echo)');
    const cookies = await owner.cookies(portUrl(APP_PORT));
    expect(cookies.find((c) => c.name === 'swarm_session')).toMatchObject({ httpOnly: true, domain: `${APP_PORT}--${workspace.id}.localhost` });
    // An app's own redirect stays on the port host (code-server's /proxy/<port> prefix taken off).
    await page.goto(`${portUrl(APP_PORT)}redirect`);
    expect(page.url()).toBe(`${portUrl(APP_PORT)}landed`);
    await expect.poll(() => page.locator('#landed').textContent()).toBe('landed at /landed');
  });

  it("refuses another principal's browser and a browser with no session, alike whether anything listens", async () => {
    const others = await signedIn(bob, bobs.id);
    const anonymous = await context();
    const texts: string[] = [];
    for (const browserContext of [others, anonymous]) {
      for (const port of [APP_PORT, QUIET_PORT]) {
        const page = await browserContext.newPage();
        const response = await page.goto(portUrl(port));
        expect(response?.status(), `port ${port}`).toBe(401);
        expect(new URL(page.url()).host).toBe(`${workspace.id}.localhost:${gatewayPort}`); // sent to sign in on the workspace, refused there
        const text = (await page.locator('body').innerText()).replaceAll(String(port), '<port>');
        expect(text).not.toContain('hello from inside the workspace');
        texts.push(text);
        await page.close();
      }
    }
    expect(new Set(texts).size).toBe(1);
    // Bob's own session, shown to Alice's port host, is no session there either.
    const [bobsCookie] = (await others.cookies(`http://${bobs.id}.localhost:${gatewayPort}/`)).filter((c) => c.name === 'swarm_session');
    await others.addCookies([{ ...bobsCookie!, domain: `${APP_PORT}--${workspace.id}.localhost` }]);
    const page = await others.newPage();
    expect((await page.goto(portUrl(APP_PORT)))?.status()).toBe(401);
    expect(await page.content()).not.toContain('hello from inside the workspace');
  });

  it('opens the app with a share link, without a session, until it expires; never the editor', async () => {
    const share = ok(await callTool(alice, 'share_instance_port', { instanceId: workspace.id, port: APP_PORT, minutes: 5 }), 'share') as { shareUrl: string; url: string; expiresAt: string };
    expect(share.url).toBe(portUrl(APP_PORT));
    const guest = await context();
    const page = await guest.newPage();
    expect((await page.goto(share.shareUrl))?.status()).toBe(200);
    expect(page.url()).toBe(portUrl(APP_PORT));
    await expect.poll(() => page.locator('#echo').textContent(), { timeout: 15_000 }).toBe('echo: ping over the gateway (path /echo)');
    // Not the editor: neither with the browser's port cookie nor with the share token on the workspace's own address.
    const editor = await guest.newPage();
    expect((await editor.goto(`http://${workspace.id}.localhost:${gatewayPort}/`))?.status()).toBe(401);
    const token = new URL(share.shareUrl).searchParams.get(TOKEN_PARAM)!;
    expect((await editor.goto(`http://${workspace.id}.localhost:${gatewayPort}/?${TOKEN_PARAM}=${token}`))?.status()).toBe(403);
    expect(await editor.content()).not.toContain('monaco');
    // Nor another port of the same workspace.
    expect((await editor.goto(`${portUrl(QUIET_PORT)}?${TOKEN_PARAM}=${token}`))?.status()).toBe(403);

    clock += 6 * 60_000; // past the share's expiry
    expect((await page.reload())?.status()).toBe(401); // the lapsed share is no session: sent to sign in on the workspace, refused there
    expect(await page.content()).not.toContain('hello from inside the workspace');
    const late = await (await context()).newPage();
    expect((await late.goto(share.shareUrl))?.status()).toBe(401);
    expect(await late.content()).toContain('expired');
  });
});
