/**
 * The host agent of the AWS provider as the emulator runs it: two agents launched as child processes
 * through the CLI (`node dist/src/cli.js agent`) on their own loopback addresses, sharing the real Docker
 * engine and running the real code-server image, with a small HTTP server standing in for the central
 * controller that receives their events. Build first: `npx tsc -p .`.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import { randomUUID } from 'node:crypto';
import http from 'node:http';
import net from 'node:net';
import type { AddressInfo } from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { LABEL_SWARM } from '../../providers/docker/docker-mapping.js';
import type { VSCodeInstance } from '../../providers/provider.js';
import type { AgentEvent, HostReport } from '../../providers/aws-asg/agent/agent-protocol.js';
import { parseConfig } from '../../src/config.js';
import { AccessLinks, TOKEN_PARAM } from '../../src/gateway/access-links.js';
import { UPSTREAM_HEADER } from '../../src/gateway/gateway.js';
import { waitUntil } from '../../src/timing/wait-until.js';
import { TEST_IMAGE, docker, httpStatus } from '../helpers/docker.js';
import { REPO_ROOT } from '../helpers/mcp.js';
import { upgradeRequest } from '../helpers/upgrade-request.js';

const TOKEN = 'e2e-agent-token-0123456789';
const SECRET = 'e2e-shared-gateway-secret-0123456789abcdef';
const HOST_A = 'i-e2eagenta';
const HOST_B = 'i-e2eagentb';
const BIND_A = '127.0.0.2';
const BIND_B = '127.0.0.3';
/** Where editors publish: A on the default (127.0.0.1, the loopback), B on a loopback address of its own. */
const PUBLISH_A = '127.0.0.1';
const PUBLISH_B = '127.0.1.3';
/** Below the ephemeral range; the same numbers on both publish addresses, which is fine: ports are per address. */
const PORT_BASE = 21_000 + Math.floor(Math.random() * 800) * 10;
const PORT_RANGE = `${PORT_BASE}-${PORT_BASE + 9}`;
const RESOURCES = { cpu: 0.5, memoryMb: 512 };

// ---- the agents, as child processes ----

interface RunningAgent {
  hostId: string;
  bind: string;
  stateDir: string;
  child: ChildProcess;
  api: string;
  proxy: string;
  proxyPort: number;
  stderr: () => string;
  exited: Promise<number | null>;
  startMs: number;
}

const launched: ChildProcess[] = [];

async function startAgent(hostId: string, bind: string, stateDir: string, extra: string[]): Promise<RunningAgent> {
  const started = Date.now();
  const child = spawn(
    process.execPath,
    [
      'dist/src/cli.js', 'agent', '--host-id', hostId, '--bind', bind, '--api-port', '0', '--proxy-port', '0',
      '--state-dir', stateDir, '--image', TEST_IMAGE, '--no-pull', '--port-range', PORT_RANGE, '--stop-timeout-seconds', '2',
      '--log-level', 'warn', ...(bind === BIND_B ? ['--publish-host', PUBLISH_B] : []), ...extra,
    ],
    // The token comes from the environment, as a launcher that keeps it out of `ps` would pass it.
    { cwd: REPO_ROOT, env: { ...process.env, VSCODE_SWARM_AGENT_TOKEN: TOKEN, VSCODE_SWARM_AGENT_GATEWAY_SECRET: SECRET }, stdio: ['ignore', 'pipe', 'pipe'] },
  );
  launched.push(child);
  let stdout = '';
  let stderr = '';
  child.stdout!.on('data', (d: Buffer) => (stdout += d.toString()));
  child.stderr!.on('data', (d: Buffer) => (stderr += d.toString()));
  const exited = new Promise<number | null>((resolve) => child.once('exit', (code) => resolve(code)));
  const ready = await waitUntil(
    async () => {
      if (child.exitCode !== null) throw new Error(`agent ${hostId} exited with ${child.exitCode}: ${stderr}`);
      return /^agent ready (\S+) api=(\S+) proxy=(\S+)$/m.exec(stdout) ?? undefined;
    },
    { timeoutMs: 30_000, intervalMs: 20, what: `agent ${hostId} ready line` },
  );
  expect(ready[1]).toBe(hostId);
  expect(ready[2]).toMatch(new RegExp(`^http://${bind.replace(/\./g, '\\.')}:\\d+$`));
  return {
    hostId, bind, stateDir, child, api: ready[2]!, proxy: ready[3]!, proxyPort: Number(new URL(ready[3]!).port),
    stderr: () => stderr, exited, startMs: Date.now() - started,
  };
}

