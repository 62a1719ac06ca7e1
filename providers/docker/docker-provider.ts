/**
 * The local Docker provider: one container per instance running the editor image, a named volume per
 * instance for the workspace, the editor's port published on the loopback address only.
 *
 * It keeps no state of its own: every call finds the container by its labels and reports what the
 * engine says.
 */
import Docker from 'dockerode';
import os from 'node:os';
import { Readable, type Writable } from 'node:stream';
import { finished } from 'node:stream/promises';
import { crashPoint } from '../../src/crash/crash-points.js';
import { SwarmError, asSwarmError, invalidInput } from '../../src/errors.js';
import { CappedCollector } from '../../src/streams/capped-collector.js';
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
  InstanceStats,
  LogOptions,
  Provider,
  ProviderCapabilities,
  ProgressEvent,
  StartOptions,
  UpdateMode,
  UpdateOptions,
  VSCodeInstance,
} from '../provider.js';
import { EDITOR_MOUNT_PATH, applyInstanceFilter } from '../provider.js';
import { engineAgent, engineUnreachable, resolveDockerConnection, type DockerConnection, type DockerConnectionOptions } from './docker-connection.js';
import {
  DEFAULT_NAME_PREFIX,
  EDITOR_PORT,
  LABEL_CREATED,
  LABEL_ENV_KEYS,
  LABEL_INSTANCE,
  LABEL_MANAGED,
  LABEL_METADATA,
  LABEL_NAME,
  LABEL_SWARM,
  NAME_PREFIX_PATTERN,
  WORKSPACE_PATH,
  containerName,
  type EndpointMode,
  instanceFromContainer,
  volumeName,
} from './docker-mapping.js';

export interface DockerProviderOptions extends DockerConnectionOptions {
  /** The editor image used when a config names none. */
  defaultImage: string;
  /**
   * Address to publish the editor port on. Null (the default) publishes nothing: the editor is reached
   * at its address on `network`, from the Docker host only, so the gateway is the only way in.
   * Set it (e.g. 127.0.0.1) when the engine is remote (DOCKER_HOST=tcp://...).
   */
  publishHost?: string | null;
  /**
   * The host port to publish an instance's editor on (with publishHost); undefined lets the engine pick
   * a free one (the default). The host agent uses it to hand out ports from its own persisted pool.
   */
  hostPortFor?: (instanceId: string) => number | undefined;
  /** The bridge network instances join; created with inter-container traffic off, so one workspace cannot reach another's editor. */
  network?: string;
  /** Arguments after the image's entrypoint (the upstream entrypoint already binds 0.0.0.0:8080). */
  editorArgs?: string[];
  /** HTTP path polled until the editor answers 200; null to consider a running container ready. */
  readinessPath?: string | null;
  readinessTimeoutMs?: number;
  stopTimeoutSeconds?: number;
  /** Pull an image that is not present; off where no registry is reachable. */
  pullImages?: boolean;
  /** The swarm this provider serves; only containers labelled with it are seen. */
  swarmId: string;
  /** What container and volume names start with (DEFAULT_NAME_PREFIX); see docker-mapping.ts. */
  namePrefix?: string;
  /** Upper bound on processes in one container. */
  pidsLimit?: number;
  /** Lines kept when `getInstanceLogs` is given no tail. */
  defaultLogTail?: number;
  logger?: Logger;
}

const DEFAULT_EDITOR_ARGS = ['--auth', 'none', '--disable-telemetry', '--disable-update-check', WORKSPACE_PATH];
/** On a container whose editor runs from a mount: the editor image it came from (carried over by a re-create). */
const LABEL_EDITOR_IMAGE = 'vscode-swarm.editor-mount';
/**
 * Copies the editor out of an editor image into the volume at /target, once: the upstream layout
 * (/usr/lib/code-server, which bundles its node) or the offline image's (/usr/local/bin/node and
 * /opt/code-server), behind one launcher, bin/code-server. `.complete` is written last.
 */
