/**
 * Snapshots, restore and fork of workspaces, over the providers' workspace transfer (exportWorkspace /
 * importWorkspace) and the SHA-256 manifests of src/migration/workspace-archive.ts.
 *
 * - create: the workspace is exported as a tar and spooled to `<stateDir>/snapshots/<id>/` with its
 *   manifest and record (see snapshot-store.ts), counted against the owner's limits.
 *   Consistency: by default the copy is taken while the instance runs (`live`): every file is read once,
 *   whole, but an editor writing meanwhile may leave files from slightly different moments (no
 *   point-in-time guarantee across files). With `stopForSnapshot` a running instance is stopped, copied
 *   and started again (`stopped`): every file as it was at the stop. It needs a provider that exports a
 *   stopped instance (Docker does; Fly exports through exec, so it must run and a stop is refused there).
 * - restore: the snapshot's archive is first checked against its manifest (a damaged archive is refused
 *   before anything changes), the workspace as it is now is copied aside (a safety archive with its
 *   manifest, in a temp folder of the store), the workspace folder is emptied through the provider's exec
 *   (importWorkspace replaces files of the same name but leaves others), the archive is imported, and the
 *   workspace is exported again and compared: every file byte for byte as in the snapshot and none
 *   besides. When any of that fails part-way, the workspace is filled again from the safety archive and
 *   verified the same way, and the error says it was put back; if even that fails, the safety archive is
 *   kept as a snapshot of its own, named in the error. A stopped instance is started for it and stopped
 *   again after.
 * - fork: a new instance made through controller.createInstance (quotas apply), filled the same way as a
 *   restore and verified; on any failure the new instance is deleted.
 *
 * Provider-native snapshots (capabilities.nativeSnapshots: Fly volume snapshots): create also takes one
 * (inside the stop window with stopForSnapshot) and records it in the snapshot's `native`; failing to take
 * it is logged and leaves the archive snapshot as it is. A fork on the same provider starts from it (a new
 * volume from the snapshot) and is then verified against the manifest like any fork; when the native copy
 * differs (a live snapshot's two copies are taken moments apart) or cannot be used, the fork is filled from
 * the archive instead. Deleting a snapshot, or its expiry, deletes the native one where the provider can;
 * Fly cannot (no such call in the Machines API), so there it goes at its own retention (`native.expiresAt`).
 */
import type { NativeSnapshotRef, ProgressEvent, Provider, ProviderType, VSCodeInstance } from '../../providers/provider.js';
import type { CreateResult, SwarmController } from '../controller/swarm-controller.js';
import { KeyedMutex } from '../controller/keyed-mutex.js';
import { SwarmError, asSwarmError, invalidInput } from '../errors.js';
import { silentLogger, type Logger } from '../logger.js';
import { manifestDifferences, manifestOf, openSpooled, spoolArchive, type Manifest } from '../migration/workspace-archive.js';
import { ownerOf } from '../tenancy/quotas.js';
import { SnapshotStore, extraFiles, summarize, type Snapshot, type SnapshotUsage, type SnapshotsConfig } from './snapshot-store.js';

/** Empties the workspace folder; every provider runs exec in it (Docker's WorkingDir, Fly's `cd`, the AWS agent's). */
const CLEAR_WORKSPACE = 'case "$(pwd)" in /|"") echo "refusing to clear $(pwd)" >&2; exit 3;; esac; rm -rf -- ./* ./.[!.]* ./..?*';

export interface SnapshotManagerOptions {
  controller: SwarmController;
  config: SnapshotsConfig;
  stateDir: string;
  logger?: Logger;
  now?: () => number;
}

export interface CreateSnapshotOptions {
  name?: string;
  /** Stop a running instance for the copy and start it again after (consistent; the editor is down meanwhile). */
  stopForSnapshot?: boolean;
  onProgress?: (event: ProgressEvent) => void;
}

export interface RestoreResult {
  instanceId: string;
  snapshotId: string;
  /** Files verified by SHA-256 after the import. */
  files: number;
  bytes: number;
}

export interface ForkRequest {
  name: string;
  snapshotId: string;
  /** Whose the new instance is. */
  owner: string;
  /** Where it runs; the snapshot's provider when absent. */
  providerType?: ProviderType;
  onProgress?: (event: ProgressEvent) => void;
  signal?: AbortSignal;
}

export interface ForkResult extends CreateResult {
  snapshotId: string;
  files: number;
  /** Where the fork's files came from: the provider's native snapshot, or the archive. Verified by the manifest either way. */
  via: 'native' | 'archive';
}

