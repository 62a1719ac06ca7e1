/**
 * What stands behind the emulator's Machines and volumes: real containers and named volumes on the local
 * Docker engine. A Machine's root filesystem is ephemeral on Fly (rebuilt from the image at each boot),
 * so each start makes a fresh container and each stop removes it; only the volumes keep data.
 *
 * Everything made here carries the emulator's own `fly-emulator.*` labels and never `vscode-swarm.*`
 * ones: the Docker provider adopts whatever is labelled `vscode-swarm.managed=true`.
 */
import Docker from 'dockerode';
import { createHash } from 'node:crypto';
import os from 'node:os';
import { PassThrough } from 'node:stream';
import { CappedCollector } from '../../../src/streams/capped-collector.js';

export const LABEL_EMULATOR = 'fly-emulator.emulator';
export const LABEL_PID = 'fly-emulator.pid';
export const LABEL_APP = 'fly-emulator.app';
export const LABEL_MACHINE = 'fly-emulator.machine';
export const LABEL_INSTANCE = 'fly-emulator.instance';
export const LABEL_VOLUME = 'fly-emulator.volume';
export const LABEL_SNAPSHOT = 'fly-emulator.snapshot';

export interface MachineRunSpec {
  app: string;
  machineId: string;
  instanceId: string;
  region: string;
  image: string;
  entrypoint?: string[] | undefined;
  cmd?: string[] | undefined;
  env: Record<string, string>;
  cpus: number;
  memoryMb: number;
  /** Docker volume name → mount path. */
  mounts: Array<{ dockerVolume: string; path: string }>;
  restart?: { policy?: string; max_retries?: number } | undefined;
}

export interface ExecResult {
  exitCode: number | null;
  stdout: string;
  stderr: string;
  timedOut: boolean;
}

export class DockerBackend {
  private readonly hostCpus: number;

  constructor(
    readonly docker: Docker,
    readonly emulatorId: string,
    readonly network: string,
  ) {
    this.hostCpus = os.availableParallelism();
  }

  async ensureNetwork(): Promise<void> {
    try {
      await this.docker.getNetwork(this.network).inspect();
      return;
    } catch (err) {
      if (statusCode(err) !== 404) throw err;
    }
    await this.docker
      .createNetwork({
        Name: this.network,
        Driver: 'bridge',
        Options: { 'com.docker.network.bridge.enable_icc': 'false' },
        Labels: { 'fly-emulator.network': 'true' },
      })
      .catch((err) => {
        if (statusCode(err) !== 409) throw err; // made meanwhile by someone else
      });
  }

  async imageExists(image: string): Promise<boolean> {
    try {
      await this.docker.getImage(image).inspect();
      return true;
    } catch (err) {
      if (statusCode(err) === 404) return false;
      throw err;
    }
  }

  dockerVolumeName(volumeId: string): string {
    return `fly-emu-${this.emulatorId}-${volumeId}`;
  }

  async createVolume(app: string, volumeId: string): Promise<string> {
    const name = this.dockerVolumeName(volumeId);
    await this.docker.createVolume({ Name: name, Labels: this.labels({ [LABEL_APP]: app, [LABEL_VOLUME]: volumeId }) });
    return name;
  }

  /** A named volume holding one volume snapshot's copy of the data. */
  async createSnapshotVolume(app: string, volumeId: string, snapshotId: string): Promise<string> {
    const name = `fly-emu-${this.emulatorId}-${snapshotId}`;
    await this.docker.createVolume({ Name: name, Labels: this.labels({ [LABEL_APP]: app, [LABEL_VOLUME]: volumeId, [LABEL_SNAPSHOT]: snapshotId }) });
    return name;
  }

  /**
   * Copies every file of one named volume into another (owners, modes and times kept) through the engine's
   * archive API: two containers of `image` are made with the volumes mounted and never started, the source
   * is read as a tar and written into the target. Answers the tar's size and SHA-256 (a snapshot's `size`
   * and `digest`).
   */
  async copyVolume(from: string, to: string, image: string): Promise<{ bytes: number; digest: string }> {
    const helper = (volume: string, role: string): Promise<Docker.Container> =>
      this.docker.createContainer({
        name: `fly-emu-${this.emulatorId}-copy-${role}-${Date.now().toString(36)}${Math.random().toString(36).slice(2, 6)}`,
        Image: image,
        Entrypoint: ['/bin/true'],
        Labels: this.labels({}),
        NetworkDisabled: true,
        HostConfig: { Mounts: [{ Type: 'volume', Source: volume, Target: '/fly-volume' }] },
      });
    const source = await helper(from, 'from');
    let target: Docker.Container | undefined;
    try {
      target = await helper(to, 'to');
      const archive = (await source.getArchive({ path: '/fly-volume/.' })) as NodeJS.ReadableStream;
      const hash = createHash('sha256');
      let bytes = 0;
      const counted = new PassThrough();
      counted.on('data', (chunk: Buffer) => {
        bytes += chunk.length;
        hash.update(chunk);
      });
      archive.on('error', (err) => counted.destroy(err as Error));
      archive.pipe(counted);
      await target.putArchive(counted, { path: '/fly-volume' });
      return { bytes, digest: `sha256:${hash.digest('hex')}` };
    } finally {
      await source.remove({ force: true }).catch(() => undefined);
      await target?.remove({ force: true }).catch(() => undefined);
    }
  }