async function call<T = Record<string, unknown>>(agent: RunningAgent, method: string, route: string, body?: unknown, token: string | null = TOKEN): Promise<{ status: number; json: T }> {
  const res = await fetch(`${agent.api}${route}`, {
    method,
    headers: { ...(token !== null ? { authorization: `Bearer ${token}` } : {}), ...(body !== undefined ? { 'content-type': 'application/json' } : {}) },
    ...(body !== undefined ? { body: JSON.stringify(body) } : {}),
  });
  const text = await res.text();
  return { status: res.status, json: (text ? JSON.parse(text) : undefined) as T };
}

/** One request to an instance's endpoint as the central gateway sends it: its Host header, and an upstream credential. */
function viaEndpoint(instance: VSCodeInstance, target: string, upstreamToken?: string): Promise<number> {
  const endpoint = instance.endpoint!;
  return new Promise((resolve, reject) => {
    const req = http.request(
      { host: endpoint.host, port: endpoint.port, path: target, headers: { host: endpoint.hostHeader!, ...(upstreamToken !== undefined ? { [UPSTREAM_HEADER]: upstreamToken } : {}) } },
      (res) => {
        res.resume();
        res.on('end', () => resolve(res.statusCode ?? 0));
      },
    );
    req.on('error', reject);
    req.end();
  });
}

function createBody(instanceId: string, extra: Record<string, unknown> = {}): unknown {
  return { instanceId, config: { name: instanceId, resources: RESOURCES, ...extra } };
}

/** One request to an agent's proxy, with the Host header a browser would send. */
function viaProxy(agent: RunningAgent, id: string, target: string, cookie?: string): Promise<{ status: number; cookie?: string }> {
  return new Promise((resolve, reject) => {
    const req = http.request(
      { host: agent.bind, port: agent.proxyPort, path: target, headers: { host: `${id}.localhost:${agent.proxyPort}`, ...(cookie ? { cookie } : {}) } },
      (res) => {
        res.resume();
        res.on('end', () => resolve({ status: res.statusCode ?? 0, ...(res.headers['set-cookie'] ? { cookie: res.headers['set-cookie'][0]!.split(';')[0]! } : {}) }));
      },
    );
    req.on('error', reject);
    req.end();
  });
}

/**
 * A WebSocket upgrade through an agent's proxy to the editor (code-server's workbench connection), as a
 * browser on the editor's page sends it; the status line of the answer ("HTTP/1.1 101 Switching Protocols").
 */
function upgradeViaProxy(agent: RunningAgent, id: string, cookie?: string): Promise<string> {
  const host = `${id}.localhost:${agent.proxyPort}`;
  return new Promise((resolve, reject) => {
    const socket = net.connect(agent.proxyPort, agent.bind, () => {
      socket.write(upgradeRequest(host, `/?reconnectionToken=${randomUUID()}&reconnection=false&skipWebSocketFrames=false`, cookie, `http://${host}`));
    });
    let head = '';
    socket.setTimeout(30_000, () => socket.destroy(new Error('no answer to the upgrade in 30 s')));
    socket.on('data', (chunk: Buffer) => {
      head += chunk.toString('latin1');
      const end = head.indexOf('\r\n');
      if (end >= 0) {
        socket.destroy();
        resolve(head.slice(0, end));
      }
    });
    socket.on('error', reject);
    socket.on('close', () => resolve(head.split('\r\n')[0] ?? ''));
  });
}

async function removeHostContainers(hostId: string): Promise<void> {
  const label = `${LABEL_SWARM}=host-${hostId}`;
  for (const c of await docker.listContainers({ all: true, filters: { label: [label] } })) {
    await docker.getContainer(c.Id).remove({ force: true }).catch(() => undefined);
  }
  const { Volumes } = await docker.listVolumes({ filters: { label: [label] } });
  for (const v of Volumes ?? []) await docker.getVolume(v.Name).remove().catch(() => undefined);
}

async function hostContainers(hostId: string): Promise<{ id: string; state: string }[]> {
  const list = await docker.listContainers({ all: true, filters: { label: [`${LABEL_SWARM}=host-${hostId}`] } });
  return list.map((c) => ({ id: c.Labels['vscode-swarm.instance']!, state: c.State }));
}

