/**
 * Workspace files through the AWS provider (exportWorkspace/importWorkspace, served by the host agents'
 * GET/PUT /v1/instances/:id/workspace) on the AWS emulator: two emulated EC2 hosts, each a real agent
 * process driving the local Docker engine, the light stand-in image. Files with awkward names (spaces,
 * unicode, a leading dash, a dotfile, nested folders), an empty file and a 5 MiB file are written in one
 * workspace on one host, exported, imported into a workspace on the other host, and compared by SHA-256
 * manifest (src/migration/workspace-archive.ts) and by `sha256sum` inside both containers; then the same
 * with the Docker provider, both ways. Build first: `npm run build` (the agents run dist/src/cli.js).
 */
import { existsSync } from 'node:fs';
import { mkdtemp, rm } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { AwsAsgProvider } from '../../providers/aws-asg/aws-asg-provider.js';
import { deriveHostToken } from '../../providers/aws-asg/host-credentials.js';
import { DockerProvider } from '../../providers/docker/docker-provider.js';
import type { InstanceConfig, Provider } from '../../providers/provider.js';
import { manifestOf, type Manifest } from '../../src/migration/workspace-archive.js';
import { startAwsEmulator, type AwsEmulator } from '../emulators/aws/index.js';
import { cleanUp } from '../helpers/docker.js';
import { REPO_ROOT } from '../helpers/mcp.js';
import { ensureStandinImage } from '../helpers/standin-image.js';
import { freePort } from '../helpers/ports.js';

const PREFIX = 'awsxfer';
const GROUP = 'transfer-asg';
const TOKEN = 'aws-transfer-agent-token-0123456789';
const SECRET = 'aws-transfer-gateway-secret-0123456789abcdef';
const credentials = { accessKeyId: 'AKIAEMULATOR000000', secretAccessKey: 'emulator-secret' };
const BIG = 5 * 1024 * 1024;

/** The workspace files (relative path → content), written through exec and expected byte for byte after each transfer. */
const FILES: Record<string, { printf?: string; bytes?: number; mode?: string }> = {
  'plain.txt': { printf: 'hello\\n' },
  'with space and  two spaces.txt': { printf: 'spaces\\n' },
  'ünïcødé-日本語-🚀.md': { printf: '# unicode ✓\\n' },
  '-leading-dash': { printf: 'dash\\n' },
  '.hidden': { printf: 'dot\\n' },
  'nested/deeper/still deeper/leaf.json': { printf: '{"ok":true}\\n' },
  'nested/sibling.txt': { printf: 'sibling\\n' },
  'empty.txt': { printf: '' },
  'bin/run.sh': { printf: '#!/bin/sh\\necho ran\\n', mode: '755' },
  'big.bin': { bytes: BIG },
};

