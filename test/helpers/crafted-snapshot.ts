/**
 * A snapshot whose archive matches its manifest but holds a name no workspace folder can take
 * ("../outside.txt"), written straight into a snapshot store: the verification before a restore or fork
 * passes, and the import into a workspace then fails for real (or, where the tar strips the "../", the
 * result cannot match the manifest). The snapshot tests use it to make a restore or fork fail part-way.
 */
import { promises as fs } from 'node:fs';
import tar from 'tar-stream';
import { manifestOf } from '../../src/migration/workspace-archive.js';
import { SnapshotStore, type Snapshot } from '../../src/snapshots/snapshot-store.js';

/** Commits such a snapshot under a new id, its record taken from `base` (without a native snapshot); returns the id. */
export async function commitUnplaceableSnapshot(stateDir: string, base: Snapshot, name: string): Promise<string> {
  const pack = tar.pack();
  pack.entry({ name: 'ok.txt' }, 'fine');
  pack.entry({ name: '../outside.txt' }, 'escapes');
  pack.finalize();
  const chunks: Buffer[] = [];
  for await (const chunk of pack as unknown as AsyncIterable<Buffer>) chunks.push(chunk);
  const archive = Buffer.concat(chunks);
  const store = new SnapshotStore(stateDir);
  const id = store.newId();
  const building = await store.begin(id);
  await fs.writeFile(building.archive, archive);
  const manifest = await manifestOf(archive);
  const { native: _native, ...record } = base;
  await building.commit({ ...record, id, name, bytes: archive.length, files: Object.keys(manifest).length }, manifest);
  return id;
}
