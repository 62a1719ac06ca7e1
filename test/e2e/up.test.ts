/**
 * The main job for a person: `vscode-swarm up --demo` sets up the controller with its gateway, prints how
 * to connect an MCP client and a link to a working editor, and serves MCP over HTTP while it runs.
 */
import { Client } from '@modelcontextprotocol/sdk/client/index.js';
import { StreamableHTTPClientTransport } from '@modelcontextprotocol/sdk/client/streamableHttp.js';
import { spawn, execFile, type ChildProcess } from 'node:child_process';
import { existsSync } from 'node:fs';
import { readFile } from 'node:fs/promises';
import http from 'node:http';
import path from 'node:path';
import { promisify } from 'node:util';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { waitUntil } from '../../src/timing/wait-until.js';
import { TEST_IMAGE, cleanUp, makeStateDir } from '../helpers/docker.js';
import { REPO_ROOT } from '../helpers/mcp.js';

const PREFIX = 'e2e-up';
const run = promisify(execFile);

function get(url: URL, hostHeader: string, cookie?: string): Promise<{ status: number; cookie?: string }> {
  return new Promise((resolve, reject) => {
    const req = http.request({ host: '127.0.0.1', port: url.port, path: url.pathname + url.search, headers: { host: hostHeader, ...(cookie ? { cookie } : {}) } }, (res) => {
      res.resume();
      res.on('end', () => resolve({ status: res.statusCode ?? 0, ...(res.headers['set-cookie'] ? { cookie: res.headers['set-cookie'][0]!.split(';')[0]! } : {}) }));
    });
    req.on('error', reject);
    req.end();
  });
}

describe('vscode-swarm up --demo', () => {
  let stateDir: string;
  let child: ChildProcess;
  let stdout = '';
  const env = (): NodeJS.ProcessEnv => ({
    ...process.env,
    VSCODE_SWARM_STATE_DIR: stateDir,
    VSCODE_SWARM_DOCKER_IMAGE: TEST_IMAGE,
    VSCODE_SWARM_DOCKER_PULL: '0',
    VSCODE_SWARM_GATEWAY_PORT: '0',
    VSCODE_SWARM_MCP_HTTP_PORT: '0',
    VSCODE_SWARM_DASHBOARD_PORT: '0',
    VSCODE_SWARM_LOG_LEVEL: 'warn',
  });

  beforeAll(async () => {
    await cleanUp(PREFIX);
    stateDir = await makeStateDir(PREFIX);
    child = spawn(process.execPath, ['dist/src/cli.js', 'up', '--demo', `${PREFIX}-demo`], { cwd: REPO_ROOT, env: env(), stdio: ['ignore', 'pipe', 'pipe'] });
    child.stdout!.on('data', (d: Buffer) => (stdout += d.toString()));
    child.stderr!.resume();
    await waitUntil(async () => (/Press Ctrl\+C/.test(stdout) ? true : undefined), { timeoutMs: 120_000, intervalMs: 200, what: 'up' });
  });
  afterAll(async () => {
    if (child && child.exitCode === null) child.kill('SIGKILL');
    await cleanUp(PREFIX, stateDir);
  });

  it('prints a link to a working editor', async () => {
    const link = new URL(/Demo editor: (\S+)/.exec(stdout)![1]!);
    const host = `${link.hostname}:${link.port}`;
    expect(link.hostname).toMatch(new RegExp(`^${PREFIX}-demo-[0-9a-f]{8}\\.localhost$`));
    expect((await get(new URL(`${link.origin}/`), host)).status).toBe(401);
    const signIn = await get(link, host);
    expect(signIn.status).toBe(302);
    expect((await get(new URL(`${link.origin}/healthz`), host, signIn.cookie)).status).toBe(200);
  });

  it('serves MCP over HTTP with the printed bearer token, and refuses it without', async () => {
    const [, url, token] = /MCP \(HTTP\):\s+(\S+)\s+header\s+Authorization: Bearer (\S+)/.exec(stdout)!;
    const transport = new StreamableHTTPClientTransport(new URL(url!), { requestInit: { headers: { Authorization: `Bearer ${token}` } } });
    const client = new Client({ name: 'up-e2e', version: '1.0.0' });
    await client.connect(transport);
    expect((await client.listTools()).tools.map((t) => t.name)).toContain('create_swarm_instance');
    const status = await client.callTool({ name: 'get_swarm_status', arguments: {} });
    expect(status.structuredContent).toMatchObject({ total: 1, byStatus: { running: 1 } });
    await client.close();
    const refused = await fetch(url!, { method: 'POST', headers: { 'content-type': 'application/json', accept: 'application/json, text/event-stream' }, body: '{}' });
    expect(refused.status).toBe(401);
  });

  it('stays the only controller of its state directory: the CLI beside it talks to it instead of opening the directory', async () => {
    const lockBefore = await readFile(path.join(stateDir, 'controller.lock'), 'utf8');
    const { stdout: out } = await run(process.execPath, ['dist/src/cli.js', 'list', '--json'], { cwd: REPO_ROOT, env: env() });
    expect((JSON.parse(out) as { name: string }[]).map((i) => i.name)).toContain(`${PREFIX}-demo`);
    expect(await readFile(path.join(stateDir, 'controller.lock'), 'utf8')).toBe(lockBefore);
    const { stdout: audit } = await run(process.execPath, ['dist/src/cli.js', 'audit', '--type', 'dev.vscode-swarm.instance.list', '--json'], { cwd: REPO_ROOT, env: env() });
    expect((JSON.parse(audit) as { actor: { door: string } }[]).some((e) => e.actor.door === 'mcp-http')).toBe(true);
  });

  it('stops cleanly on SIGINT and releases the state directory', async () => {
    child.kill('SIGINT');
    await waitUntil(async () => (child.exitCode !== null ? true : undefined), { timeoutMs: 20_000, what: 'up to exit' });
    expect(child.exitCode).toBe(0);
    expect(existsSync(path.join(stateDir, 'controller.lock'))).toBe(false);
  });
});