const EDITOR_COPY_SCRIPT = `set -eu
t=/target
[ -f "$t/.complete" ] && exit 0
find "$t" -mindepth 1 -delete
mkdir -p "$t/bin" "$t/lib"
if [ -x /usr/lib/code-server/bin/code-server ]; then
  cp -a /usr/lib/code-server/. "$t/lib/"
  run='exec ${EDITOR_MOUNT_PATH}/lib/bin/code-server "$@"'
elif [ -f /opt/code-server/node_modules/code-server/out/node/entry.js ] && [ -x /usr/local/bin/node ]; then
  cp -a /opt/code-server/node_modules "$t/lib/node_modules"
  cp /usr/local/bin/node "$t/lib/node"
  run='exec ${EDITOR_MOUNT_PATH}/lib/node ${EDITOR_MOUNT_PATH}/lib/node_modules/code-server/out/node/entry.js "$@"'
else
  echo "no code-server in this image (looked for /usr/lib/code-server and /opt/code-server)" >&2
  exit 3
fi
printf '#!/bin/sh\n%s\n' "$run" > "$t/bin/code-server"
chmod 755 "$t/bin/code-server"
touch "$t/.complete"`;
export const DEFAULT_NETWORK = 'vscode-swarm';
const DEFAULT_EXEC_TIMEOUT_MS = 30_000;
const DEFAULT_EXEC_MAX_OUTPUT = 1024 * 1024;
const PING_TIMEOUT_MS = 5_000;

export class DockerProvider implements Provider {
  readonly type = 'docker' as const;
  private readonly docker: Docker;
  private readonly connection: DockerConnection;
  private readonly logger: Logger;
  private readonly endpointMode: EndpointMode;
  private capabilities: ProviderCapabilities;
  /** Editor volumes being filled, by name: concurrent creates wait for the one copy. */
  private readonly editorVolumes = new Map<string, Promise<string>>();

  constructor(private readonly options: DockerProviderOptions) {
    if (options.namePrefix !== undefined && !NAME_PREFIX_PATTERN.test(options.namePrefix)) {
      throw invalidInput('namePrefix', 'letters, digits, `_`, `.` or `-`, starting with a letter or digit, at most 64', options.namePrefix);
    }
    this.connection = resolveDockerConnection(options);
    // docker-modem passes `agent` on to every request (its types omit it).
    this.docker = new Docker({ ...this.connection.options, agent: engineAgent(this.connection) } as Docker.DockerOptions);
    this.logger = (options.logger ?? silentLogger()).child({ component: 'docker-provider' });
    this.endpointMode = { publishHost: options.publishHost ?? null, network: options.network ?? DEFAULT_NETWORK };
    this.capabilities = {
      liveResize: true,
      snapshots: false,
      workspaceTransfer: true,
      persistentWorkspace: true,
      logs: true,
      exec: true,
      stats: true,
      editorMount: true,
      regions: [],
      resourceLimits: { minCpu: 0.1, maxCpu: os.availableParallelism(), minMemoryMb: 256, maxMemoryMb: Math.floor(os.totalmem() / 2 ** 20) },
    };
  }

  getCapabilities(): ProviderCapabilities {
    return structuredClone(this.capabilities);
  }

  private containerName(instanceId: string): string {
    return containerName(instanceId, this.options.namePrefix);
  }

  private volumeName(instanceId: string): string {
    return volumeName(instanceId, this.options.namePrefix);
  }

  /** The name a re-create gives the new container until the old one is gone. */
  private stagingName(instanceId: string): string {
    return `${this.containerName(instanceId)}-next`;
  }

  async initialize(): Promise<void> {
    let info: { NCPU?: number; MemTotal?: number; ServerVersion?: string };
    try {
      info = await withTimeout(this.docker.info() as Promise<typeof info>, PING_TIMEOUT_MS, 'docker info');
    } catch (err) {
      throw engineUnreachable(this.connection, err);
    }
    this.capabilities.resourceLimits.maxCpu = info.NCPU ?? this.capabilities.resourceLimits.maxCpu;
    if (info.MemTotal) this.capabilities.resourceLimits.maxMemoryMb = Math.floor(info.MemTotal / 2 ** 20);
    await this.ensureNetwork();
    await this.settleStaging();
    this.logger.info({ engine: this.connection.describe, version: info.ServerVersion, network: this.endpointMode.network }, 'docker engine reachable');
  }

  async ping(): Promise<void> {
    try {
      await withTimeout(this.docker.ping() as Promise<unknown>, PING_TIMEOUT_MS, 'docker ping');
    } catch (err) {
      throw engineUnreachable(this.connection, err);
    }
  }

