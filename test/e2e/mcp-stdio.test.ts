/**
 * A real MCP client launches the server from mcp.json and drives one workspace through its whole life
 * on the real Docker engine, checking the stored record at every step: once with the registry files on
 * disk, once with a real PostgreSQL store (the `instances` row, read straight from the database).
 */
import { existsSync } from 'node:fs';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { VSCodeInstance } from '../../providers/provider.js';
import { cleanUp, containersNamed, docker, httpStatus, makeStateDir } from '../helpers/docker.js';
import { callTool, errorText, launchFromMcpJson, type LaunchedServer } from '../helpers/mcp.js';
import { readStoredInstance, startPostgres, type TestPostgres } from '../helpers/postgres.js';
import { TOOL_OPERATIONS } from '../../src/mcp/server.js';

const STORES = ['files', 'postgres'] as const;
const TOOLS = [
  'check_instance_health', 'recover_instance',
  'create_migration_plan', 'start_migration', 'cancel_migration', 'get_migration_status', 'list_migrations',
  'create_swarm_instance', 'delete_swarm_instance', 'execute_command', 'get_instance_access_link', 'get_instance_logs',
  'get_swarm_instance', 'get_swarm_status', 'keep_instance_alive', 'list_swarm_instances', 'start_swarm_instance',
  'stop_swarm_instance', 'update_swarm_instance', 'list_instance_ports', 'share_instance_port',
  'create_snapshot', 'list_snapshots', 'delete_snapshot', 'restore_snapshot', 'fork_instance',
  'whoami', 'list_audit_events', 'list_principals', 'add_principal', 'update_principal', 'create_token', 'list_tokens', 'revoke_token',
];

