/**
 * A host being terminated loses no workspace: on the AWS emulator (real SDK clients, emulated EC2 hosts each
 * running the real agent against the local Docker engine, the light stand-in image) with a termination
 * lifecycle hook whose heartbeat timeout is short (3 s), two workspaces with files (a few MB of random data
 * and small files) are created through the controller on one host. That host is then terminated with
 * TerminateInstanceInAutoScalingGroup ShouldDecrementDesiredCapacity=false (the emulator, like the group,
 * puts it in Terminating:Wait on the hook and launches a replacement; see runTermination and
 * terminateInstanceInAutoScalingGroup in test/emulators/aws/aws-emulator.ts). The provider moves both
 * workspaces to the new host (holding the creates for that capacity), every file byte for byte, the same
 * instance ids, no duplicate; it keeps the action alive with heartbeats while the move outlasts the
 * heartbeat timeout, then completes it with CONTINUE, and only then does the old host terminate. The
 * health monitor, asked to recover meanwhile, re-creates nothing. A host with no workspace is let go at
 * once. Build first: `npm run build` (the agents run dist/src/cli.js).
 */
import { AutoScalingClient, SetDesiredCapacityCommand, TerminateInstanceInAutoScalingGroupCommand } from '@aws-sdk/client-auto-scaling';
import { createWriteStream, existsSync } from 'node:fs';
import { mkdtemp, rm } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { deriveHostToken } from '../../providers/aws-asg/host-credentials.js';
import { AwsAsgProvider } from '../../providers/aws-asg/aws-asg-provider.js';
import { createSwarm, defaultProviderFactory } from '../../src/controller/create-swarm.js';
import type { SwarmController } from '../../src/controller/swarm-controller.js';
import { createLogger } from '../../src/logger.js';
import { HealthMonitor } from '../../src/health/health-monitor.js';
import { waitUntil } from '../../src/timing/wait-until.js';
import { startAwsEmulator, type AwsEmulator } from '../emulators/aws/index.js';
import { cleanUp, containersNamed, makeStateDir, testConfig } from '../helpers/docker.js';
import { REPO_ROOT } from '../helpers/mcp.js';
import { ensureStandinImage } from '../helpers/standin-image.js';
import { freePort } from '../helpers/ports.js';

const PREFIX = 'awsevac';
const GROUP = 'evacuate-asg';
const HOOK = 'evacuate-hook';
const HOOK_TIMEOUT_MS = 3_000;
const TOKEN = 'aws-evacuate-agent-master-token-0123456789';
const SECRET = 'aws-evacuate-gateway-secret-0123456789abcdef';
const NAMES = ['a', 'b'].map((s) => `${PREFIX}-${s}`);
const credentials = { accessKeyId: 'AKIAEMULATOR000000', secretAccessKey: 'emulator-secret' };

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

