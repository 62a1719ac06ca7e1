/**
 * The snapshot store on real files: a snapshot appears whole or not at all, expired ones read as missing
 * and are removed by the sweep together with what an interrupted copy left, and an archive that does not
 * match its manifest (a file altered, missing or added) is refused naming the file.
 */
import { promises as fs } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { Readable } from 'node:stream';
import tar from 'tar-stream';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { SwarmError } from '../../src/errors.js';
import { manifestOf, type Manifest } from '../../src/migration/workspace-archive.js';
import { SnapshotStore, SnapshotsConfigSchema, type Snapshot } from '../../src/snapshots/snapshot-store.js';

const DAY = 86_400_000;

/** A tar of these files, as a provider's export would stream it. */
async function tarOf(files: Record<string, string>): Promise<Buffer> {
  const pack = tar.pack();
  for (const [name, content] of Object.entries(files)) pack.entry({ name: `./${name}`, type: 'file' }, content);
  pack.finalize();
  const chunks: Buffer[] = [];
  for await (const chunk of pack as unknown as AsyncIterable<Buffer>) chunks.push(chunk);
  return Buffer.concat(chunks);
}

describe('snapshot store', () => {
  let stateDir: string;
  let clock: number;
  let store: SnapshotStore;

  beforeEach(async () => {
    stateDir = await fs.mkdtemp(path.join(os.tmpdir(), 'vscode-swarm-snapshots-unit-'));
    clock = Date.parse('2026-01-01T00:00:00Z');
    store = new SnapshotStore(stateDir, () => clock);
  });
  afterEach(async () => {
    await fs.rm(stateDir, { recursive: true, force: true });
  });

  /** Writes a snapshot of `files` through begin/commit, the way the manager does, with `manifest` as its stored manifest. */
  async function save(files: Record<string, string>, options: { owner?: string; retentionDays?: number; manifest?: Manifest; into?: SnapshotStore } = {}): Promise<Snapshot> {
    const into = options.into ?? store;
    const id = into.newId();
    const building = await into.begin(id);
    const archive = await tarOf(files);
    await fs.writeFile(building.archive, archive);
    const manifest = options.manifest ?? (await manifestOf(Readable.from([archive])));
    const record: Snapshot = {
      id, instanceId: 'ws-1', instanceName: 'ws', owner: options.owner ?? 'alice',
      createdAt: new Date(clock).toISOString(), expiresAt: into.expiresAt(clock, options.retentionDays ?? 30),
      bytes: archive.length, files: Object.keys(manifest).length, sourceProvider: 'docker', image: 'img:1', resources: { cpu: 1, memoryMb: 1024 }, consistency: 'live',
    };
    await building.commit(record, manifest);
    return record;
  }

  it('has the documented defaults', () => {
    expect(SnapshotsConfigSchema.parse({})).toEqual({ retentionDays: 30, maxPerPrincipal: 20, maxBytesPerSnapshot: 10 * 2 ** 30, maxBytesPerPrincipal: 50 * 2 ** 30, timeoutMs: 600_000 });
    expect(() => SnapshotsConfigSchema.parse({ dir: 'relative/snapshots' })).toThrow(/absolute path/);
  });

  it('commits a snapshot whole, lists it, counts it per owner and removes it', async () => {
    const a = await save({ 'a.txt': 'one' });
    const b = await save({ 'b.txt': 'two two' }, { owner: 'bob' });
    expect((await fs.readdir(path.join(stateDir, 'snapshots'))).sort()).toEqual([a.id, b.id].sort());
    expect(await store.get(a.id)).toEqual(a);
    const all = await store.list();
    expect(all.map((s) => s.id).sort()).toEqual([a.id, b.id].sort());
    expect(store.usageOf('alice', all)).toEqual({ count: 1, bytes: a.bytes });
    expect(await store.remove(a.id)).toBe(true);
    expect(await store.remove(a.id)).toBe(false);
    await expect(store.get(a.id)).rejects.toMatchObject({ code: 'NOT_FOUND', message: `snapshot ${a.id} does not exist` });
    await expect(store.get('../etc')).rejects.toMatchObject({ code: 'INVALID_INPUT' });
  });

  it('reads an expired snapshot as missing, and the sweep deletes it and leftovers of interrupted copies', async () => {
    const short = await save({ 'a.txt': 'one' }, { retentionDays: 1 });
    const long = await save({ 'b.txt': 'two' }, { retentionDays: 30 });
    const interrupted = await store.begin(store.newId()); // a copy still under way in this process: kept
    await fs.mkdir(path.join(stateDir, 'snapshots', '.tmp-snap-0123456789ab')); // a crash's leftover: removed
    clock += 2 * DAY;
    await expect(store.get(short.id)).rejects.toMatchObject({ code: 'NOT_FOUND', message: `snapshot ${short.id} does not exist` });
    expect(await store.sweep()).toEqual([short.id]);
    expect((await fs.readdir(path.join(stateDir, 'snapshots'))).sort()).toEqual([path.basename(interrupted.dir), long.id].sort());
    await interrupted.discard();
    expect(await fs.readdir(path.join(stateDir, 'snapshots'))).toEqual([long.id]);
  });

  it('in a folder shared with other controllers, leaves their copies under way alone and sweeps only old leftovers', async () => {
    const shared = path.join(stateDir, 'shared-snapshots');
    clock = Date.now(); // the folders' times are the file system's
    const mine = new SnapshotStore(path.join(stateDir, 'a'), () => clock, { dir: shared, copyTimeoutMs: 60_000 });
    const theirs = new SnapshotStore(path.join(stateDir, 'b'), () => clock, { dir: shared, copyTimeoutMs: 60_000 });
    const copying = await theirs.begin(theirs.newId()); // another controller's copy under way
    const record = await save({ 'a.txt': 'one' }, { into: mine });
    // The other store sees the snapshot; its sweep, and mine, keep the copy under way.
    expect((await theirs.list()).map((s) => s.id)).toEqual([record.id]);
    await mine.sweep();
    expect(await fs.readdir(shared)).toContain(path.basename(copying.dir));
    // Older than twice the copy time limit it is a leftover (that controller died mid-copy): swept.
    clock += 3 * 60_000;
    await mine.sweep();
    expect((await fs.readdir(shared)).sort()).toEqual([record.id]);
  });

  it('refuses an archive that does not match its manifest, naming each file', async () => {
    const good = await save({ 'a.txt': 'one', 'b.txt': 'two' });
    expect(Object.keys(await store.verifyArchive(good, 1_000_000)).sort()).toEqual(['a.txt', 'b.txt']);

    const expected = await manifestOf(await tarOf({ 'a.txt': 'one', 'gone.txt': 'x', 'b.txt': 'two' }));
    const bad = await save({ 'a.txt': 'ONE', 'b.txt': 'two', 'extra.txt': 'e' }, { manifest: expected });
    const err = await store.verifyArchive(bad, 1_000_000).then(() => undefined, (e: unknown) => e);
    expect(err).toBeInstanceOf(SwarmError);
    expect((err as SwarmError).code).toBe('STATE_ERROR');
    expect((err as SwarmError).message).toBe(`snapshot ${bad.id} is damaged: its archive does not match its manifest: a.txt: content differs (3 vs 3 bytes); gone.txt: missing; extra.txt: not in the snapshot; nothing was changed`);

    await fs.writeFile(store.archivePath(good.id), 'not a tar at all, long enough to be read as a header block'.repeat(20));
    await expect(store.verifyArchive(good, 1_000_000)).rejects.toMatchObject({ code: 'STATE_ERROR', message: expect.stringMatching(new RegExp(`^snapshot ${good.id} is damaged: its archive cannot be read`)) });
  });
});
