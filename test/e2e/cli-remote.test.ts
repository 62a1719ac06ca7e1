/**
 * The CLI beside a running controller: `vscode-swarm up` owns the state directory, and every other command,
 * run as its own process on that directory, goes through up's MCP tools over HTTP (RemoteSwarm) instead of
 * starting a controller. Proven by the audit trail (door mcp-http for each of them, never cli), by the
 * state directory's lock (held by up, unchanged, the whole time) and by up's workspaces being the ones the
 * commands see. With VSCODE_SWARM_TOKEN a member sees only its own workspaces, is FORBIDDEN what needs
 * swarm:admin, and its token, once revoked, is refused on the next command. Needs `npm run build` first.
 */
import { execFile, spawn, type ChildProcess } from 'node:child_process';
import { existsSync, readFileSync } from 'node:fs';
import { readFile } from 'node:fs/promises';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { VSCodeInstance } from '../../providers/provider.js';
import { waitUntil } from '../../src/timing/wait-until.js';
import { TEST_IMAGE, cleanUp, containersNamed, makeStateDir } from '../helpers/docker.js';
import { REPO_ROOT } from '../helpers/mcp.js';

const PREFIX = 'e2e-clirem';
const CLI = path.join(REPO_ROOT, 'dist/src/cli.js');
const LONG = 600_000;

interface Run {
  code: number;
  stdout: string;
  stderr: string;
}

