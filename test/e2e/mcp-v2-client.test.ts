/**
 * A client of today's MCP: the v2 SDK client (`@modelcontextprotocol/client`) pinned to revision
 * 2026-07-28 - no initialize, every request carrying its version and capabilities - against this server
 * over both wires: stdio (`serve`, launched from mcp.json as a client does) and Streamable HTTP
 * (`startMcpHttp` with principals' API tokens). Each lists the tools, calls a read tool, drives a workspace
 * through its life on Docker (a create with progress, stop, start, a link, delete), and meets an
 * authorization failure. Both wires run twice: with the state in the state folder's files and in a real
 * PostgreSQL (`VSCODE_SWARM_DATABASE_URL` / `store.databaseUrl`), the stored record checked in each. The
 * v1-client tests (mcp-stdio, mcp-stdio-token, tenancy, cli-remote, bad-input, ...) stay as they are:
 * 2025-11-25 clients keep working beside this one.
 */
import { Client, StreamableHTTPClientTransport, type CallToolResult } from '@modelcontextprotocol/client';
import { StdioClientTransport } from '@modelcontextprotocol/client/stdio';
import { existsSync } from 'node:fs';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createSwarm, startSwarmServices, type SwarmServices } from '../../src/controller/create-swarm.js';
import { startMcpHttp } from '../../src/mcp/http.js';
import { TOOL_OPERATIONS } from '../../src/mcp/server.js';
import { TEST_IMAGE, cleanUp, makeStateDir, testConfig } from '../helpers/docker.js';
import { mcpJsonLaunch } from '../helpers/mcp.js';
import { createDatabase, readStoredInstance, startPostgres, type StateAt, type TestPostgres } from '../helpers/postgres.js';
import { openPrincipalStore } from '../helpers/tenancy.js';

const STORES = ['files', 'postgres'] as const;
const REVISION = '2026-07-28';

function v2Client(): Client {
  return new Client({ name: 'vscode-swarm-e2e-v2', version: '1.0.0' }, { versionNegotiation: { mode: { pin: REVISION } } });
}

type Result = CallToolResult & { structuredContent?: Record<string, unknown> };

async function call(client: Client, name: string, args: Record<string, unknown> = {}, onprogress?: (p: { progress: number; total?: number; message?: string }) => void): Promise<Result> {
  return (await client.callTool({ name, arguments: args }, { ...(onprogress ? { onprogress } : {}), timeout: 170_000 })) as Result;
}

function textOf(result: Result): string {
  return (result.content as { type: string; text?: string }[]).map((c) => c.text ?? '').join('\n');
}

/**
 * A workspace through its life: created with progress, read, stopped, started, opened by a link, deleted;
 * the record in the controller's store follows it (running, stopped, gone).
 */
async function driveThroughItsLife(client: Client, name: string, at: StateAt): Promise<void> {
  const progress: { progress: number; total?: number; message?: string }[] = [];
  const created = await call(client, 'create_swarm_instance', { name }, (p) => progress.push(p));
  expect(created.isError, textOf(created)).toBeFalsy();
  const instance = created.structuredContent?.instance as { id: string; name: string; status: string };
  expect(instance).toMatchObject({ name, status: 'running' });
  expect(created.structuredContent).toMatchObject({ created: true, access: { accessUrl: expect.stringMatching(/^http/) } });
  expect(progress.length, 'progress notifications during the create').toBeGreaterThan(0);
  expect(progress.every((p) => p.total === 100 && typeof p.message === 'string')).toBe(true);
  expect(progress.map((p) => p.progress)).toEqual([...progress.map((p) => p.progress)].sort((a, b) => a - b));
  expect(await readStoredInstance(at, instance.id)).toMatchObject({ id: instance.id, name, status: 'running' });
  const status = async (): Promise<string> => {
    const got = await call(client, 'get_swarm_instance', { instanceId: instance.id });
    expect(got.isError, textOf(got)).toBeFalsy();
    return (got.structuredContent?.instance as { status: string }).status;
  };
  expect(await status()).toBe('running');
  const stopped = await call(client, 'stop_swarm_instance', { instanceId: instance.id });
  expect(stopped.isError, textOf(stopped)).toBeFalsy();
  expect(await status()).toBe('stopped');
  expect(await readStoredInstance(at, instance.id)).toMatchObject({ status: 'stopped' });
  const started = await call(client, 'start_swarm_instance', { instanceId: instance.id });
  expect(started.isError, textOf(started)).toBeFalsy();
  expect(await status()).toBe('running');
  const link = await call(client, 'get_instance_access_link', { instanceId: instance.id });
  expect(link.isError, textOf(link)).toBeFalsy();
  expect(link.structuredContent).toMatchObject({ accessUrl: expect.stringContaining(`${instance.id}.`) });
  const deleted = await call(client, 'delete_swarm_instance', { instanceId: instance.id });
  expect(deleted.isError, textOf(deleted)).toBeFalsy();
  const gone = await call(client, 'get_swarm_instance', { instanceId: instance.id });
  expect(gone.isError).toBe(true);
  expect(textOf(gone)).toMatch(/^NOT_FOUND/);
  expect(await readStoredInstance(at, instance.id)).toBeUndefined();
  // With PostgreSQL the database is the registry: no record was ever a file in the state folder.
  if (at.databaseUrl) expect(existsSync(path.join(at.stateDir, 'instances'))).toBe(false);
}

