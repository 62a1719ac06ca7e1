/**
 * A local emulator of the parts of Amazon EC2 Auto Scaling and Amazon EC2 that the aws-asg provider uses,
 * spoken on the wire (AWS Query 2011-01-01 under `/asg`, EC2 Query 2016-11-15 under `/ec2`) so that the real
 * `@aws-sdk/client-auto-scaling` and `@aws-sdk/client-ec2` clients exercise their serialization, pagination,
 * error parsing and retries against it.
 *
 * Its "EC2 hosts" are real child processes, one per instance, each bound to its own loopback address
 * (127.0.0.2, 127.0.0.3, …): by default the host agent (`node dist/src/cli.js agent --host-id <id> --bind <ip>
 * …`). See fake-agent.ts for the contract a host process follows.
 *
 * Behaviour, after the Auto Scaling and EC2 documentation (each page cited beside the code that models it):
 * - A group has min/max/desired. A change of desired capacity is acted on some time after the request
 *   returns (`launchDelayMs`), never inside it. When desired exceeds the instances in service or pending,
 *   instances are launched: `pending`/`Pending` for the boot delay, then `running`/`InService`, whatever
 *   the host's process does (on AWS an instance is InService minutes before its user data has finished).
 *   When desired is below, unprotected instances are terminated (unhealthy first, then pending, then
 *   newest first); instances protected from scale-in are skipped.
 * - Health comes from EC2 status only (the group's health check type is EC2): an agent process that
 *   exits, hangs or never starts does not make the instance unhealthy. The agent is a process on the
 *   instance, separate from it: `killAgent` ends it and keeps its containers, `restartAgent` starts it
 *   again (same id, address, state folder and containers). Only an instance failure (`killHost`: EC2
 *   reports it terminated) makes it `Unhealthy`; after the health-check delay the group drops it and
 *   launches a replacement.
 * - Terminating: `Terminating`, then `Terminating:Wait` while a termination lifecycle hook waits for
 *   CompleteLifecycleAction, a heartbeat timeout (extended by RecordLifecycleActionHeartbeat, bounded by
 *   the global timeout) or its default result; then SIGTERM (SIGKILL after a grace period) and
 *   `terminated`/`Terminated`. The emulator never drains a host itself (no AWS component does): what the
 *   host does on SIGTERM is the host's business. What the instance's disk held goes with it
 *   (`agent.destroyDisk`), and the address is freed.
 * - SetInstanceProtection refuses the whole call when any instance named is not InService.
 * - DescribeAutoScalingInstances reports HealthStatus in capitals (`HEALTHY`), DescribeAutoScalingGroups in
 *   title case (`Healthy`), as the real service does.
 * - Terminated instances stay visible to DescribeInstances (without a private address) for the emulator's
 *   lifetime; the real service keeps them for about an hour.
 */
import { createHash, randomBytes, randomUUID } from 'node:crypto';
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import { HostProcess, type ExitInfo } from './host-process.js';
import { LoopbackPool, type LoopbackPoolOptions } from './loopback-pool.js';
import {
  ASG_VERSION,
  AwsError,
  EC2_VERSION,
  asgResponse,
  boolParam,
  checkSigV4,
  decodeToken,
  ec2Response,
  el,
  encodeToken,
  errorBody,
  intParam,
  list,
  listParam,
  node,
  parseParams,
  requireParam,
  structListParam,
  validationError,
  type Service,
} from './query-protocol.js';

// ---- options and API ----

/** What a host process is started with; the values the emulator chose for this launch. */
export interface HostLaunchContext {
  hostId: string;
  ip: string;
  /** 0, 1, 2, … across the emulator's launches. */
  index: number;
  group: string;
}

export interface AgentLaunchOptions {
  /** The executable; default `process.execPath`. */
  command?: string;
  /** The script given to `command`; default `dist/src/cli.js` (relative to `cwd`). */
  script?: string;
  /**
   * Appended after `<script> agent --host-id <id> --bind <ip>`. In the array form `{hostId}`, `{ip}`,
   * `{index}` and `{group}` are replaced (e.g. `['--state-dir', '/tmp/x/{hostId}']`).
   */
  extraArgs?: string[] | ((host: HostLaunchContext) => string[]);
  /** Replaces the whole argument list (script, `agent`, flags and extra arguments). */
  args?: (host: HostLaunchContext) => string[];
  /** Working directory; default `process.cwd()`. */
  cwd?: string;
  /** Added to the emulator's own environment. */
  env?: Record<string, string>;
  /** The agent's control-API port (for `apiUrl`); when absent, the `api=` URL of its ready line is used. */
  apiPort?: number;
  /** The agents' bearer token. Informational: the emulator never calls an agent (AWS does not either). */
  token?: string;
  /**
   * What the instance's disk held goes with the instance: called once when an instance is terminated,
   * after its process has stopped (e.g. remove the Docker containers and volumes its agent labelled).
   */
  destroyDisk?: (host: HostLaunchContext) => Promise<void>;
}

export interface GroupTag {
  key: string;
  value: string;
  /** Default true: the tag is copied onto the group's instances. */
  propagateAtLaunch?: boolean;
}

export interface GroupSpec {
  name: string;
  minSize: number;
  maxSize: number;
  /** Default `minSize`. */
  desiredCapacity?: number;
  tags?: GroupTag[] | Record<string, string>;
  /** Default t3.large. */
  instanceType?: string;
  /** Default a fixed fake AMI id. */
  imageId?: string;
  /** Default [`<region>a`]. Instances are spread over them in turn. */
  availabilityZones?: string[];
  newInstancesProtectedFromScaleIn?: boolean;
  /**
   * A termination lifecycle hook present from the start (as PutLifecycleHook would make it): terminating
   * instances wait in `Terminating:Wait` until CompleteLifecycleAction names them or `timeoutMs` (the
   * heartbeat timeout, default 10 s) passes without a RecordLifecycleActionHeartbeat; then `defaultResult`
   * (default CONTINUE; for a termination either result lets the instance terminate).
   */
  terminationHook?: { name: string; timeoutMs?: number; defaultResult?: 'CONTINUE' | 'ABANDON' };
}

export type FaultKind =
  /** Auto Scaling 400 `Throttling`; EC2 503 `RequestLimitExceeded`. */
  | 'throttle'
  /** Auto Scaling 500 `InternalFailure`; EC2 500 `InternalError`. */
  | 'internal'
  /** 503 `ServiceUnavailable` (Auto Scaling) / `Unavailable` (EC2). */
  | 'unavailable'
  /** The connection is reset without an answer. */
  | 'reset'
  /** The call is answered normally after `delayMs`. */
  | 'slow';

export interface FaultRule {
  kind: FaultKind;
  /** Action names (e.g. `['DescribeInstances']`) or a pattern on them; all actions when absent. */
  actions?: string[] | RegExp;
  service?: Service;
  /** Fraction (0..1) of matching calls affected; default 1. */
  rate?: number;
  /** The rule is spent after firing this many times. */
  count?: number;
  /** For `slow`; default 2000. */
  delayMs?: number;
}

/** Which launches get a process that never starts the agent (user data that fails): the next N launches, or a predicate. */
export type NeverBootsOption = number | ((host: HostLaunchContext) => boolean);

export interface AwsEmulatorOptions {
  host?: string;
  port?: number;
  /** Default us-east-1; used in ARNs and availability zones (the SDK clients may use any region). */
  region?: string;
  /** Default 123456789012. */
  accountId?: string;
  /** Groups that exist from the start; their desired capacity is launched at once. */
  groups?: GroupSpec[];
  agent?: AgentLaunchOptions;
  /** How long an instance stays `pending` before it is `running`/InService, whatever its agent does. Default 0. */
  bootDelayMs?: number;
  /** Between a change of desired capacity (or a termination to replace) and the launches or terminations it causes. Default 100 ms. */
  launchDelayMs?: number;
  /** Between SIGTERM and SIGKILL. Default 5 s. */
  stopGraceMs?: number;
  /** How long a dead host stays `Unhealthy` in its group before it is dropped and replaced. Default 1 s. */
  healthCheckDelayMs?: number;
  hostNeverBoots?: NeverBootsOption;
  faults?: FaultRule[];
  addresses?: LoopbackPoolOptions;
  /** Randomness for fault rates; default Math.random. */
  random?: () => number;
  /** Every line a host process prints. */
  onHostOutput?: (hostId: string, stream: 'stdout' | 'stderr', line: string) => void;
}

export type Ec2State = 'pending' | 'running' | 'shutting-down' | 'terminated';
export type LifecycleState = 'Pending' | 'InService' | 'Terminating' | 'Terminating:Wait' | 'Terminating:Proceed' | 'Terminated';

/** The host's agent process: starting (not ready yet), ready, down (exited or killed), none (never started). */
export type AgentState = 'starting' | 'ready' | 'down' | 'none';

export interface HostSnapshot {
  id: string;
  group: string;
  ip: string;
  state: Ec2State;
  stateCode: number;
  lifecycleState: LifecycleState;
  healthStatus: 'Healthy' | 'Unhealthy';
  protectedFromScaleIn: boolean;
  /** Still listed by the group (false once Terminated). */
  inGroup: boolean;
  launchTime: string;
  readyAt?: string;
  terminatedAt?: string;
  /** Why the host failed or was terminated. */
  reason?: string;
  pid?: number;
  apiUrl?: string;
  agent: AgentState;
  /** How the agent process last ended. */
  exit?: ExitInfo;
  /** Agent processes started on this instance (1 + restarts). */
  agentStarts: number;
  neverBoots: boolean;
  /** The lifecycle action token while in Terminating:Wait. */
  lifecycleActionToken?: string;
  /** The last lines the process printed. */
  output: string[];
}

