/**
 * The stdio door: the launching user is the local admin, unless the client's config gives the server a
 * principal's token in VSCODE_SWARM_TOKEN; then the server acts as that principal, through the same
 * AuthorizedSwarm as every other door. A bad token keeps the server from starting, saying why, without
 * repeating the token.
 */
import { spawn } from 'node:child_process';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { PrincipalStore } from '../../src/tenancy/principals.js';
import { isProcessAlive } from '../../src/state/state-lock.js';
import { waitUntil } from '../../src/timing/wait-until.js';
import { TEST_IMAGE, cleanUp, makeStateDir } from '../helpers/docker.js';
import { REPO_ROOT, callTool, errorText, launchFromMcpJson, mcpServerEntry, type LaunchedServer } from '../helpers/mcp.js';

const PREFIX = 'e2e-stdiotok';

describe('MCP over stdio with VSCODE_SWARM_TOKEN', () => {
  let stateDir: string;
  let viewerToken: string;
  let memberToken: string;
  let revokedToken: string;
  const servers: LaunchedServer[] = [];
  /** Closes a server and waits for its process to end: the next one needs the state directory's lock. */
  const stop = async (server: LaunchedServer): Promise<void> => {
    await server.close();
    await waitUntil(async () => (isProcessAlive(server.pid) ? undefined : true), { timeoutMs: 30_000, intervalMs: 100, what: 'the server to exit' });
  };
  const launch = async (env: Record<string, string>): Promise<LaunchedServer> => {
    const server = await launchFromMcpJson({ VSCODE_SWARM_STATE_DIR: stateDir, ...env });
    servers.push(server);
    return server;
  };

  beforeAll(async () => {
    await cleanUp(PREFIX);
    stateDir = await makeStateDir(PREFIX);
    const store = new PrincipalStore({ stateDir });
    await store.open();
    await store.addPrincipal({ id: 'vera', role: 'viewer' });
    await store.addPrincipal({ id: 'mia', role: 'member' });
    viewerToken = (await store.createToken({ principalId: 'vera', name: 'desktop' })).token;
    memberToken = (await store.createToken({ principalId: 'mia', name: 'desktop' })).token;
    const revoked = await store.createToken({ principalId: 'mia', name: 'old laptop' });
    revokedToken = revoked.token;
    await store.revokeToken(revoked.info.id);
    await store.close();
  });
  afterAll(async () => {
    for (const s of servers) await s.close().catch(() => undefined);
    await cleanUp(PREFIX, stateDir);
  });

  it('acts as the token’s principal: a viewer reads but may not create, naming the scope', async () => {
    const server = await launch({ VSCODE_SWARM_TOKEN: viewerToken });
    const who = await callTool(server.client, 'whoami');
    expect(who.isError).toBeFalsy();
    expect(who.structuredContent).toMatchObject({ principal: { id: 'vera', role: 'viewer' }, scopes: ['swarm:read'] });
    const created = await callTool(server.client, 'create_swarm_instance', { name: `${PREFIX}-nope` });
    expect(created.isError).toBe(true);
    expect(errorText(created)).toMatch(/^FORBIDDEN: instance\.create needs the swarm:write scope/);
    const listed = await callTool(server.client, 'list_swarm_instances');
    expect(listed.structuredContent).toMatchObject({ instances: [] });
    await stop(server);
  });

  it('without a token, the launching user is the local admin', async () => {
    const server = await launch({});
    const who = await callTool(server.client, 'whoami');
    expect(who.structuredContent).toMatchObject({ principal: { id: 'local-admin', role: 'admin' } });
    await stop(server);
  });

  it('a member’s token: the member’s own, unnarrowed by anyone else', async () => {
    const server = await launch({ VSCODE_SWARM_TOKEN: memberToken });
    const who = await callTool(server.client, 'whoami');
    expect(who.structuredContent).toMatchObject({ principal: { id: 'mia', role: 'member' }, scopes: ['swarm:read', 'swarm:write', 'swarm:exec'] });
    const principals = await callTool(server.client, 'list_principals');
    expect(errorText(principals)).toMatch(/^FORBIDDEN: .*swarm:admin/);
    await stop(server);
  });

  it('a revoked or malformed token keeps the server from starting, saying why, and the token is not echoed', async () => {
    const entry = mcpServerEntry();
    for (const [bad, why] of [
      [revokedToken, /UNAUTHENTICATED: VSCODE_SWARM_TOKEN: token t[0-9a-f]{12} was revoked/],
      [`${memberToken.slice(0, -3)}xyz`, /UNAUTHENTICATED: VSCODE_SWARM_TOKEN: malformed or unknown token/],
      ['not-a-token', /UNAUTHENTICATED: VSCODE_SWARM_TOKEN: malformed or unknown token/],
    ] as const) {
      const child = spawn(process.execPath, entry.args, {
        cwd: REPO_ROOT,
        env: { PATH: process.env.PATH ?? '', HOME: process.env.HOME ?? '/root', ...entry.env, VSCODE_SWARM_STATE_DIR: stateDir, VSCODE_SWARM_GATEWAY_PORT: '0', VSCODE_SWARM_DOCKER_IMAGE: TEST_IMAGE, VSCODE_SWARM_TOKEN: bad },
        stdio: ['pipe', 'pipe', 'pipe'],
      });
      let stderr = '';
      let stdout = '';
      child.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
      child.stdout.on('data', (d: Buffer) => (stdout += d.toString()));
      const code = await new Promise<number | null>((resolve) => child.once('exit', resolve));
      expect(code).not.toBe(0);
      expect(stderr).toMatch(why);
      expect(stderr + stdout).not.toContain(bad);
    }
  });
});
