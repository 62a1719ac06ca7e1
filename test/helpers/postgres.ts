/**
 * A throw-away PostgreSQL server for the store tests: Debian's binaries (scripts/setup.sh --for-tests
 * installs them when missing), a fresh cluster in a temp directory, on a free loopback port. PostgreSQL
 * refuses to run as root, so the cluster belongs to and runs as the `postgres` user.
 *
 * `kill` takes the server away abruptly (immediate shutdown: no checkpoint, connections cut) and `restart`
 * brings it back on the same port and data, for "the controller loses its database".
 *
 * `queryDatabase`, `readInstanceRow` and `databaseRows` read what a controller wrote, straight from the
 * tables, for suites that check the store itself rather than what a controller says it holds
 * (`readStoredInstance`: the record from whichever store, files or database, a controller uses);
 * `createDatabase` gives a suite a second, empty database on the same server.
 */
import { execFile } from 'node:child_process';
import { promises as fs, existsSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { promisify } from 'node:util';
import pg from 'pg';
import type { VSCodeInstance } from '../../providers/provider.js';
import { freePort } from './ports.js';

const run = promisify(execFile);

export interface TestPostgres {
  /** postgres://swarm:<password>@127.0.0.1:<port>/postgres */
  url: string;
  /** The password in the URL (trust auth: any password is accepted; tests check it never leaks). */
  password: string;
  port: number;
  /** Stops the server (fast) and removes its directory. */
  stop(): Promise<void>;
  /** Takes the server away abruptly; the data stays for restart(). */
  kill(): Promise<void>;
  /** Starts it again on the same port and data. */
  restart(): Promise<void>;
}

/** The bin directory of the newest installed PostgreSQL. */
export async function postgresBinDir(): Promise<string> {
  const root = '/usr/lib/postgresql';
  const versions = existsSync(root) ? (await fs.readdir(root)).filter((v) => existsSync(path.join(root, v, 'bin', 'initdb'))) : [];
  const newest = versions.sort((a, b) => Number(b) - Number(a))[0];
  if (!newest) throw new Error(`no PostgreSQL under ${root}: run "bash scripts/setup.sh --for-tests" (it installs Debian's postgresql)`);
  return path.join(root, newest, 'bin');
}

async function asPostgres(bin: string, args: string[]): Promise<void> {
  try {
    await run('runuser', ['-u', 'postgres', '--', bin, ...args], { timeout: 60_000 });
  } catch (err) {
    const e = err as { stderr?: string; message: string };
    throw new Error(`${path.basename(bin)} ${args[0] ?? ''} failed: ${e.stderr || e.message}`);
  }
}

export async function startPostgres(): Promise<TestPostgres> {
  const bin = await postgresBinDir();
  const dir = await fs.mkdtemp(path.join(os.tmpdir(), 'swarm-pg-'));
  await fs.chown(dir, ...(await postgresIds()));
  const data = path.join(dir, 'data');
  const port = await freePort();
  const password = `pw-${Math.random().toString(36).slice(2)}-secret`;
  await asPostgres(path.join(bin, 'initdb'), ['-D', data, '-U', 'swarm', '--auth=trust', '--no-sync', '-E', 'UTF8']);
  const start = (): Promise<void> =>
    asPostgres(path.join(bin, 'pg_ctl'), ['-D', data, '-o', `-p ${port} -k ${dir} -c listen_addresses=127.0.0.1 -c fsync=off`, '-l', path.join(dir, 'log'), '-w', 'start']);
  const stopWith = (mode: 'fast' | 'immediate'): Promise<void> => asPostgres(path.join(bin, 'pg_ctl'), ['-D', data, '-m', mode, '-w', 'stop']);
  await start();
  let running = true;
  return {
    url: `postgres://swarm:${password}@127.0.0.1:${port}/postgres`,
    password,
    port,
    async stop() {
      if (running) await stopWith('fast').catch(() => undefined);
      running = false;
      await fs.rm(dir, { recursive: true, force: true });
    },
    async kill() {
      await stopWith('immediate');
      running = false;
    },
    async restart() {
      await start();
      running = true;
    },
  };
}

async function postgresIds(): Promise<[number, number]> {
  const { stdout: uid } = await run('id', ['-u', 'postgres']);
  const { stdout: gid } = await run('id', ['-g', 'postgres']);
  return [Number(uid.trim()), Number(gid.trim())];
}

/** The rows of one query, on a connection of its own (opened and ended here). */
export async function queryDatabase<R extends pg.QueryResultRow = pg.QueryResultRow>(url: string, sql: string, params: unknown[] = []): Promise<R[]> {
  const client = new pg.Client({ connectionString: url });
  await client.connect();
  try {
    return (await client.query<R>(sql, params)).rows;
  } finally {
    await client.end();
  }
}

/** The record the `instances` row of one workspace holds (its `data`), or undefined when there is no row. */
export async function readInstanceRow(url: string, id: string): Promise<VSCodeInstance | undefined> {
  const rows = await queryDatabase<{ data: VSCodeInstance }>(url, 'SELECT data FROM instances WHERE id = $1', [id]);
  return rows[0]?.data;
}

/** Where a controller keeps its state: its state folder, and its database when it has one (`store.databaseUrl`). */
export interface StateAt {
  stateDir: string;
  databaseUrl?: string | undefined;
}

/** A workspace's record where the controller keeps it: its `instances` row, or its registry file; undefined when there is none. */
export async function readStoredInstance(at: StateAt, id: string): Promise<VSCodeInstance | undefined> {
  if (at.databaseUrl) return readInstanceRow(at.databaseUrl, id);
  const file = path.join(at.stateDir, 'instances', `${id}.json`);
  return existsSync(file) ? (JSON.parse(await fs.readFile(file, 'utf8')) as VSCodeInstance) : undefined;
}

/** Every row of every table of the public schema as text (`row::text`), named `<table> <id or name>` (or `<table> #<n>` without either column). */
export async function databaseRows(url: string): Promise<{ where: string; text: string }[]> {
  const tables = await queryDatabase<{ name: string }>(url, "SELECT table_name AS name FROM information_schema.tables WHERE table_schema = 'public' AND table_type = 'BASE TABLE' ORDER BY 1");
  const out: { where: string; text: string }[] = [];
  for (const { name } of tables) {
    const rows = await queryDatabase<{ id: string | null; text: string }>(url, `SELECT coalesce(to_jsonb(t)->>'id', to_jsonb(t)->>'name') AS id, t::text AS text FROM "${name}" t`);
    rows.forEach((row, n) => out.push({ where: `${name} ${row.id ?? `#${n + 1}`}`, text: row.text }));
  }
  return out;
}

/** A new empty database on the server (name: lower-case letters, digits, `_`), and its URL. */
export async function createDatabase(server: TestPostgres, name: string): Promise<string> {
  if (!/^[a-z_][a-z0-9_]{0,62}$/.test(name)) throw new Error(`database name ${JSON.stringify(name)}: expected lower-case letters, digits and _`);
  await queryDatabase(server.url, `CREATE DATABASE ${name}`);
  return server.url.replace(/\/postgres$/, `/${name}`);
}
