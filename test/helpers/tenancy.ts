/**
 * What suites about principals share: an MCP client over HTTP signed in with one bearer credential, a tool
 * call whose HTTP refusal (401, 403 insufficient_scope) comes back as a value rather than an exception,
 * and snapshots of what the Docker engine and the state folder hold, to prove that refused calls changed
 * nothing and that no secret was written where it should not be.
 */
import { Client } from '@modelcontextprotocol/sdk/client/index.js';
import { StreamableHTTPClientTransport, StreamableHTTPError } from '@modelcontextprotocol/sdk/client/streamableHttp.js';
import { promises as fs } from 'node:fs';
import path from 'node:path';
import { LABEL_MANAGED, LABEL_SWARM } from '../../providers/docker/docker-mapping.js';
import { PgPrincipalStore } from '../../src/store/postgres/principal-store.js';
import { StorePool } from '../../src/store/postgres/pool.js';
import { PrincipalStore, type PrincipalDirectory } from '../../src/tenancy/principals.js';
import { docker } from './docker.js';
import { callTool, errorText, type ToolResult } from './mcp.js';

/** An API token's parts: `vss_<id>_<secret>`. */
export function tokenParts(token: string): { id: string; secret: string } {
  const match = /^vss_(t[0-9a-f]{12})_([A-Za-z0-9_-]{43})$/.exec(token);
  if (!match) throw new Error(`not an API token: ${token.slice(0, 8)}…`);
  return { id: match[1]!, secret: match[2]! };
}

/** The real SDK client over Streamable HTTP, sending `Authorization: Bearer <credential>` with every request. */
export async function connectMcpHttp(url: string, credential: string, name = 'tenancy-e2e'): Promise<Client> {
  const transport = new StreamableHTTPClientTransport(new URL(url), { requestInit: { headers: { Authorization: `Bearer ${credential}` } } });
  const client = new Client({ name, version: '1.0.0' });
  await client.connect(transport);
  return client;
}

export type CallOutcome =
  | { kind: 'ok'; result: ToolResult }
  /** A tool error, as the tool reported it ("NOT_FOUND: ..."). */
  | { kind: 'error'; text: string }
  /** Refused at the HTTP door before any tool ran. */
  | { kind: 'http'; status: number; message: string };

/** Calls a tool; a tool error and an HTTP refusal are results, anything else still throws. */
export async function attemptTool(client: Client, tool: string, args: Record<string, unknown>): Promise<CallOutcome> {
  try {
    const result = await callTool(client, tool, args);
    return result.isError ? { kind: 'error', text: errorText(result) } : { kind: 'ok', result };
  } catch (err) {
    if (err instanceof StreamableHTTPError) return { kind: 'http', status: err.code ?? 0, message: err.message };
    throw err;
  }
}

/** One line for an assertion message. */
export function describeOutcome(outcome: CallOutcome): string {
  if (outcome.kind === 'ok') return `ok ${JSON.stringify(outcome.result.structuredContent ?? outcome.result.content).slice(0, 300)}`;
  if (outcome.kind === 'error') return `tool error ${outcome.text}`;
  return `HTTP ${outcome.status} ${outcome.message}`;
}

export interface EngineSnapshot {
  containers: { id: string; name: string; image: string; state: string; startedAt: string; finishedAt: string; restarts: number; labels: Record<string, string> }[];
  volumes: { name: string; labels: Record<string, string> }[];
}

/** Every container (inspected: state, start and finish times, restarts, labels) and volume of one swarm. */
export async function engineSnapshot(swarmId: string): Promise<EngineSnapshot> {
  const labels = [`${LABEL_MANAGED}=true`, `${LABEL_SWARM}=${swarmId}`];
  const listed = await docker.listContainers({ all: true, filters: { label: labels } });
  const containers = await Promise.all(
    listed.map(async (c) => {
      const info = await docker.getContainer(c.Id).inspect();
      return {
        id: info.Id,
        name: info.Name,
        image: info.Config.Image,
        state: info.State.Status,
        startedAt: info.State.StartedAt,
        finishedAt: info.State.FinishedAt,
        restarts: info.RestartCount,
        labels: info.Config.Labels ?? {},
      };
    }),
  );
  const { Volumes } = await docker.listVolumes({ filters: { label: labels } });
  return {
    containers: containers.sort((a, b) => a.id.localeCompare(b.id)),
    volumes: (Volumes ?? []).map((v) => ({ name: v.Name, labels: v.Labels ?? {} })).sort((a, b) => a.name.localeCompare(b.name)),
  };
}

/** Every regular file under a folder, as paths relative to it, sorted. */
export async function filesUnder(dir: string): Promise<string[]> {
  const out: string[] = [];
  const walk = async (rel: string): Promise<void> => {
    for (const entry of await fs.readdir(path.join(dir, rel), { withFileTypes: true })) {
      const child = path.join(rel, entry.name);
      if (entry.isDirectory()) await walk(child);
      else if (entry.isFile()) out.push(child);
    }
  };
  await walk('');
  return out.sort();
}

/** Which of the needles (by label) occur in the text. */
export function needlesIn(text: string, needles: ReadonlyMap<string, string>): string[] {
  return [...needles].filter(([, needle]) => text.includes(needle)).map(([label]) => label);
}

/**
 * The principal store a controller on this state would open, opened beside it: PostgreSQL (on a pool of
 * its own, schema migrated) when a database URL is given, the state folder's principals.json otherwise.
 * `now` sets its clock (a token made "two days ago"). close() closes the store, then its pool.
 */
export async function openPrincipalStore(options: { stateDir: string; databaseUrl?: string; now?: () => Date }): Promise<{ store: PrincipalDirectory; close(): Promise<void> }> {
  const clock = options.now ? { now: options.now } : {};
  if (!options.databaseUrl) {
    const store = new PrincipalStore({ stateDir: options.stateDir, ...clock });
    await store.open();
    return { store, close: () => store.close() };
  }
  const pool = new StorePool({ databaseUrl: options.databaseUrl });
  const store = new PgPrincipalStore({ pool, stateDir: options.stateDir, migrateOnOpen: true, ...clock });
  try {
    await store.open();
  } catch (err) {
    await store.close().catch(() => undefined);
    await pool.close();
    throw err;
  }
  return {
    store,
    async close() {
      await store.close();
      await pool.close();
    },
  };
}
