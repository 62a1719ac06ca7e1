/**
 * A controller as a separate process, for tests where several controllers share one PostgreSQL and one is
 * killed (SIGKILL) or paused (SIGSTOP) like a real machine would be: `node dist/src/cli.js up` (so the
 * tests need `npm run build` first, as `npm test` does) with its own state directory and config file, every
 * port chosen by the system, and MCP over HTTP as the door the test talks through.
 *
 * Its log (pino JSON on stderr; `up` takes its level from VSCODE_SWARM_LOG_LEVEL, set to info) is kept, so a test can tell which controller did what.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { promises as fs } from 'node:fs';
import path from 'node:path';
import { Client } from '@modelcontextprotocol/sdk/client/index.js';
import type { SwarmConfigInput } from '../../src/config.js';
import { LABEL_INSTANCE, LABEL_MANAGED, LABEL_SWARM } from '../../providers/docker/docker-mapping.js';
import { migrate } from '../../src/store/postgres/migrations.js';
import { StorePool, type Queryable } from '../../src/store/postgres/pool.js';
import { cleanUp, docker, makeStateDir } from './docker.js';
import { startPostgres, type TestPostgres } from './postgres.js';
import { ensureStandinImage } from './standin-image.js';
import { waitUntil } from '../../src/timing/wait-until.js';
import { REPO_ROOT } from './mcp.js';
import { connectMcpHttp } from './tenancy.js';

export interface ControllerProcess {
  label: string;
  pid: number;
  child: ChildProcess;
  stateDir: string;
  /** An MCP client connected to its HTTP endpoint with its bearer token. */
  mcp: Client;
  /** That endpoint, for clients holding other credentials. */
  mcpUrl: string;
  /** Its log lines so far, parsed (pino JSON); lines that are not JSON are kept as `{ msg }`. */
  logs(): Record<string, unknown>[];
  /** Sends a signal (SIGKILL, SIGSTOP, SIGCONT). */
  signal(signal: NodeJS.Signals): void;
  /** Ends it (SIGTERM, then SIGKILL if it lingers) and closes the client. */
  stop(): Promise<void>;
}

/** Starts `up` with `config` (written to a file in `stateDir`) and waits until it says it is up. */
export async function startControllerProcess(label: string, stateDir: string, config: SwarmConfigInput, extraEnv: NodeJS.ProcessEnv = {}): Promise<ControllerProcess> {
  const file = path.join(stateDir, 'config.json');
  await fs.writeFile(
    file,
    JSON.stringify({
      ...config,
      stateDir,
      gateway: { port: 0, ...config.gateway },
      mcpHttp: { port: 0, ...config.mcpHttp },
      dashboard: { port: 0, ...config.dashboard },
    }),
  );
  const env: NodeJS.ProcessEnv = { PATH: process.env.PATH, HOME: process.env.HOME, VSCODE_SWARM_CONFIG: file, VSCODE_SWARM_LOG_LEVEL: 'info', ...extraEnv };
  if (process.env.DOCKER_HOST) env.DOCKER_HOST = process.env.DOCKER_HOST;
  const child = spawn(process.execPath, ['dist/src/cli.js', 'up'], { cwd: REPO_ROOT, env, stdio: ['ignore', 'pipe', 'pipe'] });
  let stdout = '';
  let stderr = '';
  child.stdout!.on('data', (d: Buffer) => (stdout += d.toString()));
  child.stderr!.on('data', (d: Buffer) => (stderr += d.toString()));
  const exited = new Promise<void>((resolve) => child.once('exit', () => resolve()));
  try {
    await waitUntil(
      async () => {
        if (child.exitCode !== null) throw new Error(`controller ${label} exited with ${child.exitCode}: ${stderr.slice(-2000)}`);
        return /Press Ctrl\+C/.test(stdout) ? true : undefined;
      },
      { timeoutMs: 60_000, intervalMs: 100, what: `controller ${label} up` },
    );
  } catch (err) {
    child.kill('SIGKILL');
    throw err;
  }
  const [, url, token] = /MCP \(HTTP\):\s+(\S+)\s+header\s+Authorization: Bearer (\S+)/.exec(stdout)!;
  const mcp = await connectMcpHttp(url!, token!, `controller-${label}`);
  return {
    label,
    pid: child.pid!,
    child,
    stateDir,
    mcp,
    mcpUrl: url!,
    logs: () =>
      stderr
        .split('\n')
        .filter((line) => line.trim())
        .map((line) => {
          try {
            return JSON.parse(line) as Record<string, unknown>;
          } catch {
            return { msg: line };
          }
        }),
    signal: (signal) => {
      if (child.exitCode === null && child.signalCode === null) child.kill(signal);
    },
    async stop() {
      await mcp.close().catch(() => undefined);
      if (child.exitCode !== null || child.signalCode !== null) return;
      child.kill('SIGCONT');
      child.kill('SIGTERM');
      const timer = setTimeout(() => child.kill('SIGKILL'), 10_000);
      await exited;
      clearTimeout(timer);
    },
  };
}

