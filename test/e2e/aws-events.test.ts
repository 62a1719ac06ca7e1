/**
 * The host agents report back to the controller: an idle stop done by a host and a host draining before
 * termination are recorded with their reasons, and the health monitor leaves those instances stopped.
 * Real agents on the AWS emulator, a real controller with its HTTP endpoint, the stand-in image.
 */
import { mkdtemp, rm } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { AGENT_EVENTS_PATH, agentEventsHandler } from '../../providers/aws-asg/agent-events.js';
import { deriveHostToken } from '../../providers/aws-asg/host-credentials.js';
import { LABEL_SWARM } from '../../providers/docker/docker-mapping.js';
import { createSwarm } from '../../src/controller/create-swarm.js';
import type { SwarmController } from '../../src/controller/swarm-controller.js';
import { HealthMonitor } from '../../src/health/health-monitor.js';
import { silentLogger } from '../../src/logger.js';
import { startMcpHttp } from '../../src/mcp/http.js';
import { waitUntil } from '../../src/timing/wait-until.js';
import { startAwsEmulator, type AwsEmulator } from '../emulators/aws/index.js';
import { REPO_ROOT } from '../helpers/mcp.js';
import { docker, makeStateDir, testConfig } from '../helpers/docker.js';
import { ensureStandinImage } from '../helpers/standin-image.js';
import { freePort } from '../helpers/ports.js';

const GROUP = 'vscode-swarm-events';
const TOKEN = 'aws-events-agent-token-0123456789abcdef';
const SECRET = 'aws-events-gateway-secret-0123456789abcdef';
const AGENT_PORT = 19400;


