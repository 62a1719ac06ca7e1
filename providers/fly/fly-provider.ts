/**
 * The Fly.io provider: one Fly app for the swarm, one Machine per instance running the editor image,
 * a Fly volume per instance mounted at the workspace, all through the Machines API.
 *
 * Like the Docker provider it keeps no state of its own: every call finds the Machine by its metadata
 * (`vscode_swarm_instance=<id>`) and reports what the API says. State changes are awaited with the
 * API's /wait endpoint (re-waiting on its 408 until our own deadline), not by polling; readiness is the
 * editor answering 200 on /healthz.
 *
 * Reaching editors: an instance's endpoint is the Machine's `private_ip` (its 6PN IPv6 address) on
 * port 8080, or its `<id>.vm.<app>.internal` name. Both route only inside the organisation's private
 * network, so the controller (and its gateway) must run there: on a Fly Machine in the same
 * organisation, or on a host with a WireGuard peer (`fly wireguard create`). The app gets no public IP
 * from this provider and must never be given one: the editor runs with `--auth none` behind the
 * gateway.
 *
 * Native snapshots: a workspace volume can be snapshotted on demand (POST .../volumes/{id}/snapshots,
 * which answers without the snapshot: it is the new entry in the volume's list) and a new volume made from
 * a snapshot (`snapshot_id` on create). A restore from one makes that new volume, remounts the Machine on
 * it and keeps the old volume until the caller commits or rolls back. The Machines API has no call that
 * deletes a snapshot: Fly drops it after the volume's `snapshot_retention` days.
 */
import { randomBytes } from 'node:crypto';
import { Readable } from 'node:stream';
import { setTimeout as sleep } from 'node:timers/promises';
import { SwarmError, asSwarmError } from '../../src/errors.js';
import { silentLogger, type Logger } from '../../src/logger.js';
import { httpStatus } from '../../src/timing/http-probe.js';
import { waitUntil } from '../../src/timing/wait-until.js';
import type {
  CommandResult,
  CreateOptions,
  DeleteOptions,
  ExecOptions,
  InstanceConfig,
  InstanceConfigPatch,
  InstanceFilter,
  InstanceLogs,
  NativeRestore,
  NativeSnapshotRef,
  Provider,
  ProviderCapabilities,
  ProgressEvent,
  StartOptions,
  UpdateMode,
  UpdateOptions,
  VSCodeInstance,
} from '../provider.js';
import { applyInstanceFilter } from '../provider.js';
import { DEFAULT_API_URL, FlyApi, httpStatusOf, type FlyVolume, type FlyVolumeSnapshot, type RetryOptions } from './fly-api.js';
import {
  EDITOR_PORT,
  FLY_ACTIVE_STATES,
  FLY_GONE_STATES,
  FLY_RESOURCE_LIMITS,
  META_CPU,
  META_CREATED,
  META_INSTANCE,
  META_MANAGED,
  META_NAME,
  META_SWARM,
  META_USER,
  WORKSPACE_PATH,
  guestFor,
  instanceFromMachine,
  machineName,
  type EditorAddress,
  type FlyMachine,
  volumeName,
} from './fly-mapping.js';

export interface FlyProviderOptions {
  /** The Machines API token; FLY_API_TOKEN from `env` when absent. */
  apiToken?: string;
  /** Where FLY_API_TOKEN is read from; process.env when absent. */
  env?: NodeJS.ProcessEnv;
  /** The Machines API; https://api.machines.dev by default (http://_api.internal:4280 inside the private network). */
  apiUrl?: string;
  /** Only passed to fly-admin; this provider makes no GraphQL calls. */
  graphqlUrl?: string;
  /** The one Fly app that holds the swarm's Machines and volumes; created on initialize when missing. */
  app: string;
  /** Organisation slug for creating the app; default "personal". */
  org?: string;
  /** Region for new Machines and volumes (an instance's `region` overrides it); default "iad". */
  region?: string;
  /** Regions offered to callers (capabilities); default [region]. */
  regions?: string[];
  /**
   * The swarm this provider serves (config.swarmId): recorded in each Machine's metadata and part of each
   * volume's name, so controllers of other swarms sharing the app never see or touch its instances.
   */
  swarmId?: string;
  /** Create the app when it does not exist; default true. */
  createApp?: boolean;
  /** The editor image used when a config names none; must be pullable by Fly (e.g. codercom/code-server:4.99.3). */
  defaultImage: string;
  /** Arguments after the image's entrypoint (the code-server entrypoint already binds 0.0.0.0:8080). */
  editorArgs?: string[];
  /** How the controller reaches an editor; see the file comment. Default `private-ip`, port 8080. */
  editorAddress?: 'private-ip' | 'internal-dns';
  editorPort?: number;
  /** HTTP path polled until the editor answers 200; null to consider a started Machine ready. */
  readinessPath?: string | null;
  readinessTimeoutMs?: number;
  /** Grace period for SIGTERM before Fly kills the Machine on stop. */
  stopTimeoutSeconds?: number;
  /** Size of each new workspace volume. */
  volumeSizeGb?: number;
  /** How long a native snapshot may take to show up in its volume's list, and to become usable for a restore; default 10 minutes. */
  nativeSnapshotTimeoutMs?: number;
  /** Backoff on 429/5xx; defaults suit the real API. */
  retry?: RetryOptions;
  logger?: Logger;
}

