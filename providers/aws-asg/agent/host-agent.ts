/**
 * The host agent: what runs on every EC2 host of the AWS provider. It is a small local controller built
 * from the project's own parts rather than a copy of them:
 *
 *   - a DockerProvider publishing editor ports on the host's loopback only (`publishHost`), from a
 *     persisted port pool, so no container on the host can reach a neighbour's editor through the
 *     host's addresses; the controller's gateway reaches them through the proxy below,
 *     and labelling containers with the swarm `host-<hostId>` so agents sharing an engine never meet;
 *   - an InstanceRegistry in the agent's state directory: the host's local store of instance → container → port;
 *   - a SwarmController over them (it owns the state-directory lock, reconciles on start-up, serialises
 *     operations per instance);
 *   - the project's Gateway as the user-facing authenticating proxy, checking links with the central
 *     gateway's Ed25519 public key (it cannot mint any) and signing its own sessions with this host's
 *     key (kept in its state directory), which no other host and not the central gateway accept; the
 *     central gateway comes in with this host's own token (UPSTREAM_HEADER), which this host already
 *     holds, so a compromised host gains nothing over its neighbours from it. Instances are reported
 *     with this proxy as their endpoint (`exposed`), the Host header naming the instance;
 *   - the project's IdleMonitor, whose stops are reported to the controller;
 *   - the control-plane API (agent-api.ts) the central controller drives it with.
 *
 * The central controller assigns instance ids, so creation registers the given id and asks the provider
 * directly (SwarmController.createInstance makes up its own ids); every other operation goes through
 * the SwarmController.
 */
import type { Readable } from 'node:stream';
import type { AddressInfo } from 'node:net';
import path from 'node:path';
import { DockerProvider } from '../../docker/docker-provider.js';
import type { InstanceConfigPatch, InstanceLogs, CommandResult, UpdateMode, VSCodeInstance } from '../../provider.js';
import { ActivityTracker } from '../../../src/activity/activity-tracker.js';
import { IdleMonitor } from '../../../src/activity/idle-monitor.js';
import { parseConfig, type SwarmConfig } from '../../../src/config.js';
import { KeyedMutex } from '../../../src/controller/keyed-mutex.js';
import { SwarmController } from '../../../src/controller/swarm-controller.js';
import { SwarmError, asSwarmError, invalidInput } from '../../../src/errors.js';
import { AccessLinks } from '../../../src/gateway/access-links.js';
import { parsePublicKey, publicKeyText, signingKeyFromSecret } from '../../../src/gateway/access-tokens.js';
import { Gateway } from '../../../src/gateway/gateway.js';
import { silentLogger, type Logger } from '../../../src/logger.js';
import { InstanceRegistry } from '../../../src/registry/instance-registry.js';
import { PACKAGE_VERSION } from '../../../src/version.js';
import { AgentApi } from './agent-api.js';
import {
  AccessEpochRequestSchema,
  CreateOnHostRequestSchema,
  ExecOnHostRequestSchema,
  HOST_ID_PATTERN,
  KeepAliveOnHostRequestSchema,
  PatchOnHostRequestSchema,
  StopOnHostRequestSchema,
  parseBody,
  type CreateOnHostResponse,
  type DrainResponse,
  type HostReport,
} from './agent-protocol.js';
import { EventReporter } from './event-reporter.js';
import { PortPool, portFreeOn, type PortRange } from './port-pool.js';

export interface AgentOptions {
  /** The EC2 instance id of this host (e.g. i-0123abcd); names its swarm label `host-<hostId>`. */
  hostId: string;
  /** Address the API and the proxy listen on (the host's private address on EC2). */
  bind: string;
  /** Address the editors' ports are published on; default 127.0.0.1, the host's loopback, out of containers' reach. */
  publishHost?: string;
  /** What container and volume names start with (DockerProvider's namePrefix). */
  namePrefix?: string;
  /** 0 picks a free port. */
  apiPort: number;
  /** 0 picks a free port. */
  proxyPort: number;
  /** Most containers (running or stopped) this host holds. */
  capacity: number;
  stateDir: string;
  /** Bearer token the controller presents on the API (and that the agent presents on its events). */
  token: string;
  /** The central gateway's Ed25519 public key (publicKeyText form): links are checked with it. */
  gatewayPublicKey?: string;
  /**
   * Deprecated: the central gateway's secret, from which its public key is derived. The secret can mint
   * links for every instance, so it should not be on a host; give `gatewayPublicKey` instead.
   */
  gatewaySecret?: string;
  baseDomain: string;
  /** Editor image when a create names none. */
  image: string;
  pullImages: boolean;
  idleTimeoutMinutes: number;
  idleCheckMs: number;
  controllerUrl?: string;
  portRange: PortRange;
  /** Seconds a graceful stop waits before killing the editor. */
  stopTimeoutSeconds: number;
  readinessTimeoutMs: number;
  /** Docker network shared by the host's containers. */
  network: string;
}