  async createInstance(config: InstanceConfig & { image: string }, options: CreateOptions): Promise<VSCodeInstance> {
    const { instanceId } = options;
    const progress = options.onProgress ?? (() => undefined);
    const existing = await this.findContainer(instanceId);
    if (existing) {
      const current = await this.inspect(existing);
      return current.status === 'running' ? current : this.startInstance(instanceId, options);
    }

    progress({ fraction: 0.05, message: `checking image ${config.image}` });
    await this.ensureImage(config.image, progress);

    const editorVolume = await this.editorVolumeFor(config, progress);

    progress({ fraction: 0.4, message: 'preparing workspace volume' });
    const volumeCreated = await this.ensureVolume(instanceId, config.name);

    let container: Docker.Container | undefined;
    try {
      progress({ fraction: 0.5, message: 'creating container' });
      container = await this.docker.createContainer(this.containerSpec(instanceId, config, this.containerName(instanceId), editorVolume));
      return await this.startAndAwait(instanceId, container, progress, 0.6, options.signal, true);
    } catch (err) {
      // Leave nothing behind: a failed create removes what this call made.
      if (container) await container.remove({ force: true, v: false }).catch(() => undefined);
      if (volumeCreated) await this.docker.getVolume(this.volumeName(instanceId)).remove().catch(() => undefined);
      throw this.wrap(err, `create ${instanceId}`);
    }
  }

  async getInstance(instanceId: string): Promise<VSCodeInstance | null> {
    const container = await this.findContainer(instanceId);
    return container ? this.inspect(container).catch((err) => (isNotFound(err) ? null : Promise.reject(err))) : null;
  }

  async listInstances(filter: InstanceFilter = {}): Promise<VSCodeInstance[]> {
    const summaries = await this.call('list containers', () =>
      this.docker.listContainers({ all: true, filters: { label: [`${LABEL_MANAGED}=true`, `${LABEL_SWARM}=${this.options.swarmId}`] } }),
    );
    const instances: VSCodeInstance[] = [];
    for (const summary of summaries) {
      try {
        instances.push(await this.inspect(this.docker.getContainer(summary.Id)));
      } catch (err) {
        if (!isNotFound(err)) throw this.wrap(err, 'inspect container');
      }
    }
    return applyInstanceFilter(instances, filter);
  }

  async startInstance(instanceId: string, options: StartOptions = {}): Promise<VSCodeInstance> {
    const container = await this.requireContainer(instanceId);
    return this.startAndAwait(instanceId, container, options.onProgress ?? (() => undefined), 0.1, options.signal);
  }

  async stopInstance(instanceId: string, force = false): Promise<VSCodeInstance> {
    const container = await this.requireContainer(instanceId);
    const before = await this.inspect(container);
    if (before.status === 'running' || before.status === 'starting') {
      await this.call(`stop ${instanceId}`, async () => {
        try {
          if (force) await container.kill();
          else await container.stop({ t: this.options.stopTimeoutSeconds ?? 10 });
        } catch (err) {
          if (statusCode(err) !== 304 && statusCode(err) !== 409) throw err; // already stopped
        }
      });
    }
    return this.inspect(container);
  }

  async deleteInstance(instanceId: string, options: DeleteOptions = {}): Promise<boolean> {
    const container = await this.findContainer(instanceId);
    let removed = false;
    if (container) {
      await this.call(`remove ${instanceId}`, () => container.remove({ force: true }).catch(ignoreNotFound));
      removed = true;
      crashPoint('docker.delete.after-container');
    }
    if (!options.keepWorkspace) {
      const volume = this.docker.getVolume(this.volumeName(instanceId));
      await this.call(`remove volume of ${instanceId}`, () =>
        volume.remove().then(
          () => {
            removed = true;
          },
          ignoreNotFound,
        ),
      );
    }
    return removed;
  }

  async updateInstance(
    instanceId: string,
    patch: InstanceConfigPatch,
    options: UpdateOptions = {},
  ): Promise<VSCodeInstance & { updateMode: UpdateMode }> {
    const progress = options.onProgress ?? (() => undefined);
    const container = await this.requireContainer(instanceId);
    const current = await this.inspect(container);
    const next: InstanceConfig & { image: string } = {
      ...current.config,
      ...(patch.image ? { image: patch.image } : {}),
      ...(patch.env ? { env: patch.env } : {}),
      // Metadata lives in the registry; the label keeps what the container was created with and is
      // refreshed at the next re-create rather than forcing one.
      ...(patch.metadata ? { metadata: patch.metadata } : {}),
      resources: { ...current.config.resources, ...patch.resources },
    };
    const needsRecreate =
      (patch.image !== undefined && patch.image !== current.config.image) ||
      (patch.env !== undefined && JSON.stringify(patch.env) !== JSON.stringify(current.config.env ?? {}));
    const resized =
      next.resources.cpu !== current.config.resources.cpu || next.resources.memoryMb !== current.config.resources.memoryMb;

    if (needsRecreate) {
      return { ...(await this.recreate(instanceId, container, current, next, progress)), updateMode: 'recreate' };
    }
    if (!resized) return { ...current, updateMode: 'none' };
    progress({ fraction: 0.5, message: `resizing live to ${next.resources.cpu} CPU, ${next.resources.memoryMb} MiB` });
    try {
      await container.update(resourceLimits(next.resources));
    } catch (err) {
      // A broken connection is not a refusal: re-creating then would risk the container for nothing.
      if (statusCode(err) === undefined) throw this.wrap(err, `resize ${instanceId}`);
      // The engine refuses some live changes (memory below what the container uses, for one):
      // re-create around the same volume instead of failing.
      this.logger.warn({ instanceId, err: (err as Error).message }, 'live resize refused; re-creating');
      return { ...(await this.recreate(instanceId, container, current, next, progress)), updateMode: 'recreate' };
    }
    return { ...(await this.inspect(container)), updateMode: 'live' };
  }