const DEFAULT_EDITOR_ARGS = ['--auth', 'none', '--disable-telemetry', '--disable-update-check', WORKSPACE_PATH];
const DEFAULT_EXEC_TIMEOUT_MS = 30_000;
/** Bytes of archive read back per exec (base64 in the answer). */
const TRANSFER_READ_CHUNK = 512 * 1024;
/** Bytes of archive written per exec: base64 of it must fit one argument (Linux caps one at 128 KiB). */
const TRANSFER_WRITE_CHUNK = 90 * 1024;
const DEFAULT_EXEC_MAX_OUTPUT = 1024 * 1024;
/** How long one /wait call may block before the provider looks at the Machine again (it may have failed). */
const WAIT_SLICE_SECONDS = 15;
/** After this long without an answer, readiness also checks the Machine is still up (at most once per interval). */
const READINESS_STATE_CHECK_MS = 2_000;

export class FlyProvider implements Provider {
  readonly type = 'fly' as const;
  private api: FlyApi | undefined;
  private readonly logger: Logger;
  private readonly address: EditorAddress;
  private readonly region: string;
  private capabilities: ProviderCapabilities;

  constructor(private readonly options: FlyProviderOptions) {
    this.logger = (options.logger ?? silentLogger()).child({ component: 'fly-provider' });
    this.region = options.region ?? 'iad';
    this.address = { mode: options.editorAddress ?? 'private-ip', port: options.editorPort ?? EDITOR_PORT, app: options.app };
    this.capabilities = {
      // Every config change (guest included) makes a new Machine version and restarts it.
      liveResize: false,
      // Volume snapshots, taken on demand and restored into a new volume (see the file comment).
      snapshots: true,
      nativeSnapshots: true,
      workspaceTransfer: true,
      persistentWorkspace: true,
      maxWorkspaceMb: (options.volumeSizeGb ?? 1) * 1024,
      // The Machines API has no log endpoint (logs flow through Fly's NATS/log shipper, not this API).
      logs: false,
      exec: true,
      // No usage endpoint in the Machines API (metrics go to Fly's Prometheus, outside it).
      stats: false,
      regions: options.regions ?? [this.region],
      resourceLimits: { ...FLY_RESOURCE_LIMITS },
    };
  }

  getCapabilities(): ProviderCapabilities {
    return structuredClone(this.capabilities);
  }

  async initialize(): Promise<void> {
    const token = this.options.apiToken ?? (this.options.env ?? process.env).FLY_API_TOKEN;
    if (!token) {
      throw new SwarmError('PROVIDER_UNAVAILABLE', 'fly: no API token; set FLY_API_TOKEN (or providers.fly.apiToken), e.g. from `fly tokens create org`');
    }
    if (!this.options.app) throw new SwarmError('PROVIDER_UNAVAILABLE', 'fly: no app name; set providers.fly.app');
    const apiUrl = this.options.apiUrl ?? DEFAULT_API_URL;
    const api = new FlyApi({
      token,
      apiUrl,
      ...(this.options.graphqlUrl ? { graphqlUrl: this.options.graphqlUrl } : {}),
      app: this.options.app,
      logger: this.logger,
      ...(this.options.retry ? { retry: this.options.retry } : {}),
    });
    let app = await api.getApp();
    if (!app) {
      if (this.options.createApp === false) {
        throw new SwarmError('PROVIDER_UNAVAILABLE', `fly: app "${this.options.app}" does not exist and providers.fly.createApp is false; create it with \`fly apps create ${this.options.app}\``);
      }
      const org = this.options.org ?? 'personal';
      try {
        await api.createApp(org);
        this.logger.info({ app: this.options.app, org }, 'created the fly app');
      } catch (err) {
        // Made meanwhile by another controller (fine), or the name belongs to someone else (not fine).
        app = await api.getApp();
        if (!app) {
          throw new SwarmError('PROVIDER_UNAVAILABLE', `fly: cannot create app "${this.options.app}" in organisation "${org}": ${(err as Error).message}; pick another providers.fly.app`, { cause: err });
        }
      }
    }
    this.api = api;
    this.logger.info({ apiUrl, app: this.options.app, region: this.region }, 'fly machines api reachable');
  }

  async ping(): Promise<void> {
    let app: Awaited<ReturnType<FlyApi['getApp']>>;
    try {
      app = await this.requireApi().getApp();
    } catch (err) {
      throw new SwarmError('PROVIDER_UNAVAILABLE', `fly: the Machines API does not answer: ${(err as Error).message}`, { cause: err });
    }
    if (!app) throw new SwarmError('PROVIDER_UNAVAILABLE', `fly: app "${this.options.app}" no longer exists`);
  }

