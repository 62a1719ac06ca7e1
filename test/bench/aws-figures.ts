/**
 * The AWS provider's burst: N concurrent creates on the AWS emulator (real SDK clients over HTTP, every
 * EC2 host a real host agent with a boot delay) with the light stand-in editor image, beside the same N
 * concurrent creates through the Docker provider on the local engine (no hosts to boot, no agent hop):
 * what scaling out from one host costs the caller. Also the rig the burst e2e test runs on. And the time
 * to move two 50 MiB workspaces off a host being terminated, beside the same moves by hand on one engine.
 */
import { AutoScalingClient, TerminateInstanceInAutoScalingGroupCommand } from '@aws-sdk/client-auto-scaling';
import { deriveHostToken } from '../../providers/aws-asg/host-credentials.js';
import { mkdtemp, rm } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { AwsAsgProvider, type AwsAsgProviderOptions } from '../../providers/aws-asg/aws-asg-provider.js';
import { DockerProvider } from '../../providers/docker/docker-provider.js';
import { LABEL_SWARM } from '../../providers/docker/docker-mapping.js';
import type { Provider, VSCodeInstance } from '../../providers/provider.js';
import { startAwsEmulator, type AwsEmulator, type FaultRule } from '../emulators/aws/index.js';
import { cleanUp, docker } from '../helpers/docker.js';
import { ensureStandinImage } from '../helpers/standin-image.js';
import { REPO_ROOT } from '../helpers/mcp.js';
import { median, percentile, type Figure } from './figures.js';

export { REPO_ROOT };

const TOKEN = 'aws-burst-agent-token-0123456789abcdef';
const SECRET = 'aws-burst-gateway-secret-0123456789abcdef';
const credentials = { accessKeyId: 'AKIAEMULATOR000000', secretAccessKey: 'emulator-secret' };

export interface AwsBurstRigOptions {
  group: string;
  /** Loopback range of the emulated hosts, away from other suites' (e.g. 127.0.32.2). */
  firstAddress: string;
  agentPort: number;
  perHost: number;
  maxSize: number;
  bufferSlots: number;
  bootDelayMs: number;
  scaleInCooldownMs: number;
  faults?: FaultRule[];
  provider?: Partial<AwsAsgProviderOptions>;
  /** A termination lifecycle hook on the group (the provider moves a terminating host's instances while it waits). */
  terminationHook?: { name: string; timeoutMs: number };
}

export interface AwsBurstRig {
  emulator: AwsEmulator;
  provider: AwsAsgProvider;
  image: string;
  options: AwsBurstRigOptions;
  /** Docker containers the emulated hosts' agents made (by their swarm labels), terminated hosts included. */
  hostContainers(): Promise<Array<{ id: string; hostId: string; instanceId: string; state: string }>>;
  /** One more provider on the same group, as a second controller would have (initialised; closed by close()). */
  anotherProvider(extra?: Partial<AwsAsgProviderOptions>): Promise<AwsAsgProvider>;
  close(): Promise<void>;
}