  async getInstanceLogs(instanceId: string, options: LogOptions = {}): Promise<InstanceLogs> {
    const container = await this.requireContainer(instanceId);
    const tail = options.tail ?? this.options.defaultLogTail ?? 200;
    const raw = await this.call(`logs of ${instanceId}`, () =>
      container.logs({
        stdout: true,
        stderr: true,
        follow: false,
        tail: tail + 1,
        timestamps: options.timestamps ?? false,
        ...(options.since ? { since: Math.floor(Date.parse(options.since) / 1000) } : {}),
      }) as unknown as Promise<Buffer>,
    );
    const out = new CappedCollector(Number.MAX_SAFE_INTEGER);
    await this.demux(Readable.from([raw]), out, out);
    const lines = out.text().split('\n');
    if (lines.at(-1) === '') lines.pop();
    const truncated = lines.length > tail;
    return { instanceId, lines: truncated ? lines.slice(-tail) : lines, truncated };
  }

  async exportWorkspace(instanceId: string): Promise<Readable> {
    const container = await this.requireContainer(instanceId);
    // The archive API reads the container's filesystem, volume included, whether it runs or not; the
    // engine's response is handed on as it arrives.
    return (await this.call(`export workspace of ${instanceId}`, () => container.getArchive({ path: `${WORKSPACE_PATH}/.` }))) as unknown as Readable;
  }

  async importWorkspace(instanceId: string, archive: Readable): Promise<void> {
    try {
      const container = await this.requireContainer(instanceId);
      // The stream is piped into the engine's request; its errors (a cap, a deadline) abort the request.
      await this.call(`import workspace into ${instanceId}`, () => container.putArchive(archive, { path: WORKSPACE_PATH }));
    } finally {
      archive.destroy();
    }
  }

  async getInstanceStats(instanceId: string): Promise<InstanceStats> {
    const container = await this.requireContainer(instanceId);
    const raw = (await this.call(`stats of ${instanceId}`, () => container.stats({ stream: false, 'one-shot': true } as { stream: false }))) as unknown as {
      memory_stats?: { usage?: number; limit?: number; stats?: { inactive_file?: number; total_inactive_file?: number } };
      cpu_stats?: { cpu_usage?: { total_usage?: number }; system_cpu_usage?: number; online_cpus?: number };
      precpu_stats?: { cpu_usage?: { total_usage?: number }; system_cpu_usage?: number };
    };
    const mem = raw.memory_stats ?? {};
    const cache = mem.stats?.inactive_file ?? mem.stats?.total_inactive_file ?? 0;
    const stats: InstanceStats = { memoryBytes: Math.max(0, (mem.usage ?? 0) - cache), memoryLimitBytes: mem.limit ?? 0 };
    const cpuDelta = (raw.cpu_stats?.cpu_usage?.total_usage ?? 0) - (raw.precpu_stats?.cpu_usage?.total_usage ?? 0);
    const systemDelta = (raw.cpu_stats?.system_cpu_usage ?? 0) - (raw.precpu_stats?.system_cpu_usage ?? 0);
    if (raw.precpu_stats?.system_cpu_usage && systemDelta > 0) stats.cpuPercent = (cpuDelta / systemDelta) * (raw.cpu_stats?.online_cpus ?? 1) * 100;
    return stats;
  }

