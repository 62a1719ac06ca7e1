/**
 * The AWS provider against the AWS emulator: the real Auto Scaling and EC2 SDK clients over HTTP, every
 * emulated EC2 host a real host agent (`node dist/src/cli.js agent`) on its own loopback address driving
 * the real Docker engine. First the shared contract with the real code-server image; then what is
 * AWS-specific (an unknown group, a refused agent token, holding a create while a host boots, scale-in
 * protection, scale-in after the cool-down, a host dying with containers on it), on the light stand-in
 * image. Build first: `npx tsc -p .`.
 */
import { existsSync } from 'node:fs';
import { mkdtemp, rm } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { pino } from 'pino';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { AwsAsgProvider, type AwsAsgProviderOptions } from '../../providers/aws-asg/aws-asg-provider.js';
import { deriveHostToken } from '../../providers/aws-asg/host-credentials.js';
import type { InstanceConfig, ProgressEvent } from '../../providers/provider.js';
import { startAwsEmulator, type AwsEmulator, type HostLaunchContext } from '../emulators/aws/index.js';
import { createSwarm } from '../../src/controller/create-swarm.js';
import { TEST_IMAGE, cleanUp, containersNamed, makeStateDir, testConfig } from '../helpers/docker.js';
import { editorStatus } from '../helpers/editor-probe.js';
import { REPO_ROOT } from '../helpers/mcp.js';
import { ensureStandinImage } from '../helpers/standin-image.js';
import { describeProviderContract } from './provider-contract.js';

const TOKEN = 'aws-contract-agent-token-0123456789';
const SECRET = 'aws-contract-gateway-secret-0123456789abcdef';
/** One port for every host: each host has its own loopback address. */
const AGENT_PORT = 19_100;
const PROXY_PORT = 19_180;
const CONTRACT_GROUP = 'contract-asg';
const SCALING_GROUP = 'scaling-asg';
/** Its one host runs a process that answers every request with HTML instead of the agent's JSON. */
const GARBAGE_GROUP = 'garbage-asg';
const GARBAGE_AGENT = `
const [bind, port] = [process.argv[1], Number(process.argv[2])];
require('node:http').createServer((req, res) => { req.resume(); res.writeHead(200, { 'content-type': 'text/html' }); res.end('<html>hello</html>'); })
  .listen(port, bind, () => process.stdout.write('agent ready ' + process.argv[3] + ' api=http://' + bind + ':' + port + '\\n'));
process.on('SIGTERM', () => process.exit(0));
`;
const credentials = { accessKeyId: 'AKIAEMULATOR000000', secretAccessKey: 'emulator-secret' };
const PREFIX = 'awsct';

let emulator: AwsEmulator;
let stateRoot: string;
let standin: string;

beforeAll(async () => {
  if (!existsSync(path.join(REPO_ROOT, 'dist/src/cli.js'))) throw new Error('dist/src/cli.js is missing: run `npx tsc -p .` first');
  await cleanUp(PREFIX);
  standin = await ensureStandinImage();
  stateRoot = await mkdtemp(path.join(os.tmpdir(), 'vscode-swarm-aws-contract-'));
  emulator = await startAwsEmulator({
    // Away from 127.0.0.2.. which other suites' agents use.
    addresses: { first: '127.0.31.2', size: 100 },
    bootDelayMs: 300,
    healthCheckDelayMs: 300,
    stopGraceMs: 3_000,
    groups: [
      { name: CONTRACT_GROUP, minSize: 1, maxSize: 3 },
      { name: SCALING_GROUP, minSize: 1, maxSize: 2 },
      { name: GARBAGE_GROUP, minSize: 1, maxSize: 1 },
    ],
    agent: {
      cwd: REPO_ROOT,
      token: TOKEN,
      apiPort: AGENT_PORT,
      args: (host: HostLaunchContext) =>
        host.group === GARBAGE_GROUP
          ? ['-e', GARBAGE_AGENT, host.ip, String(AGENT_PORT), host.hostId]
          : ['dist/src/cli.js', 'agent', '--host-id', host.hostId, '--bind', host.ip, ...agentFlags(host)],
    },
  });
  await emulator.waitForGroupStable(CONTRACT_GROUP, 30_000);
  await emulator.waitForGroupStable(SCALING_GROUP, 30_000);
  await emulator.waitForGroupStable(GARBAGE_GROUP, 30_000);
});