export interface LeaseRow {
  holder: string;
  fencing_token: string;
  live: boolean;
}

/** The lease row as the database has it now (`live`: not expired by the database's clock). */
export async function leaseRow(pool: Queryable, lease: string): Promise<LeaseRow | undefined> {
  const { rows } = await pool.query<LeaseRow>('SELECT holder, fencing_token, expires_at > clock_timestamp() AS live FROM leases WHERE name = $1', [lease]);
  return rows[0];
}

/** The controller among `among` holding `lease` live (a holder names its pid: `<host>:<pid>:…`), or undefined. */
export async function leaseHolder(pool: Queryable, lease: string, among: ControllerProcess[]): Promise<ControllerProcess | undefined> {
  const row = await leaseRow(pool, lease);
  if (!row?.live) return undefined;
  const pid = Number(row.holder.split(':')[1]);
  return among.find((c) => c.pid === pid);
}

/** Log lines of `c` with this message (and this instance, when given). */
export function logged(c: ControllerProcess, msg: string, instanceId?: string): Record<string, unknown>[] {
  return c.logs().filter((l) => l.msg === msg && (instanceId === undefined || l.instanceId === instanceId));
}

/** The Docker container of an instance of swarm `swarmId`: its id, whether it runs, when it started. */
export async function containerOf(swarmId: string, instanceId: string): Promise<{ id: string; running: boolean; startedAt: string }> {
  const [info] = await docker.listContainers({ all: true, filters: { label: [`${LABEL_MANAGED}=true`, `${LABEL_SWARM}=${swarmId}`, `${LABEL_INSTANCE}=${instanceId}`] } });
  if (!info) throw new Error(`no container for ${instanceId}`);
  const inspected = await docker.getContainer(info.Id).inspect();
  return { id: info.Id, running: inspected.State.Running, startedAt: inspected.State.StartedAt };
}

/**
 * Several `up` processes of one swarm on a throw-away PostgreSQL (migrated), with the stand-in editor image:
 * what the multi-controller tests share. start() adds a controller with its own state directory; close()
 * stops them all and removes the server, the containers and the state directories made under `prefix`.
 */
export interface ControllerRig {
  server: TestPostgres;
  /** A pool of the test's own, for looking at the database. */
  pool: StorePool;
  controllers: ControllerProcess[];
  start(label: string, config: SwarmConfigInput, env?: NodeJS.ProcessEnv): Promise<ControllerProcess>;
  close(): Promise<void>;
}

export async function startControllerRig(prefix: string): Promise<ControllerRig> {
  await ensureStandinImage();
  await cleanUp(prefix);
  const server = await startPostgres();
  const pool = new StorePool({ databaseUrl: server.url });
  await migrate(pool);
  const stateDirs: string[] = [];
  const controllers: ControllerProcess[] = [];
  return {
    server,
    pool,
    controllers,
    async start(label, config, env = {}) {
      const stateDir = await makeStateDir(`${prefix}-${label}`);
      stateDirs.push(stateDir);
      const c = await startControllerProcess(label, stateDir, config, env);
      controllers.push(c);
      return c;
    },
    async close() {
      for (const c of controllers) await c.stop();
      await pool.close();
      await server.stop();
      await cleanUp(prefix);
      for (const dir of stateDirs) await cleanUp(prefix, dir);
    },
  };
}