export interface AgentDeps {
  logger?: Logger;
  env?: NodeJS.ProcessEnv;
  now?: () => Date;
}

export { HOST_ID_PATTERN };

const STOPPABLE = new Set(['running', 'starting', 'unknown']);

export class HostAgent {
  readonly hostId: string;
  readonly config: SwarmConfig;
  readonly registry: InstanceRegistry;
  readonly provider: DockerProvider;
  readonly controller: SwarmController;
  readonly ports: PortPool;
  readonly events: EventReporter;
  private readonly gateway: Gateway;
  private readonly idle: IdleMonitor;
  private readonly api: AgentApi;
  private readonly logger: Logger;
  private readonly now: () => Date;
  private readonly locks = new KeyedMutex();
  /** Creates admitted but not registered yet: they count against capacity. */
  private readonly reserving = new Set<string>();
  private readonly inflight = new Set<Promise<unknown>>();
  private idleTimer?: NodeJS.Timeout;
  private draining?: Promise<DrainResponse>;
  private closed = false;
  apiUrl = '';
  proxyUrl = '';

  constructor(
    readonly options: AgentOptions,
    deps: AgentDeps = {},
  ) {
    if (!HOST_ID_PATTERN.test(options.hostId)) throw invalidInput('hostId', 'an EC2 instance id such as i-0123abcd (a-z, 0-9, "-")', options.hostId);
    const linkPublicKey = gatewayPublicKeyOf(options);
    this.hostId = options.hostId;
    this.now = deps.now ?? (() => new Date());
    this.logger = (deps.logger ?? silentLogger()).child({ component: 'host-agent', hostId: options.hostId });
    this.config = parseConfig({
      stateDir: options.stateDir,
      swarmId: `host-${options.hostId}`,
      defaultProvider: 'docker',
      providers: {
        docker: {
          image: options.image,
          pullImages: options.pullImages,
          publishHost: publishHostOf(options),
          network: options.network,
          stopTimeoutSeconds: options.stopTimeoutSeconds,
          readinessTimeoutMs: options.readinessTimeoutMs,
        },
      },
      // The central gateway is this proxy's main client, from one address for all its users: no lower
      // per-address cap than the total (the security group admits only the controller).
      gateway: { enabled: true, host: options.bind, port: options.proxyPort, baseDomain: options.baseDomain, autoStart: true, maxConnectionsPerAddress: 4_096 },
      idle: { enabled: true, timeoutMinutes: options.idleTimeoutMinutes, checkIntervalMs: options.idleCheckMs },
      // The central controller decides whether exec is allowed; the token guards this API.
      exec: { enabled: true, timeoutMs: 3_600_000 },
      health: { enabled: false },
    }, 'agent');
    this.ports = new PortPool({ file: path.join(this.config.stateDir, 'ports.json'), range: options.portRange, isFree: portFreeOn(publishHostOf(options)), logger: this.logger });
    this.provider = new DockerProvider({
      defaultImage: options.image,
      publishHost: publishHostOf(options),
      hostPortFor: (id) => this.ports.portOf(id),
      network: options.network,
      swarmId: this.config.swarmId,
      ...(options.namePrefix !== undefined ? { namePrefix: options.namePrefix } : {}),
      pullImages: options.pullImages,
      readinessTimeoutMs: options.readinessTimeoutMs,
      stopTimeoutSeconds: options.stopTimeoutSeconds,
      env: deps.env ?? process.env,
      logger: this.logger,
    });
    this.registry = new InstanceRegistry({ stateDir: this.config.stateDir, logger: this.logger });
    const access = new AccessLinks(this.config.gateway, this.config.stateDir, Date.now, { linkPublicKey });
    this.controller = new SwarmController({
      config: this.config,
      registry: this.registry,
      providers: { docker: this.provider },
      access,
      activity: new ActivityTracker(),
      logger: this.logger,
      lockStateDir: true,
      ...(deps.now ? { now: deps.now } : {}),
    });
    this.gateway = new Gateway({ controller: this.controller, access, activity: this.controller.activity, config: this.config.gateway, logger: this.logger, upstreamToken: options.token });
    this.idle = new IdleMonitor({ controller: this.controller, activity: this.controller.activity, checkIntervalMs: options.idleCheckMs, logger: this.logger });
    this.events = new EventReporter({ token: options.token, logger: this.logger, ...(options.controllerUrl ? { url: options.controllerUrl } : {}) });
    this.api = new AgentApi({ agent: this, token: options.token, logger: this.logger });
  }