describe('events from the AWS host agents', () => {
  let emulator: AwsEmulator;
  let controller: SwarmController;
  let http: { url: string; close: () => Promise<void> };
  let stateDir: string;
  let agentState: string;
  let eventsUrl: string;
  const saved = { id: process.env.AWS_ACCESS_KEY_ID, secret: process.env.AWS_SECRET_ACCESS_KEY };

  beforeAll(async () => {
    process.env.AWS_ACCESS_KEY_ID = 'AKIAEMULATOR000000';
    process.env.AWS_SECRET_ACCESS_KEY = 'emulator-secret';
    const image = await ensureStandinImage();
    stateDir = await makeStateDir('aws-events');
    agentState = await mkdtemp(path.join(os.tmpdir(), 'vscode-swarm-aws-events-'));
    const port = await freePort();
    eventsUrl = `http://127.0.0.1:${port}${AGENT_EVENTS_PATH}`;
    emulator = await startAwsEmulator({
      addresses: { first: '127.0.33.2', size: 10 },
      groups: [{ name: GROUP, minSize: 1, maxSize: 1 }],
      agent: {
        cwd: REPO_ROOT,
        token: TOKEN,
        apiPort: AGENT_PORT,
        // Each host runs with its own token, derived from the master the controller holds.
        extraArgs: (host) => [
          '--api-port', String(AGENT_PORT), '--proxy-port', String(AGENT_PORT + 1), '--token', deriveHostToken(TOKEN, host.hostId), '--gateway-secret', SECRET,
          '--capacity', '4', '--image', image, '--no-pull', '--state-dir', path.join(agentState, host.hostId),
          '--idle-timeout-minutes', '0.05', '--idle-check-ms', '500', '--controller-url', eventsUrl, '--log-level', 'warn',
        ],
      },
    });
    await emulator.waitForGroupStable(GROUP, 30_000);
    const config = testConfig(stateDir, {
      health: { enabled: false },
      idle: { enabled: false },
      providers: { 'aws-asg': { enabled: true, region: 'eu-west-1', groupName: GROUP, endpoint: emulator.url, image, perHostCapacity: 4, bufferSlots: 0, agentPort: AGENT_PORT } },
    });
    controller = createSwarm(config, { env: { ...process.env, VSCODE_SWARM_AWS_AGENT_TOKEN: TOKEN } });
    await controller.initialize();
    http = await startMcpHttp({ controller, host: '127.0.0.1', port, stateDir, routes: { [AGENT_EVENTS_PATH]: agentEventsHandler(controller, silentLogger()) } });
  });
  afterAll(async () => {
    await http?.close();
    await controller?.close();
    const hosts = emulator?.hosts().map((h) => h.id) ?? [];
    await emulator?.close();
    for (const hostId of hosts) {
      const label = `${LABEL_SWARM}=host-${hostId}`;
      for (const c of await docker.listContainers({ all: true, filters: { label: [label] } })) await docker.getContainer(c.Id).remove({ force: true }).catch(() => undefined);
      const { Volumes } = await docker.listVolumes({ filters: { label: [label] } });
      for (const v of Volumes ?? []) await docker.getVolume(v.Name).remove().catch(() => undefined);
    }
    // beforeAll may have failed before these were made: its error is the one to report.
    if (stateDir) await rm(stateDir, { recursive: true, force: true });
    if (agentState) await rm(agentState, { recursive: true, force: true });
    process.env.AWS_ACCESS_KEY_ID = saved.id;
    process.env.AWS_SECRET_ACCESS_KEY = saved.secret;
    if (saved.id === undefined) delete process.env.AWS_ACCESS_KEY_ID;
    if (saved.secret === undefined) delete process.env.AWS_SECRET_ACCESS_KEY;
  });

  const post = (headers: Record<string, string>, body: string) => fetch(eventsUrl, { method: 'POST', headers: { 'content-type': 'application/json', ...headers }, body });
  const hostAuth = (hostId: string) => ({ authorization: `Bearer ${deriveHostToken(TOKEN, hostId)}` });

  it('refuses events without the host\'s own token or with a bad body', async () => {
    expect((await post({}, '{}')).status).toBe(401);
    expect((await post({ authorization: 'Bearer wrong' }, '{}')).status).toBe(401);
    expect((await post(hostAuth('i-1'), 'not json')).status).toBe(400);
    expect((await post(hostAuth('i-1'), JSON.stringify({ type: 'exploded', hostId: 'i-1' }))).status).toBe(400);
    // The master token is no host's credential, and host i-2's token does not speak for host i-1.
    expect((await post({ authorization: `Bearer ${TOKEN}` }, JSON.stringify({ type: 'draining', hostId: 'i-1' }))).status).toBe(401);
    expect((await post(hostAuth('i-2'), JSON.stringify({ type: 'draining', hostId: 'i-1' }))).status).toBe(401);
    expect((await post(hostAuth('i-1'), JSON.stringify({ type: 'idle-stopped', hostId: 'i-1', instanceId: 'x', reason: 'r'.repeat(513) }))).status).toBe(400);
  });

  it('refuses (403) a forged event from another host or about a Docker instance, and changes nothing', async () => {
    const { instance } = await controller.createInstance({ name: 'events-forged', providerType: 'aws-asg', resources: { cpu: 0.1, memoryMb: 256 } });
    const at = new Date().toISOString();
    await controller.registry.register({ ...instance, id: 'events-docker', name: 'events-docker', providerType: 'docker', providerRef: {}, createdAt: at, updatedAt: at });
    const before = JSON.stringify([controller.registry.get(instance.id), controller.registry.get('events-docker')]);
    const other = 'i-0forgingforging1';
    for (const instanceId of [instance.id, 'events-docker']) {
      const res = await post(hostAuth(other), JSON.stringify({ type: 'idle-stopped', hostId: other, instanceId, reason: 'forged' }));
      expect(res.status, instanceId).toBe(403);
      expect(((await res.json()) as { error: string }).error).toContain('a host reports only its own instances');
    }
    const drained = await post(hostAuth(other), JSON.stringify({ type: 'drained', hostId: other, instances: [instance.id] }));
    expect(drained.status).toBe(403);
    expect(JSON.stringify([controller.registry.get(instance.id), controller.registry.get('events-docker')])).toBe(before);
    await controller.registry.remove('events-docker');
  });

  it('records an idle stop done by the host, and the health monitor leaves it stopped', async () => {
    const { instance } = await controller.createInstance({ name: 'events-idle', providerType: 'aws-asg', resources: { cpu: 0.1, memoryMb: 256 } });
    await waitUntil(async () => (controller.registry.get(instance.id)?.lastStop ? true : undefined), { timeoutMs: 30_000, intervalMs: 250, what: 'the idle-stopped event' });
    const after = controller.registry.get(instance.id)!;
    expect(after).toMatchObject({ status: 'stopped', desiredState: 'stopped', lastStop: { by: 'idle', reason: expect.stringMatching(new RegExp(`^stopped by host ${instance.providerRef.hostId}: idle`)) } });
    const monitor = new HealthMonitor({ controller, stateDir, config: { ...testConfig(stateDir).health, failureThreshold: 1 } });
    expect((await monitor.sweep()).map((c) => c.instanceId)).not.toContain(instance.id);
  });

  it('records the instances of a host that drained before termination', async () => {
    const { instance } = await controller.createInstance({ name: 'events-drain', providerType: 'aws-asg', resources: { cpu: 0.1, memoryMb: 256 } });
    const res = await fetch(`http://${instance.providerRef.hostIp}:${AGENT_PORT}/v1/drain`, { method: 'POST', headers: { ...hostAuth(String(instance.providerRef.hostId)), 'content-type': 'application/json' }, body: '{}' });
    expect(res.status).toBe(200);
    await waitUntil(async () => (controller.registry.get(instance.id)?.lastStop ? true : undefined), { timeoutMs: 30_000, intervalMs: 250, what: 'the drained event' });
    expect(controller.registry.get(instance.id)).toMatchObject({ status: 'stopped', desiredState: 'stopped', lastStop: { by: 'provider', reason: expect.stringMatching(/drained before the group terminated it/) } });
  });
});
