/**
 * Workspaces move between the local Docker engine and Fly (its Machines API emulator, whose machines are
 * real code-server containers), with every file verified byte for byte; faults roll back to the source;
 * a controller that dies at any step comes back to exactly one intact instance and nothing leaked.
 */
import { readdir } from 'node:fs/promises';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { MIGRATION_STEPS, MigrationManager, SimulatedCrash, type MigrationStep } from '../../src/migration/migration-manager.js';
import { manifestOf, type Manifest } from '../../src/migration/workspace-archive.js';
import { createSwarm, startSwarmServices, type SwarmServices } from '../../src/controller/create-swarm.js';
import type { SwarmConfig } from '../../src/config.js';
import type { SwarmController } from '../../src/controller/swarm-controller.js';
import type { ProviderType } from '../../providers/provider.js';
import { removeFlyEmulatorLeftovers, startFlyEmulator, type FlyEmulator } from '../emulators/fly/index.js';
import { TEST_IMAGE, cleanUp, containersNamed, docker, makeStateDir, testConfig } from '../helpers/docker.js';

const PREFIX = 'e2e-mig';
const FLY_APP = 'vscode-swarm-migration';

/** Files of several shapes: nested, binary, a space in the name, empty. */
const WRITE_FILES = [
  'mkdir -p src/deep/er',
  'printf "hello from docker\\n" > src/deep/er/hello.txt',
  'head -c 300000 /dev/urandom > blob.bin',
  'printf "spaced" > "with space.txt"',
  ': > empty.txt',
].join(' && ');

