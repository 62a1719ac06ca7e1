/**
 * Snapshots, restore and fork end to end, on the real Docker engine with the light stand-in image, through
 * real MCP clients over HTTP signed in as two principals (alice and bob, members).
 *
 * What it proves: a snapshot holds the workspace's files with their SHA-256 (its manifest equals the one
 * read from the workspace); after files are changed, added and deleted, a restore brings back every file
 * byte for byte and removes the added ones; a fork (from a snapshot, and from a workspace) is a new
 * workspace owned by the caller with exactly the snapshot's files, and the original is untouched by
 * changes to the fork; bob can neither see, restore, fork nor delete alice's snapshots, and is told what a
 * missing snapshot would tell him; the per-principal count quota refuses with the limit, usage and request;
 * an archive altered on disk is refused before the workspace is touched, naming the file.
 */
import type { Client } from '@modelcontextprotocol/sdk/client/index.js';
import { promises as fs } from 'node:fs';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { LABEL_NAME } from '../../providers/docker/docker-mapping.js';
import type { VSCodeInstance } from '../../providers/provider.js';
import { createSwarm } from '../../src/controller/create-swarm.js';
import type { SwarmController } from '../../src/controller/swarm-controller.js';
import { startMcpHttp } from '../../src/mcp/http.js';
import { AuthorizedSwarm } from '../../src/tenancy/authorized-swarm.js';
import { localAdmin } from '../../src/tenancy/identity.js';
import { startFlyEmulator, type FlyEmulator } from '../emulators/fly/index.js';
import { manifestOf, type Manifest } from '../../src/migration/workspace-archive.js';
import type { Snapshot } from '../../src/snapshots/snapshot-store.js';
import { commitUnplaceableSnapshot } from '../helpers/crafted-snapshot.js';
import { cleanUp, containersNamed, docker, makeStateDir, testConfig } from '../helpers/docker.js';
import { callTool, errorText, type ToolResult } from '../helpers/mcp.js';
import { ensureStandinImage } from '../helpers/standin-image.js';
import { connectMcpHttp } from '../helpers/tenancy.js';

const PREFIX = 'e2e-snap';
const MAX_SNAPSHOTS = 3;

function ok(result: ToolResult, what: string): Record<string, unknown> {
  expect(result.isError, `${what}: ${JSON.stringify(result.content)}`).toBeFalsy();
  return result.structuredContent ?? {};
}

function failed(result: ToolResult, what: string): string {
  expect(result.isError, `${what} should fail: ${JSON.stringify(result.structuredContent ?? result.content).slice(0, 300)}`).toBe(true);
  return errorText(result);
}

/** The manifest as plain JSON, for comparisons that print well. */
function plain(manifest: Manifest): Record<string, { size: number; sha256: string }> {
  return JSON.parse(JSON.stringify(manifest)) as Record<string, { size: number; sha256: string }>;
}

