/**
 * The swarm's invariants, checked from the outside the way a fresh controller would find things: the
 * registry (the files on disk, or the `instances` table of a PostgreSQL store) against what the Docker
 * engine holds for the swarm. Shared by the crash harness and the other suites that kill or disturb a controller.
 */
import { promises as fs } from 'node:fs';
import path from 'node:path';
import pg from 'pg';
import { VSCodeInstanceSchema, type VSCodeInstance } from '../../providers/provider.js';
import { LABEL_INSTANCE, LABEL_MANAGED, LABEL_SWARM, WORKSPACE_PATH, volumeName } from '../../providers/docker/docker-mapping.js';
import { manifestOf } from '../../src/migration/workspace-archive.js';
import { isTempFile } from '../../src/state/atomic-file.js';
import { docker } from './docker.js';

export interface InvariantOptions {
  stateDir: string; // the controller's state directory
  swarmId: string; // swarmIdFor(stateDir) from src/config.ts unless the config sets one
  /** The controller's PostgreSQL store (`store.databaseUrl`): the records are read from its `instances` table instead of `stateDir`. */
  databaseUrl?: string;
  /** Expected workspace files per instance id: relative path -> sha256 hex. Checked only for the ids given. */
  files?: Record<string, Record<string, string>>;
  /** Volumes deliberately left behind (deleted with keepWorkspace), by instance id: not counted as leaks. */
  keptVolumes?: string[];
}

/** Statuses that say a container exists. */
const EXISTS = new Set(['running', 'stopped', 'starting', 'stopping']);
/** Statuses compatible with a running container (a start or stop in flight). */
const MAY_RUN = new Set(['running', 'starting', 'stopping']);

/** Everything wrong with the swarm as a fresh controller would find it; [] when every invariant holds. */
export async function swarmViolations(options: InvariantOptions): Promise<string[]> {
  const problems: string[] = [];
  const records = options.databaseUrl ? await readDatabaseRecords(options.databaseUrl, problems) : await readRecords(path.join(options.stateDir, 'instances'), problems);

  const labels = [`${LABEL_MANAGED}=true`, `${LABEL_SWARM}=${options.swarmId}`];
  const containers = await docker.listContainers({ all: true, filters: { label: labels } });
  const byInstance = new Map<string, typeof containers>();
  for (const c of containers) {
    const id = c.Labels[LABEL_INSTANCE] ?? '(no instance label)';
    byInstance.set(id, [...(byInstance.get(id) ?? []), c]);
  }
  const { Volumes } = await docker.listVolumes({ filters: { label: labels } });
  const kept = new Set(options.keptVolumes ?? []);

  for (const [id, list] of byInstance) {
    const names = list.map((c) => `${c.Names.join(',')} (${c.State})`).join('; ');
    const record = records.get(id);
    if (list.length > 1) problems.push(`instance ${id} has ${list.length} containers: ${names}`);
    if (!record || record.providerType !== 'docker') {
      problems.push(`container ${names} of instance ${id} has no ${record ? 'docker ' : ''}record${record ? ` (the record says ${record.providerType})` : ''}`);
      continue;
    }
    if (record.status === 'deleted') problems.push(`instance ${id} is recorded deleted but still has a container: ${names}`);
    const running = list.some((c) => c.State === 'running');
    if (running && !MAY_RUN.has(record.status)) problems.push(`instance ${id} is recorded ${record.status} but its container is running`);
    if (!running && record.status === 'running') problems.push(`instance ${id} is recorded running but its container is ${list.map((c) => c.State).join(', ')}`);
  }
  for (const record of records.values()) {
    if (record.providerType === 'docker' && EXISTS.has(record.status) && !byInstance.has(record.id)) {
      problems.push(`instance ${record.id} (${record.name}) is recorded ${record.status} but has no container`);
    }
  }
  for (const v of Volumes ?? []) {
    const id = v.Labels?.[LABEL_INSTANCE] ?? '(no instance label)';
    const record = records.get(id);
    if ((!record || record.providerType !== 'docker') && !kept.has(id)) problems.push(`volume ${v.Name} of instance ${id} has no docker record`);
  }

  for (const [id, expected] of Object.entries(options.files ?? {})) {
    const list = byInstance.get(id);
    if (!list?.length) {
      problems.push(`workspace files of ${id} cannot be read: no container (volume ${volumeName(id)})`);
      continue;
    }
    // The archive API reads the container's filesystem, volume included, running or stopped.
    const preferred = list.find((c) => c.State === 'running') ?? list[0]!;
    let manifest: Awaited<ReturnType<typeof manifestOf>>;
    try {
      const stream = await docker.getContainer(preferred.Id).getArchive({ path: `${WORKSPACE_PATH}/.` });
      const chunks: Buffer[] = [];
      for await (const chunk of stream as AsyncIterable<Buffer>) chunks.push(chunk);
      manifest = await manifestOf(Buffer.concat(chunks));
    } catch (err) {
      problems.push(`workspace files of ${id} cannot be read: ${(err as Error).message}`);
      continue;
    }
    for (const [file, sha] of Object.entries(expected)) {
      const got = manifest[file];
      if (!got) problems.push(`workspace file ${file} of ${id} is missing`);
      else if (got.sha256 !== sha) problems.push(`workspace file ${file} of ${id} differs (sha256 ${got.sha256}, expected ${sha})`);
    }
  }
  return problems;
}

