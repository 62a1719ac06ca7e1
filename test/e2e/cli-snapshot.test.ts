/**
 * `vscode-swarm snapshot create|list|delete|restore|fork` as a person runs them: the real CLI
 * (dist/src/cli.js, so `npm run build` first) as separate processes, one-shot on a real state directory,
 * with real Docker containers (the light stand-in image). Each subcommand is one MCP snapshot tool
 * (create_snapshot, list_snapshots, delete_snapshot, restore_snapshot, fork_instance) through SwarmApi,
 * so the remote mode (through `up`) prints the same JSON. Usage errors exit 2 and name what is missing.
 */
import { execFile, spawn, type ChildProcess } from 'node:child_process';
import { existsSync } from 'node:fs';
import { rm, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { VSCodeInstance } from '../../providers/provider.js';
import type { AuditEvent } from '../../src/audit/audit-log.js';
import type { Snapshot } from '../../src/snapshots/snapshot-store.js';
import { waitUntil } from '../../src/timing/wait-until.js';
import { cleanUp, docker, makeStateDir } from '../helpers/docker.js';
import { REPO_ROOT } from '../helpers/mcp.js';
import { STANDIN_IMAGE, ensureStandinImage } from '../helpers/standin-image.js';

const PREFIX = 'e2e-clisnap';
const CLI = path.join(REPO_ROOT, 'dist/src/cli.js');

interface Run {
  code: number;
  stdout: string;
  stderr: string;
}

/** Runs a shell command in a container's workspace folder, through the engine; its stdout. */
async function sh(containerId: string, command: string): Promise<string> {
  const exec = await docker.getContainer(containerId).exec({ Cmd: ['sh', '-c', `cd /home/coder/project && ${command}`], AttachStdout: true, AttachStderr: true });
  const stream = await exec.start({ hijack: true, stdin: false });
  const chunks: Buffer[] = [];
  stream.on('data', (c: Buffer) => chunks.push(c));
  await new Promise((r) => stream.on('end', r));
  const { ExitCode } = await exec.inspect();
  // The multiplexed stream: 8-byte frame headers, then the payload.
  const raw = Buffer.concat(chunks);
  let out = '';
  for (let i = 0; i + 8 <= raw.length; ) {
    const size = raw.readUInt32BE(i + 4);
    if (raw[i] === 1) out += raw.subarray(i + 8, i + 8 + size).toString();
    i += 8 + size;
  }
  expect(ExitCode, `${command}: ${out}`).toBe(0);
  return out;
}

describe('the snapshot commands of the CLI (one-shot, Docker)', () => {
  let stateDir: string;
  let configFile: string;
  let original: VSCodeInstance;
  let snapshot: Snapshot;
  /** What the original workspace's files read as when the first snapshot was taken. */
  let before: string;
  let up: ChildProcess | undefined;

  function cli(args: string[]): Promise<Run> {
    const env = { ...Object.fromEntries(Object.entries(process.env).filter(([k]) => !k.startsWith('VSCODE_SWARM_'))), VSCODE_SWARM_LOG_LEVEL: 'warn' };
    return new Promise((resolve) => {
      execFile(process.execPath, [CLI, ...args, '--config', configFile], { cwd: REPO_ROOT, env, maxBuffer: 16 * 1024 * 1024 }, (err, stdout, stderr) => {
        const code = err ? (typeof (err as { code?: unknown }).code === 'number' ? (err as { code: number }).code : 1) : 0;
        resolve({ code, stdout, stderr });
      });
    });
  }

  async function json<T>(args: string[]): Promise<T> {
    const r = await cli([...args, '--json']);
    expect(r.code, `${args.join(' ')}: ${r.stderr}`).toBe(0);
    return JSON.parse(r.stdout) as T;
  }

  beforeAll(async () => {
    if (!existsSync(CLI)) throw new Error(`${CLI} is missing: run npm run build first`);
    await cleanUp(PREFIX);
    await ensureStandinImage();
    stateDir = await makeStateDir(PREFIX);
    configFile = path.join(stateDir, '..', `${path.basename(stateDir)}.json`);
    await writeFile(configFile, JSON.stringify({
      stateDir,
      logLevel: 'warn',
      providers: { docker: { image: STANDIN_IMAGE, pullImages: false, stopTimeoutSeconds: 1 } },
      gateway: { port: 0 },
      mcpHttp: { port: 0 },
      dashboard: { enabled: false },
      idle: { enabled: false },
      health: { enabled: false },
    }));
  }, 120_000);

  afterAll(async () => {
    if (up && up.exitCode === null) up.kill('SIGKILL');
    await cleanUp(PREFIX, stateDir);
    if (configFile) await rm(configFile, { force: true });
  });

  it('refuses incomplete commands with exit 2, naming what is missing, before anything is started', async () => {
    const cases: [string[], RegExp][] = [
      [['snapshot'], /^error: INVALID_INPUT: snapshot: expected one of "snapshot create", "snapshot list", "snapshot delete", "snapshot restore", "snapshot fork"/],
      [['snapshot', 'take'], /snapshot: expected one of "snapshot create"/],
      [['snapshot', 'create'], /^error: INVALID_INPUT: ID: expected an instance id after "snapshot create"/],
      [['snapshot', 'delete'], /^error: INVALID_INPUT: SNAP_ID: expected a snapshot id \(see "snapshot list"\) after "snapshot delete"/],
      [['snapshot', 'restore', 'ws-1'], /^error: INVALID_INPUT: SNAP_ID: expected a snapshot id \(see "snapshot list"\) after "snapshot restore ws-1"/],
      [['snapshot', 'fork', 'copy'], /^error: INVALID_INPUT: --snapshot: expected exactly one of --snapshot SNAP_ID .* and --instance ID/],
      [['snapshot', 'fork', 'copy', '--snapshot', 'snap-1', '--instance', 'ws-1'], /^error: INVALID_INPUT: --snapshot: expected exactly one of/],
      [['snapshot', 'fork', 'no/such name', '--snapshot', 'snap-1'], /^error: INVALID_INPUT: NAME: expected 1-63 characters/],
      [['snapshot', 'create', 'ws-1', '--name', 'not a name!'], /^error: INVALID_INPUT: --name: expected 1-63 characters/],
    ];
    for (const [args, message] of cases) {
      const r = await cli(args);
      expect(r.code, `${args.join(' ')}: ${r.stderr}`).toBe(2);
      expect(r.stderr, args.join(' ')).toMatch(message);
      expect(r.stdout).toBe('');
    }
  });

  it('create, list, restore (byte for byte), fork, delete: each prints the tool\'s result as JSON', async () => {
    original = (await json<{ instance: VSCodeInstance }>(['create', `${PREFIX}-orig`])).instance;
    const container = original.providerRef.containerId!;
    await sh(container, 'printf "first version\\n" > a.txt && mkdir -p dir && head -c 50000 /dev/urandom > dir/b.bin');
    before = await sh(container, 'cat a.txt && md5sum dir/b.bin');

    snapshot = await json<Snapshot>(['snapshot', 'create', original.id, '--name', 'before-change']);
    expect(snapshot).toMatchObject({ instanceId: original.id, name: 'before-change', files: 2 });
    expect(snapshot.id).toMatch(/^snap-/);
    const text = await cli(['snapshot', 'list', '--instance', original.id]);
    expect(text.stdout).toMatch(new RegExp(`^${snapshot.id} "before-change" of ${PREFIX}-orig \\[${original.id}\\] on docker: 2 files`));
    expect((await json<Snapshot[]>(['snapshot', 'list'])).map((s) => s.id)).toEqual([snapshot.id]);

    await sh(container, 'printf "changed\\n" > a.txt && rm dir/b.bin && printf new > c.txt');
    const restored = await json<{ instanceId: string; snapshotId: string; files: number }>(['snapshot', 'restore', original.id, snapshot.id]);
    expect(restored).toMatchObject({ instanceId: original.id, snapshotId: snapshot.id, files: 2 });
    expect(await sh(container, 'cat a.txt && md5sum dir/b.bin')).toBe(before);
    expect(await sh(container, 'ls')).not.toContain('c.txt');

    const fork = await json<{ instance: VSCodeInstance; snapshotId: string; files: number; created: boolean }>(['snapshot', 'fork', `${PREFIX}-fork`, '--snapshot', snapshot.id]);
    expect(fork).toMatchObject({ snapshotId: snapshot.id, files: 2, created: true, instance: { name: `${PREFIX}-fork`, status: 'running' } });
    expect(fork.instance.id).not.toBe(original.id);
    expect(await sh(fork.instance.providerRef.containerId!, 'cat a.txt && md5sum dir/b.bin')).toBe(before);

    const deleted = await json<{ snapshot: Snapshot; deleted: boolean }>(['snapshot', 'delete', snapshot.id]);
    expect(deleted).toMatchObject({ deleted: true, snapshot: { id: snapshot.id } });
    expect(await json<Snapshot[]>(['snapshot', 'list'])).toEqual([]);
    const again = await cli(['snapshot', 'delete', snapshot.id]);
    expect(again.code).toBe(1);
    expect(again.stderr).toMatch(/^error: NOT_FOUND: /);
  });

  it('through a running controller (up): the same commands go over MCP HTTP and print the same JSON', async () => {
    const container = original.providerRef.containerId!;
    const oneShot = await json<Snapshot>(['snapshot', 'create', original.id, '--name', 'one-shot']);

    let upOut = '';
    up = spawn(process.execPath, [CLI, 'up', '--config', configFile], { cwd: REPO_ROOT, env: { ...Object.fromEntries(Object.entries(process.env).filter(([k]) => !k.startsWith('VSCODE_SWARM_'))), VSCODE_SWARM_LOG_LEVEL: 'warn' }, stdio: ['ignore', 'pipe', 'pipe'] });
    up.stdout!.on('data', (d: Buffer) => (upOut += d.toString()));
    up.stderr!.resume();
    await waitUntil(async () => (/Press Ctrl\+C/.test(upOut) ? true : undefined), { timeoutMs: 90_000, intervalMs: 200, what: 'up' });

    const remote = await json<Snapshot>(['snapshot', 'create', original.id, '--name', 'remote']);
    expect(Object.keys(remote).sort()).toEqual(Object.keys(oneShot).sort());
    expect(remote).toMatchObject({ instanceId: original.id, name: 'remote', files: 2 });
    expect((await json<Snapshot[]>(['snapshot', 'list', '--instance', original.id])).map((s) => s.id)).toEqual([oneShot.id, remote.id]);

    await sh(container, 'printf "changed again\\n" > a.txt');
    expect(await json<{ files: number }>(['snapshot', 'restore', original.id, remote.id])).toMatchObject({ instanceId: original.id, snapshotId: remote.id, files: 2 });
    expect(await sh(container, 'cat a.txt && md5sum dir/b.bin')).toBe(before);
    for (const id of [oneShot.id, remote.id]) expect((await json<{ deleted: boolean }>(['snapshot', 'delete', id])).deleted).toBe(true);
    expect(await json<Snapshot[]>(['snapshot', 'list'])).toEqual([]);

    // The remote ones went through up's MCP door, the first one-shot through the CLI's.
    const events = await json<AuditEvent[]>(['audit', '--limit', '1000']);
    const doors = events.filter((e) => e.action === 'snapshot.create').map((e) => e.actor.door);
    expect(doors.slice(-2)).toEqual(['cli', 'mcp-http']);
    up.kill('SIGTERM');
    await new Promise((r) => up!.once('exit', r));
  });
});