describe('migration between docker and fly', () => {
  let emulator: FlyEmulator;
  let stateDir: string;
  let config: SwarmConfig;
  let services: SwarmServices;
  const env = (): NodeJS.ProcessEnv => ({ ...process.env, FLY_API_TOKEN: emulator.token });

  const boot = async (): Promise<SwarmServices> => startSwarmServices(createSwarm(config, { env: env() }));
  const manifestOn = async (controller: SwarmController, type: ProviderType, id: string): Promise<Manifest> =>
    manifestOf(await (await controller.connectedProvider(type)).exportWorkspace!(id));
  const populated = async (controller: SwarmController, name: string) => {
    const { instance } = await controller.createInstance({ name });
    const wrote = await controller.executeCommand(instance.id, WRITE_FILES);
    expect(wrote.exitCode, wrote.stderr).toBe(0);
    return { instance, manifest: await manifestOn(controller, 'docker', instance.id) };
  };

  beforeAll(async () => {
    await cleanUp(PREFIX);
    await removeFlyEmulatorLeftovers(docker);
    emulator = await startFlyEmulator({ rateLimit: false });
    stateDir = await makeStateDir(PREFIX);
    config = testConfig(stateDir, {
      exec: { enabled: true },
      idle: { enabled: false },
      health: { enabled: false },
      providers: { fly: { enabled: true, app: FLY_APP, apiUrl: emulator.url, image: TEST_IMAGE } },
    });
    services = await boot();
  });
  afterAll(async () => {
    await services?.close();
    await emulator?.close();
    await cleanUp(PREFIX, stateDir);
  });

  it.each(['stop-and-recreate', 'create-then-stop'] as const)('moves a workspace to fly and back with %s, every file intact', async (strategy) => {
    const { controller, migrations } = services;
    const { instance, manifest } = await populated(controller, `${PREFIX}-${strategy}`);
    expect(Object.keys(manifest).sort()).toEqual(['blob.bin', 'empty.txt', 'src/deep/er/hello.txt', 'with space.txt']);

    const plan = await migrations.plan(instance.id, 'fly', strategy);
    expect(plan.steps.map((s) => s.name)).toEqual([...MIGRATION_STEPS]);
    expect(plan.workspaceBytes).toBe(300_000 + 18 + 6);

    const there = await (await migrations.start(instance.id, 'fly', { strategy })).wait;
    expect(there.status, there.reason).toBe('completed');
    expect(there.steps.every((s) => s.status === 'completed')).toBe(true);
    expect(there.downtimeMs).toBeGreaterThan(0);
    const onFly = await controller.getInstance(instance.id);
    expect(onFly).toMatchObject({ providerType: 'fly', status: 'running', url: instance.url });
    expect(await manifestOn(controller, 'fly', instance.id)).toEqual(manifest);
    expect(await containersNamed(`${PREFIX}-${strategy}`)).toEqual([]); // nothing left on docker
    expect((await controller.executeCommand(instance.id, 'cat src/deep/er/hello.txt')).stdout).toBe('hello from docker\n');

    const back = await (await migrations.start(instance.id, 'docker', { strategy })).wait;
    expect(back.status, back.reason).toBe('completed');
    expect(await controller.getInstance(instance.id)).toMatchObject({ providerType: 'docker', status: 'running' });
    expect(await manifestOn(controller, 'docker', instance.id)).toEqual(manifest);
    expect(await (await controller.connectedProvider('fly')).getInstance(instance.id)).toBeNull();
    expect((await migrations.list({ instanceId: instance.id })).map((m) => m.status)).toEqual(['completed', 'completed']);
    // The archives travelled through files beside the records; none is left behind.
    expect((await readdir(path.join(stateDir, 'migrations'))).filter((n) => n.endsWith('.tar'))).toEqual([]);
  });

  it('stops copying a workspace larger than a migration may carry, and leaves the source as it was', async () => {
    const { controller } = services;
    const { instance, manifest } = await populated(controller, `${PREFIX}-big`);
    // The workspace holds 300 KB; this manager carries at most 100 KB.
    const small = new MigrationManager({ controller, stateDir, maxWorkspaceBytes: 100_000 });
    const failed = await (await small.start(instance.id, 'fly')).wait;
    expect(failed.status).toBe('failed');
    expect(failed.reason).toMatch(/export-source-config failed: the workspace of .* is larger than the 100000 bytes a transfer may carry; stopped after \d+ bytes/);
    expect(await (await controller.connectedProvider('fly')).getInstance(instance.id)).toBeNull();
    expect(await controller.getInstance(instance.id)).toMatchObject({ providerType: 'docker', status: 'running' });
    expect(await manifestOn(controller, 'docker', instance.id)).toEqual(manifest);
    expect((await readdir(path.join(stateDir, 'migrations'))).filter((n) => n.endsWith('.tar'))).toEqual([]);
    await controller.deleteInstance(instance.id);
  });

  it('refuses what cannot work and changes nothing', async () => {
    const { controller, migrations } = services;
    const { instance } = await controller.createInstance({ name: `${PREFIX}-refuse` });
    await expect(migrations.start(instance.id, 'docker')).rejects.toMatchObject({ code: 'INVALID_INPUT', field: 'target' });
    await expect(migrations.start(instance.id, 'aws-asg')).rejects.toMatchObject({ code: 'PROVIDER_UNKNOWN' });

    const running = await migrations.start(instance.id, 'fly', { strategy: 'create-then-stop' });
    await expect(migrations.start(instance.id, 'fly')).rejects.toMatchObject({ code: 'CONFLICT' });
    await expect(controller.stopInstance(instance.id)).rejects.toMatchObject({ code: 'CONFLICT', message: expect.stringMatching(/being migrated/) });
    const done = await running.wait;
    expect(done.status, done.reason).toBe('completed');
    await expect(migrations.cancel(done.id)).rejects.toMatchObject({ code: 'CONFLICT', message: expect.stringMatching(/is completed/) });
    await expect(migrations.get('mig-nope')).rejects.toMatchObject({ code: 'INVALID_INPUT' });
  });

  it('rolls back when the target fails to start, leaving the source as it was', async () => {
    const { controller, migrations } = services;
    const { instance, manifest } = await populated(controller, `${PREFIX}-badtarget`);
    emulator.failNext(1, 422, /POST \/v1\/apps\/[^/]+\/machines$/);
    const result = await (await migrations.start(instance.id, 'fly')).wait;
    expect(result.status).toBe('failed');
    expect(result.reason).toMatch(/^create-target failed: .*the source is as it was$/);
    expect(await controller.getInstance(instance.id)).toMatchObject({ providerType: 'docker', status: 'running' });
    expect(await manifestOn(controller, 'docker', instance.id)).toEqual(manifest);
    expect(await (await controller.connectedProvider('fly')).getInstance(instance.id)).toBeNull();
  });

  it('cancels, and a source that vanishes before its files are copied fails cleanly', async () => {
    const { controller } = services;
    const { instance } = await populated(controller, `${PREFIX}-cancel`);
    let open!: () => void;
    const gate = { promise: new Promise<void>((resolve) => (open = resolve)), resolve: () => open() };
    const manager = new MigrationManager({
      controller,
      stateDir,
      beforeStep: async (_m, step) => {
        if (step === 'create-target') await gate.promise;
      },
    });
    const running = await manager.start(instance.id, 'fly', { strategy: 'create-then-stop' });
    const cancelled = manager.cancel(running.migration.id);
    gate.resolve();
    expect((await cancelled).status).toBe('cancelled');
    expect(await controller.getInstance(instance.id)).toMatchObject({ providerType: 'docker', status: 'running' });

    const vanishing = new MigrationManager({
      controller,
      stateDir,
      beforeStep: async (_m, step) => {
        if (step === 'export-source-config') for (const c of await containersNamed(`${PREFIX}-cancel`)) await docker.getContainer(c.Id).remove({ force: true });
      },
    });
    const failed = await (await vanishing.start(instance.id, 'fly')).wait;
    expect(failed.status).toBe('failed');
    expect(failed.reason).toMatch(/export-source-config failed/);
    expect(await (await controller.connectedProvider('fly')).getInstance(instance.id)).toBeNull();
    expect((await controller.getInstance(instance.id)).status).toBe('failed');
  });

  describe.each([...MIGRATION_STEPS])('the controller dies before %s', (step: MigrationStep) => {
    it('comes back with exactly one intact instance and nothing leaked', async () => {
      const name = `${PREFIX}-crash-${MIGRATION_STEPS.indexOf(step)}`;
      const { instance, manifest } = await populated(services.controller, name);
      const dying = new MigrationManager({
        controller: services.controller,
        stateDir,
        beforeStep: (_m, at) => {
          if (at === step) throw new SimulatedCrash(`dies before ${step}`);
        },
      });
      const crashed = await (await dying.start(instance.id, 'fly')).wait;
      expect(crashed.status).toBe('in-progress'); // as the dead process left it on disk

      // A new controller over the same state directory settles it on start-up.
      await services.close();
      services = await boot();
      const { controller } = services;
      const [settled] = await services.migrations.list({ instanceId: instance.id });
      const forward = MIGRATION_STEPS.indexOf(step) > MIGRATION_STEPS.indexOf('verify-target');
      expect(settled!.status, settled!.reason).toBe(forward ? 'completed' : 'failed');
      const home: ProviderType = forward ? 'fly' : 'docker';
      const away: ProviderType = forward ? 'docker' : 'fly';
      expect(controller.registry.findByName(name).length).toBe(1);
      expect(await controller.getInstance(instance.id)).toMatchObject({ providerType: home, status: 'running' });
      expect(await manifestOn(controller, home, instance.id)).toEqual(manifest);
      expect(await (await controller.connectedProvider(away)).getInstance(instance.id)).toBeNull();
    });
  });
});