describe('snapshots, restore and fork on Docker, through MCP as two principals', () => {
  let stateDir: string;
  let controller: SwarmController;
  let mcp: Awaited<ReturnType<typeof startMcpHttp>>;
  let alice: Client;
  let bob: Client;
  let image: string;
  let original: VSCodeInstance;
  let bobs: VSCodeInstance;
  let snapshot: Snapshot;
  let atSnapshot: Record<string, { size: number; sha256: string }>;

  /** Runs a shell command in the workspace folder (exec is on for this suite). */
  async function sh(instanceId: string, command: string): Promise<string> {
    const result = await controller.executeCommand(instanceId, command);
    expect(result.exitCode, `${command}: ${result.stderr}`).toBe(0);
    return result.stdout;
  }

  /** What the workspace holds now, read through the provider as a restore's verification reads it. */
  async function workspaceManifest(instanceId: string): Promise<Record<string, { size: number; sha256: string }>> {
    const provider = await controller.connectedProvider('docker');
    return plain(await manifestOf(await provider.exportWorkspace!(instanceId)));
  }

  beforeAll(async () => {
    await cleanUp(PREFIX);
    image = await ensureStandinImage();
    stateDir = await makeStateDir(PREFIX);
    const config = testConfig(stateDir, { exec: { enabled: true }, idle: { enabled: false }, health: { enabled: false }, snapshots: { maxPerPrincipal: MAX_SNAPSHOTS } });
    controller = createSwarm(config);
    await controller.initialize();
    mcp = await startMcpHttp({ controller, host: '127.0.0.1', port: 0, stateDir });
    for (const id of ['alice', 'bob']) await controller.principals.addPrincipal({ id, role: 'member' });
    alice = await connectMcpHttp(mcp.url, (await controller.principals.createToken({ principalId: 'alice', name: 'snapshots-e2e' })).token, 'alice');
    bob = await connectMcpHttp(mcp.url, (await controller.principals.createToken({ principalId: 'bob', name: 'snapshots-e2e' })).token, 'bob');
    original = ok(await callTool(alice, 'create_swarm_instance', { name: `${PREFIX}-orig`, image }), 'create alice').instance as VSCodeInstance;
    bobs = ok(await callTool(bob, 'create_swarm_instance', { name: `${PREFIX}-bob`, image }), 'create bob').instance as VSCodeInstance;
  }, 180_000);

  afterAll(async () => {
    await alice?.close();
    await bob?.close();
    await mcp?.close();
    await controller?.close();
    await cleanUp(PREFIX, stateDir);
  });

  it('takes a snapshot whose manifest is the workspace as it was, stored atomically on disk', async () => {
    await sh(original.id, [
      'printf "first version\\n" > a.txt',
      'mkdir -p dir/deeper && head -c 200000 /dev/urandom > dir/b.bin',
      'printf "nested" > dir/deeper/c.txt',
      'printf "dot" > .hidden',
      ': > empty',
    ].join(' && '));
    atSnapshot = await workspaceManifest(original.id);
    expect(Object.keys(atSnapshot).sort()).toEqual(['.hidden', 'a.txt', 'dir/b.bin', 'dir/deeper/c.txt', 'empty']);

    const progress: { progress: number; message?: string }[] = [];
    const result = await callTool(alice, 'create_snapshot', { instanceId: original.id, name: 'before-changes' }, (p) => progress.push(p));
    snapshot = ok(result, 'create_snapshot').snapshot as Snapshot;
    expect(snapshot).toMatchObject({ instanceId: original.id, owner: 'alice', name: 'before-changes', files: 5, sourceProvider: 'docker', consistency: 'live', image });
    expect(progress.length).toBeGreaterThanOrEqual(2);
    expect(Date.parse(snapshot.expiresAt) - Date.parse(snapshot.createdAt)).toBe(30 * 86_400_000);

    const folder = path.join(stateDir, 'snapshots', snapshot.id);
    expect((await fs.readdir(folder)).sort()).toEqual(['manifest.json', 'snapshot.json', 'workspace.tar']);
    expect(JSON.parse(await fs.readFile(path.join(folder, 'manifest.json'), 'utf8'))).toEqual(atSnapshot);
    expect(JSON.parse(await fs.readFile(path.join(folder, 'snapshot.json'), 'utf8'))).toEqual(snapshot);
    expect((await fs.stat(path.join(folder, 'workspace.tar'))).size).toBe(snapshot.bytes);
    expect((await fs.readdir(path.join(stateDir, 'snapshots'))).filter((n) => n.startsWith('.tmp-'))).toEqual([]);
  }, 60_000);

  it('restores every file byte for byte after changes, additions and deletions; the added files are gone', async () => {
    await sh(original.id, 'printf "second version, longer\\n" > a.txt && rm -r dir/deeper && rm .hidden && printf "new" > added.txt && mkdir -p fresh && printf x > fresh/.added');
    const changed = await workspaceManifest(original.id);
    expect(changed).not.toEqual(atSnapshot);
    expect(changed['added.txt']).toBeDefined();

    const result = ok(await callTool(alice, 'restore_snapshot', { instanceId: original.id, snapshotId: snapshot.id }), 'restore');
    expect(result).toMatchObject({ instanceId: original.id, snapshotId: snapshot.id, files: 5 });
    expect(await workspaceManifest(original.id)).toEqual(atSnapshot);
    expect(await sh(original.id, 'ls -A')).not.toMatch(/added|fresh/);
    expect(await sh(original.id, 'cat a.txt')).toBe('first version\n');
  }, 60_000);

  it('forks a snapshot into a new workspace owned by the caller; changes to the fork leave the original as it was', async () => {
    const forked = ok(await callTool(alice, 'fork_instance', { name: `${PREFIX}-fork`, snapshotId: snapshot.id }), 'fork');
    const fork = forked.instance as VSCodeInstance;
    expect(fork).toMatchObject({ owner: 'alice', status: 'running', providerType: 'docker' });
    expect(fork.id).not.toBe(original.id);
    expect(forked.snapshotId).toBe(snapshot.id);
    expect(await workspaceManifest(fork.id)).toEqual(atSnapshot);

    await sh(fork.id, 'printf "changed in the fork" > a.txt && printf y > only-in-fork.txt');
    expect(await workspaceManifest(original.id)).toEqual(atSnapshot);
  }, 90_000);

  it('forks a workspace as it is now (a snapshot of it is taken first and kept)', async () => {
    await sh(original.id, 'printf "after the first snapshot" > later.txt');
    const now = await workspaceManifest(original.id);
    const forked = ok(await callTool(alice, 'fork_instance', { name: `${PREFIX}-fork2`, instanceId: original.id }), 'fork from instance');
    expect(await workspaceManifest((forked.instance as VSCodeInstance).id)).toEqual(now);
    const listed = ok(await callTool(alice, 'list_snapshots', {}), 'list').snapshots as Snapshot[];
    expect(listed.map((s) => s.id)).toEqual([snapshot.id, forked.snapshotId]);
    await sh(original.id, 'rm later.txt');
  }, 90_000);

  it("keeps alice's snapshots from bob: NOT_FOUND, worded as for a missing snapshot", async () => {
    const missing = 'snap-000000000000';
    expect(ok(await callTool(bob, 'list_snapshots', {}), 'bob list').snapshots).toEqual([]);
    expect(ok(await callTool(bob, 'list_snapshots', { instanceId: original.id }), 'bob list by instance').snapshots).toEqual([]);
    const wording = (text: string, id: string): string => text.replace(id, '<id>');
    for (const [tool, args] of [
      ['restore_snapshot', (id: string) => ({ instanceId: bobs.id, snapshotId: id })],
      ['fork_instance', (id: string) => ({ name: `${PREFIX}-bobfork`, snapshotId: id })],
      ['delete_snapshot', (id: string) => ({ snapshotId: id })],
    ] as const) {
      const theirs = failed(await callTool(bob, tool, args(snapshot.id)), `bob ${tool}`);
      const none = failed(await callTool(bob, tool, args(missing)), `bob ${tool} of a missing snapshot`);
      expect(theirs).toMatch(/^NOT_FOUND: /);
      expect(wording(theirs, snapshot.id)).toBe(wording(none, missing));
    }
    expect(failed(await callTool(bob, 'create_snapshot', { instanceId: original.id }), 'bob snapshot of alice’s')).toBe(`NOT_FOUND: instance ${original.id} does not exist`);
    expect(failed(await callTool(bob, 'fork_instance', { name: `${PREFIX}-bobfork`, instanceId: original.id }), 'bob fork of alice’s')).toBe(`NOT_FOUND: instance ${original.id} does not exist`);
    expect(failed(await callTool(bob, 'restore_snapshot', { instanceId: original.id, snapshotId: snapshot.id }), 'bob restore into alice’s')).toBe(`NOT_FOUND: instance ${original.id} does not exist`);
    // A malformed snapshot id does not tell alice's instance from a missing one either: the instance is checked first.
    expect(failed(await callTool(bob, 'restore_snapshot', { instanceId: original.id, snapshotId: 'x' }), 'bob bad id into alice’s')).toBe(`NOT_FOUND: instance ${original.id} does not exist`);
    expect(failed(await callTool(bob, 'restore_snapshot', { instanceId: bobs.id, snapshotId: 'x' }), 'bob bad id into his own')).toMatch(/^INVALID_INPUT: snapshotId: expected a snapshot id/);
    // Nothing of bob's was made and alice's snapshots are all there.
    expect((await controller.listInstances({}, { refresh: false })).filter((i) => i.owner === 'bob').map((i) => i.id)).toEqual([bobs.id]);
    expect((ok(await callTool(alice, 'list_snapshots', {}), 'alice list').snapshots as Snapshot[]).length).toBe(2);
  }, 60_000);

  it('takes a consistent snapshot with stopForSnapshot (stopped, copied, started again), and restores into a stopped workspace', async () => {
    const stopped = ok(await callTool(bob, 'create_snapshot', { instanceId: bobs.id, stopForSnapshot: true }), 'bob stopped snapshot').snapshot as Snapshot;
    expect(stopped).toMatchObject({ owner: 'bob', consistency: 'stopped' });
    const after = await controller.getInstance(bobs.id);
    expect(after.status).toBe('running');
    expect(after.lastStop?.reason).toBe(`stopped for snapshot ${stopped.id}`);
    const taken = await workspaceManifest(bobs.id);

    await sh(bobs.id, 'printf z > extra.txt');
    ok(await callTool(bob, 'stop_swarm_instance', { instanceId: bobs.id }), 'stop bob');
    ok(await callTool(bob, 'restore_snapshot', { instanceId: bobs.id, snapshotId: stopped.id }), 'restore into a stopped workspace');
    expect((await controller.getInstance(bobs.id)).status).toBe('stopped');
    expect(await workspaceManifest(bobs.id)).toEqual(taken);
    ok(await callTool(bob, 'delete_snapshot', { snapshotId: stopped.id }), 'bob delete');
    ok(await callTool(bob, 'start_swarm_instance', { instanceId: bobs.id }), 'start bob');
  }, 90_000);

  it('refuses a snapshot past the per-principal count, naming the limit, the usage and the request', async () => {
    ok(await callTool(alice, 'create_snapshot', { instanceId: original.id, name: 'third' }), 'third snapshot');
    const refused = failed(await callTool(alice, 'create_snapshot', { instanceId: original.id, name: 'fourth' }), 'fourth snapshot');
    expect(refused).toBe(`QUOTA_EXCEEDED: snapshots.maxPerPrincipal: alice may hold ${MAX_SNAPSHOTS} snapshots, holds ${MAX_SNAPSHOTS} and asked for 1 more`);
    expect((await fs.readdir(path.join(stateDir, 'snapshots'))).filter((n) => n.startsWith('snap-')).length).toBe(MAX_SNAPSHOTS);
    // Bob's own count is his own.
    ok(await callTool(bob, 'create_snapshot', { instanceId: bobs.id }), 'bob snapshot');
  }, 60_000);

  it('deletes a snapshot, which then reads as missing', async () => {
    const listed = ok(await callTool(alice, 'list_snapshots', {}), 'list').snapshots as Snapshot[];
    const third = listed.find((s) => s.name === 'third')!;
    ok(await callTool(alice, 'delete_snapshot', { snapshotId: third.id }), 'delete');
    expect(failed(await callTool(alice, 'delete_snapshot', { snapshotId: third.id }), 'delete again')).toBe(`NOT_FOUND: snapshot ${third.id} does not exist`);
    await expect(fs.access(path.join(stateDir, 'snapshots', third.id))).rejects.toThrow();
  }, 30_000);

  it('applies the workspace quota to a fork, and deletes a fork whose files cannot be placed', async () => {
    const held = (await controller.listInstances({}, { refresh: false })).filter((i) => i.owner === 'alice').length;
    await controller.principals.updatePrincipal('alice', { quotas: { instances: held } });
    expect(failed(await callTool(alice, 'fork_instance', { name: `${PREFIX}-over`, snapshotId: snapshot.id }), 'fork over quota')).toBe(
      `QUOTA_EXCEEDED: instances: alice may hold ${held}, holds ${held} and asked for 1 more`,
    );
    await controller.principals.updatePrincipal('alice', { quotas: {} });

    // A snapshot whose archive matches its manifest but holds a name no workspace can take ("../"): the
    // import cannot place it inside the folder, so the fork fails after its instance was made.
    const id = await commitUnplaceableSnapshot(stateDir, snapshot, 'crafted');

    const refused = failed(await callTool(alice, 'fork_instance', { name: `${PREFIX}-broken`, snapshotId: id }), 'fork of an unplaceable archive');
    expect(refused).toMatch(/^PROVIDER_ERROR: docker: import workspace into e2e-snap-broken-[0-9a-f]{8}: .*outside\.txt/);
    expect((await controller.listInstances({}, { refresh: false })).some((i) => i.name === `${PREFIX}-broken`)).toBe(false);
    expect(await containersNamed(`${PREFIX}-broken`)).toEqual([]);
    expect((await docker.listVolumes()).Volumes?.filter((v) => v.Labels?.[LABEL_NAME]?.startsWith(`${PREFIX}-broken`)) ?? []).toEqual([]);
    ok(await callTool(alice, 'delete_snapshot', { snapshotId: id }), 'delete crafted');
  }, 90_000);

  it('refuses to restore an archive altered on disk, naming the file, and leaves the workspace as it was', async () => {
    const tar = path.join(stateDir, 'snapshots', snapshot.id, 'workspace.tar');
    const bytes = await fs.readFile(tar);
    const at = bytes.indexOf('first version');
    expect(at).toBeGreaterThan(0);
    bytes[at] = bytes[at]! ^ 0x20; // "first" becomes "First": the tar stays readable, a.txt's hash changes
    await fs.writeFile(tar, bytes);
    await sh(original.id, 'printf "edited after the restore" > a.txt');
    const before = await workspaceManifest(original.id);

    const refused = failed(await callTool(alice, 'restore_snapshot', { instanceId: original.id, snapshotId: snapshot.id }), 'restore of a tampered snapshot');
    expect(refused).toMatch(new RegExp(`^STATE_ERROR: snapshot ${snapshot.id} is damaged: its archive does not match its manifest: a\\.txt: content differs`));
    expect(refused).not.toMatch(/b\.bin|c\.txt/);
    expect(await workspaceManifest(original.id)).toEqual(before);
    expect(failed(await callTool(alice, 'fork_instance', { name: `${PREFIX}-fork3`, snapshotId: snapshot.id }), 'fork of a tampered snapshot')).toMatch(/a\.txt: content differs/);
    expect((await controller.listInstances({}, { refresh: false })).some((i) => i.name === `${PREFIX}-fork3`)).toBe(false);
  }, 60_000);

  it('puts the workspace back byte for byte when a restore fails part-way (the import is refused), and says so', async () => {
    await sh(original.id, 'printf "as it was before the failed restore" > a.txt && mkdir -p kept && head -c 30000 /dev/urandom > kept/r.bin');
    const before = await workspaceManifest(original.id);
    // An archive that matches its manifest but holds "../outside.txt": the workspace is emptied, then the import fails.
    const id = await commitUnplaceableSnapshot(stateDir, snapshot, 'unplaceable');

    const refused = failed(await callTool(alice, 'restore_snapshot', { instanceId: original.id, snapshotId: id }), 'restore of an unplaceable archive');
    expect(refused).toMatch(new RegExp(`^PROVIDER_ERROR: restoring snapshot ${id} into ${original.id} failed: docker: import workspace into .*outside\\.txt.*; the workspace was put back as it was before the restore \\(${Object.keys(before).length} files verified by SHA-256\\)$`));
    expect(await workspaceManifest(original.id)).toEqual(before);
    expect(await sh(original.id, 'ls -A')).not.toMatch(/ok\.txt/);
    expect((await fs.readdir(path.join(stateDir, 'snapshots'))).filter((n) => n.startsWith('.tmp-'))).toEqual([]);
    ok(await callTool(alice, 'delete_snapshot', { snapshotId: id }), 'delete unplaceable');
  }, 90_000);
});