  async createInstance(config: InstanceConfig & { image: string }, options: CreateOptions): Promise<VSCodeInstance> {
    const api = this.requireApi();
    const { instanceId, signal } = options;
    const progress = options.onProgress ?? (() => undefined);
    const guest = guestFor(config.resources); // refuse what Fly cannot give before touching anything

    progress({ fraction: 0.05, message: 'looking for an existing machine' });
    const existing = await this.findMachine(instanceId);
    if (existing) {
      this.logger.info({ instanceId, machineId: existing.id, state: existing.state }, 'machine exists; returning it');
      return this.startAndAwait(existing, progress, 0.1, signal);
    }

    signal?.throwIfAborted();
    progress({ fraction: 0.15, message: 'preparing workspace volume' });
    const { volume, created: volumeCreated } = await this.ensureVolume(instanceId, config.region ?? this.region);

    let machine: FlyMachine | undefined;
    let ambiguous = false; // the create call failed in a way that may have made the Machine anyway
    try {
      signal?.throwIfAborted();
      progress({ fraction: 0.3, message: `creating machine in ${volume.region ?? config.region ?? this.region}` });
      ambiguous = true;
      machine = await api.createMachine({
        name: machineName(instanceId),
        // A volume lives in one region; the Machine must be where its volume is.
        region: volume.region ?? config.region ?? this.region,
        config: this.machineConfig(instanceId, config, guest, volume.id, new Date().toISOString()),
      });
      this.logger.info({ instanceId, machineId: machine.id, volume: volume.id }, 'machine created');
      return await this.awaitStarted(machine, progress, 0.45, signal);
    } catch (err) {
      // Leave nothing behind: a failed create removes what this call made. When the create call itself
      // failed with a 5xx or a dropped connection, Fly may have made the Machine all the same.
      const status = httpStatusOf(err);
      const made = machine ?? (ambiguous && (status === undefined || status >= 500) ? await this.findMachine(instanceId).catch(() => undefined) : undefined);
      if (made) await this.destroyMachine(made, true).catch((e) => this.logger.warn({ instanceId, err: (e as Error).message }, 'clean-up: could not destroy machine'));
      if (volumeCreated) await this.deleteVolumeSoon(volume.id).catch((e) => this.logger.warn({ instanceId, err: (e as Error).message }, 'clean-up: could not destroy volume'));
      throw asSwarmError(err, 'PROVIDER_ERROR', `fly: create ${instanceId}`);
    }
  }

  async getInstance(instanceId: string): Promise<VSCodeInstance | null> {
    const machine = await this.findMachine(instanceId);
    return machine ? instanceFromMachine(machine, this.address) : null;
  }

  async listInstances(filter: InstanceFilter = {}): Promise<VSCodeInstance[]> {
    const machines = await this.requireApi().listMachines(this.ownedBy({ [META_MANAGED]: 'true' }));
    const byId = new Map<string, VSCodeInstance>();
    for (const machine of machines) {
      if (FLY_GONE_STATES.has(machine.state)) continue;
      const instance = instanceFromMachine(machine, this.address);
      if (!instance) continue;
      const seen = byId.get(instance.id);
      if (!seen || (seen.status !== 'running' && instance.status === 'running')) byId.set(instance.id, instance);
    }
    return applyInstanceFilter([...byId.values()], filter);
  }

  async startInstance(instanceId: string, options: StartOptions = {}): Promise<VSCodeInstance> {
    const machine = await this.requireMachine(instanceId);
    return this.startAndAwait(machine, options.onProgress ?? (() => undefined), 0.1, options.signal);
  }

  async stopInstance(instanceId: string, force = false): Promise<VSCodeInstance> {
    const machine = await this.requireMachine(instanceId);
    const stopped = await this.stopMachine(machine, force);
    return this.view(stopped);
  }

  async deleteInstance(instanceId: string, options: DeleteOptions = {}): Promise<boolean> {
    let removed = false;
    const machine = await this.findMachine(instanceId);
    if (machine) {
      await this.destroyMachine(machine, false);
      removed = true;
      this.logger.info({ instanceId, machineId: machine.id }, 'machine destroyed');
    }
    if (!options.keepWorkspace) {
      const volume = await this.findVolume(instanceId);
      if (volume) {
        await this.deleteVolumeSoon(volume.id);
        removed = true;
        this.logger.info({ instanceId, volume: volume.id }, 'volume destroyed');
      }
    }
    return removed;
  }

