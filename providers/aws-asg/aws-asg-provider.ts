/**
 * The AWS provider: an Auto Scaling Group of EC2 hosts, each running the host agent (agent/), which
 * runs the editors as Docker containers. This class is the central side: it discovers the group's hosts,
 * places each new instance on one, keeps a buffer of free container slots by setting the group's desired
 * capacity, protects busy hosts from scale-in and terminates hosts that stayed empty past a cool-down.
 * Every instance operation is delegated to the agent on the host that holds the instance.
 *
 * Discovery is batched: one DescribeAutoScalingGroups and one paginated DescribeInstances per refresh,
 * cached for `hostCacheTtlMs` and refreshed by the background loop, by a create waiting for a new host,
 * or on a miss. A user request in the steady state makes no AWS call at all, only calls to agents.
 *
 * Placement policy: among hosts that are InService, Healthy in the group, answering their agent with our
 * token, not draining and not being retired, pick the one with the most free slots (spreads load and
 * keeps a busy host's neighbours few); ties go to the lowest host id (stable, testable). Free slots are
 * min(agent capacity, perHostCapacity) − what the agent reported in use − creates this provider has in
 * flight on that host. Placement decisions are serialised (one queue), so concurrent creates never see
 * the same free slot; ports and containers are then the agent's to assign, each agent serialising its
 * own pool.
 *
 * Scaling rules: desired = clamp(ceil((used + in flight + waiting creates + bufferSlots) / perHostCapacity),
 * min, max), applied with SetDesiredCapacity only when it is above the group's current desired capacity
 * (scale-out; one call per decision). Scale-in never lowers the desired capacity blindly (the group would
 * pick the victim): the loop terminates a specific host that has been empty for `scaleInCooldownMs`, with
 * TerminateInstanceInAutoScalingGroup ShouldDecrementDesiredCapacity=true, while the hosts left still cover
 * that target and the group's min size. Hosts holding containers are protected from scale-in
 * (SetInstanceProtection, batched per flag), empty ones are not.
 *
 * Retries: AWS calls rely on the SDK's own retry strategy (maxAttempts, standard or adaptive mode) and are
 * deliberately not wrapped in p-retry as well, so the two never multiply each other's attempts. Agent
 * calls retry with p-retry (agent-client.ts), for idempotent operations only.
 */
import type { Readable } from 'node:stream';
import {
  AutoScalingClient,
  DescribeAutoScalingGroupsCommand,
  SetDesiredCapacityCommand,
  SetInstanceProtectionCommand,
  TerminateInstanceInAutoScalingGroupCommand,
  type AutoScalingClientConfig,
  type AutoScalingGroup,
} from '@aws-sdk/client-auto-scaling';
import { EC2Client, paginateDescribeInstances } from '@aws-sdk/client-ec2';
import { timingSafeEqual } from 'node:crypto';
import { readFile } from 'node:fs/promises';
import { setTimeout as sleep } from 'node:timers/promises';
import { SwarmError, asSwarmError, isSwarmError } from '../../src/errors.js';
import { silentLogger, type Logger } from '../../src/logger.js';
import type {
  CommandResult,
  CreateOptions,
  DeleteOptions,
  ExecOptions,
  InstanceConfig,
  InstanceConfigPatch,
  InstanceFilter,
  InstanceLogs,
  LogOptions,
  Provider,
  ProviderCapabilities,
  StartOptions,
  UpdateMode,
  UpdateOptions,
  VSCodeInstance,
} from '../provider.js';
import { applyInstanceFilter } from '../provider.js';
import type { HostReport } from './agent/agent-protocol.js';
import { AgentClient, type AgentRetryOptions } from './agent-client.js';

export interface AwsAsgProviderOptions {
  /** AWS region; AWS_REGION / AWS_DEFAULT_REGION from `env` when absent. */
  region?: string;
  /** The Auto Scaling group whose hosts run the agent. */
  groupName: string;
  /** One endpoint for both services (e.g. a local emulator, which tells them apart by API version). */
  endpoint?: string;
  autoScalingEndpoint?: string;
  ec2Endpoint?: string;
  /** Static credentials or a provider; the SDK's standard chain (environment, profile, instance role) when absent. */
  credentials?: AutoScalingClientConfig['credentials'];
  /** SDK attempts per AWS call (the SDK retries throttling and 5xx itself); default 5. */
  maxAttempts?: number;
  retryMode?: 'standard' | 'adaptive';
  /** Per-attempt HTTP timeout of an AWS call; default 10 s. */
  awsRequestTimeoutMs?: number;
  /** The agents' control-API port (the same on every host). */
  agentPort?: number;
  /** The bearer token the agents run with (--token); else the variable `agentTokenEnv` of `env`, else `agentTokenFile`. */
  agentToken?: string;
  /** Default VSCODE_SWARM_AWS_AGENT_TOKEN. */
  agentTokenEnv?: string;
  agentTokenFile?: string;
  env?: NodeJS.ProcessEnv;
  /** Containers per host; the agents' --capacity should match (the smaller of the two is used). */
  perHostCapacity?: number;
  /** Free container slots kept ready. */
  bufferSlots?: number;
  /** Editor image when a config names none (the agent's --image otherwise). */
  defaultImage: string;
  /** How long a discovery is reused; default 10 s. */
  hostCacheTtlMs?: number;
  /** Timeout of an ordinary agent call; default 15 s. */
  agentTimeoutMs?: number;
  /** Timeout of agent calls that start an editor (create, start, update); default 180 s. */
  agentCreateTimeoutMs?: number;
  agentRetry?: AgentRetryOptions;
  /** How long a create holds waiting for a new host when every host is full; default 10 min. */
  hostWaitTimeoutMs?: number;
  /** How often a holding create looks for the new host; default 2 s. */
  hostPollMs?: number;
  /** A host empty this long is terminated (when not needed for min size or buffer); default 10 min. */
  scaleInCooldownMs?: number;
  /** Period of the background loop (discovery, protection, scale-in); default 15 s. */
  reconcileIntervalMs?: number;
  logger?: Logger;
  now?: () => number;
}

