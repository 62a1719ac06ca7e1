/**
 * The controller is killed (SIGKILL) and started again: it finds its workspaces, their state and their
 * files; it notices what changed behind its back and says why; it adopts what it does not know.
 */
import { readdir, readFile, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { DockerProvider } from '../../providers/docker/docker-provider.js';
import type { VSCodeInstance } from '../../providers/provider.js';
import { swarmIdFor } from '../../src/config.js';
import { waitUntil } from '../../src/timing/wait-until.js';
import { TEST_IMAGE, cleanUp, containersNamed, docker, makeStateDir } from '../helpers/docker.js';
import { callTool, launchFromMcpJson, type LaunchedServer } from '../helpers/mcp.js';
import { isProcessAlive } from '../../src/state/state-lock.js';

const PREFIX = 'e2e-restart';

describe('controller restart', () => {
  let stateDir: string;
  let server: LaunchedServer | undefined;
  let id: string;
  const launch = async (extraEnv: Record<string, string> = {}): Promise<LaunchedServer> => {
    server = await launchFromMcpJson({ VSCODE_SWARM_STATE_DIR: stateDir, VSCODE_SWARM_ENABLE_EXEC: '1', ...extraEnv });
    return server;
  };
  const exec = async (command: string): Promise<string> => {
    const result = await callTool(server!.client, 'execute_command', { instanceId: id, command });
    expect(result.isError, JSON.stringify(result.content)).toBeFalsy();
    return result.structuredContent!.stdout as string;
  };
  const get = async (): Promise<VSCodeInstance> => (await callTool(server!.client, 'get_swarm_instance', { instanceId: id })).structuredContent!.instance as VSCodeInstance;

  beforeAll(async () => {
    await cleanUp(PREFIX);
    stateDir = await makeStateDir(PREFIX);
  });
  afterAll(async () => {
    await server?.close().catch(() => undefined);
    await cleanUp(PREFIX, stateDir);
  });

  it('finds the workspace, its state and its files after SIGKILL', async () => {
    await launch();
    const created = await callTool(server!.client, 'create_swarm_instance', { name: `${PREFIX}-keep` });
    id = (created.structuredContent!.instance as VSCodeInstance).id;
    expect(await exec('echo precious > notes.txt && cat notes.txt')).toBe('precious\n');
    const fileBefore = await readFile(path.join(stateDir, 'instances', `${id}.json`), 'utf8');

    process.kill(server!.pid, 'SIGKILL');
    await waitUntil(async () => (isProcessAlive(server!.pid) ? undefined : true), { timeoutMs: 10_000, what: 'killed controller' });
    await server!.close().catch(() => undefined);

    await launch();
    const after = await get();
    expect(after).toMatchObject({ id, status: 'running', name: `${PREFIX}-keep` });
    expect(JSON.parse(await readFile(path.join(stateDir, 'instances', `${id}.json`), 'utf8'))).toMatchObject({ ...pick(JSON.parse(fileBefore), ['id', 'name', 'status', 'createdAt']) });
    expect(await exec('cat notes.txt')).toBe('precious\n');
    expect((await containersNamed(PREFIX)).length).toBe(1);
  });

  it('reports a container removed behind its back, with the reason, and start re-creates it around the files', async () => {
    const [container] = await containersNamed(PREFIX);
    await docker.getContainer(container!.Id).remove({ force: true });

    const missing = await get();
    expect(missing.status).toBe('failed');
    expect(missing.statusReason).toMatch(/removed outside vscode-swarm/);
    expect(JSON.parse(await readFile(path.join(stateDir, 'instances', `${id}.json`), 'utf8'))).toMatchObject({ status: 'failed' });
    const stopRefused = await callTool(server!.client, 'stop_swarm_instance', { instanceId: id });
    expect(stopRefused.isError).toBe(true);

    const restarted = await callTool(server!.client, 'start_swarm_instance', { instanceId: id });
    expect(restarted.structuredContent).toMatchObject({ instance: { status: 'running', statusReason: 're-created: its container had gone missing' } });
    expect(await exec('cat notes.txt')).toBe('precious\n');
  });

  it('on start-up adopts an unknown labelled container, settles an interrupted create and sets aside a corrupt file', async () => {
    await server!.close();
    const stray = `${PREFIX}-stray`;
    const provider = new DockerProvider({ defaultImage: TEST_IMAGE, pullImages: false, swarmId: swarmIdFor(stateDir) });
    await provider.initialize();
    await provider.createInstance({ name: stray, image: TEST_IMAGE, resources: { cpu: 0.5, memoryMb: 512 } }, { instanceId: stray });

    const interrupted: VSCodeInstance = {
      id: `${PREFIX}-half`, name: `${PREFIX}-half`, providerType: 'docker', status: 'creating', health: 'unknown',
      config: { name: `${PREFIX}-half`, image: TEST_IMAGE, resources: { cpu: 1, memoryMb: 1024 } }, providerRef: {},
      createdAt: new Date().toISOString(), updatedAt: new Date().toISOString(),
    };
    await writeFile(path.join(stateDir, 'instances', `${interrupted.id}.json`), JSON.stringify(interrupted));
    await writeFile(path.join(stateDir, 'instances', 'corrupt.json'), '{"id":');

    await launch();
    const list = (await callTool(server!.client, 'list_swarm_instances')).structuredContent!.instances as VSCodeInstance[];
    const byId = Object.fromEntries(list.map((i) => [i.id, i]));
    expect(byId[stray]).toMatchObject({ status: 'running', config: { resources: { cpu: 0.5, memoryMb: 512 } } });
    expect(byId[stray]!.statusReason).toMatch(/adopted/);
    // A create interrupted before the provider made anything is undone: no half instance is left.
    expect(byId[interrupted.id]).toBeUndefined();
    expect(await readdir(path.join(stateDir, 'instances'))).not.toContain(`${interrupted.id}.json`);
    expect(byId[id]).toMatchObject({ status: 'running' });
    expect(await readdir(path.join(stateDir, 'quarantine'))).toEqual([expect.stringMatching(/^corrupt\.json\./)]);
    expect(server!.stderr()).toMatch(/instance file set aside/);
  });
});

describe('controller killed in the middle of a delete', () => {
  const prefix = `${PREFIX}-del`;
  let stateDir: string;
  let server: LaunchedServer | undefined;
  beforeAll(async () => {
    await cleanUp(prefix);
    stateDir = await makeStateDir(prefix);
  });
  afterAll(async () => {
    await server?.close().catch(() => undefined);
    await cleanUp(prefix, stateDir);
  });

  const volumesOf = async (instanceId: string) => ((await docker.listVolumes()).Volumes ?? []).filter((v) => v.Name === `vscode-swarm-${instanceId}-workspace`);

  it.each([
    ['after the container went, before the volume', 'docker.delete.after-container', false],
    ['after the provider finished, before the record went', 'delete.after-provider', false],
    ['with the workspace kept, after the record said so', 'delete.after-record', true],
  ] as const)('%s: the next start finishes it as asked', async (_label, point, keepWorkspace) => {
    server = await launchFromMcpJson({ VSCODE_SWARM_STATE_DIR: stateDir, VSCODE_SWARM_CRASH_AT: point });
    const name = `${prefix}-${point.replace(/[^a-z]+/g, '-')}`.slice(0, 60);
    const created = await callTool(server.client, 'create_swarm_instance', { name });
    const id = (created.structuredContent!.instance as VSCodeInstance).id;
    expect(await volumesOf(id)).toHaveLength(1);
    const pid = server.pid;
    // The call never answers: the server dies at the crash point.
    await callTool(server.client, 'delete_swarm_instance', { instanceId: id, keepWorkspace }).catch(() => undefined);
    await waitUntil(async () => (isProcessAlive(pid) ? undefined : true), { timeoutMs: 20_000, what: 'the server to die at the crash point' });
    expect(server.stderr()).toContain(`crash point ${point} reached`);
    await server.close().catch(() => undefined);

    server = await launchFromMcpJson({ VSCODE_SWARM_STATE_DIR: stateDir });
    const list = (await callTool(server.client, 'list_swarm_instances')).structuredContent!.instances as VSCodeInstance[];
    expect(list.map((i) => i.id)).not.toContain(id);
    expect(await containersNamed(name)).toHaveLength(0);
    expect(await volumesOf(id)).toHaveLength(keepWorkspace ? 1 : 0);
    await server.close();
    server = undefined;
    if (keepWorkspace) await docker.getVolume(`vscode-swarm-${id}-workspace`).remove();
  });
});


function pick<T extends Record<string, unknown>>(value: T, keys: string[]): Partial<T> {
  return Object.fromEntries(keys.map((k) => [k, value[k]])) as Partial<T>;
}