  /** Loads the state, reconciles with the engine, and starts the proxy, the API and the idle monitor. */
  async start(): Promise<void> {
    try {
      await this.ports.load();
      const { unavailable } = await this.controller.initialize();
      if (unavailable.length) throw new SwarmError('PROVIDER_UNAVAILABLE', unavailable.map((p) => p.reason).join('; '));
      await this.reconcilePorts();
      const proxy = await this.gateway.listen().catch((err: Error) => {
        throw new SwarmError('CONFLICT', `proxy: cannot listen on ${this.options.bind}:${this.options.proxyPort} (${err.message})`, { cause: err });
      });
      this.proxyUrl = `http://${hostForUrl(proxy.host)}:${proxy.port}`;
      const api = await this.api.listen(this.options.apiPort, this.options.bind).catch((err: Error) => {
        throw new SwarmError('CONFLICT', `api: cannot listen on ${this.options.bind}:${this.options.apiPort} (${err.message})`, { cause: err });
      });
      this.apiUrl = `http://${hostForUrl(this.options.bind)}:${(api as AddressInfo).port}`;
      this.idleTimer = setInterval(() => void this.sweepIdle(), this.options.idleCheckMs);
      this.logger.info({ api: this.apiUrl, proxy: this.proxyUrl, capacity: this.options.capacity, instances: this.registry.size }, 'host agent ready');
    } catch (err) {
      await this.close().catch(() => undefined);
      throw err;
    }
  }

  /** Capacity and load, as the controller's placement sees them. */
  async hostReport(): Promise<HostReport> {
    const containers = await this.provider.listInstances();
    const running = containers.filter((i) => i.status === 'running' || i.status === 'starting');
    const used = this.used();
    const range = this.ports.range;
    return {
      hostId: this.hostId,
      capacity: this.options.capacity,
      used,
      free: Math.max(0, this.options.capacity - used),
      draining: this.draining !== undefined,
      version: PACKAGE_VERSION,
      load: {
        containers: containers.length,
        running: running.length,
        memoryMb: running.reduce((sum, i) => sum + i.config.resources.memoryMb, 0),
        cpus: Math.round(running.reduce((sum, i) => sum + i.config.resources.cpu, 0) * 100) / 100,
      },
      ports: { range: `${range.first}-${range.last}`, used: this.ports.used, free: Math.max(0, this.ports.size - this.ports.used) },
      api: this.apiUrl,
      proxy: this.proxyUrl,
    };
  }

  /**
   * An instance as the controller is told of it: its endpoint is this host's proxy, with the Host header
   * naming the instance (the editor's own port answers on the host's loopback only).
   */
  exposed(instance: VSCodeInstance): VSCodeInstance {
    if (!instance.endpoint || !this.proxyUrl) return instance;
    const port = Number(new URL(this.proxyUrl).port);
    return { ...instance, endpoint: { url: this.proxyUrl, host: this.options.bind, port, hostHeader: `${instance.id}.${this.options.baseDomain}` } };
  }

  /** Every instance on this host, refreshed from the engine. */
  listInstances(): Promise<VSCodeInstance[]> {
    return this.controller.listInstances({ includeWarm: true });
  }

  getInstance(instanceId: string): Promise<VSCodeInstance> {
    return this.controller.getInstance(instanceId);
  }