interface HostState {
  id: string;
  ip?: string;
  lifecycle: string;
  healthStatus: string;
  protected: boolean;
  client?: AgentClient;
  report?: HostReport;
  /** The agent answered our last check with a report of the right host. */
  reachable: boolean;
  unreachableReason?: string;
  authFailed: boolean;
  /** Instances placed on it whose create has not returned yet. */
  inflight: Set<string>;
  /** Our count of instances on it: the last report, adjusted by our own creates and deletes since. */
  used: number;
  /** Bumped on every local change of `used`/`inflight`, so a report fetched meanwhile is not trusted for them. */
  epoch: number;
  emptySince?: number;
  /** Chosen for scale-in: no placement on it. */
  retiring: boolean;
}

interface GroupView {
  minSize: number;
  maxSize: number;
  desired: number;
}

const DEFAULT_AGENT_PORT = 9100;
const SCALE_GATHER_MS = 100;

export class AwsAsgProvider implements Provider {
  readonly type = 'aws-asg' as const;
  private readonly logger: Logger;
  private readonly now: () => number;
  private readonly o: Required<
    Pick<
      AwsAsgProviderOptions,
      | 'agentPort' | 'perHostCapacity' | 'bufferSlots' | 'hostCacheTtlMs' | 'agentTimeoutMs' | 'agentCreateTimeoutMs'
      | 'hostWaitTimeoutMs' | 'hostPollMs' | 'scaleInCooldownMs' | 'reconcileIntervalMs' | 'maxAttempts'
    >
  >;
  private asg?: AutoScalingClient;
  private ec2?: EC2Client;
  private region = '';
  private token = '';
  private group?: GroupView;
  private readonly hosts = new Map<string, HostState>();
  /** instance id → host id, learnt from creates and listings; verified on use. */
  private readonly located = new Map<string, string>();
  /** Workspaces kept on delete (keepWorkspace): a re-create goes back to that host. In memory only. */
  private readonly keptOn = new Map<string, string>();
  private refreshedAt = 0;
  private desiredChangedAt = 0;
  private refreshing?: Promise<void>;
  private placementQueue: Promise<unknown> = Promise.resolve();
  private waiting = 0;
  private scaling?: Promise<void>;
  private protecting?: Promise<void>;
  private protectAgain = false;
  private loop?: NodeJS.Timeout;
  private looping?: Promise<void>;
  private closed = false;
  private readonly capabilities: ProviderCapabilities;
  /** AWS calls this provider made (attempts counted by the SDK are not included). */
  readonly awsCalls: Record<string, number> = {};

  constructor(private readonly options: AwsAsgProviderOptions) {
    this.logger = (options.logger ?? silentLogger()).child({ component: 'aws-asg-provider', group: options.groupName });
    this.now = options.now ?? Date.now;
    this.o = {
      agentPort: options.agentPort ?? DEFAULT_AGENT_PORT,
      perHostCapacity: options.perHostCapacity ?? 20,
      bufferSlots: options.bufferSlots ?? 0,
      hostCacheTtlMs: options.hostCacheTtlMs ?? 10_000,
      agentTimeoutMs: options.agentTimeoutMs ?? 15_000,
      agentCreateTimeoutMs: options.agentCreateTimeoutMs ?? 180_000,
      hostWaitTimeoutMs: options.hostWaitTimeoutMs ?? 600_000,
      hostPollMs: options.hostPollMs ?? 2_000,
      scaleInCooldownMs: options.scaleInCooldownMs ?? 600_000,
      reconcileIntervalMs: options.reconcileIntervalMs ?? 15_000,
      maxAttempts: options.maxAttempts ?? 5,
    };
    this.capabilities = {
      // The agent resizes its containers live (docker update).
      liveResize: true,
      snapshots: false,
      workspaceTransfer: true,
      // Workspaces are Docker volumes on the host: they survive stop/start and re-creation on that host,
      // not the host's termination (a drain stops containers; the volume goes with the instance).
      persistentWorkspace: true,
      logs: true,
      exec: true,
      stats: false,
      regions: [],
      resourceLimits: { minCpu: 0.1, maxCpu: 64, minMemoryMb: 256, maxMemoryMb: 262_144 },
    };
  }

  getCapabilities(): ProviderCapabilities {
    return structuredClone(this.capabilities);
  }

  /** True when an `Authorization` header carries the agents' token (events the agents report back). */
  isAgentAuthorization(header: string | undefined): boolean {
    if (!this.token || !header) return false;
    const given = Buffer.from(header);
    const expected = Buffer.from(`Bearer ${this.token}`);
    return given.length === expected.length && timingSafeEqual(given, expected);
  }