  async updateInstance(
    instanceId: string,
    patch: InstanceConfigPatch,
    options: UpdateOptions = {},
  ): Promise<VSCodeInstance & { updateMode: UpdateMode }> {
    const api = this.requireApi();
    const progress = options.onProgress ?? (() => undefined);
    const machine = await this.requireMachine(instanceId);
    const current = this.view(machine);
    const resources = { ...current.config.resources, ...patch.resources };
    const guest = guestFor(resources);
    const image = patch.image ?? current.config.image;
    const env = patch.env ?? current.config.env ?? {};
    const changed =
      image !== current.config.image ||
      JSON.stringify(env) !== JSON.stringify(current.config.env ?? {}) ||
      resources.cpu !== current.config.resources.cpu ||
      resources.memoryMb !== current.config.resources.memoryMb;
    // Metadata lives in the registry; the Machine keeps what it was made with until the next real change
    // rather than restarting for it.
    if (!changed) return { ...current, updateMode: 'none' };

    const wasRunning = FLY_ACTIVE_STATES.has(machine.state);
    const volumeId = current.providerRef.volume;
    const next: InstanceConfig & { image: string } = {
      ...current.config,
      image,
      env,
      resources,
      ...(patch.metadata ? { metadata: patch.metadata } : {}),
    };
    progress({ fraction: 0.1, message: `updating machine ${machine.id} (image ${image}, ${guest.cpus} shared vCPU, ${guest.memory_mb} MiB)` });
    const config = {
      ...(machine.config ?? {}),
      ...this.machineConfig(instanceId, next, guest, volumeId, current.createdAt),
    };
    // The whole config goes back; Fly makes a new version and restarts the Machine if it was running.
    const updated = await api.updateMachine(machine.id, config, !wasRunning);
    const updateMode: UpdateMode = updated.instance_id && updated.instance_id === machine.instance_id ? 'live' : 'recreate';
    if (wasRunning) {
      const ready = await this.awaitStarted(updated, progress, 0.4);
      return { ...ready, updateMode };
    }
    await this.waitForState(updated, 'stopped', (this.options.readinessTimeoutMs ?? 90_000));
    progress({ fraction: 1, message: 'updated; applies at the next start' });
    return { ...this.view(await api.getMachine(updated.id)), updateMode };
  }

  async getInstanceLogs(instanceId: string): Promise<InstanceLogs> {
    throw new SwarmError(
      'PROVIDER_ERROR',
      `fly: logs are not supported by the fly provider (the Machines API has no log endpoint); read them with \`fly logs -a ${this.options.app}\` for instance ${instanceId}`,
    );
  }

  async executeCommand(instanceId: string, command: string, options: ExecOptions = {}): Promise<CommandResult> {
    const api = this.requireApi();
    const timeoutMs = options.timeoutMs ?? DEFAULT_EXEC_TIMEOUT_MS;
    const maxOutputBytes = options.maxOutputBytes ?? DEFAULT_EXEC_MAX_OUTPUT;
    const machine = await this.requireMachine(instanceId);
    if (machine.state !== 'started') {
      throw new SwarmError('CONFLICT', `fly: instance ${instanceId} is not running (machine ${machine.id} is ${machine.state}); start it first`);
    }
    // `timeout` inside the Machine ends the process itself; the API's own timeout and the client-side
    // abort are backstops. The exec API has no working directory, so the shell changes into the workspace.
    const seconds = Math.max(1, Math.ceil(timeoutMs / 1000));
    const argv = ['timeout', '-s', 'KILL', String(seconds), 'sh', '-c', `cd ${WORKSPACE_PATH} || exit 125\n${command}`];
    const abort = new AbortController();
    const timer = setTimeout(() => abort.abort(), timeoutMs + 10_000);
    const started = Date.now();
    try {
      const res = await api.exec(machine.id, argv, seconds + 5, abort.signal);
      const exitCode = typeof res.exit_code === 'number' ? res.exit_code : 0;
      const stdout = capBytes(res.stdout ?? '', maxOutputBytes);
      const stderr = capBytes(res.stderr ?? '', maxOutputBytes);
      return {
        exitCode,
        stdout: stdout.text,
        stderr: stderr.text,
        timedOut: exitCode === 137 && Date.now() - started >= seconds * 1000,
        truncated: stdout.truncated || stderr.truncated,
        durationMs: Date.now() - started,
      };
    } catch (err) {
      if (abort.signal.aborted || (err instanceof SwarmError && err.code === 'TIMEOUT')) {
        return { exitCode: null, stdout: '', stderr: '', timedOut: true, truncated: false, durationMs: Date.now() - started };
      }
      throw err;
    } finally {
      clearTimeout(timer);
    }
  }

  /**
   * The Machines API has no file transfer, so workspace files travel through exec: a tar archive made in
   * the Machine and read back in base64 blocks, one block per read of the stream (so memory holds one
   * block, whatever the workspace's size). A stopped Machine is booted for the copy and stopped again
   * when the stream ends or is destroyed.
   */
  async exportWorkspace(instanceId: string): Promise<Readable> {
    const wasStarted = (await this.requireMachine(instanceId)).state === 'started';
    if (!wasStarted) await this.startInstance(instanceId);
    const tmp = `/tmp/vscode-swarm-export-${randomBytes(6).toString('hex')}.tar`;
    const finish = async (): Promise<void> => {
      await this.shell(instanceId, `rm -f ${tmp}`).catch(() => undefined);
      if (!wasStarted) await this.stopInstance(instanceId).catch(() => undefined);
    };
    let size: number;
    try {
      size = Number((await this.shell(instanceId, `tar -C ${WORKSPACE_PATH} -cf ${tmp} . && stat -c %s ${tmp}`)).trim());
    } catch (err) {
      await finish();
      throw err;
    }
    const blocks = async function* (this: FlyProvider): AsyncGenerator<Buffer> {
      let read = 0;
      try {
        for (let block = 0; block * TRANSFER_READ_CHUNK < size; block++) {
          const b64 = await this.shell(instanceId, `dd if=${tmp} bs=${TRANSFER_READ_CHUNK} skip=${block} count=1 status=none | base64 -w0`);
          const chunk = Buffer.from(b64, 'base64');
          read += chunk.length;
          yield chunk;
        }
        if (read !== size) throw new SwarmError('PROVIDER_ERROR', `fly: workspace export of ${instanceId} read ${read} of ${size} bytes`);
      } finally {
        await finish();
      }
    };
    return Readable.from(blocks.call(this), { objectMode: false });
  }

