/**
 * The CLI's tenancy commands (whoami, principals, tokens, audit) as a person runs them: the real CLI
 * (dist/src/cli.js, so `npm run build` first) as separate processes over a real state directory, with no
 * provider configured, so nothing here needs Docker. In one-shot mode each command starts a controller of
 * its own and acts as the local admin, or as VSCODE_SWARM_TOKEN's principal; the audit trail records door
 * `cli`. Last, the same commands through a running `up` (MCP over HTTP) print the same JSON.
 */
import { execFile, spawn, type ChildProcess } from 'node:child_process';
import { existsSync } from 'node:fs';
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { waitUntil } from '../../src/timing/wait-until.js';
import { REPO_ROOT } from '../helpers/mcp.js';

const CLI = path.join(REPO_ROOT, 'dist/src/cli.js');

interface Run {
  code: number;
  stdout: string;
  stderr: string;
}

describe('the CLI in one-shot mode: principals, tokens, whoami, audit', () => {
  let dir: string;
  let stateDir: string;
  let configFile: string;
  let aliceToken: string;
  let aliceTokenId: string;
  let up: ChildProcess | undefined;

  const env = (extra: Record<string, string>): NodeJS.ProcessEnv => {
    const clean = Object.fromEntries(Object.entries(process.env).filter(([k]) => !k.startsWith('VSCODE_SWARM_')));
    return { ...clean, VSCODE_SWARM_LOG_LEVEL: 'warn', ...extra };
  };

  function cli(args: string[], extra: Record<string, string> = {}): Promise<Run> {
    return new Promise((resolve) => {
      execFile(process.execPath, [CLI, ...args, '--config', configFile], { cwd: REPO_ROOT, env: env(extra) }, (err, stdout, stderr) => {
        const code = err ? (typeof (err as { code?: unknown }).code === 'number' ? ((err as { code: number }).code) : 1) : 0;
        resolve({ code, stdout, stderr });
      });
    });
  }

  /** A command that must work; its stdout parsed as JSON. */
  async function json<T>(args: string[], extra: Record<string, string> = {}): Promise<T> {
    const r = await cli([...args, '--json'], extra);
    expect(r.code, `${args.join(' ')}: ${r.stderr}`).toBe(0);
    return JSON.parse(r.stdout) as T;
  }

  beforeAll(async () => {
    if (!existsSync(CLI)) throw new Error(`${CLI} is missing: run npm run build first`);
    dir = await mkdtemp(path.join(os.tmpdir(), 'cli-oneshot-'));
    stateDir = path.join(dir, 'state');
    configFile = path.join(dir, 'config.json');
    await writeFile(configFile, JSON.stringify({ stateDir, logLevel: 'warn', providers: { docker: { enabled: false } }, gateway: { enabled: false }, mcpHttp: { port: 0 } }));
  });

  afterAll(async () => {
    if (up && up.exitCode === null) up.kill('SIGKILL');
    if (dir) await rm(dir, { recursive: true, force: true });
  });

  it('whoami: the local admin through the cli door, unnarrowed', async () => {
    const me = await json<{ principal: { id: string; role: string }; scopes: string[]; door: string; credentialId?: string; usage: { instances: number }; limits: object }>(['whoami']);
    expect(me.principal).toMatchObject({ id: 'local-admin', role: 'admin' });
    expect(me.scopes).toEqual(['swarm:read', 'swarm:write', 'swarm:exec', 'swarm:admin']);
    expect(me.door).toBe('cli');
    expect(me.credentialId).toBeUndefined();
    expect(me.usage.instances).toBe(0);
    const text = await cli(['whoami']);
    expect(text.stdout).toMatch(/^local-admin \(admin\) via cli\n/);
  });

  it('principals add, list, set (limits merge), disable and enable', async () => {
    const alice = await json<Record<string, unknown>>(['principals', 'add', 'alice', '--name', 'Alice A', '--role', 'member', '--kind', 'service', '--subject', 'sub-1', '--subject', 'sub-2', '--max-instances', '2', '--max-cpu', '4']);
    expect(alice).toMatchObject({ id: 'alice', name: 'Alice A', kind: 'service', role: 'member', subjects: ['sub-1', 'sub-2'], quotas: { instances: 2, cpu: 4 } });
    const bob = await json<Record<string, unknown>>(['principals', 'add', 'bob']);
    expect(bob).toMatchObject({ id: 'bob', name: 'bob', kind: 'person', role: 'member' });
    expect(bob.quotas).toBeUndefined();

    const again = await cli(['principals', 'add', 'bob']);
    expect(again.code).toBe(1);
    expect(again.stderr).toMatch(/^error: CONFLICT: principal bob already exists/);

    const list = await json<{ id: string }[]>(['principals', 'list']);
    expect(list.map((p) => p.id)).toEqual(['alice', 'bob', 'local-admin']);

    const set = await json<Record<string, unknown>>(['principals', 'set', 'alice', '--max-memory', '1024']);
    expect(set.quotas).toEqual({ instances: 2, cpu: 4, memoryMb: 1024 });
    const viewer = await json<Record<string, unknown>>(['principals', 'set', 'bob', '--role', 'viewer']);
    expect(viewer.role).toBe('viewer');

    expect((await json<Record<string, unknown>>(['principals', 'disable', 'bob'])).disabled).toBe(true);
    expect((await json<Record<string, unknown>>(['principals', 'enable', 'bob'])).disabled).toBeUndefined();

    const demote = await cli(['principals', 'set', 'local-admin', '--role', 'viewer']);
    expect(demote.code).toBe(2);
    expect(demote.stderr).toMatch(/^error: INVALID_INPUT: principalId: expected another principal/);
    const badRole = await cli(['principals', 'add', 'carol', '--role', 'owner']);
    expect(badRole.code).toBe(2);
    expect(badRole.stderr).toMatch(/^error: INVALID_INPUT: role: expected one of/);
    const badLimit = await cli(['principals', 'set', 'alice', '--max-instances', '1.5']);
    expect(badLimit.code).toBe(2);
    expect(badLimit.stderr).toMatch(/^error: INVALID_INPUT: quotas\.instances: expected/);
  });

  it('tokens create shows the token once; tokens list never shows a secret or a hash', async () => {
    const made = await cli(['tokens', 'create', 'alice-ci', '--principal', 'alice', '--scope', 'swarm:read', '--scope', 'swarm:write', '--expires-days', '7']);
    expect(made.code, made.stderr).toBe(0);
    expect(made.stdout).toMatch(/^vss_t[0-9a-f]{12}_[A-Za-z0-9_-]{43}\n$/);
    expect(made.stderr).toMatch(/only time it is shown.*will not be shown again/);
    aliceToken = made.stdout.trim();
    aliceTokenId = /^vss_(t[0-9a-f]{12})_/.exec(aliceToken)![1]!;
    const secret = aliceToken.slice(`vss_${aliceTokenId}_`.length);

    const viaJson = await json<{ token: string; info: { id: string; principalId: string; scopes: string[]; expiresAt?: string } }>(['tokens', 'create', 'bob-ci', '--principal', 'bob']);
    expect(viaJson.token).toMatch(new RegExp(`^vss_${viaJson.info.id}_`));
    expect(viaJson.info).toMatchObject({ principalId: 'bob', scopes: ['swarm:read'] });

    const stored = await readFile(path.join(stateDir, 'principals.json'), 'utf8');
    const hashes = (JSON.parse(stored) as { tokens: { hash: string }[] }).tokens.map((t) => t.hash);
    expect(hashes).toHaveLength(2);
    expect(stored).not.toContain(secret);
    expect(stored).not.toContain(viaJson.token.slice(-43));

    for (const args of [['tokens', 'list', '--json'], ['tokens', 'list'], ['tokens', 'list', '--principal', 'alice', '--json']]) {
      const r = await cli(args);
      expect(r.code, r.stderr).toBe(0);
      expect(r.stdout).toContain(aliceTokenId);
      for (const hidden of [aliceToken, secret, viaJson.token, viaJson.token.slice(-43), ...hashes]) expect(r.stdout).not.toContain(hidden);
      expect(r.stdout).not.toMatch(/hash/i);
    }
    const alices = await json<{ id: string; principalId: string; scopes: string[]; expiresAt?: string }[]>(['tokens', 'list', '--principal', 'alice']);
    expect(alices).toHaveLength(1);
    expect(alices[0]).toMatchObject({ id: aliceTokenId, principalId: 'alice', scopes: ['swarm:read', 'swarm:write'] });
    expect(Date.parse(alices[0]!.expiresAt!) - Date.now()).toBeGreaterThan(6 * 86_400_000);

    const beyond = await cli(['tokens', 'create', 'too-much', '--principal', 'alice', '--scope', 'swarm:admin']);
    expect(beyond.code).toBe(2);
    expect(beyond.stderr).toMatch(/^error: INVALID_INPUT: scopes: expected scopes within the member role/);
  });

  it('acts as VSCODE_SWARM_TOKEN: its own view, FORBIDDEN naming the scope, refused once revoked', async () => {
    const asAlice = { VSCODE_SWARM_TOKEN: aliceToken };
    const me = await json<{ principal: { id: string }; scopes: string[]; credentialId: string; door: string; limits: Record<string, number> }>(['whoami'], asAlice);
    expect(me).toMatchObject({ principal: { id: 'alice' }, scopes: ['swarm:read', 'swarm:write'], credentialId: aliceTokenId, door: 'cli', limits: { instances: 2, cpu: 4, memoryMb: 1024 } });

    const forbidden = await cli(['principals', 'list'], asAlice);
    expect(forbidden.code).toBe(1);
    expect(forbidden.stderr).toMatch(/^error: FORBIDDEN: .*swarm:admin scope/);
    expect(forbidden.stdout).toBe('');

    const own = await json<{ id: string }[]>(['tokens', 'list'], asAlice);
    expect(own.map((t) => t.id)).toEqual([aliceTokenId]);

    const revoked = await json<{ id: string; revokedAt?: string }>(['tokens', 'revoke', aliceTokenId]);
    expect(revoked.id).toBe(aliceTokenId);
    expect(revoked.revokedAt).toBeDefined();
    const refused = await cli(['whoami'], asAlice);
    expect(refused.code).toBe(1);
    expect(refused.stderr).toMatch(new RegExp(`^error: UNAUTHENTICATED: VSCODE_SWARM_TOKEN: token ${aliceTokenId} was revoked`));
    expect(refused.stderr).not.toContain(aliceToken);
  });

  it('audit lists the events of the commands above, with door cli, and filters them', async () => {
    type Event = { specversion: string; type: string; action: string; outcome: string; subject?: string; code?: string; actor: { id: string; door: string; credentialId?: string }; request?: unknown };
    const events = await json<Event[]>(['audit', '--limit', '1000']);
    expect(events.length).toBeGreaterThan(10);
    expect(new Set(events.map((e) => e.actor.door))).toEqual(new Set(['cli']));
    expect(events.every((e) => e.specversion === '1.0')).toBe(true);
    const actions = events.filter((e) => e.actor.id === 'local-admin' && e.outcome === 'ok').map((e) => e.action);
    for (const action of ['swarm.usage', 'principal.add', 'principal.list', 'principal.update', 'token.create', 'token.list', 'token.revoke']) expect(actions).toContain(action);
    expect(events).toContainEqual(expect.objectContaining({ action: 'principal.list', outcome: 'denied', code: 'FORBIDDEN', actor: expect.objectContaining({ id: 'alice', credentialId: aliceTokenId }) }));
    expect(events).toContainEqual(expect.objectContaining({ action: 'token.revoke', outcome: 'ok', subject: aliceTokenId }));
    expect(JSON.stringify(events)).not.toContain(aliceToken.slice(-43));

    const tokensOnly = await json<Event[]>(['audit', '--type', 'dev.vscode-swarm.token.*']);
    expect(tokensOnly.length).toBeGreaterThan(0);
    expect(tokensOnly.every((e) => e.type.startsWith('dev.vscode-swarm.token.'))).toBe(true);
    const alices = await json<Event[]>(['audit', '--actor', 'alice']);
    expect(alices.length).toBeGreaterThanOrEqual(3);
    expect(alices.every((e) => e.actor.id === 'alice')).toBe(true);
    const denied = await json<Event[]>(['audit', '--outcome', 'denied']);
    expect(denied.map((e) => e.action)).toEqual(['principal.list']);
    expect(await json<Event[]>(['audit', '--limit', '1'])).toHaveLength(1);
    expect(await json<Event[]>(['audit', '--since', '2999-01-01T00:00:00Z'])).toEqual([]);

    const text = await cli(['audit', '--actor', 'alice']);
    expect(text.stdout).toMatch(new RegExp(`alice/${aliceTokenId} \\(cli\\) principal\\.list → denied FORBIDDEN`));

    const badTime = await cli(['audit', '--since', 'yesterday']);
    expect(badTime.code).toBe(2);
    expect(badTime.stderr).toMatch(/^error: INVALID_INPUT: since: expected an ISO 8601 time/);
    const badOutcome = await cli(['audit', '--outcome', 'maybe']);
    expect(badOutcome.code).toBe(2);
    expect(badOutcome.stderr).toMatch(/^error: INVALID_INPUT: outcome: expected one of/);
  });

  it('prints the same JSON through a running controller (up), which records door mcp-http', async () => {
    const before = {
      principals: await json<unknown>(['principals', 'list']),
      tokens: await json<unknown>(['tokens', 'list']),
      whoami: await json<Record<string, unknown>>(['whoami']),
      status: await json<Record<string, unknown>>(['status']),
    };
    let stdout = '';
    up = spawn(process.execPath, [CLI, 'up', '--config', configFile], { cwd: REPO_ROOT, env: env({}), stdio: ['ignore', 'pipe', 'pipe'] });
    up.stdout!.on('data', (d: Buffer) => (stdout += d.toString()));
    up.stderr!.resume();
    await waitUntil(async () => (/Press Ctrl\+C/.test(stdout) ? true : undefined), { timeoutMs: 60_000, intervalMs: 200, what: 'up' });
    const file = JSON.parse(await readFile(path.join(stateDir, 'controller.json'), 'utf8')) as { pid: number; mcpUrl: string };
    expect(file.pid).toBe(up.pid);
    expect(file.mcpUrl).toMatch(/^http:\/\/127\.0\.0\.1:\d+\/mcp$/);

    expect(await json<unknown>(['principals', 'list'])).toEqual(before.principals);
    expect(await json<unknown>(['tokens', 'list'])).toEqual(before.tokens);
    const me = await json<Record<string, unknown>>(['whoami']);
    expect(Object.keys(me).sort()).toEqual([...Object.keys(before.whoami), 'credentialId'].sort()); // the local credential is named over HTTP
    expect(me).toMatchObject({ door: 'mcp-http', credentialId: 'local', principal: before.whoami.principal, usage: before.whoami.usage });
    const status = await json<Record<string, unknown>>(['status']);
    expect(Object.keys(status).sort()).toEqual(Object.keys(before.status).sort());
    expect(status.total).toBe(before.status.total);

    const remote = await json<{ action: string; actor: { door: string } }[]>(['audit', '--limit', '4']);
    expect(remote.map((e) => `${e.action} ${e.actor.door}`)).toEqual(['principal.list mcp-http', 'token.list mcp-http', 'swarm.usage mcp-http', 'swarm.status mcp-http']);
    const bad = await cli(['audit', '--since', 'yesterday']);
    expect(bad.code).toBe(2);
    expect(bad.stderr).toMatch(/^error: INVALID_INPUT: since: expected an ISO 8601 time/);

    up.kill('SIGINT');
    await waitUntil(async () => (up!.exitCode !== null ? true : undefined), { timeoutMs: 20_000, what: 'up to exit' });
    expect(up.exitCode).toBe(0);
    expect(existsSync(path.join(stateDir, 'controller.json'))).toBe(false);
    expect(existsSync(path.join(stateDir, 'controller.lock'))).toBe(false);
  });
});