/** The records of a PostgreSQL store, checked as the file records are: valid instances, and columns that agree with the record. */
async function readDatabaseRecords(databaseUrl: string, problems: string[]): Promise<Map<string, VSCodeInstance>> {
  const client = new pg.Client({ connectionString: databaseUrl, connectionTimeoutMillis: 10_000 });
  await client.connect();
  let rows: { id: string; provider: string; status: string; data: unknown }[];
  try {
    ({ rows } = await client.query<{ id: string; provider: string; status: string; data: unknown }>('SELECT id, provider, status, data FROM instances ORDER BY id'));
  } finally {
    await client.end();
  }
  const records = new Map<string, VSCodeInstance>();
  for (const row of rows) {
    const parsed = VSCodeInstanceSchema.safeParse(row.data);
    if (!parsed.success) {
      problems.push(`record ${row.id} (database) is not a valid instance: ${parsed.error.issues.map((i) => `${i.path.join('.') || '(root)'}: ${i.message}`).join('; ')}`);
    } else if (parsed.data.id !== row.id) {
      problems.push(`record ${row.id} (database) holds instance ${parsed.data.id}`);
    } else {
      if (row.status !== parsed.data.status || row.provider !== parsed.data.providerType) {
        problems.push(`record ${row.id} (database): its columns say ${row.provider}:${row.status}, its data ${parsed.data.providerType}:${parsed.data.status}`);
      }
      records.set(row.id, parsed.data);
    }
  }
  return records;
}

async function readRecords(dir: string, problems: string[]): Promise<Map<string, VSCodeInstance>> {
  const records = new Map<string, VSCodeInstance>();
  const names = await fs.readdir(dir).catch((err: NodeJS.ErrnoException) => (err.code === 'ENOENT' ? [] : Promise.reject(err)));
  for (const name of names.sort()) {
    if (isTempFile(name)) {
      problems.push(`temp file ${name} left in instances/ (an interrupted write nobody cleaned up)`);
      continue;
    }
    if (!name.endsWith('.json')) continue;
    const id = name.slice(0, -'.json'.length);
    let text: string;
    try {
      text = await fs.readFile(path.join(dir, name), 'utf8');
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'ENOENT') continue; // removed meanwhile by a live controller
      throw err;
    }
    let parsed: ReturnType<typeof VSCodeInstanceSchema.safeParse>;
    try {
      parsed = VSCodeInstanceSchema.safeParse(JSON.parse(text));
    } catch (err) {
      problems.push(`record ${name} is not JSON: ${(err as Error).message}`);
      continue;
    }
    if (!parsed.success) {
      problems.push(`record ${name} is not a valid instance: ${parsed.error.issues.map((i) => `${i.path.join('.') || '(root)'}: ${i.message}`).join('; ')}`);
    } else if (parsed.data.id !== id) {
      problems.push(`record ${name} holds instance ${parsed.data.id}, not ${id}`);
    } else {
      records.set(id, parsed.data);
    }
  }
  return records;
}