  /** Writes the stream into the Machine as it arrives, in blocks small enough for one command argument, then unpacks it. */
  async importWorkspace(instanceId: string, archive: Readable): Promise<void> {
    await this.withRunningMachine(instanceId, async () => {
      const tmp = `/tmp/vscode-swarm-import-${randomBytes(6).toString('hex')}.tar`;
      const append = (block: Buffer): Promise<string> => this.shell(instanceId, `printf %s '${block.toString('base64')}' | base64 -d >> ${tmp}`);
      try {
        await this.shell(instanceId, `: > ${tmp}`);
        let pending = Buffer.alloc(0);
        for await (const chunk of archive) {
          pending = Buffer.concat([pending, chunk as Buffer]);
          while (pending.length >= TRANSFER_WRITE_CHUNK) {
            await append(pending.subarray(0, TRANSFER_WRITE_CHUNK));
            pending = pending.subarray(TRANSFER_WRITE_CHUNK);
          }
        }
        if (pending.length) await append(pending);
        await this.shell(instanceId, `tar -C ${WORKSPACE_PATH} -xf ${tmp}`);
      } finally {
        archive.destroy();
        await this.shell(instanceId, `rm -f ${tmp}`).catch(() => undefined);
      }
    });
  }

  /** Snapshots the instance's workspace volume and answers the snapshot, which may still be `pending`. */
  async takeNativeSnapshot(instanceId: string): Promise<NativeSnapshotRef> {
    const api = this.requireApi();
    const volumeId = await this.workspaceVolumeId(instanceId);
    const before = new Set((await api.listVolumeSnapshots(volumeId)).map((snap) => snap.id));
    await api.createVolumeSnapshot(volumeId);
    // The create call answers without the snapshot: it is the entry that was not in the list before.
    const taken = await waitUntil(async () => (await api.listVolumeSnapshots(volumeId)).find((snap) => !before.has(snap.id)), {
      timeoutMs: this.nativeTimeoutMs(),
      intervalMs: 250,
      what: `fly: the snapshot of volume ${volumeId} (instance ${instanceId}) in the volume's list`,
    });
    this.logger.info({ instanceId, volume: volumeId, snapshot: taken.id, status: taken.status }, 'volume snapshot taken');
    return nativeRef(taken, volumeId);
  }

  /**
   * Makes a new volume from the snapshot (once it is usable), remounts the instance's Machine on it and
   * keeps the old volume until commit (deletes it) or rollback (remounts it, deletes the new one).
   */
  async restoreNativeSnapshot(instanceId: string, snapshot: NativeSnapshotRef): Promise<NativeRestore> {
    const api = this.requireApi();
    if (snapshot.provider !== 'fly') throw new SwarmError('INVALID_INPUT', `snapshot.provider: expected a fly volume snapshot (got ${snapshot.provider})`, { field: 'snapshot' });
    const machine = await this.requireMachine(instanceId);
    const previousVolumeId = this.view(machine).providerRef.volume;
    if (!previousVolumeId) throw new SwarmError('PROVIDER_ERROR', `fly: machine ${machine.id} of ${instanceId} mounts no workspace volume`);
    if (snapshot.volumeId) await this.awaitSnapshotUsable(snapshot.volumeId, snapshot.id);
    const previous = await api.getVolume(previousVolumeId);
    const region = previous.region ?? machine.region ?? this.region;
    const created = await api.createVolumeFromSnapshot(volumeName(instanceId, this.options.swarmId), region, previous.size_gb ?? this.options.volumeSizeGb ?? 1, snapshot.id);
    this.logger.info({ instanceId, volume: created.id, snapshot: snapshot.id }, 'volume made from a snapshot');
    try {
      await this.remount(instanceId, created.id);
    } catch (err) {
      await this.remount(instanceId, previousVolumeId).catch((e) => this.logger.warn({ instanceId, err: (e as Error).message }, 'could not remount the previous volume'));
      await this.deleteVolumeSoon(created.id).catch((e) => this.logger.warn({ instanceId, volume: created.id, err: (e as Error).message }, 'clean-up: could not destroy volume'));
      throw asSwarmError(err, 'PROVIDER_ERROR', `fly: restore snapshot ${snapshot.id} into ${instanceId}`);
    }
    return {
      volumeId: created.id,
      previousVolumeId,
      commit: () => this.deleteVolumeSoon(previousVolumeId),
      rollback: async () => {
        await this.remount(instanceId, previousVolumeId);
        await this.deleteVolumeSoon(created.id);
      },
    };
  }

  async close(): Promise<void> {
    this.api = undefined;
  }

  /** The volume the instance's Machine mounts at the workspace (which, after a restore, is not the first one made under its name). */
  private async workspaceVolumeId(instanceId: string): Promise<string> {
    const volume = this.view(await this.requireMachine(instanceId)).providerRef.volume ?? (await this.findVolume(instanceId))?.id;
    if (!volume) throw new SwarmError('PROVIDER_ERROR', `fly: instance ${instanceId} has no workspace volume`);
    return volume;
  }