  /**
   * Creates and starts an instance under the id the controller chose; an id already here is returned as
   * it is. Refused (CONFLICT, details.reason HOST_FULL / HOST_DRAINING) when the host is full or draining.
   */
  async createInstance(body: unknown): Promise<CreateOnHostResponse> {
    const req = parseBody(CreateOnHostRequestSchema, body);
    const id = req.instanceId;
    return this.track(
      this.locks.run(id, async () => {
        if (this.registry.get(id)) return { instance: await this.controller.getInstance(id), created: false };
        this.admit(id);
        try {
          const config = { ...req.config, image: req.config.image ?? this.options.image };
          checkResources(config.resources, this.provider);
          await this.ports.allocate(id);
          const at = this.now().toISOString();
          await this.registry.register({
            id, name: config.name, providerType: 'docker', status: 'creating', health: 'unknown', config, providerRef: {},
            createdAt: at, updatedAt: at, desiredState: 'running',
            ...(req.accessEpoch !== undefined ? { accessEpoch: req.accessEpoch } : {}),
          });
          this.reserving.delete(id); // counted by the registry from here on
          try {
            const observed = await this.provider.createInstance(config, { instanceId: id });
            this.controller.activity.touch(id, 'create');
            await this.registry.update(id, (current) => ({
              ...current,
              status: observed.status,
              statusReason: observed.statusReason,
              endpoint: observed.endpoint,
              providerRef: observed.providerRef,
              health: observed.health,
              config: { ...current.config, image: observed.config.image, resources: observed.config.resources },
              lastActivity: { at: this.now().toISOString(), source: 'create' },
            }));
          } catch (err) {
            // The provider removed what it made; drop the record and the port so nothing is left behind.
            await this.registry.remove(id).catch((e) => this.logger.error({ instanceId: id, err: (e as Error).message }, 'could not drop the record of a failed create'));
            await this.ports.release(id).catch(() => undefined);
            throw asSwarmError(err, 'PROVIDER_ERROR');
          }
          this.logger.info({ instanceId: id, port: this.ports.portOf(id) }, 'instance created');
          return { instance: await this.controller.getInstance(id), created: true };
        } catch (err) {
          if (!this.registry.get(id)) await this.ports.release(id).catch(() => undefined);
          throw err;
        } finally {
          this.reserving.delete(id);
        }
      }),
    );
  }

  async startInstance(instanceId: string): Promise<VSCodeInstance> {
    this.registry.require(checkId(instanceId));
    if (this.draining) throw this.drainingError();
    // A container re-created around its workspace publishes on the instance's port again.
    await this.ports.allocate(instanceId);
    return this.track(this.controller.startInstance(instanceId));
  }

  stopInstance(instanceId: string, body: unknown = {}): Promise<VSCodeInstance> {
    const req = parseBody(StopOnHostRequestSchema, body);
    return this.track(this.controller.stopInstance(instanceId, { force: req.force ?? false, reason: req.reason ?? (req.force ? 'stopped by the controller (forced)' : 'stopped by the controller') }));
  }

  async deleteInstance(instanceId: string, keepWorkspace: boolean): Promise<{ instanceId: string; deleted: true; workspaceKept: boolean }> {
    const result = await this.track(this.controller.deleteInstance(instanceId, { keepWorkspace }));
    await this.ports.release(instanceId);
    return result;
  }

  async updateInstance(instanceId: string, body: unknown): Promise<VSCodeInstance & { updateMode: UpdateMode }> {
    const patch: InstanceConfigPatch = parseBody(PatchOnHostRequestSchema, body);
    this.registry.require(checkId(instanceId));
    await this.ports.allocate(instanceId);
    return this.track(this.controller.updateInstance(instanceId, patch));
  }

  getLogs(instanceId: string, options: { tail?: number; since?: string }): Promise<InstanceLogs> {
    return this.controller.getInstanceLogs(instanceId, options);
  }

  exec(instanceId: string, body: unknown): Promise<CommandResult> {
    const req = parseBody(ExecOnHostRequestSchema, body);
    return this.controller.executeCommand(instanceId, req.command, { timeoutMs: req.timeoutMs ?? 30_000 });
  }

