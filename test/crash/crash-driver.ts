/**
 * Drives the real stdio server (launched from mcp.json) to a named crash point, confirms it died there
 * by SIGKILL, and starts the next server on the same state directory. A "lane" is one state directory
 * with its config file, and the store its records live in (the JSON files there, or a PostgreSQL database
 * of its own); several crash points run one after another in a lane.
 */
import { createHash } from 'node:crypto';
import { writeFile } from 'node:fs/promises';
import path from 'node:path';
import { swarmIdFor } from '../../src/config.js';
import { CRASH_ENV } from '../../src/crash/crash-points.js';
import { waitUntil } from '../../src/timing/wait-until.js';
import type { VSCodeInstance } from '../../providers/provider.js';
import { makeStateDir } from '../helpers/docker.js';
import type { InvariantOptions } from '../helpers/invariants.js';
import { callTool, launchFromMcpJson, type LaunchedServer, type ToolResult } from '../helpers/mcp.js';
import { isProcessAlive } from '../../src/state/state-lock.js';
import { PrincipalStore } from '../../src/tenancy/principals.js';

export type LaneStore = 'file' | 'postgres';

export interface Lane {
  label: string;
  stateDir: string;
  swarmId: string;
  /** Where the records live: the JSON files under stateDir, or the PostgreSQL database at databaseUrl. */
  store: LaneStore;
  databaseUrl?: string;
  configFile: string;
  env: Record<string, string>;
}

/**
 * A lane on a new state directory. With `databaseUrl` its servers keep their records in that database
 * (`store.databaseUrl` in the config file); the swarm id is the config's, or derived from the state
 * directory as the server derives it, so every server of the lane is the same swarm.
 */
export async function makeLane(label: string, config: Record<string, unknown>, env: Record<string, string>, options: { databaseUrl?: string } = {}): Promise<Lane> {
  const stateDir = await makeStateDir(label);
  const configFile = path.join(stateDir, 'crash-config.json');
  const lane: Lane = {
    label,
    stateDir,
    swarmId: typeof config.swarmId === 'string' ? config.swarmId : swarmIdFor(stateDir),
    store: options.databaseUrl ? 'postgres' : 'file',
    ...(options.databaseUrl ? { databaseUrl: options.databaseUrl } : {}),
    configFile,
    env: { ...env, VSCODE_SWARM_STATE_DIR: stateDir, VSCODE_SWARM_CONFIG: configFile, VSCODE_SWARM_ENABLE_EXEC: '1' },
  };
  await configureLane(lane, config);
  if (!options.databaseUrl) {
    // The principal store writes its file and the local credential on a new state directory's first start:
    // done here, so that `state.after-write:<n>` counts the writes of the operations driven, as it always has.
    const principals = new PrincipalStore({ stateDir });
    await principals.open();
    await principals.close();
  }
  return lane;
}

/** Writes the lane's config file (the store kept as the lane has it); the next server launched reads it. */
export async function configureLane(lane: Lane, config: Record<string, unknown>): Promise<void> {
  await writeFile(lane.configFile, JSON.stringify({ ...config, ...(lane.databaseUrl ? { store: { databaseUrl: lane.databaseUrl } } : {}) }));
}


/** Where swarmViolations reads the lane's records and engine objects from. */
export function laneInvariants(lane: Lane): Pick<InvariantOptions, 'stateDir' | 'swarmId' | 'databaseUrl'> {
  return { stateDir: lane.stateDir, swarmId: lane.swarmId, ...(lane.databaseUrl ? { databaseUrl: lane.databaseUrl } : {}) };
}

export function launch(lane: Lane, crashAt?: string): Promise<LaunchedServer> {
  return launchFromMcpJson({ ...lane.env, ...(crashAt ? { [CRASH_ENV]: crashAt } : {}) }, { connectTimeoutMs: 170_000 });
}

/** A tool call that must succeed: an error result throws with its text. */
export async function ok(server: LaunchedServer, tool: string, args: Record<string, unknown> = {}): Promise<Record<string, unknown>> {
  const result: ToolResult = await callTool(server.client, tool, args);
  if (result.isError) {
    const text = (result.content as { text?: string }[]).map((c) => c.text ?? '').join('\n');
    throw new Error(`${tool} ${JSON.stringify(args)} failed: ${text}`);
  }
  return result.structuredContent ?? {};
}

export async function list(server: LaunchedServer): Promise<VSCodeInstance[]> {
  return (await ok(server, 'list_swarm_instances', { includeWarm: true })).instances as VSCodeInstance[];
}

/**
 * Launches a server that dies at `crashAt` (`<point>` or `<point>:<n>`) while `drive` runs, and
 * confirms it died there. `drive` must reach the point; finishing without dying is a failure.
 */
export async function killAt(lane: Lane, crashAt: string, drive: (server: LaunchedServer) => Promise<void>): Promise<void> {
  const point = crashAt.split(':')[0]!;
  const server = await launch(lane, crashAt);
  let driveError: unknown;
  let finished = false;
  try {
    await drive(server);
    finished = true;
  } catch (err) {
    driveError = err;
  }
  try {
    if (finished) {
      // Some points are reached by work that outlives the tool call (a refill, a write chain): give it a moment.
      await waitUntil(async () => (isProcessAlive(server.pid) ? undefined : true), { timeoutMs: 15_000, what: `the server to die at ${crashAt}` }).catch(() => {
        throw new Error(`${crashAt}: the operation finished and the server never reached the crash point`);
      });
    } else {
      await waitUntil(async () => (isProcessAlive(server.pid) ? undefined : true), { timeoutMs: 30_000, what: `the server to die at ${crashAt}` }).catch(() => {
        throw new Error(`${crashAt}: the server is still alive after the drive failed: ${(driveError as Error)?.message}`);
      });
    }
    if (!server.stderr().includes(`crash point ${point} reached`)) {
      throw new Error(`${crashAt}: the server died, but not at the crash point: ${server.stderr().slice(-2000)}`);
    }
  } finally {
    await server.close().catch(() => undefined);
  }
}


/** Deterministic workspace content for an instance: the command that writes it and the SHA-256 of each file. */
export function seededFiles(seed: string): { command: string; files: Record<string, string> } {
  const notes = `notes of ${seed}\n`;
  // busybox seq and sed produce exactly these bytes; the expected hash is computed here, independently.
  const lines = Array.from({ length: 3000 }, (_, i) => `${seed}-${i + 1}\n`).join('');
  return {
    command: `printf '%s\\n' 'notes of ${seed}' > notes.txt && mkdir -p deep/er && seq 1 3000 | sed 's/^/${seed}-/' > deep/er/lines.txt`,
    files: { 'notes.txt': sha256(notes), 'deep/er/lines.txt': sha256(lines) },
  };
}

export function sha256(text: string): string {
  return createHash('sha256').update(text).digest('hex');
}

/** The files' SHA-256 as the instance itself reports them (any provider), through execute_command. */
export async function filesThroughExec(server: LaunchedServer, instanceId: string, names: string[]): Promise<Record<string, string>> {
  const out = await ok(server, 'execute_command', { instanceId, command: `sha256sum ${names.map((n) => `'${n}'`).join(' ')}` });
  const found: Record<string, string> = {};
  for (const line of String(out.stdout).split('\n')) {
    const m = /^([0-9a-f]{64})\s+(.+)$/.exec(line.trim());
    if (m) found[m[2]!] = m[1]!;
  }
  return found;
}