  async initialize(): Promise<void> {
    const env = this.options.env ?? process.env;
    this.region = this.options.region ?? env.AWS_REGION ?? env.AWS_DEFAULT_REGION ?? '';
    if (!this.region) throw new SwarmError('PROVIDER_UNAVAILABLE', 'aws-asg: no region; set providers.aws-asg.region or AWS_REGION');
    if (!this.options.groupName) throw new SwarmError('PROVIDER_UNAVAILABLE', 'aws-asg: no Auto Scaling group; set providers.aws-asg.groupName');
    const tokenEnv = this.options.agentTokenEnv ?? 'VSCODE_SWARM_AWS_AGENT_TOKEN';
    this.token = this.options.agentToken ?? env[tokenEnv] ?? '';
    if (!this.token && this.options.agentTokenFile) {
      try {
        this.token = (await readFile(this.options.agentTokenFile, 'utf8')).trim();
      } catch (err) {
        throw new SwarmError('PROVIDER_UNAVAILABLE', `aws-asg: cannot read the agent token file ${this.options.agentTokenFile}: ${(err as Error).message}`, { cause: err });
      }
    }
    if (!this.token) {
      throw new SwarmError('PROVIDER_UNAVAILABLE', `aws-asg: no agent token; set ${tokenEnv} (or providers.aws-asg.agentTokenFile) to the --token the host agents run with`);
    }
    const common = {
      region: this.region,
      maxAttempts: this.o.maxAttempts,
      retryMode: this.options.retryMode ?? 'standard',
      requestHandler: { requestTimeout: this.options.awsRequestTimeoutMs ?? 10_000, connectionTimeout: 5_000 },
      ...(this.options.credentials ? { credentials: this.options.credentials } : {}),
    };
    const asgEndpoint = this.options.autoScalingEndpoint ?? this.options.endpoint;
    const ec2Endpoint = this.options.ec2Endpoint ?? this.options.endpoint;
    this.asg = new AutoScalingClient({ ...common, ...(asgEndpoint ? { endpoint: asgEndpoint } : {}) });
    this.ec2 = new EC2Client({ ...common, ...(ec2Endpoint ? { endpoint: ec2Endpoint } : {}) });
    await this.refreshHosts(0);
    const hosts = this.usableHosts();
    const refused = [...this.hosts.values()].filter((h) => h.authFailed);
    if (refused.length && hosts.length === 0) {
      throw new SwarmError(
        'PROVIDER_UNAVAILABLE',
        `aws-asg: the host agents of group "${this.options.groupName}" refused the controller's token (401 from ${refused.map((h) => h.id).join(', ')}); set VSCODE_SWARM_AWS_AGENT_TOKEN to the --token they run with`,
      );
    }
    this.logger.info({ region: this.region, group: this.group, hosts: this.hosts.size, usable: hosts.length }, 'auto scaling group reachable');
    this.closed = false;
    clearInterval(this.loop);
    this.loop = setInterval(() => void this.tick(), this.o.reconcileIntervalMs);
    this.loop.unref();
  }

  async close(): Promise<void> {
    this.closed = true;
    clearInterval(this.loop);
    await this.looping?.catch(() => undefined);
    this.asg?.destroy();
    this.ec2?.destroy();
  }

  // ---- instances ----

  async createInstance(config: InstanceConfig & { image: string }, options: CreateOptions): Promise<VSCodeInstance> {
    this.requireClients();
    const { instanceId, signal } = options;
    const progress = options.onProgress ?? (() => undefined);
    progress({ fraction: 0.02, message: 'looking for an existing instance' });
    // A host that cannot answer right now is not waited for here: ids are fresh from the controller, and
    // the agent itself refuses a second create of an id it holds.
    const { hit: existing } = await this.find(instanceId);
    if (existing) {
      const { instance } = await existing.host.client!.create(instanceId, config, this.o.agentCreateTimeoutMs);
      progress({ fraction: 1, message: 'instance exists' });
      return this.view(instance, existing.host);
    }
    for (let attempt = 1; ; attempt++) {
      signal?.throwIfAborted();
      const host = await this.reserveSlot(instanceId, progress, signal);
      progress({ fraction: 0.4, message: `creating on host ${host.id} (${host.ip})` });
      try {
        const { instance, created } = await host.client!.create(instanceId, config, this.o.agentCreateTimeoutMs);
        if (created) host.used++;
        host.epoch++;
        this.located.set(instanceId, host.id);
        this.keptOn.delete(instanceId);
        this.logger.info({ instanceId, hostId: host.id, endpoint: instance.endpoint?.url }, 'instance created');
        progress({ fraction: 1, message: `running on host ${host.id}` });
        return this.view(instance, host);
      } catch (err) {
        const reason = isSwarmError(err) ? err.details?.reason : undefined;
        if ((reason === 'HOST_FULL' || reason === 'HOST_DRAINING') && attempt < 5) {
          // Our view was behind the agent's (another controller, or a restart): believe the agent and place again.
          // The agent's count includes our other creates in flight there (this one it refused).
          if (reason === 'HOST_FULL') {
            const agentUsed = Number(isSwarmError(err) ? err.details?.used : NaN);
            host.used = Math.max(host.used, Number.isFinite(agentUsed) ? agentUsed - (host.inflight.size - 1) : this.capacityOf(host));
          }
          else if (host.report) host.report = { ...host.report, draining: true };
          host.epoch++;
          this.logger.warn({ instanceId, hostId: host.id, reason }, 'host refused the create; placing again');
          continue;
        }
        if (isSwarmError(err, 'PROVIDER_UNAVAILABLE') && err.details?.reason !== 'AGENT_UNAUTHORIZED') {
          // The agent stopped answering mid-create: it may have made the container all the same. Leave
          // nothing behind where the agent lets us (the controller drops its record of a failed create).
          this.markUnreachable(host, err);
          await host.client!.delete(instanceId, false, this.o.agentTimeoutMs).then(
            (removed) => removed && this.logger.warn({ instanceId, hostId: host.id }, 'removed what a failed create left on the host'),
            (e: unknown) => this.logger.warn({ instanceId, hostId: host.id, err: (e as Error).message }, 'could not check the host for what a failed create left'),
          );
        }
        throw asSwarmError(err, 'PROVIDER_ERROR', `aws-asg: create ${instanceId}`);
      } finally {
        host.inflight.delete(instanceId);
        host.epoch++;
        this.touchEmpty(host);
        this.scheduleProtection();
        void this.maybeScaleOut();
      }
    }
  }

  async getInstance(instanceId: string): Promise<VSCodeInstance | null> {
    const found = await this.locate(instanceId);
    return found ? this.view(found.instance, found.host) : null;
  }

