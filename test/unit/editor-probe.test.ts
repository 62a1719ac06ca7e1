/**
 * Probing an editor at its endpoint (src/timing/editor-probe.ts), against a real HTTP server standing in
 * for an AWS host agent's proxy: the Host header names the instance, the provider adds its credential.
 */
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { VSCodeInstance } from '../../providers/provider.js';
import { editorJson, editorProbeHeaders, editorStatus } from '../../src/timing/editor-probe.js';

const CREDENTIAL = 'host-token';

describe('editor probes', () => {
  let server: http.Server;
  let base = '';
  beforeAll(async () => {
    // Answers only a request naming ws-1 and carrying the credential, like the agent's proxy.
    server = http.createServer((req, res) => {
      if (req.headers['x-swarm-upstream-token'] !== CREDENTIAL) return void res.writeHead(401).end();
      if (req.headers.host !== 'ws-1.localhost') return void res.writeHead(404).end();
      res.writeHead(200, { 'content-type': 'application/json' }).end(JSON.stringify({ lastHeartbeat: 42, path: req.url }));
    });
    await new Promise<void>((r) => server.listen(0, '127.0.0.1', () => r()));
    base = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
  });
  afterAll(() => new Promise<void>((r) => server.close(() => r())));

  const instance = (endpoint: VSCodeInstance['endpoint']): VSCodeInstance => ({
    id: 'ws-1', name: 'ws-1', providerType: 'aws-asg', status: 'running', health: 'healthy',
    config: { name: 'ws-1', image: 'x', resources: { cpu: 1, memoryMb: 1024 } } as VSCodeInstance['config'],
    ...(endpoint ? { endpoint } : {}), providerRef: {}, createdAt: '', updatedAt: '',
  });
  const provider = { editorRequestHeaders: () => ({ 'x-swarm-upstream-token': CREDENTIAL }) };

  it("sends the endpoint's Host header and the provider's credential", async () => {
    const behindProxy = instance({ url: base, host: '127.0.0.1', port: 1, hostHeader: 'ws-1.localhost' });
    expect(editorProbeHeaders(behindProxy, provider)).toEqual({ host: 'ws-1.localhost', 'x-swarm-upstream-token': CREDENTIAL });
    expect(await editorStatus(behindProxy, provider, '/healthz', 2_000)).toBe(200);
    expect(await editorJson(behindProxy, provider, '/healthz', 2_000)).toEqual({ lastHeartbeat: 42, path: '/healthz' });
    // Without the provider's credential the proxy refuses, and no JSON is made up.
    expect(await editorStatus(behindProxy, undefined, '/healthz', 2_000)).toBe(401);
    expect(await editorJson(behindProxy, undefined, '/healthz', 2_000)).toBeUndefined();
    // Naming another instance does not pass.
    expect(await editorStatus(instance({ url: base, host: '127.0.0.1', port: 1, hostHeader: 'ws-2.localhost' }), provider, '/healthz', 2_000)).toBe(404);
  });

  it('probes an editor of its own plainly, and answers 0 when there is no endpoint or nothing listens', async () => {
    const plain = instance({ url: base, host: '127.0.0.1', port: 1 });
    expect(editorProbeHeaders(plain, provider)).toBeUndefined();
    expect(await editorStatus(plain, provider, '/healthz', 2_000)).toBe(401); // no credential added: the endpoint is the editor itself
    expect(await editorStatus(instance(undefined), provider, '/healthz', 2_000)).toBe(0);
    const closed = instance({ url: 'http://127.0.0.1:1', host: '127.0.0.1', port: 1, hostHeader: 'ws-1.localhost' });
    expect(await editorStatus(closed, provider, '/healthz', 2_000)).toBe(0);
  });
});