function agentFlags(host: HostLaunchContext): string[] {
  return [
    '--api-port', String(AGENT_PORT), '--proxy-port', String(PROXY_PORT),
    '--token', deriveHostToken(TOKEN, host.hostId), '--gateway-secret', SECRET,
    '--capacity', host.group === SCALING_GROUP ? '2' : '4',
    '--image', TEST_IMAGE, '--no-pull',
    '--state-dir', path.join(stateRoot, host.hostId),
    '--stop-timeout-seconds', '2', '--idle-timeout-minutes', '0', '--log-level', 'warn',
  ];
}

afterAll(async () => {
  await emulator?.close();
  await cleanUp(PREFIX);
  if (stateRoot) await rm(stateRoot, { recursive: true, force: true });
});

function makeProvider(groupName: string, overrides: Partial<AwsAsgProviderOptions> = {}): AwsAsgProvider {
  return new AwsAsgProvider({
    region: 'eu-west-1',
    groupName,
    endpoint: emulator.url,
    credentials,
    agentPort: AGENT_PORT,
    agentToken: TOKEN,
    perHostCapacity: 4,
    bufferSlots: 0,
    defaultImage: TEST_IMAGE,
    hostCacheTtlMs: 1_000,
    hostPollMs: 250,
    reconcileIntervalMs: 500,
    scaleInCooldownMs: 60_000,
    agentCreateTimeoutMs: 90_000,
    ...overrides,
  });
}

describeProviderContract('aws-asg (emulator)', {
  makeProvider: () => makeProvider(CONTRACT_GROUP),
  image: TEST_IMAGE,
  namePrefix: `${PREFIX}-contract`,
  cleanUp: () => cleanUp(`${PREFIX}-contract`),
});

