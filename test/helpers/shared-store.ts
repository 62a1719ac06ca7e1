/**
 * Several controllers in this process on one real PostgreSQL, for the suites that check what a shared
 * store must never allow (a warm member or quota granted twice, a snapshot one controller cannot see):
 * each controller has its own state directory, all share the database and one swarm id, and containers
 * are the light stand-in image. `close()` closes the controllers, stops the server and removes every
 * container, volume and state directory the rig made.
 */
import { rm } from 'node:fs/promises';
import { LABEL_MANAGED, LABEL_SWARM } from '../../providers/docker/docker-mapping.js';
import type { SwarmConfigInput } from '../../src/config.js';
import { createSwarm, startSwarmServices, type SwarmServices } from '../../src/controller/create-swarm.js';
import type { SwarmController } from '../../src/controller/swarm-controller.js';
import { docker, makeStateDir, testConfig } from './docker.js';
import { startPostgres, type TestPostgres } from './postgres.js';
import { ensureStandinImage, STANDIN_IMAGE } from './standin-image.js';

export interface SharedStoreRig {
  server: TestPostgres;
  /** Docker label filter for everything of this swarm. */
  labels: string[];
  /** A controller, initialised, without its services (it leads: nothing else contends). */
  controller(label: string, extra?: SwarmConfigInput): Promise<SwarmController>;
  /** A controller with its services, as `up` runs it: the leadership decides which one runs once-only work. */
  services(label: string, extra?: SwarmConfigInput): Promise<SwarmServices>;
  close(): Promise<void>;
}

export async function startSharedStoreRig(prefix: string): Promise<SharedStoreRig> {
  const swarmId = `${prefix}-swarm`;
  const labels = [`${LABEL_MANAGED}=true`, `${LABEL_SWARM}=${swarmId}`];
  const removeSwarm = async (): Promise<void> => {
    for (const c of await docker.listContainers({ all: true, filters: { label: labels } })) await docker.getContainer(c.Id).remove({ force: true }).catch(() => undefined);
    const { Volumes } = await docker.listVolumes({ filters: { label: labels } });
    for (const v of Volumes ?? []) await docker.getVolume(v.Name).remove().catch(() => undefined);
  };
  await ensureStandinImage();
  await removeSwarm();
  const server = await startPostgres();
  const stateDirs: string[] = [];
  const closers: (() => Promise<void>)[] = [];
  const make = async (label: string, extra: SwarmConfigInput): Promise<SwarmController> => {
    const stateDir = await makeStateDir(`${prefix}-${label}`);
    stateDirs.push(stateDir);
    return createSwarm(
      testConfig(stateDir, {
        swarmId,
        store: { databaseUrl: server.url },
        ...extra,
        providers: { ...extra.providers, docker: { image: STANDIN_IMAGE, stopTimeoutSeconds: 1, ...extra.providers?.docker } },
      }),
    );
  };
  return {
    server,
    labels,
    async controller(label, extra = {}) {
      const c = await make(label, extra);
      closers.push(() => c.close());
      await c.initialize();
      return c;
    },
    async services(label, extra = {}) {
      const started = await startSwarmServices(await make(label, extra));
      closers.push(() => started.close());
      return started;
    },
    async close() {
      for (const close of closers) await close().catch(() => undefined);
      await server.stop();
      await removeSwarm();
      for (const dir of stateDirs) await rm(dir, { recursive: true, force: true });
    },
  };
}