  /** The workspace as a tar stream (works on a stopped instance): the source side of a migration. */
  async exportWorkspace(instanceId: string): Promise<Readable> {
    this.registry.require(checkId(instanceId));
    return this.provider.exportWorkspace(instanceId);
  }

  /** Unpacks a tar stream into the workspace as it arrives: the target side of a migration. */
  async importWorkspace(instanceId: string, archive: Readable): Promise<void> {
    try {
      this.registry.require(checkId(instanceId));
    } catch (err) {
      archive.destroy(); // the provider takes the stream over; refused before it, it is dropped here
      throw err;
    }
    await this.track(this.provider.importWorkspace(instanceId, archive));
  }

  /** Follows a revocation at the controller: links and sessions of earlier epochs stop working here. */
  async setAccessEpoch(instanceId: string, body: unknown): Promise<VSCodeInstance> {
    const { accessEpoch } = parseBody(AccessEpochRequestSchema, body);
    let current = this.registry.require(checkId(instanceId)).accessEpoch ?? 0;
    if (accessEpoch - current > 1_000) throw invalidInput('accessEpoch', `at most 1000 above the current epoch ${current}`, accessEpoch);
    // Bumped through the controller, under its per-instance lock, one step at a time.
    while (current < accessEpoch) {
      await this.controller.issueAccessLink(instanceId, { revokeExisting: true });
      current = this.registry.require(instanceId).accessEpoch ?? 0;
    }
    return this.controller.getInstance(instanceId);
  }

  /** A lease the idle monitor honours: the controller's keep-alive, forwarded. */
  keepAlive(instanceId: string, body: unknown): Promise<VSCodeInstance> {
    const req = parseBody(KeepAliveOnHostRequestSchema, body);
    return this.controller.keepAlive(instanceId, req.minutes, req.holder);
  }

  /**
   * Stops taking work and stops every container, keeping the workspaces: before the ASG terminates the
   * host. Waits for operations in flight first. Reports `draining` and then `drained` to the controller.
   * Calling it again returns the same outcome.
   */
  drain(reason?: string): Promise<DrainResponse> {
    this.draining ??= this.runDrain(reason);
    return this.draining;
  }

  get isDraining(): boolean {
    return this.draining !== undefined;
  }