/** A group with one host (min 1) whose agents run the stand-in image; the provider initialised on it. */
export async function startAwsBurstRig(options: AwsBurstRigOptions): Promise<AwsBurstRig> {
  const image = await ensureStandinImage();
  const stateRoot = await mkdtemp(path.join(os.tmpdir(), 'vscode-swarm-aws-burst-'));
  const emulator = await startAwsEmulator({
    addresses: { first: options.firstAddress, size: 60 },
    bootDelayMs: options.bootDelayMs,
    healthCheckDelayMs: 500,
    stopGraceMs: 3_000,
    groups: [{ name: options.group, minSize: 1, maxSize: options.maxSize, ...(options.terminationHook ? { terminationHook: { ...options.terminationHook, defaultResult: 'ABANDON' as const } } : {}) }],
    agent: {
      cwd: REPO_ROOT,
      token: TOKEN,
      apiPort: options.agentPort,
      // Each host runs with its own credential, derived from the swarm's token and its id.
      // Each host its own container and volume names: they share this engine, and a moved instance is on two at once.
      extraArgs: (host) => [
        '--name-prefix', `vscode-swarm-${host.hostId}`,
        '--api-port', String(options.agentPort), '--proxy-port', String(options.agentPort + 1),
        '--token', deriveHostToken(TOKEN, host.hostId), '--gateway-secret', SECRET, '--capacity', String(options.perHost),
        '--image', image, '--no-pull', '--state-dir', path.join(stateRoot, host.hostId),
        '--stop-timeout-seconds', '1', '--idle-timeout-minutes', '0', '--readiness-timeout-ms', '120000', '--log-level', 'warn',
      ],
    },
  });
  const allHostIds = (): string[] => emulator.hosts().map((h) => h.id);
  const hostContainers = async (): Promise<Array<{ id: string; hostId: string; instanceId: string; state: string }>> => {
    const ids = new Set(allHostIds().map((id) => `host-${id}`));
    const list = await docker.listContainers({ all: true, filters: { label: [LABEL_SWARM] } });
    return list
      .filter((c) => ids.has(c.Labels[LABEL_SWARM]!))
      .map((c) => ({ id: c.Id, hostId: c.Labels[LABEL_SWARM]!.slice('host-'.length), instanceId: c.Labels['vscode-swarm.instance'] ?? '', state: c.State }));
  };
  /** Everything the agents made, containers and volumes, by their swarm labels. */
  const removeLabelled = async (): Promise<void> => {
    for (const hostId of allHostIds()) {
      const label = `${LABEL_SWARM}=host-${hostId}`;
      const containers = await docker.listContainers({ all: true, filters: { label: [label] } });
      await Promise.all(containers.map((c) => docker.getContainer(c.Id).remove({ force: true }).catch(() => undefined)));
      const { Volumes } = await docker.listVolumes({ filters: { label: [label] } });
      await Promise.all((Volumes ?? []).map((v) => docker.getVolume(v.Name).remove().catch(() => undefined)));
    }
  };
  const providerOptions = (extra?: Partial<AwsAsgProviderOptions>): AwsAsgProviderOptions => ({
    region: 'us-east-1',
    groupName: options.group,
    endpoint: emulator.url,
    credentials,
    agentPort: options.agentPort,
    agentToken: TOKEN,
    perHostCapacity: options.perHost,
    bufferSlots: options.bufferSlots,
    defaultImage: image,
    hostCacheTtlMs: 2_000,
    hostPollMs: 500,
    reconcileIntervalMs: 500,
    scaleInCooldownMs: options.scaleInCooldownMs,
    hostWaitTimeoutMs: 120_000,
    agentCreateTimeoutMs: 150_000,
    ...options.provider,
    ...extra,
  });
  let provider: AwsAsgProvider | undefined;
  const others: AwsAsgProvider[] = [];
  try {
    await emulator.waitForGroupStable(options.group, 30_000);
    if (options.faults) emulator.setFaults(options.faults);
    provider = new AwsAsgProvider(providerOptions());
    await provider.initialize();
  } catch (err) {
    await provider?.close();
    await emulator.close();
    await removeLabelled();
    await rm(stateRoot, { recursive: true, force: true });
    throw err;
  }
  const ready = provider;
  return {
    emulator,
    provider: ready,
    image,
    options,
    hostContainers,
    anotherProvider: async (extra) => {
      const another = new AwsAsgProvider(providerOptions(extra));
      others.push(another);
      await another.initialize();
      return another;
    },
    close: async () => {
      for (const another of others) await another.close();
      await ready.close();
      await emulator.close();
      await removeLabelled();
      await rm(stateRoot, { recursive: true, force: true });
    },
  };
}

export interface BurstResult {
  instances: VSCodeInstance[];
  /** Per create, ms from the start of the burst to the create returning a running editor. */
  times: number[];
  failures: Error[];
  wallMs: number;
}

/** N concurrent creates of the stand-in, each timed from the start of the burst. */
export async function burst(provider: Provider, n: number, prefix: string, image: string): Promise<BurstResult> {
  const started = performance.now();
  const settled = await Promise.allSettled(
    Array.from({ length: n }, async (_, i) => {
      const id = `${prefix}-${String(i).padStart(3, '0')}`;
      const instance = await provider.createInstance({ name: id, image, resources: { cpu: 0.1, memoryMb: 256 } }, { instanceId: id });
      return { instance, ms: performance.now() - started };
    }),
  );
  const instances: VSCodeInstance[] = [];
  const times: number[] = [];
  const failures: Error[] = [];
  for (const s of settled) {
    if (s.status === 'fulfilled') {
      instances.push(s.value.instance);
      times.push(s.value.ms);
    } else failures.push(s.reason as Error);
  }
  return { instances, times: times.sort((a, b) => a - b), failures, wallMs: performance.now() - started };
}

/** Deletes every instance of a burst, concurrently; the ones that could not be deleted. */
export async function deleteAll(provider: Provider, ids: string[]): Promise<string[]> {
  const results = await Promise.allSettled(ids.map((id) => provider.deleteInstance(id)));
  return ids.filter((_, i) => results[i]!.status === 'rejected');
}

