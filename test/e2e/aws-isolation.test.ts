/**
 * Tenants kept apart on an AWS host (issue 10, item 3): from inside one workspace container, no other
 * editor on the same host can be reached (its endpoint as the agent reports it, its published port on
 * every address of the host, the bridge gateway), while the editor still opens through the central
 * gateway with its link.
 *
 * Part one reproduces the review's finding honestly: a real agent (the CLI, as the user data runs it)
 * bound to an address containers CAN reach, the gateway address of its own Docker bridge network, with
 * two workspaces; busybox `nc` inside workspace A tries workspace B every way it can. With editors
 * published on the bind address (the old behaviour, VSCODE_SWARM_ISOLATION_OLD=1 reproduces it) this
 * test fails: A reads B's /healthz over the bridge gateway.
 *
 * Part two: the central controller and its gateway over the AWS emulator: a link opens the editor
 * through the gateway, which reaches it only through the host agent's proxy with the host's own token.
 * Real Docker, the stand-in image; build first: `npx tsc -p .`.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import http from 'node:http';
import os from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { deriveHostToken } from '../../providers/aws-asg/host-credentials.js';
import { LABEL_SWARM } from '../../providers/docker/docker-mapping.js';
import type { VSCodeInstance } from '../../providers/provider.js';
import { createSwarm, startSwarmServices, type SwarmServices } from '../../src/controller/create-swarm.js';
import { TOKEN_PARAM } from '../../src/gateway/access-links.js';
import { UPSTREAM_HEADER } from '../../src/gateway/gateway.js';
import { waitUntil } from '../../src/timing/wait-until.js';
import { startAwsEmulator, type AwsEmulator } from '../emulators/aws/index.js';
import { docker, httpStatus, makeStateDir, testConfig } from '../helpers/docker.js';
import { REPO_ROOT } from '../helpers/mcp.js';
import { freePort } from '../helpers/ports.js';
import { ensureStandinImage } from '../helpers/standin-image.js';

const TOKEN = 'aws-isolation-agent-token-0123456789abcdef';
const SECRET = 'aws-isolation-gateway-secret-0123456789abcdef';
const NETWORK = 'vscode-swarm-isolation-test';
const HOST = 'i-0isolationhost1';
const GROUP = 'vscode-swarm-isolation';
const PORT_BASE = 23_000 + Math.floor(Math.random() * 400) * 10;
const OLD_BEHAVIOUR = process.env.VSCODE_SWARM_ISOLATION_OLD === '1';

async function removeHostContainers(hostId: string): Promise<void> {
  const label = `${LABEL_SWARM}=host-${hostId}`;
  for (const c of await docker.listContainers({ all: true, filters: { label: [label] } })) await docker.getContainer(c.Id).remove({ force: true }).catch(() => undefined);
  const { Volumes } = await docker.listVolumes({ filters: { label: [label] } });
  for (const v of Volumes ?? []) await docker.getVolume(v.Name).remove().catch(() => undefined);
}

/** A GET with an explicit Host header and optional headers; the status, or 0 when nothing answered. */
function get(host: string, port: number, target: string, headers: Record<string, string>): Promise<{ status: number; body: string; cookie?: string; location?: string }> {
  return new Promise((resolve) => {
    const req = http.request({ host, port, path: target, headers, timeout: 5_000 }, (res) => {
      let body = '';
      res.on('data', (d: Buffer) => (body += d.toString()));
      res.on('end', () => resolve({
        status: res.statusCode ?? 0, body,
        ...(res.headers['set-cookie'] ? { cookie: res.headers['set-cookie'][0]!.split(';')[0]! } : {}),
        ...(res.headers.location ? { location: res.headers.location } : {}),
      }));
    });
    req.on('timeout', () => req.destroy());
    req.on('error', () => resolve({ status: 0, body: '' }));
    req.end();
  });
}

