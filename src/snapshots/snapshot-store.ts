/**
 * Snapshots on disk: one folder per snapshot under `<stateDir>/snapshots/<snapshotId>/` (or the shared
 * `snapshots.dir` of several controllers) holding the
 * workspace as a tar (`workspace.tar`), its SHA-256 manifest (`manifest.json`) and the record
 * (`snapshot.json`). A snapshot is built in a temp folder beside the others and renamed into place, so a
 * reader sees a whole snapshot or none; a crash mid-copy leaves only a temp folder, removed by the sweep.
 *
 * The store knows nothing of instances or callers: who may see a snapshot is decided by the tenancy layer,
 * what a snapshot holds and when it expires is decided here.
 */
import { randomBytes } from 'node:crypto';
import { promises as fs } from 'node:fs';
import path from 'node:path';
import { z } from 'zod';
import { InstanceIdSchema, InstanceNameSchema, NativeSnapshotRefSchema, ProviderTypeSchema, ResourcesSchema } from '../../providers/provider.js';
import { SwarmError, invalidInput } from '../errors.js';
import { isTempFile, syncDirectory, writeJsonAtomic } from '../state/atomic-file.js';
import { entryOf, manifestDifferences, manifestOf, openSpooled, type Manifest } from '../migration/workspace-archive.js';

const GIB = 2 ** 30;

/** The `snapshots` section of the configuration. */
export const SnapshotsConfigSchema = z
  .object({
    /** Days a snapshot is kept; expired ones are deleted by the sweep (at start, on every list and create). */
    retentionDays: z.number().min(0.001).max(3_650).default(30),
    /** Snapshots one principal may hold. */
    maxPerPrincipal: z.number().int().min(0).max(10_000).default(20),
    /** The largest workspace archive one snapshot may hold. */
    maxBytesPerSnapshot: z.number().int().min(1).max(2 ** 50).default(10 * GIB),
    /** Bytes of archives one principal may hold in total. */
    maxBytesPerPrincipal: z.number().int().min(0).max(2 ** 52).default(50 * GIB),
    /** Time one copy (export, import, verification) may take. */
    timeoutMs: z.number().int().min(1_000).max(86_400_000).default(600_000),
    /**
     * Where snapshots are kept, an absolute path (default `<stateDir>/snapshots`). Controllers sharing one
     * swarm (a PostgreSQL store) each have their own state directory: point them all at one shared folder
     * (a network file system on several machines) and any of them lists, restores and forks any snapshot.
     */
    dir: z.string().min(1).refine((d) => path.isAbsolute(d), 'an absolute path').optional(),
  })
  .strict();
export type SnapshotsConfig = z.infer<typeof SnapshotsConfigSchema>;

export const SNAPSHOT_ID_PATTERN = /^snap-[0-9a-f]{12}$/;
export const SnapshotIdSchema = z.string().regex(SNAPSHOT_ID_PATTERN, 'expected a snapshot id such as snap-0123456789ab, as returned by create_snapshot');

export const SnapshotSchema = z.object({
  id: SnapshotIdSchema,
  /** The instance it was taken of (which may since have been deleted). */
  instanceId: InstanceIdSchema,
  instanceName: InstanceNameSchema,
  /** The principal it belongs to: the instance's owner when it was taken. */
  owner: z.string(),
  name: InstanceNameSchema.optional(),
  createdAt: z.string(),
  expiresAt: z.string(),
  /** Size of the archive on disk. */
  bytes: z.number().int().min(0),
  /** Regular files in the manifest. */
  files: z.number().int().min(0),
  sourceProvider: ProviderTypeSchema,
  /** The source's image and resources, which a fork on the same provider takes over. */
  image: z.string(),
  resources: ResourcesSchema,
  /** How consistent the copy is: `stopped` (the instance was stopped while it was copied) or `live` (copied while it ran). */
  consistency: z.enum(['stopped', 'live']),
  /**
   * The provider's own copy taken with it (a Fly volume snapshot), when the source provider has native
   * snapshots: a fork on that provider starts from it. The archive and manifest stay the portable,
   * verified copy.
   */
  native: NativeSnapshotRefSchema.optional(),
});
export type Snapshot = z.infer<typeof SnapshotSchema>;

export const ARCHIVE_FILE = 'workspace.tar';
export const MANIFEST_FILE = 'manifest.json';
export const RECORD_FILE = 'snapshot.json';