/** Files to fill a workspace with: an archive on disk and the manifest it must produce. */
interface FillSource {
  archive: string;
  manifest: Manifest;
  /** Names it in messages: "snapshot snap-…", "the copy taken before the restore". */
  what: string;
}

export class SnapshotManager {
  readonly store: SnapshotStore;
  private readonly logger: Logger;
  private readonly now: () => number;
  /** Per instance (one copy in or out at a time) and per owner (the quota check and the commit, together). */
  private readonly locks = new KeyedMutex();

  constructor(private readonly options: SnapshotManagerOptions) {
    this.now = options.now ?? Date.now;
    this.store = new SnapshotStore(options.stateDir, this.now, { ...(options.config.dir ? { dir: options.config.dir } : {}), copyTimeoutMs: options.config.timeoutMs });
    this.logger = (options.logger ?? silentLogger()).child({ component: 'snapshots' });
  }

  get config(): SnapshotsConfig {
    return this.options.config;
  }

  /** Removes expired snapshots and leftovers of interrupted copies; runs at start and on every list and create. */
  async sweep(): Promise<string[]> {
    const removed = await this.store.sweep((record) => this.dropNative(record));
    if (removed.length) this.logger.info({ snapshots: removed }, 'expired snapshots deleted');
    return removed;
  }

  /** Takes a snapshot of the instance, owned by the instance's owner. */
  async create(instanceId: string, options: CreateSnapshotOptions = {}): Promise<Snapshot> {
    const { controller } = this.options;
    const report = options.onProgress ?? (() => undefined);
    if (options.name !== undefined && !/^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$/.test(options.name)) {
      throw invalidInput('name', '1-63 characters of letters, digits, "_", "." and "-", starting with a letter or digit', options.name);
    }
    await this.sweep();
    return this.locks.run(`instance:${instanceId}`, async () => {
      const instance = controller.registry.require(instanceId);
      usable(instance);
      const owner = ownerOf(instance);
      this.checkRoom(owner, await this.store.list(), 0);
      const provider = await this.transferProvider(instance.providerType);
      const stop = options.stopForSnapshot === true && instance.status === 'running';
      if (instance.status !== 'running' && instance.status !== 'stopped') throw new SwarmError('CONFLICT', `instance ${instanceId} is ${instance.status}; a snapshot needs it running or stopped`);
      const id = this.store.newId();
      const building = await this.store.begin(id);
      let native: NativeSnapshotRef | undefined;
      try {
        if (stop) {
          report({ fraction: 0.05, message: `stopping ${instanceId} for a consistent copy` });
          await controller.stopInstance(instanceId, { reason: `stopped for snapshot ${id}` });
        }
        let spooled;
        try {
          report({ fraction: 0.1, message: `copying the workspace of ${instanceId}` });
          spooled = await spoolArchive(await provider.exportWorkspace!(instanceId), building.archive, this.limits(`the workspace of ${instanceId}`));
          native = await this.takeNative(provider, instanceId, report);
        } finally {
          if (stop) {
            report({ fraction: 0.85, message: `starting ${instanceId} again` });
            await controller.startInstance(instanceId);
          }
        }
        const createdAt = this.now();
        const record: Snapshot = {
          id, instanceId, instanceName: instance.name, owner,
          ...(options.name ? { name: options.name } : {}),
          createdAt: new Date(createdAt).toISOString(),
          expiresAt: this.store.expiresAt(createdAt, this.config.retentionDays),
          bytes: spooled.bytes,
          files: Object.keys(spooled.manifest).length,
          sourceProvider: instance.providerType,
          image: instance.config.image,
          resources: instance.config.resources,
          consistency: stop || instance.status === 'stopped' ? 'stopped' : 'live',
          ...(native ? { native } : {}),
        };
        // The quota is checked again with the size known, together with the commit: two creates at once cannot both take the last room.
        await this.locks.run(`owner:${owner}`, async () => {
          this.checkRoom(owner, await this.store.list(), spooled.bytes);
          await building.commit(record, spooled.manifest);
        });
        report({ fraction: 1, message: `snapshot ${id}: ${record.files} files, ${record.bytes} bytes${native ? `, with ${instance.providerType} snapshot ${native.id}` : ''}` });
        this.logger.info({ snapshotId: id, instanceId, files: record.files, bytes: record.bytes, consistency: record.consistency, native: native?.id }, 'snapshot taken');
        await controller.recordSystemEvent('snapshots', 'snapshot.taken', { subject: instanceId, reason: `${id}: ${record.files} files, ${record.bytes} bytes (${record.consistency})` });
        return record;
      } catch (err) {
        await building.discard().catch(() => undefined);
        if (native) await this.dropNative({ id, instanceId, native }).catch(() => undefined);
        throw err;
      }
    });
  }

