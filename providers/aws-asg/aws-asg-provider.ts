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
 * Hosts that misbehave: EC2 health checks see only the instance, so a host whose agent never starts stays
 * InService and Healthy for ever. A host that has not answered within `hostBootTimeoutMs` of its launch is
 * terminated with ShouldDecrementDesiredCapacity=false (the group launches a replacement) and stops
 * counting as booting capacity. A host that answered before and now refuses or times out (an agent
 * restart, a crash) is unreachable, not gone: its instances are listed from what it last reported, with
 * status and health `unknown` and the reason, and every operation on them fails as unavailable, so
 * nothing is re-created elsewhere while the host may come back. Only a host that EC2 reports terminated,
 * or that left the group, takes its instances with it.
 *
 * Hosts being terminated (evacuation, `evacuateTerminatingHosts`, on by default): a host the group is terminating (a scale-in by the group, an
 * instance refresh, a rebalance, an operator, a Spot interruption) waits in `Terminating:Wait` on the
 * group's termination lifecycle hook. The reconcile loop notices it (no placement there: it is not
 * InService) and moves each of its instances to another host of the group with its files: stop on the old
 * host, export the workspace there (spooled to a local file with its SHA-256 manifest, workspace-archive.ts),
 * create the instance with the same id and config on a new host (holding for capacity like any create),
 * import, export again from the new host and compare manifests, restore its running state, and only then
 * delete it on the old host. Meanwhile the lifecycle action is kept alive with heartbeats
 * (lifecycle-action.ts) and the instance is listed as `unknown` with the reason (the controller merges it,
 * the health monitor waits instead of re-creating it). When the host is empty, CompleteLifecycleAction
 * CONTINUE. An instance that cannot be moved is tried again until `evacuationTimeoutMs`; then the failure
 * is logged at error level and named in the instance's status reason, and the action is completed (the
 * instance terminates after the hook whatever the result: ABANDON would not keep it).
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
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
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
  ProviderLeadership,
  StartOptions,
  UpdateMode,
  UpdateOptions,
  VSCodeInstance,
} from '../provider.js';
import { applyInstanceFilter } from '../provider.js';
import type { HostReport } from './agent/agent-protocol.js';
import type { PortRange } from './agent/port-pool.js';
import { AgentClient, type AgentRetryOptions } from './agent-client.js';
import { UPSTREAM_HEADER } from '../../src/gateway/gateway.js';
import { deriveHostToken, isHostAuthorization } from './host-credentials.js';
import { LifecycleAction } from './lifecycle-action.js';
import { manifestDifferences, manifestOf, openSpooled, spoolArchive } from '../../src/migration/workspace-archive.js';

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
  /**
   * The master agent token; else the variable `agentTokenEnv` of `env`, else `agentTokenFile`. No host
   * holds it: each runs with its own token, deriveHostToken(master, its instance id) (host-credentials.ts).
   */
  agentToken?: string;
  /** The agents' --port-range (on their loopback; endpoints are the hosts' proxies, see checkedEndpoint). Default 20000-20999. */
  agentPortRange?: PortRange;
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
  /** A host whose agent has not answered this long after launch is terminated and replaced; default 10 min. */
  hostBootTimeoutMs?: number;
  /** A host empty this long is terminated (when not needed for min size or buffer); default 10 min. */
  scaleInCooldownMs?: number;
  /**
   * Move the instances of a host waiting on the group's termination lifecycle hook (Terminating:Wait) to
   * other hosts, then complete the action. Default true (configuration `evacuateTerminatingHosts`).
   */
  evacuateTerminatingHosts?: boolean;
  /**
   * How long the instances of a host being terminated are tried to be moved before giving up (logged,
   * lifecycle action completed); default 1 h, and never past the hook's global timeout.
   */
  evacuationTimeoutMs?: number;
  /** Largest workspace an evacuation moves; default 50 GiB. */
  evacuationMaxBytes?: number;
  /** Where workspace archives are spooled during an evacuation; default the OS temporary folder. */
  spoolDir?: string;
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
  /** EC2 launch time (ms), else when this provider first saw it: the start of the boot deadline. */
  launchedAt: number;
  /** Its agent has answered with a valid report at least once (since this provider started). */
  answered: boolean;
  /** Present at this provider's first discovery: it may hold instances we never heard of. */
  seenAtStart: boolean;
  /** EC2 reports it pending or running (it has an address); false once EC2 says otherwise. */
  ec2Live: boolean;
  /** Its instances as last reported (listings, gets, our creates and deletes): listed as unknown while it is unreachable. */
  known?: Map<string, VSCodeInstance>;
  /** When its agent stopped answering (cleared when it answers). */
  unreachableSince?: number;
  /** Its evacuation (Terminating:Wait) in progress. */
  evacuating?: Promise<void>;
}

