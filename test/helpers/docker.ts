/**
 * What the Docker-backed suites share: the editor image they run, throw-away state folders, a config
 * pointing at both, and clean-up of everything a suite created (found by the labels the provider sets).
 */
import Docker from 'dockerode';
import { mkdtemp, rm } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { LABEL_MANAGED, LABEL_NAME } from '../../providers/docker/docker-mapping.js';
export { httpStatus } from '../../src/timing/http-probe.js';
import { parseConfig, type SwarmConfig, type SwarmConfigInput } from '../../src/config.js';

/** The real code-server image, built offline by scripts/editor-image/build.sh (run by scripts/setup.sh). */
export const TEST_IMAGE = process.env.VSCODE_SWARM_TEST_IMAGE ?? 'vscode-swarm/code-server:4.99.3';

export const docker = new Docker();

export async function makeStateDir(label: string): Promise<string> {
  return mkdtemp(path.join(os.tmpdir(), `vscode-swarm-${label}-`));
}

export function testConfig(stateDir: string, extra: SwarmConfigInput = {}): SwarmConfig {
  return parseConfig({
    stateDir,
    logLevel: 'silent',
    ...extra,
    gateway: { port: 0, ...extra.gateway },
    providers: { ...extra.providers, docker: { image: TEST_IMAGE, pullImages: false, stopTimeoutSeconds: 2, ...extra.providers?.docker } },
  });
}

/** Removes containers and volumes whose workspace name starts with `prefix`, and the state folder. */
export async function cleanUp(prefix: string, stateDir?: string): Promise<void> {
  const containers = await docker.listContainers({ all: true, filters: { label: [`${LABEL_MANAGED}=true`] } });
  for (const c of containers) {
    if (c.Labels[LABEL_NAME]?.startsWith(prefix)) await docker.getContainer(c.Id).remove({ force: true }).catch(() => undefined);
  }
  const { Volumes } = await docker.listVolumes({ filters: { label: [`${LABEL_MANAGED}=true`] } });
  for (const v of Volumes ?? []) {
    if (v.Labels?.[LABEL_NAME]?.startsWith(prefix)) await docker.getVolume(v.Name).remove().catch(() => undefined);
  }
  if (stateDir) await rm(stateDir, { recursive: true, force: true });
}

/** Containers of this suite, by workspace-name prefix. */
export async function containersNamed(prefix: string): Promise<Docker.ContainerInfo[]> {
  const containers = await docker.listContainers({ all: true, filters: { label: [`${LABEL_MANAGED}=true`] } });
  return containers.filter((c) => c.Labels[LABEL_NAME]?.startsWith(prefix));
}