  async executeCommand(instanceId: string, command: string, options: ExecOptions = {}): Promise<CommandResult> {
    const timeoutMs = options.timeoutMs ?? DEFAULT_EXEC_TIMEOUT_MS;
    const maxOutputBytes = options.maxOutputBytes ?? DEFAULT_EXEC_MAX_OUTPUT;
    const container = await this.requireContainer(instanceId);
    const started = Date.now();
    // `timeout` inside the container ends the process itself; the client-side timer is the backstop
    // for an image without coreutils or a command that ignores the signal.
    const seconds = Math.max(1, Math.ceil(timeoutMs / 1000));
    const exec = await this.call(`exec in ${instanceId}`, () =>
      container.exec({
        Cmd: ['timeout', '-s', 'KILL', String(seconds), 'sh', '-c', command],
        AttachStdout: true,
        AttachStderr: true,
        WorkingDir: WORKSPACE_PATH,
      }),
    );
    const stream = (await this.call(`exec in ${instanceId}`, () => exec.start({ hijack: true, stdin: false }))) as NodeJS.ReadableStream & {
      destroy(): void;
    };
    const stdout = new CappedCollector(maxOutputBytes);
    const stderr = new CappedCollector(maxOutputBytes);
    let timedOut = false;
    const timer = setTimeout(() => {
      timedOut = true;
      stream.destroy();
    }, timeoutMs + 2_000);
    try {
      await this.demux(stream as unknown as Readable, stdout, stderr).catch((err) => {
        if (!timedOut) throw err;
      });
    } finally {
      clearTimeout(timer);
    }
    const inspected = await exec.inspect().catch(() => undefined);
    const exitCode = inspected?.Running ? null : (inspected?.ExitCode ?? null);
    if (exitCode === 137 && Date.now() - started >= seconds * 1000) timedOut = true;
    return {
      exitCode,
      stdout: stdout.text(),
      stderr: stderr.text(),
      timedOut,
      truncated: stdout.truncated || stderr.truncated,
      durationMs: Date.now() - started,
    };
  }

  // ---- internals ----

  /**
   * The exact container this provider creates for an instance (image, editor arguments, labels, limits,
   * privileges, network, the workspace volume's mount). Public so that the benchmark's raw-engine baseline
   * creates the same container and the ratio isolates the controller. With `editorVolume` (config.editorMount),
   * the editor runs from that volume, mounted read-only, with the same arguments, under the engine's init.
   */
  containerSpec(instanceId: string, config: InstanceConfig & { image: string }, name: string, editorVolume?: string): Docker.ContainerCreateOptions {
    const env = config.env ?? {};
    const mounted = editorVolume !== undefined && config.editorMount !== undefined;
    return {
      name,
      Image: config.image,
      ...(mounted ? { Entrypoint: [`${EDITOR_MOUNT_PATH}/bin/code-server`, '--bind-addr', `0.0.0.0:${EDITOR_PORT}`] } : {}),
      Cmd: this.options.editorArgs ?? DEFAULT_EDITOR_ARGS,
      Env: Object.entries(env).map(([k, v]) => `${k}=${v}`),
      Labels: {
        [LABEL_MANAGED]: 'true',
        [LABEL_SWARM]: this.options.swarmId,
        [LABEL_INSTANCE]: instanceId,
        [LABEL_NAME]: config.name,
        [LABEL_ENV_KEYS]: Object.keys(env).join(','),
        [LABEL_CREATED]: new Date().toISOString(),
        ...(config.metadata ? { [LABEL_METADATA]: JSON.stringify(config.metadata) } : {}),
        ...(mounted ? { [LABEL_EDITOR_IMAGE]: config.editorMount!.image } : {}),
      },
      ExposedPorts: { [`${EDITOR_PORT}/tcp`]: {} },
      HostConfig: {
        ...resourceLimits(config.resources),
        NetworkMode: this.endpointMode.network,
        ...(this.endpointMode.publishHost
          ? { PortBindings: { [`${EDITOR_PORT}/tcp`]: [{ HostIp: this.endpointMode.publishHost, HostPort: String(this.options.hostPortFor?.(instanceId) ?? '') }] } }
          : {}),
        Mounts: [
          { Type: 'volume', Source: this.volumeName(instanceId), Target: WORKSPACE_PATH },
          ...(mounted ? [{ Type: 'volume' as const, Source: editorVolume, Target: EDITOR_MOUNT_PATH, ReadOnly: true }] : []),
        ],
        // The image's own entrypoint (and its init) is bypassed: the engine's init reaps the editor's children.
        ...(mounted ? { Init: true } : {}),
        Privileged: false,
        SecurityOpt: ['no-new-privileges'],
        CapDrop: ['ALL'],
        PidsLimit: this.options.pidsLimit ?? 4096,
        // No engine restarts: the controller's health monitor decides, and records why, so that the registry
        // and the engine never disagree silently about a workspace that came back on its own.
        RestartPolicy: { Name: 'no' },
        LogConfig: { Type: 'json-file', Config: { 'max-size': '10m', 'max-file': '2' } },
      },
    };
  }