/**
 * One burst of 100 creates on the emulator (2 s boot, 20 containers per host, a buffer of 20 slots,
 * starting from one host), beside 100 concurrent creates of the same image with the Docker provider.
 */
export async function awsBurstFigures(n = 100): Promise<Figure[]> {
  const prefix = 'bench-awsb';
  await cleanUp(prefix);
  const rig = await startAwsBurstRig({
    group: 'bench-burst', firstAddress: '127.0.33.2', agentPort: 19_300, perHost: 20, maxSize: 10, bufferSlots: 20, bootDelayMs: 2_000, scaleInCooldownMs: 600_000,
  });
  let ours: BurstResult;
  let calls: number;
  let byAction: Record<string, number>;
  let desired: number;
  try {
    rig.emulator.resetCalls();
    ours = await burst(rig.provider, n, prefix, rig.image);
    calls = rig.emulator.totalCalls();
    byAction = { ...rig.emulator.calls };
    desired = rig.emulator.group('bench-burst')!.desiredCapacity;
    await deleteAll(rig.provider, ours.instances.map((i) => i.id));
  } finally {
    await rig.close();
  }

  const baselinePrefix = 'bench-awsb-docker';
  await cleanUp(baselinePrefix);
  const dockerProvider = new DockerProvider({ defaultImage: rig.image, pullImages: false, publishHost: '127.0.0.1', stopTimeoutSeconds: 1, swarmId: 'bench-aws-baseline' });
  let baseline: BurstResult;
  try {
    await dockerProvider.initialize();
    baseline = await burst(dockerProvider, n, baselinePrefix, rig.image);
    await deleteAll(dockerProvider, baseline.instances.map((i) => i.id));
  } finally {
    await cleanUp(baselinePrefix);
  }

  const m = median(ours.times);
  const b = median(baseline.times);
  const goalCalls = Math.ceil(n / 4);
  return [
    {
      name: `aws-asg burst: ${n} concurrent creates to a running editor (emulator, 2 s boot, 20 per host)`,
      unit: 'ms',
      runs: ours.times.length,
      median: m,
      baselineName: `docker provider: the same ${n} concurrent creates on the local engine`,
      baselineMedian: b,
      ratio: m / b,
      p50: percentile(ours.times, 0.5),
      p95: percentile(ours.times, 0.95),
      baselineP50: percentile(baseline.times, 0.5),
      goal: `a handful of AWS API calls per scaling decision, not per request (fewer than ${goalCalls} for the burst)`,
      meetsGoal: calls < goalCalls && ours.failures.length === 0,
      detail:
        `AWS API calls during the burst: ${calls} (${Object.entries(byAction).map(([k, v]) => `${k} ${v}`).join(', ')}); ` +
        `desired capacity ended at ${desired}; failures ${ours.failures.length} (baseline ${baseline.failures.length}); ` +
        `baseline p95 ${Math.round(percentile(baseline.times, 0.95))} ms; burst wall ${Math.round(ours.wallMs)} ms`,
    },
  ];
}

const EVACUATION_MB = 50;

/** Fills an instance's workspace with `mb` MiB of random bytes (one file) through the provider's exec. */
async function fillWorkspace(provider: Provider, id: string, mb: number): Promise<void> {
  const made = await provider.executeCommand(id, `dd if=/dev/urandom of=/home/coder/project/data.bin bs=1048576 count=${mb} 2>/dev/null && echo ok`, { timeoutMs: 120_000 });
  if (made.stdout.trim() !== 'ok') throw new Error(`could not fill the workspace of ${id}: ${made.stderr}`);
}

/**
 * Two workspaces of 50 MiB each on one host, whose termination an operator starts
 * (TerminateInstanceInAutoScalingGroup, the group launching a replacement): ms from that call to the
 * provider's CompleteLifecycleAction, both workspaces moved with every file verified by SHA-256. Each run
 * terminates the host(s) the two moved to in the run before. Beside it, the same two 50 MiB moves done by hand on the local
 * engine with the Docker provider: stop, export piped into a new instance's import, start, delete the old.
 */