describe.each(STORES)('MCP server over stdio, launched from mcp.json, on the %s store', (store) => {
  // One prefix per variant, neither a prefix of the other: one variant's cleanup never touches the other's workspaces.
  const PREFIX = store === 'files' ? 'e2e-mcpfs' : 'e2e-mcppg';
  let stateDir: string;
  let database: TestPostgres | undefined;
  let server: LaunchedServer;
  let id: string;
  const recordFile = (): string => path.join(stateDir, 'instances', `${id}.json`);
  /** The workspace's record where this variant's store keeps it: its registry file, or its `instances` row. */
  const stored = (): Promise<VSCodeInstance | undefined> => readStoredInstance({ stateDir, databaseUrl: database?.url }, id);
  const onDisk = async (): Promise<VSCodeInstance> => (await stored()) ?? expect.unreachable(`the ${store} store holds no record of ${id}`);

  beforeAll(async () => {
    await cleanUp(PREFIX);
    stateDir = await makeStateDir(PREFIX);
    if (store === 'postgres') database = await startPostgres();
    server = await launchFromMcpJson({ VSCODE_SWARM_STATE_DIR: stateDir, ...(database ? { VSCODE_SWARM_DATABASE_URL: database.url } : {}) });
  });
  afterAll(async () => {
    await server?.close();
    await cleanUp(PREFIX, stateDir);
    await database?.stop();
  });

  it('lists the tools with schemas and honest annotations, and the resources', async () => {
    const { tools } = await server.client.listTools();
    expect(tools.map((t) => t.name).sort()).toEqual([...TOOLS].sort());
    expect(Object.keys(TOOL_OPERATIONS).sort()).toEqual([...TOOLS].sort()); // every tool says which operation (scope) it is
    for (const tool of tools) {
      expect(tool.outputSchema, tool.name).toBeDefined();
      expect(tool.inputSchema.type).toBe('object');
    }
    const byName = Object.fromEntries(tools.map((t) => [t.name, t.annotations]));
    expect(byName.list_swarm_instances?.readOnlyHint).toBe(true);
    expect(byName.delete_swarm_instance?.destructiveHint).toBe(true);
    expect(byName.create_swarm_instance).toMatchObject({ readOnlyHint: false, destructiveHint: false, idempotentHint: true });
    expect(tools.find((t) => t.name === 'execute_command')?.description).toMatch(/OFF/);

    const { resources } = await server.client.listResources();
    expect(resources.map((r) => r.uri)).toContain('swarm://status');
    const status = await server.client.readResource({ uri: 'swarm://status' });
    expect(JSON.parse((status.contents[0] as { text: string }).text)).toMatchObject({ total: 0, execEnabled: false });
  });

  it('creates a workspace with progress notifications, and the stored record says running', async () => {
    const progress: { progress: number; message?: string }[] = [];
    const result = await callTool(server.client, 'create_swarm_instance', { name: `${PREFIX}-one`, resources: { cpu: 1, memoryMb: 1024 }, metadata: { owner: 'e2e' } }, (p) => progress.push(p));
    expect(result.isError).toBeFalsy();
    const instance = result.structuredContent!.instance as VSCodeInstance;
    id = instance.id;
    expect(result.structuredContent!.created).toBe(true);
    expect(instance).toMatchObject({ name: `${PREFIX}-one`, status: 'running', providerType: 'docker' });
    expect(progress.length).toBeGreaterThanOrEqual(3);
    expect(progress.map((p) => p.progress)).toEqual([...progress.map((p) => p.progress)].sort((a, b) => a - b));
    expect(progress.some((p) => /waiting for the editor/.test(p.message ?? ''))).toBe(true);

    expect(await onDisk()).toMatchObject({ id, status: 'running', config: { resources: { cpu: 1, memoryMb: 1024 }, metadata: { owner: 'e2e' } } });
    // With PostgreSQL the database is the registry: nothing of it is written to the state folder.
    expect(existsSync(recordFile())).toBe(store === 'files');
    expect(await httpStatus(`${instance.endpoint!.url}/healthz`)).toBe(200);
    const [container] = await containersNamed(PREFIX);
    const inspect = await docker.getContainer(container!.Id).inspect();
    expect(inspect.HostConfig.Privileged).toBe(false);
    // Nothing is published: the editor is reachable only on the swarm network, whose containers cannot reach each other.
    expect(Object.keys(inspect.HostConfig.PortBindings ?? {})).toEqual([]);
    expect(inspect.HostConfig.NetworkMode).toBe('vscode-swarm');
    expect((await docker.getNetwork('vscode-swarm').inspect()).Options?.['com.docker.network.bridge.enable_icc']).toBe('false');
    expect(inspect.HostConfig.NanoCpus).toBe(1e9);
  });

  it('returns the existing workspace for the same name instead of a twin', async () => {
    const again = await callTool(server.client, 'create_swarm_instance', { name: `${PREFIX}-one` });
    expect(again.structuredContent).toMatchObject({ created: false, instance: { id } });
    expect((await containersNamed(PREFIX)).length).toBe(1);
  });

  it('gets, lists and reads it as a resource', async () => {
    expect((await callTool(server.client, 'get_swarm_instance', { instanceId: id })).structuredContent).toMatchObject({ instance: { id, status: 'running' } });
    const list = await callTool(server.client, 'list_swarm_instances', { namePattern: `${PREFIX}-*` });
    expect(list.structuredContent).toMatchObject({ count: 1 });
    expect((await callTool(server.client, 'list_swarm_instances', { status: 'stopped' })).structuredContent).toMatchObject({ count: 0 });
    const resource = await server.client.readResource({ uri: `swarm://instances/${id}` });
    expect(JSON.parse((resource.contents[0] as { text: string }).text)).toMatchObject({ id });
  });

  it('stops, and the stored record says stopped with the reason', async () => {
    const result = await callTool(server.client, 'stop_swarm_instance', { instanceId: id });
    expect(result.structuredContent).toMatchObject({ instance: { status: 'stopped' } });
    expect(await onDisk()).toMatchObject({ status: 'stopped', statusReason: 'stopped by request' });
    expect((await onDisk()).endpoint).toBeUndefined();
  });

  it('starts again, and the stored record says running at the new endpoint', async () => {
    const progress: number[] = [];
    const result = await callTool(server.client, 'start_swarm_instance', { instanceId: id }, (p) => progress.push(p.progress));
    const instance = result.structuredContent!.instance as VSCodeInstance;
    expect(instance.status).toBe('running');
    expect(progress.length).toBeGreaterThan(0);
    expect(await onDisk()).toMatchObject({ status: 'running', endpoint: { url: instance.endpoint!.url } });
    expect(await httpStatus(`${instance.endpoint!.url}/healthz`)).toBe(200);
  });

  it('resizes live, and the stored record has the new resources', async () => {
    const result = await callTool(server.client, 'update_swarm_instance', { instanceId: id, resources: { cpu: 0.5, memoryMb: 1536 } });
    expect(result.structuredContent).toMatchObject({ updateMode: 'live', instance: { config: { resources: { cpu: 0.5, memoryMb: 1536 } } } });
    expect((await onDisk()).config.resources).toEqual({ cpu: 0.5, memoryMb: 1536 });
    const [container] = await containersNamed(PREFIX);
    expect((await docker.getContainer(container!.Id).inspect()).HostConfig.Memory).toBe(1536 * 2 ** 20);
  });

  it('shows logs and the swarm status', async () => {
    const logs = await callTool(server.client, 'get_instance_logs', { instanceId: id, tail: 20 });
    expect((logs.structuredContent!.lines as string[]).length).toBeGreaterThan(0);
    const status = await callTool(server.client, 'get_swarm_status');
    expect(status.structuredContent).toMatchObject({ total: 1, byStatus: { running: 1 }, byProvider: { docker: { total: 1 } } });
    const docker = (status.structuredContent!.providers as { type: string; state: string; capabilities?: { liveResize: boolean } }[]).find((p) => p.type === 'docker');
    expect(docker).toMatchObject({ state: 'ready', capabilities: { liveResize: true } });
  });

  it('refuses bad input with the field named, and changes nothing', async () => {
    const before = await onDisk();
    const cases: [string, Record<string, unknown>, RegExp][] = [
      ['create_swarm_instance', { name: '../escape' }, /name/],
      ['create_swarm_instance', { name: 'bad-cpu', resources: { cpu: -1 } }, /cpu/],
      ['create_swarm_instance', { name: 'absurd-cpu', resources: { cpu: 200 } }, /resources\.cpu/],
      ['create_swarm_instance', { name: 'absurd-mem', resources: { memoryMb: 900_000 } }, /resources\.memoryMb/],
      ['create_swarm_instance', { name: 'bad-image', image: 'Not An Image' }, /image/],
      ['create_swarm_instance', { name: 'bad-provider', providerType: 'gcp' }, /providerType/],
      ['create_swarm_instance', { name: 'not-here', providerType: 'fly' }, /PROVIDER_UNKNOWN: providerType: "fly" is not enabled/],
      ['get_swarm_instance', { instanceId: 'a/b' }, /instanceId/],
      ['get_swarm_instance', { instanceId: `x${'y'.repeat(70)}` }, /instanceId/],
      ['stop_swarm_instance', { instanceId: 'no-such-workspace' }, /NOT_FOUND: instance no-such-workspace does not exist/],
      ['delete_swarm_instance', { instanceId: 'no-such-workspace' }, /NOT_FOUND/],
      ['update_swarm_instance', { instanceId: id }, /INVALID_INPUT: patch/],
      ['execute_command', { instanceId: id, command: 'id' }, /DISABLED: execute_command is turned off/],
    ];
    for (const [tool, args, expected] of cases) {
      expect(errorText(await callTool(server.client, tool, args)), `${tool} ${JSON.stringify(args)}`).toMatch(expected);
    }
    expect(await onDisk()).toEqual(before);
    expect((await containersNamed(PREFIX)).length).toBe(1);
    expect((await callTool(server.client, 'get_swarm_status')).structuredContent).toMatchObject({ total: 1 });
  });

  it('deletes: the stored record (file or row), the container and the volume are gone', async () => {
    const result = await callTool(server.client, 'delete_swarm_instance', { instanceId: id });
    expect(result.structuredContent).toEqual({ instanceId: id, deleted: true, workspaceKept: false });
    expect(await stored()).toBeUndefined();
    expect(existsSync(recordFile())).toBe(false);
    expect(await containersNamed(PREFIX)).toEqual([]);
    const { Volumes } = await docker.listVolumes();
    expect((Volumes ?? []).map((v) => v.Name)).not.toContain(`vscode-swarm-${id}-workspace`);
  });

  it('logs to stderr only (stdout carried nothing but MCP)', () => {
    expect(server.stderr()).toMatch(/MCP server ready on stdio/);
  });
});