describe.each(STORES)('the v2 SDK client at 2026-07-28, on the %s store', (store) => {
  // One prefix per variant, neither a prefix of the other: one variant's cleanup never touches the other's workspaces.
  const PREFIX = store === 'files' ? 'e2e-mcpv2fs' : 'e2e-mcpv2pg';
  let stateDir: string;
  let database: TestPostgres | undefined;
  let memberToken: string;
  let viewerToken: string;
  const stdioState = (): StateAt => ({ stateDir, ...(database ? { databaseUrl: database.url } : {}) });

  beforeAll(async () => {
    await cleanUp(PREFIX);
    stateDir = await makeStateDir(PREFIX);
    if (store === 'postgres') database = await startPostgres();
    const principals = await openPrincipalStore(stdioState());
    await principals.store.addPrincipal({ id: 'mia', role: 'member' });
    await principals.store.addPrincipal({ id: 'vera', role: 'viewer' });
    memberToken = (await principals.store.createToken({ principalId: 'mia', name: 'v2-client' })).token;
    viewerToken = (await principals.store.createToken({ principalId: 'vera', name: 'v2-client' })).token;
    await principals.close();
  });
  afterAll(async () => {
    await cleanUp(PREFIX, stateDir);
    await database?.stop();
  });

  describe('over stdio (serve, from mcp.json)', () => {
    let client: Client;
    let stderr = '';

    beforeAll(async () => {
      const transport = new StdioClientTransport({
        ...mcpJsonLaunch({ VSCODE_SWARM_STATE_DIR: stateDir, VSCODE_SWARM_TOKEN: memberToken, ...(database ? { VSCODE_SWARM_DATABASE_URL: database.url } : {}) }),
        stderr: 'pipe',
      });
      transport.stderr?.on('data', (chunk: Buffer) => (stderr += chunk.toString()));
      client = v2Client();
      await client.connect(transport, { timeout: 120_000 });
    });
    afterAll(async () => {
      await client?.close();
    });

    it('speaks 2026-07-28: discover, then every tool with its schemas and annotations', async () => {
      expect(client.getNegotiatedProtocolVersion(), stderr.slice(-2000)).toBe(REVISION);
      const discovered = await client.discover();
      expect(discovered.supportedVersions).toContain(REVISION);
      expect(discovered.capabilities.tools).toBeDefined();
      const { tools } = await client.listTools();
      expect(tools.map((t) => t.name).sort()).toEqual(Object.keys(TOOL_OPERATIONS).sort());
      const create = tools.find((t) => t.name === 'create_swarm_instance')!;
      expect(create.inputSchema).toMatchObject({ type: 'object', additionalProperties: false });
      expect(create.outputSchema).toMatchObject({ type: 'object' });
      expect(create.annotations).toMatchObject({ readOnlyHint: false, idempotentHint: true });
    });

    it('a read tool answers as the token’s principal, with structured output', async () => {
      const who = await call(client, 'whoami');
      expect(who.isError, textOf(who)).toBeFalsy();
      expect(who.structuredContent).toMatchObject({ principal: { id: 'mia', role: 'member' } });
    });

    it('drives a workspace through its life, the create reporting progress', async () => {
      await driveThroughItsLife(client, `${PREFIX}-stdio`, stdioState());
    }, 200_000);

    it('a tool beyond the principal’s scopes is refused, naming the scope', async () => {
      const refused = await call(client, 'list_principals');
      expect(refused.isError).toBe(true);
      expect(textOf(refused)).toMatch(/^FORBIDDEN: .*swarm:admin/);
    });
  });

  describe('over Streamable HTTP', () => {
    let services: SwarmServices;
    let mcp: Awaited<ReturnType<typeof startMcpHttp>>;
    const clients: Client[] = [];
    const stateDirs: string[] = [];
    let httpState: StateAt;
    const connect = async (token: string | undefined): Promise<Client> => {
      const client = v2Client();
      clients.push(client);
      const transport = new StreamableHTTPClientTransport(new URL(mcp.url), token ? { requestInit: { headers: { Authorization: `Bearer ${token}` } } } : {});
      await client.connect(transport);
      return client;
    };

    beforeAll(async () => {
      // Its own state folder (the stdio server above held the first one's lock) and, with PostgreSQL, its own
      // database (the principals above are the stdio server's).
      const httpStateDir = await makeStateDir(`${PREFIX}-http`);
      stateDirs.push(httpStateDir);
      httpState = { stateDir: httpStateDir, ...(database ? { databaseUrl: await createDatabase(database, 'v2_http') } : {}) };
      const config = testConfig(httpStateDir, {
        idle: { enabled: false },
        health: { intervalMs: 3_600_000, autoRecover: false },
        ...(httpState.databaseUrl ? { store: { databaseUrl: httpState.databaseUrl } } : {}),
      });
      const controller = createSwarm(config);
      services = await startSwarmServices(controller);
      await controller.principals.addPrincipal({ id: 'mia', role: 'member' });
      await controller.principals.addPrincipal({ id: 'vera', role: 'viewer' });
      memberToken = (await controller.principals.createToken({ principalId: 'mia', name: 'v2-http' })).token;
      viewerToken = (await controller.principals.createToken({ principalId: 'vera', name: 'v2-http' })).token;
      mcp = await startMcpHttp({ controller, migrations: services.migrations, ...(services.health ? { health: services.health } : {}), host: '127.0.0.1', port: 0, stateDir: httpStateDir, logger: controller.logger });
    });
    afterAll(async () => {
      for (const c of clients) await c.close().catch(() => undefined);
      await mcp?.close();
      await services?.close();
      for (const dir of stateDirs) await cleanUp(PREFIX, dir);
    });

    it('speaks 2026-07-28 statelessly: tools listed with a cache hint, a read tool as the token’s principal', async () => {
      const client = await connect(memberToken);
      expect(client.getNegotiatedProtocolVersion()).toBe(REVISION);
      const listed = await client.listTools();
      expect(listed.tools.map((t) => t.name)).toContain('create_swarm_instance');
      expect(listed).toMatchObject({ ttlMs: 300_000, cacheScope: 'private' });
      const who = await call(client, 'whoami');
      expect(who.structuredContent).toMatchObject({ principal: { id: 'mia', role: 'member' } });
      const status = await call(client, 'get_swarm_status');
      expect(status.isError, textOf(status)).toBeFalsy();
    });

    it('drives a workspace through its life, the create reporting progress over the response stream', async () => {
      await driveThroughItsLife(await connect(memberToken), `${PREFIX}-http`, httpState);
    }, 200_000);

    it('a call beyond the token’s scope is refused 403 insufficient_scope before it runs; no token is 401', async () => {
      const viewer = await connect(viewerToken);
      // The SDK reads the 403's WWW-Authenticate challenge (the MCP authorization spec's step-up).
      await expect(call(viewer, 'create_swarm_instance', { name: `${PREFIX}-nope` })).rejects.toMatchObject({
        name: 'InsufficientScopeError',
        requiredScope: 'swarm:write',
        errorDescription: 'create_swarm_instance needs swarm:write',
      });
      const listed = await call(viewer, 'list_swarm_instances');
      expect(listed.structuredContent).toMatchObject({ instances: [] });
      await expect(connect(undefined)).rejects.toThrow(/401|unauthorized|bearer/i);
    });
  });
});
