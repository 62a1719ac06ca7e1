/**
 * A workspace on Fly, through the MCP tools of a server launched from mcp.json: created on the Machines
 * API emulator (its machine a real code-server container), opened through the gateway in a real
 * browser, stopped, started with its files intact, resized, and deleted with its machine and volume.
 */
import type { Browser } from 'playwright-core';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { VSCodeInstance } from '../../providers/provider.js';
import { removeFlyEmulatorLeftovers, startFlyEmulator, LABEL_APP, type FlyEmulator } from '../emulators/fly/index.js';
import { launchChromium } from '../helpers/browser.js';
import { TEST_IMAGE, cleanUp, docker, makeStateDir } from '../helpers/docker.js';
import { callTool, errorText, launchFromMcpJson, type LaunchedServer } from '../helpers/mcp.js';

const PREFIX = 'e2e-fly';
const APP = 'vscode-swarm-e2e-fly';

describe('a Fly workspace through the MCP tools', () => {
  let emulator: FlyEmulator;
  let stateDir: string;
  let server: LaunchedServer;
  let browser: Browser;
  let instance: VSCodeInstance;
  let accessUrl: string;

  const appVolumes = async (): Promise<string[]> => {
    const { Volumes } = await docker.listVolumes({ filters: { label: [`${LABEL_APP}=${APP}`] } });
    return (Volumes ?? []).map((v) => v.Name);
  };

  beforeAll(async () => {
    await removeFlyEmulatorLeftovers(docker);
    emulator = await startFlyEmulator({ rateLimit: false });
    stateDir = await makeStateDir(PREFIX);
    server = await launchFromMcpJson({
      VSCODE_SWARM_STATE_DIR: stateDir,
      VSCODE_SWARM_ENABLE_EXEC: '1',
      VSCODE_SWARM_FLY_ENABLED: '1',
      VSCODE_SWARM_FLY_APP: APP,
      VSCODE_SWARM_FLY_API_URL: emulator.url,
      VSCODE_SWARM_FLY_IMAGE: TEST_IMAGE,
      FLY_API_TOKEN: emulator.token,
    });
    browser = await launchChromium();
  });
  afterAll(async () => {
    await browser?.close();
    await server?.close();
    await emulator?.close();
    await cleanUp(PREFIX, stateDir);
  });

  it('refuses a region fly does not offer here, creating nothing', async () => {
    expect(errorText(await callTool(server.client, 'create_swarm_instance', { name: `${PREFIX}-nowhere`, providerType: 'fly', region: 'xyz' }))).toMatch(/INVALID_INPUT: region: expected one of iad on fly \(got "xyz"\)/);
    expect(errorText(await callTool(server.client, 'create_swarm_instance', { name: `${PREFIX}-nowhere`, region: 'iad' }))).toMatch(/region: expected no region: docker has one place/);
    expect(emulator.machines(APP)).toEqual([]);
  });

  it('creates it on fly, and the status shows the fly provider ready', async () => {
    const status = await callTool(server.client, 'get_swarm_status');
    expect((status.structuredContent!.providers as { type: string; state: string }[]).find((p) => p.type === 'fly')).toMatchObject({ state: 'ready' });
    const created = await callTool(server.client, 'create_swarm_instance', { name: `${PREFIX}-ws`, providerType: 'fly', resources: { cpu: 1, memoryMb: 1024 } });
    expect(created.isError, JSON.stringify(created.content)).toBeFalsy();
    instance = created.structuredContent!.instance as VSCodeInstance;
    accessUrl = (created.structuredContent!.access as { accessUrl: string }).accessUrl;
    expect(instance).toMatchObject({ providerType: 'fly', status: 'running' });
    expect(emulator.machines(APP).filter((m) => m.state === 'started')).toHaveLength(1);
    const wrote = await callTool(server.client, 'execute_command', { instanceId: instance.id, command: 'echo "on fly" > fly.txt && cat fly.txt' });
    expect(wrote.structuredContent).toMatchObject({ exitCode: 0, stdout: 'on fly\n' });
  });

  it('opens through the gateway in a browser', async () => {
    const context = await browser.newContext();
    const page = await context.newPage();
    expect((await page.goto(accessUrl, { waitUntil: 'domcontentloaded' }))?.status()).toBe(200);
    await page.locator('.monaco-workbench').waitFor({ timeout: 60_000 });
    await page.locator('.explorer-folders-view .monaco-list-row', { hasText: 'fly.txt' }).waitFor({ timeout: 30_000 });
    await context.close();
    const anonymous = await browser.newContext();
    expect((await (await anonymous.newPage()).goto(instance.url!))?.status()).toBe(401);
    await anonymous.close();
  });

  it('stops, starts with its files intact, and resizes', async () => {
    expect((await callTool(server.client, 'stop_swarm_instance', { instanceId: instance.id })).structuredContent).toMatchObject({ instance: { status: 'stopped' } });
    expect(emulator.machines(APP).map((m) => m.state)).toEqual(['stopped']);
    expect((await callTool(server.client, 'start_swarm_instance', { instanceId: instance.id })).structuredContent).toMatchObject({ instance: { status: 'running' } });
    expect((await callTool(server.client, 'execute_command', { instanceId: instance.id, command: 'cat fly.txt' })).structuredContent).toMatchObject({ stdout: 'on fly\n' });

    const resized = await callTool(server.client, 'update_swarm_instance', { instanceId: instance.id, resources: { cpu: 2, memoryMb: 2048 } });
    expect(resized.structuredContent).toMatchObject({ updateMode: 'recreate', instance: { status: 'running', config: { resources: { cpu: 2, memoryMb: 2048 } } } });
    const [machine] = emulator.machines(APP);
    expect(machine).toBeDefined();
    expect((await callTool(server.client, 'execute_command', { instanceId: instance.id, command: 'cat fly.txt' })).structuredContent).toMatchObject({ stdout: 'on fly\n' });
    expect(errorText(await callTool(server.client, 'update_swarm_instance', { instanceId: instance.id, resources: { cpu: 3 } }))).toMatch(/INVALID_INPUT/);
  });

  it('deletes it with its machine and volume', async () => {
    expect(await appVolumes()).toHaveLength(1);
    const deleted = await callTool(server.client, 'delete_swarm_instance', { instanceId: instance.id });
    expect(deleted.structuredContent).toMatchObject({ deleted: true, workspaceKept: false });
    expect(emulator.machines(APP).filter((m) => m.state !== 'destroyed')).toEqual([]);
    expect(await appVolumes()).toEqual([]);
  });
});