  async listInstances(filter: InstanceFilter = {}): Promise<VSCodeInstance[]> {
    await this.refreshHosts(this.o.hostCacheTtlMs).catch((err) => this.logger.warn({ err: (err as Error).message }, 'host discovery failed; listing the hosts known'));
    const hosts = [...this.hosts.values()].filter((h) => this.inService(h));
    const unsure: HostState[] = [];
    const lists = await Promise.all(
      hosts.map(async (host) => {
        try {
          return (await host.client!.list()).map((i) => this.view(i, host));
        } catch (err) {
          this.markUnreachable(host, err);
          if (!isGone(err)) unsure.push(host);
          return [];
        }
      }),
    );
    // A host whose agent is gone holds nothing (its instances are reported missing); one that is only
    // slow or confused must not have its instances declared missing, so the listing fails instead.
    if (unsure.length) {
      throw new SwarmError('PROVIDER_UNAVAILABLE', `aws-asg: cannot list instances: the agent of ${unsure.map((h) => `host ${h.id} (${h.unreachableReason ?? 'no answer'})`).join(', ')} did not answer`);
    }
    const byId = new Map<string, VSCodeInstance>();
    for (const instance of lists.flat()) {
      this.located.set(instance.id, instance.providerRef.hostId!);
      byId.set(instance.id, instance);
    }
    return applyInstanceFilter([...byId.values()], filter);
  }

  async startInstance(instanceId: string, options: StartOptions = {}): Promise<VSCodeInstance> {
    const { host } = await this.require(instanceId);
    options.onProgress?.({ fraction: 0.1, message: `starting on host ${host.id}` });
    const instance = await host.client!.start(instanceId, this.o.agentCreateTimeoutMs);
    options.onProgress?.({ fraction: 1, message: 'running' });
    return this.view(instance, host);
  }

  async stopInstance(instanceId: string, force = false): Promise<VSCodeInstance> {
    const { host } = await this.require(instanceId);
    return this.view(await host.client!.stop(instanceId, force, this.o.agentCreateTimeoutMs), host);
  }

  async deleteInstance(instanceId: string, options: DeleteOptions = {}): Promise<boolean> {
    const found = await this.locate(instanceId);
    if (!found) return false;
    const { host } = found;
    const removed = await host.client!.delete(instanceId, options.keepWorkspace ?? false, this.o.agentCreateTimeoutMs);
    this.located.delete(instanceId);
    if (removed) {
      host.used = Math.max(0, host.used - 1);
      host.epoch++;
      this.touchEmpty(host);
      this.scheduleProtection();
    }
    if (options.keepWorkspace) this.keptOn.set(instanceId, host.id);
    else this.keptOn.delete(instanceId);
    return removed;
  }

  async updateInstance(instanceId: string, patch: InstanceConfigPatch, options: UpdateOptions = {}): Promise<VSCodeInstance & { updateMode?: UpdateMode }> {
    const { host } = await this.require(instanceId);
    options.onProgress?.({ fraction: 0.1, message: `updating on host ${host.id}` });
    const updated = await host.client!.update(instanceId, patch, this.o.agentCreateTimeoutMs);
    return { ...this.view(updated, host), ...(updated.updateMode ? { updateMode: updated.updateMode } : {}) };
  }

  async getInstanceLogs(instanceId: string, options: LogOptions = {}): Promise<InstanceLogs> {
    const { host } = await this.require(instanceId);
    return host.client!.logs(instanceId, { ...(options.tail !== undefined ? { tail: options.tail } : {}), ...(options.since ? { since: options.since } : {}) });
  }

  async executeCommand(instanceId: string, command: string, options: ExecOptions = {}): Promise<CommandResult> {
    const { host } = await this.require(instanceId);
    const result = await host.client!.exec(instanceId, command, options.timeoutMs ?? 30_000);
    // The agent caps output at its own limit; the caller's may be smaller.
    const limit = options.maxOutputBytes ?? 1024 * 1024;
    const out = capBytes(result.stdout, limit);
    const err = capBytes(result.stderr, limit);
    return { ...result, stdout: out.text, stderr: err.text, truncated: result.truncated || out.truncated || err.truncated };
  }

  async exportWorkspace(instanceId: string): Promise<Readable> {
    const { host } = await this.require(instanceId);
    return host.client!.exportWorkspace(instanceId, this.o.agentCreateTimeoutMs);
  }

  async importWorkspace(instanceId: string, archive: Readable): Promise<void> {
    try {
      const { host } = await this.require(instanceId);
      await host.client!.importWorkspace(instanceId, archive, this.o.agentCreateTimeoutMs);
    } finally {
      archive.destroy();
    }
  }

  // ---- what tests and operators may read ----

  /** The hosts as this provider sees them now (no AWS call). */
  hostSummary(): Array<{ id: string; ip?: string; lifecycle: string; reachable: boolean; used: number; inflight: number; capacity: number; protected: boolean; retiring: boolean }> {
    return [...this.hosts.values()].map((h) => ({
      id: h.id,
      ...(h.ip ? { ip: h.ip } : {}),
      lifecycle: h.lifecycle,
      reachable: h.reachable,
      used: h.used,
      inflight: h.inflight.size,
      capacity: this.capacityOf(h),
      protected: h.protected,
      retiring: h.retiring,
    }));
  }

  /** Runs one pass of the background loop now (discovery, protection, scale-out, scale-in). */
  async reconcileNow(): Promise<void> {
    await this.reconcile();
  }

  // ---- locating instances ----

