/**
 * Warm members are never handed out twice by two controllers sharing one PostgreSQL.
 *
 * Both controllers see the same ready members in their caches, in the same order, so creates arriving on
 * both at once pick the same member first. Only one claim may win: the claim is decided by the write on
 * the row (locked in the database), and a controller that finds the member already claimed tries the next
 * one, or creates. Before that check the second claim renamed the first person's workspace to its own
 * name and owner (one instance, two creates "served").
 *
 * Both controllers live in this process with separate state directories, one database and one swarm id.
 * Containers are the light stand-in image.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { LABEL_INSTANCE } from '../../providers/docker/docker-mapping.js';
import type { CreateResult, SwarmController } from '../../src/controller/swarm-controller.js';
import { waitUntil } from '../../src/timing/wait-until.js';
import { docker } from '../helpers/docker.js';
import { startSharedStoreRig, type SharedStoreRig } from '../helpers/shared-store.js';

const PREFIX = 'e2e-pgwarm';
const BUFFER = 2;

let rig: SharedStoreRig;

/** The ready members both caches agree on, once the leader has filled the buffer. */
async function readyMembers(a: SwarmController, b: SwarmController): Promise<string[]> {
  return waitUntil(
    async () => {
      const seen = [a, b].map((c) =>
        c.registry
          .list({ status: 'running' })
          .filter((i) => i.warmPool)
          .map((i) => i.id)
          .join(','),
      );
      return seen[0] === seen[1] && seen[0]!.split(',').filter(Boolean).length === BUFFER ? seen[0]!.split(',') : undefined;
    },
    { timeoutMs: 90_000, what: `${BUFFER} ready warm members seen by both controllers` },
  );
}

beforeAll(async () => {
  rig = await startSharedStoreRig(PREFIX);
});
afterAll(async () => {
  await rig?.close();
});

describe('warm members with two controllers on one PostgreSQL', () => {
  it('hands each member to one create only; the others are created afresh, and every workspace keeps its own name', async () => {
    // With their services, as `up` runs them: the leadership decides which one refills the buffer.
    const warm = { warm: [{ provider: 'docker' as const, size: BUFFER }] };
    const a = (await rig.services('a', warm)).controller;
    const b = (await rig.services('b', warm)).controller;
    for (let round = 0; round < 2; round++) {
      const members = await readyMembers(a, b);
      const names = [0, 1, 2, 3].map((n) => `${PREFIX}-r${round}-${n}`);
      // Two creates on each controller at once: each controller takes members in the same order.
      const results: CreateResult[] = await Promise.all(names.map((name, n) => (n % 2 ? b : a).createInstance({ name })));

      const ids = results.map((r) => r.instance.id);
      expect(new Set(ids).size).toBe(names.length);
      const served = results.filter((r) => r.fromWarmPool);
      expect(served.length).toBeGreaterThanOrEqual(1);
      expect(served.length).toBeLessThanOrEqual(BUFFER);
      for (const r of served) expect(members).toContain(r.instance.id);
      // Every result is the record the database holds: its own name, no longer a member.
      for (const [n, r] of results.entries()) {
        const held = await waitUntil(async () => {
          const now = a.registry.get(r.instance.id);
          return now?.status === 'running' ? now : undefined;
        }, { timeoutMs: 15_000, what: `${r.instance.id} running in A's cache` });
        expect(held.name).toBe(names[n]);
        expect(held.warmPool).toBeUndefined();
      }
    }
    // Once the buffer is full again: one container per record (workspaces and members), none else.
    await readyMembers(a, b);
    const containers = await docker.listContainers({ all: true, filters: { label: rig.labels } });
    const byInstance = new Map<string, number>();
    for (const c of containers) byInstance.set(c.Labels[LABEL_INSTANCE]!, (byInstance.get(c.Labels[LABEL_INSTANCE]!) ?? 0) + 1);
    const records = a.registry.list().map((i) => i.id);
    expect([...byInstance.keys()].sort()).toEqual([...records].sort());
    for (const [id, count] of byInstance) expect(count, id).toBe(1);
    expect(records.length).toBe(2 * 4 + BUFFER);
  });
});