describe('aws-asg provider specifics', () => {
  let provider: AwsAsgProvider;
  const config = (name: string): InstanceConfig & { image: string } => ({ name, image: standin, resources: { cpu: 0.1, memoryMb: 256 } });
  const group = () => emulator.group(SCALING_GROUP)!;

  beforeAll(async () => {
    // A host whose agent never answers is given up on after hostBootTimeoutMs (the "never boots" case).
    provider = makeProvider(SCALING_GROUP, { perHostCapacity: 2, scaleInCooldownMs: 1_500, defaultImage: standin, hostBootTimeoutMs: 20_000 });
    await provider.initialize();
  });
  afterAll(async () => {
    await provider?.close();
  });

  it('names the group and the region when the group does not exist', async () => {
    const missing = makeProvider('no-such-group');
    await expect(missing.initialize()).rejects.toMatchObject({
      code: 'PROVIDER_UNAVAILABLE',
      message: expect.stringMatching(/"no-such-group" not found in region eu-west-1/),
    });
  });

  it('says so clearly when the agents refuse its token', async () => {
    const wrong = makeProvider(SCALING_GROUP, { agentToken: 'not-the-agents-token-000000' });
    await expect(wrong.initialize()).rejects.toMatchObject({ code: 'PROVIDER_UNAVAILABLE', message: expect.stringMatching(/refused the controller's token \(401/) });
    await wrong.close();
  });

  it('holds a create while every host is full, scales out, and places it on the new host', async () => {
    expect(group()).toMatchObject({ desiredCapacity: 1, minSize: 1, maxSize: 2 });
    const [a, b] = await Promise.all([provider.createInstance(config(`${PREFIX}-s1`), { instanceId: `${PREFIX}-s1` }), provider.createInstance(config(`${PREFIX}-s2`), { instanceId: `${PREFIX}-s2` })]);
    expect(a.providerRef.hostId).toBe(b.providerRef.hostId);
    const first = a.providerRef.hostId!;
    expect(a).toMatchObject({ providerType: 'aws-asg', status: 'running', providerRef: { hostId: first, hostIp: expect.stringMatching(/^127\.0\.31\./) } });
    // Both behind their host's proxy, told apart by the Host header.
    expect(a.endpoint!.url.startsWith(`http://${a.providerRef.hostIp}:`)).toBe(true);
    expect(a.endpoint!.url).toBe(b.endpoint!.url);
    expect([a.endpoint!.hostHeader, b.endpoint!.hostHeader]).toEqual([`${PREFIX}-s1.localhost`, `${PREFIX}-s2.localhost`]);

    const events: ProgressEvent[] = [];
    emulator.resetCalls();
    const c = await provider.createInstance(config(`${PREFIX}-s3`), { instanceId: `${PREFIX}-s3`, onProgress: (e) => events.push(e) });
    expect(c.status).toBe('running');
    expect(c.providerRef.hostId).not.toBe(first);
    expect(events.map((e) => e.message)).toContain('waiting for a new host (desired 2)');
    expect(events.at(-1)?.fraction).toBe(1);
    expect(emulator.calls.SetDesiredCapacity).toBe(1);
    console.info('aws: AWS calls for one scale-out decision (create held until the host joined):', emulator.totalCalls(), { ...emulator.calls });
    expect(group().desiredCapacity).toBe(2);
    expect(await editorStatus(c, provider)).toBe(200);
  });

  it('protects busy hosts from scale-in', async () => {
    // Two hosts in service (s1 and s2 on one, s3 on the other), each busy: both protected. An empty list
    // of hosts must not pass, so the count is part of the condition.
    const inService = () => group().instances.filter((i) => i.lifecycleState === 'InService');
    await emulator.waitFor(() => inService().length === 2 && inService().every((i) => i.protectedFromScaleIn), 10_000, 'both hosts protected');
    expect(inService().map((i) => i.protectedFromScaleIn)).toEqual([true, true]);
  });

  it('refuses with a clear CONFLICT when the group is at its max and every host is full', async () => {
    await provider.createInstance(config(`${PREFIX}-s4`), { instanceId: `${PREFIX}-s4` });
    await expect(provider.createInstance(config(`${PREFIX}-s5`), { instanceId: `${PREFIX}-s5` })).rejects.toMatchObject({
      code: 'CONFLICT',
      message: expect.stringMatching(new RegExp(`${SCALING_GROUP} is at its max size \\(2 hosts`)),
    });
  });

  it('clears protection on an emptied host and terminates it after the cool-down, back to the min size', async () => {
    const c = await provider.getInstance(`${PREFIX}-s3`);
    const second = c!.providerRef.hostId!;
    expect(await provider.deleteInstance(`${PREFIX}-s3`)).toBe(true);
    expect(await provider.deleteInstance(`${PREFIX}-s4`)).toBe(true);
    emulator.resetCalls();
    await emulator.waitFor(() => emulator.host(second)?.protectedFromScaleIn === false, 5_000, 'protection cleared on the emptied host');
    await emulator.waitFor(() => group().desiredCapacity === 1 && !group().instances.some((i) => i.id === second), 20_000, 'the empty host terminated');
    expect(emulator.calls.TerminateInstanceInAutoScalingGroup).toBe(1);
    const activity = group().activities.find((x) => x.description.includes(second) && x.description.startsWith('Terminating'));
    expect(activity?.cause).toMatch(/shrinking the capacity from 2 to 1/);
    // The busy first host stays, protected.
    expect(group().instances.filter((i) => i.lifecycleState === 'InService')).toHaveLength(1);
    expect(group().instances[0]!.protectedFromScaleIn).toBe(true);
  });

  it('keeps a held create waiting through a host that never boots, and places it on the replacement', async () => {
    expect(group().desiredCapacity).toBe(1); // one host, full with s1 and s2
    const launches = (): number => group().activities.filter((a) => a.description.startsWith('Launching')).length;
    const before = launches();
    emulator.setHostNeverBoots(1);
    const events: ProgressEvent[] = [];
    const d = await provider.createInstance(config(`${PREFIX}-s6`), { instanceId: `${PREFIX}-s6`, onProgress: (e) => events.push(e) });
    expect(d.status).toBe('running');
    expect(events.map((e) => e.message)).toContain('waiting for a new host (desired 2)');
    // EC2 kept the silent host InService; the provider gave up on it (terminated, desired kept) and the
    // group launched a replacement; the create landed there.
    expect(launches() - before).toBeGreaterThanOrEqual(2);
    const silent = emulator.hosts().find((h) => h.group === SCALING_GROUP && h.neverBoots)!;
    expect(silent).toMatchObject({ agent: 'none', state: 'terminated', lifecycleState: 'Terminated' });
    expect(d.providerRef.hostId).not.toBe(silent.id);
    const terminated = group().activities.find((a) => a.description === `Terminating EC2 instance: ${silent.id}`);
    expect(terminated?.cause).toMatch(/in response to a user request\.$/); // no "shrinking the capacity": replaced
    expect(group().desiredCapacity).toBe(2);
    expect(await editorStatus(d, provider)).toBe(200);
    expect(await provider.deleteInstance(`${PREFIX}-s6`)).toBe(true);
  }, 120_000);

  it('skips a host whose agent answers garbage, with a log line, and does not place on it', async () => {
    const lines: string[] = [];
    const logger = pino({ level: 'warn' }, { write: (line: string) => void lines.push(line) });
    const confused = makeProvider(GARBAGE_GROUP, { hostWaitTimeoutMs: 1_500, logger });
    try {
      await confused.initialize();
      expect(confused.hostSummary()).toEqual([expect.objectContaining({ lifecycle: 'InService', reachable: false })]);
      expect(lines.join('\n')).toMatch(/not JSON.*host agent unhealthy; skipped for placement/);
      await expect(confused.createInstance(config(`${PREFIX}-g1`), { instanceId: `${PREFIX}-g1` })).rejects.toMatchObject({ code: 'TIMEOUT' });
      await expect(confused.listInstances()).rejects.toMatchObject({ code: 'PROVIDER_UNAVAILABLE', message: expect.stringMatching(/not JSON/) });
    } finally {
      await confused.close();
    }
  });

  it('reports the instances of a host that died as missing', async () => {
    const before = await provider.listInstances();
    expect(before.map((i) => i.id).sort()).toEqual([`${PREFIX}-s1`, `${PREFIX}-s2`]);
    const hostId = before[0]!.providerRef.hostId!;
    await emulator.killHost(hostId);
    expect(await provider.getInstance(`${PREFIX}-s1`)).toBeNull();
    expect((await provider.listInstances()).map((i) => i.id)).toEqual([]);
    await expect(provider.startInstance(`${PREFIX}-s1`)).rejects.toMatchObject({ code: 'NOT_FOUND' });
    // The group replaces the dead host; the provider keeps working on the new one.
    await emulator.waitFor(() => group().instances.some((i) => i.id !== hostId && i.lifecycleState === 'InService'), 30_000, 'a replacement host');
    const again = await provider.createInstance(config(`${PREFIX}-s6`), { instanceId: `${PREFIX}-s6` });
    expect(again.providerRef.hostId).not.toBe(hostId);
    expect(await provider.deleteInstance(`${PREFIX}-s6`)).toBe(true);
    expect(await containersNamed(`${PREFIX}-s6`)).toEqual([]);
  });
});

describe('aws-asg through the controller (config → createSwarm → provider)', () => {
  it('creates with providerType aws-asg and marks the instances of a dead host missing, with the reason', async () => {
    const saved = { id: process.env.AWS_ACCESS_KEY_ID, secret: process.env.AWS_SECRET_ACCESS_KEY };
    // The standard credential chain, from the environment (no static keys in the config).
    process.env.AWS_ACCESS_KEY_ID = credentials.accessKeyId;
    process.env.AWS_SECRET_ACCESS_KEY = credentials.secretAccessKey;
    const stateDir = await makeStateDir('aws-controller');
    const config = testConfig(stateDir, {
      health: { enabled: false },
      idle: { enabled: false },
      providers: {
        'aws-asg': {
          enabled: true, region: 'eu-west-1', groupName: SCALING_GROUP, endpoint: emulator.url, image: standin,
          perHostCapacity: 2, bufferSlots: 0, agentPort: AGENT_PORT, hostPollMs: 250, reconcileIntervalMs: 500, scaleInCooldownMinutes: 60,
        },
      },
    });
    const controller = createSwarm(config, { env: { ...process.env, VSCODE_SWARM_AWS_AGENT_TOKEN: TOKEN } });
    try {
      const { unavailable } = await controller.initialize();
      expect(unavailable).toEqual([]);
      const { instance } = await controller.createInstance({ name: `${PREFIX}-ctl`, providerType: 'aws-asg', resources: { cpu: 0.1, memoryMb: 256 } });
      expect(instance).toMatchObject({ providerType: 'aws-asg', status: 'running', config: { image: standin }, providerRef: { hostId: expect.stringMatching(/^i-/) } });
      await emulator.killHost(instance.providerRef.hostId!);
      const report = await controller.reconcile('aws-asg');
      expect(report.markedMissing).toEqual([instance.id]);
      const after = await controller.getInstance(instance.id);
      expect(after).toMatchObject({ status: 'failed', statusReason: expect.stringMatching(/^missing: its aws-asg instance was removed/) });
    } finally {
      await controller.close();
      process.env.AWS_ACCESS_KEY_ID = saved.id;
      process.env.AWS_SECRET_ACCESS_KEY = saved.secret;
      if (saved.id === undefined) delete process.env.AWS_ACCESS_KEY_ID;
      if (saved.secret === undefined) delete process.env.AWS_SECRET_ACCESS_KEY;
      await rm(stateDir, { recursive: true, force: true });
    }
  });
});