  /**
   * The host holding an instance: the remembered one first, then every host in service (verify on miss).
   * Hosts are asked whatever their placement health: a slow agent still holds its instances. A host
   * that is out of service, or whose agent refuses connections (the process is gone), holds nothing; one
   * that times out or answers garbage cannot tell, so `unsure` lists it.
   */
  private async find(instanceId: string): Promise<{ hit?: { host: HostState; instance: VSCodeInstance }; unsure: HostState[] }> {
    this.requireClients();
    const unsure: HostState[] = [];
    const ask = async (host: HostState): Promise<{ host: HostState; instance: VSCodeInstance } | undefined> => {
      try {
        const instance = await host.client!.get(instanceId);
        return instance ? { host, instance } : undefined;
      } catch (err) {
        this.markUnreachable(host, err);
        if (!isGone(err)) unsure.push(host);
        return undefined;
      }
    };
    const remembered = this.located.get(instanceId);
    const first = remembered ? this.hosts.get(remembered) : undefined;
    if (first && this.inService(first)) {
      const hit = await ask(first);
      if (hit) return { hit, unsure: [] };
      // Gone or silent where we left it: look at the group again before looking elsewhere.
      if (unsure.length || !first.reachable) await this.refreshHosts(Math.min(this.o.hostCacheTtlMs, 1_000)).catch(() => undefined);
    }
    const others = [...this.hosts.values()].filter((h) => h !== first && this.inService(h));
    const answers = await Promise.all(others.map(ask));
    const hit = answers.find((a) => a !== undefined);
    if (hit) this.located.set(instanceId, hit.host.id);
    else if (unsure.length === 0) this.located.delete(instanceId);
    return hit ? { hit, unsure: [] } : { unsure };
  }

  /** Found, or undefined when no host has it; throws when a host in service could not say. */
  private async locate(instanceId: string): Promise<{ host: HostState; instance: VSCodeInstance } | undefined> {
    const { hit, unsure } = await this.find(instanceId);
    if (hit) return hit;
    if (unsure.length) {
      throw new SwarmError(
        'PROVIDER_UNAVAILABLE',
        `aws-asg: cannot tell where instance ${instanceId} is: the agent of ${unsure.map((h) => `host ${h.id} (${h.unreachableReason ?? 'no answer'})`).join(', ')} did not answer`,
        { details: { hosts: unsure.map((h) => h.id) } },
      );
    }
    return undefined;
  }

  private inService(h: HostState): boolean {
    return h.client !== undefined && h.lifecycle === 'InService' && h.healthStatus === 'Healthy';
  }

  private async require(instanceId: string): Promise<{ host: HostState; instance: VSCodeInstance }> {
    const found = await this.locate(instanceId);
    if (!found) throw new SwarmError('NOT_FOUND', `instance ${instanceId} is on no host of Auto Scaling group ${this.options.groupName}`);
    return found;
  }

  private view(instance: VSCodeInstance, host: HostState): VSCodeInstance {
    return {
      id: instance.id,
      name: instance.name,
      providerType: 'aws-asg',
      status: instance.status,
      ...(instance.statusReason ? { statusReason: instance.statusReason } : {}),
      health: instance.health,
      config: instance.config,
      ...(instance.endpoint ? { endpoint: instance.endpoint } : {}),
      providerRef: { ...instance.providerRef, hostId: host.id, hostIp: host.ip ?? '' },
      createdAt: instance.createdAt,
      updatedAt: instance.updatedAt,
    };
  }

  // ---- placement ----

  /**
   * Reserves a slot for one create: placement under the queue; when no host has room, raises the
   * desired capacity and holds (reporting progress) until a host joins, the wait times out, or the group
   * is at its max with nothing booting.
   */
  private async reserveSlot(instanceId: string, progress: NonNullable<CreateOptions['onProgress']>, signal?: AbortSignal): Promise<HostState> {
    const deadline = this.now() + this.o.hostWaitTimeoutMs;
    let counted = false;
    let announced = -1;
    try {
      for (;;) {
        signal?.throwIfAborted();
        if (this.closed) throw new SwarmError('PROVIDER_UNAVAILABLE', `aws-asg: the provider was closed while ${instanceId} waited for a host`);
        const placed = await this.serialised(() => {
          const host = this.pick(instanceId);
          if (host) {
            host.inflight.add(instanceId);
            host.epoch++;
            host.emptySince = undefined;
            if (counted) {
              this.waiting--;
              counted = false;
            }
          } else if (!counted) {
            this.waiting++;
            counted = true;
          }
          return host;
        });
        if (placed) {
          progress({ fraction: 0.3, message: `placed on host ${placed.id}` });
          this.scheduleProtection();
          void this.maybeScaleOut();
          return placed;
        }
        this.failIfHopeless();
        await this.maybeScaleOut();
        this.failIfHopeless();
        const desired = this.group?.desired ?? 0;
        if (desired !== announced) {
          progress({ fraction: 0.1, message: `waiting for a new host (desired ${desired})` });
          announced = desired;
        }
        if (this.now() >= deadline) {
          throw new SwarmError('TIMEOUT', `aws-asg: no host of group ${this.options.groupName} had room for ${instanceId} within ${this.o.hostWaitTimeoutMs} ms (desired ${desired})`);
        }
        await sleep(this.o.hostPollMs, undefined, signal ? { signal } : undefined);
        await this.refreshHosts(this.o.hostPollMs).catch((err) => this.logger.warn({ err: (err as Error).message }, 'host discovery failed while waiting for a host; trying again'));
      }
    } finally {
      if (counted) this.waiting--;
    }
  }

  /** Most free slots first, then lowest host id; a kept workspace's host first when it has room. */
  private pick(instanceId: string): HostState | undefined {
    const candidates = this.usableHosts().filter((h) => this.freeOf(h) > 0);
    const kept = this.keptOn.get(instanceId);
    const home = kept ? candidates.find((h) => h.id === kept) : undefined;
    if (home) return home;
    candidates.sort((a, b) => this.freeOf(b) - this.freeOf(a) || (a.id < b.id ? -1 : a.id > b.id ? 1 : 0));
    return candidates[0];
  }