  /** Stops the idle monitor, the API and the proxy, and releases the state directory (containers keep running). */
  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    clearInterval(this.idleTimer);
    await this.idle.stop();
    await this.api.close().catch(() => undefined);
    await this.gateway.close().catch(() => undefined);
    await Promise.allSettled([...this.inflight]);
    await this.events.settle();
    await this.ports.flush();
    await this.controller.close();
  }

  // ---- internals ----

  private async runDrain(reason?: string): Promise<DrainResponse> {
    const why = `host ${this.hostId} is draining${reason ? ` (${reason})` : ''}`;
    this.logger.info({ reason }, 'draining: no new instances; stopping every container, keeping workspaces');
    // Nothing started from here on: the proxy shows a page instead of starting a stopped workspace.
    this.config.gateway.autoStart = false;
    clearInterval(this.idleTimer);
    const announced = this.events.report({ type: 'draining', hostId: this.hostId });
    await Promise.allSettled([...this.inflight]);
    const instances = await this.controller.listInstances({ includeWarm: true }).catch(() => this.registry.list());
    const failed: DrainResponse['failed'] = [];
    await Promise.all(
      instances.map(async (instance) => {
        if (!STOPPABLE.has(instance.status)) return;
        try {
          await this.controller.stopInstance(instance.id, { reason: why, by: 'provider' });
        } catch (err) {
          failed.push({ instanceId: instance.id, error: asSwarmError(err).message });
        }
      }),
    );
    const drained = instances.map((i) => i.id).sort();
    this.logger.info({ drained, failed }, 'drained');
    await announced; // the controller hears `draining` before `drained`
    await this.events.report({ type: 'drained', hostId: this.hostId, instances: drained });
    return { drained, failed };
  }

  private async sweepIdle(): Promise<void> {
    if (this.draining || this.closed) return;
    try {
      const report = await this.idle.sweep();
      for (const { instanceId, reason } of report.stopped) void this.events.report({ type: 'idle-stopped', hostId: this.hostId, instanceId, reason: reason.slice(0, 512) });
    } catch (err) {
      this.logger.warn({ err: (err as Error).message }, 'idle sweep failed');
    }
  }

  /** Admits a create against capacity and drain, reserving its slot. */
  private admit(id: string): void {
    if (this.draining) throw this.drainingError();
    const used = this.used();
    if (used >= this.options.capacity) {
      throw new SwarmError('CONFLICT', `host ${this.hostId} is full (${used} of ${this.options.capacity})`, {
        details: { reason: 'HOST_FULL', hostId: this.hostId, capacity: this.options.capacity, used },
      });
    }
    this.reserving.add(id);
  }

  private used(): number {
    // A create is in `reserving` until its record is written, and the registry holds the record from the
    // moment the write starts: count it once, or concurrent creates are refused below capacity.
    let reserving = 0;
    for (const id of this.reserving) if (!this.registry.get(id)) reserving++;
    return this.registry.size + reserving;
  }

  private drainingError(): SwarmError {
    return new SwarmError('CONFLICT', `host ${this.hostId} is draining and takes no new work`, { details: { reason: 'HOST_DRAINING', hostId: this.hostId } });
  }

  /** Ports and registry agree after a restart: leftovers released, ports of adopted instances recorded. */
  private async reconcilePorts(): Promise<void> {
    for (const id of Object.keys(this.ports.assignments())) {
      if (!this.registry.get(id)) {
        await this.ports.release(id);
        this.logger.info({ instanceId: id }, 'released the port of an instance this host no longer has');
      }
    }
    for (const instance of this.registry.list()) {
      const port = instance.endpoint?.port;
      if (port !== undefined && this.ports.portOf(instance.id) !== port && !(await this.ports.claim(instance.id, port))) {
        this.logger.warn({ instanceId: instance.id, port }, 'an instance publishes on a port the pool gave another; it keeps it until re-created');
      }
    }
  }

  private track<T>(work: Promise<T>): Promise<T> {
    this.inflight.add(work);
    const done = (): void => {
      this.inflight.delete(work);
    };
    work.then(done, done);
    return work;
  }
}

/** Builds the agent and starts it: the entry point of `vscode-swarm agent` and of tests. */
export async function runAgent(options: AgentOptions, deps: AgentDeps = {}): Promise<HostAgent> {
  const agent = new HostAgent(options, deps);
  await agent.start();
  return agent;
}

/** The key links are checked with: the one given, else derived from the (deprecated) shared secret. */
function gatewayPublicKeyOf(options: AgentOptions): string {
  if (options.gatewayPublicKey) {
    parsePublicKey(options.gatewayPublicKey, 'gatewayPublicKey');
    return options.gatewayPublicKey;
  }
  if (options.gatewaySecret === undefined) throw invalidInput('gatewayPublicKey', "the central gateway's Ed25519 public key (or the deprecated gatewaySecret)");
  if (options.gatewaySecret.length < 32) throw invalidInput('gatewaySecret', 'at least 32 characters');
  return publicKeyText(signingKeyFromSecret(options.gatewaySecret));
}

function publishHostOf(options: AgentOptions): string {
  return options.publishHost ?? '127.0.0.1';
}

function checkId(instanceId: string): string {
  if (!/^[a-z0-9][a-z0-9-]{0,62}$/.test(instanceId)) throw invalidInput('instanceId', 'an instance id of 1-63 characters a-z, 0-9 and "-"', instanceId);
  return instanceId;
}

function checkResources(resources: { cpu: number; memoryMb: number }, provider: DockerProvider): void {
  const { minCpu, maxCpu, minMemoryMb, maxMemoryMb } = provider.getCapabilities().resourceLimits;
  if (resources.cpu < minCpu || resources.cpu > maxCpu) throw invalidInput('config.resources.cpu', `between ${minCpu} and ${maxCpu} cores on this host`, resources.cpu);
  if (resources.memoryMb < minMemoryMb || resources.memoryMb > maxMemoryMb) {
    throw invalidInput('config.resources.memoryMb', `between ${minMemoryMb} and ${maxMemoryMb} MiB on this host`, resources.memoryMb);
  }
}

function hostForUrl(host: string): string {
  return host.includes(':') ? `[${host}]` : host;
}
