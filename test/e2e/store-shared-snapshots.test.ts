/**
 * Snapshots with several controllers: each has its own state directory, and `snapshots.dir` points them
 * all at one shared folder, so a snapshot taken through one is listed, forked and restored through
 * another, files verified by SHA-256. Without the shared folder each controller sees only its own
 * snapshots (checked too, so the setting is what makes the difference).
 */
import { mkdtemp, rm } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { SwarmController } from '../../src/controller/swarm-controller.js';
import { LOCAL_ADMIN_ID } from '../../src/tenancy/identity.js';
import { snapshotManagerFor } from '../../src/snapshots/snapshot-manager.js';
import { startSharedStoreRig, type SharedStoreRig } from '../helpers/shared-store.js';

const PREFIX = 'e2e-pgsnap';

let rig: SharedStoreRig;
let shared: string;

/** The output of a command in the workspace folder (exec is on for this suite). */
async function run(c: SwarmController, instanceId: string, command: string): Promise<string> {
  const result = await c.executeCommand(instanceId, command);
  if (result.exitCode !== 0) throw new Error(`${command}: exit ${result.exitCode}: ${result.stderr}`);
  return result.stdout;
}

beforeAll(async () => {
  rig = await startSharedStoreRig(PREFIX);
  shared = await mkdtemp(path.join(os.tmpdir(), `${PREFIX}-shared-`));
});
afterAll(async () => {
  await rig?.close();
  if (shared) await rm(shared, { recursive: true, force: true });
});

describe('snapshots with two controllers on one PostgreSQL', () => {
  it('taken through one, listed, forked and restored through the other when snapshots.dir is shared', async () => {
    const config = { exec: { enabled: true }, snapshots: { dir: shared } };
    const a = await rig.controller('a', config);
    const b = await rig.controller('b', config);
    const alone = await rig.controller('alone', { exec: { enabled: true } });

    const { instance } = await a.createInstance({ name: `${PREFIX}-src` });
    await run(a, instance.id, 'mkdir -p src && printf "shared %s" one > src/a.txt && printf two > b.txt');
    const sums = await run(a, instance.id, 'sha256sum src/a.txt b.txt');
    const snapshot = await snapshotManagerFor(a).create(instance.id, { name: 'shared' });

    expect((await snapshotManagerFor(b).list()).map((s) => s.id)).toEqual([snapshot.id]);
    expect(await snapshotManagerFor(alone).list()).toEqual([]);

    // Forked through B: a new workspace with the same files.
    const fork = await snapshotManagerFor(b).fork({ name: `${PREFIX}-fork`, snapshotId: snapshot.id, owner: LOCAL_ADMIN_ID });
    expect(await run(b, fork.instance.id, 'sha256sum src/a.txt b.txt')).toBe(sums);

    // Restored through B onto the source, after A changed it.
    await run(a, instance.id, 'printf changed > b.txt && rm src/a.txt');
    await snapshotManagerFor(b).restore(instance.id, snapshot.id);
    expect(await run(a, instance.id, 'sha256sum src/a.txt b.txt')).toBe(sums);

    // Deleted through B: gone for A too.
    await snapshotManagerFor(b).delete(snapshot.id);
    expect(await snapshotManagerFor(a).list()).toEqual([]);
  });
});