describe('the CLI through a running controller (up)', () => {
  let stateDir: string;
  let up: ChildProcess;
  let upOut = '';
  let lockFile: string;
  let lockTimer: NodeJS.Timeout | undefined;
  const lockContents = new Set<string>();
  let admin: VSCodeInstance;
  let memberInstance: VSCodeInstance;
  let memberToken: string;
  let memberTokenId: string;

  const env = (extra: Record<string, string> = {}): NodeJS.ProcessEnv => ({
    ...Object.fromEntries(Object.entries(process.env).filter(([k]) => !k.startsWith('VSCODE_SWARM_'))),
    VSCODE_SWARM_STATE_DIR: stateDir,
    VSCODE_SWARM_DOCKER_IMAGE: TEST_IMAGE,
    VSCODE_SWARM_DOCKER_PULL: '0',
    VSCODE_SWARM_GATEWAY_PORT: '0',
    VSCODE_SWARM_MCP_HTTP_PORT: '0',
    VSCODE_SWARM_DASHBOARD_PORT: '0',
    VSCODE_SWARM_LOG_LEVEL: 'warn',
    ...extra,
  });

  function cli(args: string[], extra: Record<string, string> = {}): Promise<Run> {
    return new Promise((resolve) => {
      execFile(process.execPath, [CLI, ...args], { cwd: REPO_ROOT, env: env(extra), maxBuffer: 16 * 1024 * 1024 }, (err, stdout, stderr) => {
        const code = err ? (typeof (err as { code?: unknown }).code === 'number' ? (err as { code: number }).code : 1) : 0;
        resolve({ code, stdout, stderr });
      });
    });
  }

  /** A command that must work, with --json; stdout parsed, stderr returned for progress. */
  async function json<T>(args: string[], extra: Record<string, string> = {}): Promise<{ value: T; stderr: string }> {
    const r = await cli([...args, '--json'], extra);
    expect(r.code, `${args.join(' ')}: ${r.stderr}`).toBe(0);
    return { value: JSON.parse(r.stdout) as T, stderr: r.stderr };
  }

  const sampleLock = (): void => {
    try {
      lockContents.add(readFileSync(lockFile, 'utf8'));
    } catch {
      lockContents.add('(no lock)');
    }
  };

  beforeAll(async () => {
    if (!existsSync(CLI)) throw new Error(`${CLI} is missing: run npm run build first`);
    await cleanUp(PREFIX);
    stateDir = await makeStateDir(PREFIX);
    lockFile = path.join(stateDir, 'controller.lock');
    up = spawn(process.execPath, [CLI, 'up'], { cwd: REPO_ROOT, env: env(), stdio: ['ignore', 'pipe', 'pipe'] });
    up.stdout!.on('data', (d: Buffer) => (upOut += d.toString()));
    up.stderr!.resume();
    await waitUntil(async () => (/Press Ctrl\+C/.test(upOut) ? true : undefined), { timeoutMs: 120_000, intervalMs: 200, what: 'up' });
    // Watch the lock for the whole run: a one-shot command would have had to take it (it is held, so it
    // would have failed), and up must hold it, unchanged, throughout.
    sampleLock();
    lockTimer = setInterval(sampleLock, 50);
  }, LONG);

  afterAll(async () => {
    if (lockTimer) clearInterval(lockTimer);
    if (up && up.exitCode === null) up.kill('SIGKILL');
    await cleanUp(PREFIX, stateDir);
  }, LONG);

  it('finds the controller in controller.json and acts through it as the local admin', async () => {
    const file = JSON.parse(await readFile(path.join(stateDir, 'controller.json'), 'utf8')) as { pid: number; mcpUrl: string; startedAt: string };
    expect(file.pid).toBe(up.pid);
    expect(upOut).toContain(file.mcpUrl);
    const lock = JSON.parse(readFileSync(lockFile, 'utf8')) as { pid: number };
    expect(lock.pid).toBe(up.pid);

    const { value: status } = await json<{ total: number; migrationsInProgress: unknown[] }>(['status']);
    expect(status).toMatchObject({ total: 0, migrationsInProgress: [] });
    const { value: me } = await json<{ principal: { id: string }; door: string; credentialId: string }>(['whoami']);
    expect(me).toMatchObject({ principal: { id: 'local-admin' }, door: 'mcp-http', credentialId: 'local' });
  }, LONG);

  it('runs every workspace command through it, with progress on stderr', async () => {
    const made = await json<{ instance: VSCodeInstance; created: boolean; access?: { accessUrl: string } }>(['create', `${PREFIX}-a`, '--env', 'GREETING=hi']);
    expect(made.value.created).toBe(true);
    expect(made.value.instance.status).toBe('running');
    expect(made.value.access?.accessUrl).toMatch(/^http:\/\//);
    expect(made.stderr).toMatch(/^\[\d+%\] /m); // MCP progress notifications, printed by the CLI
    admin = made.value.instance;
    expect((await containersNamed(`${PREFIX}-a`)).length).toBe(1);

    const again = await json<{ instance: VSCodeInstance; created: boolean }>(['create', `${PREFIX}-a`]);
    expect(again.value).toMatchObject({ created: false, instance: { id: admin.id } });

    expect((await json<VSCodeInstance[]>(['list'])).value.map((i) => i.id)).toEqual([admin.id]);
    expect((await json<VSCodeInstance>(['get', admin.id])).value).toMatchObject({ id: admin.id, status: 'running' });
    const logs = (await json<{ instanceId: string; lines: string[] }>(['logs', admin.id, '--tail', '5'])).value;
    expect(logs.instanceId).toBe(admin.id);
    expect(logs.lines.length).toBeLessThanOrEqual(5);
    expect((await json<{ accessUrl: string; url: string }>(['link', admin.id])).value.accessUrl).toMatch(/^http:\/\/.+/);
    const kept = (await json<VSCodeInstance>(['keep-alive', admin.id, '10'])).value;
    expect(Date.parse(kept.lease!.until) - Date.now()).toBeGreaterThan(5 * 60_000);
    const updated = (await json<VSCodeInstance & { updateMode: string }>(['update', admin.id, '--memory', '768'])).value;
    expect(updated).toMatchObject({ id: admin.id, config: { resources: { memoryMb: 768 } } });
    expect(['live', 'recreate']).toContain(updated.updateMode);
    expect((await json<VSCodeInstance>(['stop', admin.id])).value.status).toBe('stopped');
    expect((await json<VSCodeInstance>(['start', admin.id])).value.status).toBe('running');

    const missing = await cli(['get', `${PREFIX}-gone-00000000`]);
    expect(missing.code).toBe(1);
    expect(missing.stderr).toMatch(/^error: NOT_FOUND: /);
    const bad = await cli(['create', 'Not A Name!']);
    expect(bad.code).toBe(2);
    expect(bad.stderr).toMatch(/^error: INVALID_INPUT: name: expected /);
  }, LONG);

  it('administers principals and tokens through it', async () => {
    const added = (await json<{ id: string; role: string }>(['principals', 'add', 'clirem-m', '--role', 'member', '--name', 'CLI member'])).value;
    expect(added).toMatchObject({ id: 'clirem-m', role: 'member', name: 'CLI member' });
    expect((await json<{ id: string }[]>(['principals', 'list'])).value.map((p) => p.id)).toEqual(['clirem-m', 'local-admin']);
    expect((await json<{ disabled?: boolean }>(['principals', 'disable', 'clirem-m'])).value.disabled).toBe(true);
    expect((await json<{ disabled?: boolean }>(['principals', 'enable', 'clirem-m'])).value.disabled).toBeUndefined();
    expect((await json<{ quotas?: object }>(['principals', 'set', 'clirem-m', '--max-instances', '3'])).value.quotas).toEqual({ instances: 3 });

    const made = await cli(['tokens', 'create', 'clirem-ci', '--principal', 'clirem-m']);
    expect(made.code, made.stderr).toBe(0);
    expect(made.stderr).toMatch(/will not be shown again/);
    memberToken = made.stdout.trim();
    memberTokenId = /^vss_(t[0-9a-f]{12})_[A-Za-z0-9_-]{43}$/.exec(memberToken)![1]!;
    const listed = await cli(['tokens', 'list', '--principal', 'clirem-m', '--json']);
    expect(listed.code).toBe(0);
    expect((JSON.parse(listed.stdout) as { id: string }[]).map((t) => t.id)).toEqual([memberTokenId]);
    expect(listed.stdout).not.toContain(memberToken.slice(-43));
  }, LONG);

  it("as a member's token: only its own workspaces, FORBIDDEN naming the scope, refused once revoked", async () => {
    const asMember = { VSCODE_SWARM_TOKEN: memberToken };
    expect((await json<{ principal: { id: string }; credentialId: string }>(['whoami'], asMember)).value).toMatchObject({ principal: { id: 'clirem-m' }, credentialId: memberTokenId });
    const made = (await json<{ instance: VSCodeInstance; created: boolean }>(['create', `${PREFIX}-m`], asMember)).value;
    expect(made.instance.owner).toBe('clirem-m');
    memberInstance = made.instance;

    expect((await json<VSCodeInstance[]>(['list'], asMember)).value.map((i) => i.id)).toEqual([memberInstance.id]);
    expect((await json<VSCodeInstance[]>(['list'])).value.map((i) => i.id).sort()).toEqual([admin.id, memberInstance.id].sort());
    const notYours = await cli(['get', admin.id], asMember);
    expect(notYours.code).toBe(1);
    expect(notYours.stderr).toMatch(new RegExp(`^error: NOT_FOUND: instance ${admin.id} does not exist`));

    const forbidden = await cli(['principals', 'list', '--json'], asMember);
    expect(forbidden.code).not.toBe(0);
    expect(forbidden.stdout).toBe('');
    expect(forbidden.stderr).toMatch(/^error: FORBIDDEN: .*swarm:admin/);

    expect((await json<{ id: string; revokedAt?: string }>(['tokens', 'revoke', memberTokenId])).value.revokedAt).toBeDefined();
    const refused = await cli(['list', '--json'], asMember);
    expect(refused.code).not.toBe(0);
    expect(refused.stdout).toBe('');
    expect(refused.stderr).toMatch(new RegExp(`^error: UNAUTHENTICATED: .*token ${memberTokenId} was revoked`));
    expect(refused.stderr).not.toContain(memberToken);
  }, LONG);

  it('deletes through it, and the audit trail shows every command at door mcp-http', async () => {
    for (const instance of [memberInstance, admin]) {
      expect((await json<{ instanceId: string; deleted: boolean }>(['delete', instance.id])).value).toMatchObject({ instanceId: instance.id, deleted: true });
    }
    expect(await containersNamed(PREFIX)).toEqual([]);

    type Event = { action: string; outcome: string; subject?: string; actor: { id: string; door: string; credentialId?: string } };
    const events = (await json<Event[]>(['audit', '--limit', '10000'])).value;
    const byPrincipals = events.filter((e) => e.actor.id === 'local-admin' || e.actor.id === 'clirem-m');
    expect(byPrincipals.filter((e) => e.actor.door !== 'mcp-http')).toEqual([]);
    const ok = (action: string, actor = 'local-admin'): boolean => events.some((e) => e.action === action && e.outcome === 'ok' && e.actor.id === actor && e.actor.door === 'mcp-http');
    for (const action of [
      'swarm.status', 'swarm.usage', 'instance.create', 'instance.list', 'instance.get', 'instance.logs', 'instance.access-link', 'instance.keep-alive',
      'instance.update', 'instance.stop', 'instance.start', 'instance.delete', 'principal.add', 'principal.list', 'principal.update', 'token.create', 'token.list', 'token.revoke',
    ]) {
      expect(ok(action), action).toBe(true);
    }
    for (const action of ['swarm.usage', 'instance.create', 'instance.list']) expect(ok(action, 'clirem-m'), `clirem-m ${action}`).toBe(true);
    expect(events).toContainEqual(expect.objectContaining({ action: 'instance.get', outcome: 'denied', subject: admin.id, actor: expect.objectContaining({ id: 'clirem-m', credentialId: memberTokenId, door: 'mcp-http' }) }));
    expect(events).toContainEqual(expect.objectContaining({ action: 'principal.list', outcome: 'denied', actor: expect.objectContaining({ id: 'clirem-m', door: 'mcp-http' }) }));
    expect(events).toContainEqual(expect.objectContaining({ action: 'auth.authenticate', outcome: 'denied', actor: expect.objectContaining({ door: 'mcp-http' }) }));

    const filtered = (await json<Event[]>(['audit', '--instance', admin.id, '--type', 'dev.vscode-swarm.instance.*'])).value;
    expect(filtered.length).toBeGreaterThanOrEqual(8);
    expect(filtered.every((e) => e.subject === admin.id)).toBe(true);
  }, LONG);

  it('held the lock the whole time, and releases it and controller.json on SIGINT', async () => {
    clearInterval(lockTimer);
    lockTimer = undefined;
    sampleLock();
    expect([...lockContents]).toHaveLength(1);
    expect(JSON.parse([...lockContents][0]!)).toMatchObject({ pid: up.pid });

    up.kill('SIGINT');
    await waitUntil(async () => (up.exitCode !== null ? true : undefined), { timeoutMs: 30_000, what: 'up to exit' });
    expect(up.exitCode).toBe(0);
    expect(existsSync(path.join(stateDir, 'controller.json'))).toBe(false);
    expect(existsSync(lockFile)).toBe(false);
  }, LONG);
});