  /** Waits until Fly can make a volume from the snapshot (`created`); a snapshot whose volume is gone is left to the create call to judge. */
  private async awaitSnapshotUsable(volumeId: string, snapshotId: string): Promise<void> {
    const api = this.requireApi();
    await waitUntil(
      async () => {
        let listed: FlyVolumeSnapshot[];
        try {
          listed = await api.listVolumeSnapshots(volumeId);
        } catch (err) {
          if (err instanceof SwarmError && err.code === 'NOT_FOUND') return true;
          throw err;
        }
        const found = listed.find((snap) => snap.id === snapshotId);
        if (!found) throw new SwarmError('NOT_FOUND', `fly: snapshot ${snapshotId} of volume ${volumeId} no longer exists (expired?)`);
        if (found.status === 'failed') throw new SwarmError('PROVIDER_ERROR', `fly: snapshot ${snapshotId} of volume ${volumeId} failed`);
        return found.status === undefined || found.status === 'created' ? true : undefined;
      },
      { timeoutMs: this.nativeTimeoutMs(), intervalMs: 250, what: `fly: snapshot ${snapshotId} of volume ${volumeId} becoming usable` },
    );
  }

  /** Mounts another volume at the workspace: a new Machine version, started again when it ran. */
  private async remount(instanceId: string, volumeId: string): Promise<void> {
    const api = this.requireApi();
    const machine = await this.requireMachine(instanceId);
    const wasRunning = FLY_ACTIVE_STATES.has(machine.state);
    const mounts = [...(machine.config?.mounts ?? []).filter((m) => m.path !== WORKSPACE_PATH), { volume: volumeId, path: WORKSPACE_PATH }];
    const updated = await api.updateMachine(machine.id, { ...(machine.config ?? {}), mounts }, !wasRunning);
    if (wasRunning) await this.awaitStarted(updated, () => undefined, 0.5);
    else await this.waitForState(updated, 'stopped', this.options.readinessTimeoutMs ?? 90_000);
  }

  private nativeTimeoutMs(): number {
    return this.options.nativeSnapshotTimeoutMs ?? 600_000;
  }

  /** Runs a command that must succeed, returning its whole stdout. */
  private async shell(instanceId: string, command: string): Promise<string> {
    const result = await this.executeCommand(instanceId, command, { timeoutMs: 120_000, maxOutputBytes: 4 * TRANSFER_READ_CHUNK });
    if (result.exitCode !== 0 || result.timedOut || result.truncated) {
      throw new SwarmError('PROVIDER_ERROR', `fly: workspace transfer in ${instanceId} failed (exit ${result.exitCode}${result.timedOut ? ', timed out' : ''}${result.truncated ? ', output cut' : ''}): ${result.stderr.trim().slice(0, 300)}`);
    }
    return result.stdout;
  }

  private async withRunningMachine<T>(instanceId: string, work: () => Promise<T>): Promise<T> {
    const machine = await this.requireMachine(instanceId);
    const wasStarted = machine.state === 'started';
    if (!wasStarted) await this.startInstance(instanceId);
    try {
      return await work();
    } finally {
      if (!wasStarted) await this.stopInstance(instanceId).catch(() => undefined);
    }
  }

  // ---- internals ----

  private machineConfig(
    instanceId: string,
    config: InstanceConfig & { image: string },
    guest: ReturnType<typeof guestFor>,
    volumeId: string | undefined,
    createdAt: string,
  ): Record<string, unknown> {
    return {
      image: config.image || this.options.defaultImage,
      env: { ...(config.env ?? {}) },
      guest,
      init: { cmd: this.options.editorArgs ?? DEFAULT_EDITOR_ARGS },
      metadata: {
        [META_MANAGED]: 'true',
        ...(this.options.swarmId ? { [META_SWARM]: this.options.swarmId } : {}),
        [META_INSTANCE]: instanceId,
        [META_NAME]: config.name,
        [META_CREATED]: createdAt,
        [META_CPU]: String(config.resources.cpu),
        ...(config.metadata && Object.keys(config.metadata).length ? { [META_USER]: JSON.stringify(config.metadata) } : {}),
      },
      // Reachable on the private network only: the app has no public IP (see the file comment). Fly's
      // proxy must not stop or start Machines by itself: the controller's idle monitor owns that.
      services: [
        {
          protocol: 'tcp',
          internal_port: EDITOR_PORT,
          autostart: false,
          autostop: false,
          ports: [{ port: EDITOR_PORT, handlers: ['http'] }],
        },
      ],
      ...(volumeId ? { mounts: [{ volume: volumeId, path: WORKSPACE_PATH }] } : {}),
      restart: { policy: 'on-failure', max_retries: 3 },
      stop_config: { signal: 'SIGTERM', timeout: `${this.options.stopTimeoutSeconds ?? 10}s` },
    };
  }

