/**
 * The Fly provider against the Machines API emulator: the shared contract over the real fly-admin client
 * and real HTTP, each Machine a real code-server container; then what is Fly-specific (a refused token,
 * retries on 429/5xx, Machines destroyed behind the provider's back, /wait timeouts, API calls per create).
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { FlyClientConstructor } from '../../providers/fly/fly-api.js';
import { FlyProvider, type FlyProviderOptions } from '../../providers/fly/fly-provider.js';
import { FLY_MACHINE_STATES, META_INSTANCE, mapMachineState, volumeName } from '../../providers/fly/fly-mapping.js';
import { INSTANCE_STATUSES, type InstanceConfig } from '../../providers/provider.js';
import { docker, httpStatus, TEST_IMAGE } from '../helpers/docker.js';
import { removeFlyEmulatorLeftovers, startFlyEmulator, type FlyEmulator } from '../emulators/fly/index.js';
import { describeProviderContract } from './provider-contract.js';

const CONTRACT_APP = 'vscode-swarm-contract';
const FLY_APP = 'vscode-swarm-fly-tests';
const SWARM = 'fly-contract-swarm';
let emulator: FlyEmulator;

beforeAll(async () => {
  await removeFlyEmulatorLeftovers(docker);
  emulator = await startFlyEmulator();
});

afterAll(async () => {
  await emulator?.close();
});

function makeProvider(app: string, overrides: Partial<FlyProviderOptions> = {}): FlyProvider {
  return new FlyProvider({
    apiToken: emulator.token,
    apiUrl: emulator.url,
    app,
    swarmId: SWARM,
    org: 'personal',
    region: 'iad',
    defaultImage: TEST_IMAGE,
    readinessTimeoutMs: 60_000,
    stopTimeoutSeconds: 2,
    retry: { retries: 6, minTimeoutMs: 100, maxTimeoutMs: 1_500 },
    ...overrides,
  });
}

function flyClient(token = emulator.token): InstanceType<typeof FlyClientConstructor> {
  return new FlyClientConstructor(token, { apiUrl: emulator.url });
}

/** Destroys what a suite left in an app, straight through the API (the emulator removes the rest on close). */
async function cleanUpApp(app: string, prefix: string): Promise<void> {
  const client = flyClient();
  const exists = await client.App.getApp(app).then(
    () => true,
    () => false,
  );
  if (!exists) return;
  emulator.setRateLimit(false); // clean-up is not what is under test
  try {
    await destroyAll(client, app, prefix);
  } finally {
    emulator.setRateLimit({});
  }
}

async function destroyAll(client: InstanceType<typeof FlyClientConstructor>, app: string, prefix: string): Promise<void> {
  for (const m of await client.Machine.listMachines(app)) {
    const meta = (m.config as { metadata?: Record<string, string> }).metadata ?? {};
    if (meta[META_INSTANCE]?.startsWith(prefix)) await client.Machine.deleteMachine({ app_name: app, machine_id: m.id, force: true }).catch(() => undefined);
  }
  const volumePrefix = volumeName(prefix).slice(0, 3 + prefix.length);
  for (let attempt = 0; attempt < 20; attempt++) {
    const left = (await client.Volume.listVolumes(app)).filter((v) => v.name.startsWith(volumePrefix));
    if (!left.length) return;
    await Promise.all(left.map((v) => client.Volume.deleteVolume({ app_name: app, volume_id: v.id }).catch(() => undefined)));
    await new Promise((r) => setTimeout(r, 100));
  }
}

describeProviderContract('fly (Machines API emulator)', {
  makeProvider: () => makeProvider(CONTRACT_APP),
  image: TEST_IMAGE,
  namePrefix: 'contract-fly',
  cleanUp: () => (emulator ? cleanUpApp(CONTRACT_APP, 'contract-fly') : Promise.resolve()),
});