  /** Snapshots not expired, oldest first (the sweep runs first). */
  async list(filter: { owner?: string; instanceId?: string } = {}): Promise<Snapshot[]> {
    await this.sweep();
    return (await this.store.list()).filter((s) => (filter.owner === undefined || s.owner === filter.owner) && (filter.instanceId === undefined || s.instanceId === filter.instanceId));
  }

  get(snapshotId: string): Promise<Snapshot> {
    return this.store.get(snapshotId);
  }

  async delete(snapshotId: string): Promise<Snapshot> {
    const snapshot = await this.store.get(snapshotId);
    await this.store.remove(snapshotId);
    this.logger.info({ snapshotId }, 'snapshot deleted');
    await this.dropNative(snapshot);
    return snapshot;
  }

  usageOf(owner: string): Promise<SnapshotUsage> {
    return this.store.list().then((all) => this.store.usageOf(owner, all));
  }

  /** Brings the instance's workspace back to the snapshot, verified file by file. */
  async restore(instanceId: string, snapshotId: string, options: { onProgress?: (event: ProgressEvent) => void } = {}): Promise<RestoreResult> {
    const { controller } = this.options;
    const report = options.onProgress ?? (() => undefined);
    const snapshot = await this.store.get(snapshotId);
    return this.locks.run(`instance:${instanceId}`, async () => {
      const instance = controller.registry.require(instanceId);
      usable(instance);
      if (instance.status !== 'running' && instance.status !== 'stopped') throw new SwarmError('CONFLICT', `instance ${instanceId} is ${instance.status}; a restore needs it running or stopped`);
      const provider = await this.transferProvider(instance.providerType, true);
      report({ fraction: 0.05, message: `checking snapshot ${snapshotId}` });
      const manifest = await this.store.verifyArchive(snapshot, this.config.maxBytesPerSnapshot);
      const wasStopped = instance.status === 'stopped';
      if (wasStopped) {
        report({ fraction: 0.15, message: `starting ${instanceId} (emptying its folder needs it running)` });
        await controller.startInstance(instanceId);
      }
      try {
        await this.restoreWithRollback(provider, instance, snapshot, manifest, (e) => report({ fraction: 0.2 + e.fraction * 0.75, message: e.message }));
      } finally {
        if (wasStopped) await controller.stopInstance(instanceId, { reason: `stopped again after restoring snapshot ${snapshotId}` }).catch((err: unknown) => this.logger.warn({ instanceId, err: (err as Error).message }, 'could not stop the instance again after a restore'));
      }
      report({ fraction: 1, message: `restored ${snapshot.files} files` });
      this.logger.info({ instanceId, snapshotId, files: snapshot.files }, 'snapshot restored');
      return { instanceId, snapshotId, files: snapshot.files, bytes: snapshot.bytes };
    });
  }