  /** Brings a Machine to `started`, whatever it is now, then waits for the editor. */
  private async startAndAwait(machine: FlyMachine, progress: (e: ProgressEvent) => void, from: number, signal?: AbortSignal): Promise<VSCodeInstance> {
    const api = this.requireApi();
    const instanceId = machine.config?.metadata?.[META_INSTANCE] ?? machine.id;
    if (FLY_GONE_STATES.has(machine.state)) throw new SwarmError('NOT_FOUND', `fly: instance ${instanceId} is being destroyed`, { field: 'instanceId' });
    let current = machine;
    if (current.state === 'stopping' || current.state === 'suspending') {
      progress({ fraction: from, message: `waiting for machine ${current.id} to finish stopping` });
      current = await this.waitForState(current, 'stopped', this.options.readinessTimeoutMs ?? 90_000, signal);
    }
    if (!FLY_ACTIVE_STATES.has(current.state)) {
      progress({ fraction: from, message: `starting machine ${current.id}` });
      try {
        await api.startMachine(current.id);
      } catch (err) {
        // 412: it began starting by itself meanwhile (a `created` Machine launching); wait for it below.
        if (!(err instanceof SwarmError && err.code === 'CONFLICT')) throw err;
      }
    }
    return this.awaitStarted(current, progress, from + (1 - from) / 3, signal);
  }

  /** Waits for `started` on the Machine's current version, reads it back, and waits for the editor. */
  private async awaitStarted(machine: FlyMachine, progress: (e: ProgressEvent) => void, from: number, signal?: AbortSignal): Promise<VSCodeInstance> {
    const api = this.requireApi();
    const timeoutMs = this.options.readinessTimeoutMs ?? 90_000;
    const deadline = Date.now() + timeoutMs;
    progress({ fraction: from, message: `waiting for machine ${machine.id} to start` });
    await this.waitForState(machine, 'started', timeoutMs, signal);
    const started = this.view(await api.getMachine(machine.id));
    if (!started.endpoint) throw new SwarmError('PROVIDER_ERROR', `fly: machine ${machine.id} started without a private address`);
    const path = this.options.readinessPath === undefined ? '/healthz' : this.options.readinessPath;
    if (path !== null) {
      progress({ fraction: from + (1 - from) / 2, message: `waiting for the editor at ${started.endpoint.url}` });
      let lastStateCheck = Date.now();
      await waitUntil(
        async () => {
          if ((await httpStatus(`${started.endpoint!.url}${path}`)) === 200) return true;
          if (Date.now() - lastStateCheck >= READINESS_STATE_CHECK_MS) {
            lastStateCheck = Date.now();
            const now = await api.getMachine(machine.id);
            if (!FLY_ACTIVE_STATES.has(now.state)) {
              throw new SwarmError('PROVIDER_ERROR', `fly: the editor of ${started.id} stopped while starting (machine ${machine.id} is ${now.state})`);
            }
          }
          return undefined;
        },
        {
          timeoutMs: Math.max(1_000, deadline - Date.now()),
          intervalMs: 100,
          what: `editor of ${started.id} at ${started.endpoint.url}${path}`,
          ...(signal ? { signal } : {}),
        },
      );
    }
    progress({ fraction: 1, message: 'editor is answering' });
    return started;
  }

  /** Stops a Machine (SIGKILL when forced) and waits until it is stopped; a stopped one is returned as is. */
  private async stopMachine(machine: FlyMachine, force: boolean): Promise<FlyMachine> {
    const api = this.requireApi();
    if (FLY_GONE_STATES.has(machine.state)) return machine;
    if (FLY_ACTIVE_STATES.has(machine.state) || machine.state === 'stopping' || machine.state === 'suspending') {
      if (machine.state !== 'stopping') {
        try {
          await api.stopMachine(machine.id, force ? 'SIGKILL' : 'SIGTERM', this.options.stopTimeoutSeconds ?? 10);
        } catch (err) {
          if (!(err instanceof SwarmError && err.code === 'CONFLICT')) throw err; // already stopping or stopped
        }
      }
      return this.waitForState(machine, 'stopped', ((this.options.stopTimeoutSeconds ?? 10) + 30) * 1000);
    }
    return machine;
  }

  /** Destroys a Machine: stopped first (the API refuses to destroy a running one unless forced), then gone. */
  private async destroyMachine(machine: FlyMachine, force: boolean): Promise<void> {
    const api = this.requireApi();
    if (machine.state === 'destroyed') return;
    if (!force) machine = await this.stopMachine(machine, false);
    try {
      await api.deleteMachine(machine.id, force);
    } catch (err) {
      if (err instanceof SwarmError && err.code === 'NOT_FOUND') return;
      // 412: started again meanwhile; it is going anyway.
      if (err instanceof SwarmError && err.code === 'CONFLICT' && !force) await api.deleteMachine(machine.id, true);
      else throw err;
    }
    await this.waitForState(machine, 'destroyed', 60_000).catch((err) => {
      if (!(err instanceof SwarmError && err.code === 'NOT_FOUND')) throw err;
    });
  }

