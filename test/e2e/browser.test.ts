/**
 * A person opens the URL create_swarm_instance returned, in a real browser: the VS Code workbench
 * renders through the gateway, a file opens, typing into it and saving lands in the workspace volume.
 * Without the token the same address answers 401. The screenshot is kept in test-artifacts/.
 */
import { execFile } from 'node:child_process';
import { mkdir } from 'node:fs/promises';
import path from 'node:path';
import { promisify } from 'node:util';
import type { Browser } from 'playwright-core';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { VSCodeInstance } from '../../providers/provider.js';
import { waitUntil } from '../../src/timing/wait-until.js';
import { launchChromium } from '../helpers/browser.js';
import { TEST_IMAGE, cleanUp, containersNamed, docker, makeStateDir } from '../helpers/docker.js';
import { REPO_ROOT, callTool, launchFromMcpJson, type LaunchedServer } from '../helpers/mcp.js';

const run = promisify(execFile);
const PREFIX = 'e2e-browser';
const ARTIFACTS = path.join(REPO_ROOT, 'test-artifacts');

/** Reads a file from the workspace volume through a separate container: what is on the volume, not what the editor holds. */
async function readFromVolume(volume: string, file: string): Promise<string> {
  const { stdout } = await run('docker', ['run', '--rm', '--network', 'none', '-v', `${volume}:/w:ro`, '--entrypoint', 'cat', TEST_IMAGE, `/w/${file}`]).catch(() => ({ stdout: '' }));
  return stdout;
}

describe('opening a workspace in a browser', () => {
  let stateDir: string;
  let server: LaunchedServer;
  let browser: Browser;
  let instance: VSCodeInstance;
  let accessUrl: string;

  beforeAll(async () => {
    await cleanUp(PREFIX);
    stateDir = await makeStateDir(PREFIX);
    await mkdir(ARTIFACTS, { recursive: true });
    server = await launchFromMcpJson({ VSCODE_SWARM_STATE_DIR: stateDir });
    browser = await launchChromium();
  });
  afterAll(async () => {
    await browser?.close();
    await server?.close();
    await cleanUp(PREFIX, stateDir);
  });

  it('create_swarm_instance returns a gateway URL with a one-time link', async () => {
    const result = await callTool(server.client, 'create_swarm_instance', { name: `${PREFIX}-ws` });
    expect(result.isError, JSON.stringify(result.content)).toBeFalsy();
    instance = result.structuredContent!.instance as VSCodeInstance;
    const access = result.structuredContent!.access as { url: string; accessUrl: string };
    accessUrl = access.accessUrl;
    expect(access.url).toMatch(new RegExp(`^http://${instance.id}\\.localhost:\\d+/$`));
    expect(accessUrl.startsWith(`${access.url}?swarm_token=`)).toBe(true);
    expect(instance.url).toBe(access.url);
  });

  it('renders the workbench, opens a file, and what is typed lands in the workspace volume', async () => {
    // A file for the person to open, written as the editor's user.
    const [container] = await containersNamed(PREFIX);
    const exec = await docker.getContainer(container!.Id).exec({ Cmd: ['sh', '-c', 'printf "first line\\n" > /home/coder/project/notes.txt'], User: 'coder' });
    await exec.start({ hijack: true, stdin: false }).then((s) => new Promise((r) => s.on('end', r).resume()));

    const context = await browser.newContext({ viewport: { width: 1280, height: 800 } });
    const page = await context.newPage();
    const response = await page.goto(accessUrl, { waitUntil: 'domcontentloaded' });
    expect(response?.status()).toBe(200);
    expect(page.url()).not.toContain('swarm_token'); // exchanged for the cookie and dropped from the address
    await page.locator('.monaco-workbench').waitFor({ timeout: 60_000 });
    const cookies = await context.cookies();
    expect(cookies.find((c) => c.name === 'swarm_session')).toMatchObject({ httpOnly: true, domain: `${instance.id}.localhost` });

    // Open the file from the explorer, type, save.
    const row = page.locator('.explorer-folders-view .monaco-list-row', { hasText: 'notes.txt' });
    await row.waitFor({ timeout: 30_000 });
    await row.click();
    const editor = page.locator('.editor-instance .monaco-editor .view-lines');
    await editor.waitFor({ timeout: 30_000 });
    // Monaco renders spaces as no-break spaces.
    await expect.poll(async () => (await editor.innerText()).replace(/\u00a0/g, ' '), { timeout: 15_000 }).toContain('first line');
    await editor.click();
    await page.keyboard.press('Control+End');
    await page.keyboard.type('typed in the browser');
    await page.keyboard.press('Control+S');

    const volume = `vscode-swarm-${instance.id}-workspace`;
    await waitUntil(async () => ((await readFromVolume(volume, 'notes.txt')).includes('typed in the browser') ? true : undefined), {
      timeoutMs: 20_000,
      intervalMs: 500,
      what: 'the typed text on the workspace volume',
    });
    expect(await readFromVolume(volume, 'notes.txt')).toBe('first line\ntyped in the browser');
    await page.screenshot({ path: path.join(ARTIFACTS, 'browser-workbench.png') });
    await context.close();
  });

  it('answers 401 to the same address without the token, and to the spent link', async () => {
    const context = await browser.newContext();
    const page = await context.newPage();
    expect((await page.goto(instance.url!))?.status()).toBe(401);
    expect((await page.goto(accessUrl))?.status()).toBe(401); // one-time: already exchanged by the other browser
    await context.close();
  });
});