describe('fly provider specifics', () => {
  let provider: FlyProvider;
  const config = (name: string): InstanceConfig & { image: string } => ({
    name,
    image: TEST_IMAGE,
    resources: { cpu: 1, memoryMb: 1024 },
    env: { WORKSPACE_OWNER: 'fly' },
  });

  beforeAll(async () => {
    const contract = emulator.log.filter((c) => c.path.includes(`/apps/${CONTRACT_APP}`));
    console.info(
      `fly: the contract suite made ${contract.length} API calls; ${contract.filter((c) => c.status === 429).length} answered 429 (rate limit) and were retried`,
    );
    provider = makeProvider(FLY_APP);
    await provider.initialize();
  });
  afterAll(async () => {
    await cleanUpApp(FLY_APP, 'fly-');
  });

  it('maps every documented Machine state into the shared set', () => {
    for (const state of FLY_MACHINE_STATES) {
      const { status } = mapMachineState(state);
      expect(INSTANCE_STATUSES).toContain(status);
      expect(status, state).not.toBe('unknown');
    }
    expect(mapMachineState('started').status).toBe('running');
    expect(mapMachineState('something-new').status).toBe('unknown');
  });

  it('refuses with one clear error, and no retry storm, a token the API does not accept', async () => {
    emulator.resetCalls();
    const wrong = makeProvider(FLY_APP, { apiToken: 'not-the-token' });
    const err = await wrong.initialize().then(
      () => undefined,
      (e: unknown) => e,
    );
    expect(err).toMatchObject({ code: 'PROVIDER_UNAVAILABLE', message: expect.stringMatching(/refused the token.*401.*FLY_API_TOKEN/s) });
    expect(emulator.totalCalls()).toBe(1);
    expect(emulator.log[0]).toMatchObject({ endpoint: 'GET /v1/apps/{app}', status: 401 });
  });

  it('asks for a token before calling anything when none is set', async () => {
    emulator.resetCalls();
    const none = makeProvider(FLY_APP, { apiToken: undefined, env: {} });
    await expect(none.initialize()).rejects.toMatchObject({ code: 'PROVIDER_UNAVAILABLE', message: expect.stringMatching(/FLY_API_TOKEN/) });
    expect(emulator.totalCalls()).toBe(0);
  });

  it('says so when the Machines API cannot be reached', async () => {
    const closed = await import('node:net').then(
      (net) =>
        new Promise<number>((resolve) => {
          const server = net.createServer();
          server.listen(0, '127.0.0.1', () => {
            const { port } = server.address() as { port: number };
            server.close(() => resolve(port));
          });
        }),
    );
    const away = makeProvider(FLY_APP, { apiUrl: `http://127.0.0.1:${closed}`, retry: { retries: 2, minTimeoutMs: 10, maxTimeoutMs: 20 } });
    await expect(away.initialize()).rejects.toMatchObject({ code: 'PROVIDER_UNAVAILABLE', message: expect.stringMatching(/cannot reach the Machines API.*ECONNREFUSED/) });
  });

  it('refuses sizes Fly does not sell, before any API call', async () => {
    emulator.resetCalls();
    for (const resources of [{ cpu: 3, memoryMb: 2048 }, { cpu: 1, memoryMb: 1000 }, { cpu: 1, memoryMb: 4096 }, { cpu: 2, memoryMb: 256 }]) {
      await expect(provider.createInstance({ ...config('fly-size'), resources }, { instanceId: 'fly-size' })).rejects.toMatchObject({ code: 'INVALID_INPUT' });
    }
    expect(emulator.totalCalls()).toBe(0);
  });

  it('creates with a bounded number of API calls, and waits on /wait rather than polling', async () => {
    emulator.resetCalls();
    emulator.setRateLimit(false); // count what the provider asks for, not the emulator's throttling
    const created = await provider.createInstance(config('fly-calls'), { instanceId: 'fly-calls' }).finally(() => emulator.setRateLimit({}));
    expect(created.status).toBe('running');
    expect(await httpStatus(`${created.endpoint!.url}/healthz`)).toBe(200);
    const calls = emulator.totalCalls();
    console.info(`fly: API calls for one create: ${calls}`, { ...emulator.calls });
    expect(emulator.calls['GET /v1/apps/{app}/machines/{machine}/wait']).toBe(1);
    expect(calls).toBeLessThanOrEqual(7);
    expect(created.providerRef).toMatchObject({ app: FLY_APP, machineId: expect.any(String), instanceId: expect.any(String), volume: expect.stringMatching(/^vol_/) });
  });

  it('leaves the Machines of another swarm sharing the app alone', async () => {
    const other = makeProvider(FLY_APP, { swarmId: 'another-swarm' });
    await other.initialize();
    expect(await other.listInstances()).toEqual([]);
    expect(await other.getInstance('fly-calls')).toBeNull();
    expect(await other.deleteInstance('fly-calls')).toBe(false);
    expect((await provider.getInstance('fly-calls'))?.status).toBe('running');
  });

  it('resizes a running Machine: the API records the new guest, the container runs with it, the editor answers', async () => {
    const before = await provider.getInstance('fly-calls');
    const machineId = before!.providerRef.machineId!;
    const recorded = async () => (await flyClient().Machine.getMachine({ app_name: FLY_APP, machine_id: machineId })) as unknown as { state: string; instance_id: string; config: { guest: Record<string, unknown> } };
    expect((await recorded()).config.guest).toMatchObject({ cpu_kind: 'shared', cpus: 1, memory_mb: 1024 });

    const updated = await provider.updateInstance('fly-calls', { resources: { cpu: 2, memoryMb: 2048 } });
    expect(updated).toMatchObject({ status: 'running', updateMode: 'recreate', config: { resources: { cpu: 2, memoryMb: 2048 } } });
    // As the Machines API records it: a new version with the guest that was asked for.
    const after = await recorded();
    expect(after.config.guest).toMatchObject({ cpu_kind: 'shared', cpus: 2, memory_mb: 2048 });
    expect(after.state).toBe('started');
    expect(after.instance_id).not.toBe(before!.providerRef.instanceId);
    // And as the Machine runs: its container has the new limits.
    const { HostConfig } = await docker.getContainer(emulator.machine(FLY_APP, machineId)!.containerId!).inspect();
    expect(HostConfig.Memory).toBe(2048 * 2 ** 20);
    expect(HostConfig.NanoCpus).toBe(Math.min(2, (await docker.info()).NCPU) * 1e9);
    expect((await provider.getInstance('fly-calls'))?.config.resources).toEqual({ cpu: 2, memoryMb: 2048 });
    expect(await httpStatus(`${updated.endpoint!.url}/healthz`, 5_000)).toBe(200);
  });

  it('re-waits through /wait timeouts (408) until the Machine is up', async () => {
    await provider.stopInstance('fly-calls');
    emulator.setMaxWaitSeconds(1);
    emulator.setStartDelay(2_500);
    try {
      emulator.resetCalls();
      const started = await provider.startInstance('fly-calls');
      expect(started.status).toBe('running');
      const waits = emulator.log.filter((c) => c.endpoint.endsWith('/wait'));
      expect(waits.filter((c) => c.status === 408).length).toBeGreaterThanOrEqual(2);
      expect(waits.at(-1)?.status).toBe(200);
    } finally {
      emulator.setMaxWaitSeconds(60);
      emulator.setStartDelay(0);
    }
  });

  it('updates a stopped instance without starting it; the change applies at the next start', async () => {
    const stopped = await provider.stopInstance('fly-calls');
    expect(stopped.status).toBe('stopped');
    const updated = await provider.updateInstance('fly-calls', { env: { WORKSPACE_OWNER: 'while-stopped' } });
    expect(updated).toMatchObject({ status: 'stopped', updateMode: 'recreate', config: { env: { WORKSPACE_OWNER: 'while-stopped' } } });
    expect(updated.providerRef.instanceId).not.toBe(stopped.providerRef.instanceId);
    const started = await provider.startInstance('fly-calls');
    expect((await provider.executeCommand('fly-calls', 'echo "$WORKSPACE_OWNER"')).stdout).toBe('while-stopped\n');
    expect(started.status).toBe('running');
    // Nothing to change: no call to the update endpoint, no restart.
    emulator.resetCalls();
    expect((await provider.updateInstance('fly-calls', { env: { WORKSPACE_OWNER: 'while-stopped' } })).updateMode).toBe('none');
    expect(emulator.calls['POST /v1/apps/{app}/machines/{machine}']).toBeUndefined();
  });

  it('resumes a suspended Machine, which it reports as stopped', async () => {
    const before = await provider.getInstance('fly-calls');
    const machineId = before!.providerRef.machineId!;
    const res = await fetch(`${emulator.url}/v1/apps/${FLY_APP}/machines/${machineId}/suspend`, { method: 'POST', headers: { authorization: `Bearer ${emulator.token}` } });
    expect(res.status).toBe(200);
    await flyClient().Machine.waitMachine({ app_name: FLY_APP, machine_id: machineId, state: 'suspended' as never, timeout: '10' });
    const suspended = await provider.getInstance('fly-calls');
    expect(suspended).toMatchObject({ status: 'stopped', statusReason: expect.stringMatching(/suspended/) });
    expect(suspended?.endpoint).toBeUndefined();
    const resumed = await provider.startInstance('fly-calls');
    expect(resumed.status).toBe('running');
    expect(await httpStatus(`${resumed.endpoint!.url}/healthz`)).toBe(200);
  });

  it('retries 429 and 5xx answers with backoff and succeeds', async () => {
    emulator.resetCalls();
    emulator.failNext(2, 503, /^GET \/v1\/apps\/\{app\}\/machines$/);
    emulator.failNext(1, 429, /^GET \/v1\/apps\/\{app\}\/machines$/);
    expect((await provider.listInstances()).map((i) => i.id)).toContain('fly-calls');
    const lists = emulator.log.filter((c) => c.endpoint === 'GET /v1/apps/{app}/machines');
    expect(lists.slice(0, 3).map((c) => c.status)).toEqual([503, 503, 429]); // then 200 (after a real 429 or two, at worst)
    expect(lists.at(-1)?.status).toBe(200);

    // A burst of reads beyond the per-app read limit: the 429s are absorbed by retries.
    emulator.resetCalls();
    const results = await Promise.all(Array.from({ length: 16 }, () => provider.getInstance('fly-calls')));
    expect(results.every((r) => r?.status === 'running')).toBe(true);
    expect(emulator.log.some((c) => c.status === 429)).toBe(true);

    // A fraction of all reads failing at random (5xx and 429).
    emulator.setFaults({ rate: 0.3, statuses: [500, 502, 503, 429], match: /^GET / });
    try {
      emulator.resetCalls();
      for (let i = 0; i < 8; i++) expect((await provider.getInstance('fly-calls'))?.status).toBe('running');
      expect(emulator.log.filter((c) => c.status !== 200).length).toBeGreaterThan(0);
    } finally {
      emulator.setFaults(undefined);
    }
  });

  it('retries faults during a create and still makes exactly one Machine', async () => {
    emulator.resetCalls();
    emulator.failNext(1, 429, /^POST \/v1\/apps\/\{app\}\/machines$/);
    emulator.failNext(1, 502, /\/wait$/);
    emulator.failNext(1, 500, /^GET \/v1\/apps\/\{app\}\/machines\/\{machine\}$/);
    const created = await provider.createInstance(config('fly-faults'), { instanceId: 'fly-faults' });
    expect(created.status).toBe('running');
    const creates = emulator.log.filter((c) => c.endpoint === 'POST /v1/apps/{app}/machines').map((c) => c.status);
    expect(creates[0]).toBe(429);
    expect(creates.filter((status) => status === 200)).toEqual([200]);
    expect((await provider.listInstances({ name: 'fly-faults' })).length).toBe(1);
    expect(await provider.deleteInstance('fly-faults')).toBe(true);
  });

  it('does not retry what Fly refused, and removes what a failed create made', async () => {
    emulator.resetCalls();
    const missing = 'vscode-swarm/not-built:0.0.0';
    await expect(provider.createInstance({ ...config('fly-bad-image'), image: missing }, { instanceId: 'fly-bad-image' })).rejects.toMatchObject({
      code: 'PROVIDER_ERROR',
      message: expect.stringMatching(/422/),
    });
    expect(emulator.calls['POST /v1/apps/{app}/machines']).toBe(1);
    expect(emulator.calls['POST /v1/apps/{app}/volumes']).toBe(1);
    expect(emulator.calls['DELETE /v1/apps/{app}/volumes/{volume}']).toBe(1);
    const volumes = await flyClient().Volume.listVolumes(FLY_APP);
    expect(volumes.map((v) => v.name)).not.toContain(volumeName('fly-bad-image', SWARM));
    expect(await provider.getInstance('fly-bad-image')).toBeNull();
  });

  it('reports a Machine whose container died behind its back as stopped, and starts it again', async () => {
    const before = await provider.getInstance('fly-calls');
    const machine = emulator.machine(FLY_APP, before!.providerRef.machineId!);
    await docker.getContainer(machine!.containerId!).remove({ force: true });
    expect((await provider.getInstance('fly-calls'))?.status).toBe('stopped');
    const again = await provider.startInstance('fly-calls');
    expect(again.status).toBe('running');
    expect(await httpStatus(`${again.endpoint!.url}/healthz`)).toBe(200);
  });

  it('forgets a Machine destroyed behind its back', async () => {
    const before = await provider.getInstance('fly-calls');
    const machineId = before!.providerRef.machineId!;
    const client = flyClient();
    await expect(client.Machine.deleteMachine({ app_name: FLY_APP, machine_id: machineId })).rejects.toThrow(/^412: /); // running: refused unless forced
    await client.Machine.deleteMachine({ app_name: FLY_APP, machine_id: machineId, force: true });
    await client.Machine.waitMachine({ app_name: FLY_APP, machine_id: machineId, state: 'destroyed' as never, timeout: '10' });
    expect(await provider.getInstance('fly-calls')).toBeNull();
    expect((await provider.listInstances()).map((i) => i.id)).not.toContain('fly-calls');
    await expect(provider.startInstance('fly-calls')).rejects.toMatchObject({ code: 'NOT_FOUND' });
    expect(await provider.deleteInstance('fly-calls')).toBe(true); // the workspace volume was still there
    expect(await provider.deleteInstance('fly-calls')).toBe(false);
  });

  it('says that logs are not supported, as its capabilities do', async () => {
    expect(provider.getCapabilities()).toMatchObject({ logs: false, exec: true, liveResize: false, persistentWorkspace: true });
    await expect(provider.getInstanceLogs('fly-calls')).rejects.toMatchObject({ code: 'PROVIDER_ERROR', message: expect.stringMatching(/not supported by the fly provider/) });
  });
});
