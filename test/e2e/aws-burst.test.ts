/**
 * A burst of 100 concurrent creates on the AWS provider over the AWS emulator: 2 s emulated boot, 20
 * containers per host, a buffer of 20 slots, starting from one host (min 1). Every call succeeds, no host
 * holds more than 20, no two instances share a container or a host:port, the desired capacity ends at
 * ⌈100/20⌉ + 1 buffer host; deleting all 100 scales back in to the minimum after the (short) cool-down.
 * Then the same burst with 30% of AWS calls failing (throttling and 5xx). The stand-in image (busybox
 * httpd answering /healthz like code-server) keeps 100 containers within a 2-core machine.
 * Build first: `npx tsc -p .`.
 */
import { existsSync } from 'node:fs';
import path from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { burst, deleteAll, REPO_ROOT, startAwsBurstRig, type AwsBurstRig, type BurstResult } from '../bench/aws-figures.js';
import { percentile } from '../bench/figures.js';
import { createLogger } from '../../src/logger.js';
import { cleanUp } from '../helpers/docker.js';
import { editorStatus } from '../helpers/editor-probe.js';

const N = 100;
const PER_HOST = 20;
const BUFFER = 20;
const GROUP = 'burst-asg';
let rig: AwsBurstRig | undefined;

afterEach(async () => {
  await rig?.close();
  rig = undefined;
});

async function checkBurst(r: AwsBurstRig, result: BurstResult, label: string): Promise<void> {
  const { instances, failures, times } = result;
  expect(failures.map((f) => f.message)).toEqual([]);
  expect(instances).toHaveLength(N);
  expect(instances.every((i) => i.status === 'running' && i.providerType === 'aws-asg')).toBe(true);
  const perHost = new Map<string, number>();
  for (const i of instances) perHost.set(i.providerRef.hostId!, (perHost.get(i.providerRef.hostId!) ?? 0) + 1);
  expect(Math.max(...perHost.values())).toBeLessThanOrEqual(PER_HOST);
  expect(new Set(instances.map((i) => i.providerRef.containerId)).size).toBe(N);
  // Each behind its host's proxy, named by its own Host header.
  expect(new Set(instances.map((i) => `${i.endpoint!.host}:${i.endpoint!.port} ${i.endpoint!.hostHeader}`)).size).toBe(N);
  for (const i of instances) expect(i.endpoint).toMatchObject({ host: i.providerRef.hostIp, hostHeader: `${i.id}.localhost` });
  // Docker agrees: one running container per instance, at most 20 per host.
  const containers = (await r.hostContainers()).filter((c) => c.state === 'running');
  expect(containers).toHaveLength(N);
  const dockerPerHost = new Map<string, number>();
  for (const c of containers) dockerPerHost.set(c.hostId, (dockerPerHost.get(c.hostId) ?? 0) + 1);
  expect(Math.max(...dockerPerHost.values())).toBeLessThanOrEqual(PER_HOST);
  const sample = [instances[0]!, instances[N - 1]!];
  for (const i of sample) expect(await editorStatus(i, r.provider)).toBe(200);
  const group = r.emulator.group(GROUP)!;
  const expected = Math.ceil(N / PER_HOST) + Math.ceil(BUFFER / PER_HOST);
  // On a miss, show who changed the desired capacity and what the provider believed.
  if (group.desiredCapacity !== expected) console.info(group.activities.map((a) => a.cause).filter((c) => /user request/.test(c)), r.provider.hostSummary());
  expect(group.desiredCapacity).toBe(expected);
  console.info(
    `aws burst (${label}): p50 ${Math.round(percentile(times, 0.5))} ms, p95 ${Math.round(percentile(times, 0.95))} ms, wall ${Math.round(result.wallMs)} ms; ` +
      `AWS calls ${r.emulator.totalCalls()} (${r.emulator.log.filter((c) => c.fault).length} failed by injection)`,
    { ...r.emulator.calls },
    `hosts used: ${perHost.size}, per host: ${[...perHost.values()].join(',')}`,
  );
}

async function scaleBackIn(r: AwsBurstRig, ids: string[]): Promise<void> {
  expect(await deleteAll(r.provider, ids)).toEqual([]);
  expect(await r.provider.listInstances()).toEqual([]);
  await r.emulator.waitFor(
    () => {
      const g = r.emulator.group(GROUP)!;
      return g.desiredCapacity === 1 && g.instances.length === 1 && g.instances[0]!.lifecycleState === 'InService';
    },
    60_000,
    'the group back at its min size',
  );
  // Nothing leaked: no container or volume of any host's agent is left.
  expect(await r.hostContainers()).toEqual([]);
}

describe('aws-asg burst (emulator, 100 concurrent creates, stand-in image)', () => {
  if (!existsSync(path.join(REPO_ROOT, 'dist/src/cli.js'))) throw new Error('dist/src/cli.js is missing: run `npx tsc -p .` first');

  it('places 100 concurrent creates within capacity, scales out once to ⌈100/20⌉ + buffer, and back in to min', async () => {
    await cleanUp('awsb');
    rig = await startAwsBurstRig({
      group: GROUP, firstAddress: '127.0.32.2', agentPort: 19_200, perHost: PER_HOST, maxSize: 10, bufferSlots: BUFFER, bootDelayMs: 2_000, scaleInCooldownMs: 2_000,
      provider: process.env.AWS_BURST_LOG ? { logger: createLogger('info') } : {},
    });
    rig.emulator.resetCalls();
    const result = await burst(rig.provider, N, 'awsb', rig.image);
    await checkBurst(rig, result, 'no faults');
    // A handful of calls per scaling decision, not per request.
    expect(rig.emulator.calls.SetDesiredCapacity ?? 0).toBeLessThanOrEqual(3);
    expect(rig.emulator.totalCalls()).toBeLessThan(N / 2);
    await scaleBackIn(rig, result.instances.map((i) => i.id));
  }, 240_000);

  it('still ends with every instance running and nothing leaked when 30% of AWS calls fail', async () => {
    await cleanUp('awsf');
    rig = await startAwsBurstRig({
      group: GROUP, firstAddress: '127.0.34.2', agentPort: 19_200, perHost: PER_HOST, maxSize: 10, bufferSlots: BUFFER, bootDelayMs: 2_000, scaleInCooldownMs: 2_000,
      // 15% throttled, then 15% of all calls (0.15 / 0.85 of the rest) answered with a 5xx: 30% in all.
      faults: [
        // The scaling decision itself is throttled at least once, whatever the dice say.
        { kind: 'throttle', actions: ['SetDesiredCapacity'], count: 1 },
        { kind: 'throttle', rate: 0.15 },
        { kind: 'internal', rate: 0.15 / 0.85 },
      ],
    });
    rig.emulator.resetCalls();
    const result = await burst(rig.provider, N, 'awsf', rig.image);
    await checkBurst(rig, result, '30% of AWS calls failing');
    const failed = rig.emulator.log.filter((c) => c.fault).length;
    expect(failed).toBeGreaterThan(0);
    await scaleBackIn(rig, result.instances.map((i) => i.id));
  }, 240_000);
});
