/**
 * MCP over Streamable HTTP (src/mcp/http.ts) on a real loopback server, with a real controller (no
 * providers: nothing here creates a workspace) and two real clients: plain HTTP requests and the v1 SDK's
 * StreamableHTTPClientTransport. What is checked is the door: Host and Origin (DNS rebinding), then the
 * bearer token with its challenge.
 */
import { Client } from '@modelcontextprotocol/sdk/client/index.js';
import { StreamableHTTPClientTransport, StreamableHTTPError } from '@modelcontextprotocol/sdk/client/streamableHttp.js';
import type { FetchLike } from '@modelcontextprotocol/sdk/shared/transport.js';
import { mkdtemp, rm } from 'node:fs/promises';
import http from 'node:http';
import os from 'node:os';
import path from 'node:path';
import { Readable } from 'node:stream';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { parseConfig } from '../../src/config.js';
import { SwarmController } from '../../src/controller/swarm-controller.js';
import { allowList, startMcpHttp } from '../../src/mcp/http.js';
import { InstanceRegistry } from '../../src/registry/instance-registry.js';

const INITIALIZE = {
  jsonrpc: '2.0',
  id: 1,
  method: 'initialize',
  params: { protocolVersion: '2025-06-18', capabilities: {}, clientInfo: { name: 'mcp-http-test', version: '1.0.0' } },
};

interface Reply {
  status: number;
  headers: http.IncomingHttpHeaders;
  body: string;
}

/** A POST written with node:http, so that Host is exactly what the test says (fetch sets its own). */
function post(port: number, headers: http.OutgoingHttpHeaders, body: unknown = INITIALIZE): Promise<Reply> {
  const data = JSON.stringify(body);
  return new Promise((resolve, reject) => {
    const req = http.request(
      {
        host: '127.0.0.1',
        port,
        path: '/mcp',
        method: 'POST',
        agent: false,
        headers: { 'content-type': 'application/json', accept: 'application/json, text/event-stream', 'content-length': Buffer.byteLength(data), ...headers },
      },
      (res) => {
        const chunks: Buffer[] = [];
        res.on('data', (c: Buffer) => chunks.push(c));
        res.on('end', () => resolve({ status: res.statusCode ?? 0, headers: res.headers, body: Buffer.concat(chunks).toString('utf8') }));
        res.on('error', reject);
      },
    );
    req.on('error', reject);
    req.end(data);
  });
}

/** A fetch for the SDK client that sends the given Host header (as a browser would for a rebound name). */
function fetchWithHost(host: string): FetchLike {
  return (url, init) =>
    new Promise((resolve, reject) => {
      const target = new URL(url);
      const headers: Record<string, string> = { ...Object.fromEntries(new Headers(init?.headers)), host };
      const req = http.request({ host: target.hostname, port: target.port, path: `${target.pathname}${target.search}`, method: init?.method ?? 'GET', headers, agent: false }, (res) => {
        const out = new Headers();
        for (const [k, v] of Object.entries(res.headers)) for (const one of [v ?? []].flat()) out.append(k, one);
        const body = res.statusCode === 204 ? null : (Readable.toWeb(res) as ReadableStream<Uint8Array>);
        resolve(new Response(body, { status: res.statusCode ?? 0, headers: out }));
      });
      req.on('error', reject);
      req.end(typeof init?.body === 'string' ? init.body : undefined);
    });
}