  /** A new instance with the snapshot's files; nothing is left behind when any step fails. */
  async fork(request: ForkRequest): Promise<ForkResult> {
    const { controller } = this.options;
    const report = request.onProgress ?? (() => undefined);
    const snapshot = await this.store.get(request.snapshotId);
    const type = request.providerType ?? snapshot.sourceProvider;
    const provider = await this.transferProvider(type, true);
    report({ fraction: 0.02, message: `checking snapshot ${snapshot.id}` });
    const manifest = await this.store.verifyArchive(snapshot, this.config.maxBytesPerSnapshot);
    const taken = controller.registry.list().find((i) => i.name === request.name && !i.warmPool && i.status !== 'deleting' && ownerOf(i) === request.owner);
    if (taken) throw new SwarmError('CONFLICT', `name: ${request.owner} already has a workspace named ${request.name} (${taken.id}); a fork needs a new name`, { field: 'name' });
    const sameProvider = type === snapshot.sourceProvider;
    const created = await controller.createInstance(
      {
        name: request.name,
        providerType: type,
        owner: request.owner,
        // The image and size of the source go with it on the same provider; another provider uses its own defaults.
        ...(sameProvider ? { image: snapshot.image, resources: snapshot.resources } : {}),
      },
      { onProgress: (e) => report({ fraction: 0.05 + e.fraction * 0.45, message: e.message }), ...(request.signal ? { signal: request.signal } : {}) },
    );
    if (!created.created) throw new SwarmError('CONFLICT', `name: ${request.owner} already has a workspace named ${request.name} (${created.instance.id}); a fork needs a new name`, { field: 'name' });
    const id = created.instance.id;
    const source = this.archiveOf(snapshot, manifest);
    // Not one the provider has dropped by now (Fly keeps them for days, the archive may be kept longer).
    const live = snapshot.native && (!snapshot.native.expiresAt || Date.parse(snapshot.native.expiresAt) > this.now());
    const native = sameProvider && live && provider.getCapabilities().nativeSnapshots && provider.restoreNativeSnapshot ? snapshot.native : undefined;
    let via: ForkResult['via'] = 'archive';
    try {
      await this.locks.run(`instance:${id}`, async () => {
        const fillReport = (e: ProgressEvent): void => report({ fraction: 0.5 + e.fraction * 0.5, message: e.message });
        if (native && (await this.fromNative(provider, id, snapshot, native, manifest, fillReport))) via = 'native';
        else await this.fill(provider, id, source, fillReport);
      });
    } catch (err) {
      await controller.deleteInstance(id).catch((cleanup: unknown) => this.logger.error({ instanceId: id, err: (cleanup as Error).message }, 'could not delete a failed fork; reconcile will retry'));
      throw asSwarmError(err, 'PROVIDER_ERROR');
    }
    this.logger.info({ instanceId: id, snapshotId: snapshot.id, provider: type, via }, 'instance forked from a snapshot');
    return { ...created, instance: await controller.getInstance(id), snapshotId: snapshot.id, files: snapshot.files, via };
  }

  // ---- internals ----

  /** Empties the workspace, imports the archive, exports again and compares: every file, and nothing else. */
  private async fill(provider: Provider, instanceId: string, source: FillSource, report: (event: ProgressEvent) => void): Promise<void> {
    report({ fraction: 0, message: `emptying the workspace of ${instanceId}` });
    const cleared = await provider.executeCommand(instanceId, CLEAR_WORKSPACE, { timeoutMs: this.config.timeoutMs, maxOutputBytes: 4_096 });
    if (cleared.exitCode !== 0) {
      throw new SwarmError('PROVIDER_ERROR', `could not empty the workspace of ${instanceId} before the import (exit ${cleared.exitCode}${cleared.timedOut ? ', timed out' : ''}): ${cleared.stderr.trim().slice(0, 300)}`);
    }
    report({ fraction: 0.2, message: `importing ${Object.keys(source.manifest).length} files` });
    await provider.importWorkspace!(instanceId, openSpooled({ file: source.archive }));
    report({ fraction: 0.7, message: 'verifying every file by SHA-256' });
    await this.verify(provider, instanceId, source, 'after the import');
  }

  /** Exports the workspace and compares it with the manifest: PROVIDER_ERROR naming the files that differ. */
  private async verify(provider: Provider, instanceId: string, source: Pick<FillSource, 'manifest' | 'what'>, when: string): Promise<void> {
    const problems = await this.differences(provider, instanceId, source.manifest);
    if (problems.length) {
      throw new SwarmError('PROVIDER_ERROR', `the workspace of ${instanceId} does not match ${source.what} ${when}: ${summarize(problems)}`, { details: { files: problems.slice(0, 20) } });
    }
  }

  private async differences(provider: Provider, instanceId: string, manifest: Manifest): Promise<string[]> {
    const actual = await manifestOf(await provider.exportWorkspace!(instanceId), this.limits(`the workspace of ${instanceId}`));
    return [...manifestDifferences(manifest, actual), ...extraFiles(manifest, actual)];
  }

  private archiveOf(snapshot: Snapshot, manifest: Manifest): FillSource {
    return { archive: this.store.archivePath(snapshot.id), manifest, what: `snapshot ${snapshot.id}` };
  }