export async function awsEvacuationFigures(runs = 3): Promise<Figure[]> {
  const prefix = 'bench-awse';
  const group = 'bench-evacuate';
  await cleanUp(prefix);
  const rig = await startAwsBurstRig({
    group, firstAddress: '127.0.34.2', agentPort: 19_310, perHost: 2, maxSize: 4, bufferSlots: 0, bootDelayMs: 500, scaleInCooldownMs: 600_000,
    terminationHook: { name: 'bench-evacuate-hook', timeoutMs: 30_000 },
  });
  const ours: number[] = [];
  let detail = '';
  let hostsTerminated = 0;
  try {
    const ids = [`${prefix}-a`, `${prefix}-b`];
    for (const id of ids) {
      await rig.provider.createInstance({ name: id, image: rig.image, resources: { cpu: 0.1, memoryMb: 256 } }, { instanceId: id });
      await fillWorkspace(rig.provider, id, EVACUATION_MB);
    }
    const asg = new AutoScalingClient({ region: 'us-east-1', endpoint: rig.emulator.url, credentials });
    try {
      for (let run = 0; run < runs; run++) {
        await rig.emulator.waitForGroupStable(group, 60_000);
        // The host (or hosts: placement spreads) holding the two, all terminated at once.
        const sources = [...new Set(await Promise.all(ids.map(async (id) => (await rig.provider.getInstance(id))!.providerRef.hostId!)))];
        const started = performance.now();
        await Promise.all(sources.map((source) => asg.send(new TerminateInstanceInAutoScalingGroupCommand({ InstanceId: source, ShouldDecrementDesiredCapacity: false }))));
        const completed = (): boolean => sources.every((source) => rig.emulator.lifecycleActions().some((a) => a.instanceId === source));
        await rig.emulator.waitFor(completed, 300_000, `lifecycle actions of ${sources.join(', ')} completed`);
        ours.push(performance.now() - started);
        hostsTerminated += sources.length;
        for (const source of sources) {
          const action = rig.emulator.lifecycleActions().find((a) => a.instanceId === source)!;
          if (action.timedOut || action.result !== 'CONTINUE') throw new Error(`host ${source}: the lifecycle action was not completed by the provider (${JSON.stringify(action)})`);
        }
        for (const id of ids) {
          const now = await rig.provider.getInstance(id);
          if (now?.status !== 'running' || sources.includes(now.providerRef.hostId!)) throw new Error(`${id} did not arrive running on another host: ${JSON.stringify(now?.status)}`);
        }
      }
      detail = `hosts terminated ${hostsTerminated} over ${runs} runs (placement may spread the two); heartbeats sent ${rig.emulator.calls.RecordLifecycleActionHeartbeat ?? 0}; hook heartbeat timeout 30 s; no spare host: each move waits for the group's replacement`;
    } finally {
      asg.destroy();
    }
    await deleteAll(rig.provider, ids);
  } finally {
    await rig.close();
  }

  const baselinePrefix = 'bench-awse-docker';
  await cleanUp(baselinePrefix);
  const local = new DockerProvider({ defaultImage: rig.image, pullImages: false, publishHost: '127.0.0.1', stopTimeoutSeconds: 1, swarmId: 'bench-evacuate-baseline' });
  const baseline: number[] = [];
  try {
    await local.initialize();
    let ids = [`${baselinePrefix}-a0`, `${baselinePrefix}-b0`];
    for (const id of ids) {
      await local.createInstance({ name: id, image: rig.image, resources: { cpu: 0.1, memoryMb: 256 } }, { instanceId: id });
      await fillWorkspace(local, id, EVACUATION_MB);
    }
    for (let run = 1; run <= runs; run++) {
      const next = ids.map((id) => id.replace(/\d+$/, String(run)));
      const started = performance.now();
      for (const [i, id] of ids.entries()) {
        await local.stopInstance(id);
        await local.createInstance({ name: next[i]!, image: rig.image, resources: { cpu: 0.1, memoryMb: 256 } }, { instanceId: next[i]! });
        await local.importWorkspace(next[i]!, await local.exportWorkspace(id));
        await local.deleteInstance(id);
      }
      baseline.push(performance.now() - started);
      ids = next;
    }
    await deleteAll(local, ids);
  } finally {
    await cleanUp(baselinePrefix);
  }
  const m = median(ours);
  const b = median(baseline);
  return [
    {
      name: `aws-asg: two ${EVACUATION_MB} MiB workspaces moved off a host being terminated (lifecycle hook, emulator)`,
      unit: 'ms',
      runs: ours.length,
      median: m,
      baselineName: `docker provider: the same two ${EVACUATION_MB} MiB moves by hand on the local engine (stop, export into a new instance, delete)`,
      baselineMedian: b,
      ratio: m / b,
      spread: [Math.min(...ours), Math.max(...ours)],
      baselineSpread: [Math.min(...baseline), Math.max(...baseline)],
      detail,
    },
  ];
}