  async removeVolume(name: string): Promise<void> {
    await this.docker
      .getVolume(name)
      .remove()
      .catch((err) => {
        if (statusCode(err) !== 404) throw err;
      });
  }

  /** Makes and starts a fresh container for one boot of a Machine; answers its address on the network. */
  async run(spec: MachineRunSpec): Promise<{ containerId: string; ip: string }> {
    const name = `fly-emu-${this.emulatorId}-${spec.machineId}`;
    await this.docker.getContainer(name).remove({ force: true }).catch(() => undefined);
    const env = {
      ...spec.env,
      FLY_APP_NAME: spec.app,
      FLY_MACHINE_ID: spec.machineId,
      FLY_ALLOC_ID: spec.machineId,
      FLY_MACHINE_VERSION: spec.instanceId,
      FLY_REGION: spec.region,
      FLY_IMAGE_REF: spec.image,
    };
    const container = await this.docker.createContainer({
      name,
      Image: spec.image,
      ...(spec.entrypoint ? { Entrypoint: spec.entrypoint } : {}),
      ...(spec.cmd ? { Cmd: spec.cmd } : {}),
      Hostname: spec.machineId,
      Env: Object.entries(env).map(([k, v]) => `${k}=${v}`),
      Labels: this.labels({ [LABEL_APP]: spec.app, [LABEL_MACHINE]: spec.machineId, [LABEL_INSTANCE]: spec.instanceId }),
      HostConfig: {
        NetworkMode: this.network,
        // A shared vCPU may burst to a whole core; the engine cannot give more cores than the host has.
        NanoCpus: Math.round(Math.min(spec.cpus, this.hostCpus) * 1e9),
        Memory: spec.memoryMb * 2 ** 20,
        MemorySwap: spec.memoryMb * 2 ** 20,
        Mounts: spec.mounts.map((m) => ({ Type: 'volume' as const, Source: m.dockerVolume, Target: m.path })),
        RestartPolicy: restartPolicy(spec.restart),
        SecurityOpt: ['no-new-privileges'],
        CapDrop: ['ALL'],
        PidsLimit: 4096,
        LogConfig: { Type: 'json-file', Config: { 'max-size': '10m', 'max-file': '2' } },
      },
    });
    try {
      await container.start();
      const info = await container.inspect();
      return { containerId: info.Id, ip: info.NetworkSettings.Networks?.[this.network]?.IPAddress ?? '' };
    } catch (err) {
      await container.remove({ force: true }).catch(() => undefined);
      throw err;
    }
  }

  /** Stops one boot of a Machine (signal, then SIGKILL after the grace period) and removes its container. */
  async stop(containerId: string, signal: string, timeoutSeconds: number): Promise<void> {
    const container = this.docker.getContainer(containerId);
    await this.unpause(containerId).catch(() => undefined); // a suspended Machine is stopped from where it froze
    try {
      if (signal === 'SIGKILL') await container.kill();
      else if (signal === 'SIGTERM') await container.stop({ t: timeoutSeconds });
      else {
        await container.kill({ signal });
        const exited = await Promise.race([container.wait().then(() => true), delay(timeoutSeconds * 1000).then(() => false)]);
        if (!exited) await container.kill();
      }
    } catch (err) {
      const code = statusCode(err);
      if (code !== 304 && code !== 404 && code !== 409) throw err; // already stopped or gone
    }
    await this.remove(containerId);
  }

  /** Suspend: the processes are frozen with their memory kept (Fly snapshots it; the engine pauses). */
  async pause(containerId: string): Promise<void> {
    await this.docker.getContainer(containerId).pause();
  }

