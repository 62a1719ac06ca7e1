/**
 * Issue 12: a controller SIGKILLed in the middle of a create, and another settles it. Three `up` processes
 * on one real PostgreSQL: A leads; B dies right after recording its create (crash point
 * `create.after-record`: a record in `creating`, nothing on the engine yet); C dies right after the engine
 * made the container (`create.after-provider`: a record in `creating` and a running container). The leader
 * sees that the records' writers have no connection to the database any more and settles both within
 * seconds — far sooner than the grace period for work in flight (the readiness timeout plus a minute,
 * here 150 s): B's is undone (no record, no container, no volume; the same name can be created again), C's
 * becomes the running workspace it is (one record, one container). Build first (`npm run build`).
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { LABEL_INSTANCE, LABEL_MANAGED, LABEL_SWARM } from '../../providers/docker/docker-mapping.js';
import { CRASH_ENV } from '../../src/crash/crash-points.js';
import { waitUntil } from '../../src/timing/wait-until.js';
import { leaseHolder, startControllerRig, type ControllerProcess, type ControllerRig } from '../helpers/controller-process.js';
import { docker } from '../helpers/docker.js';
import { callTool, type ToolResult } from '../helpers/mcp.js';
import { STANDIN_IMAGE } from '../helpers/standin-image.js';

const PREFIX = 'e2e-pgcrash';
const SWARM_ID = 'e2e-pgcrash-swarm';
const INTERVAL_MS = 2_500;
/** Well under the grace period (90 s readiness + 60 s): only the writer-gone check can settle this soon. */
const SETTLED_WITHIN_MS = 60_000;

let rig: ControllerRig;

const start = (label: string, env: NodeJS.ProcessEnv = {}): Promise<ControllerProcess> =>
  rig.start(
    label,
    {
      swarmId: SWARM_ID,
      store: { databaseUrl: rig.server.url },
      providers: { docker: { image: STANDIN_IMAGE, pullImages: false, stopTimeoutSeconds: 1, readinessTimeoutMs: 90_000 } },
      health: { intervalMs: INTERVAL_MS, backoffMs: 0, failureThreshold: 1 },
      idle: { enabled: false },
    },
    env,
  );

async function record(name: string): Promise<{ id: string; status: string } | undefined> {
  const { rows } = await rig.pool.query<{ id: string; status: string }>("SELECT id, data->>'status' AS status FROM instances WHERE name = $1", [name]);
  return rows[0];
}

async function engine(instanceId: string): Promise<{ containers: string[]; volumes: string[] }> {
  const containers = await docker.listContainers({ all: true, filters: { label: [`${LABEL_MANAGED}=true`, `${LABEL_SWARM}=${SWARM_ID}`, `${LABEL_INSTANCE}=${instanceId}`] } });
  const { Volumes } = await docker.listVolumes({ filters: { label: [`${LABEL_INSTANCE}=${instanceId}`] } });
  return { containers: containers.map((c) => c.State), volumes: (Volumes ?? []).map((v) => v.Name) };
}

beforeAll(async () => {
  rig = await startControllerRig(PREFIX);
  const a = await start('a');
  await waitUntil(async () => ((await leaseHolder(rig.pool, `swarm:${SWARM_ID}`, [a])) ? true : undefined), { timeoutMs: 3 * INTERVAL_MS, what: 'A leading' });
  await start('b', { [CRASH_ENV]: 'create.after-record' });
  await start('c', { [CRASH_ENV]: 'create.after-provider' });
}, 240_000);

afterAll(async () => {
  await rig?.close();
}, 120_000);

const died = (c: ControllerProcess): Promise<true> =>
  waitUntil(async () => (c.child.signalCode === 'SIGKILL' ? (true as const) : undefined), { timeoutMs: 60_000, intervalMs: 50, what: `controller ${c.label} killed at its crash point` });

describe('a controller killed in the middle of a create', () => {
  it('is settled by the leader soon after: undone before the container, finished after it', async () => {
    const [a, b, c] = rig.controllers;
    // Both creates die with their controller: the callers get no answer.
    const viaB = callTool(b!.mcp, 'create_swarm_instance', { name: `${PREFIX}-b` }).catch((err: Error) => err);
    const viaC = callTool(c!.mcp, 'create_swarm_instance', { name: `${PREFIX}-c` }).catch((err: Error) => err);
    await died(b!);
    await died(c!);
    expect(await viaB).toBeInstanceOf(Error);
    expect(await viaC).toBeInstanceOf(Error);
    const left = { b: await record(`${PREFIX}-b`), c: await record(`${PREFIX}-c`) };
    expect(left.b?.status).toBe('creating');
    expect(left.c?.status).toBe('creating');
    expect((await engine(left.c!.id)).containers).toEqual(['running']);

    const killedAt = Date.now();
    await waitUntil(async () => ((await record(`${PREFIX}-b`)) === undefined ? true : undefined), { timeoutMs: SETTLED_WITHIN_MS, intervalMs: 250, what: "the leader undoing B's interrupted create" });
    await waitUntil(async () => ((await record(`${PREFIX}-c`))?.status === 'running' ? true : undefined), { timeoutMs: SETTLED_WITHIN_MS, intervalMs: 250, what: "the leader finishing C's interrupted create" });
    console.info(`interrupted creates settled ${Date.now() - killedAt} ms after both controllers died`);

    expect(await engine(left.b!.id)).toEqual({ containers: [], volumes: [] });
    expect((await engine(left.c!.id)).containers).toEqual(['running']);
    expect((await record(`${PREFIX}-c`))!.id).toBe(left.c!.id);
    // The name B was asked for is free again: a create of it through the leader makes one workspace.
    const again = await callTool(a!.mcp, 'create_swarm_instance', { name: `${PREFIX}-b` });
    expect(again.isError, JSON.stringify((again as ToolResult).content)).toBeFalsy();
    const { rows } = await rig.pool.query<{ n: string }>('SELECT count(*) AS n FROM instances WHERE name LIKE $1', [`${PREFIX}-%`]);
    expect(Number(rows[0]!.n)).toBe(2);
  }, 180_000);
});
