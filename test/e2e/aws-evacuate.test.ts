/**
 * The termination lifecycle hook, on the AWS emulator (real SDK clients, emulated EC2 hosts each running the
 * real agent against the local Docker engine, the light stand-in image), with the provider's evacuation
 * (on by default):
 * - a host with no workspace that the group terminates is let go at once, its action completed with
 *   CONTINUE (the hook's default is ABANDON after 3 s, so without the provider this fails);
 * - a busy host an operator terminates keeps its hook alive while both of its workspaces move to another
 *   host with every file (SHA-256 manifests compared), and goes only after, its disk destroyed with it.
 * The emulated hosts share this machine's Docker engine, so each agent gets its own container and volume
 * name prefix (`--name-prefix`): during a move the same instance exists on two hosts at once.
 * Build first: `npm run build` (the agents run dist/src/cli.js).
 */
import { AutoScalingClient, SetDesiredCapacityCommand, TerminateInstanceInAutoScalingGroupCommand } from '@aws-sdk/client-auto-scaling';
import Docker from 'dockerode';
import { createWriteStream, existsSync } from 'node:fs';
import { mkdtemp, rm } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { deriveHostToken } from '../../providers/aws-asg/host-credentials.js';
import { createSwarm } from '../../src/controller/create-swarm.js';
import type { SwarmController } from '../../src/controller/swarm-controller.js';
import { createLogger } from '../../src/logger.js';
import { manifestOf, type Manifest } from '../../src/migration/workspace-archive.js';
import { LABEL_MANAGED, LABEL_SWARM } from '../../providers/docker/docker-mapping.js';
import { startAwsEmulator, type AwsEmulator } from '../emulators/aws/index.js';
import { cleanUp, makeStateDir, testConfig } from '../helpers/docker.js';
import { REPO_ROOT } from '../helpers/mcp.js';
import { ensureStandinImage } from '../helpers/standin-image.js';
import { freePort } from '../helpers/ports.js';

const PREFIX = 'awsevac';
const GROUP = 'evacuate-asg';
const HOOK = 'evacuate-hook';
const HOOK_TIMEOUT_MS = 3_000;
const TOKEN = 'aws-evacuate-agent-master-token-0123456789';
const SECRET = 'aws-evacuate-gateway-secret-0123456789abcdef';
const credentials = { accessKeyId: 'AKIAEMULATOR000000', secretAccessKey: 'emulator-secret' };
const docker = new Docker();

/** What an emulated instance's disk held: the containers and volumes its agent labelled (swarm `host-<id>`). */
async function destroyHostDisk(hostId: string): Promise<void> {
  const label = [`${LABEL_MANAGED}=true`, `${LABEL_SWARM}=host-${hostId}`];
  for (const c of await docker.listContainers({ all: true, filters: { label } })) await docker.getContainer(c.Id).remove({ force: true }).catch(() => undefined);
  const { Volumes } = await docker.listVolumes({ filters: { label } });
  for (const v of Volumes ?? []) await docker.getVolume(v.Name).remove({ force: true }).catch(() => undefined);
}

async function hostDiskHolds(hostId: string): Promise<number> {
  return (await docker.listContainers({ all: true, filters: { label: [`${LABEL_MANAGED}=true`, `${LABEL_SWARM}=host-${hostId}`] } })).length;
}

describe('aws-asg: the termination lifecycle hook, completed by the provider', () => {
  let emulator: AwsEmulator;
  let controller: SwarmController;
  let asg: AutoScalingClient;
  let stateDir: string;
  let agentState: string;
  const saved = { id: process.env.AWS_ACCESS_KEY_ID, secret: process.env.AWS_SECRET_ACCESS_KEY };

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
        destroyDisk: (host) => destroyHostDisk(host.hostId),
        extraArgs: (host) => [
          '--name-prefix', `vscode-swarm-${host.hostId}`,
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
    // EVAC_LOG_FILE=<file> keeps the controller's debug log.
    const debugLog = process.env.EVAC_LOG_FILE ? createLogger('debug', createWriteStream(process.env.EVAC_LOG_FILE)) : undefined;
    controller = createSwarm(config, { env: { ...process.env, VSCODE_SWARM_AWS_AGENT_TOKEN: TOKEN }, ...(debugLog ? { logger: debugLog } : {}) });
    await controller.initialize();
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

  it('moves both workspaces of a busy host with every file before the host goes, keeping the hook alive', async () => {
    const [a, b] = await Promise.all(['a', 'b'].map((n) => controller.createInstance({ name: `${PREFIX}-${n}`, providerType: 'aws-asg' })));
    const ids = [a!.instance.id, b!.instance.id];
    const hostOf = async (id: string): Promise<string> => (await controller.getInstance(id)).providerRef.hostId!;
    const source = await hostOf(ids[0]!);
    // Two hosts may exist after the first test's scale-out; put both workspaces on one host to terminate.
    expect(await hostOf(ids[1]!)).toBe(source);
    // Files of several sizes, one of them 8 MiB of random bytes, and a nested folder.
    for (const id of ids) {
      const made = await controller.executeCommand(id, 'cd /home/coder/project && dd if=/dev/urandom of=big.bin bs=1048576 count=8 2>/dev/null && mkdir -p src/deep && echo "hello $HOSTNAME" > src/deep/a.txt && printf "" > empty && echo ok', { timeoutMs: 30_000 });
      expect(made.stdout.trim()).toBe('ok');
    }
    const provider = await controller.providerOf(ids[0]!);
    const manifest = async (id: string): Promise<Manifest> => manifestOf(await provider.exportWorkspace!(id));
    const before = await Promise.all(ids.map(manifest));
    expect(Object.keys(before[0]!)).toEqual(expect.arrayContaining(['big.bin', 'src/deep/a.txt', 'empty']));
    expect(before[0]!['big.bin']!.size).toBe(8 * 1024 * 1024);

    const heartbeatsBefore = emulator.calls.RecordLifecycleActionHeartbeat ?? 0;
    // An operator's termination ignores scale-in protection; the group launches a replacement.
    await asg.send(new TerminateInstanceInAutoScalingGroupCommand({ InstanceId: source, ShouldDecrementDesiredCapacity: false }));
    await emulator.waitFor(() => emulator.host(source)?.state === 'terminated', 150_000, `busy host ${source} terminated`);

    const action = emulator.lifecycleActions().filter((x) => x.instanceId === source);
    expect(action).toEqual([expect.objectContaining({ hookName: HOOK, result: 'CONTINUE', matched: true })]);
    expect(action[0]!.timedOut).toBeUndefined();
    expect((emulator.calls.RecordLifecycleActionHeartbeat ?? 0) - heartbeatsBefore).toBeGreaterThanOrEqual(1);
    expect(await hostDiskHolds(source)).toBe(0); // its disk went with it
    // Hosts were Pending and Terminating during all this: scale-in protection was never asked for one of
    // them (AWS refuses the whole call then), and it was asked for (the busy hosts are protected).
    const protection = emulator.log.filter((c) => c.action === 'SetInstanceProtection');
    expect(protection.length).toBeGreaterThan(0);
    expect(protection.filter((c) => c.status !== 200)).toEqual([]);

    for (const [i, id] of ids.entries()) {
      const now = await controller.getInstance(id);
      expect(now.status).toBe('running');
      expect(now.providerRef.hostId).not.toBe(source);
      expect(await manifest(id)).toEqual(before[i]);
      const read = await controller.executeCommand(id, 'cat /home/coder/project/src/deep/a.txt');
      expect(read.stdout).toMatch(/^hello /);
    }
  }, 240_000);
});