  private async startAndAwait(
    instanceId: string,
    container: Docker.Container,
    progress: (e: ProgressEvent) => void,
    from: number,
    signal?: AbortSignal,
    fresh = false,
  ): Promise<VSCodeInstance> {
    progress({ fraction: from, message: 'starting container' });
    if (!fresh && (await this.call(`inspect ${instanceId}`, () => container.inspect())).State.Paused) await this.call(`unpause ${instanceId}`, () => container.unpause());
    await this.call(`start ${instanceId}`, () =>
      container.start().catch((err) => {
        if (statusCode(err) !== 304) throw err; // 304: already running
      }),
    );
    const started = await this.inspect(container);
    if (!started.endpoint) throw new SwarmError('PROVIDER_ERROR', `docker: ${instanceId} did not publish its editor port`);
    const path = this.options.readinessPath === undefined ? '/healthz' : this.options.readinessPath;
    if (path === null) return started;
    progress({ fraction: from + (1 - from) / 2, message: `waiting for the editor at ${started.endpoint.url}` });
    await waitUntil(
      async () => {
        if ((await httpStatus(`${started.endpoint!.url}${path}`)) === 200) return true;
        const now = await this.inspect(container);
        if (now.status !== 'running' && now.status !== 'starting') {
          const logs = await this.getInstanceLogs(instanceId, { tail: 10 }).catch(() => ({ lines: [] as string[] }));
          throw new SwarmError('PROVIDER_ERROR', `docker: the editor of ${instanceId} stopped while starting (${now.statusReason ?? now.status}); last output: ${logs.lines.join(' | ') || '(none)'}`);
        }
        return undefined;
      },
      { timeoutMs: this.options.readinessTimeoutMs ?? 60_000, intervalMs: 20, what: `editor of ${instanceId} at ${started.endpoint.url}${path}`, ...(signal ? { signal } : {}) },
    );
    progress({ fraction: 1, message: 'editor is answering' });
    return started;
  }

  /** Re-creates the container around the same volume. The new container is made before the old one goes, so a bad config leaves the old one in place. */
  private async recreate(
    instanceId: string,
    old: Docker.Container,
    current: VSCodeInstance,
    next: InstanceConfig & { image: string },
    progress: (e: ProgressEvent) => void,
  ): Promise<VSCodeInstance> {
    progress({ fraction: 0.1, message: `re-creating with image ${next.image}` });
    await this.ensureImage(next.image, progress);
    // The labels carry what the mapped config does not: an editor run from a mount keeps running from one.
    const editorImage = (await this.call(`inspect ${instanceId}`, () => old.inspect())).Config.Labels?.[LABEL_EDITOR_IMAGE];
    if (editorImage && !next.editorMount) next = { ...next, editorMount: { image: editorImage } };
    const editorVolume = await this.editorVolumeFor(next, progress);
    const staging = this.stagingName(instanceId);
    // Never just remove the staging name: after an interrupted re-create it may be the only container.
    await this.settleStaging(instanceId);
    const fresh = await this.call(`re-create ${instanceId}`, () => this.docker.createContainer(this.containerSpec(instanceId, next, staging, editorVolume)));
    crashPoint('docker.recreate.after-new-container');
    try {
      progress({ fraction: 0.4, message: 'replacing the old container' });
      await old.remove({ force: true });
      crashPoint('docker.recreate.after-old-removed');
      await fresh.rename({ name: this.containerName(instanceId) });
    } catch (err) {
      await fresh.remove({ force: true }).catch(() => undefined);
      throw this.wrap(err, `re-create ${instanceId}`);
    }
    if (current.status === 'running') return this.startAndAwait(instanceId, fresh, progress, 0.6);
    return this.inspect(fresh);
  }

  /**
   * Settles what a re-create interrupted between its steps (the process died) left behind: a staging
   * container beside the instance's own is removed (the old container still holds the instance); a
   * staging container alone (the old one had gone) becomes the instance's container.
   */
  private async settleStaging(instanceId?: string): Promise<void> {
    const label = [`${LABEL_MANAGED}=true`, `${LABEL_SWARM}=${this.options.swarmId}`, ...(instanceId ? [`${LABEL_INSTANCE}=${instanceId}`] : [])];
    const all = await this.call('list containers', () => this.docker.listContainers({ all: true, filters: { label } }));
    for (const c of all) {
      const id = c.Labels[LABEL_INSTANCE];
      if (!id || !c.Names.includes(`/${this.stagingName(id)}`)) continue;
      const main = all.some((o) => o.Names.includes(`/${this.containerName(id)}`));
      if (main) await this.call(`remove staging of ${id}`, () => this.docker.getContainer(c.Id).remove({ force: true }).catch(ignoreNotFound));
      else await this.call(`rename staging of ${id}`, () => this.docker.getContainer(c.Id).rename({ name: this.containerName(id) }));
      this.logger.warn({ instanceId: id }, main ? 'removed the staging container of an interrupted re-create' : 'finished an interrupted re-create: its new container takes the name');
    }
  }

