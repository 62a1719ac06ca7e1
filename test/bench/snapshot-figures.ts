/**
 * A snapshot of a 50 MiB workspace (the files spooled with their SHA-256 manifest under the state folder)
 * and a fork from it (a new instance filled with the snapshot's files and verified), beside the same copies
 * done by hand with the provider: export to a file; create an instance and import that file into it.
 * Docker, the light stand-in image, alternating, medians.
 */
import { createReadStream, createWriteStream } from 'node:fs';
import { mkdtemp, rm } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { pipeline } from 'node:stream/promises';
import { createSwarm } from '../../src/controller/create-swarm.js';
import { snapshotManagerFor } from '../../src/snapshots/snapshot-manager.js';
import { LOCAL_ADMIN_ID } from '../../src/tenancy/identity.js';
import { cleanUp, makeStateDir, testConfig } from '../helpers/docker.js';
import { ensureStandinImage } from '../helpers/standin-image.js';
import { figure, type Figure } from './figures.js';

const MB = 50;
export const SNAPSHOT_FIGURES = { snapshot: `snapshot of a ${MB} MiB workspace (manifest, stored)`, fork: `fork of a ${MB} MiB snapshot into a new instance (verified)` };

export async function snapshotFigures(runs: number): Promise<Figure[]> {
  const prefix = 'bench-snap';
  await cleanUp(prefix);
  const stateDir = await makeStateDir(prefix);
  const image = await ensureStandinImage();
  const spool = await mkdtemp(path.join(os.tmpdir(), 'vscode-swarm-bench-snap-'));
  const controller = createSwarm(testConfig(stateDir, { exec: { enabled: true }, providers: { docker: { image } } }));
  const times = { snapshot: [] as number[], fork: [] as number[], export: [] as number[], import: [] as number[] };
  try {
    await controller.initialize();
    const snapshots = snapshotManagerFor(controller);
    const { instance } = await controller.createInstance({ name: `${prefix}-source` });
    const filled = await controller.executeCommand(instance.id, `dd if=/dev/urandom of=/home/coder/project/data.bin bs=1048576 count=${MB} 2>/dev/null && echo ok`, { timeoutMs: 30_000 });
    if (filled.stdout.trim() !== 'ok') throw new Error(`could not fill the workspace: ${filled.stderr}`);
    const provider = await controller.providerOf(instance.id);
    const ours = async (r: number): Promise<void> => {
      let start = performance.now();
      const snapshot = await snapshots.create(instance.id, { name: `bench-${r}` });
      times.snapshot.push(performance.now() - start);
      start = performance.now();
      const fork = await snapshots.fork({ name: `${prefix}-fork-${r}`, snapshotId: snapshot.id, owner: LOCAL_ADMIN_ID });
      times.fork.push(performance.now() - start);
      await controller.deleteInstance(fork.instance.id);
      await snapshots.delete(snapshot.id);
    };
    const byHand = async (r: number): Promise<void> => {
      const file = path.join(spool, `export-${r}.tar`);
      let start = performance.now();
      await pipeline(await provider.exportWorkspace!(instance.id), createWriteStream(file));
      times.export.push(performance.now() - start);
      start = performance.now();
      const { instance: copy } = await controller.createInstance({ name: `${prefix}-hand-${r}` });
      await provider.importWorkspace!(copy.id, createReadStream(file));
      times.import.push(performance.now() - start);
      await controller.deleteInstance(copy.id);
      await rm(file, { force: true });
    };
    for (let r = 0; r < runs; r++) {
      if (r % 2 === 0) {
        await ours(r);
        await byHand(r);
      } else {
        await byHand(r);
        await ours(r);
      }
    }
  } finally {
    await controller.close();
    await rm(spool, { recursive: true, force: true });
    await cleanUp(prefix, stateDir);
  }
  return [
    figure(SNAPSHOT_FIGURES.snapshot, times.snapshot, `the provider's export of the same workspace to a file (no manifest)`, times.export),
    figure(SNAPSHOT_FIGURES.fork, times.fork, 'create an instance and import that file into it (no verification)', times.import),
  ];
}
