/**
 * An agent restart is not a termination: on the AWS emulator (real SDK clients, one emulated EC2 host running
 * the real agent against the local Docker engine, the light stand-in image), three workspaces with files are
 * created through the controller, then the host's agent process is killed (the instance stays InService and
 * Healthy, its containers keep running) and later restarted on the same address and state folder. While it
 * is down the instances read `unknown` through the controller (get and list) with the reason, and the
 * health monitor waits instead of re-creating them elsewhere; after it is back they are running, every file
 * has the SHA-256 it had, and there is no duplicate container or registry record. Build first: `npm run build`.
 */
import { existsSync } from 'node:fs';
import { mkdtemp, rm } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { deriveHostToken } from '../../providers/aws-asg/host-credentials.js';
import { createSwarm } from '../../src/controller/create-swarm.js';
import type { SwarmController } from '../../src/controller/swarm-controller.js';
import { HealthMonitor } from '../../src/health/health-monitor.js';
import { waitUntil } from '../../src/timing/wait-until.js';
import { startAwsEmulator, type AwsEmulator } from '../emulators/aws/index.js';
import { cleanUp, containersNamed, makeStateDir, testConfig } from '../helpers/docker.js';
import { REPO_ROOT } from '../helpers/mcp.js';
import { ensureStandinImage } from '../helpers/standin-image.js';
import { freePort } from '../helpers/ports.js';

const PREFIX = 'awsrestart';
const GROUP = 'restart-asg';
const TOKEN = 'aws-restart-agent-master-token-0123456789';
const SECRET = 'aws-restart-gateway-secret-0123456789abcdef';
const NAMES = ['a', 'b', 'c'].map((s) => `${PREFIX}-${s}`);

/** `sha256sum` of every regular file in the workspace, through the controller. */
async function shas(controller: SwarmController, id: string): Promise<Record<string, string>> {
  const out = await controller.executeCommand(id, 'find . -type f -exec sha256sum {} +', { timeoutMs: 30_000 });
  expect(out.exitCode, out.stderr).toBe(0);
  return Object.fromEntries(
    out.stdout.split('\n').filter(Boolean).map((line) => {
      const m = /^([0-9a-f]{64}) {2}\.\/(.+)$/.exec(line);
      if (!m) throw new Error(`unexpected sha256sum line: ${JSON.stringify(line)}`);
      return [m[2]!, m[1]!];
    }),
  );
}