  /** A group at its max with every host full and nothing booting will not make room: say so at once. */
  private failIfHopeless(): void {
    const g = this.group;
    if (!g) return;
    const refused = [...this.hosts.values()].filter((h) => h.authFailed && h.lifecycle === 'InService');
    if (refused.length && this.usableHosts().length === 0 && !this.booting()) {
      throw new SwarmError('PROVIDER_UNAVAILABLE', `aws-asg: the host agents of group ${this.options.groupName} refused the controller's token (401); set VSCODE_SWARM_AWS_AGENT_TOKEN to their --token`);
    }
    if (g.desired >= g.maxSize && this.neededHosts() > g.maxSize && !this.booting() && !this.anyInflight()) {
      throw new SwarmError(
        'CONFLICT',
        `aws-asg: Auto Scaling group ${this.options.groupName} is at its max size (${g.maxSize} hosts of ${this.o.perHostCapacity} containers) and every host is full; raise the group's MaxSize or delete instances`,
        { details: { group: this.options.groupName, maxSize: g.maxSize } },
      );
    }
  }

  private booting(): boolean {
    const g = this.group;
    const live = [...this.hosts.values()].filter((h) => h.lifecycle === 'Pending' || h.lifecycle === 'InService');
    // Pending hosts, InService ones whose agent has not answered yet, or desired not reached yet.
    return live.some((h) => h.lifecycle === 'Pending' || (!h.reachable && !h.authFailed)) || (g !== undefined && live.length < g.desired);
  }

  private anyInflight(): boolean {
    return [...this.hosts.values()].some((h) => h.inflight.size > 0);
  }

  private serialised<T>(work: () => T | Promise<T>): Promise<T> {
    const run = this.placementQueue.then(work, work);
    this.placementQueue = run.catch(() => undefined);
    return run;
  }

  // ---- capacity arithmetic ----

  private capacityOf(h: HostState): number {
    return Math.min(this.o.perHostCapacity, h.report?.capacity ?? this.o.perHostCapacity);
  }

  private freeOf(h: HostState): number {
    return Math.max(0, this.capacityOf(h) - h.used - h.inflight.size);
  }

  private usableHosts(): HostState[] {
    return [...this.hosts.values()].filter(
      (h) => h.lifecycle === 'InService' && h.healthStatus === 'Healthy' && h.reachable && !h.retiring && !h.report?.draining,
    );
  }

  /** Container slots asked for: in use, in flight, waiting for a host, and the buffer. */
  private demand(): { used: number; inflight: number; waiting: number; buffer: number } {
    let used = 0;
    let inflight = 0;
    for (const h of this.hosts.values()) {
      if (h.lifecycle === 'Terminated' || h.lifecycle.startsWith('Terminating')) continue;
      used += h.used;
      inflight += h.inflight.size;
    }
    return { used, inflight, waiting: this.waiting, buffer: this.o.bufferSlots };
  }

  /** Hosts needed for the demand. */
  private neededHosts(): number {
    const d = this.demand();
    return Math.ceil((d.used + d.inflight + d.waiting + d.buffer) / this.o.perHostCapacity);
  }

  private targetDesired(): number {
    const g = this.group!;
    return Math.min(g.maxSize, Math.max(g.minSize, this.neededHosts()));
  }

  /** Raises the desired capacity when demand is above it; one SetDesiredCapacity per decision, never per request. */
  private maybeScaleOut(): Promise<void> {
    if (!this.group || this.closed) return Promise.resolve();
    if (this.scaling) return this.scaling;
    const target = this.targetDesired();
    if (target <= this.group.desired) return Promise.resolve();
    this.scaling = (async () => {
      try {
        // Let the creates arriving together count themselves first: one scaling decision per burst.
        await sleep(SCALE_GATHER_MS);
        const g = this.group!;
        const next = this.targetDesired();
        if (next <= g.desired) return;
        this.count('SetDesiredCapacity');
        await this.asg!.send(new SetDesiredCapacityCommand({ AutoScalingGroupName: this.options.groupName, DesiredCapacity: next, HonorCooldown: false }));
        this.logger.info({ from: g.desired, to: next, ...this.demand() }, 'scaling out');
        g.desired = next;
        this.desiredChangedAt = this.now();
      } catch (err) {
        this.logger.warn({ err: describeAwsError(err) }, 'SetDesiredCapacity failed; trying again at the next decision');
      } finally {
        this.scaling = undefined;
      }
    })();
    return this.scaling;
  }

  // ---- discovery ----

  /** Describes the group and its instances, then asks each InService host's agent for its report. Single-flight. */
  private refreshHosts(maxAgeMs: number): Promise<void> {
    if (this.refreshing) return this.refreshing;
    if (this.now() - this.refreshedAt < maxAgeMs) return Promise.resolve();
    this.refreshing = this.discover().finally(() => {
      this.refreshing = undefined;
    });
    return this.refreshing;
  }

