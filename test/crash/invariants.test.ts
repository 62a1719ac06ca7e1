/**
 * The invariant checker itself: it must see what it claims to see, or every suite using it passes for nothing.
 * Broken state is made by hand here (records on disk or in a real PostgreSQL, a labelled volume and
 * container on the real engine).
 */
import { mkdir, rm, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { swarmIdFor } from '../../src/config.js';
import { LABEL_INSTANCE, LABEL_MANAGED, LABEL_NAME, LABEL_SWARM, containerName, volumeName } from '../../providers/docker/docker-mapping.js';
import type { VSCodeInstance } from '../../providers/provider.js';
import { migrate } from '../../src/store/postgres/migrations.js';
import { StorePool } from '../../src/store/postgres/pool.js';
import { docker, makeStateDir } from '../helpers/docker.js';
import { swarmViolations } from '../helpers/invariants.js';
import { startPostgres, type TestPostgres } from '../helpers/postgres.js';
import { ensureStandinImage } from '../helpers/standin-image.js';

const record = (id: string, status: VSCodeInstance['status']): VSCodeInstance => ({
  id, name: id, providerType: 'docker', status, health: 'unknown',
  config: { name: id, image: 'busybox:1', resources: { cpu: 1, memoryMb: 512 } }, providerRef: {},
  createdAt: new Date(0).toISOString(), updatedAt: new Date(0).toISOString(),
});

async function removeSwarm(swarmId: string): Promise<void> {
  for (const c of await docker.listContainers({ all: true, filters: { label: [`${LABEL_SWARM}=${swarmId}`] } })) await docker.getContainer(c.Id).remove({ force: true });
  for (const v of (await docker.listVolumes({ filters: { label: [`${LABEL_SWARM}=${swarmId}`] } })).Volumes ?? []) await docker.getVolume(v.Name).remove();
}

describe('swarmViolations', () => {
  let stateDir: string;
  let swarmId: string;
  const labels = (id: string) => ({ [LABEL_MANAGED]: 'true', [LABEL_SWARM]: swarmId, [LABEL_INSTANCE]: id, [LABEL_NAME]: id });

  beforeAll(async () => {
    stateDir = await makeStateDir('inv-check');
    swarmId = swarmIdFor(stateDir);
    await mkdir(path.join(stateDir, 'instances'));
  });
  afterAll(async () => {
    await removeSwarm(swarmId);
    await rm(stateDir, { recursive: true, force: true });
  });

  it('is empty for an empty swarm', async () => {
    expect(await swarmViolations({ stateDir, swarmId })).toEqual([]);
  });

  it('names each broken invariant, and the files that differ', async () => {
    const dir = path.join(stateDir, 'instances');
    await writeFile(path.join(dir, 'ghost.json'), JSON.stringify(record('ghost', 'running')));
    await writeFile(path.join(dir, 'bad.json'), JSON.stringify({ ...record('bad', 'running'), status: 'sleeping' }));
    await writeFile(path.join(dir, '.tmp-ghost.json.abc123'), '{');
    await docker.createVolume({ Name: volumeName('orphan'), Labels: labels('orphan') });
    await docker.createVolume({ Name: volumeName('kept'), Labels: labels('kept') });
    // A stopped container recorded as running, holding one file.
    const image = await ensureStandinImage();
    await writeFile(path.join(dir, 'held.json'), JSON.stringify(record('held', 'running')));
    const held = await docker.createContainer({ name: containerName(`held-${swarmId}`), Image: image, Labels: labels('held'), Entrypoint: ['sh', '-c', 'mkdir -p /home/coder/project && printf x > /home/coder/project/a.txt'] });
    await held.start();
    await held.wait();
    await docker.createContainer({ name: containerName(`stray-${swarmId}`), Image: image, Labels: labels('stray') });

    const found = await swarmViolations({
      stateDir, swarmId, keptVolumes: ['kept'],
      files: { held: { 'a.txt': '2d711642b726b04401627ca9fbac32f5c8530fb1903cc4db02258717921a4881', 'b.txt': '0'.repeat(64) } },
    });
    expect(found).toEqual(
      expect.arrayContaining([
        expect.stringMatching(/^temp file \.tmp-ghost\.json\.abc123 left in instances\//),
        expect.stringMatching(/^record bad\.json is not a valid instance: status/),
        expect.stringMatching(/^instance ghost \(ghost\) is recorded running but has no container/),
        expect.stringMatching(/^volume vscode-swarm-orphan-workspace of instance orphan has no docker record/),
        expect.stringMatching(/^instance held is recorded running but its container is exited/),
        expect.stringMatching(/^workspace file b\.txt of held is missing/),
        expect.stringMatching(/^container \/vscode-swarm-stray-\w+ \(created\) of instance stray has no record/),
      ]),
    );
    expect(found).toHaveLength(7); // nothing about the kept volume, nor about a.txt, whose content matches
  });
});

describe('swarmViolations with the records in PostgreSQL', () => {
  let server: TestPostgres;
  let pool: StorePool;
  let stateDir: string;
  let swarmId: string;
  const labels = (id: string) => ({ [LABEL_MANAGED]: 'true', [LABEL_SWARM]: swarmId, [LABEL_INSTANCE]: id, [LABEL_NAME]: id });
  const insert = (row: { id: string; status: string; data: unknown }) =>
    pool.query(
      `INSERT INTO instances (id, owner, name, provider, status, data, version, written_by) VALUES ($1, 'local', $1, 'docker', $2, $3, nextval('instance_version_seq'), 'test')`,
      [row.id, row.status, row.data],
    );

  beforeAll(async () => {
    server = await startPostgres();
    pool = new StorePool({ databaseUrl: server.url });
    await migrate(pool);
    stateDir = await makeStateDir('inv-check-pg');
    swarmId = swarmIdFor(stateDir);
    // A record file the database lane must not read: it would be a violation (running, no container).
    await mkdir(path.join(stateDir, 'instances'));
    await writeFile(path.join(stateDir, 'instances', 'filed.json'), JSON.stringify(record('filed', 'running')));
  }, 120_000);
  afterAll(async () => {
    await removeSwarm(swarmId);
    await pool?.close();
    await server?.stop();
    await rm(stateDir, { recursive: true, force: true });
  });

  it('reads the records from the instances table, not the state directory', async () => {
    expect(await swarmViolations({ stateDir, swarmId, databaseUrl: server.url })).toEqual([]);
    await insert({ id: 'ghost', status: 'running', data: record('ghost', 'running') });
    await insert({ id: 'bad', status: 'running', data: { ...record('bad', 'running'), status: 'sleeping' } });
    await insert({ id: 'skew', status: 'stopped', data: record('skew', 'failed') });
    // A volume whose record is only in the database: no violation when the database is read.
    await insert({ id: 'vol', status: 'failed', data: record('vol', 'failed') });
    await docker.createVolume({ Name: volumeName(`vol-${swarmId}`), Labels: labels('vol') });

    const found = await swarmViolations({ stateDir, swarmId, databaseUrl: server.url });
    expect(found).toEqual(
      expect.arrayContaining([
        expect.stringMatching(/^instance ghost \(ghost\) is recorded running but has no container/),
        expect.stringMatching(/^record bad \(database\) is not a valid instance: status/),
        expect.stringMatching(/^record skew \(database\): its columns say docker:stopped, its data docker:failed/),
      ]),
    );
    expect(found).toHaveLength(3); // nothing about the file record, nor about vol's volume
  });
});
