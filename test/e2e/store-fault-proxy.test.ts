/**
 * Issue 12: a controller whose way to the database misbehaves stops acting, and the others carry on.
 * Three `up` processes on one real PostgreSQL; C reaches it through a fault proxy, A and B directly, and C
 * leads first. Then C's connections stall (nothing answers, nothing fails): C's lease runs out by its own
 * clock, so it stops acting without waiting for an error, A or B takes the lead within two intervals with
 * a higher fencing token and repairs an editor the test kills; C repairs nothing. Then C's database goes
 * away altogether (connections reset and refused): C answers STORE_UNAVAILABLE and makes nothing, while
 * creates through A and B go on. When the proxy heals, C follows again and, not leading, still acts on
 * nothing. Build first (`npm run build`): the controllers run dist/src/cli.js.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { LABEL_MANAGED, LABEL_SWARM } from '../../providers/docker/docker-mapping.js';
import { waitUntil } from '../../src/timing/wait-until.js';
import { containerOf as containerOfSwarm, leaseHolder, leaseRow, logged, startControllerRig, type ControllerProcess, type ControllerRig } from '../helpers/controller-process.js';
import { docker } from '../helpers/docker.js';
import { startFaultProxy, type FaultProxy } from '../helpers/fault-proxy.js';
import { callTool, type ToolResult } from '../helpers/mcp.js';
import { STANDIN_IMAGE } from '../helpers/standin-image.js';

const PREFIX = 'e2e-pgfault';
const SWARM_ID = 'e2e-pgfault-swarm';
const LEASE = `swarm:${SWARM_ID}`;
const INTERVAL_MS = 2_500;

let rig: ControllerRig;
let proxy: FaultProxy;

function textOf(result: ToolResult): string {
  return (result.content as { type: string; text?: string }[]).map((c) => c.text ?? '').join('\n');
}

const start = (label: string, databaseUrl: string): Promise<ControllerProcess> =>
  rig.start(label, {
    swarmId: SWARM_ID,
    store: { databaseUrl },
    providers: { docker: { image: STANDIN_IMAGE, pullImages: false, stopTimeoutSeconds: 1 } },
    health: { intervalMs: INTERVAL_MS, backoffMs: 0, failureThreshold: 1 },
    idle: { enabled: false },
  });
const containerOf = (instanceId: string): ReturnType<typeof containerOfSwarm> => containerOfSwarm(SWARM_ID, instanceId);

beforeAll(async () => {
  rig = await startControllerRig(PREFIX);
  proxy = await startFaultProxy({ target: { host: '127.0.0.1', port: rig.server.port } });
  const throughProxy = new URL(rig.server.url);
  throughProxy.port = String(proxy.port);
  // C first, so that it leads; then A and B, straight to the database.
  const c = await start('c', throughProxy.toString());
  await waitUntil(async () => ((await leaseHolder(rig.pool, LEASE, [c])) ? true : undefined), { timeoutMs: 3 * INTERVAL_MS, what: 'C leading' });
  await start('a', rig.server.url);
  await start('b', rig.server.url);
}, 240_000);

afterAll(async () => {
  if (process.env.PGFAULT_TEST_LOGS) for (const c of rig.controllers) console.error(c.label, c.child.exitCode, c.child.signalCode, JSON.stringify(c.logs().filter((l) => Number(l.level) >= 40 || !l.level).slice(-30)));
  proxy?.setFaults(null);
  proxy?.setDown(false);
  await proxy?.close();
  await rig?.close();
}, 120_000);

describe('a controller behind a misbehaving connection to the database', () => {
  it('stops acting when its connections stall; another leads, repairs, and the stalled one repairs nothing', async () => {
    const [c, a, b] = rig.controllers;
    expect((await leaseHolder(rig.pool, LEASE, rig.controllers))?.label).toBe('c');
    const tokenBefore = BigInt((await leaseRow(rig.pool, LEASE))!.fencing_token);
    const created = await callTool(a!.mcp, 'create_swarm_instance', { name: `${PREFIX}-w1` });
    expect(created.isError, textOf(created)).toBeFalsy();
    const victim = (created.structuredContent as { instance: { id: string } }).instance.id;

    // Every exchange on C's connections stalls (longer than the whole test): no error, just silence.
    proxy.setFaults({ probability: 1, kinds: ['stall'], stallMs: 600_000, perExchange: true, seed: 7 });
    await waitUntil(async () => (logged(c!, 'no longer leading the swarm; its loops stop acting').length ? true : undefined), { timeoutMs: 2 * INTERVAL_MS + 2_000, intervalMs: 50, what: 'C noticing by its own clock that it no longer leads' });
    const next = await waitUntil(() => leaseHolder(rig.pool, LEASE, [a!, b!]), { timeoutMs: 2 * INTERVAL_MS + 2_000, intervalMs: 50, what: 'A or B leading' });
    expect(BigInt((await leaseRow(rig.pool, LEASE))!.fencing_token)).toBeGreaterThan(tokenBefore);

    const before = await containerOf(victim);
    const repairsByC = logged(c!, 'recovery step done').length;
    await docker.getContainer(before.id).kill();
    await waitUntil(async () => (logged(next, 'recovery step done', victim).length ? true : undefined), { timeoutMs: 30_000, what: `${next.label} repairing ${victim}` });
    expect((await containerOf(victim)).running).toBe(true);
    expect(logged(c!, 'recovery step done').length).toBe(repairsByC);
  }, 120_000);

  it('answers STORE_UNAVAILABLE and makes nothing while its database is gone; the others carry on', async () => {
    const [c, a, b] = rig.controllers;
    proxy.setFaults(null);
    proxy.setDown(true); // open connections reset, new ones refused
    const refused = await callTool(c!.mcp, 'create_swarm_instance', { name: `${PREFIX}-through-c` }).catch((err: Error) => ({ isError: true, content: [{ type: 'text', text: err.message }] }) as ToolResult);
    expect(refused.isError).toBe(true);
    expect(textOf(refused)).toMatch(/STORE_UNAVAILABLE|state store unavailable|could not be checked now/);
    for (const [n, other] of [a!, b!].entries()) {
      const made = await callTool(other.mcp, 'create_swarm_instance', { name: `${PREFIX}-w${n + 2}` });
      expect(made.isError, textOf(made)).toBeFalsy();
    }
    const { rows } = await rig.pool.query<{ name: string }>('SELECT name FROM instances WHERE name LIKE $1 ORDER BY name', [`${PREFIX}-%`]);
    expect(rows.map((r) => r.name)).toEqual([`${PREFIX}-w1`, `${PREFIX}-w2`, `${PREFIX}-w3`]);
    const containers = await docker.listContainers({ all: true, filters: { label: [`${LABEL_MANAGED}=true`, `${LABEL_SWARM}=${SWARM_ID}`] } });
    expect(containers).toHaveLength(3);

    // Back: C follows the others' writes again, and does not lead (the lease is another's, with a newer token).
    proxy.setDown(false);
    await waitUntil(
      async () => {
        const listed = await callTool(c!.mcp, 'list_swarm_instances', {}).catch(() => undefined);
        return listed && !listed.isError && textOf(listed).includes(`${PREFIX}-w3`) ? true : undefined;
      },
      { timeoutMs: 30_000, intervalMs: 250, what: 'C serving again with the others’ writes' },
    );
    expect((await leaseHolder(rig.pool, LEASE, rig.controllers))?.label).not.toBe('c');
  }, 120_000);
});
