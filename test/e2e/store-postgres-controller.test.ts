/**
 * Two controllers on one PostgreSQL, on the real Docker engine: what one creates the other lists (after
 * the announcement), one name gives one workspace however the concurrent creates are spread over the two,
 * and a lost database stops both from acting (STORE_UNAVAILABLE, nothing made) until it is back.
 *
 * Both controllers live in this process with separate state directories, the same database and the same
 * swarm id (so both see the swarm's containers). Containers are the light stand-in image.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { LABEL_MANAGED, LABEL_NAME, LABEL_SWARM } from '../../providers/docker/docker-mapping.js';
import { createSwarm } from '../../src/controller/create-swarm.js';
import type { CreateResult, SwarmController } from '../../src/controller/swarm-controller.js';
import { PgInstanceStore } from '../../src/store/index.js';
import { waitUntil } from '../../src/timing/wait-until.js';
import { cleanUp, docker, makeStateDir, testConfig } from '../helpers/docker.js';
import { freePort } from '../helpers/ports.js';
import { startPostgres, type TestPostgres } from '../helpers/postgres.js';
import { ensureStandinImage, STANDIN_IMAGE } from '../helpers/standin-image.js';

const PREFIX = 'e2e-pgctl';
const SWARM_ID = 'e2e-pgctl-swarm';
const LABELS = [`${LABEL_MANAGED}=true`, `${LABEL_SWARM}=${SWARM_ID}`];

let server: TestPostgres;
const stateDirs: string[] = [];
let a: SwarmController;
let b: SwarmController;

async function controller(label: string): Promise<SwarmController> {
  const stateDir = await makeStateDir(`${PREFIX}-${label}`);
  stateDirs.push(stateDir);
  const c = createSwarm(
    testConfig(stateDir, {
      swarmId: SWARM_ID,
      store: { databaseUrl: server.url },
      providers: { docker: { image: STANDIN_IMAGE, stopTimeoutSeconds: 1 } },
    }),
  );
  await c.initialize();
  return c;
}

/** The swarm's containers and volumes whose workspace name starts with `prefix`. */
async function madeFor(prefix: string): Promise<{ containers: string[]; volumes: string[] }> {
  const containers = await docker.listContainers({ all: true, filters: { label: LABELS } });
  const { Volumes } = await docker.listVolumes({ filters: { label: LABELS } });
  return {
    containers: containers.filter((c) => c.Labels[LABEL_NAME]?.startsWith(prefix)).map((c) => c.Labels[LABEL_NAME]!).sort(),
    volumes: (Volumes ?? []).filter((v) => v.Labels?.[LABEL_NAME]?.startsWith(prefix)).map((v) => v.Labels[LABEL_NAME]!).sort(),
  };
}

/** What `read` returns, or undefined while it throws (a store not answering yet). */
function readable<T>(read: () => T): T | undefined {
  try {
    return read();
  } catch {
    return undefined;
  }
}

/** The error a promise rejects with (fails the test when it resolves). */
async function rejection(work: Promise<unknown>): Promise<Error & { code?: string; field?: string }> {
  return work.then(
    (value) => expect.fail(`expected a rejection, got ${JSON.stringify(value)}`),
    (err: unknown) => err as Error & { code?: string },
  );
}

beforeAll(async () => {
  await ensureStandinImage();
  await cleanUp(PREFIX);
  server = await startPostgres();
  a = await controller('a');
  b = await controller('b');
});
afterAll(async () => {
  await a?.close();
  await b?.close();
  await server?.stop();
  await cleanUp(PREFIX);
  for (const dir of stateDirs) await cleanUp(PREFIX, dir);
});

describe('a controller whose database is not there at start', () => {
  it('fails to initialise with STORE_UNAVAILABLE naming the server, not the password, and closes cleanly', async () => {
    const stateDir = await makeStateDir(`${PREFIX}-nodb`);
    stateDirs.push(stateDir);
    const port = await freePort(); // nothing listens there
    const c = createSwarm(testConfig(stateDir, { store: { databaseUrl: `postgres://swarm:no-such-secret@127.0.0.1:${port}/swarm` } }));
    const err = await rejection(c.initialize());
    expect(err).toMatchObject({ code: 'STORE_UNAVAILABLE', message: expect.stringContaining(`127.0.0.1:${port}/swarm`) });
    expect(err.message).not.toContain('no-such-secret');
    await c.close();
  });
});