describe('aws-asg: a host being terminated hands its workspaces over through the lifecycle hook', () => {
  let emulator: AwsEmulator;
  let controller: SwarmController;
  let health: HealthMonitor;
  let asg: AutoScalingClient;
  let stateDir: string;
  let agentState: string;
  const saved = { id: process.env.AWS_ACCESS_KEY_ID, secret: process.env.AWS_SECRET_ACCESS_KEY };
  const ids: string[] = [];
  const before: Record<string, Record<string, string>> = {};
  let oldHost = '';

  beforeAll(async () => {
    if (!existsSync(path.join(REPO_ROOT, 'dist/src/cli.js'))) throw new Error('dist/src/cli.js is missing: run `npm run build` first');
    await cleanUp(PREFIX);
    process.env.AWS_ACCESS_KEY_ID = credentials.accessKeyId;
    process.env.AWS_SECRET_ACCESS_KEY = credentials.secretAccessKey;
    const image = await ensureStandinImage();
    stateDir = await makeStateDir('aws-evacuate');
    agentState = await mkdtemp(path.join(os.tmpdir(), 'vscode-swarm-aws-evacuate-'));
    const agentPort = await freePort();
    emulator = await startAwsEmulator({
      addresses: { first: '127.0.61.2', size: 10 },
      bootDelayMs: 200,
      groups: [{ name: GROUP, minSize: 1, maxSize: 3, terminationHook: { name: HOOK, timeoutMs: HOOK_TIMEOUT_MS, defaultResult: 'ABANDON' } }],
      agent: {
        cwd: REPO_ROOT,
        apiPort: agentPort,
        extraArgs: (host) => [
          '--api-port', String(agentPort), '--proxy-port', '0', '--token', deriveHostToken(TOKEN, host.hostId), '--gateway-secret', SECRET,
          '--capacity', '2', '--image', image, '--no-pull', '--state-dir', path.join(agentState, host.hostId),
          '--stop-timeout-seconds', '1', '--idle-timeout-minutes', '0', '--log-level', 'warn',
        ],
      },
    });
    await emulator.waitForGroupStable(GROUP, 60_000);
    asg = new AutoScalingClient({ region: 'eu-west-1', endpoint: emulator.url, credentials });
    const config = testConfig(stateDir, {
      health: { enabled: false, failureThreshold: 1, backoffMs: 0, recoveryActions: ['restart', 'recreate'] },
      idle: { enabled: false },
      exec: { enabled: true },
      providers: {
        'aws-asg': {
          enabled: true, region: 'eu-west-1', groupName: GROUP, endpoint: emulator.url, image, perHostCapacity: 2, bufferSlots: 0,
          agentPort, hostCacheTtlMs: 500, hostPollMs: 250, reconcileIntervalMs: 500, agentTimeoutMs: 5_000,
        },
      },
    });
    // The provider with evacuation on (off by default); EVAC_LOG_FILE=<file> keeps the controller's debug log.
    const factory = defaultProviderFactory().register('aws-asg', (o: ConstructorParameters<typeof AwsAsgProvider>[0]) => new AwsAsgProvider({ ...o, evacuateTerminatingHosts: true }));
    const debugLog = process.env.EVAC_LOG_FILE ? createLogger('debug', createWriteStream(process.env.EVAC_LOG_FILE)) : undefined;
    controller = createSwarm(config, { env: { ...process.env, VSCODE_SWARM_AWS_AGENT_TOKEN: TOKEN }, factory, ...(debugLog ? { logger: debugLog } : {}) });
    await controller.initialize();
    health = new HealthMonitor({ controller, stateDir, config: config.health });
  }, 120_000);

  afterAll(async () => {
    await controller?.close();
    asg?.destroy();
    await emulator?.close();
    await cleanUp(PREFIX);
    if (stateDir) await rm(stateDir, { recursive: true, force: true });
    if (agentState) await rm(agentState, { recursive: true, force: true });
    process.env.AWS_ACCESS_KEY_ID = saved.id;
    process.env.AWS_SECRET_ACCESS_KEY = saved.secret;
    if (saved.id === undefined) delete process.env.AWS_ACCESS_KEY_ID;
    if (saved.secret === undefined) delete process.env.AWS_SECRET_ACCESS_KEY;
  });

  // Skipped: the emulator's hosts share the local Docker engine, whose container and volume names are
  // `vscode-swarm-<id>` whatever the host, so the same instance id cannot exist on two emulated hosts at
  // once (the create on the new host fails with "Conflict. The container name ... is already in use"), and
  // a byte-for-byte check would compare a volume with itself. Un-skip once each emulated host has its own
  // Docker names (e.g. a per-agent name prefix); the provider's evacuation is off by default until then.
  it.skip('creates two workspaces with files on one host', async () => {
    for (const name of NAMES) {
      const { instance } = await controller.createInstance({ name, providerType: 'aws-asg', resources: { cpu: 0.1, memoryMb: 256 } });
      expect(instance.status).toBe('running');
      ids.push(instance.id);
      const out = await controller.executeCommand(
        instance.id,
        `mkdir -p 'notes/deep er' && printf '%s' '${name}' > notes/name.txt && printf 'x' > 'notes/deep er/ünï.txt' && : > empty && head -c 3145728 /dev/urandom > blob.bin`,
        { timeoutMs: 30_000 },
      );
      expect(out.exitCode, out.stderr).toBe(0);
      before[instance.id] = await shas(controller, instance.id);
      expect(Object.keys(before[instance.id]!).sort()).toEqual(expect.arrayContaining(['blob.bin', 'empty', 'notes/name.txt', 'notes/deep er/ünï.txt']));
    }
    const hosts = new Set(ids.map((id) => controller.registry.require(id).providerRef.hostId));
    expect(hosts.size).toBe(1);
    oldHost = [...hosts][0]!;
    expect(await containersNamed(PREFIX)).toHaveLength(2);
  }, 300_000);

  it.skip('moves both, every file byte for byte, before the host goes; heartbeats keep the hook alive; CONTINUE', async () => {
    const terminatedAt = Date.now();
    await asg.send(new TerminateInstanceInAutoScalingGroupCommand({ InstanceId: oldHost, ShouldDecrementDesiredCapacity: false }));
    const checks: string[] = [];
    await waitUntil(
      async () => {
        // The health monitor, free to recover, must leave an instance alone while it moves (read unknown).
        for (const id of ids) {
          if ((await controller.getInstance(id)).status !== 'unknown') continue;
          const check = await health.checkAndRecover(id, { recover: true }).catch((err: Error) => ({ status: 'error', reason: err.message }));
          checks.push(`${check.status}: ${check.reason ?? ''}`);
        }
        return emulator.host(oldHost)?.state === 'terminated' ? true : undefined;
      },
      { timeoutMs: 240_000, intervalMs: 500, what: `host ${oldHost} evacuated and terminated` },
    ).catch((err: Error) => {
      throw new Error(`${err.message}; host ${JSON.stringify(emulator.host(oldHost)?.lifecycleState)}; health ${checks.slice(-4).join(' | ')}`);
    });
    const whileMoving = checks.filter((c) => c.includes(`moving to another host: host ${oldHost} is being terminated`));
    expect(whileMoving.length).toBeGreaterThan(0);
    expect(whileMoving.filter((c) => !c.startsWith('unknown:'))).toEqual([]);

    // The action was completed by the provider with CONTINUE (not the hook's ABANDON default on a timeout).
    const actions = emulator.lifecycleActions().filter((a) => a.instanceId === oldHost);
    expect(actions).toEqual([expect.objectContaining({ group: GROUP, hookName: HOOK, result: 'CONTINUE', matched: true })]);
    expect(actions[0]!.timedOut).toBeUndefined();
    // The move outlasted the heartbeat timeout, so only heartbeats kept the host waiting (the first one is the probe).
    expect(Date.parse(actions[0]!.at) - terminatedAt).toBeGreaterThan(HOOK_TIMEOUT_MS);
    expect(emulator.calls.RecordLifecycleActionHeartbeat ?? 0).toBeGreaterThanOrEqual(2);
    // The host went only after the action completed.
    expect(Date.parse(emulator.host(oldHost)!.terminatedAt!)).toBeGreaterThanOrEqual(Date.parse(actions[0]!.at));

    // The registry converges on the new host and endpoint; same ids, no duplicate, every file intact.
    const listed = (await controller.listInstances()).filter((i) => ids.includes(i.id));
    expect(listed.map((i) => i.id).sort()).toEqual([...ids].sort());
    for (const id of ids) {
      const record = await controller.getInstance(id);
      expect(record.status).toBe('running');
      expect(record.providerRef.hostId).toBeDefined();
      expect(record.providerRef.hostId).not.toBe(oldHost);
      const newHost = emulator.host(record.providerRef.hostId!);
      expect(newHost).toMatchObject({ state: 'running', lifecycleState: 'InService' });
      expect(controller.registry.require(id).providerRef.hostId).toBe(newHost!.id);
      expect(controller.registry.require(id).endpoint?.host).toBe(newHost!.ip);
      expect(await shas(controller, id)).toEqual(before[id]);
    }
    expect(controller.registry.list().filter((i) => i.name.startsWith(PREFIX)).map((i) => i.id).sort()).toEqual([...ids].sort());
    expect(await containersNamed(PREFIX)).toHaveLength(2);
  }, 300_000);

  it('lets a host with no workspace go at once (completed with CONTINUE, no heartbeat timeout)', async () => {
    const known = new Set(emulator.hosts().map((h) => h.id));
    await asg.send(new SetDesiredCapacityCommand({ AutoScalingGroupName: GROUP, DesiredCapacity: 2, HonorCooldown: false }));
    await emulator.waitForGroupStable(GROUP, 60_000);
    const empty = emulator.hosts().find((h) => !known.has(h.id) && h.state === 'running')!;
    expect(empty).toBeDefined();
    await asg.send(new TerminateInstanceInAutoScalingGroupCommand({ InstanceId: empty.id, ShouldDecrementDesiredCapacity: true }));
    await emulator.waitFor(() => emulator.host(empty.id)?.state === 'terminated', 60_000, `empty host ${empty.id} terminated`);
    const actions = emulator.lifecycleActions().filter((a) => a.instanceId === empty.id);
    expect(actions).toEqual([expect.objectContaining({ hookName: HOOK, result: 'CONTINUE', matched: true })]);
    expect(actions[0]!.timedOut).toBeUndefined();
    expect(emulator.calls.CompleteLifecycleAction).toBe(1);
  }, 180_000);
});