  async unpause(containerId: string): Promise<void> {
    await this.docker
      .getContainer(containerId)
      .unpause()
      .catch((err) => {
        if (statusCode(err) !== 409 && statusCode(err) !== 304) throw err; // not paused
      });
  }

  async remove(containerId: string): Promise<void> {
    await this.docker
      .getContainer(containerId)
      .remove({ force: true })
      .catch((err) => {
        if (statusCode(err) !== 404 && statusCode(err) !== 409) throw err;
      });
  }

  /** Whether a Machine's container still runs: false when it exited or was removed behind the emulator's back. */
  async isRunning(containerId: string): Promise<boolean> {
    try {
      const info = await this.docker.getContainer(containerId).inspect();
      return info.State.Running || info.State.Restarting;
    } catch (err) {
      if (statusCode(err) === 404) return false;
      throw err;
    }
  }

  async exec(containerId: string, argv: string[], timeoutMs: number, maxBytes: number): Promise<ExecResult> {
    const container = this.docker.getContainer(containerId);
    const exec = await container.exec({ Cmd: argv, AttachStdout: true, AttachStderr: true });
    const stream = (await exec.start({ hijack: true, stdin: false })) as NodeJS.ReadableStream & { destroy(): void };
    const stdout = new CappedCollector(maxBytes);
    const stderr = new CappedCollector(maxBytes);
    this.docker.modem.demuxStream(stream, stdout, stderr);
    let timedOut = false;
    await new Promise<void>((resolve) => {
      const timer = setTimeout(() => {
        timedOut = true;
        stream.destroy();
        resolve();
      }, timeoutMs);
      const done = (): void => {
        clearTimeout(timer);
        resolve();
      };
      stream.on('end', done);
      stream.on('close', done);
      stream.on('error', done);
    });
    const inspected = await exec.inspect().catch(() => undefined);
    return {
      exitCode: inspected?.Running ? null : (inspected?.ExitCode ?? null),
      stdout: stdout.text(),
      stderr: stderr.text(),
      timedOut,
    };
  }

  /** Removes every container and volume this emulator made. */
  async removeAll(): Promise<void> {
    await removeLabelled(this.docker, `${LABEL_EMULATOR}=${this.emulatorId}`);
  }

  private labels(extra: Record<string, string>): Record<string, string> {
    return { [LABEL_EMULATOR]: this.emulatorId, [LABEL_PID]: String(process.pid), ...extra };
  }
}

/**
 * Removes what emulators of processes that no longer run left behind (a test run killed mid-way).
 * Emulators of live processes, possibly another suite running now, are left alone.
 */
export async function removeFlyEmulatorLeftovers(docker: Docker = new Docker()): Promise<number> {
  const containers = await docker.listContainers({ all: true, filters: { label: [LABEL_EMULATOR] } });
  const { Volumes } = await docker.listVolumes({ filters: { label: [LABEL_EMULATOR] } });
  const dead = new Set<string>();
  for (const labels of [...containers.map((c) => c.Labels), ...(Volumes ?? []).map((v) => v.Labels ?? {})]) {
    const pid = Number(labels[LABEL_PID]);
    if (!pidAlive(pid)) dead.add(labels[LABEL_EMULATOR]!);
  }
  for (const id of dead) await removeLabelled(docker, `${LABEL_EMULATOR}=${id}`);
  return dead.size;
}

async function removeLabelled(docker: Docker, label: string): Promise<void> {
  const containers = await docker.listContainers({ all: true, filters: { label: [label] } });
  await Promise.all(containers.map((c) => docker.getContainer(c.Id).remove({ force: true }).catch(() => undefined)));
  const { Volumes } = await docker.listVolumes({ filters: { label: [label] } });
  await Promise.all((Volumes ?? []).map((v) => docker.getVolume(v.Name).remove().catch(() => undefined)));
}

function pidAlive(pid: number): boolean {
  if (!Number.isInteger(pid) || pid <= 0) return false;
  try {
    process.kill(pid, 0);
    return true;
  } catch (err) {
    return (err as NodeJS.ErrnoException).code === 'EPERM';
  }
}

function restartPolicy(restart: MachineRunSpec['restart']): { Name: string; MaximumRetryCount?: number } {
  switch (restart?.policy) {
    case 'always':
      return { Name: 'always' };
    case 'no':
      return { Name: 'no' };
    default: // Fly's default is on-failure
      return { Name: 'on-failure', MaximumRetryCount: restart?.max_retries ?? 10 };
  }
}

export function statusCode(err: unknown): number | undefined {
  return (err as { statusCode?: number })?.statusCode;
}

function delay(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}