  /**
   * Restores with a way back: the workspace as it is is copied aside first; when the fill fails part-way
   * the copy is put back (and verified), and the error says so. If putting it back fails too, the copy is
   * kept as a snapshot of its own and the error names it.
   */
  private async restoreWithRollback(provider: Provider, instance: Readonly<VSCodeInstance>, snapshot: Snapshot, manifest: Manifest, report: (event: ProgressEvent) => void): Promise<void> {
    const instanceId = instance.id;
    const safetyId = this.store.newId();
    const safety = await this.store.begin(safetyId);
    try {
      report({ fraction: 0, message: `copying the workspace of ${instanceId} aside, to put it back if the restore fails` });
      const before = await spoolArchive(await provider.exportWorkspace!(instanceId), safety.archive, this.limits(`the workspace of ${instanceId}`));
      try {
        await this.fill(provider, instanceId, this.archiveOf(snapshot, manifest), (e) => report({ fraction: 0.3 + e.fraction * 0.7, message: e.message }));
      } catch (err) {
        const failure = asSwarmError(err, 'PROVIDER_ERROR');
        const reason = `restoring snapshot ${snapshot.id} into ${instanceId} failed: ${failure.message}`;
        this.logger.warn({ instanceId, snapshotId: snapshot.id, err: failure.message }, 'restore failed; putting the workspace back');
        report({ fraction: 0.9, message: `the restore failed; putting the workspace of ${instanceId} back as it was` });
        const files = Object.keys(before.manifest).length;
        try {
          await this.fill(provider, instanceId, { archive: safety.archive, manifest: before.manifest, what: 'the copy taken before the restore' }, () => undefined);
        } catch (rollbackErr) {
          const kept = await this.keepSafety(instance, safetyId, safety, before).catch(() => undefined);
          throw new SwarmError(failure.code, `${reason}; putting the workspace back failed too (${(rollbackErr as Error).message})${kept ? `; its files as they were before the restore are kept as snapshot ${kept}` : ''}`, { cause: err, ...(failure.details ? { details: failure.details } : {}) });
        }
        this.logger.info({ instanceId, snapshotId: snapshot.id, files }, 'workspace put back after a failed restore');
        throw new SwarmError(failure.code, `${reason}; the workspace was put back as it was before the restore (${files} files verified by SHA-256)`, { cause: err, ...(failure.details ? { details: failure.details } : {}) });
      }
    } finally {
      await safety.discard().catch(() => undefined);
    }
  }

  /** The safety copy of a restore that could not be undone, kept as a snapshot (outside the quota: it is the owner's files) so nothing is lost. */
  private async keepSafety(instance: Readonly<VSCodeInstance>, id: string, safety: Awaited<ReturnType<SnapshotStore['begin']>>, before: { bytes: number; manifest: Manifest }): Promise<string> {
    const createdAt = this.now();
    await safety.commit({
      id, instanceId: instance.id, instanceName: instance.name, owner: ownerOf(instance), name: 'before-failed-restore',
      createdAt: new Date(createdAt).toISOString(), expiresAt: this.store.expiresAt(createdAt, this.config.retentionDays),
      bytes: before.bytes, files: Object.keys(before.manifest).length, sourceProvider: instance.providerType,
      image: instance.config.image, resources: instance.config.resources, consistency: 'live',
    }, before.manifest);
    return id;
  }

  /** Takes the provider's own snapshot too, where it has them; a failure is logged and leaves the archive snapshot without one. */
  private async takeNative(provider: Provider, instanceId: string, report: (event: ProgressEvent) => void): Promise<NativeSnapshotRef | undefined> {
    if (!provider.getCapabilities().nativeSnapshots || !provider.takeNativeSnapshot) return undefined;
    report({ fraction: 0.6, message: `taking a ${provider.type} snapshot of ${instanceId}` });
    try {
      return await provider.takeNativeSnapshot(instanceId);
    } catch (err) {
      this.logger.warn({ instanceId, provider: provider.type, err: (err as Error).message }, 'native snapshot failed; the snapshot has the archive only');
      return undefined;
    }
  }

  /**
   * Fills a fork from the native snapshot and verifies it by the manifest: true when it matched (the old,
   * empty workspace is then deleted), false when the caller should fill from the archive instead.
   */
  private async fromNative(provider: Provider, instanceId: string, snapshot: Snapshot, native: NativeSnapshotRef, manifest: Manifest, report: (event: ProgressEvent) => void): Promise<boolean> {
    report({ fraction: 0, message: `making the workspace of ${instanceId} from ${provider.type} snapshot ${native.id}` });
    let restored;
    try {
      restored = await provider.restoreNativeSnapshot!(instanceId, native);
    } catch (err) {
      this.logger.warn({ instanceId, snapshotId: snapshot.id, native: native.id, err: (err as Error).message }, 'native snapshot not usable; filling from the archive');
      return false;
    }
    report({ fraction: 0.6, message: 'verifying every file by SHA-256' });
    const problems = await this.differences(provider, instanceId, manifest).catch((err: unknown) => [`cannot be read: ${(err as Error).message}`]);
    // Either way the native volume stays: on a mismatch the archive is imported over it (CLEAR_WORKSPACE empties it first).
    await restored.commit().catch((err: unknown) => this.logger.warn({ instanceId, volume: restored.previousVolumeId, err: (err as Error).message }, 'could not delete the workspace replaced by the native snapshot'));
    if (problems.length) {
      this.logger.info({ instanceId, snapshotId: snapshot.id, native: native.id, problems: problems.slice(0, 5) }, 'native snapshot differs from the archive; filling from the archive');
      return false;
    }
    report({ fraction: 1, message: `${snapshot.files} files verified` });
    return true;
  }