/**
 * The same on Fly, through the Machines API emulator (its machines real containers with real volumes):
 * snapshot and restore on Fly, and forks from a Fly snapshot onto Fly and onto Docker. Fly has no file API:
 * its export and import run through exec, so this covers that path too.
 */
describe('snapshots, restore and fork on Fly (emulator) and across providers', () => {
  const FLY_PREFIX = 'e2e-snapfly';
  const APP = 'vscode-swarm-e2e-snapshots';
  let emulator: FlyEmulator;
  let stateDir: string;
  let controller: SwarmController;
  let image: string;

  const manifestOn = async (type: 'docker' | 'fly', id: string): Promise<Record<string, { size: number; sha256: string }>> =>
    plain(await manifestOf(await (await controller.connectedProvider(type)).exportWorkspace!(id)));

  beforeAll(async () => {
    await cleanUp(FLY_PREFIX);
    image = await ensureStandinImage();
    emulator = await startFlyEmulator({ rateLimit: false });
    stateDir = await makeStateDir(FLY_PREFIX);
    const config = testConfig(stateDir, {
      exec: { enabled: true }, idle: { enabled: false }, health: { enabled: false },
      providers: { fly: { enabled: true, app: APP, apiUrl: emulator.url, image } },
    });
    controller = createSwarm(config, { env: { ...process.env, FLY_API_TOKEN: emulator.token } });
    await controller.initialize();
  }, 180_000);

  afterAll(async () => {
    await controller?.close();
    await emulator?.close();
    await cleanUp(FLY_PREFIX, stateDir);
  });

  it('restores a Fly workspace byte for byte, and forks its snapshot onto Fly and onto Docker', async () => {
    const swarm = new AuthorizedSwarm({ controller }, localAdmin('library'));
    const { instance } = await swarm.createInstance({ name: `${FLY_PREFIX}-src`, providerType: 'fly' });
    const wrote = await controller.executeCommand(instance.id, 'mkdir -p src/deep && printf "on fly\\n" > src/deep/a.txt && head -c 100000 /dev/urandom > blob.bin && : > empty');
    expect(wrote.exitCode, wrote.stderr).toBe(0);
    const taken = await manifestOn('fly', instance.id);
    expect(Object.keys(taken).sort()).toEqual(['blob.bin', 'empty', 'src/deep/a.txt']);

    const snapshot = await swarm.createSnapshot(instance.id);
    expect(snapshot).toMatchObject({ sourceProvider: 'fly', files: 3, consistency: 'live' });

    const changed = await controller.executeCommand(instance.id, 'printf changed > src/deep/a.txt && rm blob.bin && printf new > added.txt');
    expect(changed.exitCode, changed.stderr).toBe(0);
    expect(await manifestOn('fly', instance.id)).not.toEqual(taken);
    await swarm.restoreSnapshot(instance.id, snapshot.id);
    expect(await manifestOn('fly', instance.id)).toEqual(taken);

    const onFly = await swarm.forkInstance({ name: `${FLY_PREFIX}-fork-fly`, snapshotId: snapshot.id });
    expect(onFly.instance).toMatchObject({ providerType: 'fly', status: 'running' });
    expect(await manifestOn('fly', onFly.instance.id)).toEqual(taken);

    const onDocker = await swarm.forkInstance({ name: `${FLY_PREFIX}-fork-docker`, snapshotId: snapshot.id, providerType: 'docker' });
    expect(onDocker.instance).toMatchObject({ providerType: 'docker', status: 'running' });
    expect(await manifestOn('docker', onDocker.instance.id)).toEqual(taken);

    const edit = await controller.executeCommand(onFly.instance.id, 'printf "fork only" > src/deep/a.txt');
    expect(edit.exitCode, edit.stderr).toBe(0);
    expect(await manifestOn('fly', instance.id)).toEqual(taken);
  }, 300_000);
});