/** What one owner holds: counted against maxPerPrincipal and maxBytesPerPrincipal. */
export interface SnapshotUsage {
  count: number;
  bytes: number;
}

export class SnapshotStore {
  readonly dir: string;
  /** Temp folders of snapshots being made in this process: the sweep leaves them alone. */
  private readonly building = new Set<string>();
  /** Set when the folder may be shared with other controllers: the age below which another's temp folder is left alone. */
  private readonly othersMayBuildForMs?: number;

  /**
   * `options.dir` is a folder other controllers may write too (snapshots.dir): then a temp folder this
   * process is not building is only a leftover once it is older than `options.copyTimeoutMs` twice over
   * (another controller may still be copying into it); in the state directory's own folder, at once.
   */
  constructor(stateDir: string, private readonly now: () => number = Date.now, options: { dir?: string; copyTimeoutMs?: number } = {}) {
    this.dir = options.dir ?? path.join(stateDir, 'snapshots');
    if (options.dir) this.othersMayBuildForMs = 2 * (options.copyTimeoutMs ?? 600_000);
  }

  newId(): string {
    return `snap-${randomBytes(6).toString('hex')}`;
  }

  /** A fresh temp folder to build a snapshot in; `commit` moves it into place, `discard` removes it. */
  async begin(id: string): Promise<{ dir: string; archive: string; commit: (record: Snapshot, manifest: Manifest) => Promise<void>; discard: () => Promise<void> }> {
    const name = `.tmp-${id}`;
    const dir = path.join(this.dir, name);
    await fs.mkdir(this.dir, { recursive: true, mode: 0o700 });
    await fs.mkdir(dir, { mode: 0o700 });
    this.building.add(name);
    const discard = async (): Promise<void> => {
      await fs.rm(dir, { recursive: true, force: true });
      this.building.delete(name);
    };
    const commit = async (record: Snapshot, manifest: Manifest): Promise<void> => {
      await writeJsonAtomic(path.join(dir, MANIFEST_FILE), manifest);
      await writeJsonAtomic(path.join(dir, RECORD_FILE), SnapshotSchema.parse(record));
      await syncDirectory(dir);
      await fs.rename(dir, this.folder(id));
      this.building.delete(name);
      await syncDirectory(this.dir);
    };
    return { dir, archive: path.join(dir, ARCHIVE_FILE), commit, discard };
  }

  /** The snapshot, or NOT_FOUND (the same message whether it never existed, expired or was deleted). */
  async get(snapshotId: string): Promise<Snapshot> {
    if (!SNAPSHOT_ID_PATTERN.test(snapshotId)) throw invalidInput('snapshotId', 'a snapshot id such as snap-0123456789ab', snapshotId);
    const record = await this.read(snapshotId);
    if (!record || this.expired(record)) throw notFound(snapshotId);
    return record;
  }

  /** Every snapshot not expired, oldest first. */
  async list(): Promise<Snapshot[]> {
    const names = await fs.readdir(this.dir).catch(() => [] as string[]);
    const out: Snapshot[] = [];
    for (const name of names) {
      if (!SNAPSHOT_ID_PATTERN.test(name)) continue;
      const record = await this.read(name);
      if (record && !this.expired(record)) out.push(record);
    }
    return out.sort((a, b) => a.createdAt.localeCompare(b.createdAt) || a.id.localeCompare(b.id));
  }

  usageOf(owner: string, snapshots: readonly Snapshot[]): SnapshotUsage {
    const mine = snapshots.filter((s) => s.owner === owner);
    return { count: mine.length, bytes: mine.reduce((sum, s) => sum + s.bytes, 0) };
  }

  /** Whether a temp folder no copy in this process is writing is a leftover (see the constructor). */
  private async abandoned(name: string): Promise<boolean> {
    if (this.othersMayBuildForMs === undefined) return true;
    const stat = await fs.stat(path.join(this.dir, name)).catch(() => undefined);
    return !stat || this.now() - stat.mtimeMs > this.othersMayBuildForMs;
  }

