/**
 * The workspace MCP App, end to end with real parts: the v2 SDK client over Streamable HTTP (principals'
 * API tokens) lists the tools and reads the ui:// resource; headless Chromium renders that HTML in a
 * sandboxed frame of a host page, and ext-apps' own host side (AppBridge, in this process) talks to it by
 * postMessage relayed through the page and forwards its tools/call to the real MCP client. A real
 * workspace on Docker (the stand-in image) is shown from a real tool result; Open asks the server for a
 * fresh link and the host for ui/open-link, and that link signs a browser in at the gateway; Start starts
 * a stopped one. Another principal's host, handed the first one's result, is refused the link.
 */
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import path from 'node:path';
import { AppBridge, getToolUiResourceUri, type McpUiToolResultNotification } from '@modelcontextprotocol/ext-apps/app-bridge';
import { Client, StreamableHTTPClientTransport, type CallToolResult, type JSONRPCMessage, type ReadResourceResult, type Transport } from '@modelcontextprotocol/client';
import type { Browser, Page } from 'playwright-core';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { VSCodeInstance } from '../../providers/provider.js';
import { createSwarm, startSwarmServices, type SwarmServices } from '../../src/controller/create-swarm.js';
import { WORKSPACE_APP_URI } from '../../src/mcp/app/workspace-app.js';
import { startMcpHttp } from '../../src/mcp/http.js';
import { launchChromium } from '../helpers/browser.js';
import { cleanUp, makeStateDir, testConfig } from '../helpers/docker.js';
import { REPO_ROOT } from '../helpers/mcp.js';
import { STANDIN_IMAGE, ensureStandinImage } from '../helpers/standin-image.js';

const PREFIX = 'e2e-mcpapp';
const APP_MIME = 'text/html;profile=mcp-app';
/** What the spec's default sandbox allows: inline script and style, no network of any kind. */
const APP_CSP = "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'";

/** The one content of a read of the app resource, checked to be the MCP App page. */
function htmlOf(read: ReadResourceResult): string {
  expect(read.contents).toHaveLength(1);
  const content = read.contents[0] as { uri: string; mimeType?: string; text?: string };
  expect(content).toMatchObject({ uri: WORKSPACE_APP_URI, mimeType: APP_MIME });
  return content.text ?? '';
}

type Result = CallToolResult & { structuredContent?: Record<string, unknown> };

function textOf(result: Result): string {
  return (result.content as { type: string; text?: string }[]).map((c) => c.text ?? '').join('\n');
}

async function call(client: Client, name: string, args: Record<string, unknown>): Promise<Result> {
  return (await client.callTool({ name, arguments: args }, { timeout: 170_000 })) as Result;
}

async function callOk(client: Client, name: string, args: Record<string, unknown>): Promise<Result> {
  const result = await call(client, name, args);
  expect(result.isError, textOf(result)).toBeFalsy();
  return result;
}

/** The page that plays the host: the app in a sandboxed frame, every message it posts handed to this process. */
const HOST_PAGE = `<!doctype html><html><head><meta charset="utf-8"><link rel="icon" href="data:,"><title>host</title></head><body>
<iframe id="app" sandbox="allow-scripts" src="/app.html" style="width:600px;height:400px"></iframe>
<script>
window.addEventListener('message', (event) => {
  if (event.source === document.getElementById('app').contentWindow) window.fromApp(event.data);
});
window.toApp = (message) => document.getElementById('app').contentWindow.postMessage(message, '*');
</script></body></html>`;

/**
 * The host's end of the postMessage channel, for an AppBridge in this process: what the frame posts arrives
 * through the page's exposed function; what the bridge sends is posted into the frame.
 */
class FrameRelayTransport implements Transport {
  onmessage?: (message: JSONRPCMessage) => void;
  onclose?: () => void;
  onerror?: (error: Error) => void;
  private readonly early: JSONRPCMessage[] = [];
  private started = false;

  constructor(private readonly page: Page) {}

  /** Called by the page for each message from the frame; held until the bridge starts listening. */
  receive(message: JSONRPCMessage): void {
    if (this.started && this.onmessage) this.onmessage(message);
    else this.early.push(message);
  }