  private async ensureImage(image: string, progress: (e: ProgressEvent) => void): Promise<void> {
    try {
      await this.docker.getImage(image).inspect();
      return;
    } catch (err) {
      if (!isNotFound(err)) throw this.wrap(err, `inspect image ${image}`);
    }
    if (this.options.pullImages === false) {
      throw new SwarmError('PROVIDER_ERROR', `image: "${image}" is not present on the Docker engine and pulling is turned off; build or load it first (the offline editor image: bash scripts/editor-image/build.sh)`, { field: 'image' });
    }
    progress({ fraction: 0.1, message: `pulling ${image}` });
    try {
      const stream = await this.docker.pull(image);
      await new Promise<void>((resolve, reject) =>
        this.docker.modem.followProgress(stream, (err) => (err ? reject(err) : resolve())),
      );
    } catch (err) {
      throw new SwarmError(
        'PROVIDER_ERROR',
        `image: "${image}" is not present on the Docker engine and could not be pulled (${(err as Error).message}); build or load it first (the offline editor image: bash scripts/editor-image/build.sh)`,
        { field: 'image', cause: err },
      );
    }
  }

  /**
   * The volume holding the editor of config.editorMount's image, filled once per editor image (named by its
   * image id, so a rebuilt image gets a fresh copy) by a short-lived container of that image; undefined
   * when the config runs the image's own editor.
   */
  private async editorVolumeFor(config: InstanceConfig, progress: (e: ProgressEvent) => void): Promise<string | undefined> {
    if (!config.editorMount) return undefined;
    const image = config.editorMount.image;
    await this.ensureImage(image, progress);
    const id = (await this.call(`inspect image ${image}`, () => this.docker.getImage(image).inspect())).Id.replace(/^sha256:/, '');
    const name = `${this.options.namePrefix ?? DEFAULT_NAME_PREFIX}-editor-${id.slice(0, 16)}`;
    let filling = this.editorVolumes.get(name);
    if (!filling) {
      filling = this.fillEditorVolume(name, image, progress);
      this.editorVolumes.set(name, filling);
      filling.catch(() => this.editorVolumes.delete(name));
    }
    return filling;
  }

  private async fillEditorVolume(name: string, image: string, progress: (e: ProgressEvent) => void): Promise<string> {
    await this.call(`create volume ${name}`, () =>
      this.docker.createVolume({ Name: name, Labels: { [LABEL_MANAGED]: 'true', [LABEL_EDITOR_IMAGE]: image } }),
    );
    progress({ fraction: 0.2, message: `copying the editor out of ${image} (once per editor image)` });
    const copier = await this.call(`copy the editor out of ${image}`, () =>
      this.docker.createContainer({
        Image: image,
        User: '0',
        Entrypoint: ['sh', '-c', EDITOR_COPY_SCRIPT],
        Cmd: [],
        Labels: { [LABEL_MANAGED]: 'true' },
        HostConfig: { Mounts: [{ Type: 'volume', Source: name, Target: '/target' }], NetworkMode: 'none' },
      }),
    );
    try {
      await this.call(`copy the editor out of ${image}`, () => copier.start());
      const { StatusCode } = (await this.call(`copy the editor out of ${image}`, () => copier.wait())) as { StatusCode: number };
      if (StatusCode !== 0) {
        const raw = (await copier.logs({ stdout: true, stderr: true, tail: 10 }).catch(() => Buffer.alloc(0))) as unknown as Buffer;
        const out = new CappedCollector(16_384);
        await this.demux(Readable.from([raw]), out, out).catch(() => undefined);
        throw new SwarmError('PROVIDER_ERROR', `editorMount.image: could not copy the editor out of ${image} (exit ${StatusCode}): ${out.text().trim() || '(no output)'}`, { field: 'editorMount.image' });
      }
    } finally {
      await copier.remove({ force: true }).catch(() => undefined);
    }
    this.logger.info({ volume: name, image }, 'editor volume ready');
    return name;
  }

  private async ensureNetwork(): Promise<void> {
    const { network } = this.endpointMode;
    try {
      await this.docker.getNetwork(network).inspect();
      return;
    } catch (err) {
      if (!isNotFound(err)) throw this.wrap(err, `inspect network ${network}`);
    }
    await this.call(`create network ${network}`, () =>
      this.docker
        .createNetwork({
          Name: network,
          Driver: 'bridge',
          Options: { 'com.docker.network.bridge.enable_icc': 'false' },
          Labels: { [LABEL_MANAGED]: 'true' },
        })
        .catch((err) => {
          if (statusCode(err) !== 409) throw err; // created meanwhile by another controller
        }),
    );
  }