  private async discover(): Promise<void> {
    const { asg, ec2 } = this.requireClients();
    const startedAt = this.now();
    let group: AutoScalingGroup | undefined;
    try {
      this.count('DescribeAutoScalingGroups');
      const out = await asg.send(new DescribeAutoScalingGroupsCommand({ AutoScalingGroupNames: [this.options.groupName] }));
      group = out.AutoScalingGroups?.find((g) => g.AutoScalingGroupName === this.options.groupName);
    } catch (err) {
      throw awsUnavailable(err, `describe Auto Scaling group ${this.options.groupName} in ${this.region}`);
    }
    if (!group) {
      throw new SwarmError(
        'PROVIDER_UNAVAILABLE',
        `aws-asg: Auto Scaling group "${this.options.groupName}" not found in region ${this.region}; check providers.aws-asg.groupName and region`,
        { details: { group: this.options.groupName, region: this.region } },
      );
    }
    const view: GroupView = { minSize: group.MinSize ?? 0, maxSize: group.MaxSize ?? 0, desired: group.DesiredCapacity ?? 0 };
    const members = group.Instances ?? [];
    const ips = new Map<string, string>();
    if (members.length) {
      try {
        this.count('DescribeInstances');
        const pages = paginateDescribeInstances(
          { client: ec2, pageSize: 1000 },
          {
            Filters: [
              { Name: 'tag:aws:autoscaling:groupName', Values: [this.options.groupName] },
              { Name: 'instance-state-name', Values: ['pending', 'running'] },
            ],
          },
        );
        let page = 0;
        for await (const out of pages) {
          if (page++ > 0) this.count('DescribeInstances');
          for (const r of out.Reservations ?? []) for (const i of r.Instances ?? []) if (i.InstanceId && i.PrivateIpAddress) ips.set(i.InstanceId, i.PrivateIpAddress);
        }
      } catch (err) {
        throw awsUnavailable(err, `describe the instances of group ${this.options.groupName}`);
      }
    }
    // A describe that began before our own last change of the desired capacity may predate it.
    if (this.group && startedAt <= this.desiredChangedAt) view.desired = this.group.desired;
    this.group = view;
    const seen = new Set<string>();
    for (const m of members) {
      if (!m.InstanceId) continue;
      seen.add(m.InstanceId);
      let host = this.hosts.get(m.InstanceId);
      if (!host) {
        host = { id: m.InstanceId, lifecycle: '', healthStatus: '', protected: false, reachable: false, authFailed: false, inflight: new Set(), used: 0, epoch: 0, retiring: false };
        this.hosts.set(m.InstanceId, host);
      }
      host.lifecycle = m.LifecycleState ?? 'Pending';
      host.healthStatus = /^healthy$/i.test(m.HealthStatus ?? '') ? 'Healthy' : 'Unhealthy';
      host.protected = m.ProtectedFromScaleIn ?? false;
      const ip = ips.get(m.InstanceId);
      if (ip && ip !== host.ip) {
        host.ip = ip;
        host.client = new AgentClient({
          baseUrl: `http://${ip.includes(':') ? `[${ip}]` : ip}:${this.o.agentPort}`,
          hostId: host.id,
          token: this.token,
          timeoutMs: this.o.agentTimeoutMs,
          ...(this.options.agentRetry ? { retry: this.options.agentRetry } : {}),
          logger: this.logger,
        });
      }
      if (!ip || host.healthStatus !== 'Healthy' || host.lifecycle.startsWith('Terminat')) {
        if (host.reachable) this.logger.warn({ hostId: host.id, lifecycle: host.lifecycle, health: host.healthStatus }, 'host left service; its instances are no longer reported');
        host.reachable = false;
        host.unreachableReason = `host is ${host.lifecycle} / ${host.healthStatus}`;
      }
    }
    for (const [id, host] of this.hosts) {
      if (!seen.has(id)) {
        if (host.reachable) this.logger.warn({ hostId: id }, 'host left the group; its instances are no longer reported');
        this.hosts.delete(id);
      }
    }
    await Promise.all([...this.hosts.values()].filter((h) => h.lifecycle === 'InService' && h.healthStatus === 'Healthy' && h.client).map((h) => this.checkAgent(h)));
    this.refreshedAt = this.now();
  }

  /** One GET /v1/host: a host that answers garbage, someone else's id, or nothing is skipped for placement. */
  private async checkAgent(host: HostState): Promise<void> {
    const epoch = host.epoch;
    try {
      const report = await host.client!.host(this.o.agentTimeoutMs);
      if (report.hostId !== host.id || typeof report.capacity !== 'number' || typeof report.used !== 'number') {
        throw new SwarmError('PROVIDER_ERROR', `answered as ${JSON.stringify(report.hostId)} with ${JSON.stringify(report).slice(0, 120)}`);
      }
      if (!host.reachable) this.logger.info({ hostId: host.id, ip: host.ip, capacity: report.capacity, used: report.used }, 'host agent answering');
      host.report = report;
      host.reachable = true;
      host.authFailed = false;
      host.unreachableReason = undefined;
      if (host.epoch === epoch && host.inflight.size === 0) host.used = report.used;
      this.touchEmpty(host);
    } catch (err) {
      this.markUnreachable(host, err);
    }
  }

  private markUnreachable(host: HostState, err: unknown): void {
    const e = asSwarmError(err);
    // A 4xx/5xx about one instance says nothing about the host.
    if (e.code !== 'PROVIDER_UNAVAILABLE' && !(e.code === 'PROVIDER_ERROR' && /not JSON|without a JSON|answered as/.test(e.message))) return;
    host.authFailed = e.details?.reason === 'AGENT_UNAUTHORIZED';
    if (host.reachable || host.unreachableReason !== e.message) {
      this.logger.warn({ hostId: host.id, ip: host.ip, err: e.message }, 'host agent unhealthy; skipped for placement');
    }
    host.reachable = false;
    host.unreachableReason = e.message;
  }

  private touchEmpty(host: HostState): void {
    if (host.used + host.inflight.size === 0) host.emptySince ??= this.now();
    else host.emptySince = undefined;
  }

  // ---- background loop: protection and scale-in ----

  private tick(): void {
    if (this.closed || this.looping) return;
    this.looping = this.reconcile()
      .catch((err) => this.logger.warn({ err: (err as Error).message }, 'reconcile pass failed'))
      .finally(() => {
        this.looping = undefined;
      });
  }

  private async reconcile(): Promise<void> {
    await this.refreshHosts(Math.min(this.o.hostCacheTtlMs, this.o.reconcileIntervalMs / 2));
    await this.syncProtection();
    await this.maybeScaleOut();
    await this.scaleIn();
  }