describe('aws-asg: an agent restart strands nothing', () => {
  let emulator: AwsEmulator;
  let controller: SwarmController;
  let health: HealthMonitor;
  let stateDir: string;
  let agentState: string;
  const saved = { id: process.env.AWS_ACCESS_KEY_ID, secret: process.env.AWS_SECRET_ACCESS_KEY };
  const ids: string[] = [];
  const before: Record<string, Record<string, string>> = {};
  let hostId = '';

  beforeAll(async () => {
    if (!existsSync(path.join(REPO_ROOT, 'dist/src/cli.js'))) throw new Error('dist/src/cli.js is missing: run `npm run build` first');
    await cleanUp(PREFIX);
    process.env.AWS_ACCESS_KEY_ID = 'AKIAEMULATOR000000';
    process.env.AWS_SECRET_ACCESS_KEY = 'emulator-secret';
    const image = await ensureStandinImage();
    stateDir = await makeStateDir('aws-restart');
    agentState = await mkdtemp(path.join(os.tmpdir(), 'vscode-swarm-aws-restart-'));
    const agentPort = await freePort();
    emulator = await startAwsEmulator({
      addresses: { first: '127.0.57.2', size: 10 },
      bootDelayMs: 200,
      groups: [{ name: GROUP, minSize: 1, maxSize: 2 }],
      agent: {
        cwd: REPO_ROOT,
        apiPort: agentPort,
        extraArgs: (host) => [
          '--api-port', String(agentPort), '--proxy-port', '0', '--token', deriveHostToken(TOKEN, host.hostId), '--gateway-secret', SECRET,
          '--capacity', '4', '--image', image, '--no-pull', '--state-dir', path.join(agentState, host.hostId),
          '--stop-timeout-seconds', '1', '--idle-timeout-minutes', '0', '--log-level', 'warn',
        ],
      },
    });
    await emulator.waitForGroupStable(GROUP, 60_000);
    const config = testConfig(stateDir, {
      health: { enabled: false, failureThreshold: 1, backoffMs: 0, recoveryActions: ['restart', 'recreate'] },
      idle: { enabled: false },
      exec: { enabled: true },
      providers: {
        'aws-asg': {
          enabled: true, region: 'eu-west-1', groupName: GROUP, endpoint: emulator.url, image, perHostCapacity: 4, bufferSlots: 0,
          agentPort, hostCacheTtlMs: 500, hostPollMs: 250, reconcileIntervalMs: 500, agentTimeoutMs: 3_000,
        },
      },
    });
    controller = createSwarm(config, { env: { ...process.env, VSCODE_SWARM_AWS_AGENT_TOKEN: TOKEN } });
    await controller.initialize();
    health = new HealthMonitor({ controller, stateDir, config: config.health });
  }, 120_000);

  afterAll(async () => {
    await controller?.close();
    await emulator?.close();
    await cleanUp(PREFIX);
    if (stateDir) await rm(stateDir, { recursive: true, force: true });
    if (agentState) await rm(agentState, { recursive: true, force: true });
    process.env.AWS_ACCESS_KEY_ID = saved.id;
    process.env.AWS_SECRET_ACCESS_KEY = saved.secret;
    if (saved.id === undefined) delete process.env.AWS_ACCESS_KEY_ID;
    if (saved.secret === undefined) delete process.env.AWS_SECRET_ACCESS_KEY;
  });

  it('creates three workspaces with files on one host', async () => {
    for (const name of NAMES) {
      const { instance } = await controller.createInstance({ name, providerType: 'aws-asg', resources: { cpu: 0.1, memoryMb: 256 } });
      expect(instance.status).toBe('running');
      ids.push(instance.id);
      const out = await controller.executeCommand(instance.id, `mkdir -p notes && printf '%s' '${name}' > notes/name.txt && head -c 1048576 /dev/urandom > blob.bin`, { timeoutMs: 30_000 });
      expect(out.exitCode, out.stderr).toBe(0);
      before[instance.id] = await shas(controller, instance.id);
      expect(Object.keys(before[instance.id]!).sort()).toEqual(expect.arrayContaining(['blob.bin', 'notes/name.txt']));
    }
    const hosts = new Set(ids.map((id) => controller.registry.require(id).providerRef.hostId));
    expect(hosts.size).toBe(1);
    hostId = [...hosts][0]!;
    expect(await containersNamed(PREFIX)).toHaveLength(3);
  }, 300_000);

  it('while the agent is down, the instances read unknown (get and list) and the health monitor waits', async () => {
    await emulator.killAgent(hostId);
    expect(emulator.host(hostId)).toMatchObject({ agent: 'down', state: 'running', lifecycleState: 'InService', healthStatus: 'Healthy' });
    for (const id of ids) {
      const seen = await controller.getInstance(id);
      expect(seen).toMatchObject({ status: 'unknown', health: 'unknown', statusReason: expect.stringMatching(new RegExp(`^host ${hostId} unreachable since .*agent refused`)) });
    }
    const listed = (await controller.listInstances()).filter((i) => ids.includes(i.id));
    expect(listed.map((i) => i.status)).toEqual(['unknown', 'unknown', 'unknown']);
    // Health: recovery on, threshold 1, no backoff; still nothing is restarted or re-created.
    for (let round = 0; round < 3; round++) {
      for (const id of ids) {
        const check = await health.checkAndRecover(id, { recover: true });
        expect(check).toMatchObject({ status: 'unknown', reason: expect.stringMatching(/state unknown.*unreachable.*waiting/) });
      }
    }
    expect(controller.registry.list().filter((i) => i.name.startsWith(PREFIX))).toHaveLength(3);
    const containers = await containersNamed(PREFIX);
    expect(containers).toHaveLength(3);
    expect(containers.every((c) => c.State === 'running')).toBe(true); // the editors ran on without their agent
    // An operation is refused (the record is not running), rather than acting elsewhere.
    await expect(controller.executeCommand(ids[0]!, 'true')).rejects.toMatchObject({ code: 'CONFLICT' });
    expect(emulator.hosts()).toHaveLength(1); // EC2 health checks do not see the agent: no replacement
  }, 180_000);

  it('after the agent restarts everything is as it was: running, the same files, no duplicate', async () => {
    await emulator.restartAgent(hostId);
    await emulator.waitFor(() => emulator.host(hostId)?.agent === 'ready', 60_000, 'the agent back');
    let last = '';
    await waitUntil(
      async () => {
        const seen = await controller.getInstance(ids[0]!);
        last = `${seen.status} (${seen.statusReason ?? ''})`;
        return seen.status === 'running' ? true : undefined;
      },
      { timeoutMs: 60_000, intervalMs: 500, what: 'the instance running again' },
    ).catch((err: Error) => {
      throw new Error(`${err.message}; last seen ${last}; agent output: ${emulator.host(hostId)?.output.slice(-8).join(' | ')}`);
    });
    for (const id of ids) {
      const seen = await controller.getInstance(id);
      expect(seen).toMatchObject({ status: 'running', providerRef: { hostId } });
      expect(await shas(controller, id)).toEqual(before[id]);
    }
    expect((await controller.listInstances()).filter((i) => ids.includes(i.id)).map((i) => i.status)).toEqual(['running', 'running', 'running']);
    expect(controller.registry.list().filter((i) => i.name.startsWith(PREFIX)).map((i) => i.id).sort()).toEqual([...ids].sort());
    expect(await containersNamed(PREFIX)).toHaveLength(3);
    expect(emulator.hosts().map((h) => h.id)).toEqual([hostId]);
    for (const id of ids) expect(await controller.deleteInstance(id)).toBeTruthy();
  }, 240_000);
});
