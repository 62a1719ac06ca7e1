/**
 * A workspace created from a repository, to the editor answering with the files in it (the controller
 * clones, copies the files in and verifies them by SHA-256 before the create returns), beside what a user
 * does without it: create an empty workspace, then `git clone` inside it with execute_command. Both with
 * the real editor image, from the same `git daemon` on the Docker network's gateway (reachable from the
 * controller and from the containers), alternating, medians.
 */
import { randomBytes } from 'node:crypto';
import { createSwarm } from '../../src/controller/create-swarm.js';
import { DEFAULT_NETWORK } from '../../providers/docker/docker-provider.js';
import { cleanUp, docker, makeStateDir, testConfig } from '../helpers/docker.js';
import { makeRepository, serveGitDaemon } from '../helpers/git-server.js';
import { figure, type Figure } from './figures.js';

const FILES = 200;
const FILE_BYTES = 16 * 1024;

export const REPOSITORY_FIGURE = `create from a repository (${FILES} files, ${(FILES * FILE_BYTES) / 2 ** 20} MiB) to a ready editor with the files verified`;

export async function repositoryFigures(runs: number): Promise<Figure[]> {
  const prefix = 'bench-repo';
  await cleanUp(prefix);
  const stateDir = await makeStateDir(prefix);
  // Text-like content that does not compress away: hex of random bytes.
  const extra = Object.fromEntries(Array.from({ length: FILES }, (_, i) => [`src/m${String(i).padStart(3, '0')}.txt`, randomBytes(FILE_BYTES / 2).toString('hex')]));
  const repo = await makeRepository('bench.git', extra);
  const controller = createSwarm(testConfig(stateDir, { exec: { enabled: true }, repositories: { allowPrivateNetworks: true } }));
  const ours: number[] = [];
  const byHand: number[] = [];
  let server: Awaited<ReturnType<typeof serveGitDaemon>> | undefined;
  try {
    await controller.initialize();
    // The network exists once the provider is up; its gateway is the host as the containers see it.
    const network = await docker.getNetwork(DEFAULT_NETWORK).inspect();
    const gateway = (network.IPAM?.Config ?? []).map((c: { Gateway?: string }) => c.Gateway).find((g: string | undefined) => g && !g.includes(':'));
    if (!gateway) throw new Error(`network ${DEFAULT_NETWORK} has no IPv4 gateway`);
    server = await serveGitDaemon(repo.base, gateway);
    const url = server.url(repo.name);
    const fromRepository = async (r: number): Promise<void> => {
      const start = performance.now();
      const result = await controller.createInstance({ name: `${prefix}-ours-${r}`, repository: { url, ref: 'main' } });
      ours.push(performance.now() - start);
      await controller.deleteInstance(result.instance.id);
    };
    const createThenClone = async (r: number): Promise<void> => {
      const start = performance.now();
      const result = await controller.createInstance({ name: `${prefix}-hand-${r}` });
      const cloned = await controller.executeCommand(result.instance.id, `git clone --quiet --depth 1 --branch main ${url} /home/coder/project/bench && ls /home/coder/project/bench/src | wc -l`, { timeoutMs: 30_000 });
      byHand.push(performance.now() - start);
      if (cloned.exitCode !== 0 || Number(cloned.stdout.trim()) !== FILES + 1) throw new Error(`clone by hand failed: ${cloned.stderr || cloned.stdout}`);
      await controller.deleteInstance(result.instance.id);
    };
    for (let r = 0; r < runs; r++) {
      if (r % 2 === 0) {
        await fromRepository(r);
        await createThenClone(r);
      } else {
        await createThenClone(r);
        await fromRepository(r);
      }
    }
  } finally {
    await server?.close();
    await controller.close();
    await repo.remove();
    await cleanUp(prefix, stateDir);
  }
  return [
    {
      ...figure(REPOSITORY_FIGURE, ours, 'create an empty workspace, then git clone inside it with execute_command (no verification)', byHand),
      detail: 'ours returns only after the files are copied in and compared by SHA-256; the baseline trusts git inside the container',
    },
  ];
}