  private scheduleProtection(): void {
    if (this.protecting) {
      this.protectAgain = true;
      return;
    }
    this.protecting = this.syncProtection()
      .catch((err) => this.logger.warn({ err: (err as Error).message }, 'protection sync failed'))
      .finally(() => {
        this.protecting = undefined;
        if (this.protectAgain && !this.closed) {
          this.protectAgain = false;
          this.scheduleProtection();
        }
      });
  }

  /** Busy hosts protected from scale-in, empty ones not: one SetInstanceProtection per flag (50 ids a call). */
  private async syncProtection(): Promise<void> {
    if (this.closed || !this.asg) return;
    const live = [...this.hosts.values()].filter((h) => h.lifecycle === 'InService' && h.reachable && !h.retiring);
    const protect = live.filter((h) => !h.protected && h.used + h.inflight.size > 0);
    const release = live.filter((h) => h.protected && h.used + h.inflight.size === 0 && h.inflight.size === 0);
    for (const [flag, hosts] of [[true, protect], [false, release]] as const) {
      for (let i = 0; i < hosts.length; i += 50) {
        const batch = hosts.slice(i, i + 50);
        try {
          this.count('SetInstanceProtection');
          await this.asg.send(
            new SetInstanceProtectionCommand({ AutoScalingGroupName: this.options.groupName, InstanceIds: batch.map((h) => h.id), ProtectedFromScaleIn: flag }),
          );
          for (const h of batch) h.protected = flag;
          this.logger.debug({ hosts: batch.map((h) => h.id), protected: flag }, 'scale-in protection set');
        } catch (err) {
          this.logger.warn({ err: describeAwsError(err), hosts: batch.map((h) => h.id), protected: flag }, 'SetInstanceProtection failed; trying again next pass');
        }
      }
    }
  }

  /** Terminates hosts empty past the cool-down, one at a time, while the rest still cover min size and the buffer. */
  private async scaleIn(): Promise<void> {
    const g = this.group;
    if (!g || this.closed || this.waiting > 0) return;
    const now = this.now();
    for (;;) {
      const victim = await this.serialised(() => {
        const active = [...this.hosts.values()].filter((h) => h.lifecycle === 'InService' || h.lifecycle === 'Pending');
        if (active.length - 1 < this.targetDesired() || g.desired - 1 < g.minSize) return undefined;
        const idle = active
          .filter((h) => h.lifecycle === 'InService' && h.reachable && !h.retiring && h.inflight.size === 0 && h.used === 0 && h.emptySince !== undefined && now - h.emptySince >= this.o.scaleInCooldownMs)
          .sort((a, b) => a.emptySince! - b.emptySince! || (a.id < b.id ? -1 : 1));
        const pick = idle[0];
        if (pick) pick.retiring = true; // no placement on it from here
        return pick;
      });
      if (!victim) return;
      try {
        // Check with the agent itself: nothing may have arrived from elsewhere.
        const report = await victim.client!.host(5_000);
        if (report.used > 0 || report.hostId !== victim.id) {
          victim.used = report.used;
          victim.emptySince = undefined;
          victim.retiring = false;
          continue;
        }
        this.count('TerminateInstanceInAutoScalingGroup');
        await this.asg!.send(new TerminateInstanceInAutoScalingGroupCommand({ InstanceId: victim.id, ShouldDecrementDesiredCapacity: true }));
        g.desired -= 1;
        this.desiredChangedAt = this.now();
        victim.lifecycle = 'Terminating';
        victim.reachable = false;
        this.logger.info({ hostId: victim.id, emptyForMs: now - victim.emptySince!, desired: g.desired }, 'terminated an empty host (scale-in)');
      } catch (err) {
        victim.retiring = false;
        this.logger.warn({ hostId: victim.id, err: describeAwsError(err) }, 'scale-in of an empty host failed; trying again next pass');
        return;
      }
    }
  }

  // ---- plumbing ----

  private count(action: string): void {
    this.awsCalls[action] = (this.awsCalls[action] ?? 0) + 1;
  }

  private requireClients(): { asg: AutoScalingClient; ec2: EC2Client } {
    if (!this.asg || !this.ec2) throw new SwarmError('PROVIDER_UNAVAILABLE', 'aws-asg: the provider is not initialised (call initialize first)');
    return { asg: this.asg, ec2: this.ec2 };
  }
}

/** The agent's process is not there (refused or unroutable): the host holds nothing we can reach. */
function isGone(err: unknown): boolean {
  const transport = isSwarmError(err) ? err.details?.transport : undefined;
  return transport === 'ECONNREFUSED' || transport === 'EHOSTUNREACH' || transport === 'ENETUNREACH';
}

function describeAwsError(err: unknown): string {
  const e = err as { name?: string; message?: string; $metadata?: { httpStatusCode?: number; attempts?: number } };
  return `${e?.name ?? 'Error'}: ${e?.message ?? String(err)}${e?.$metadata?.attempts ? ` (after ${e.$metadata.attempts} attempts)` : ''}`;
}

function awsUnavailable(err: unknown, what: string): SwarmError {
  if (err instanceof SwarmError) return err;
  const e = err as { name?: string; $metadata?: { httpStatusCode?: number } };
  const status = e?.$metadata?.httpStatusCode;
  const credentials = e?.name === 'CredentialsProviderError' || status === 401 || status === 403;
  return new SwarmError(
    'PROVIDER_UNAVAILABLE',
    `aws-asg: cannot ${what}: ${describeAwsError(err)}${credentials ? '; check the AWS credentials (environment, profile or instance role) and their IAM policy' : ''}`,
    { cause: err },
  );
}

/** Keeps at most `limit` bytes of UTF-8 text. */
function capBytes(text: string, limit: number): { text: string; truncated: boolean } {
  const bytes = Buffer.from(text, 'utf8');
  if (bytes.length <= limit) return { text, truncated: false };
  return { text: bytes.subarray(0, limit).toString('utf8'), truncated: true };
}