  async start(): Promise<void> {
    this.started = true;
    for (const message of this.early.splice(0)) this.onmessage?.(message);
  }

  async send(message: JSONRPCMessage): Promise<void> {
    await this.page.evaluate((m) => (globalThis as unknown as { toApp: (m: unknown) => void }).toApp(m), message);
  }

  async close(): Promise<void> {
    this.onclose?.();
  }
}

interface MountedApp {
  page: Page;
  bridge: AppBridge;
  /** Every URL the view asked the host to open (ui/open-link). */
  opened: string[];
  /** Every request the page made, and console errors (a CSP violation shows here). */
  requests: string[];
  consoleErrors: string[];
  text: (id: string) => Promise<string>;
  waitForText: (id: string, pattern: RegExp) => Promise<void>;
}

describe('the workspace MCP App', () => {
  let stateDir: string;
  let services: SwarmServices;
  let mcp: Awaited<ReturnType<typeof startMcpHttp>>;
  let hostServer: http.Server;
  let hostOrigin: string;
  let appHtml = '';
  let browser: Browser;
  let mia: Client;
  let otto: Client;
  let miaToken: string;
  const clients: Client[] = [];
  const bridges: AppBridge[] = [];

  const connect = async (token: string): Promise<Client> => {
    const client = new Client({ name: 'mcp-app-e2e-host', version: '1.0.0' });
    clients.push(client);
    await client.connect(new StreamableHTTPClientTransport(new URL(mcp.url), { requestInit: { headers: { Authorization: `Bearer ${token}` } } }));
    return client;
  };

  /** Opens the host page, connects an AppBridge over the real MCP client, and waits for the view's initialized. */
  async function mount(client: Client): Promise<MountedApp> {
    const page = await browser.newPage();
    const requests: string[] = [];
    const consoleErrors: string[] = [];
    page.on('request', (request) => requests.push(request.url()));
    page.on('console', (message) => {
      if (message.type() === 'error') consoleErrors.push(`${message.text()} (${message.location().url})`);
    });
    page.on('pageerror', (err) => consoleErrors.push(err.message));
    const transport = new FrameRelayTransport(page);
    await page.exposeFunction('fromApp', (message: JSONRPCMessage) => transport.receive(message));
    const opened: string[] = [];
    const bridge = new AppBridge(client, { name: 'mcp-app-e2e-host', version: '1.0.0' }, { openLinks: {}, serverTools: {}, logging: {} });
    bridges.push(bridge);
    bridge.onopenlink = async ({ url }) => {
      opened.push(url);
      return {};
    };
    const initialized = new Promise<void>((resolve) => {
      bridge.oninitialized = () => resolve();
    });
    await bridge.connect(transport);
    // As a host does: the page it renders is the resource read through its own connection.
    appHtml = htmlOf(await client.readResource({ uri: WORKSPACE_APP_URI }));
    await page.goto(`${hostOrigin}/host.html`);
    await initialized;
    const frame = page.frameLocator('#app');
    return {
      page,
      bridge,
      opened,
      requests,
      consoleErrors,
      text: async (id) => (await frame.locator(`#${id}`).textContent()) ?? '',
      waitForText: async (id, pattern) => {
        await frame.locator(`#${id}`).filter({ hasText: pattern }).waitFor({ timeout: 60_000 });
      },
    };
  }

  /** Follows a link in a browser of its own; the gateway's session cookie it was given, if any. */
  async function signInWith(link: URL): Promise<{ httpOnly: boolean; domain: string } | undefined> {
    const context = await browser.newContext();
    try {
      await (await context.newPage()).goto(link.href, { waitUntil: 'domcontentloaded' });
      return (await context.cookies(link.origin)).find((c) => c.name === 'swarm_session');
    } finally {
      await context.close();
    }
  }

  const click = (app: MountedApp, id: string): Promise<void> => app.page.frameLocator('#app').locator(`#${id}`).click({ timeout: 30_000 });

  beforeAll(async () => {
    await cleanUp(PREFIX);
    await ensureStandinImage();
    stateDir = await makeStateDir(PREFIX);
    const config = testConfig(stateDir, {
      defaults: { cpu: 0.5, memoryMb: 256 },
      providers: { docker: { image: STANDIN_IMAGE, readinessTimeoutMs: 60_000 } },
      idle: { enabled: false },
      health: { intervalMs: 3_600_000, autoRecover: false },
    });
    const controller = createSwarm(config);
    services = await startSwarmServices(controller);
    await controller.principals.addPrincipal({ id: 'mia', role: 'member' });
    await controller.principals.addPrincipal({ id: 'otto', role: 'member' });
    miaToken = (await controller.principals.createToken({ principalId: 'mia', name: 'mcp-app' })).token;
    const ottoToken = (await controller.principals.createToken({ principalId: 'otto', name: 'mcp-app' })).token;
    mcp = await startMcpHttp({ controller, migrations: services.migrations, ...(services.health ? { health: services.health } : {}), host: '127.0.0.1', port: 0, stateDir, logger: controller.logger });
    mia = await connect(miaToken);
    otto = await connect(ottoToken);

    hostServer = http.createServer((req, res) => {
      if (req.url === '/host.html') {
        res.writeHead(200, { 'content-type': 'text/html; charset=utf-8' }).end(HOST_PAGE);
      } else if (req.url === '/app.html') {
        res.writeHead(200, { 'content-type': 'text/html; charset=utf-8', 'content-security-policy': APP_CSP }).end(appHtml);
      } else {
        res.writeHead(404).end();
      }
    });
    await new Promise<void>((resolve) => hostServer.listen(0, '127.0.0.1', resolve));
    hostOrigin = `http://127.0.0.1:${(hostServer.address() as AddressInfo).port}`;
    browser = await launchChromium();
  });

  afterAll(async () => {
    for (const bridge of bridges) await bridge.close().catch(() => undefined);
    await browser?.close();
    if (hostServer) await new Promise((resolve) => hostServer.close(resolve));
    for (const client of clients) await client.close().catch(() => undefined);
    await mcp?.close();
    await services?.close();
    await cleanUp(PREFIX, stateDir);
  });

  it('links the tools that return one workspace to the ui:// resource, served as an MCP App page with no secret', async () => {
    const { tools } = await mia.listTools();
    for (const name of ['get_swarm_instance', 'create_swarm_instance', 'start_swarm_instance', 'stop_swarm_instance']) {
      const tool = tools.find((t) => t.name === name);
      expect(tool, name).toBeDefined();
      expect(getToolUiResourceUri(tool!), name).toBe(WORKSPACE_APP_URI);
    }
    expect(getToolUiResourceUri(tools.find((t) => t.name === 'list_swarm_instances')!)).toBeUndefined();

    const { resources } = await mia.listResources();
    expect(resources.find((r) => r.uri === WORKSPACE_APP_URI)).toMatchObject({ mimeType: APP_MIME, _meta: { ui: { csp: { connectDomains: [], resourceDomains: [] } } } });

    const html = htmlOf(await mia.readResource({ uri: WORKSPACE_APP_URI }));
    expect(html).toMatch(/^<!doctype html>/);
    expect(html).toContain('<script type="module">');
    expect(html).not.toMatch(/<script[^>]+src=|<link[^>]+href=/i);
    expect(html).not.toContain(miaToken.slice(-43));
    expect(html).not.toMatch(/swarm_token|vss_t[0-9a-f]{12}_/);
  });

  it('shows a real workspace from its tool result; Open gets a fresh gateway link through the host and asks the host to open it', async () => {
    const created = await callOk(mia, 'create_swarm_instance', { name: `${PREFIX}-ws` });
    const instance = created.structuredContent!.instance as VSCodeInstance;
    expect(instance.status).toBe('running');
    const got = await callOk(mia, 'get_swarm_instance', { instanceId: instance.id });

    const app = await mount(mia);
    await app.bridge.sendToolResult(got as McpUiToolResultNotification['params']);
    await app.waitForText('status', /^running$/);
    expect(await app.text('name')).toBe(`${PREFIX}-ws`);
    expect(await app.text('id')).toBe(instance.id);
    expect(await app.text('provider')).toBe('docker');
    expect(await app.text('health')).toMatch(/^(healthy|unknown|degraded|unhealthy|recovering)/);
    expect(await app.text('health')).toContain(instance.health);
    expect(app.opened).toEqual([]);

    await app.page.screenshot({ path: path.join(REPO_ROOT, 'test-artifacts', 'mcp-app-workspace.png') });

    await click(app, 'open');
    await app.waitForText('message', /Opened/);
    expect(app.opened).toHaveLength(1);
    const link = new URL(app.opened[0]!);
    expect(link.origin).toBe(new URL(instance.url!).origin);
    expect(link.hostname).toBe(`${instance.id}.localhost`);
    // The link is the gateway's: in a fresh browser it signs in to this workspace (a session cookie for its host), once.
    expect(await signInWith(link)).toMatchObject({ httpOnly: true, domain: `${instance.id}.localhost` });
    expect(await signInWith(link)).toBeUndefined();

    // A second Open is a second, fresh link.
    await click(app, 'open');
    await expect.poll(() => app.opened.length, { timeout: 30_000 }).toBe(2);
    expect(app.opened[1]).not.toBe(app.opened[0]);

    // Stopped, the view offers Start instead of Open; Start goes through the host and shows running again.
    const stopped = await callOk(mia, 'stop_swarm_instance', { instanceId: instance.id });
    await app.bridge.sendToolResult(stopped as McpUiToolResultNotification['params']);
    await app.waitForText('status', /^stopped/);
    expect(await app.page.frameLocator('#app').locator('#open').isHidden()).toBe(true);
    await click(app, 'start');
    await app.waitForText('status', /^running$/);
    expect(await app.page.frameLocator('#app').locator('#start').isHidden()).toBe(true);
    const after = await callOk(mia, 'get_swarm_instance', { instanceId: instance.id });
    expect((after.structuredContent!.instance as VSCodeInstance).status).toBe('running');

    // The page fetched nothing beyond the host page and the app itself, and broke no CSP rule.
    expect(app.requests.filter((url) => url !== `${hostOrigin}/host.html` && url !== `${hostOrigin}/app.html`)).toEqual([]);
    expect(app.consoleErrors).toEqual([]);
    await app.page.close();
  });

  it("does not open another principal's workspace: handed mia's result, otto's host is refused the link", async () => {
    const listed = await callOk(mia, 'list_swarm_instances', {});
    const instance = (listed.structuredContent!.instances as VSCodeInstance[]).find((i) => i.name === `${PREFIX}-ws`)!;
    expect(instance).toBeDefined();
    const miasResult = await callOk(mia, 'get_swarm_instance', { instanceId: instance.id });

    // Directly: otto's calls for mia's id are refused.
    const refusedLink = await call(otto, 'get_instance_access_link', { instanceId: instance.id });
    expect(refusedLink.isError).toBe(true);
    expect(textOf(refusedLink)).toBe(`NOT_FOUND: instance ${instance.id} does not exist`);
    const refusedGet = await call(otto, 'get_swarm_instance', { instanceId: instance.id });
    expect(textOf(refusedGet)).toBe(`NOT_FOUND: instance ${instance.id} does not exist`);

    // Through the app in otto's host: the view shows what it was handed, but Open gets no link and opens nothing.
    const app = await mount(otto);
    await app.bridge.sendToolResult(miasResult as McpUiToolResultNotification['params']);
    await app.waitForText('status', /^running$/);
    await click(app, 'open');
    await app.waitForText('message', /NOT_FOUND/);
    expect(await app.text('message')).toBe(`NOT_FOUND: instance ${instance.id} does not exist`);
    expect(app.opened).toEqual([]);
    // Refresh asks the server as otto: refused too, and the error is shown.
    await click(app, 'refresh');
    await app.waitForText('message', /NOT_FOUND/);
    expect(app.opened).toEqual([]);
    await app.page.close();
  });
});