/** A shell command that writes FILES in the current folder (the workspace). */
function writeFilesCommand(): string {
  const quote = (s: string): string => `'${s.replace(/'/g, `'\\''`)}'`;
  return Object.entries(FILES)
    .map(([name, spec]) => {
      const dir = path.posix.dirname(name);
      const mkdir = dir === '.' ? '' : `mkdir -p ./${quote(dir)} && `;
      const body = spec.bytes !== undefined ? `head -c ${spec.bytes} /dev/urandom` : `printf ${quote(spec.printf!)}`;
      const chmod = spec.mode ? ` && chmod ${spec.mode} ./${quote(name)}` : '';
      return `${mkdir}${body} > ./${quote(name)}${chmod}`;
    })
    .join(' && ');
}

/** `sha256sum` of every regular file, run inside the instance: an independent view of what is on its disk. */
async function shaInside(provider: Provider, instanceId: string): Promise<Record<string, string>> {
  const out = await provider.executeCommand(instanceId, 'find . -type f -exec sha256sum {} +', { timeoutMs: 30_000 });
  expect(out.exitCode, out.stderr).toBe(0);
  const result: Record<string, string> = {};
  for (const line of out.stdout.split('\n').filter(Boolean)) {
    const match = /^([0-9a-f]{64})  \.\/(.+)$/.exec(line);
    if (!match) throw new Error(`unexpected sha256sum line: ${JSON.stringify(line)}`);
    result[match[2]!] = match[1]!;
  }
  return result;
}

const shas = (manifest: Manifest): Record<string, string> => Object.fromEntries(Object.entries(manifest).map(([name, e]) => [name, e.sha256]));


describe('aws-asg workspace transfer (export, import) between hosts and with Docker', () => {
  let emulator: AwsEmulator;
  let aws: AwsAsgProvider;
  let local: DockerProvider;
  let stateRoot: string;
  let standin: string;
  const config = (name: string): InstanceConfig & { image: string } => ({ name, image: standin, resources: { cpu: 0.2, memoryMb: 256 } });
  const [SRC, DST, LOCAL, BACK] = ['src', 'dst', 'local', 'back'].map((s) => `${PREFIX}-${s}`) as [string, string, string, string];
  let source: Manifest;

  beforeAll(async () => {
    if (!existsSync(path.join(REPO_ROOT, 'dist/src/cli.js'))) throw new Error('dist/src/cli.js is missing: run `npm run build` first');
    await cleanUp(PREFIX);
    standin = await ensureStandinImage();
    stateRoot = await mkdtemp(path.join(os.tmpdir(), 'vscode-swarm-aws-transfer-'));
    const agentPort = await freePort();
    emulator = await startAwsEmulator({
      addresses: { first: '127.0.53.2', size: 10 },
      groups: [{ name: GROUP, minSize: 2, maxSize: 2 }],
      agent: {
        cwd: REPO_ROOT,
        token: TOKEN,
        apiPort: agentPort,
        // Each host runs with its own token, derived from the master the provider holds.
        extraArgs: (host) => [
          '--api-port', String(agentPort), '--proxy-port', '0', '--token', deriveHostToken(TOKEN, host.hostId), '--gateway-secret', SECRET,
          '--capacity', '2', '--image', standin, '--no-pull', '--state-dir', path.join(stateRoot, host.hostId),
          '--stop-timeout-seconds', '1', '--idle-timeout-minutes', '0', '--log-level', 'warn',
        ],
      },
    });
    await emulator.waitForGroupStable(GROUP, 60_000);
    aws = new AwsAsgProvider({
      region: 'eu-west-1', groupName: GROUP, endpoint: emulator.url, credentials, agentPort, agentToken: TOKEN,
      perHostCapacity: 2, bufferSlots: 0, defaultImage: standin, hostCacheTtlMs: 1_000, hostPollMs: 250,
      reconcileIntervalMs: 500, scaleInCooldownMs: 600_000, agentCreateTimeoutMs: 90_000,
    });
    await aws.initialize();
    local = new DockerProvider({ defaultImage: standin, pullImages: false, stopTimeoutSeconds: 1, swarmId: 'aws-transfer' });
    await local.initialize();
  });

  afterAll(async () => {
    await aws?.close();
    await emulator?.close();
    await cleanUp(PREFIX);
    if (stateRoot) await rm(stateRoot, { recursive: true, force: true });
  });

  it('exports every file of a workspace, byte for byte, awkward names included', async () => {
    const src = await aws.createInstance(config(SRC), { instanceId: SRC });
    expect(src.status).toBe('running');
    const written = await aws.executeCommand(SRC, writeFilesCommand(), { timeoutMs: 60_000 });
    expect(written, written.stderr).toMatchObject({ exitCode: 0 });

    source = await manifestOf(await aws.exportWorkspace(SRC));
    expect(Object.keys(source).sort()).toEqual(Object.keys(FILES).sort());
    expect(source['big.bin']!.size).toBe(BIG);
    expect(source['empty.txt']!.size).toBe(0);
    expect(source['plain.txt']!.size).toBe(6);
    expect(source['ünïcødé-日本語-🚀.md']!.size).toBe(Buffer.byteLength('# unicode ✓\n'));
    // What the archive says is what the disk holds.
    expect(shas(source)).toEqual(await shaInside(aws, SRC));
  });

  it('imports it into a workspace on another host: the same files, checked on both sides', async () => {
    const dst = await aws.createInstance(config(DST), { instanceId: DST });
    const src = await aws.getInstance(SRC);
    expect(dst.providerRef.hostId).toBeDefined();
    expect(dst.providerRef.hostId).not.toBe(src!.providerRef.hostId);
    expect(await shaInside(aws, DST)).toEqual({});

    await aws.importWorkspace(DST, await aws.exportWorkspace(SRC));
    expect(await manifestOf(await aws.exportWorkspace(DST))).toEqual(source);
    expect(await shaInside(aws, DST)).toEqual(shas(source));
    // Modes travel too: the script is still executable.
    expect(await aws.executeCommand(DST, './bin/run.sh')).toMatchObject({ exitCode: 0, stdout: 'ran\n' });
  });

  it('exports a stopped workspace, and an import replaces files of the same name', async () => {
    await aws.executeCommand(SRC, "printf 'changed on the source\\n' > 'nested/sibling.txt'");
    expect((await aws.stopInstance(SRC)).status).toBe('stopped');
    // An export is a stream, read once: one for the manifest, another for the import.
    const changed = await manifestOf(await aws.exportWorkspace(SRC));
    expect(changed['nested/sibling.txt']!.sha256).not.toBe(source['nested/sibling.txt']!.sha256);
    expect({ ...changed, 'nested/sibling.txt': source['nested/sibling.txt'] }).toEqual(source);

    await aws.importWorkspace(DST, await aws.exportWorkspace(SRC));
    expect(await manifestOf(await aws.exportWorkspace(DST))).toEqual(changed);
    expect((await aws.executeCommand(DST, "cat 'nested/sibling.txt'")).stdout).toBe('changed on the source\n');
    source = changed;
  });

  it('moves the workspace to the Docker provider and back', async () => {
    await local.createInstance(config(LOCAL), { instanceId: LOCAL });
    await local.importWorkspace(LOCAL, await aws.exportWorkspace(DST));
    expect(await manifestOf(await local.exportWorkspace(LOCAL))).toEqual(source);
    expect(await shaInside(local, LOCAL)).toEqual(shas(source));
    expect(await local.executeCommand(LOCAL, './bin/run.sh')).toMatchObject({ exitCode: 0, stdout: 'ran\n' });

    await local.executeCommand(LOCAL, "printf 'written on docker\\n' > 'from docker ✓.txt'");
    const fromDocker = await manifestOf(await local.exportWorkspace(LOCAL));
    expect(Object.keys(fromDocker).sort()).toEqual([...Object.keys(source), 'from docker ✓.txt'].sort());
    await aws.createInstance(config(BACK), { instanceId: BACK });
    await aws.importWorkspace(BACK, await local.exportWorkspace(LOCAL));
    expect(await manifestOf(await aws.exportWorkspace(BACK))).toEqual(fromDocker);
    expect(await shaInside(aws, BACK)).toEqual(shas(fromDocker));
  });

  it('refuses to transfer for an instance it does not have', async () => {
    await expect(aws.exportWorkspace(`${PREFIX}-missing`)).rejects.toMatchObject({ code: 'NOT_FOUND' });
    await expect(aws.importWorkspace(`${PREFIX}-missing`, await aws.exportWorkspace(DST))).rejects.toMatchObject({ code: 'NOT_FOUND' });
  });

  it('deletes what it made', async () => {
    for (const id of [SRC, DST, BACK]) expect(await aws.deleteInstance(id)).toBe(true);
    expect(await local.deleteInstance(LOCAL)).toBe(true);
    expect(await aws.listInstances()).toEqual([]);
  });
});