  /** Removes a snapshot's folder; false when there was none. */
  async remove(snapshotId: string): Promise<boolean> {
    const folder = this.folder(snapshotId);
    const existed = await fs.access(folder).then(() => true, () => false);
    // Renamed aside first, so that a crash mid-removal never leaves a half snapshot under its id.
    const aside = path.join(this.dir, `.tmp-deleting-${snapshotId}-${randomBytes(3).toString('hex')}`);
    if (existed) {
      await fs.rename(folder, aside);
      await fs.rm(aside, { recursive: true, force: true });
    }
    return existed;
  }

  /**
   * Deletes expired snapshots and temp folders no copy in this process is writing; returns the expired ids.
   * `onExpired` sees each expired record after its folder went (to delete what it refers to elsewhere).
   */
  async sweep(onExpired?: (record: Snapshot) => Promise<void>): Promise<string[]> {
    const names = await fs.readdir(this.dir).catch(() => [] as string[]);
    const removed: string[] = [];
    for (const name of names) {
      if (isTempFile(name)) {
        if (!this.building.has(name) && (await this.abandoned(name))) await fs.rm(path.join(this.dir, name), { recursive: true, force: true });
        continue;
      }
      if (!SNAPSHOT_ID_PATTERN.test(name)) continue;
      const record = await this.read(name);
      if (record && this.expired(record)) {
        await this.remove(name);
        removed.push(name);
        await onExpired?.(record);
      }
    }
    return removed;
  }

  /** The stored manifest, which the archive must match (checked by `verifyArchive`). */
  async manifest(snapshotId: string): Promise<Manifest> {
    const raw = JSON.parse(await fs.readFile(path.join(this.folder(snapshotId), MANIFEST_FILE), 'utf8')) as Record<string, { size: number; sha256: string }>;
    const manifest = Object.create(null) as Manifest;
    for (const [name, entry] of Object.entries(raw)) Object.defineProperty(manifest, name, { value: entry, enumerable: true, writable: true, configurable: true });
    return manifest;
  }

  archivePath(snapshotId: string): string {
    return path.join(this.folder(snapshotId), ARCHIVE_FILE);
  }

  /**
   * Reads the archive through and compares it with the stored manifest: a damaged or altered archive is
   * refused (STATE_ERROR naming the files) before anything is written into a workspace.
   */
  async verifyArchive(snapshot: Snapshot, maxBytes: number): Promise<Manifest> {
    const expected = await this.manifest(snapshot.id);
    let actual: Manifest;
    try {
      actual = await manifestOf(openSpooled({ file: this.archivePath(snapshot.id) }), { maxBytes, what: `the archive of snapshot ${snapshot.id}` });
    } catch (err) {
      throw new SwarmError('STATE_ERROR', `snapshot ${snapshot.id} is damaged: its archive cannot be read (${(err as Error).message}); nothing was changed`, { cause: err });
    }
    const problems = [...manifestDifferences(expected, actual), ...extraFiles(expected, actual)];
    if (problems.length) throw new SwarmError('STATE_ERROR', `snapshot ${snapshot.id} is damaged: its archive does not match its manifest: ${summarize(problems)}; nothing was changed`, { details: { files: problems.slice(0, 20) } });
    return expected;
  }

  expiresAt(createdAtMs: number, retentionDays: number): string {
    return new Date(createdAtMs + retentionDays * 86_400_000).toISOString();
  }

  private expired(record: Snapshot): boolean {
    return Date.parse(record.expiresAt) <= this.now();
  }

  private folder(snapshotId: string): string {
    return path.join(this.dir, snapshotId);
  }

  private async read(snapshotId: string): Promise<Snapshot | undefined> {
    try {
      return SnapshotSchema.parse(JSON.parse(await fs.readFile(path.join(this.folder(snapshotId), RECORD_FILE), 'utf8')));
    } catch {
      return undefined; // missing or unreadable: not a snapshot anyone can use
    }
  }
}

export function notFound(snapshotId: string): SwarmError {
  return new SwarmError('NOT_FOUND', `snapshot ${snapshotId} does not exist`, { field: 'snapshotId' });
}

/** Files of `actual` that `expected` does not have. */
export function extraFiles(expected: Manifest, actual: Manifest): string[] {
  return Object.keys(actual).filter((name) => !entryOf(expected, name)).map((name) => `${name}: not in the snapshot`);
}

/** The first few problems, and how many more. */
export function summarize(problems: readonly string[], shown = 5): string {
  return `${problems.slice(0, shown).join('; ')}${problems.length > shown ? ` and ${problems.length - shown} more` : ''}`;
}