describe('MCP over HTTP: Host, Origin and the bearer token', () => {
  let stateDir: string;
  let controller: SwarmController;
  let server: Awaited<ReturnType<typeof startMcpHttp>>;
  let port: number;
  const clients: Client[] = [];

  beforeAll(async () => {
    stateDir = await mkdtemp(path.join(os.tmpdir(), 'mcp-http-'));
    const config = parseConfig({
      stateDir,
      logLevel: 'silent',
      gateway: { enabled: false },
      mcpHttp: { port: 0, allowedHosts: ['mcp.example.com'], allowedOrigins: ['https://app.example.com'] },
    });
    controller = new SwarmController({ config, registry: new InstanceRegistry({ stateDir }), providers: {}, lockStateDir: false });
    await controller.initialize();
    server = await startMcpHttp({ controller, host: '127.0.0.1', port: 0, stateDir });
    port = Number(new URL(server.url).port);
  });

  afterAll(async () => {
    for (const client of clients) await client.close().catch(() => undefined);
    await server?.close();
    await controller?.close();
    if (stateDir) await rm(stateDir, { recursive: true, force: true });
  });

  /** Connects the SDK client (initialize); resolves with the client, or rejects with the transport's error. */
  async function sdkConnect(options: { token?: string; origin?: string; host?: string }): Promise<Client> {
    const headers: Record<string, string> = {};
    if (options.token !== undefined) headers.authorization = `Bearer ${options.token}`;
    if (options.origin) headers.origin = options.origin;
    const transport = new StreamableHTTPClientTransport(new URL(server.url), {
      requestInit: { headers },
      ...(options.host ? { fetch: fetchWithHost(options.host) } : {}),
    });
    const client = new Client({ name: 'mcp-http-test', version: '1.0.0' });
    clients.push(client);
    await client.connect(transport);
    return client;
  }

  const status = async (p: Promise<unknown>): Promise<number> => {
    const err = await p.then(
      () => undefined,
      (e: unknown) => e,
    );
    expect(err).toBeInstanceOf(StreamableHTTPError);
    return (err as StreamableHTTPError).code ?? 0;
  };

  it('answers a request without a token 401 with a Bearer challenge', async () => {
    const plain = await fetch(server.url, { method: 'POST', headers: { 'content-type': 'application/json', accept: 'application/json, text/event-stream' }, body: JSON.stringify(INITIALIZE) });
    expect(plain.status).toBe(401);
    expect(plain.headers.get('www-authenticate')).toBe('Bearer realm="vscode-swarm"');
    expect(await plain.json()).toMatchObject({ jsonrpc: '2.0', error: { code: -32000, message: 'a bearer credential is required' }, id: null });
    expect(await status(sdkConnect({}))).toBe(401);
  });

  it('answers a wrong token 401 with invalid_token', async () => {
    const wrong = `${server.token.slice(0, -1)}${server.token.endsWith('A') ? 'B' : 'A'}`;
    const plain = await fetch(server.url, { method: 'POST', headers: { authorization: `Bearer ${wrong}`, 'content-type': 'application/json', accept: 'application/json, text/event-stream' }, body: JSON.stringify(INITIALIZE) });
    expect(plain.status).toBe(401);
    expect(plain.headers.get('www-authenticate')).toBe('Bearer realm="vscode-swarm", error="invalid_token", error_description="malformed or unknown token"');
    expect(await plain.text()).not.toContain(wrong);
    expect(await status(sdkConnect({ token: wrong }))).toBe(401);
    expect(await status(sdkConnect({ token: '' }))).toBe(401);
  });

  it('refuses a foreign Origin with 403, token or not', async () => {
    for (const origin of ['http://evil.example', `http://evil.example:${port}`, 'null', `https://localhost:${port}`, `http://localhost:${port + 1}`]) {
      const plain = await fetch(server.url, { method: 'POST', headers: { origin, authorization: `Bearer ${server.token}`, 'content-type': 'application/json', accept: 'application/json, text/event-stream' }, body: JSON.stringify(INITIALIZE) });
      expect(plain.status, origin).toBe(403);
      expect(((await plain.json()) as { error: { message: string } }).error.message, origin).toContain('Origin');
    }
    expect((await post(port, { origin: 'http://evil.example' })).status).toBe(403); // before the token is looked at
    expect(await status(sdkConnect({ token: server.token, origin: 'http://evil.example' }))).toBe(403);
  });

  it('refuses a foreign Host with 403 (a name rebound to 127.0.0.1), token or not', async () => {
    for (const host of [`evil.example:${port}`, 'evil.example', `localhost:${port + 1}`, `127.0.0.2:${port}`, `mcp.example.com:${port + 1}`]) {
      const reply = await post(port, { host, authorization: `Bearer ${server.token}` });
      expect(reply.status, host).toBe(403);
      expect(reply.body, host).toContain('Host');
    }
    expect((await post(port, { host: `evil.example:${port}` })).status).toBe(403);
    expect(await status(sdkConnect({ token: server.token, host: `evil.example:${port}` }))).toBe(403);
  });

  it('serves allowed Hosts and Origins: loopback on its port by default, and the configured ones', async () => {
    for (const host of [`127.0.0.1:${port}`, `localhost:${port}`, `LOCALHOST:${port}`, `[::1]:${port}`, `mcp.example.com:${port}`]) {
      const reply = await post(port, { host, authorization: `Bearer ${server.token}` });
      expect(reply.status, host).toBe(200);
      expect(reply.body, host).toContain('"serverInfo"');
    }
    for (const origin of [`http://localhost:${port}`, `http://127.0.0.1:${port}`, `http://[::1]:${port}`, 'https://app.example.com']) {
      const plain = await fetch(server.url, { method: 'POST', headers: { origin, authorization: `Bearer ${server.token}`, 'content-type': 'application/json', accept: 'application/json, text/event-stream' }, body: JSON.stringify(INITIALIZE) });
      expect(plain.status, origin).toBe(200);
      await plain.text();
    }
    const viaOrigin = await sdkConnect({ token: server.token, origin: `http://localhost:${port}` });
    expect(viaOrigin.getServerVersion()?.name).toBe('vscode-swarm');
    expect(await viaOrigin.ping()).toEqual({}); // a second request on the same client, admitted the same way
    expect((await sdkConnect({ token: server.token, host: `mcp.example.com:${port}` })).getServerVersion()?.name).toBe('vscode-swarm');
    expect((await sdkConnect({ token: server.token })).getServerVersion()?.name).toBe('vscode-swarm');
  });

  it('builds the allow-list from the bound address and the configuration', () => {
    const wildcard = allowList('0.0.0.0', 7081, [], []);
    expect([...wildcard.hosts]).toEqual(['localhost:7081', '127.0.0.1:7081', '[::1]:7081']);
    expect([...wildcard.origins]).toEqual(['http://localhost:7081', 'http://127.0.0.1:7081', 'http://[::1]:7081']);
    const bound = allowList('10.0.0.5', 7081, ['MCP.example.com', 'mcp.example.com:443', '[2001:db8::1]'], ['https://App.example.com']);
    expect([...bound.hosts]).toEqual(expect.arrayContaining(['10.0.0.5:7081', 'mcp.example.com:7081', 'mcp.example.com:443', '[2001:db8::1]:7081']));
    expect(bound.origins.has('https://app.example.com')).toBe(true);
    expect([...allowList('::1', 7081, [], []).hosts]).toContain('[::1]:7081');
  });

  it('names the field of a bad allow-list entry', () => {
    expect(() => parseConfig({ mcpHttp: { allowedOrigins: ['https://app.example.com/path'] } })).toThrow(/mcpHttp\.allowedOrigins\.0: expected an origin/);
    expect(() => parseConfig({ mcpHttp: { allowedHosts: ['http://mcp.example.com'] } })).toThrow(/mcpHttp\.allowedHosts\.0: expected a host name/);
  });
});
