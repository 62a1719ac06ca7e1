/**
 * Fly's native volume snapshots under the snapshot manager, through the Machines API emulator (Machines
 * are real containers, volumes and snapshots real Docker volumes), and a restore that fails part-way on
 * Fly being rolled back.
 *
 * What it proves: a snapshot of a Fly workspace also takes a Fly volume snapshot and records it
 * (`native`), and the capabilities say which provider has them; a fork on Fly starts from a new volume
 * made from that snapshot (the fork's first, empty volume is deleted), has the snapshot's files byte for
 * byte and leaves the original alone; a fork onto Docker uses the archive; when the native copy does not
 * match the manifest the fork is filled from the archive and still matches; the provider's restore into a
 * new volume can be rolled back to the volume it had; a restore whose archive
 * cannot be placed fails, and the workspace is back as it was, every file byte for byte, and the error
 * says so.
 */
import { promises as fs } from 'node:fs';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { VSCodeInstance } from '../../providers/provider.js';
import { createSwarm } from '../../src/controller/create-swarm.js';
import type { SwarmController } from '../../src/controller/swarm-controller.js';
import { manifestOf, type Manifest } from '../../src/migration/workspace-archive.js';
import { writeJsonAtomic } from '../../src/state/atomic-file.js';
import type { Snapshot } from '../../src/snapshots/snapshot-store.js';
import { AuthorizedSwarm } from '../../src/tenancy/authorized-swarm.js';
import { localAdmin } from '../../src/tenancy/identity.js';
import { startFlyEmulator, type FlyEmulator } from '../emulators/fly/index.js';
import { commitUnplaceableSnapshot } from '../helpers/crafted-snapshot.js';
import { cleanUp, makeStateDir, testConfig } from '../helpers/docker.js';
import { ensureStandinImage } from '../helpers/standin-image.js';

const PREFIX = 'e2e-snapnative';
const APP = 'vscode-swarm-e2e-snapnative';

type Plain = Record<string, { size: number; sha256: string }>;

function plain(manifest: Manifest): Plain {
  return JSON.parse(JSON.stringify(manifest)) as Plain;
}