  /** Deletes a snapshot's native copy where the provider can; otherwise says when it goes by itself. */
  private async dropNative(snapshot: Pick<Snapshot, 'id' | 'instanceId' | 'native'>): Promise<void> {
    const native = snapshot.native;
    if (!native) return;
    try {
      const provider = await this.options.controller.connectedProvider(native.provider);
      if (provider.deleteNativeSnapshot) {
        await provider.deleteNativeSnapshot(native);
        this.logger.info({ snapshotId: snapshot.id, native: native.id }, 'native snapshot deleted');
      } else {
        this.logger.info({ snapshotId: snapshot.id, native: native.id, expiresAt: native.expiresAt }, `${native.provider} cannot delete its snapshots; it drops this one at the end of its own retention`);
      }
    } catch (err) {
      this.logger.warn({ snapshotId: snapshot.id, native: native.id, err: (err as Error).message }, 'could not delete the native snapshot');
    }
  }

  /** The provider of this type, connected, refusing one that cannot carry workspace files (CONFLICT naming it). */
  private async transferProvider(type: ProviderType, needsExec = false): Promise<Provider> {
    const provider = await this.options.controller.connectedProvider(type);
    const caps = provider.getCapabilities();
    if (!caps.workspaceTransfer || !provider.exportWorkspace || !provider.importWorkspace) {
      throw new SwarmError('CONFLICT', `provider ${type} cannot export or import workspace files (capability workspaceTransfer), so it can take no snapshot and receive none`);
    }
    if (needsExec && !caps.exec) throw new SwarmError('CONFLICT', `provider ${type} has no exec, which a restore or fork needs to empty the workspace folder first`);
    return provider;
  }

  /** QUOTA_EXCEEDED naming the limit, the usage and the request, like tenancy/quotas.ts; `bytes` is 0 before the size is known. */
  private checkRoom(owner: string, all: readonly Snapshot[], bytes: number): void {
    const usage = this.store.usageOf(owner, all);
    const refuse = (quota: string, limit: number, used: number, requested: number, unit: string, first = unit): never => {
      throw new SwarmError('QUOTA_EXCEEDED', `snapshots.${quota}: ${owner} may hold ${limit}${first}, holds ${used}${unit} and asked for ${requested}${unit} more`, {
        details: { quota: `snapshots.${quota}`, limit, usage: used, requested, owner },
      });
    };
    const { maxPerPrincipal, maxBytesPerPrincipal } = this.config;
    if (usage.count + 1 > maxPerPrincipal) refuse('maxPerPrincipal', maxPerPrincipal, usage.count, 1, '', ' snapshots');
    if (usage.bytes + bytes > maxBytesPerPrincipal) refuse('maxBytesPerPrincipal', maxBytesPerPrincipal, usage.bytes, bytes, ' bytes');
  }

  private limits(what: string): { maxBytes: number; deadline: number; what: string } {
    return { maxBytes: this.config.maxBytesPerSnapshot, deadline: this.now() + this.config.timeoutMs, what };
  }
}

function usable(instance: Readonly<VSCodeInstance>): void {
  if (instance.warmPool) throw new SwarmError('CONFLICT', `instance ${instance.id} is an unassigned warm-buffer member`);
}

const managers = new WeakMap<SwarmController, SnapshotManager>();

/**
 * The one manager of a controller (its locks must be shared by every door), made on first use from the
 * controller's configuration: no door has to be wired up for it.
 */
export function snapshotManagerFor(controller: SwarmController, logger?: Logger): SnapshotManager {
  let manager = managers.get(controller);
  if (!manager) {
    manager = new SnapshotManager({ controller, config: controller.config.snapshots, stateDir: controller.config.stateDir, logger: logger ?? controller.logger });
    managers.set(controller, manager);
  }
  return manager;
}
