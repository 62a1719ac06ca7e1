/**
 * Figures for the Fly provider, the health monitor and migrations, each beside a baseline of the same run.
 */
import http from 'node:http';
import type { Provider, ProviderCapabilities, VSCodeInstance } from '../../providers/provider.js';
import { createSwarm, startSwarmServices, type SwarmServices } from '../../src/controller/create-swarm.js';
import { SwarmController } from '../../src/controller/swarm-controller.js';
import { parseConfig } from '../../src/config.js';
import { HealthMonitor } from '../../src/health/health-monitor.js';
import { InstanceRegistry } from '../../src/registry/instance-registry.js';
import { removeFlyEmulatorLeftovers, startFlyEmulator, type FlyEmulator } from '../emulators/fly/index.js';
import { startEchoUpstream } from '../helpers/echo-upstream.js';
import { TEST_IMAGE, cleanUp, docker, makeStateDir, testConfig } from '../helpers/docker.js';
import { figure, median, time, type Figure } from './figures.js';
import { rm } from 'node:fs/promises';

const FLY_APP = 'vscode-swarm-bench';

async function withDockerAndFly<T>(prefix: string, work: (services: SwarmServices, emulator: FlyEmulator) => Promise<T>): Promise<T> {
  await cleanUp(prefix);
  await removeFlyEmulatorLeftovers(docker);
  const emulator = await startFlyEmulator({ rateLimit: false });
  const stateDir = await makeStateDir(prefix);
  const config = testConfig(stateDir, {
    exec: { enabled: true },
    idle: { enabled: false },
    health: { enabled: false },
    providers: { fly: { enabled: true, app: FLY_APP, apiUrl: emulator.url, image: TEST_IMAGE } },
  });
  const services = await startSwarmServices(createSwarm(config, { env: { ...process.env, FLY_API_TOKEN: emulator.token } }));
  try {
    return await work(services, emulator);
  } finally {
    await services.close();
    await emulator.close();
    await cleanUp(prefix, stateDir);
  }
}

/** Fly create-to-running on the emulator beside the Docker provider's, alternated; API calls per Fly create. */
export async function flyFigures(runs: number): Promise<Figure[]> {
  return withDockerAndFly('bench-fly', async ({ controller }, emulator) => {
    const fly: number[] = [];
    const dockerTimes: number[] = [];
    const calls: number[] = [];
    for (let r = 0; r < runs; r++) {
      const once = async (type: 'docker' | 'fly'): Promise<void> => {
        let id = '';
        emulator.resetCalls();
        const ms = await time(async () => {
          id = (await controller.createInstance({ name: `bench-fly-${type}-${r}`, providerType: type })).instance.id;
        });
        (type === 'fly' ? fly : dockerTimes).push(ms);
        if (type === 'fly') calls.push(emulator.totalCalls());
        await controller.deleteInstance(id);
      };
      for (const type of r % 2 ? (['fly', 'docker'] as const) : (['docker', 'fly'] as const)) await once(type);
    }
    return [{ ...figure('fly create-to-running (Machines API emulator)', fly, 'docker create-to-running', dockerTimes), detail: `API calls per create: median ${median(calls)} (${calls.join(', ')})` }];
  });
}

/**
 * One health sweep over 1,000 registered instances whose editors are emulated (four HTTP servers that
 * answer /healthz), at the configured concurrency, beside the same 1,000 bare GETs at that concurrency.
 * The provider is a stand-in that reports each instance running: the figure is about the monitor.
 */
export async function healthSweepFigure(runs: number, count = 1_000): Promise<Figure> {
  const upstreams = await Promise.all(Array.from({ length: 4 }, () => startEchoUpstream()));
  const stateDir = await makeStateDir('bench-health');
  const config = parseConfig({ stateDir, logLevel: 'silent', gateway: { enabled: false }, health: { concurrency: 8 } });
  const registry = new InstanceRegistry({ stateDir });
  const provider = new StandInProvider(registry);
  const controller = new SwarmController({ config, registry, providers: { docker: provider }, lockStateDir: false });
  try {
    await controller.initialize();
    const at = new Date().toISOString();
    for (let n = 0; n < count; n++) {
      const port = upstreams[n % upstreams.length]!.port;
      const id = `bench-h-${n.toString(36)}`;
      await registry.register({
        id, name: id, providerType: 'docker', status: 'running', health: 'unknown', desiredState: 'running',
        config: { name: id, image: TEST_IMAGE, resources: { cpu: 1, memoryMb: 1024 } },
        endpoint: { url: `http://127.0.0.1:${port}`, host: '127.0.0.1', port }, providerRef: {}, createdAt: at, updatedAt: at,
      });
    }
    const monitor = new HealthMonitor({ controller, stateDir, config: { ...config.health, autoRecover: false } });
    await monitor.sweep(); // the first sweep records every instance healthy; later ones find nothing changed
    const sweeps: number[] = [];
    const bare: number[] = [];
    const urls = registry.list().map((i) => `${i.endpoint!.url}/healthz`);
    const agent = new http.Agent({ keepAlive: true, maxSockets: config.health.concurrency });
    for (let r = 0; r < runs; r++) {
      const ours = async (): Promise<void> => void sweeps.push(await time(async () => void (await monitor.sweep())));
      const base = async (): Promise<void> => void bare.push(await time(() => getAll(urls, config.health.concurrency, agent)));
      for (const side of r % 2 ? [ours, base] : [base, ours]) await side();
    }
    agent.destroy();
    const f = figure(`health sweep over ${count} instances (concurrency ${config.health.concurrency})`, sweeps, `${count} bare GET /healthz, same concurrency`, bare);
    // "Within the interval" (30 s) could not fail; what matters is what the monitor adds to the probes it must make.
    return { ...f, goal: 'sweep ≤ 2x the bare probes', meetsGoal: f.ratio <= 2, detail: `monitor adds ${(f.median - f.baselineMedian).toFixed(1)} ms to ${count} probes (medians of ${runs})` };
  } finally {
    await controller.close();
    await Promise.all(upstreams.map((u) => u.close()));
    await rm(stateDir, { recursive: true, force: true });
  }
}