export interface ActivitySnapshot {
  id: string;
  group: string;
  description: string;
  cause: string;
  statusCode: 'InProgress' | 'Successful' | 'Failed' | 'Cancelled';
  statusMessage?: string;
  startTime: string;
  endTime?: string;
}

export interface GroupSnapshot {
  name: string;
  arn: string;
  minSize: number;
  maxSize: number;
  desiredCapacity: number;
  newInstancesProtectedFromScaleIn: boolean;
  instances: Array<Pick<HostSnapshot, 'id' | 'ip' | 'state' | 'lifecycleState' | 'healthStatus' | 'protectedFromScaleIn'>>;
  activities: ActivitySnapshot[];
}

export interface RecordedAwsCall {
  service: Service;
  action: string;
  status: number;
  /** The error code answered, if any. */
  code?: string;
  /** Set when an injected fault produced the answer. */
  fault?: FaultKind;
}

export interface RecordedLifecycleAction {
  group: string;
  hookName: string;
  instanceId?: string;
  token?: string;
  result: string;
  at: string;
  /** Whether a host was waiting in Terminating:Wait for it. */
  matched: boolean;
  /** The heartbeat timeout passed and the hook's default result was applied. */
  timedOut?: boolean;
}

export interface AwsEmulator {
  /** Base URL of the server: `http://127.0.0.1:PORT`. */
  url: string;
  /** The Auto Scaling client's `endpoint`. */
  asgEndpoint: string;
  /** The EC2 client's `endpoint`. */
  ec2Endpoint: string;
  region: string;
  /** Requests per action name (`DescribeInstances`, …), whatever their outcome (auth errors and faults included). */
  readonly calls: Record<string, number>;
  /** Every request in order. */
  readonly log: RecordedAwsCall[];
  totalCalls(): number;
  resetCalls(): void;
  /** Every host launched, terminated ones included, in launch order. */
  hosts(): HostSnapshot[];
  host(id: string): HostSnapshot | undefined;
  group(name: string): GroupSnapshot | undefined;
  /** CompleteLifecycleAction calls received, and default results applied on a heartbeat timeout (`hookName` then names the hook, `timedOut` true). */
  lifecycleActions(): RecordedLifecycleAction[];
  /** Replaces the fault rules (undefined: none). */
  setFaults(rules: FaultRule[] | undefined): void;
  setHostNeverBoots(option: NeverBootsOption | undefined): void;
  setBootDelay(ms: number): void;
  /**
   * The instance fails (hardware, a Spot reclaim without notice): SIGKILL to its process group, EC2 reports
   * it terminated at once, its disk is destroyed; the group replaces it after the health-check delay.
   */
  killHost(id: string): Promise<void>;
  /** The agent process dies (SIGKILL by default) and the instance stays running and healthy, its containers kept. */
  killAgent(id: string, signal?: NodeJS.Signals): Promise<void>;
  /** Starts the agent again on a running instance whose agent is down: same id, address, arguments (state folder). */
  restartAgent(id: string): Promise<void>;
  /** Polls `predicate` until true; rejects after `timeoutMs` (default 15 s) naming `what`. */
  waitFor(predicate: () => boolean, timeoutMs?: number, what?: string): Promise<void>;
  /** Resolves once the group has exactly `desiredCapacity` healthy InService instances and nothing else, and each agent that will start is ready. */
  waitForGroupStable(name: string, timeoutMs?: number): Promise<GroupSnapshot>;
  /** Stops the server, kills every host process and frees every address. */
  close(): Promise<void>;
}

export async function startAwsEmulator(options: AwsEmulatorOptions = {}): Promise<AwsEmulator> {
  const emulator = new Emulator(options);
  await emulator.listen();
  emulator.startGroups();
  return emulator.api();
}

// ---- internal model ----

type ActivityStatus = ActivitySnapshot['statusCode'];

interface EmuActivity {
  id: string;
  group: EmuGroup;
  description: string;
  cause: string;
  details: string;
  startTime: Date;
  endTime?: Date;
  statusCode: ActivityStatus;
  statusMessage?: string;
  progress: number;
}

interface EmuGroup {
  name: string;
  arn: string;
  minSize: number;
  maxSize: number;
  desiredCapacity: number;
  createdTime: Date;
  tags: Required<GroupTag>[];
  instanceType: string;
  imageId: string;
  availabilityZones: string[];
  subnets: string[];
  newInstancesProtectedFromScaleIn: boolean;
  /** Lifecycle hooks by name (termination hooks only: launch hooks are refused, not modelled). */
  hooks: Map<string, EmuHook>;
  launchTemplate: { id: string; name: string; version: string };
  activities: EmuActivity[];
  launches: number;
}

interface EmuHook {
  name: string;
  transition: 'autoscaling:EC2_INSTANCE_TERMINATING';
  heartbeatTimeoutMs: number;
  defaultResult: 'CONTINUE' | 'ABANDON';
  /** Seconds as given to PutLifecycleHook (for DescribeLifecycleHooks). */
  heartbeatTimeoutSeconds: number;
  globalTimeoutSeconds: number;
  notificationMetadata?: string;
}

/** An instance waiting in Terminating:Wait for one hook. */
interface PendingAction {
  hook: EmuHook;
  token: string;
  timer: NodeJS.Timeout;
  globalDeadline: number;
  finish: (result: string, timedOut: boolean) => void;
}

interface EmuHost {
  id: string;
  group: EmuGroup;
  ip: string;
  az: string;
  subnet: string;
  reservationId: string;
  launchTime: Date;
  ec2State: Ec2State;
  lifecycle: LifecycleState;
  health: 'Healthy' | 'Unhealthy';
  protected: boolean;
  inGroup: boolean;
  neverBoots: boolean;
  ctx: HostLaunchContext;
  proc: HostProcess;
  agent: AgentState;
  agentStarts: number;
  readyAt?: Date;
  terminatedAt?: Date;
  reason?: string;
  stateReason?: { code: string; message: string };
  stateTransitionReason?: string;
  apiUrl?: string;
  launchActivity: EmuActivity;
  terminateActivity?: EmuActivity;
  /** The emulator is stopping it on purpose. */
  stopping: boolean;
  /** EC2 reports the instance terminated (an instance failure), whatever the group says yet. */
  dead: boolean;
  /** Set while in Terminating:Wait. */
  action?: PendingAction;
  /** The disk was destroyed and the address freed. */
  released: boolean;
}

const STATE_CODES: Record<Ec2State, number> = { pending: 0, running: 16, 'shutting-down': 32, terminated: 48 };
const DEFAULT_IMAGE = 'ami-0c0ffee0c0ffee000';
const SLEEPER =
  "process.stdout.write('host booting (never ready)\\n');process.stdin.on('end',()=>process.exit(0));process.stdin.resume();setInterval(()=>{},1<<30);";

class Emulator {
  private readonly server: http.Server;
  private readonly region: string;
  private readonly accountId: string;
  private readonly pool: LoopbackPool;
  private readonly groups = new Map<string, EmuGroup>();
  private readonly hostsById = new Map<string, EmuHost>();
  private readonly calls: Record<string, number> = {};
  private readonly log: RecordedAwsCall[] = [];
  private readonly lifecycleActions: RecordedLifecycleAction[] = [];
  private readonly timers = new Set<NodeJS.Timeout>();
  private readonly sleepers = new Set<() => void>();
  private readonly abort = new AbortController();
  private faults: Array<FaultRule & { fired: number }>;
  private neverBoots: NeverBootsOption | undefined;
  private bootDelayMs: number;
  private launchCounter = 0;
  private closed = false;
  private url = '';
  private readonly exitHook = (): void => {
    for (const h of this.hostsById.values()) h.proc.signal('SIGKILL');
  };

  constructor(private readonly options: AwsEmulatorOptions) {
    this.region = options.region ?? 'us-east-1';
    this.accountId = options.accountId ?? '123456789012';
    this.pool = new LoopbackPool(options.addresses);
    this.faults = (options.faults ?? []).map((f) => ({ ...f, fired: 0 }));
    this.neverBoots = options.hostNeverBoots;
    this.bootDelayMs = options.bootDelayMs ?? 0;
    for (const spec of options.groups ?? []) this.addGroup(spec);
    this.server = http.createServer((req, res) => void this.handle(req, res));
  }

  async listen(): Promise<void> {
    await new Promise<void>((resolve, reject) => {
      this.server.once('error', reject);
      this.server.listen(this.options.port ?? 0, this.options.host ?? '127.0.0.1', () => resolve());
    });
    const { address, port } = this.server.address() as AddressInfo;
    this.url = `http://${address.includes(':') ? `[${address}]` : address}:${port}`;
    process.on('exit', this.exitHook);
  }

  startGroups(): void {
    for (const g of this.groups.values()) this.reconcile(g, 'At start-up the group was created with a desired capacity of ' + g.desiredCapacity + '.');
  }