describe('Fly native volume snapshots, and restore rollback on Fly', () => {
  let emulator: FlyEmulator;
  let stateDir: string;
  let controller: SwarmController;
  let swarm: AuthorizedSwarm;
  let source: VSCodeInstance;
  let snapshot: Snapshot;
  let taken: Plain;

  const manifestOn = async (type: 'docker' | 'fly', id: string): Promise<Plain> => plain(await manifestOf(await (await controller.connectedProvider(type)).exportWorkspace!(id)));

  async function sh(id: string, command: string): Promise<string> {
    const result = await controller.executeCommand(id, command);
    expect(result.exitCode, `${command}: ${result.stderr}`).toBe(0);
    return result.stdout;
  }

  /** The volume the instance's Machine mounts now, as the provider reports it. */
  async function volumeOf(id: string): Promise<string> {
    const instance = await (await controller.connectedProvider('fly')).getInstance(id);
    return instance!.providerRef.volume!;
  }

  beforeAll(async () => {
    await cleanUp(PREFIX);
    const image = await ensureStandinImage();
    emulator = await startFlyEmulator({ rateLimit: false, snapshotDelayMs: 300 });
    stateDir = await makeStateDir(PREFIX);
    const config = testConfig(stateDir, {
      exec: { enabled: true }, idle: { enabled: false }, health: { enabled: false },
      providers: { fly: { enabled: true, app: APP, apiUrl: emulator.url, image } },
    });
    controller = createSwarm(config, { env: { ...process.env, FLY_API_TOKEN: emulator.token } });
    await controller.initialize();
    swarm = new AuthorizedSwarm({ controller }, localAdmin('library'));
    source = (await swarm.createInstance({ name: `${PREFIX}-src`, providerType: 'fly' })).instance;
  }, 180_000);

  afterAll(async () => {
    await controller?.close();
    await emulator?.close();
    await cleanUp(PREFIX, stateDir);
  });

  it('says which provider has native snapshots, and records a Fly volume snapshot with each snapshot', async () => {
    expect((await controller.connectedProvider('fly')).getCapabilities()).toMatchObject({ snapshots: true, nativeSnapshots: true });
    expect((await controller.connectedProvider('docker')).getCapabilities().nativeSnapshots).toBeFalsy();

    await sh(source.id, 'mkdir -p src/deep && printf "on fly\\n" > src/deep/a.txt && head -c 100000 /dev/urandom > blob.bin && : > empty && printf dot > .hidden');
    taken = await manifestOn('fly', source.id);
    snapshot = await swarm.createSnapshot(source.id, { name: 'with-native' });
    expect(snapshot).toMatchObject({ sourceProvider: 'fly', files: 4, native: { provider: 'fly', volumeId: await volumeOf(source.id) } });
    expect(snapshot.native!.id).toMatch(/^vs_/);
    expect(Date.parse(snapshot.native!.expiresAt!) - Date.parse(snapshot.native!.takenAt)).toBe(5 * 86_400_000);
    expect(emulator.volumeSnapshots(APP).map((s) => s.id)).toContain(snapshot.native!.id);
    const listed = await swarm.listSnapshots({ instanceId: source.id });
    expect(listed.find((s) => s.id === snapshot.id)?.native?.id).toBe(snapshot.native!.id);
    // The record on disk carries it too.
    expect(JSON.parse(await fs.readFile(path.join(stateDir, 'snapshots', snapshot.id, 'snapshot.json'), 'utf8')).native.id).toBe(snapshot.native!.id);
  }, 120_000);

  it('forks on Fly from a new volume made from the native snapshot, verified by the manifest; the original is untouched', async () => {
    await sh(source.id, 'printf "changed after the snapshot" > src/deep/a.txt');
    const fork = await swarm.forkInstance({ name: `${PREFIX}-fork`, snapshotId: snapshot.id });
    expect(fork).toMatchObject({ via: 'native', snapshotId: snapshot.id, files: 4 });
    expect(fork.instance).toMatchObject({ providerType: 'fly', status: 'running' });
    expect(await manifestOn('fly', fork.instance.id)).toEqual(taken);

    // Its workspace is one volume, the one made from the snapshot; its first (empty) volume was deleted.
    const volumes = (await (await fetch(`${emulator.url}/v1/apps/${APP}/volumes`, { headers: { Authorization: `Bearer ${emulator.token}` } })).json()) as Array<{ id: string; name: string; attached_machine_id: string | null }>;
    const forkVolume = await volumeOf(fork.instance.id);
    const named = volumes.filter((v) => v.name === volumes.find((x) => x.id === forkVolume)!.name);
    expect(named.map((v) => v.id)).toEqual([forkVolume]);

    await sh(fork.instance.id, 'printf "fork only" > blob.bin');
    expect(await sh(source.id, 'cat src/deep/a.txt')).toBe('changed after the snapshot');
    expect((await manifestOn('fly', source.id))['blob.bin']).toEqual(taken['blob.bin']);
  }, 180_000);

  it('forks onto Docker from the archive', async () => {
    const fork = await swarm.forkInstance({ name: `${PREFIX}-docker`, snapshotId: snapshot.id, providerType: 'docker' });
    expect(fork).toMatchObject({ via: 'archive' });
    expect(await manifestOn('docker', fork.instance.id)).toEqual(taken);
  }, 120_000);

  it('fills a fork from the archive when the native copy does not match the manifest', async () => {
    // A later native snapshot (after a change) put in the record: the two copies now differ.
    await sh(source.id, 'printf "only in the later volume snapshot" > later.txt');
    const later = await (await controller.connectedProvider('fly')).takeNativeSnapshot!(source.id);
    const record = path.join(stateDir, 'snapshots', snapshot.id, 'snapshot.json');
    await writeJsonAtomic(record, { ...snapshot, native: later });

    const fork = await swarm.forkInstance({ name: `${PREFIX}-mismatch`, snapshotId: snapshot.id });
    expect(fork).toMatchObject({ via: 'archive' });
    expect(await manifestOn('fly', fork.instance.id)).toEqual(taken);
    await writeJsonAtomic(record, snapshot);
    await sh(source.id, 'rm later.txt');
  }, 180_000);

  it('puts the workspace back, byte for byte, when a restore fails part-way, and says so', async () => {
    await sh(source.id, 'printf "edited before the failed restore" > src/deep/a.txt && printf keep > keep.txt');
    const before = await manifestOn('fly', source.id);

    // A snapshot whose archive matches its manifest but holds a name the workspace cannot take as it is
    // ("../outside.txt"): the workspace is emptied, the import runs and the result cannot match.
    const id = await commitUnplaceableSnapshot(stateDir, snapshot, 'crafted');

    const refused = await swarm.restoreSnapshot(source.id, id).then(
      () => undefined,
      (err: Error) => err.message,
    );
    expect(refused).toMatch(new RegExp(`^restoring snapshot ${id} into ${source.id} failed: .*; the workspace was put back as it was before the restore \\(${Object.keys(before).length} files verified by SHA-256\\)$`));
    expect(await manifestOn('fly', source.id)).toEqual(before);
    expect(await sh(source.id, 'cat src/deep/a.txt')).toBe('edited before the failed restore');
    // The copy taken aside is gone, and no snapshot was added for it.
    expect((await fs.readdir(path.join(stateDir, 'snapshots'))).filter((n) => n.startsWith('.tmp-'))).toEqual([]);
    expect((await swarm.listSnapshots()).map((s) => s.name)).not.toContain('before-failed-restore');
    await swarm.deleteSnapshot(id);
  }, 240_000);

  it('restores a native snapshot into a new volume at the provider, and rolls that back to the volume it had', async () => {
    const fly = await controller.connectedProvider('fly');
    const atSnap = await manifestOn('fly', source.id);
    const native = await fly.takeNativeSnapshot!(source.id);
    await sh(source.id, 'printf "after the native snapshot" > after.txt');
    const changed = await manifestOn('fly', source.id);
    const original = await volumeOf(source.id);

    const restored = await fly.restoreNativeSnapshot!(source.id, native);
    expect(restored.previousVolumeId).toBe(original);
    expect(await volumeOf(source.id)).toBe(restored.volumeId);
    expect(await manifestOn('fly', source.id)).toEqual(atSnap);

    await restored.rollback();
    expect(await volumeOf(source.id)).toBe(original);
    expect(await manifestOn('fly', source.id)).toEqual(changed);
    const volumes = (await (await fetch(`${emulator.url}/v1/apps/${APP}/volumes`, { headers: { Authorization: `Bearer ${emulator.token}` } })).json()) as Array<{ id: string }>;
    expect(volumes.map((v) => v.id)).not.toContain(restored.volumeId);
    await sh(source.id, 'rm after.txt');
  }, 180_000);

  it('deletes a snapshot with a native one; Fly keeps its volume snapshot until its own retention (no delete call)', async () => {
    await swarm.deleteSnapshot(snapshot.id);
    await expect(swarm.listSnapshots()).resolves.not.toContainEqual(expect.objectContaining({ id: snapshot.id }));
    expect(emulator.volumeSnapshots(APP).map((s) => s.id)).toContain(snapshot.native!.id);
  }, 60_000);
});