/** Downtime of each migration strategy (docker → fly), beside a plain stop + start on docker. */
export async function migrationFigures(runs: number): Promise<Figure[]> {
  return withDockerAndFly('bench-mig', async ({ controller, migrations }) => {
    const downtime: Record<'stop-and-recreate' | 'create-then-stop', number[]> = { 'stop-and-recreate': [], 'create-then-stop': [] };
    const restart: number[] = [];
    for (let r = 0; r < runs; r++) {
      for (const strategy of ['stop-and-recreate', 'create-then-stop'] as const) {
        const { instance } = await controller.createInstance({ name: `bench-mig-${strategy}-${r}` });
        await controller.executeCommand(instance.id, 'mkdir -p src && head -c 1000000 /dev/urandom > src/data.bin && echo hi > README.md');
        restart.push(await time(async () => {
          await controller.stopInstance(instance.id);
          await controller.startInstance(instance.id);
        }));
        const done = await (await migrations.start(instance.id, 'fly', { strategy })).wait;
        if (done.status !== 'completed' || done.downtimeMs === undefined) throw new Error(`migration ${done.id}: ${done.status} ${done.reason}`);
        downtime[strategy].push(done.downtimeMs);
        await controller.deleteInstance(instance.id);
      }
    }
    return (['stop-and-recreate', 'create-then-stop'] as const).map((s) => ({
      ...figure(`migration downtime, ${s} (docker → fly, 1 MB workspace)`, downtime[s], 'stop + start on docker', restart),
    }));
  });
}

async function getAll(urls: string[], concurrency: number, agent: http.Agent): Promise<void> {
  let next = 0;
  const worker = async (): Promise<void> => {
    while (next < urls.length) {
      const url = urls[next++]!;
      await new Promise<void>((resolve, reject) => {
        http.get(url, { agent }, (res) => {
          res.resume();
          res.on('end', resolve);
        }).on('error', reject);
      });
    }
  };
  await Promise.all(Array.from({ length: concurrency }, worker));
}

/** Reports every registered instance as running where the registry says: a harness for the monitor's own cost. */
class StandInProvider implements Provider {
  readonly type = 'docker' as const;
  constructor(private readonly registry: InstanceRegistry) {}
  getCapabilities(): ProviderCapabilities {
    return { liveResize: false, snapshots: false, workspaceTransfer: false, persistentWorkspace: false, logs: false, exec: false, stats: false, regions: [], resourceLimits: { minCpu: 0.1, maxCpu: 64, minMemoryMb: 256, maxMemoryMb: 65_536 } };
  }
  async initialize(): Promise<void> {}
  async getInstance(id: string): Promise<VSCodeInstance | null> {
    return this.registry.get(id) ?? null;
  }
  async listInstances(): Promise<VSCodeInstance[]> {
    return this.registry.list();
  }
  createInstance(): Promise<VSCodeInstance> {
    throw new Error('stand-in');
  }
  startInstance(): Promise<VSCodeInstance> {
    throw new Error('stand-in');
  }
  stopInstance(): Promise<VSCodeInstance> {
    throw new Error('stand-in');
  }
  deleteInstance(): Promise<boolean> {
    throw new Error('stand-in');
  }
  updateInstance(): Promise<VSCodeInstance & { updateMode?: 'none' }> {
    throw new Error('stand-in');
  }
  getInstanceLogs(): Promise<never> {
    throw new Error('stand-in');
  }
  executeCommand(): Promise<never> {
    throw new Error('stand-in');
  }
}