// ---- the stand-in controller ----

interface Received {
  authorization: string | undefined;
  event: AgentEvent;
}

describe('host agent (two agents over the CLI, real Docker, real code-server)', () => {
  const events: Received[] = [];
  let controller: http.Server;
  let controllerUrl: string;
  let stateA: string;
  let stateB: string;
  let a: RunningAgent;
  let b: RunningAgent;
  const created = new Map<string, VSCodeInstance>();

  beforeAll(async () => {
    await Promise.all([removeHostContainers(HOST_A), removeHostContainers(HOST_B)]);
    stateA = await mkdtemp(path.join(os.tmpdir(), 'vscode-swarm-agent-a-'));
    stateB = await mkdtemp(path.join(os.tmpdir(), 'vscode-swarm-agent-b-'));
    controller = http.createServer((req, res) => {
      let body = '';
      req.on('data', (d: Buffer) => (body += d.toString()));
      req.on('end', () => {
        events.push({ authorization: req.headers.authorization, event: JSON.parse(body) as AgentEvent });
        res.writeHead(204).end();
      });
    });
    await new Promise<void>((r) => controller.listen(0, '127.0.0.1', () => r()));
    controllerUrl = `http://127.0.0.1:${(controller.address() as AddressInfo).port}/events`;
    [a, b] = await Promise.all([
      startAgent(HOST_A, BIND_A, stateA, ['--capacity', '2', '--idle-timeout-minutes', '0.05', '--idle-check-ms', '500', '--controller-url', controllerUrl]),
      startAgent(HOST_B, BIND_B, stateB, ['--capacity', '3', '--controller-url', controllerUrl]),
    ]);
    console.log(`agent start (process launch to ready line): A ${a.startMs} ms, B ${b.startMs} ms`);
  });

  afterAll(async () => {
    for (const child of launched) if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL');
    await Promise.all([removeHostContainers(HOST_A), removeHostContainers(HOST_B)]);
    await new Promise<void>((r) => controller?.close(() => r()));
    await Promise.all([stateA, stateB].map((d) => d && rm(d, { recursive: true, force: true })));
  });

  it('refuses every request without the token or with a wrong one', async () => {
    for (const token of [null, 'wrong', `${TOKEN.slice(0, -1)}x`, `${TOKEN}x`]) {
      const { status, json } = await call(a, 'GET', '/v1/host', undefined, token);
      expect(status).toBe(401);
      expect(json).toEqual({ error: { code: 'UNAUTHORIZED', message: 'missing or wrong bearer token' } });
    }
    expect((await call(a, 'GET', '/v1/instances', undefined, null)).status).toBe(401);
    expect((await call(a, 'POST', '/v1/instances', createBody('nope'), 'wrong')).status).toBe(401);
    expect((await call(a, 'GET', '/v1/host')).status).toBe(200);
  });

  it('validates what it is sent, naming the field', async () => {
    const badId = await call(a, 'POST', '/v1/instances', createBody('Not_An_Id'));
    expect(badId.status).toBe(400);
    expect(badId.json).toMatchObject({ error: { code: 'INVALID_INPUT', field: 'instanceId' } });
    const badConfig = await call(a, 'POST', '/v1/instances', { instanceId: 'x1', config: { name: 'x1', resources: { cpu: 0.5, memoryMb: 1 } } });
    expect(badConfig.status).toBe(400);
    expect(badConfig.json).toMatchObject({ error: { code: 'INVALID_INPUT', field: 'config.resources.memoryMb' } });
    expect((await call(a, 'GET', '/v1/instances/nobody-here')).status).toBe(404);
    expect((await call(a, 'GET', '/v1/instances/BAD')).status).toBe(400);
    expect((await call(a, 'DELETE', '/v1/host')).status).toBe(405);
    expect((await call(a, 'GET', '/v1/host')).json).toMatchObject({ used: 0 });
  });

  it('creates instances under the given ids, on distinct pool ports on the loopback, reported behind the proxy', async () => {
    const started = Date.now();
    const results = await Promise.all([
      call<{ instance: VSCodeInstance; created: boolean }>(a, 'POST', '/v1/instances', createBody('agent-a1', { idleTimeoutMinutes: 0 })),
      call<{ instance: VSCodeInstance; created: boolean }>(a, 'POST', '/v1/instances', createBody('agent-a2', { idleTimeoutMinutes: 0 })),
      call<{ instance: VSCodeInstance; created: boolean }>(b, 'POST', '/v1/instances', createBody('agent-b1')),
    ]);
    console.log(`three creates in parallel (two hosts): ${Date.now() - started} ms`);
    for (const r of results) {
      expect(r.status, JSON.stringify(r.json)).toBe(201);
      expect(r.json.created).toBe(true);
      created.set(r.json.instance.id, r.json.instance);
    }
    const [a1, a2, b1] = results.map((r) => r.json.instance);
    // The endpoint is the host's proxy, the Host header naming the instance; the editor's own port is on the loopback.
    expect(a1!).toMatchObject({ id: 'agent-a1', status: 'running', endpoint: { url: a.proxy, host: BIND_A, port: a.proxyPort, hostHeader: 'agent-a1.localhost' } });
    expect(a2!).toMatchObject({ id: 'agent-a2', status: 'running', endpoint: { url: a.proxy, host: BIND_A, port: a.proxyPort, hostHeader: 'agent-a2.localhost' } });
    expect(b1!).toMatchObject({ id: 'agent-b1', status: 'running', endpoint: { url: b.proxy, host: BIND_B, port: b.proxyPort, hostHeader: 'agent-b1.localhost' } });
    expect(a1!.url).toBe(`http://agent-a1.localhost:${a.proxyPort}/`);
    const pool = JSON.parse(await readFile(path.join(stateA, 'ports.json'), 'utf8')) as { assignments: Record<string, number> };
    const poolB = JSON.parse(await readFile(path.join(stateB, 'ports.json'), 'utf8')) as { assignments: Record<string, number> };
    expect(Object.keys(pool.assignments).sort()).toEqual(['agent-a1', 'agent-a2']);
    expect(pool.assignments['agent-a1']).not.toBe(pool.assignments['agent-a2']);
    for (const [publish, bind, port] of [[PUBLISH_A, BIND_A, pool.assignments['agent-a1']!], [PUBLISH_A, BIND_A, pool.assignments['agent-a2']!], [PUBLISH_B, BIND_B, poolB.assignments['agent-b1']!]] as const) {
      expect(port).toBeGreaterThanOrEqual(PORT_BASE);
      expect(port).toBeLessThanOrEqual(PORT_BASE + 9);
      expect(await httpStatus(`http://${publish}:${port}/healthz`, 2_000)).toBe(200);
      // Not on the address the agent is bound to (the host's private address on EC2).
      expect(await httpStatus(`http://${bind}:${port}/healthz`, 2_000)).toBe(0);
    }
    // Through the proxy: the host's own token (what the central gateway presents) admits; nothing else does.
    for (const i of [a1!, a2!]) expect(await viaEndpoint(i, '/healthz', TOKEN)).toBe(200);
    expect(await viaEndpoint(b1!, '/healthz', TOKEN)).toBe(200);
    expect(await viaEndpoint(a1!, '/healthz')).toBe(401);
    expect(await viaEndpoint(a1!, '/healthz', `${TOKEN}x`)).toBe(401);
    expect(await viaEndpoint(a1!, '/healthz', '')).toBe(401);

    // The same create again is answered with what exists.
    const again = await call<{ instance: VSCodeInstance; created: boolean }>(a, 'POST', '/v1/instances', createBody('agent-a1', { idleTimeoutMinutes: 0 }));
    expect(again.status).toBe(201);
    expect(again.json.created).toBe(false);
    expect(again.json.instance.endpoint).toEqual(a1!.endpoint);

    // One more create, timed on its own.
    const one = Date.now();
    const b2 = await call<{ instance: VSCodeInstance }>(b, 'POST', '/v1/instances', createBody('agent-b2'));
    console.log(`one create (request to editor answering): ${Date.now() - one} ms`);
    expect(b2.status).toBe(201);
    created.set('agent-b2', b2.json.instance);
    const poolB2 = JSON.parse(await readFile(path.join(stateB, 'ports.json'), 'utf8')) as { assignments: Record<string, number> };
    expect(poolB2.assignments['agent-b2']).not.toBe(poolB2.assignments['agent-b1']);
  });

  it('reports its capacity and load', async () => {
    const { status, json } = await call<HostReport>(a, 'GET', '/v1/host');
    expect(status).toBe(200);
    expect(json).toMatchObject({
      hostId: HOST_A, capacity: 2, used: 2, free: 0, draining: false,
      load: { containers: 2, running: 2, memoryMb: 1024, cpus: 1 },
      ports: { range: PORT_RANGE, used: 2, free: 8 },
      api: a.api, proxy: a.proxy,
    });
    expect(json.version).toMatch(/^\d+\.\d+\.\d+/);
    expect((await call<HostReport>(b, 'GET', '/v1/host')).json).toMatchObject({ hostId: HOST_B, capacity: 3, used: 2, free: 1, load: { running: 2 } });
  });

  it('refuses a create beyond its capacity with 409 HOST_FULL', async () => {
    const { status, json } = await call(a, 'POST', '/v1/instances', createBody('agent-a3'));
    expect(status).toBe(409);
    expect(json).toEqual({ error: { code: 'CONFLICT', message: `host ${HOST_A} is full (2 of 2)`, details: { reason: 'HOST_FULL', hostId: HOST_A, capacity: 2, used: 2 } } });
    expect(await hostContainers(HOST_A)).toHaveLength(2);
  });

  it('lets users in through its proxy with a link signed by the shared secret, and no one without', async () => {
    const central = await mkdtemp(path.join(os.tmpdir(), 'vscode-swarm-central-'));
    const other = await mkdtemp(path.join(os.tmpdir(), 'vscode-swarm-other-'));
    try {
      // What the central controller does: sign with the shared secret, for the host's proxy address.
      const links = new AccessLinks(parseConfig({ stateDir: central, gateway: { secret: SECRET, baseDomain: 'localhost', port: a.proxyPort } }).gateway, central);
      await links.initialize();
      const link = new URL(links.link('agent-a1', 0).accessUrl);
      expect(link.host).toBe(`agent-a1.localhost:${a.proxyPort}`);

      expect((await viaProxy(a, 'agent-a1', '/healthz')).status).toBe(401);
      const forged = new AccessLinks(parseConfig({ stateDir: other, gateway: { secret: 'x'.repeat(40), port: a.proxyPort } }).gateway, other);
      await forged.initialize();
      const forgedLink = new URL(forged.link('agent-a1', 0).accessUrl);
      expect((await viaProxy(a, 'agent-a1', forgedLink.pathname + forgedLink.search)).status).toBe(401);

      const signIn = await viaProxy(a, 'agent-a1', link.pathname + link.search);
      expect(signIn.status).toBe(302);
      expect(signIn.cookie).toMatch(/^swarm_session=/);
      expect((await viaProxy(a, 'agent-a1', '/healthz', signIn.cookie)).status).toBe(200);
      // The editor's WebSocket goes through the proxy too, with the session and only with it.
      expect(await upgradeViaProxy(a, 'agent-a1', signIn.cookie)).toMatch(/^HTTP\/1\.1 101 /);
      expect(await upgradeViaProxy(a, 'agent-a1')).toMatch(/^HTTP\/1\.1 401 /);
      // Spent: the same link does not open it twice.
      expect((await viaProxy(a, 'agent-a1', link.pathname + link.search)).status).toBe(401);
      // The session is for a1 only.
      expect((await viaProxy(a, 'agent-a2', '/healthz', signIn.cookie)).status).toBe(403);
      // A valid link for an instance of the other host opens nothing here.
      const b1Link = new URL(links.link('agent-b1', 0).accessUrl);
      expect((await viaProxy(a, 'agent-b1', `${b1Link.pathname}?${TOKEN_PARAM}=${b1Link.searchParams.get(TOKEN_PARAM)}`)).status).toBe(404);
    } finally {
      await Promise.all([rm(central, { recursive: true, force: true }), rm(other, { recursive: true, force: true })]);
    }
  });

  it('keeps the two hosts apart', async () => {
    const listA = await call<{ instances: VSCodeInstance[] }>(a, 'GET', '/v1/instances');
    const listB = await call<{ instances: VSCodeInstance[] }>(b, 'GET', '/v1/instances');
    expect(listA.json.instances.map((i) => i.id).sort()).toEqual(['agent-a1', 'agent-a2']);
    expect(listB.json.instances.map((i) => i.id).sort()).toEqual(['agent-b1', 'agent-b2']);
    expect(listA.json.instances.every((i) => i.endpoint?.host === BIND_A)).toBe(true);
    expect((await call(a, 'GET', '/v1/instances/agent-b1')).status).toBe(404);
    expect((await call(b, 'POST', '/v1/instances/agent-a1/stop', {})).status).toBe(404);
    expect((await hostContainers(HOST_A)).map((c) => c.id).sort()).toEqual(['agent-a1', 'agent-a2']);
  });

  it('stops an idle instance by itself and tells the controller why', async () => {
    const deleted = await call(a, 'DELETE', '/v1/instances/agent-a2');
    expect(deleted).toMatchObject({ status: 200, json: { instanceId: 'agent-a2', deleted: true, workspaceKept: false } });
    expect((await call<HostReport>(a, 'GET', '/v1/host')).json).toMatchObject({ used: 1, free: 1, ports: { used: 1 } });
    // No idleTimeoutMinutes: the agent's --idle-timeout-minutes 0.05 (3 s) applies.
    const idle = await call<{ instance: VSCodeInstance }>(a, 'POST', '/v1/instances', createBody('agent-idle'));
    expect(idle.status).toBe(201);
    const event = await waitUntil(async () => events.find((e) => e.event.type === 'idle-stopped' && e.event.instanceId === 'agent-idle'), {
      timeoutMs: 20_000, intervalMs: 100, what: 'idle-stopped event',
    });
    expect(event.authorization).toBe(`Bearer ${TOKEN}`);
    expect(event.event).toMatchObject({ type: 'idle-stopped', hostId: HOST_A, instanceId: 'agent-idle' });
    expect((event.event as { reason: string }).reason).toMatch(/^idle: no editor heartbeat, gateway traffic or lease for \d+ s \(timeout 0.05 min/);
    const after = await call<{ instance: VSCodeInstance }>(a, 'GET', '/v1/instances/agent-idle');
    expect(after.json.instance).toMatchObject({ status: 'stopped', lastStop: { by: 'idle' } });
    // The one with idleTimeoutMinutes 0 is left alone.
    expect((await call<{ instance: VSCodeInstance }>(a, 'GET', '/v1/instances/agent-a1')).json.instance.status).toBe('running');
    // A stopped instance keeps its slot and its port; starting it again brings it back on the same port.
    const restarted = await call<{ instance: VSCodeInstance }>(a, 'POST', '/v1/instances/agent-idle/start');
    expect(restarted.status).toBe(200);
    expect(restarted.json.instance.endpoint).toEqual(idle.json.instance.endpoint);
  });

  it('finds its instances and their ports again after being killed', async () => {
    const before = JSON.parse(await readFile(path.join(stateB, 'ports.json'), 'utf8')) as { assignments: Record<string, number> };
    b.child.kill('SIGKILL');
    await b.exited;
    // The containers outlive their agent.
    expect((await hostContainers(HOST_B)).map((c) => [c.id, c.state]).sort()).toEqual([['agent-b1', 'running'], ['agent-b2', 'running']]);
    b = await startAgent(HOST_B, BIND_B, stateB, ['--capacity', '3', '--controller-url', controllerUrl]);
    console.log(`agent restart with two instances (launch to ready line): ${b.startMs} ms`);
    const list = await call<{ instances: VSCodeInstance[] }>(b, 'GET', '/v1/instances');
    expect(list.json.instances.map((i) => [i.id, i.status, i.endpoint?.port])).toEqual([
      ['agent-b1', 'running', b.proxyPort],
      ['agent-b2', 'running', b.proxyPort],
    ]);
    const after = JSON.parse(await readFile(path.join(stateB, 'ports.json'), 'utf8')) as { assignments: Record<string, number> };
    expect(after.assignments).toEqual(before.assignments);
    expect(await viaEndpoint(list.json.instances[0]!, '/healthz', TOKEN)).toBe(200);
    expect(await httpStatus(`http://${PUBLISH_B}:${before.assignments['agent-b1']}/healthz`, 2_000)).toBe(200);
    expect((await call<HostReport>(b, 'GET', '/v1/host')).json).toMatchObject({ used: 2, free: 1 });
  });

  it('moves workspace files from one host to another (export, import) and runs commands', async () => {
    const write = await call<{ exitCode: number }>(a, 'POST', '/v1/instances/agent-a1/exec', { command: 'mkdir -p notes && echo "from host A" > notes/moved.txt' });
    expect(write).toMatchObject({ status: 200, json: { exitCode: 0 } });
    const archive = await fetch(`${a.api}/v1/instances/agent-a1/workspace`, { headers: { authorization: `Bearer ${TOKEN}` } });
    expect(archive.status).toBe(200);
    expect(archive.headers.get('content-type')).toBe('application/x-tar');
    const tar = Buffer.from(await archive.arrayBuffer());
    const put = await fetch(`${b.api}/v1/instances/agent-b2/workspace`, { method: 'PUT', headers: { authorization: `Bearer ${TOKEN}`, 'content-type': 'application/x-tar' }, body: tar });
    expect(put.status).toBe(200);
    const read = await call<{ stdout: string }>(b, 'POST', '/v1/instances/agent-b2/exec', { command: 'cat notes/moved.txt' });
    expect(read.json.stdout).toBe('from host A\n');
    const logs = await call<{ lines: string[] }>(b, 'GET', '/v1/instances/agent-b2/logs?tail=5');
    expect(logs.status).toBe(200);
    expect(logs.json.lines.length).toBeGreaterThan(0);
  });

  it('drains on request: stops everything, keeps workspaces, takes no new work', async () => {
    // As the AWS emulator's termination lifecycle hook sends it.
    const drain = await call<{ drained: string[]; failed: unknown[] }>(b, 'POST', '/v1/drain', { reason: 'autoscaling:EC2_INSTANCE_TERMINATING', instanceId: HOST_B });
    expect(drain).toMatchObject({ status: 200, json: { drained: ['agent-b1', 'agent-b2'], failed: [] } });
    expect((await hostContainers(HOST_B)).map((c) => c.state)).toEqual(['exited', 'exited']);
    expect((await call<{ instance: VSCodeInstance }>(b, 'GET', '/v1/instances/agent-b1')).json.instance).toMatchObject({
      status: 'stopped', lastStop: { by: 'provider', reason: `host ${HOST_B} is draining (autoscaling:EC2_INSTANCE_TERMINATING)` },
    });
    const refused = await call(b, 'POST', '/v1/instances', createBody('agent-b3'));
    expect(refused).toMatchObject({ status: 409, json: { error: { code: 'CONFLICT', details: { reason: 'HOST_DRAINING' } } } });
    expect((await call(b, 'POST', '/v1/instances/agent-b1/start')).status).toBe(409);
    expect((await call<HostReport>(b, 'GET', '/v1/host')).json).toMatchObject({ draining: true, load: { running: 0 } });
    expect(events.filter((e) => e.event.hostId === HOST_B).map((e) => e.event.type)).toEqual(['draining', 'drained']);
    // Agent A is untouched.
    expect((await call<{ instance: VSCodeInstance }>(a, 'GET', '/v1/instances/agent-a1')).json.instance.status).toBe('running');
  });

  it('drains on SIGTERM, reports it, and exits 0', async () => {
    const started = Date.now();
    a.child.kill('SIGTERM');
    const code = await a.exited;
    console.log(`SIGTERM to exit (two running instances drained): ${Date.now() - started} ms`);
    expect(code, a.stderr()).toBe(0);
    expect((await hostContainers(HOST_A)).map((c) => [c.id, c.state]).sort()).toEqual([
      ['agent-a1', 'exited'],
      ['agent-idle', 'exited'],
    ]);
    const mine = events.filter((e) => e.event.hostId === HOST_A && e.event.type !== 'idle-stopped');
    expect(mine.map((e) => e.event)).toEqual([
      { type: 'draining', hostId: HOST_A },
      { type: 'drained', hostId: HOST_A, instances: ['agent-a1', 'agent-idle'] },
    ]);
    expect(mine.every((e) => e.authorization === `Bearer ${TOKEN}`)).toBe(true);
    // Workspaces are kept: the volume still holds the file written above.
    const { Volumes } = await docker.listVolumes({ filters: { label: [`${LABEL_SWARM}=host-${HOST_A}`] } });
    expect((Volumes ?? []).map((v) => v.Name).sort()).toEqual(['vscode-swarm-agent-a1-workspace', 'vscode-swarm-agent-idle-workspace']);

    b.child.kill('SIGTERM');
    expect(await b.exited).toBe(0);
  });
});