  api(): AwsEmulator {
    return {
      url: this.url,
      asgEndpoint: `${this.url}/asg`,
      ec2Endpoint: `${this.url}/ec2`,
      region: this.region,
      calls: this.calls,
      log: this.log,
      totalCalls: () => this.log.length,
      resetCalls: () => {
        for (const k of Object.keys(this.calls)) delete this.calls[k];
        this.log.length = 0;
      },
      hosts: () => [...this.hostsById.values()].map((h) => this.snapshot(h)),
      host: (id) => {
        const h = this.hostsById.get(id);
        return h ? this.snapshot(h) : undefined;
      },
      group: (name) => {
        const g = this.groups.get(name);
        return g ? this.groupSnapshot(g) : undefined;
      },
      lifecycleActions: () => this.lifecycleActions.map((a) => ({ ...a })),
      setFaults: (rules) => {
        this.faults = (rules ?? []).map((f) => ({ ...f, fired: 0 }));
      },
      setHostNeverBoots: (option) => {
        this.neverBoots = option;
      },
      setBootDelay: (ms) => {
        this.bootDelayMs = ms;
      },
      killHost: (id) => this.killHost(id),
      killAgent: (id, signal) => this.killAgent(id, signal),
      restartAgent: (id) => this.restartAgent(id),
      waitFor: (predicate, timeoutMs, what) => this.waitFor(predicate, timeoutMs, what),
      waitForGroupStable: async (name, timeoutMs) => {
        const g = this.groups.get(name);
        if (!g) throw new Error(`no group ${name}`);
        await this.waitFor(() => this.isStable(g), timeoutMs, `group ${name} to reach ${g.desiredCapacity} InService instance(s)`);
        return this.groupSnapshot(g);
      },
      close: () => this.close(),
    };
  }

  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    this.abort.abort();
    for (const t of this.timers) clearTimeout(t);
    this.timers.clear();
    for (const wake of this.sleepers) wake();
    for (const h of this.hostsById.values()) h.action?.finish('ABANDON', false);
    this.server.closeAllConnections();
    const serverClosed = new Promise<void>((resolve) => this.server.close(() => resolve()));
    const exits = [...this.hostsById.values()].map(async (h) => {
      h.stopping = true;
      await h.proc.kill();
      if (!h.released) this.pool.release(h.ip);
    });
    await Promise.all([serverClosed, ...exits]);
    process.off('exit', this.exitHook);
  }

  // ---- groups and hosts ----

  private addGroup(spec: GroupSpec): EmuGroup {
    if (this.groups.has(spec.name)) throw new Error(`aws emulator: group ${spec.name} defined twice`);
    const desired = spec.desiredCapacity ?? spec.minSize;
    if (!(spec.minSize >= 0 && spec.minSize <= desired && desired <= spec.maxSize)) {
      throw new Error(`aws emulator: group ${spec.name} needs 0 <= min (${spec.minSize}) <= desired (${desired}) <= max (${spec.maxSize})`);
    }
    const tags: Required<GroupTag>[] = Array.isArray(spec.tags)
      ? spec.tags.map((t) => ({ key: t.key, value: t.value, propagateAtLaunch: t.propagateAtLaunch ?? true }))
      : Object.entries(spec.tags ?? {}).map(([key, value]) => ({ key, value, propagateAtLaunch: true }));
    const zones = spec.availabilityZones ?? [`${this.region}a`];
    const g: EmuGroup = {
      name: spec.name,
      arn: `arn:aws:autoscaling:${this.region}:${this.accountId}:autoScalingGroup:${randomUUID()}:autoScalingGroupName/${spec.name}`,
      minSize: spec.minSize,
      maxSize: spec.maxSize,
      desiredCapacity: desired,
      createdTime: new Date(),
      tags,
      instanceType: spec.instanceType ?? 't3.large',
      imageId: spec.imageId ?? DEFAULT_IMAGE,
      availabilityZones: zones,
      subnets: zones.map(() => `subnet-0${hex(16)}`),
      newInstancesProtectedFromScaleIn: spec.newInstancesProtectedFromScaleIn ?? false,
      hooks: new Map(),
      launchTemplate: { id: `lt-0${hex(16)}`, name: `${spec.name}-template`, version: '1' },
      activities: [],
      launches: 0,
    };
    if (spec.terminationHook) {
      const ms = spec.terminationHook.timeoutMs ?? 10_000;
      g.hooks.set(spec.terminationHook.name, {
        name: spec.terminationHook.name,
        transition: 'autoscaling:EC2_INSTANCE_TERMINATING',
        heartbeatTimeoutMs: ms,
        heartbeatTimeoutSeconds: Math.max(1, Math.round(ms / 1000)),
        // https://docs.aws.amazon.com/autoscaling/ec2/APIReference/API_LifecycleHook.html: the global
        // timeout is 48 hours or 100 times the heartbeat timeout, whichever is smaller.
        globalTimeoutSeconds: Math.min(172_800, 100 * Math.max(1, Math.round(ms / 1000))),
        defaultResult: spec.terminationHook.defaultResult ?? 'CONTINUE',
      });
    }
    this.groups.set(g.name, g);
    return g;
  }

  private groupHosts(g: EmuGroup): EmuHost[] {
    return [...this.hostsById.values()].filter((h) => h.group === g && h.inGroup);
  }

  /** Instances that count towards the group's capacity: in the group and not terminating. */
  private activeHosts(g: EmuGroup): EmuHost[] {
    return this.groupHosts(g).filter((h) => h.lifecycle === 'Pending' || h.lifecycle === 'InService');
  }

  private isStable(g: EmuGroup): boolean {
    const hosts = this.groupHosts(g);
    return hosts.length === g.desiredCapacity && hosts.every((h) => h.lifecycle === 'InService' && h.health === 'Healthy' && (h.neverBoots || h.agent === 'ready'));
  }

  /** Launches or terminates until the group's active instances match its desired capacity. */
  private reconcile(g: EmuGroup, cause: string): void {
    if (this.closed) return;
    const active = this.activeHosts(g);
    if (active.length < g.desiredCapacity) {
      const from = active.length;
      for (let i = from; i < g.desiredCapacity; i++) {
        this.launch(g, `${cause} At ${isoSeconds()} an instance was started in response to a difference between desired and actual capacity, increasing the capacity from ${from} to ${g.desiredCapacity}.`);
      }
    } else if (active.length > g.desiredCapacity) {
      const excess = active.length - g.desiredCapacity;
      const rank = (h: EmuHost): number => (h.health === 'Unhealthy' ? 0 : h.lifecycle === 'Pending' ? 1 : 2);
      const victims = active
        .filter((h) => !h.protected)
        .sort((a, b) => rank(a) - rank(b) || b.launchTime.getTime() - a.launchTime.getTime() || (a.id < b.id ? 1 : -1))
        .slice(0, excess);
      for (const h of victims) {
        this.terminate(h, `${cause} At ${isoSeconds()} an instance was taken out of service in response to a difference between desired and actual capacity, shrinking the capacity from ${active.length} to ${g.desiredCapacity}.`);
      }
    }
  }

  /**
   * Acts on a capacity change later, as the service does: SetDesiredCapacity returns before any instance
   * is launched or terminated (the scaling activity starts afterwards,
   * https://docs.aws.amazon.com/autoscaling/ec2/userguide/ec2-auto-scaling-scaling-manually.html).
   */
  private scheduleReconcile(g: EmuGroup, cause: string): void {
    this.after(this.options.launchDelayMs ?? 100, () => this.reconcile(g, cause));
  }

  private launch(g: EmuGroup, cause: string): EmuHost | undefined {
    const id = `i-0${hex(16)}`;
    const zoneIndex = g.launches++ % g.availabilityZones.length;
    const az = g.availabilityZones[zoneIndex]!;
    const activity = this.activity(g, `Launching a new EC2 instance: ${id}`, cause, az, g.subnets[zoneIndex]!);
    let ip: string;
    try {
      ip = this.pool.allocate();
    } catch (err) {
      activity.description = 'Launching a new EC2 instance.  Status Reason: no address left';
      this.finishActivity(activity, 'Failed', (err as Error).message);
      return undefined;
    }
    const ctx: HostLaunchContext = { hostId: id, ip, index: this.launchCounter++, group: g.name };
    const neverBoots = this.takeNeverBoots(ctx);
    const host: EmuHost = {
      id,
      group: g,
      ip,
      az,
      subnet: g.subnets[zoneIndex]!,
      reservationId: `r-0${hex(16)}`,
      launchTime: new Date(),
      ec2State: 'pending',
      lifecycle: 'Pending',
      health: 'Healthy',
      protected: g.newInstancesProtectedFromScaleIn,
      inGroup: true,
      neverBoots,
      ctx,
      proc: undefined as unknown as HostProcess,
      agent: neverBoots ? 'none' : 'starting',
      agentStarts: 0,
      launchActivity: activity,
      stopping: false,
      dead: false,
      released: false,
    };
    this.hostsById.set(id, host);
    this.startProcess(host, neverBoots);
    void this.boot(host);
    return host;
  }

  /** Starts the host's process: the agent, or (user data that never starts it) a process that only sleeps. */
  private startProcess(host: EmuHost, sleeper: boolean): void {
    const agent = this.options.agent ?? {};
    const onOutput = this.options.onHostOutput;
    const proc = sleeper
      ? new HostProcess({ hostId: host.id, command: process.execPath, args: ['-e', SLEEPER], cwd: agent.cwd ?? process.cwd(), env: process.env, onOutput })
      : new HostProcess({
          hostId: host.id,
          command: agent.command ?? process.execPath,
          args: this.agentArgs(host.ctx),
          cwd: agent.cwd ?? process.cwd(),
          env: { ...process.env, ...agent.env },
          onOutput,
        });
    host.proc = proc;
    if (!sleeper) {
      host.agentStarts++;
      host.agent = 'starting';
      void this.watchAgent(host, proc);
    }
    void proc.exited.then(() => {
      if (host.proc === proc && !sleeper) host.agent = 'down';
    });
  }

  /** The agent's ready line gives its API address; it has no bearing on the instance's state. */
  private async watchAgent(host: EmuHost, proc: HostProcess): Promise<void> {
    const outcome = await proc.waitReady(2 ** 31 - 1);
    if (!outcome.ok || host.proc !== proc || this.closed) return;
    host.agent = 'ready';
    host.readyAt = new Date();
    host.apiUrl = this.apiUrlOf(host, outcome.line);
  }

  private agentArgs(ctx: HostLaunchContext): string[] {
    const agent = this.options.agent ?? {};
    if (agent.args) return agent.args(ctx);
    const extra =
      typeof agent.extraArgs === 'function'
        ? agent.extraArgs(ctx)
        : (agent.extraArgs ?? []).map((a) =>
            a.replace(/\{(hostId|ip|index|group)\}/g, (_m, k: keyof HostLaunchContext) => String(ctx[k])),
          );
    // Editors publish on a loopback address of the host's own (here its address, itself a loopback), so
    // hosts sharing this machine's engine and port range do not take each other's ports.
    return [agent.script ?? 'dist/src/cli.js', 'agent', '--host-id', ctx.hostId, '--bind', ctx.ip, '--publish-host', ctx.ip, ...extra];
  }

  private takeNeverBoots(ctx: HostLaunchContext): boolean {
    const option = this.neverBoots;
    if (option === undefined) return false;
    if (typeof option === 'function') return option(ctx);
    if (option <= 0) return false;
    this.neverBoots = option - 1;
    return true;
  }

  /**
   * Pending → InService after the boot delay, whatever the user data (the agent) does: Auto Scaling puts
   * an instance in service once EC2 reports it running and, without a launch hook, does not wait for its
   * software (https://docs.aws.amazon.com/autoscaling/ec2/userguide/ec2-auto-scaling-lifecycle.html).
   * With EC2 health checks its health is the EC2 status, so it stays Healthy with its agent down
   * (https://docs.aws.amazon.com/autoscaling/ec2/userguide/ec2-auto-scaling-health-checks.html).
   */
  private async boot(host: EmuHost): Promise<void> {
    const remaining = host.launchTime.getTime() + this.bootDelayMs - Date.now();
    if (remaining > 0) await this.sleep(remaining);
    if (this.closed || host.lifecycle !== 'Pending' || host.dead) return;
    host.ec2State = 'running';
    host.lifecycle = 'InService';
    this.finishActivity(host.launchActivity, 'Successful');
  }

  private apiUrlOf(host: EmuHost, readyLine: string): string | undefined {
    const port = this.options.agent?.apiPort;
    if (port !== undefined) return `http://${host.ip}:${port}`;
    const m = /\bapi=(\S+)/.exec(readyLine);
    return m ? m[1]!.replace(/\/+$/, '') : undefined;
  }

  /**
   * EC2 sees the instance terminated now (an instance failure); its disk goes with it. The group marks it
   * Unhealthy and replaces it after the health-check delay, as an EC2 health check would
   * (https://docs.aws.amazon.com/autoscaling/ec2/userguide/ec2-auto-scaling-health-checks.html).
   */
  private async failInstance(host: EmuHost, reason: string): Promise<void> {
    if (host.dead) return;
    host.dead = true;
    host.health = 'Unhealthy';
    host.reason = reason;
    host.ec2State = 'terminated';
    host.stateReason = { code: 'Server.InternalError', message: `Server.InternalError: ${reason}` };
    host.stateTransitionReason = `Server.InternalError (${new Date().toUTCString()})`;
    host.terminatedAt = new Date();
    if (host.launchActivity.statusCode === 'InProgress') this.finishActivity(host.launchActivity, 'Failed', reason);
    host.stopping = true;
    await host.proc.kill();
    await this.release(host);
    this.after(this.options.healthCheckDelayMs ?? 1_000, () => {
      if (!host.inGroup || host.lifecycle.startsWith('Terminat')) return;
      this.terminate(
        host,
        `At ${isoSeconds()} an instance was taken out of service in response to an EC2 health check indicating it has been terminated or stopped.`,
      );
    });
  }

  /** The instance's disk (what its agent left: containers, volumes) is destroyed and its address freed. Once. */
  private async release(host: EmuHost): Promise<void> {
    if (host.released) return;
    host.released = true;
    try {
      await this.options.agent?.destroyDisk?.(host.ctx);
    } catch (err) {
      host.proc.output.push(`[emulator] destroyDisk failed: ${(err as Error).message}`);
    }
    this.pool.release(host.ip);
  }

  /**
   * Takes the host out of service and runs the termination lifecycle. The state changes before the first
   * await, so a reconcile right after sees the host as terminating.
   */
  private terminate(host: EmuHost, cause: string): EmuActivity {
    if (host.terminateActivity) return host.terminateActivity;
    const g = host.group;
    const activity = this.activity(g, `Terminating EC2 instance: ${host.id}`, cause, host.az, host.subnet);
    host.terminateActivity = activity;
    host.lifecycle = 'Terminating';
    host.reason ??= cause;
    if (host.launchActivity.statusCode === 'InProgress') this.finishActivity(host.launchActivity, 'Cancelled', 'The instance was terminated before it was in service.');
    void this.runTermination(host, activity);
    return activity;
  }

  private async runTermination(host: EmuHost, activity: EmuActivity): Promise<void> {
    const g = host.group;
    if (!host.dead) {
      // Each termination hook holds the instance in Terminating:Wait in turn; the emulator does nothing to
      // the host meanwhile (https://docs.aws.amazon.com/autoscaling/ec2/userguide/lifecycle-hooks-overview.html).
      for (const hook of g.hooks.values()) {
        if (this.closed) return;
        const result = await this.waitOnHook(host, hook);
        // For a terminating instance both results let it terminate; ABANDON skips the remaining hooks
        // (https://docs.aws.amazon.com/autoscaling/ec2/APIReference/API_CompleteLifecycleAction.html).
        if (result === 'ABANDON') break;
      }
      if (this.closed) return;
      if (g.hooks.size) host.lifecycle = 'Terminating:Proceed';
      host.ec2State = 'shutting-down';
      host.stopping = true;
      // The OS shuts down: its services get SIGTERM, then the machine is gone.
      await host.proc.stop(this.options.stopGraceMs ?? 5_000);
    }
    await this.release(host);
    if (this.closed) return;
    if (!host.dead) {
      host.ec2State = 'terminated';
      host.stateReason = { code: 'Client.UserInitiatedShutdown', message: 'Client.UserInitiatedShutdown: User initiated shutdown' };
      host.stateTransitionReason = `User initiated (${new Date().toUTCString()})`;
      host.terminatedAt = new Date();
    }
    host.lifecycle = 'Terminated';
    host.inGroup = false;
    this.finishActivity(activity, 'Successful');
    this.scheduleReconcile(g, '');
  }

  /**
   * Terminating:Wait for one hook: until CompleteLifecycleAction, or the heartbeat timeout (each
   * RecordLifecycleActionHeartbeat restarts it, up to the global timeout) applies the default result
   * (https://docs.aws.amazon.com/autoscaling/ec2/userguide/lifecycle-hooks-overview.html).
   */
  private waitOnHook(host: EmuHost, hook: EmuHook): Promise<string> {
    host.lifecycle = 'Terminating:Wait';
    return new Promise<string>((resolve) => {
      const action: PendingAction = {
        hook,
        token: randomUUID(),
        timer: this.after(hook.heartbeatTimeoutMs, () => action.finish(hook.defaultResult, true)),
        globalDeadline: Date.now() + hook.globalTimeoutSeconds * 1000,
        finish: (result, timedOut) => {
          if (host.action !== action) return;
          clearTimeout(action.timer);
          this.timers.delete(action.timer);
          host.action = undefined;
          if (timedOut) {
            this.lifecycleActions.push({ group: host.group.name, hookName: hook.name, instanceId: host.id, token: action.token, result, at: new Date().toISOString(), matched: true, timedOut: true });
          }
          resolve(result);
        },
      };
      host.action = action;
    });
  }

  /** The instance fails: EC2 reports it terminated (and the group replaces it). */
  private async killHost(id: string): Promise<void> {
    const host = this.requireHost(id);
    await this.failInstance(host, 'instance failed (killed: SIGKILL, EC2 reports it terminated)');
  }

  /** Only the agent process ends; the instance, its address and its containers stay. */
  private async killAgent(id: string, signal: NodeJS.Signals = 'SIGKILL'): Promise<void> {
    const host = this.requireHost(id);
    const proc = host.proc;
    if (!proc.alive) return;
    proc.signal(signal);
    await proc.exited;
  }

  private async restartAgent(id: string): Promise<void> {
    const host = this.requireHost(id);
    if (host.ec2State !== 'running' && host.ec2State !== 'pending') throw new Error(`aws emulator: host ${id} is ${host.ec2State}; cannot start its agent`);
    if (host.proc.alive && host.agent !== 'none') throw new Error(`aws emulator: the agent of host ${id} is still running (${host.agent})`);
    if (host.proc.alive) await host.proc.kill(); // the sleeper of a host whose user data never started the agent
    host.neverBoots = false;
    this.startProcess(host, false);
  }

  private requireHost(id: string): EmuHost {
    const host = this.hostsById.get(id);
    if (!host) throw new Error(`aws emulator: no host ${id}`);
    return host;
  }

  // ---- activities ----

  private activity(g: EmuGroup, description: string, cause: string, az: string, subnet: string): EmuActivity {
    const a: EmuActivity = {
      id: randomUUID(),
      group: g,
      description,
      cause: cause.trim(),
      details: JSON.stringify({ 'Subnet ID': subnet, 'Availability Zone': az }),
      startTime: new Date(),
      statusCode: 'InProgress',
      progress: 0,
    };
    g.activities.push(a);
    return a;
  }

  private finishActivity(a: EmuActivity, status: ActivityStatus, message?: string): void {
    a.statusCode = status;
    a.progress = 100;
    a.endTime = new Date();
    if (message !== undefined) a.statusMessage = message;
  }

  // ---- snapshots ----

  private snapshot(h: EmuHost): HostSnapshot {
    const s: HostSnapshot = {
      id: h.id,
      group: h.group.name,
      ip: h.ip,
      state: h.ec2State,
      stateCode: STATE_CODES[h.ec2State],
      lifecycleState: h.lifecycle,
      healthStatus: h.health,
      protectedFromScaleIn: h.protected,
      inGroup: h.inGroup,
      launchTime: h.launchTime.toISOString(),
      agent: h.agent,
      agentStarts: h.agentStarts,
      neverBoots: h.neverBoots,
      output: [...h.proc.output],
    };
    if (h.readyAt) s.readyAt = h.readyAt.toISOString();
    if (h.terminatedAt) s.terminatedAt = h.terminatedAt.toISOString();
    if (h.reason !== undefined) s.reason = h.reason;
    if (h.proc.pid !== undefined) s.pid = h.proc.pid;
    if (h.apiUrl !== undefined) s.apiUrl = h.apiUrl;
    if (h.proc.exit) s.exit = { ...h.proc.exit };
    if (h.action) s.lifecycleActionToken = h.action.token;
    return s;
  }

  private groupSnapshot(g: EmuGroup): GroupSnapshot {
    return {
      name: g.name,
      arn: g.arn,
      minSize: g.minSize,
      maxSize: g.maxSize,
      desiredCapacity: g.desiredCapacity,
      newInstancesProtectedFromScaleIn: g.newInstancesProtectedFromScaleIn,
      instances: this.groupHosts(g).map((h) => ({
        id: h.id,
        ip: h.ip,
        state: h.ec2State,
        lifecycleState: h.lifecycle,
        healthStatus: h.health,
        protectedFromScaleIn: h.protected,
      })),
      activities: g.activities.map((a) => {
        const s: ActivitySnapshot = {
          id: a.id,
          group: g.name,
          description: a.description,
          cause: a.cause,
          statusCode: a.statusCode,
          startTime: a.startTime.toISOString(),
        };
        if (a.statusMessage !== undefined) s.statusMessage = a.statusMessage;
        if (a.endTime) s.endTime = a.endTime.toISOString();
        return s;
      }),
    };
  }

  // ---- HTTP ----

  private async handle(req: http.IncomingMessage, res: http.ServerResponse): Promise<void> {
    const requestId = randomUUID();
    const url = new URL(req.url ?? '/', 'http://emulator');
    let raw = '';
    try {
      raw = await readBody(req);
    } catch {
      res.destroy();
      return;
    }
    const params = parseParams(raw, url.searchParams);
    const service = serviceOf(url.pathname, params, req.headers.authorization);
    const action = params.get('Action') ?? '';
    const key = action || `${service}:(no action)`;
    this.calls[key] = (this.calls[key] ?? 0) + 1;
    const record: RecordedAwsCall = { service, action, status: 0 };
    this.log.push(record);

    let status = 200;
    let body: string;
    try {
      if (req.method !== 'POST' && req.method !== 'GET') throw new AwsError(405, 'InvalidAction', `Method ${req.method} is not allowed.`);
      const amzDate = req.headers['x-amz-date'];
      checkSigV4(service, req.headers.authorization, Array.isArray(amzDate) ? amzDate[0] : amzDate);
      if (!action) throw new AwsError(400, 'MissingAction', 'The request is missing an action or a required parameter.');
      const expected = service === 'ec2' ? EC2_VERSION : ASG_VERSION;
      const version = params.get('Version');
      if (version !== undefined && version !== expected) {
        throw new AwsError(400, 'InvalidAction', `Could not find operation ${action} for version ${version}`);
      }
      const fault = await this.injectFault(service, action, record);
      if (fault === 'reset') {
        record.status = 0;
        req.socket.destroy();
        return;
      }
      const handler = service === 'ec2' ? this.ec2Handler(action) : this.asgHandler(action);
      if (!handler) throw new AwsError(400, 'InvalidAction', `The action ${action} is not valid for this web service.`);
      body = await handler(params, requestId);
    } catch (err) {
      const e =
        err instanceof AwsError
          ? err
          : service === 'ec2'
            ? new AwsError(500, 'InternalError', `An internal error has occurred: ${(err as Error)?.message ?? String(err)}`)
            : new AwsError(500, 'InternalFailure', `An internal error has occurred: ${(err as Error)?.message ?? String(err)}`);
      status = e.status;
      record.code = e.code;
      body = errorBody(service, e, requestId);
    }
    record.status = status;
    if (res.destroyed || res.writableEnded) return;
    res.writeHead(status, {
      'content-type': 'text/xml;charset=UTF-8',
      'content-length': Buffer.byteLength(body),
      'x-amzn-requestid': requestId,
      date: new Date().toUTCString(),
    });
    res.end(body);
  }

  /** Applies the first matching fault rule that fires; throws its error, or returns after a slow rule's delay. */
  private async injectFault(service: Service, action: string, record: RecordedAwsCall): Promise<FaultKind | undefined> {
    const random = this.options.random ?? Math.random;
    for (const rule of this.faults) {
      if (rule.service && rule.service !== service) continue;
      if (rule.actions) {
        const match = Array.isArray(rule.actions) ? rule.actions.includes(action) : rule.actions.test(action);
        if (!match) continue;
      }
      if (rule.count !== undefined && rule.fired >= rule.count) continue;
      if (random() >= (rule.rate ?? 1)) continue;
      rule.fired++;
      record.fault = rule.kind;
      switch (rule.kind) {
        case 'slow':
          await this.sleep(rule.delayMs ?? 2_000);
          return 'slow';
        case 'reset':
          return 'reset';
        case 'throttle':
          throw service === 'ec2'
            ? new AwsError(503, 'RequestLimitExceeded', 'Request limit exceeded.')
            : new AwsError(400, 'Throttling', 'Rate exceeded');
        case 'internal':
          throw service === 'ec2'
            ? new AwsError(500, 'InternalError', 'An internal error has occurred')
            : new AwsError(500, 'InternalFailure', 'The request processing has failed because of an unknown error, exception or failure.');
        case 'unavailable':
          throw service === 'ec2'
            ? new AwsError(503, 'Unavailable', "The server is overloaded and can't handle the request.")
            : new AwsError(503, 'ServiceUnavailable', 'Service is unavailable. Please try again later.');
      }
    }
    return undefined;
  }

  // ---- Auto Scaling actions ----

  private asgHandler(action: string): Handler | undefined {
    switch (action) {
      case 'DescribeAutoScalingGroups':
        return (p, id) => this.describeAutoScalingGroups(p, id);
      case 'DescribeAutoScalingInstances':
        return (p, id) => this.describeAutoScalingInstances(p, id);
      case 'SetDesiredCapacity':
        return (p, id) => this.setDesiredCapacity(p, id);
      case 'UpdateAutoScalingGroup':
        return (p, id) => this.updateAutoScalingGroup(p, id);
      case 'SetInstanceProtection':
        return (p, id) => this.setInstanceProtection(p, id);
      case 'TerminateInstanceInAutoScalingGroup':
        return (p, id) => this.terminateInstanceInAutoScalingGroup(p, id);
      case 'CompleteLifecycleAction':
        return (p, id) => this.completeLifecycleAction(p, id);
      case 'RecordLifecycleActionHeartbeat':
        return (p, id) => this.recordLifecycleActionHeartbeat(p, id);
      case 'PutLifecycleHook':
        return (p, id) => this.putLifecycleHook(p, id);
      case 'DescribeLifecycleHooks':
        return (p, id) => this.describeLifecycleHooks(p, id);
      case 'DescribeScalingActivities':
        return (p, id) => this.describeScalingActivities(p, id);
      default:
        return undefined;
    }
  }

  private requireGroup(name: string): EmuGroup {
    const g = this.groups.get(name);
    if (!g) throw validationError(`AutoScalingGroup name not found - AutoScalingGroup ${name} not found`);
    return g;
  }

  private describeAutoScalingGroups(p: Params, requestId: string): string {
    const names = listParam(p, 'AutoScalingGroupNames.member');
    if (names.length > 50) throw validationError('The number of group names that may be passed in is limited to 50.');
    const maxRecords = intParam(p, 'MaxRecords', 'autoscaling') ?? 50;
    if (maxRecords < 1 || maxRecords > 100) {
      throw validationError(`1 validation error detected: Value '${maxRecords}' at 'maxRecords' failed to satisfy constraint: Member must have value between 1 and 100`);
    }
    const includeInstances = boolParam(p, 'IncludeInstances') ?? true;
    const filters = structListParam(p, 'Filters.member').map((f) => ({ name: f.get('Name') ?? '', values: listParam(f, 'Values.member') }));
    for (const f of filters) {
      if (!['tag-key', 'tag-value'].includes(f.name) && !f.name.startsWith('tag:')) {
        throw validationError(`Filter type ${f.name} is not correct. Allowed Filter types are: auto-scaling-group, key, value, propagate-at-launch, tag-key, tag-value and tag:<key>.`);
      }
    }
    let groups = [...this.groups.values()].sort((a, b) => (a.name < b.name ? -1 : 1));
    if (names.length) groups = groups.filter((g) => names.includes(g.name));
    groups = groups.filter((g) =>
      filters.every((f) => {
        if (f.name === 'tag-key') return g.tags.some((t) => f.values.includes(t.key));
        if (f.name === 'tag-value') return g.tags.some((t) => f.values.includes(t.value));
        const key = f.name.slice(4);
        return g.tags.some((t) => t.key === key && f.values.includes(t.value));
      }),
    );
    const { page, next } = paginate(groups, p.get('NextToken'), maxRecords, fingerprint('asg-groups', names, JSON.stringify(filters)), 'autoscaling');
    const items = page.map((g) => this.groupXml(g, includeInstances));
    return asgResponse('DescribeAutoScalingGroups', requestId, list('AutoScalingGroups', 'member', items) + el('NextToken', next));
  }

  private groupXml(g: EmuGroup, includeInstances: boolean): string {
    const instances = includeInstances ? this.groupHosts(g).map((h) => this.asgInstanceXml(h, false)) : [];
    return [
      el('AutoScalingGroupName', g.name),
      el('AutoScalingGroupARN', g.arn),
      this.launchTemplateXml(g),
      el('MinSize', g.minSize),
      el('MaxSize', g.maxSize),
      el('DesiredCapacity', g.desiredCapacity),
      el('DefaultCooldown', 300),
      list('AvailabilityZones', 'member', g.availabilityZones.map((z) => escapeText(z))),
      list('LoadBalancerNames', 'member', []),
      list('TargetGroupARNs', 'member', []),
      el('HealthCheckType', 'EC2'),
      el('HealthCheckGracePeriod', 300),
      list('Instances', 'member', instances),
      el('CreatedTime', g.createdTime),
      list('SuspendedProcesses', 'member', []),
      el('VPCZoneIdentifier', g.subnets.join(',')),
      list('EnabledMetrics', 'member', []),
      list(
        'Tags',
        'member',
        g.tags.map(
          (t) =>
            el('ResourceId', g.name) + el('ResourceType', 'auto-scaling-group') + el('Key', t.key) + el('Value', t.value) + el('PropagateAtLaunch', t.propagateAtLaunch),
        ),
      ),
      list('TerminationPolicies', 'member', ['Default']),
      el('NewInstancesProtectedFromScaleIn', g.newInstancesProtectedFromScaleIn),
      el('ServiceLinkedRoleARN', `arn:aws:iam::${this.accountId}:role/aws-service-role/autoscaling.amazonaws.com/AWSServiceRoleForAutoScaling`),
      el('CapacityRebalance', false),
      list('TrafficSources', 'member', []),
    ].join('');
  }

  private launchTemplateXml(g: EmuGroup): string {
    return node('LaunchTemplate', el('LaunchTemplateId', g.launchTemplate.id), el('LaunchTemplateName', g.launchTemplate.name), el('Version', g.launchTemplate.version));
  }

  /** One instance as Auto Scaling lists it; `details` for DescribeAutoScalingInstances (group name, capitalised health). */
  private asgInstanceXml(h: EmuHost, details: boolean): string {
    return [
      el('InstanceId', h.id),
      details ? el('AutoScalingGroupName', h.group.name) : '',
      el('InstanceType', h.group.instanceType),
      el('AvailabilityZone', h.az),
      el('LifecycleState', h.lifecycle),
      el('HealthStatus', details ? h.health.toUpperCase() : h.health),
      this.launchTemplateXml(h.group),
      el('ProtectedFromScaleIn', h.protected),
    ].join('');
  }

  private describeAutoScalingInstances(p: Params, requestId: string): string {
    const ids = listParam(p, 'InstanceIds.member');
    if (ids.length > 50) throw validationError('The number of instance ids that may be passed in is limited to 50');
    const maxRecords = intParam(p, 'MaxRecords', 'autoscaling') ?? 50;
    if (maxRecords < 1 || maxRecords > 50) {
      throw validationError(`1 validation error detected: Value '${maxRecords}' at 'maxRecords' failed to satisfy constraint: Member must have value between 1 and 50`);
    }
    let hosts = [...this.hostsById.values()].filter((h) => h.inGroup);
    if (ids.length) hosts = hosts.filter((h) => ids.includes(h.id));
    const { page, next } = paginate(hosts, p.get('NextToken'), maxRecords, fingerprint('asg-instances', ids), 'autoscaling');
    return asgResponse(
      'DescribeAutoScalingInstances',
      requestId,
      list('AutoScalingInstances', 'member', page.map((h) => this.asgInstanceXml(h, true))) + el('NextToken', next),
    );
  }

  private setDesiredCapacity(p: Params, requestId: string): string {
    const g = this.requireGroup(requireParam(p, 'AutoScalingGroupName', 'autoscaling'));
    const desired = intParam(p, 'DesiredCapacity', 'autoscaling');
    if (desired === undefined) requireParam(p, 'DesiredCapacity', 'autoscaling');
    const value = desired!;
    if (value > g.maxSize) throw validationError(`New SetDesiredCapacity value ${value} is above max value ${g.maxSize} for the AutoScalingGroup.`);
    if (value < g.minSize) throw validationError(`New SetDesiredCapacity value ${value} is below min value ${g.minSize} for the AutoScalingGroup.`);
    const before = g.desiredCapacity;
    g.desiredCapacity = value;
    this.scheduleReconcile(g, `At ${isoSeconds()} a user request explicitly set group desired capacity changing the desired capacity from ${before} to ${value}.`);
    return asgResponse('SetDesiredCapacity', requestId, undefined);
  }

  private updateAutoScalingGroup(p: Params, requestId: string): string {
    const g = this.requireGroup(requireParam(p, 'AutoScalingGroupName', 'autoscaling'));
    const min = intParam(p, 'MinSize', 'autoscaling') ?? g.minSize;
    const max = intParam(p, 'MaxSize', 'autoscaling') ?? g.maxSize;
    const desiredParam = intParam(p, 'DesiredCapacity', 'autoscaling');
    if (min < 0) throw validationError(`1 validation error detected: Value '${min}' at 'minSize' failed to satisfy constraint: Member must have value greater than or equal to 0`);
    if (max < min) throw validationError(`Max bound, ${max}, must be greater than or equal to min bound, ${min}`);
    if (desiredParam !== undefined && (desiredParam < min || desiredParam > max)) {
      throw validationError(`Desired capacity:${desiredParam} must be between the specified min size:${min} and max size:${max}`);
    }
    const before = g.desiredCapacity;
    g.minSize = min;
    g.maxSize = max;
    // As the service does: an unchanged desired capacity is pulled inside new bounds.
    g.desiredCapacity = desiredParam ?? Math.min(max, Math.max(min, g.desiredCapacity));
    const protect = boolParam(p, 'NewInstancesProtectedFromScaleIn');
    if (protect !== undefined) g.newInstancesProtectedFromScaleIn = protect;
    const cause =
      g.desiredCapacity === before
        ? `At ${isoSeconds()} a user request update of AutoScalingGroup constraints to min: ${min}, max: ${max}, desired: ${g.desiredCapacity}.`
        : `At ${isoSeconds()} a user request update of AutoScalingGroup constraints to min: ${min}, max: ${max}, desired: ${g.desiredCapacity} changing the desired capacity from ${before} to ${g.desiredCapacity}.`;
    this.scheduleReconcile(g, cause);
    return asgResponse('UpdateAutoScalingGroup', requestId, undefined);
  }

  private setInstanceProtection(p: Params, requestId: string): string {
    const g = this.requireGroup(requireParam(p, 'AutoScalingGroupName', 'autoscaling'));
    const ids = listParam(p, 'InstanceIds.member');
    const protect = boolParam(p, 'ProtectedFromScaleIn');
    if (protect === undefined) requireParam(p, 'ProtectedFromScaleIn', 'autoscaling');
    if (ids.length === 0) requireParam(p, 'InstanceIds', 'autoscaling');
    if (ids.length > 50) throw validationError('The number of instance ids that may be passed in is limited to 50');
    const hosts = ids.map((id) => {
      const h = this.hostsById.get(id);
      if (!h || h.group !== g || !h.inGroup) throw validationError(`The instance ${id} is not part of Auto Scaling group ${g.name}.`);
      return h;
    });
    // The whole call is refused when any instance is not in service (Pending, Terminating, …): protection
    // applies to InService instances (https://docs.aws.amazon.com/autoscaling/ec2/APIReference/API_SetInstanceProtection.html,
    // https://docs.aws.amazon.com/autoscaling/ec2/userguide/ec2-auto-scaling-instance-protection.html);
    // the message is the service's answer for a Pending instance. Nothing is changed.
    const notInService = hosts.find((h) => h.lifecycle !== 'InService');
    if (notInService) throw validationError(`The instance ${notInService.id} is not in InService or EnteringStandby or Standby.`);
    for (const h of hosts) h.protected = protect!;
    return asgResponse('SetInstanceProtection', requestId, '');
  }

  private terminateInstanceInAutoScalingGroup(p: Params, requestId: string): string {
    const ids = listParam(p, 'InstanceIds.member');
    const single = p.get('InstanceId');
    if (single) ids.unshift(single);
    if (ids.length === 0) requireParam(p, 'InstanceId', 'autoscaling');
    const decrement = boolParam(p, 'ShouldDecrementDesiredCapacity');
    if (decrement === undefined) requireParam(p, 'ShouldDecrementDesiredCapacity', 'autoscaling');
    const hosts = ids.map((id) => {
      const h = this.hostsById.get(id);
      if (!h || !h.inGroup) throw validationError(`Instance Id not found - No managed instance found for instance ID: ${id}`);
      return h;
    });
    const activities: EmuActivity[] = [];
    for (const h of hosts) {
      const g = h.group;
      if (h.terminateActivity) {
        activities.push(h.terminateActivity);
        continue;
      }
      const before = g.desiredCapacity;
      if (decrement) {
        if (before - 1 < g.minSize) {
          throw validationError(
            `Currently, desiredSize equals minSize (${g.minSize}). Terminating instance without replacement will violate group's min size constraint. Either set shouldDecrementDesiredCapacity flag to false or lower group's min size.`,
          );
        }
        g.desiredCapacity = before - 1;
      }
      const cause = decrement
        ? `At ${isoSeconds()} instance ${h.id} was taken out of service in response to a user request, shrinking the capacity from ${before} to ${g.desiredCapacity}.`
        : `At ${isoSeconds()} instance ${h.id} was taken out of service in response to a user request.`;
      activities.push(this.terminate(h, cause));
      this.scheduleReconcile(g, decrement ? '' : `At ${isoSeconds()} an instance was started in response to a replacement of a terminated instance.`);
    }
    const first = activities[0]!;
    return asgResponse(
      'TerminateInstanceInAutoScalingGroup',
      requestId,
      node('Activity', this.activityXml(first)) + (p.has('InstanceIds.member.1') ? list('Activities', 'member', activities.map((a) => this.activityXml(a))) : ''),
    );
  }

  /** https://docs.aws.amazon.com/autoscaling/ec2/APIReference/API_PutLifecycleHook.html (termination hooks only). */
  private putLifecycleHook(p: Params, requestId: string): string {
    const g = this.requireGroup(requireParam(p, 'AutoScalingGroupName', 'autoscaling'));
    const name = requireParam(p, 'LifecycleHookName', 'autoscaling');
    if (!/^[A-Za-z0-9\-_/]{1,255}$/.test(name)) {
      throw validationError(`1 validation error detected: Value '${name}' at 'lifecycleHookName' failed to satisfy constraint: Member must satisfy regular expression pattern: [A-Za-z0-9\\-_\\/]+`);
    }
    const existing = g.hooks.get(name);
    const transition = p.get('LifecycleTransition') ?? existing?.transition;
    if (!transition) requireParam(p, 'LifecycleTransition', 'autoscaling');
    if (transition === 'autoscaling:EC2_INSTANCE_LAUNCHING') {
      throw new AwsError(400, 'ValidationError', 'aws emulator: launch lifecycle hooks (Pending:Wait) are not modelled');
    }
    if (transition !== 'autoscaling:EC2_INSTANCE_TERMINATING') throw validationError(`Invalid Lifecycle Transition: ${transition}`);
    const heartbeat = intParam(p, 'HeartbeatTimeout', 'autoscaling') ?? existing?.heartbeatTimeoutSeconds ?? 3600;
    if (heartbeat < 30 || heartbeat > 7200) throw validationError(`Heartbeat timeout must be between 30 and 7200 seconds; got ${heartbeat}`);
    const defaultResult = p.get('DefaultResult') ?? existing?.defaultResult ?? 'ABANDON';
    if (defaultResult !== 'CONTINUE' && defaultResult !== 'ABANDON') {
      throw validationError(`1 validation error detected: Value '${defaultResult}' at 'defaultResult' failed to satisfy constraint: Member must be CONTINUE or ABANDON`);
    }
    const hook: EmuHook = {
      name,
      transition,
      heartbeatTimeoutSeconds: heartbeat,
      heartbeatTimeoutMs: heartbeat * 1000,
      // The global timeout: 48 hours or 100 times the heartbeat timeout, whichever is smaller.
      globalTimeoutSeconds: Math.min(172_800, 100 * heartbeat),
      defaultResult,
    };
    const metadata = p.get('NotificationMetadata') ?? existing?.notificationMetadata;
    if (metadata !== undefined) hook.notificationMetadata = metadata;
    g.hooks.set(name, hook);
    return asgResponse('PutLifecycleHook', requestId, '');
  }

  private describeLifecycleHooks(p: Params, requestId: string): string {
    const g = this.requireGroup(requireParam(p, 'AutoScalingGroupName', 'autoscaling'));
    const names = listParam(p, 'LifecycleHookNames.member');
    const hooks = [...g.hooks.values()].filter((h) => names.length === 0 || names.includes(h.name));
    const items = hooks.map((h) =>
      [
        el('LifecycleHookName', h.name),
        el('AutoScalingGroupName', g.name),
        el('LifecycleTransition', h.transition),
        el('NotificationMetadata', h.notificationMetadata),
        el('HeartbeatTimeout', h.heartbeatTimeoutSeconds),
        el('GlobalTimeout', h.globalTimeoutSeconds),
        el('DefaultResult', h.defaultResult),
      ].join(''),
    );
    return asgResponse('DescribeLifecycleHooks', requestId, list('LifecycleHooks', 'member', items));
  }

  /** The host waiting on `hookName`, named by instance id or by the action's token. */
  private pendingAction(p: Params, g: EmuGroup, hookName: string): { host: EmuHost; action: PendingAction } {
    const instanceId = p.get('InstanceId') || undefined;
    const token = p.get('LifecycleActionToken') || undefined;
    if (!instanceId && !token) throw validationError('Either InstanceId or LifecycleActionToken must be specified.');
    if (!g.hooks.has(hookName)) throw validationError(`No Lifecycle Hook found with name ${hookName} for group ${g.name}`);
    const host = instanceId
      ? this.hostsById.get(instanceId)
      : [...this.hostsById.values()].find((h) => h.action?.token === token);
    const action = host?.action;
    if (!host || host.group !== g || !action || action.hook.name !== hookName || (token && action.token !== token)) {
      throw validationError(`No active Lifecycle Action found with ${instanceId ? `instance ID ${instanceId}` : `token ${token}`}`);
    }
    return { host, action };
  }

  /** https://docs.aws.amazon.com/autoscaling/ec2/APIReference/API_RecordLifecycleActionHeartbeat.html: restarts the heartbeat timeout, within the global timeout. */
  private recordLifecycleActionHeartbeat(p: Params, requestId: string): string {
    const g = this.requireGroup(requireParam(p, 'AutoScalingGroupName', 'autoscaling'));
    const hookName = requireParam(p, 'LifecycleHookName', 'autoscaling');
    const { action } = this.pendingAction(p, g, hookName);
    clearTimeout(action.timer);
    this.timers.delete(action.timer);
    const ms = Math.max(0, Math.min(action.hook.heartbeatTimeoutMs, action.globalDeadline - Date.now()));
    action.timer = this.after(ms, () => action.finish(action.hook.defaultResult, true));
    return asgResponse('RecordLifecycleActionHeartbeat', requestId, '');
  }

  /** https://docs.aws.amazon.com/autoscaling/ec2/APIReference/API_CompleteLifecycleAction.html */
  private completeLifecycleAction(p: Params, requestId: string): string {
    const g = this.requireGroup(requireParam(p, 'AutoScalingGroupName', 'autoscaling'));
    const hookName = requireParam(p, 'LifecycleHookName', 'autoscaling');
    const result = requireParam(p, 'LifecycleActionResult', 'autoscaling');
    if (result !== 'CONTINUE' && result !== 'ABANDON') {
      throw validationError(`1 validation error detected: Value '${result}' at 'lifecycleActionResult' failed to satisfy constraint: Member must be CONTINUE or ABANDON`);
    }
    const { host, action } = this.pendingAction(p, g, hookName);
    const record: RecordedLifecycleAction = { group: g.name, hookName, instanceId: host.id, result, at: new Date().toISOString(), matched: true };
    const token = p.get('LifecycleActionToken');
    if (token) record.token = token;
    this.lifecycleActions.push(record);
    action.finish(result, false);
    return asgResponse('CompleteLifecycleAction', requestId, '');
  }

  private describeScalingActivities(p: Params, requestId: string): string {
    const name = p.get('AutoScalingGroupName') || undefined;
    const ids = listParam(p, 'ActivityIds.member');
    const maxRecords = intParam(p, 'MaxRecords', 'autoscaling') ?? 100;
    if (maxRecords < 1 || maxRecords > 100) {
      throw validationError(`1 validation error detected: Value '${maxRecords}' at 'maxRecords' failed to satisfy constraint: Member must have value between 1 and 100`);
    }
    let activities = [...this.groups.values()].filter((g) => !name || g.name === name).flatMap((g) => g.activities);
    if (ids.length) activities = activities.filter((a) => ids.includes(a.id));
    activities.sort((a, b) => b.startTime.getTime() - a.startTime.getTime());
    const { page, next } = paginate(activities, p.get('NextToken'), maxRecords, fingerprint('asg-activities', [name ?? ''], ids.join(',')), 'autoscaling');
    return asgResponse('DescribeScalingActivities', requestId, list('Activities', 'member', page.map((a) => this.activityXml(a))) + el('NextToken', next));
  }

  private activityXml(a: EmuActivity): string {
    return [
      el('ActivityId', a.id),
      el('AutoScalingGroupName', a.group.name),
      el('AutoScalingGroupARN', a.group.arn),
      el('Description', a.description),
      el('Cause', a.cause),
      el('StartTime', a.startTime),
      el('EndTime', a.endTime),
      el('StatusCode', a.statusCode),
      el('StatusMessage', a.statusMessage),
      el('Progress', a.progress),
      el('Details', a.details),
    ].join('');
  }

  // ---- EC2 actions ----

  private ec2Handler(action: string): Handler | undefined {
    if (action === 'DescribeInstances') return (p, id) => this.describeInstances(p, id);
    return undefined;
  }

  private describeInstances(p: Params, requestId: string): string {
    if (p.get('DryRun') === 'true') throw new AwsError(412, 'DryRunOperation', 'Request would have succeeded, but DryRun flag is set.');
    const ids = listParam(p, 'InstanceId');
    const maxResults = intParam(p, 'MaxResults', 'ec2');
    if (maxResults !== undefined && ids.length) {
      throw new AwsError(400, 'InvalidParameterCombination', 'The parameter instancesSet cannot be used with the parameter maxResults');
    }
    if (maxResults !== undefined && (maxResults < 5 || maxResults > 1000)) {
      throw new AwsError(
        400,
        'InvalidParameterValue',
        `Value ( ${maxResults} ) for parameter maxResults is invalid. Expecting a value ${maxResults < 5 ? 'greater than 5' : 'less than 1000'}.`,
      );
    }
    for (const id of ids) {
      if (!/^i-[0-9a-f]{8}(?:[0-9a-f]{9})?$/.test(id)) throw new AwsError(400, 'InvalidInstanceID.Malformed', `Invalid id: "${id}"`);
    }
    const missing = ids.filter((id) => !this.hostsById.has(id));
    if (missing.length === 1) throw new AwsError(400, 'InvalidInstanceID.NotFound', `The instance ID '${missing[0]}' does not exist`);
    if (missing.length > 1) throw new AwsError(400, 'InvalidInstanceID.NotFound', `The instance IDs '${missing.join(', ')}' do not exist`);

    const filters = structListParam(p, 'Filter').map((f) => ({ name: f.get('Name') ?? '', values: listParam(f, 'Value') }));
    const matchers = filters.map((f) => this.ec2Filter(f.name, f.values));
    let hosts = [...this.hostsById.values()];
    if (ids.length) hosts = hosts.filter((h) => ids.includes(h.id));
    hosts = hosts.filter((h) => matchers.every((m) => m(h)));

    let page = hosts;
    let next: string | undefined;
    const token = p.get('NextToken');
    if (maxResults !== undefined || token) {
      ({ page, next } = paginate(hosts, token, maxResults ?? 1000, fingerprint('ec2-instances', ids, JSON.stringify(filters)), 'ec2'));
    }
    const reservations = page.map((h) =>
      [
        el('reservationId', h.reservationId),
        el('ownerId', this.accountId),
        el('requesterId', '940372691376'),
        list('groupSet', 'item', []),
        list('instancesSet', 'item', [this.ec2InstanceXml(h)]),
      ].join(''),
    );
    return ec2Response('DescribeInstances', requestId, list('reservationSet', 'item', reservations) + el('nextToken', next));
  }

  private ec2Filter(name: string, values: string[]): (h: EmuHost) => boolean {
    const patterns = values.map(wildcard);
    const any = (v: string | undefined): boolean => v !== undefined && patterns.some((re) => re.test(v));
    switch (name) {
      case 'instance-state-name':
        return (h) => any(h.ec2State);
      case 'instance-state-code':
        return (h) => any(String(STATE_CODES[h.ec2State]));
      case 'instance-id':
        return (h) => any(h.id);
      case 'private-ip-address':
        return (h) => h.ec2State !== 'terminated' && any(h.ip);
      case 'instance-type':
        return (h) => any(h.group.instanceType);
      case 'image-id':
        return (h) => any(h.group.imageId);
      case 'availability-zone':
        return (h) => any(h.az);
      case 'reservation-id':
        return (h) => any(h.reservationId);
      case 'tag-key':
        return (h) => this.instanceTags(h).some((t) => any(t.key));
      case 'tag-value':
        return (h) => this.instanceTags(h).some((t) => any(t.value));
      default:
        if (name.startsWith('tag:')) {
          const key = name.slice(4);
          return (h) => this.instanceTags(h).some((t) => t.key === key && any(t.value));
        }
        throw new AwsError(400, 'InvalidParameterValue', `The filter '${name}' is invalid`);
    }
  }

  private instanceTags(h: EmuHost): Array<{ key: string; value: string }> {
    return [{ key: 'aws:autoscaling:groupName', value: h.group.name }, ...h.group.tags.filter((t) => t.propagateAtLaunch).map(({ key, value }) => ({ key, value }))];
  }

  private ec2InstanceXml(h: EmuHost): string {
    const live = h.ec2State !== 'terminated';
    return [
      el('instanceId', h.id),
      el('imageId', h.group.imageId),
      node('instanceState', el('code', STATE_CODES[h.ec2State]), el('name', h.ec2State)),
      el('privateDnsName', live ? `ip-${h.ip.replace(/\./g, '-')}.ec2.internal` : ''),
      el('dnsName', ''),
      el('reason', h.stateTransitionReason ?? ''),
      el('amiLaunchIndex', 0),
      list('productCodes', 'item', []),
      el('instanceType', h.group.instanceType),
      el('launchTime', h.launchTime),
      node('placement', el('availabilityZone', h.az), el('groupName', ''), el('tenancy', 'default')),
      node('monitoring', el('state', 'disabled')),
      live ? el('subnetId', h.subnet) : '',
      live ? el('vpcId', 'vpc-0e0e0e0e0e0e0e0e0') : '',
      live ? el('privateIpAddress', h.ip) : '',
      el('sourceDestCheck', true),
      list('groupSet', 'item', []),
      h.stateReason ? node('stateReason', el('code', h.stateReason.code), el('message', h.stateReason.message)) : '',
      el('architecture', 'x86_64'),
      el('rootDeviceType', 'ebs'),
      el('rootDeviceName', '/dev/xvda'),
      list('blockDeviceMapping', 'item', []),
      el('virtualizationType', 'hvm'),
      el('clientToken', h.reservationId),
      list('tagSet', 'item', this.instanceTags(h).map((t) => el('key', t.key) + el('value', t.value))),
      el('hypervisor', 'xen'),
      el('ebsOptimized', false),
      el('enaSupport', true),
      el('platformDetails', 'Linux/UNIX'),
    ].join('');
  }

  // ---- timing helpers ----

  private after(ms: number, fn: () => void): NodeJS.Timeout {
    const t = setTimeout(() => {
      this.timers.delete(t);
      if (!this.closed) fn();
    }, ms);
    this.timers.add(t);
    return t;
  }

  /** Resolves after `ms`, or at once when the emulator closes. */
  private sleep(ms: number): Promise<void> {
    return new Promise<void>((resolve) => {
      const wake = (): void => {
        this.sleepers.delete(wake);
        clearTimeout(t);
        resolve();
      };
      const t = setTimeout(wake, ms);
      this.sleepers.add(wake);
    });
  }

  private async waitFor(predicate: () => boolean, timeoutMs = 15_000, what = 'condition'): Promise<void> {
    const deadline = Date.now() + timeoutMs;
    while (!predicate()) {
      if (this.closed) throw new Error(`aws emulator closed while waiting for ${what}`);
      if (Date.now() > deadline) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`);
      await new Promise((r) => setTimeout(r, 20));
    }
  }
}

type Params = Map<string, string>;
type Handler = (params: Params, requestId: string) => string | Promise<string>;

function serviceOf(pathname: string, params: Params, authorization: string | undefined): Service {
  if (pathname === '/asg' || pathname.startsWith('/asg/')) return 'autoscaling';
  if (pathname === '/ec2' || pathname.startsWith('/ec2/')) return 'ec2';
  // At the root, tell the services apart by API version, then by the signature's credential scope.
  const version = params.get('Version');
  if (version === EC2_VERSION) return 'ec2';
  if (version === ASG_VERSION) return 'autoscaling';
  return /\/ec2\/aws4_request/.test(authorization ?? '') ? 'ec2' : 'autoscaling';
}

function paginate<T>(items: T[], token: string | undefined, pageSize: number, fp: string, service: Service): { page: T[]; next: string | undefined } {
  let offset = 0;
  if (token) {
    const decoded = decodeToken(token, fp);
    if (decoded === undefined) {
      throw service === 'ec2'
        ? new AwsError(400, 'InvalidPaginationToken', 'The specified pagination token is not valid or is expired.')
        : new AwsError(400, 'InvalidNextToken', 'The token provided is invalid.');
    }
    offset = decoded;
  }
  const page = items.slice(offset, offset + pageSize);
  const end = offset + page.length;
  return { page, next: end < items.length ? encodeToken(end, fp) : undefined };
}

function fingerprint(kind: string, ids: string[], extra = ''): string {
  return createHash('sha256').update(`${kind}\0${ids.join(',')}\0${extra}`).digest('hex').slice(0, 16);
}

function wildcard(pattern: string): RegExp {
  const source = pattern.replace(/[.+^${}()|[\]\\]/g, '\\$&').replace(/\*/g, '.*').replace(/\?/g, '.');
  return new RegExp(`^${source}$`);
}

function escapeText(s: string): string {
  return s.replace(/&/g, '&amp;').replace(/</g, '&lt;').replace(/>/g, '&gt;');
}

function hex(chars: number): string {
  return randomBytes(Math.ceil(chars / 2)).toString('hex').slice(0, chars);
}

function isoSeconds(): string {
  return new Date().toISOString().replace(/\.\d{3}Z$/, 'Z');
}

function readBody(req: http.IncomingMessage): Promise<string> {
  return new Promise((resolve, reject) => {
    const chunks: Buffer[] = [];
    req.on('data', (c: Buffer) => chunks.push(c));
    req.on('end', () => resolve(Buffer.concat(chunks).toString('utf8')));
    req.on('error', reject);
  });
}