describe('an AWS host keeps its tenants apart', () => {
  describe('from inside a workspace container (agent bound to the bridge gateway)', () => {
    let child: ChildProcess | undefined;
    let stateDir = '';
    let gatewayIp = '';
    let api = '';
    let stderr = '';
    const instances = new Map<string, VSCodeInstance>();

    const call = async <T>(method: string, route: string, body?: unknown): Promise<{ status: number; json: T }> => {
      const res = await fetch(`${api}${route}`, {
        method,
        headers: { authorization: `Bearer ${TOKEN}`, ...(body !== undefined ? { 'content-type': 'application/json' } : {}) },
        ...(body !== undefined ? { body: JSON.stringify(body) } : {}),
      });
      return { status: res.status, json: (await res.json()) as T };
    };
    /**
     * One HTTP request from inside workspace A with busybox `nc` (the stand-in's static busybox `wget`
     * crashes on every request): the status it got, 0 when nothing answered, and what it printed.
     */
    const fromA = async (address: string, port: number, target: string, headers: Record<string, string> = {}): Promise<{ status: number; out: string }> => {
      const lines = [`GET ${target} HTTP/1.0`, `Host: ${headers.host ?? `${address}:${port}`}`, ...Object.entries(headers).filter(([k]) => k !== 'host').map(([k, v]) => `${k}: ${v}`)];
      const request = lines.map((l) => `${l}\\r\\n`).join('') + '\\r\\n';
      const { status, json } = await call<{ exitCode: number; stdout: string; stderr: string }>('POST', '/v1/instances/iso-a/exec', {
        command: `printf '${request}' | nc -w 3 ${address} ${port} 2>&1`, timeoutMs: 20_000,
      });
      expect(status, JSON.stringify(json)).toBe(200);
      const out = json.stdout + json.stderr;
      return { status: Number(/^HTTP\/1\.[01] (\d{3})/m.exec(out)?.[1] ?? 0), out };
    };

    beforeAll(async () => {
      const image = await ensureStandinImage();
      await removeHostContainers(HOST);
      await docker.getNetwork(NETWORK).remove().catch(() => undefined);
      // The agent's own kind of network (inter-container traffic off), made here to learn its gateway.
      await docker.createNetwork({ Name: NETWORK, Driver: 'bridge', Options: { 'com.docker.network.bridge.enable_icc': 'false' } });
      const info = (await docker.getNetwork(NETWORK).inspect()) as { IPAM: { Config: { Gateway?: string }[] } };
      gatewayIp = info.IPAM.Config.find((c) => c.Gateway && !c.Gateway.includes(':'))?.Gateway ?? '';
      expect(gatewayIp, 'the test network has an IPv4 gateway').toMatch(/^\d+\.\d+\.\d+\.\d+$/);
      stateDir = await mkdtemp(path.join(os.tmpdir(), 'vscode-swarm-isolation-'));
      child = spawn(process.execPath, [
        'dist/src/cli.js', 'agent', '--host-id', HOST, '--bind', gatewayIp, '--api-port', '0', '--proxy-port', '0',
        '--state-dir', stateDir, '--image', image, '--no-pull', '--port-range', `${PORT_BASE}-${PORT_BASE + 9}`, '--network', NETWORK,
        '--stop-timeout-seconds', '1', '--idle-timeout-minutes', '0', '--log-level', 'warn',
        ...(OLD_BEHAVIOUR ? ['--publish-host', gatewayIp] : []),
      ], { cwd: REPO_ROOT, env: { ...process.env, VSCODE_SWARM_AGENT_TOKEN: TOKEN, VSCODE_SWARM_AGENT_GATEWAY_SECRET: SECRET }, stdio: ['ignore', 'pipe', 'pipe'] });
      let stdout = '';
      child.stdout!.on('data', (d: Buffer) => (stdout += d.toString()));
      child.stderr!.on('data', (d: Buffer) => (stderr += d.toString()));
      const ready = await waitUntil(async () => {
        if (child!.exitCode !== null) throw new Error(`agent exited with ${child!.exitCode}: ${stderr}`);
        return /^agent ready \S+ api=(\S+) proxy=(\S+)$/m.exec(stdout) ?? undefined;
      }, { timeoutMs: 30_000, intervalMs: 20, what: 'agent ready line' });
      api = ready[1]!;
      for (const id of ['iso-a', 'iso-b']) {
        const created = await call<{ instance: VSCodeInstance }>('POST', '/v1/instances', { instanceId: id, config: { name: id, resources: { cpu: 0.1, memoryMb: 256 }, idleTimeoutMinutes: 0 } });
        expect(created.status, `${JSON.stringify(created.json)} ${stderr}`).toBe(201);
        instances.set(id, created.json.instance);
      }
    });

    afterAll(async () => {
      if (child && child.exitCode === null) child.kill('SIGKILL');
      await removeHostContainers(HOST);
      await docker.getNetwork(NETWORK).remove().catch(() => undefined);
      if (stateDir) await rm(stateDir, { recursive: true, force: true });
    });

    it('lets A reach its own editor, so a failure below is isolation and not a broken client', async () => {
      const own = await fromA('127.0.0.1', 8080, '/healthz');
      expect(own.status, own.out).toBe(200);
      expect(own.out).toContain('"status":"alive"');
    });

    it("refuses A at B's endpoint as the agent reports it: 401 from the proxy without the host's credential", async () => {
      const b = instances.get('iso-b')!;
      expect(b.endpoint).toMatchObject({ host: gatewayIp, hostHeader: 'iso-b.localhost' });
      const reported = await fromA(b.endpoint!.host, b.endpoint!.port, '/healthz', { host: b.endpoint!.hostHeader! });
      expect(reported.status, reported.out).toBe(401);
      expect(reported.out).not.toContain('"status":"alive"');
      // A guessed credential is refused the same way.
      const guessed = await fromA(b.endpoint!.host, b.endpoint!.port, '/healthz', { host: b.endpoint!.hostHeader!, [UPSTREAM_HEADER]: 'guess' });
      expect(guessed.status, guessed.out).toBe(401);
      // The agent's own process, with the host's token (what the central gateway presents), gets in.
      expect((await get(b.endpoint!.host, b.endpoint!.port, '/healthz', { host: b.endpoint!.hostHeader!, [UPSTREAM_HEADER]: TOKEN })).status).toBe(200);
    });

    it("cannot reach B's published port on any address of the host, nor through the bridge gateway", async () => {
      const pool = JSON.parse(await readFile(path.join(stateDir, 'ports.json'), 'utf8')) as { assignments: Record<string, number> };
      const port = pool.assignments['iso-b']!;
      expect(port).toBeGreaterThanOrEqual(PORT_BASE);
      // B's editor is up: the host itself reaches it on the loopback.
      expect(await httpStatus(`http://127.0.0.1:${port}/healthz`, 2_000)).toBe(OLD_BEHAVIOUR ? 0 : 200);
      const addresses = new Set<string>([gatewayIp, '127.0.0.1']);
      for (const list of Object.values(os.networkInterfaces())) for (const a of list ?? []) if (a.family === 'IPv4') addresses.add(a.address);
      for (const address of addresses) {
        const tried = await fromA(address, port, '/healthz');
        expect(tried.status, `${address}:${port} from inside A: ${tried.out}`).toBe(0);
        expect(tried.out, `${address}:${port}`).not.toContain('"status":"alive"');
      }
    });
  });

  describe('through the central gateway (AWS emulator, provider, gateway)', () => {
    let emulator: AwsEmulator;
    let services: SwarmServices;
    let stateDir = '';
    let agentState = '';
    let agentPort = 0;
    const saved = { id: process.env.AWS_ACCESS_KEY_ID, secret: process.env.AWS_SECRET_ACCESS_KEY };

    beforeAll(async () => {
      process.env.AWS_ACCESS_KEY_ID = 'AKIAEMULATOR000000';
      process.env.AWS_SECRET_ACCESS_KEY = 'emulator-secret';
      const image = await ensureStandinImage();
      stateDir = await makeStateDir('aws-isolation');
      agentState = await mkdtemp(path.join(os.tmpdir(), 'vscode-swarm-aws-isolation-'));
      agentPort = await freePort();
      emulator = await startAwsEmulator({
        addresses: { first: '127.0.57.2', size: 10 },
        groups: [{ name: GROUP, minSize: 1, maxSize: 1 }],
        agent: {
          cwd: REPO_ROOT,
          token: TOKEN,
          apiPort: agentPort,
          extraArgs: (host) => [
            '--api-port', String(agentPort), '--proxy-port', '0', '--token', deriveHostToken(TOKEN, host.hostId), '--gateway-secret', SECRET,
            '--capacity', '4', '--image', image, '--no-pull', '--state-dir', path.join(agentState, host.hostId),
            '--idle-timeout-minutes', '0', '--log-level', 'warn', '--publish-host', '127.0.0.1', '--port-range', `${PORT_BASE}-${PORT_BASE + 9}`,
          ],
        },
      });
      await emulator.waitForGroupStable(GROUP, 60_000);
      const config = testConfig(stateDir, {
        health: { enabled: false },
        idle: { enabled: false },
        gateway: { enabled: true, host: '127.0.0.1', port: 0, secret: SECRET, baseDomain: 'localhost' },
        providers: { 'aws-asg': { enabled: true, region: 'eu-west-1', groupName: GROUP, endpoint: emulator.url, image, perHostCapacity: 4, bufferSlots: 0, agentPort } },
      });
      services = await startSwarmServices(createSwarm(config, { env: { ...process.env, VSCODE_SWARM_AWS_AGENT_TOKEN: TOKEN } }));
    });

    afterAll(async () => {
      await services?.close();
      const hosts = emulator?.hosts().map((h) => h.id) ?? [];
      await emulator?.close();
      for (const hostId of hosts) await removeHostContainers(hostId);
      if (stateDir) await rm(stateDir, { recursive: true, force: true });
      if (agentState) await rm(agentState, { recursive: true, force: true });
      process.env.AWS_ACCESS_KEY_ID = saved.id;
      process.env.AWS_SECRET_ACCESS_KEY = saved.secret;
      if (saved.id === undefined) delete process.env.AWS_ACCESS_KEY_ID;
      if (saved.secret === undefined) delete process.env.AWS_SECRET_ACCESS_KEY;
    });

    it("opens the editor with its link through the gateway, which reaches it only by the host's proxy", async () => {
      const { controller } = services;
      const { instance } = await controller.createInstance({ name: 'iso-central', providerType: 'aws-asg', resources: { cpu: 0.1, memoryMb: 256 } });
      const hostIp = instance.providerRef.hostIp!;
      const report = await fetch(`http://${hostIp}:${agentPort}/v1/host`, {
        headers: { authorization: `Bearer ${deriveHostToken(TOKEN, instance.providerRef.hostId!)}` },
      }).then((r) => r.json() as Promise<{ proxy: string }>);
      // The endpoint the provider accepted is the host's proxy, naming the instance by its Host header.
      expect(instance.endpoint).toEqual({ url: report.proxy, host: hostIp, port: Number(new URL(report.proxy).port), hostHeader: `${instance.id}.localhost` });
      // Without the host's credential the proxy lets no one in.
      expect((await get(hostIp, instance.endpoint!.port, '/healthz', { host: instance.endpoint!.hostHeader! })).status).toBe(401);

      const link = new URL((await controller.issueAccessLink(instance.id)).accessUrl);
      const port = Number(link.port);
      const hostHeader = `${instance.id}.localhost:${port}`;
      expect((await get('127.0.0.1', port, '/healthz', { host: hostHeader })).status).toBe(401);
      const signIn = await get('127.0.0.1', port, `${link.pathname}?${TOKEN_PARAM}=${link.searchParams.get(TOKEN_PARAM)}`, { host: hostHeader });
      expect(signIn.status).toBe(302);
      expect(signIn.cookie).toMatch(/^swarm_session=/);
      const opened = await get('127.0.0.1', port, '/healthz', { host: hostHeader, cookie: signIn.cookie! });
      expect(opened.status, opened.body).toBe(200);
      expect(opened.body).toContain('"status":"alive"');
      // A browser cannot smuggle a credential for the host's proxy through the gateway either.
      const smuggled = await get('127.0.0.1', port, '/healthz', { host: hostHeader, [UPSTREAM_HEADER]: 'guess' });
      expect(smuggled.status).toBe(401);
    });
  });
});