  /** Creates the workspace volume unless it exists; true when this call created it. */
  private async ensureVolume(instanceId: string, name: string): Promise<boolean> {
    const volume = this.docker.getVolume(this.volumeName(instanceId));
    try {
      await volume.inspect();
      return false;
    } catch (err) {
      if (!isNotFound(err)) throw this.wrap(err, 'inspect volume');
    }
    await this.call('create volume', () =>
      this.docker.createVolume({
        Name: this.volumeName(instanceId),
        Labels: { [LABEL_MANAGED]: 'true', [LABEL_SWARM]: this.options.swarmId, [LABEL_INSTANCE]: instanceId, [LABEL_NAME]: name },
      }),
    );
    return true;
  }

  private async findContainer(instanceId: string): Promise<Docker.Container | undefined> {
    const found = await this.call('list containers', () =>
      this.docker.listContainers({ all: true, filters: { label: [`${LABEL_INSTANCE}=${instanceId}`, `${LABEL_SWARM}=${this.options.swarmId}`] } }),
    );
    // A leftover staging container of an interrupted re-create carries the label too; prefer the real one.
    const summary = found.find((c) => c.Names.includes(`/${this.containerName(instanceId)}`)) ?? found[0];
    return summary ? this.docker.getContainer(summary.Id) : undefined;
  }

  private async requireContainer(instanceId: string): Promise<Docker.Container> {
    const container = await this.findContainer(instanceId);
    if (!container) throw new SwarmError('NOT_FOUND', `docker: no container for instance ${instanceId}`, { field: 'instanceId' });
    return container;
  }

  private async inspect(container: Docker.Container): Promise<VSCodeInstance> {
    return instanceFromContainer(await this.call('inspect container', () => container.inspect()), this.endpointMode);
  }

  private demux(stream: Readable, stdout: Writable, stderr: Writable): Promise<void> {
    this.docker.modem.demuxStream(stream, stdout, stderr);
    return finished(stream).then(() => undefined);
  }

  /** Runs an engine call; a refused connection becomes the one "engine unreachable" error. */
  private async call<T>(what: string, fn: () => Promise<T>): Promise<T> {
    try {
      return await fn();
    } catch (err) {
      throw this.wrap(err, what);
    }
  }

  private wrap(err: unknown, what: string): SwarmError {
    if (err instanceof SwarmError) return err;
    const code = (err as NodeJS.ErrnoException)?.code;
    if (code === 'ENOENT' || code === 'ECONNREFUSED' || code === 'EACCES' || code === 'ETIMEDOUT') return engineUnreachable(this.connection, err);
    const message = (err as { json?: { message?: string } })?.json?.message ?? (err as Error)?.message ?? String(err);
    if (code === 'ECONNRESET' || code === 'EPIPE') {
      // The call may or may not have taken effect: say so rather than pass on the socket's own words alone.
      return new SwarmError('PROVIDER_ERROR', `docker: ${what}: the connection to the Docker engine at ${this.connection.describe} broke (${message}); the call may or may not have taken effect`, { cause: err });
    }
    return new SwarmError(isNotFound(err) ? 'NOT_FOUND' : 'PROVIDER_ERROR', `docker: ${what}: ${message}`, { cause: err });
  }
}

function resourceLimits(resources: { cpu: number; memoryMb: number }): { NanoCpus: number; Memory: number; MemorySwap: number } {
  const memory = resources.memoryMb * 2 ** 20;
  return { NanoCpus: Math.round(resources.cpu * 1e9), Memory: memory, MemorySwap: memory };
}

function statusCode(err: unknown): number | undefined {
  return (err as { statusCode?: number })?.statusCode;
}

function isNotFound(err: unknown): boolean {
  return statusCode(err) === 404 || (err instanceof SwarmError && err.code === 'NOT_FOUND');
}

function ignoreNotFound(err: unknown): void {
  if (!isNotFound(err)) throw err;
}

function withTimeout<T>(promise: Promise<T>, ms: number, what: string): Promise<T> {
  let timer: NodeJS.Timeout;
  return Promise.race([
    promise.finally(() => clearTimeout(timer)),
    new Promise<T>((_, reject) => {
      timer = setTimeout(() => reject(new Error(`${what} timed out after ${ms} ms`)), ms);
    }),
  ]);
}