  /**
   * Waits with /wait until the Machine's version reaches `state`: each call blocks up to a slice, a 408
   * means "not yet" and is waited again, and between slices the Machine is looked at so that one that
   * failed ends the wait at once. Returns the Machine as it is then.
   */
  private async waitForState(machine: FlyMachine, state: 'started' | 'stopped' | 'destroyed', timeoutMs: number, signal?: AbortSignal): Promise<FlyMachine> {
    const api = this.requireApi();
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      signal?.throwIfAborted();
      const remaining = deadline - Date.now();
      if (remaining <= 0) {
        throw new SwarmError('TIMEOUT', `fly: machine ${machine.id} did not become ${state} within ${Math.round(timeoutMs / 1000)} s`);
      }
      const reached = await api.waitOnce(machine.id, state, machine.instance_id, Math.min(WAIT_SLICE_SECONDS, remaining / 1000));
      if (reached) return { ...machine, state };
      const now = await api.getMachine(machine.id);
      if (now.state === state) return now;
      if (state === 'started' && (now.state === 'failed' || now.state === 'launch_failed' || FLY_GONE_STATES.has(now.state))) {
        throw new SwarmError('PROVIDER_ERROR', `fly: machine ${machine.id} is ${now.state} instead of starting`);
      }
      if (now.instance_id && machine.instance_id && now.instance_id !== machine.instance_id && state !== 'destroyed') {
        machine = { ...machine, instance_id: now.instance_id }; // changed by someone else meanwhile: follow the new version
      }
      await sleep(Math.min(250, Math.max(0, deadline - Date.now())));
    }
  }

  /** The one Machine of an instance: the API filters by metadata; a started one wins over leftovers. */
  private async findMachine(instanceId: string): Promise<FlyMachine | undefined> {
    const machines = (await this.requireApi().listMachines(this.ownedBy({ [META_INSTANCE]: instanceId }))).filter((m) => !FLY_GONE_STATES.has(m.state));
    return machines.find((m) => m.state === 'started') ?? machines.find((m) => m.name === machineName(instanceId)) ?? machines[0];
  }

  /** A metadata filter narrowed to this swarm's Machines, when the provider serves a named swarm. */
  private ownedBy(filter: Record<string, string>): Record<string, string> {
    return this.options.swarmId ? { ...filter, [META_SWARM]: this.options.swarmId } : filter;
  }

  private async requireMachine(instanceId: string): Promise<FlyMachine> {
    const machine = await this.findMachine(instanceId);
    if (!machine) throw new SwarmError('NOT_FOUND', `fly: no machine for instance ${instanceId}`, { field: 'instanceId' });
    return machine;
  }

  private async findVolume(instanceId: string): Promise<FlyVolume | undefined> {
    const name = volumeName(instanceId, this.options.swarmId);
    const volumes = await this.requireApi().listVolumes();
    return volumes.find((v) => v.name === name && !/destroy/.test(v.state ?? ''));
  }

  /** The instance's workspace volume, made unless it exists (a kept workspace); `created` when this call made it. */
  private async ensureVolume(instanceId: string, region: string): Promise<{ volume: FlyVolume; created: boolean }> {
    const existing = await this.findVolume(instanceId);
    if (existing) return { volume: existing, created: false };
    const volume = await this.requireApi().createVolume(volumeName(instanceId, this.options.swarmId), region, this.options.volumeSizeGb ?? 1);
    return { volume, created: true };
  }

  /** Destroys a volume; right after its Machine went it may still show as attached for a moment. */
  private async deleteVolumeSoon(volumeId: string): Promise<void> {
    const deadline = Date.now() + 15_000;
    for (;;) {
      try {
        await this.requireApi().deleteVolume(volumeId);
        return;
      } catch (err) {
        if (err instanceof SwarmError && err.code === 'NOT_FOUND') return;
        if (!(err instanceof SwarmError && err.code === 'CONFLICT') || Date.now() >= deadline) throw err;
        await sleep(250);
      }
    }
  }

  private view(machine: FlyMachine): VSCodeInstance {
    const instance = instanceFromMachine(machine, this.address);
    if (!instance) throw new SwarmError('PROVIDER_ERROR', `fly: machine ${machine.id} carries no ${META_INSTANCE} metadata`);
    return instance;
  }

  private requireApi(): FlyApi {
    if (!this.api) throw new SwarmError('PROVIDER_UNAVAILABLE', 'fly: the provider is not initialised (call initialize first)');
    return this.api;
  }
}

/** The shared description of a Fly volume snapshot; its expiry follows from `retention_days`. */
function nativeRef(snap: FlyVolumeSnapshot, volumeId: string): NativeSnapshotRef {
  const takenAt = snap.created_at ?? new Date().toISOString();
  return {
    provider: 'fly',
    id: snap.id,
    volumeId,
    ...(snap.status ? { status: snap.status } : {}),
    takenAt,
    ...(snap.retention_days ? { expiresAt: new Date(Date.parse(takenAt) + snap.retention_days * 86_400_000).toISOString() } : {}),
    ...(snap.digest ? { digest: snap.digest } : {}),
    ...(typeof snap.size === 'number' ? { size: snap.size } : {}),
  };
}

/** Keeps at most `limit` bytes of UTF-8 text. */
function capBytes(text: string, limit: number): { text: string; truncated: boolean } {
  const bytes = Buffer.from(text, 'utf8');
  if (bytes.length <= limit) return { text, truncated: false };
  return { text: bytes.subarray(0, limit).toString('utf8'), truncated: true };
}