describe('two controllers on one PostgreSQL', () => {
  it('use the PostgreSQL store when store.databaseUrl is set', () => {
    expect(a.registry).toBeInstanceOf(PgInstanceStore);
    expect(b.registry).toBeInstanceOf(PgInstanceStore);
  });

  it('list on one what the other created, once the change is announced', async () => {
    const { instance, created } = await a.createInstance({ name: `${PREFIX}-one` });
    expect(created).toBe(true);
    // B's cache follows A's writes by their announcements, in order: first the `creating` record, then the
    // `running` one. A's create has returned, so both are committed; B sees the last within the NOTIFY delay.
    const seen = await waitUntil(async () => (b.registry.get(instance.id)?.status === 'running' ? b.registry.get(instance.id) : undefined), {
      timeoutMs: 10_000,
      what: 'the finished create announced to B',
    });
    expect(seen.name).toBe(`${PREFIX}-one`);
    const listed = await b.listInstances({ namePattern: `${PREFIX}-one` });
    expect(listed.map((i) => [i.id, i.status])).toEqual([[instance.id, 'running']]);
  });

  it('give one workspace per name for concurrent creates spread over both, the rest CONFLICT', async () => {
    const names = [0, 1, 2].map((n) => `${PREFIX}-race-${n}`);
    const settled = await Promise.allSettled(
      Array.from({ length: 10 }, (_, n) => (n % 2 ? b : a).createInstance({ name: names[n % 3]! })),
    );
    const done = settled.flatMap((s) => (s.status === 'fulfilled' ? [s.value] : []));
    const failed = settled.flatMap((s) => (s.status === 'rejected' ? [s.reason as Error & { code?: string; field?: string }] : []));
    // A loser either hears CONFLICT from the database or, when the winner's record reached its cache
    // first, gets that workspace back (created: false), as a create of an existing name does.
    for (const err of failed) expect(err).toMatchObject({ code: 'CONFLICT', field: 'name' });
    const winners = done.filter((r: CreateResult) => r.created);
    expect(winners.map((r) => r.instance.name).sort()).toEqual(names);
    const winnerIds = new Set(winners.map((r) => r.instance.id));
    for (const r of done) expect(winnerIds.has(r.instance.id)).toBe(true);
    expect(failed.length + done.length).toBe(10);
    // Each name's first create on A and on B both pass their (empty) caches: one of the two loses in the database.
    expect(failed.length).toBeGreaterThanOrEqual(3);

    for (const c of [a, b]) {
      const records = await waitUntil(
        async () => {
          const mine = c.registry.list().filter((i) => i.name.startsWith(`${PREFIX}-race-`));
          // The winner's last write (creating -> running) reaches the other cache a moment later.
          return mine.length === 3 && mine.every((i) => i.status === 'running') ? mine : undefined;
        },
        { timeoutMs: 10_000, what: 'three running race records in each cache' },
      );
      expect(new Set(records.map((i) => i.id))).toEqual(winnerIds);
    }
    expect(await madeFor(`${PREFIX}-race-`)).toEqual({ containers: names, volumes: names });
  });

  it('refuse to act while the database is gone, leave nothing behind, and work again when it is back', async () => {
    const before = await madeFor(PREFIX);
    await server.kill();
    try {
      const create = await rejection(a.createInstance({ name: `${PREFIX}-down` }));
      expect(create).toMatchObject({ code: 'STORE_UNAVAILABLE', message: expect.stringMatching(/state store unavailable/) });
      expect(create.message).not.toContain(server.password);
      const list = await rejection(a.listInstances());
      expect(list).toMatchObject({ code: 'STORE_UNAVAILABLE' });
      expect(await rejection(b.createInstance({ name: `${PREFIX}-down` }))).toMatchObject({ code: 'STORE_UNAVAILABLE' });
      expect(await madeFor(PREFIX)).toEqual(before);
    } finally {
      await server.restart();
    }

    const listed = await waitUntil(() => a.listInstances().catch(() => undefined), { timeoutMs: 30_000, what: 'A answers again' });
    expect(listed.map((i) => i.name).sort()).toEqual([`${PREFIX}-one`, ...[0, 1, 2].map((n) => `${PREFIX}-race-${n}`)]);
    const { instance, created } = await a.createInstance({ name: `${PREFIX}-back` });
    expect(created).toBe(true);
    // B may still be re-reading after its own lost connection (its reads throw until then).
    await waitUntil(async () => readable(() => b.registry.get(instance.id)), { timeoutMs: 30_000, what: 'B hears the create after the restart' });
    expect((await madeFor(`${PREFIX}-down`)).containers).toEqual([]);
    expect((await madeFor(`${PREFIX}-back`)).containers).toEqual([`${PREFIX}-back`]);
  });
});