/** Where an instance is; `stale`: what its unreachable host last reported, as unknown. */
interface Located {
  host: HostState;
  instance: VSCodeInstance;
  stale?: boolean;
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
      | 'hostWaitTimeoutMs' | 'hostPollMs' | 'scaleInCooldownMs' | 'reconcileIntervalMs' | 'maxAttempts' | 'hostBootTimeoutMs'
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
  /** Instances being moved off a terminating host: id → why (their status reason while listed as unknown). */
  private readonly moving = new Map<string, string>();
  /** Instances an evacuation gave up on: id → why (kept in their status reason). */
  private readonly unmoved = new Map<string, string>();
  private refreshedAt = 0;
  private discovered = false;
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
  /** Set when several controllers share the store: only the leader scales in, replaces or evacuates hosts. */
  private leadership?: ProviderLeadership;
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
      hostBootTimeoutMs: options.hostBootTimeoutMs ?? 600_000,
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

  /** True when an `Authorization` header carries the token of host `hostId` (events the agents report back). */
  isAgentAuthorization(header: string | undefined, hostId: string): boolean {
    return isHostAuthorization(this.token, hostId, header);
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

  useLeadership(leadership: ProviderLeadership): void {
    this.leadership = leadership;
  }

  /** True while this controller may make the group's once-only decisions (always, when it is alone). */
  private leads(): boolean {
    return this.leadership?.isLeader ?? true;
  }

  /** A destructive group call, made only once the store confirmed this controller still leads. */
  private fenced<T>(work: () => Promise<T>): Promise<T> {
    return this.leadership ? this.leadership.fenced(work) : work();
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
    // On a host that cannot answer now: never a second copy elsewhere.
    if (existing?.stale) throw this.unreachableError(instanceId, existing.host);
    if (existing) {
      const { instance } = await existing.host.client!.create(instanceId, config, this.o.agentCreateTimeoutMs);
      this.remember(existing.host, instance);
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
        this.remember(host, instance);
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
    if (!found) return null;
    return found.stale ? found.instance : this.evacuationView(this.view(found.instance, found.host));
  }

  async listInstances(filter: InstanceFilter = {}): Promise<VSCodeInstance[]> {
    await this.refreshHosts(this.o.hostCacheTtlMs).catch((err) => this.logger.warn({ err: (err as Error).message }, 'host discovery failed; listing the hosts known'));
    const hosts = [...this.hosts.values()].filter((h) => this.inService(h));
    const unsure: HostState[] = [];
    const lists = await Promise.all(
      hosts.map(async (host): Promise<VSCodeInstance[]> => {
        try {
          const listed = await host.client!.list();
          host.known = new Map(listed.map((i) => [i.id, i]));
          this.markAnswering(host);
          return listed.map((i) => this.view(i, host));
        } catch (err) {
          this.markUnreachable(host, err);
          if (host.reachable) {
            unsure.push(host);
            return [];
          }
          // Has EC2 terminated it since we last looked? Then its instances are gone, not unknown.
          if (this.refreshedAt <= (host.unreachableSince ?? 0)) await this.refreshHosts(0).catch(() => undefined);
          if (!this.inService(host) || this.hosts.get(host.id) !== host) return [];
          // Unreachable is not gone: what it last reported, as unknown. A host we know nothing of that may
          // hold instances cannot be listed as empty, so the listing fails instead.
          if (host.known) return [...host.known.values()].map((i) => this.staleView(i, host));
          if (this.mayHoldUnknown(host)) unsure.push(host);
          return [];
        }
      }),
    );
    if (unsure.length) {
      throw new SwarmError('PROVIDER_UNAVAILABLE', `aws-asg: cannot list instances: the agent of ${unsure.map((h) => `host ${h.id} (${h.unreachableReason ?? 'no answer'})`).join(', ')} did not answer`);
    }
    const byId = new Map<string, VSCodeInstance>();
    for (const instance of lists.flat()) {
      // Mid-move, both hosts may list it: the one it is still located on wins, as unknown.
      if (this.moving.has(instance.id) && byId.has(instance.id) && this.located.get(instance.id) !== instance.providerRef.hostId) continue;
      if (!this.moving.has(instance.id)) this.located.set(instance.id, instance.providerRef.hostId!);
      byId.set(instance.id, this.evacuationView(instance));
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
    this.refuseWhileMoving(instanceId);
    const found = await this.locate(instanceId);
    if (!found) return false;
    const { host } = found;
    if (found.stale) throw this.unreachableError(instanceId, host);
    const removed = await host.client!.delete(instanceId, options.keepWorkspace ?? false, this.o.agentCreateTimeoutMs);
    this.located.delete(instanceId);
    host.known?.delete(instanceId);
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
   * The host holding an instance: the remembered one first, then every host EC2 has not terminated (verify
   * on miss). Hosts are asked whatever their placement health: a slow agent still holds its instances. A
   * host that cannot answer (refused, timed out, garbage) is unreachable, not empty: an instance it last
   * reported is a `stale` hit (status unknown); one it never reported is not there when we hold a listing
   * of that host or it is a host launched since we started that never answered, else `unsure` lists it.
   */
  private async find(instanceId: string): Promise<{ hit?: Located; unsure: HostState[] }> {
    this.requireClients();
    const unsure: HostState[] = [];
    const ask = async (host: HostState): Promise<Located | undefined> => {
      try {
        const instance = await host.client!.get(instanceId);
        this.markAnswering(host);
        if (instance) this.remember(host, instance);
        else host.known?.delete(instanceId);
        return instance ? { host, instance } : undefined;
      } catch (err) {
        this.markUnreachable(host, err);
        // An error about this instance from an answering agent: it cannot tell us.
        if (host.reachable) {
          unsure.push(host);
          return undefined;
        }
        const last = host.known?.get(instanceId);
        if (last) return { host, instance: this.staleView(last, host), stale: true };
        if (!host.known && this.mayHoldUnknown(host)) unsure.push(host);
        return undefined;
      }
    };
    const remembered = this.located.get(instanceId);
    const first = remembered ? this.hosts.get(remembered) : undefined;
    if (first && this.inService(first)) {
      const hit = await ask(first);
      if (hit && !hit.stale) return { hit, unsure: [] };
      // Gone or silent where we left it: look at the group again (has EC2 terminated it?) before deciding.
      if (hit || unsure.length || !first.reachable) {
        // A discovery from before the agent stopped answering cannot say whether EC2 has terminated the host since.
        const maxAge = this.refreshedAt <= (first.unreachableSince ?? 0) ? 0 : Math.min(this.o.hostCacheTtlMs, 1_000);
        await this.refreshHosts(maxAge).catch(() => undefined);
        if (hit && this.hosts.get(first.id) === first && this.inService(first)) return { hit, unsure: [] };
        unsure.length = 0;
      }
    }
    const others = [...this.hosts.values()].filter((h) => h !== first && this.inService(h));
    const answers = await Promise.all(others.map(ask));
    const hit = answers.find((a) => a !== undefined && !a.stale) ?? answers.find((a) => a !== undefined);
    if (hit) this.located.set(instanceId, hit.host.id);
    else if (unsure.length === 0) this.located.delete(instanceId);
    return hit ? { hit, unsure: [] } : { unsure };
  }

  /** Found, or undefined when no host has it; throws when a host in service could not say. */
  private async locate(instanceId: string): Promise<Located | undefined> {
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

  /** A host that may hold instances: in the group and not terminated by EC2 (whatever its agent does). */
  private inService(h: HostState): boolean {
    return h.client !== undefined && h.ec2Live && h.lifecycle !== 'Terminated';
  }

  /** A host we hold no listing of may hold instances unless it launched after we started and never answered (still booting). */
  private mayHoldUnknown(h: HostState): boolean {
    return h.answered || h.seenAtStart;
  }

  private async require(instanceId: string): Promise<Located> {
    this.refuseWhileMoving(instanceId);
    const found = await this.locate(instanceId);
    if (!found) throw new SwarmError('NOT_FOUND', `instance ${instanceId} is on no host of Auto Scaling group ${this.options.groupName}`);
    if (found.stale) throw this.unreachableError(instanceId, found.host);
    return found;
  }

  /** Operations wait until a move off a terminating host has finished (the copy they would act on is changing hosts). */
  private refuseWhileMoving(instanceId: string): void {
    const reason = this.moving.get(instanceId);
    if (reason) throw new SwarmError('CONFLICT', `aws-asg: instance ${instanceId} is ${reason}; try again when the move has finished`, { details: { reason: 'MOVING' } });
  }

  private unreachableError(instanceId: string, host: HostState): SwarmError {
    return new SwarmError('PROVIDER_UNAVAILABLE', `aws-asg: instance ${instanceId} is on ${this.unreachableText(host)}; try again when its agent answers`, {
      details: { hostId: host.id, reason: 'HOST_UNREACHABLE' },
    });
  }

  private unreachableText(host: HostState): string {
    const since = new Date(host.unreachableSince ?? this.now()).toISOString();
    return `host ${host.id} unreachable since ${since}: ${host.unreachableReason ?? 'agent did not answer'}`;
  }

  /** What a host last reported of an instance, as unknown: the host may come back with it as it was. */
  private staleView(instance: VSCodeInstance, host: HostState): VSCodeInstance {
    const { endpoint: _endpoint, ...rest } = this.view(instance, host);
    return { ...rest, status: 'unknown', health: 'unknown', statusReason: this.unreachableText(host) };
  }

  private remember(host: HostState, instance: VSCodeInstance): void {
    (host.known ??= new Map()).set(instance.id, instance);
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
      ...this.checkedEndpoint(instance, host),
      providerRef: { ...instance.providerRef, hostId: host.id, hostIp: host.ip ?? '' },
      createdAt: instance.createdAt,
      updatedAt: instance.updatedAt,
    };
  }

  /**
   * The endpoint a host reported, when it is that host's own proxy: http://<its address>:<the proxy port
   * its report names>, with a Host header naming this instance (the editors publish on the host's
   * loopback only, out of other containers' reach). Anything else (a host pointing the gateway at another
   * machine or port, or at an editor's port directly) is refused: no endpoint, and a status reason that
   * says why. The gateway presents the host's own token there (editorRequestHeaders).
   */
  private checkedEndpoint(instance: VSCodeInstance, host: HostState): { endpoint?: VSCodeInstance['endpoint']; statusReason?: string } {
    const endpoint = instance.endpoint;
    if (!endpoint) return {};
    const proxy = urlParts(host.report?.proxy);
    const given = urlParts(endpoint.url);
    const proxyOk = host.ip !== undefined && proxy !== undefined && proxy.host === host.ip;
    const urlOk = proxyOk && given !== undefined && given.host === host.ip && given.port === proxy.port && endpoint.host === host.ip && endpoint.port === proxy.port;
    const nameOk = endpoint.hostHeader !== undefined && endpoint.hostHeader.length <= 253 && endpoint.hostHeader.startsWith(`${instance.id}.`) && /^[a-z0-9.-]+(:\d{1,5})?$/.test(endpoint.hostHeader);
    if (urlOk && nameOk) return { endpoint };
    const expected = `http://${host.ip ?? '<its private address>'}:${proxy?.port ?? '<its proxy port>'} (the host's proxy) with Host ${instance.id}.<domain>`;
    const reason = `endpoint refused: host ${host.id} reported ${JSON.stringify(endpoint.url)}${endpoint.hostHeader ? ` (Host ${JSON.stringify(endpoint.hostHeader)})` : ''} for ${instance.id}; expected ${expected}`;
    this.logger.error({ instanceId: instance.id, hostId: host.id, endpoint: endpoint.url, hostHeader: endpoint.hostHeader, proxy: host.report?.proxy }, "refused an endpoint other than the host's own proxy");
    return { statusReason: instance.statusReason ? `${reason}; ${instance.statusReason}` : reason };
  }

  /** The host's own token, for its proxy: the gateway presents it in UPSTREAM_HEADER, never the master. */
  editorRequestHeaders(instance: VSCodeInstance): Record<string, string> {
    const hostId = instance.providerRef.hostId;
    if (!hostId || !this.token || !this.hosts.has(hostId)) return {};
    return { [UPSTREAM_HEADER]: deriveHostToken(this.token, hostId) };
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
    const launched = new Map<string, number>();
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
          for (const r of out.Reservations ?? []) for (const i of r.Instances ?? []) {
            if (i.InstanceId && i.PrivateIpAddress) ips.set(i.InstanceId, i.PrivateIpAddress);
            if (i.InstanceId && i.LaunchTime) launched.set(i.InstanceId, i.LaunchTime.getTime());
          }
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
        host = {
          id: m.InstanceId, lifecycle: '', healthStatus: '', protected: false, reachable: false, authFailed: false, inflight: new Set(), used: 0, epoch: 0, retiring: false,
          launchedAt: launched.get(m.InstanceId) ?? startedAt, answered: false, seenAtStart: !this.discovered, ec2Live: false,
        };
        this.hosts.set(m.InstanceId, host);
      }
      host.lifecycle = m.LifecycleState ?? 'Pending';
      host.healthStatus = /^healthy$/i.test(m.HealthStatus ?? '') ? 'Healthy' : 'Unhealthy';
      host.protected = m.ProtectedFromScaleIn ?? false;
      const ip = ips.get(m.InstanceId);
      host.ec2Live = ip !== undefined;
      if (ip && ip !== host.ip) {
        host.ip = ip;
        host.client = new AgentClient({
          baseUrl: `http://${ip.includes(':') ? `[${ip}]` : ip}:${this.o.agentPort}`,
          hostId: host.id,
          token: deriveHostToken(this.token, host.id),
          timeoutMs: this.o.agentTimeoutMs,
          ...(this.options.agentRetry ? { retry: this.options.agentRetry } : {}),
          logger: this.logger,
        });
      }
      if (!ip || host.healthStatus !== 'Healthy' || host.lifecycle.startsWith('Terminat')) {
        if (host.reachable) this.logger.warn({ hostId: host.id, lifecycle: host.lifecycle, health: host.healthStatus, ec2: ip ? 'running' : 'terminated' }, ip ? 'host left service; no placement on it' : 'EC2 reports the host terminated; its instances are gone');
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
    this.discovered = true;
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
      this.markAnswering(host);
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
    if (host.reachable || host.unreachableReason !== describeUnreachable(e)) {
      this.logger.warn({ hostId: host.id, ip: host.ip, err: e.message }, 'host agent unhealthy; skipped for placement');
    }
    host.reachable = false;
    host.unreachableReason = describeUnreachable(e);
    host.unreachableSince ??= this.now();
  }

  /** A valid answer from the agent: reachable again (its instances are reported as it reports them). */
  private markAnswering(host: HostState): void {
    if (host.unreachableSince !== undefined) this.logger.info({ hostId: host.id, downForMs: this.now() - host.unreachableSince }, 'host agent answering again');
    host.reachable = true;
    host.answered = true;
    host.authFailed = false;
    host.unreachableReason = undefined;
    host.unreachableSince = undefined;
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

  /**
   * Every controller refreshes its view of the hosts, protects the busy ones and raises the desired capacity
   * for its own waiting creates (SetDesiredCapacity only ever raises it). What must run once — evacuating,
   * replacing silent hosts, releasing protection and scaling in — runs on the leader alone, so two
   * controllers sharing a store never move the same workspace twice or terminate a host the other placed on.
   */
  private async reconcile(): Promise<void> {
    await this.refreshHosts(Math.min(this.o.hostCacheTtlMs, this.o.reconcileIntervalMs / 2));
    if (this.leads()) {
      this.startEvacuations();
      await this.replaceSilentHosts();
    }
    await this.syncProtection();
    await this.maybeScaleOut();
    if (this.leads()) await this.scaleIn();
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
    // Releasing is the leader's: a follower's view of a host may miss another controller's create in flight.
    const release = this.leads() ? live.filter((h) => h.protected && h.used + h.inflight.size === 0) : [];
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
          // Refused as a whole when one host left service since our last look: it is not InService any more.
          const stale = /The instance (i-[0-9a-f]+) is not in InService/.exec((err as Error)?.message ?? '')?.[1];
          const host = stale ? this.hosts.get(stale) : undefined;
          if (host) host.lifecycle = 'Unknown';
          this.logger.warn({ err: describeAwsError(err), hosts: batch.map((h) => h.id), protected: flag }, 'SetInstanceProtection failed; trying again next pass');
        }
      }
    }
  }

  /**
   * A host whose agent never answered within the boot deadline of its launch will not by itself: EC2 keeps
   * it InService and Healthy whatever its user data did. Terminate it without decrementing the desired
   * capacity, so the group launches a replacement; it no longer counts as booting capacity.
   */
  private async replaceSilentHosts(): Promise<void> {
    if (this.closed) return;
    const now = this.now();
    const silent = [...this.hosts.values()].filter(
      (h) => (h.lifecycle === 'Pending' || h.lifecycle === 'InService') && h.ec2Live && !h.answered && !h.authFailed && h.inflight.size === 0 && now - h.launchedAt >= this.o.hostBootTimeoutMs,
    );
    for (const host of silent) {
      try {
        this.count('TerminateInstanceInAutoScalingGroup');
        await this.fenced(() => this.asg!.send(new TerminateInstanceInAutoScalingGroupCommand({ InstanceId: host.id, ShouldDecrementDesiredCapacity: false })));
        host.lifecycle = 'Terminating';
        host.reachable = false;
        this.logger.warn(
          { hostId: host.id, ip: host.ip, launchedForMs: now - host.launchedAt, reason: host.unreachableReason },
          `host never answered within the boot deadline (${this.o.hostBootTimeoutMs} ms); terminated for the group to replace it`,
        );
      } catch (err) {
        this.logger.warn({ hostId: host.id, err: describeAwsError(err) }, 'terminating a host that never booted failed; trying again next pass');
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
        await this.fenced(() => this.asg!.send(new TerminateInstanceInAutoScalingGroupCommand({ InstanceId: victim.id, ShouldDecrementDesiredCapacity: true })));
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

  // ---- evacuation of hosts being terminated ----

  /** Starts moving the instances off each host waiting on a termination hook (one evacuation per host). */
  private startEvacuations(): void {
    if (this.closed || !this.asg || this.options.evacuateTerminatingHosts === false) return;
    for (const host of this.hosts.values()) {
      if (host.lifecycle !== 'Terminating:Wait' || host.evacuating || !host.client || !host.ec2Live) continue;
      host.retiring = true;
      host.evacuating = this.evacuate(host)
        .catch((err) => this.logger.error({ hostId: host.id, err: (err as Error).message }, 'evacuation of a terminating host failed'))
        .finally(() => {
          // Kept set while the host is still listed, so it is not started twice for the same wait.
          if (this.hosts.get(host.id) !== host) host.evacuating = undefined;
        });
    }
  }

  /**
   * Moves every instance off `host` while its termination lifecycle action is kept alive, then completes
   * the action with CONTINUE. Instances that cannot be moved are tried again until the deadline.
   */
  private async evacuate(host: HostState): Promise<void> {
    const started = this.now();
    const action = new LifecycleAction({ asg: this.asg!, groupName: this.options.groupName, instanceId: host.id, logger: this.logger, count: (a) => this.count(a) });
    const hook = await action.open();
    if (!hook) {
      this.logger.warn({ hostId: host.id }, 'host is in Terminating:Wait but no termination hook accepts a heartbeat for it; not evacuating');
      return;
    }
    // Stop before the global timeout, leaving one heartbeat period for the last move's clean-up.
    const deadline = started + Math.min(this.options.evacuationTimeoutMs ?? 3_600_000, hook.globalTimeoutMs - hook.heartbeatTimeoutMs);
    this.logger.warn({ hostId: host.id, hook: hook.name, heartbeatTimeoutMs: hook.heartbeatTimeoutMs }, 'host is being terminated: moving its instances to other hosts');
    let moved = 0;
    const failures = new Map<string, string>();
    try {
      for (;;) {
        if (this.closed) return;
        if (!this.leads()) {
          // The heartbeats stop with this pass; the new leader finds the host still waiting and takes over.
          this.logger.warn({ hostId: host.id, moved }, 'no longer leading: the evacuation of this host is left to the new leader');
          return;
        }
        const left = await host.client!.list();
        if (left.length === 0) break;
        failures.clear();
        for (const instance of left) {
          if (this.closed) return;
          try {
            // Confirmed with the store before each move: a leader that was paused must not move what the new one moves.
            await this.fenced(() => this.moveOff(host, instance, deadline));
            moved++;
          } catch (err) {
            const why = asSwarmError(err).message;
            failures.set(instance.id, why);
            this.moving.delete(instance.id);
            this.logger.error({ instanceId: instance.id, hostId: host.id, err: why }, 'could not move an instance off a terminating host; trying again');
          }
        }
        if (failures.size === 0) continue; // list again: nothing may have arrived meanwhile, but check
        if (this.now() >= deadline) {
          for (const [id, why] of failures) {
            this.unmoved.set(id, `not moved off host ${host.id} before its termination: ${why}`);
          }
          this.logger.error(
            { hostId: host.id, instances: Object.fromEntries(failures), triedForMs: this.now() - started },
            'gave up moving instances off a terminating host: their workspaces go with it',
          );
          break;
        }
        await sleep(Math.min(5_000, this.o.hostPollMs * 4));
      }
    } catch (err) {
      if (this.closed) return;
      throw err;
    } finally {
      action.stop();
    }
    const completed = await this.fenced(() => action.complete('CONTINUE'));
    this.logger.info({ hostId: host.id, moved, failed: failures.size, heartbeats: action.heartbeats, tookMs: this.now() - started, completed }, 'evacuation of a terminating host finished; lifecycle action completed');
  }

  /**
   * One instance from `from` to another host, with its files: quiesce, export (spooled, manifest), create
   * on a new host, import, verify the new host's manifest, restore the running state, then delete the old
   * copy. Until the old copy is deleted a failure undoes what was made on the new host and leaves the old one.
   */
  private async moveOff(from: HostState, instance: VSCodeInstance, deadline: number): Promise<void> {
    const id = instance.id;
    const wasRunning = instance.status === 'running' || instance.status === 'starting';
    this.moving.set(id, `moving to another host: host ${from.id} is being terminated`);
    this.unmoved.delete(id);
    const dir = await mkdtemp(path.join(this.options.spoolDir ?? os.tmpdir(), 'vscode-swarm-evacuate-'));
    let target: HostState | undefined;
    let createdOnTarget = false;
    try {
      if (instance.status !== 'stopped') await from.client!.stop(id, false, this.o.agentCreateTimeoutMs);
      const limits = { maxBytes: this.options.evacuationMaxBytes ?? 50 * 1024 ** 3, deadline, now: this.now, what: `the workspace of ${id}` };
      const spooled = await spoolArchive(await from.client!.exportWorkspace(id, this.o.agentCreateTimeoutMs), path.join(dir, 'workspace.tar'), limits);
      target = await this.reserveSlot(id, () => undefined);
      try {
        const config = { ...instance.config, image: instance.config.image ?? this.options.defaultImage };
        const { created } = await target.client!.create(id, config, this.o.agentCreateTimeoutMs);
        createdOnTarget = created;
        if (created) target.used++;
        target.epoch++;
      } finally {
        target.inflight.delete(id);
        target.epoch++;
        this.touchEmpty(target);
        this.scheduleProtection();
      }
      await target.client!.importWorkspace(id, openSpooled(spooled), this.o.agentCreateTimeoutMs);
      const arrived = await manifestOf(await target.client!.exportWorkspace(id, this.o.agentCreateTimeoutMs), limits);
      const problems = manifestDifferences(spooled.manifest, arrived);
      if (problems.length) {
        throw new SwarmError('PROVIDER_ERROR', `aws-asg: the workspace of ${id} did not arrive intact on host ${target.id}: ${problems.slice(0, 5).join('; ')}${problems.length > 5 ? ` (+${problems.length - 5} more)` : ''}`);
      }
      const now = wasRunning ? await target.client!.start(id, this.o.agentCreateTimeoutMs) : await target.client!.stop(id, false, this.o.agentCreateTimeoutMs);
      this.remember(target, now);
      this.located.set(id, target.id);
      createdOnTarget = false; // from here the new copy is the instance
      await from.client!.delete(id, false, this.o.agentCreateTimeoutMs);
      from.known?.delete(id);
      from.used = Math.max(0, from.used - 1);
      from.epoch++;
      this.logger.info({ instanceId: id, from: from.id, to: target.id, bytes: spooled.bytes, files: Object.keys(spooled.manifest).length }, 'instance moved off a terminating host, files verified');
    } catch (err) {
      if (target && createdOnTarget) {
        await target.client!.delete(id, false, this.o.agentCreateTimeoutMs).then(
          () => {
            target!.used = Math.max(0, target!.used - 1);
            target!.known?.delete(id);
          },
          (e: unknown) => this.logger.warn({ instanceId: id, hostId: target!.id, err: (e as Error).message }, 'could not remove a half-moved copy'),
        );
        this.located.set(id, from.id);
      }
      // The old copy stays as it was for its user until the next attempt.
      if (wasRunning) await from.client!.start(id, this.o.agentCreateTimeoutMs).catch(() => undefined);
      throw err;
    } finally {
      this.moving.delete(id);
      await rm(dir, { recursive: true, force: true });
    }
  }

  /** An instance being moved (or given up on) reads `unknown` with the reason, wherever it is listed. */
  private evacuationView(instance: VSCodeInstance): VSCodeInstance {
    const reason = this.moving.get(instance.id) ?? this.unmoved.get(instance.id);
    if (!reason) return instance;
    const { endpoint: _endpoint, ...rest } = instance;
    return { ...rest, status: 'unknown', health: 'unknown', statusReason: reason };
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

/** Why an agent did not answer, short: "agent refused", "agent timed out", else the error's message. */
function describeUnreachable(err: SwarmError): string {
  const transport = err.details?.transport;
  if (transport === 'ECONNREFUSED') return `agent refused (${err.message})`;
  if (transport === 'timeout' || transport === 'ETIMEDOUT') return `agent timed out (${err.message})`;
  return err.message;
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

/** Host and port of an http:// URL (port 80 when none is given), or undefined. */
function urlParts(text: string | undefined): { host: string; port: number } | undefined {
  if (!text) return undefined;
  try {
    const url = new URL(text);
    if (url.protocol !== 'http:') return undefined;
    return { host: url.hostname.replace(/^\[|\]$/g, ''), port: url.port === '' ? 80 : Number(url.port) };
  } catch {
    return undefined;
  }
}
