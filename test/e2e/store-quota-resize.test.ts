/**
 * A resize is admitted as atomically as a create: with two controllers on one PostgreSQL, a resize on one
 * and a create on the other, for the same owner at once, never together pass the owner's CPU quota.
 *
 * The owner (the local admin) may use 1 CPU. Each round makes a 0.5-CPU workspace, then at once grows it
 * to 1 CPU through A while B creates another 0.5-CPU one: either fits alone, both do not. Exactly one may
 * win. Before the resize's new size was written by the admitted write (it was checked against A's cache
 * only, and recorded after the provider acted), both could pass.
 *
 * Both controllers live in this process with separate state directories, one database and one swarm id.
 * Containers are the light stand-in image.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { SwarmController } from '../../src/controller/swarm-controller.js';
import { waitUntil } from '../../src/timing/wait-until.js';
import { startSharedStoreRig, type SharedStoreRig } from '../helpers/shared-store.js';

const PREFIX = 'e2e-pgresize';
const ROUNDS = 4;

let rig: SharedStoreRig;

/** CPU of the owner's live workspaces, as `c` holds them. */
const cpuIn = (c: SwarmController): number =>
  c.registry
    .list()
    .filter((i) => !i.warmPool && ['creating', 'starting', 'running'].includes(i.status))
    .reduce((sum, i) => sum + i.config.resources.cpu, 0);

beforeAll(async () => {
  rig = await startSharedStoreRig(PREFIX);
});
afterAll(async () => {
  await rig?.close();
});

describe('quota admission of resizes with two controllers on one PostgreSQL', () => {
  it('lets a resize on one and a create on the other pass the CPU quota together in no round', async () => {
    const quotas = { quotas: { admin: { cpu: 1 } } };
    const a = await rig.controller('a', quotas);
    const b = await rig.controller('b', quotas);
    const outcomes: string[] = [];
    for (let round = 0; round < ROUNDS; round++) {
      const first = await a.createInstance({ name: `${PREFIX}-${round}-w1`, resources: { cpu: 0.5, memoryMb: 256 } });
      await waitUntil(async () => (b.registry.get(first.instance.id)?.status === 'running' ? true : undefined), { timeoutMs: 10_000, what: "the first workspace in B's cache" });
      const [resize, create] = await Promise.allSettled([
        a.updateInstance(first.instance.id, { resources: { cpu: 1 } }),
        b.createInstance({ name: `${PREFIX}-${round}-w2`, resources: { cpu: 0.5, memoryMb: 256 } }),
      ]);
      outcomes.push(`${resize.status}/${create.status}`);
      // One of the two, never both; the one refused says why.
      expect([resize.status, create.status].sort()).toEqual(['fulfilled', 'rejected']);
      const refused = (resize.status === 'rejected' ? resize.reason : (create as PromiseRejectedResult).reason) as { code?: string };
      expect(refused.code).toBe('QUOTA_EXCEEDED');
      // What the database holds (through either cache, once both heard) is within the quota, and the
      // refused resize left its workspace at its old size.
      for (const c of [a, b]) {
        const used = await waitUntil(
          async () => {
            const w1 = c.registry.get(first.instance.id);
            const settled = w1?.status === 'running' && c.registry.list().every((i) => i.status === 'running');
            return settled ? cpuIn(c) : undefined;
          },
          { timeoutMs: 10_000, what: 'both writes heard' },
        );
        expect(used).toBe(1);
      }
      if (resize.status === 'rejected') expect(a.registry.get(first.instance.id)?.config.resources.cpu).toBe(0.5);
      // Back to nothing for the next round.
      for (const i of a.registry.list()) await a.deleteInstance(i.id);
    }
    console.error(`resize/create outcomes per round: ${outcomes.join(', ')}`);
  });
});
