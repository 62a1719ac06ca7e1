/**
 * A Fly.io Machines API emulator: a real HTTP server (so fly-admin's cross-fetch reaches it like the real
 * API) implementing the apps, machines, volumes, wait and exec endpoints, with bearer-token auth, the
 * documented Machine states and transitions, Fly's status codes and `{ "error": "..." }` bodies, a
 * per-Machine-per-action rate limit, and fault injection. Each Machine boot is a real container on the
 * local Docker engine; each volume a real Docker named volume.
 *
 * Behaviour taken from the Machines API documentation and client libraries:
 * - create answers at once with state `created`; the Machine then goes `starting` → `started` unless
 *   `skip_launch`. Updates take the whole config, answer `replacing` with a new `instance_id`, then
 *   reboot (or stay stopped with `skip_launch`). Stop goes `stopping` → `stopped`; destroy
 *   `destroying` → `destroyed`, and a destroyed Machine is still returned by GET for a moment, then 404s.
 * - GET /wait?state=&timeout=&instance_id= answers 200 once the state is reached, 408 when `timeout`
 *   seconds (max 60) pass first; waiting for `stopped` needs `instance_id` (400 otherwise).
 * - DELETE refuses (412) a Machine that is not stopped, suspended or failed unless `force=true`
 *   (fly-admin spells it `kill=true`; both are accepted). Destroying an attached volume is refused (412).
 * - A wrong token answers 401 `{"error":"Authenticate: token validation error"}`; app creation with a
 *   taken name 422.
 * - POST /suspend freezes a started Machine (`suspending` → `suspended`, the container paused); start
 *   resumes it; stop and destroy (without force) accept a suspended Machine.
 * - Rate limit: about 1 request/s per action per Machine with bursts of 3 (reads: 5/s, bursts of 10),
 *   answering 429 with Retry-After.
 * - Volume snapshots (docs: fly.io/docs/machines/api/volumes-resource, "Get a list of snapshots for a
 *   volume" and "Create an on-demand volume snapshot (beta)"): GET /volumes/{id}/snapshots lists
 *   VolumeSnapshot objects {id, size, digest, created_at, status, retention_days}; POST
 *   /volumes/{id}/snapshots only schedules one (it answers 200 with no body: the new snapshot's id is read
 *   from a later list, as flyctl's "Scheduled to snapshot volume" does). A snapshot holds the volume as it
 *   was at the request, is `pending` for a while (snapshotDelayMs) and `created` once usable; it is kept for the volume's `snapshot_retention` days
 *   (default 5) and there is no endpoint that deletes one. POST /volumes with `snapshot_id` makes a new
 *   volume from a `created` snapshot (no smaller than the snapshot's volume); it is `hydrating` until its
 *   data is in, and a Machine mounting it boots once it is. Each snapshot is a real copy of the volume's
 *   files in its own Docker volume, taken through the engine's archive API.
 */
import Docker from 'dockerode';
import { randomBytes, randomUUID } from 'node:crypto';
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import { DockerBackend } from './docker-backend.js';
import { RateLimiter, type RateLimitOptions } from './rate-limiter.js';

export interface FaultOptions {
  /** Fraction (0..1) of authenticated requests answered with one of `statuses` instead of being handled. */
  rate: number;
  /** Default [503]. */
  statuses?: number[];
  /** Only requests whose endpoint key ("POST /v1/apps/{app}/machines") matches. */
  match?: RegExp;
}

export interface FlyEmulatorOptions {
  /** The accepted token; random when absent. */
  token?: string;
  host?: string;
  port?: number;
  /** The Docker network Machines join (created with inter-container traffic off when missing). */
  network?: string;
  docker?: Docker;
  /** Region of Machines and volumes created without one. */
  defaultRegion?: string;
  /** false turns the rate limit off. */
  rateLimit?: false | RateLimitOptions;
  faults?: FaultOptions;
  /** Upper bound on /wait's `timeout` (seconds); the real API's is 60. Lower it to see 408s sooner. */
  maxWaitSeconds?: number;
  /** Extra time a Machine spends in `starting` after its container runs. */
  startDelayMs?: number;
  /** How long GET still returns a destroyed Machine before answering 404. */
  destroyedRetentionMs?: number;
  /** Apps that exist from the start (as if made with `fly apps create`). */
  apps?: Array<{ name: string; org?: string }>;
  /** How long a snapshot stays `pending` after its copy is taken (real ones take seconds to minutes); default 300 ms. */
  snapshotDelayMs?: number;
}

export interface VolumeSnapshotView {
  id: string;
  volumeId: string;
  status: string;
  size: number;
  digest: string;
  /** The Docker volume holding the snapshot's copy (for tests that read it behind the API's back). */
  dockerVolume: string;
}

export interface RecordedCall {
  method: string;
  /** The endpoint with its parameters named: "GET /v1/apps/{app}/machines/{machine}/wait". */
  endpoint: string;
  path: string;
  status: number;
}

export interface MachineSnapshot {
  id: string;
  app: string;
  state: string;
  instanceId: string;
  containerId?: string;
}

export interface FlyEmulator {
  /** The API base URL (fly-admin's `apiUrl`): requests go to `${url}/v1/...`. */
  url: string;
  token: string;
  /** Requests received per endpoint, whatever their outcome (401, 429 and injected faults included). */
  readonly calls: Record<string, number>;
  /** Every request in order, with its answer's status. */
  readonly log: RecordedCall[];
  totalCalls(): number;
  resetCalls(): void;
  /** Answers the next `count` requests (matching `match`, if given) with `status` before handling them. */
  failNext(count: number, status?: number, match?: RegExp): void;
  setFaults(faults: FaultOptions | undefined): void;
  setRateLimit(limit: false | RateLimitOptions): void;
  setStartDelay(ms: number): void;
  setMaxWaitSeconds(seconds: number): void;
  /** The emulator's view of a Machine (for tests that act behind the provider's back). */
  machine(app: string, machineId: string): MachineSnapshot | undefined;
  machines(app: string): MachineSnapshot[];
  /** The emulator's view of an app's volume snapshots. */
  volumeSnapshots(app: string): VolumeSnapshotView[];
  setSnapshotDelay(ms: number): void;
  /** Stops the server and removes every container and volume it made. */
  close(): Promise<void>;
}

type WaitState = 'started' | 'stopped' | 'suspended' | 'destroyed';

interface MachineConfig {
  image: string;
  env?: Record<string, string>;
  guest: { cpu_kind: string; cpus: number; memory_mb: number; [k: string]: unknown };
  init?: { cmd?: string[]; entrypoint?: string[]; [k: string]: unknown };
  metadata?: Record<string, string>;
  mounts?: Array<{ volume: string; path: string; [k: string]: unknown }>;
  restart?: { policy?: string; max_retries?: number };
  [k: string]: unknown;
}

interface EmuEvent {
  id: string;
  type: string;
  status: string;
  source: 'user' | 'flyd';
  timestamp: number;
  request?: unknown;
}

interface EmuMachine {
  id: string;
  name: string;
  app: string;
  region: string;
  state: string;
  instanceId: string;
  /** Earlier versions, replaced by updates. */
  versions: string[];
  privateIp: string;
  config: MachineConfig;
  createdAt: string;
  updatedAt: string;
  destroyedAt?: number;
  containerId?: string;
  events: EmuEvent[];
  /** Docker work runs one step at a time per Machine. */
  chain: Promise<void>;
  pending: number;
  waiters: Set<() => void>;
}

interface EmuVolume {
  id: string;
  name: string;
  app: string;
  region: string;
  sizeGb: number;
  state: string;
  encrypted: boolean;
  createdAt: string;
  attachedMachineId: string | null;
  dockerVolume: string;
  snapshotRetention: number;
  /** The image of the last Machine that mounted it: the engine needs an image for the copy helpers. */
  lastImage?: string;
  /** Settles once a volume made from a snapshot holds its data (`hydrating` until then). */
  hydrated: Promise<void>;
}

interface EmuVolumeSnapshot {
  id: string;
  volumeId: string;
  status: 'pending' | 'created' | 'failed';
  size: number;
  digest: string;
  createdAt: string;
  retentionDays: number;
  /** The source volume's size: a volume made from the snapshot is at least this big. */
  sizeGb: number;
  image: string;
  dockerVolume: string;
  /** Settles when the snapshot is usable. */
  taken: Promise<void>;
}

interface EmuApp {
  id: string;
  name: string;
  org: string;
  network: string;
  createdAt: string;
  machines: Map<string, EmuMachine>;
  volumes: Map<string, EmuVolume>;
  snapshots: Map<string, EmuVolumeSnapshot>;
}

class HttpError extends Error {
  constructor(
    readonly status: number,
    message: string,
    readonly headers: Record<string, string> = {},
  ) {
    super(message);
  }
}

const SHARED_CPUS = [1, 2, 4, 8];
const PERFORMANCE_CPUS = [1, 2, 4, 8, 16];

export async function startFlyEmulator(options: FlyEmulatorOptions = {}): Promise<FlyEmulator> {
  const emulator = new Emulator(options);
  await emulator.listen();
  return emulator.api();
}

class Emulator {
  readonly token: string;
  private readonly id = randomBytes(4).toString('hex');
  private readonly apps = new Map<string, EmuApp>();
  private readonly backend: DockerBackend;
  private readonly server: http.Server;
  private readonly calls: Record<string, number> = {};
  private readonly log: RecordedCall[] = [];
  private limiter: RateLimiter | undefined;
  private faults: FaultOptions | undefined;
  private scripted: Array<{ status: number; match?: RegExp | undefined }> = [];
  private startDelayMs: number;
  private maxWaitSeconds: number;
  private snapshotDelayMs: number;
  /** Copies under way (snapshots and hydrations): close waits for them before removing volumes. */
  private readonly copies = new Set<Promise<void>>();
  private readonly waitTimers = new Set<NodeJS.Timeout>();
  private closed = false;
  private url = '';

  constructor(private readonly options: FlyEmulatorOptions) {
    this.token = options.token ?? `fly-emu-${randomBytes(16).toString('hex')}`;
    this.backend = new DockerBackend(options.docker ?? new Docker(), this.id, options.network ?? 'vscode-swarm');
    this.limiter = options.rateLimit === false ? undefined : new RateLimiter(options.rateLimit ?? {});
    this.faults = options.faults;
    this.startDelayMs = options.startDelayMs ?? 0;
    this.maxWaitSeconds = options.maxWaitSeconds ?? 60;
    this.snapshotDelayMs = options.snapshotDelayMs ?? 300;
    for (const app of options.apps ?? []) this.addApp(app.name, app.org ?? 'personal', app.name);
    this.server = http.createServer((req, res) => void this.handle(req, res));
  }

  async listen(): Promise<void> {
    await this.backend.ensureNetwork();
    await new Promise<void>((resolve, reject) => {
      this.server.once('error', reject);
      this.server.listen(this.options.port ?? 0, this.options.host ?? '127.0.0.1', () => resolve());
    });
    const { address, port } = this.server.address() as AddressInfo;
    this.url = `http://${address.includes(':') ? `[${address}]` : address}:${port}`;
  }

  api(): FlyEmulator {
    // eslint-disable-next-line @typescript-eslint/no-this-alias
    const self = this;
    return {
      url: this.url,
      token: this.token,
      calls: this.calls,
      log: this.log,
      totalCalls: () => this.log.length,
      resetCalls: () => {
        for (const key of Object.keys(this.calls)) delete this.calls[key];
        this.log.length = 0;
      },
      failNext: (count, status = 503, match) => {
        for (let i = 0; i < count; i++) this.scripted.push({ status, match });
      },
      setFaults: (faults) => {
        self.faults = faults;
      },
      setRateLimit: (limit) => {
        self.limiter = limit === false ? undefined : new RateLimiter(limit);
      },
      setStartDelay: (ms) => {
        self.startDelayMs = ms;
      },
      setMaxWaitSeconds: (seconds) => {
        self.maxWaitSeconds = seconds;
      },
      machine: (app, machineId) => {
        const m = this.apps.get(app)?.machines.get(machineId);
        return m ? snapshot(m) : undefined;
      },
      machines: (app) => [...(this.apps.get(app)?.machines.values() ?? [])].map(snapshot),
      volumeSnapshots: (app) =>
        [...(this.apps.get(app)?.snapshots.values() ?? [])].map((s) => ({ id: s.id, volumeId: s.volumeId, status: s.status, size: s.size, digest: s.digest, dockerVolume: s.dockerVolume })),
      setSnapshotDelay: (ms) => {
        self.snapshotDelayMs = ms;
      },
      close: () => this.close(),
    };
  }

  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    for (const timer of this.waitTimers) clearTimeout(timer);
    for (const app of this.apps.values()) for (const m of app.machines.values()) for (const w of m.waiters) w();
    this.server.closeAllConnections();
    await new Promise<void>((resolve) => this.server.close(() => resolve()));
    const chains = [...this.apps.values()].flatMap((a) => [...a.machines.values()].map((m) => m.chain));
    await Promise.race([Promise.allSettled([...chains, ...this.copies]), new Promise((r) => setTimeout(r, 15_000))]);
    await this.backend.removeAll();
  }

  // ---- HTTP ----

  private async handle(req: http.IncomingMessage, res: http.ServerResponse): Promise<void> {
    const url = new URL(req.url ?? '/', 'http://emulator');
    const method = req.method ?? 'GET';
    const route = this.route(method, url.pathname);
    const endpoint = `${method} ${route?.pattern ?? url.pathname}`;
    this.calls[endpoint] = (this.calls[endpoint] ?? 0) + 1;
    const record: RecordedCall = { method, endpoint, path: url.pathname + url.search, status: 0 };
    this.log.push(record);
    let status = 500;
    let body: unknown;
    let headers: Record<string, string> = {};
    try {
      const raw = await readBody(req);
      this.authenticate(req);
      this.injectFault(endpoint);
      if (!route) throw new HttpError(404, `not found: ${method} ${url.pathname}`);
      this.rateLimit(route, method);
      let parsed: Record<string, unknown> = {};
      if (raw.length) {
        try {
          parsed = JSON.parse(raw.toString('utf8')) as Record<string, unknown>;
        } catch {
          throw new HttpError(400, 'invalid JSON body');
        }
        if (!parsed || typeof parsed !== 'object' || Array.isArray(parsed)) throw new HttpError(400, 'expected a JSON object');
      }
      const result = await route.handler(route.params, parsed, url.searchParams, req);
      status = result.status;
      body = result.body;
    } catch (err) {
      if (err instanceof HttpError) {
        status = err.status;
        body = { error: err.message };
        headers = err.headers;
      } else {
        status = 500;
        body = { error: `internal: ${(err as Error)?.message ?? String(err)}` };
      }
    }
    record.status = status;
    if (res.destroyed) return;
    const text = body === undefined ? '' : JSON.stringify(body);
    res.writeHead(status, { 'content-type': 'application/json; charset=utf-8', 'fly-request-id': randomUUID(), ...headers });
    res.end(text);
  }

  private authenticate(req: http.IncomingMessage): void {
    const header = req.headers.authorization ?? '';
    const match = /^(?:Bearer|FlyV1)\s+(.+)$/i.exec(header);
    if (!match || match[1]!.trim() !== this.token) throw new HttpError(401, 'Authenticate: token validation error');
  }

  private injectFault(endpoint: string): void {
    const index = this.scripted.findIndex((s) => !s.match || s.match.test(endpoint));
    if (index >= 0) {
      const [fault] = this.scripted.splice(index, 1);
      throw faultError(fault!.status);
    }
    const faults = this.faults;
    if (faults && faults.rate > 0 && (!faults.match || faults.match.test(endpoint)) && Math.random() < faults.rate) {
      const statuses = faults.statuses ?? [503];
      throw faultError(statuses[Math.floor(Math.random() * statuses.length)]!);
    }
  }

  private rateLimit(route: Route, method: string): void {
    if (!this.limiter) return;
    const subject = route.params.machine ?? route.params.volume ?? route.params.app ?? 'global';
    const action = route.action;
    const kind = method === 'GET' ? 'read' : 'action';
    const wait = this.limiter.take(`${subject}:${action}`, kind);
    if (wait > 0) {
      throw new HttpError(429, `rate limit exceeded for ${action} on ${subject}; retry later`, { 'retry-after': String(Math.max(1, Math.ceil(wait))) });
    }
  }

  // ---- routing ----

  private route(method: string, path: string): Route | undefined {
    const parts = path.split('/').filter(Boolean).map(decodeURIComponent);
    if (parts[0] !== 'v1' || parts[1] !== 'apps') return undefined;
    const [, , app, kind, id, verb, ...rest] = parts;
    if (rest.length) return undefined;
    const r = (pattern: string, action: string, params: Record<string, string>, handler: Handler): Route => ({ pattern, action, params, handler });
    if (app === undefined) {
      if (method === 'GET') return r('/v1/apps', 'list_apps', {}, (_p, _b, q) => this.listApps(q));
      if (method === 'POST') return r('/v1/apps', 'create_app', {}, (_p, b) => this.createApp(b));
      return undefined;
    }
    if (kind === undefined) {
      if (method === 'GET') return r('/v1/apps/{app}', 'get_app', { app }, () => this.getApp(app));
      if (method === 'DELETE') return r('/v1/apps/{app}', 'delete_app', { app }, () => this.deleteApp(app));
      return undefined;
    }
    if (kind === 'machines') {
      if (id === undefined) {
        if (method === 'GET') return r('/v1/apps/{app}/machines', 'list', { app }, (_p, _b, q) => this.listMachines(app, q));
        if (method === 'POST') return r('/v1/apps/{app}/machines', 'create', { app }, (_p, b) => this.createMachine(app, b));
        return undefined;
      }
      const params = { app, machine: id };
      if (verb === undefined) {
        if (method === 'GET') return r('/v1/apps/{app}/machines/{machine}', 'get', params, () => this.getMachine(app, id));
        if (method === 'POST') return r('/v1/apps/{app}/machines/{machine}', 'update', params, (_p, b) => this.updateMachine(app, id, b));
        if (method === 'DELETE') return r('/v1/apps/{app}/machines/{machine}', 'destroy', params, (_p, _b, q) => this.destroyMachine(app, id, q));
        return undefined;
      }
      const pattern = `/v1/apps/{app}/machines/{machine}/${verb}`;
      if (verb === 'start' && method === 'POST') return r(pattern, 'start', params, () => this.startMachine(app, id));
      if (verb === 'stop' && method === 'POST') return r(pattern, 'stop', params, (_p, b) => this.stopMachine(app, id, b));
      if (verb === 'suspend' && method === 'POST') return r(pattern, 'suspend', params, () => this.suspendMachine(app, id));
      if (verb === 'restart' && method === 'POST') return r(pattern, 'restart', params, (_p, _b, q) => this.restartMachine(app, id, q));
      if (verb === 'wait' && method === 'GET') return r(pattern, 'wait', params, (_p, _b, q, req) => this.waitMachine(app, id, q, req));
      if (verb === 'exec' && method === 'POST') return r(pattern, 'exec', params, (_p, b) => this.execMachine(app, id, b));
      return undefined;
    }
    if (kind === 'volumes') {
      if (verb === 'snapshots' && id !== undefined) {
        const pattern = '/v1/apps/{app}/volumes/{volume}/snapshots';
        if (method === 'GET') return r(pattern, 'list_snapshots', { app, volume: id }, () => this.listVolumeSnapshots(app, id));
        if (method === 'POST') return r(pattern, 'create_snapshot', { app, volume: id }, () => this.createVolumeSnapshot(app, id));
        return undefined;
      }
      if (verb !== undefined) return undefined;
      if (id === undefined) {
        if (method === 'GET') return r('/v1/apps/{app}/volumes', 'list_volumes', { app }, () => this.listVolumes(app));
        if (method === 'POST') return r('/v1/apps/{app}/volumes', 'create_volume', { app }, (_p, b) => this.createVolume(app, b));
        return undefined;
      }
      const params = { app, volume: id };
      if (method === 'GET') return r('/v1/apps/{app}/volumes/{volume}', 'get_volume', params, () => this.getVolume(app, id));
      if (method === 'DELETE') return r('/v1/apps/{app}/volumes/{volume}', 'destroy_volume', params, () => this.destroyVolume(app, id));
    }
    return undefined;
  }

  // ---- apps ----

  private addApp(name: string, org: string, network: string): EmuApp {
    const app: EmuApp = { id: randomId(14), name, org, network, createdAt: new Date().toISOString(), machines: new Map(), volumes: new Map(), snapshots: new Map() };
    this.apps.set(name, app);
    return app;
  }

  private requireApp(name: string): EmuApp {
    const app = this.apps.get(name);
    if (!app) throw new HttpError(404, 'app not found');
    return app;
  }

  private listApps(query: URLSearchParams): Result {
    const org = query.get('org_slug');
    const apps = [...this.apps.values()].filter((a) => !org || a.org === org);
    return ok({ total_apps: apps.length, apps: apps.map((a) => ({ id: a.id, name: a.name, machine_count: a.machines.size, network: a.network })) });
  }

  private createApp(body: Record<string, unknown>): Result {
    const name = body.app_name;
    const org = body.org_slug;
    if (typeof name !== 'string' || !/^[a-z0-9][a-z0-9-]{1,62}$/.test(name)) throw new HttpError(422, 'app_name: expected 2-63 characters of a-z, 0-9 and "-"');
    if (typeof org !== 'string' || !org) throw new HttpError(422, 'org_slug is required');
    if (this.apps.has(name)) throw new HttpError(422, 'Name has already been taken');
    const app = this.addApp(name, org, typeof body.network === 'string' && body.network ? body.network : name);
    return { status: 201, body: { id: app.id, created_at: Date.parse(app.createdAt) } };
  }

  private getApp(name: string): Result {
    const app = this.requireApp(name);
    return ok({ id: app.id, name: app.name, status: 'deployed', organization: { name: app.org, slug: app.org } });
  }

  private async deleteApp(name: string): Promise<Result> {
    const app = this.requireApp(name);
    for (const m of app.machines.values()) {
      if (m.state !== 'destroyed') this.enqueue(m, () => this.destroyNow(app, m));
    }
    await Promise.allSettled([...app.machines.values()].map((m) => m.chain));
    await Promise.allSettled([...this.copies]);
    for (const v of app.volumes.values()) await this.backend.removeVolume(v.dockerVolume).catch(() => undefined);
    for (const s of app.snapshots.values()) await this.backend.removeVolume(s.dockerVolume).catch(() => undefined);
    this.apps.delete(name);
    return { status: 202, body: undefined };
  }

  // ---- machines ----

  private requireMachine(appName: string, id: string, allowDestroyed = false): { app: EmuApp; m: EmuMachine } {
    const app = this.requireApp(appName);
    const m = app.machines.get(id);
    if (!m) throw new HttpError(404, 'machine not found');
    if (m.state === 'destroyed') {
      const retention = this.options.destroyedRetentionMs ?? 5_000;
      if (!allowDestroyed || Date.now() - (m.destroyedAt ?? 0) > retention) throw new HttpError(404, 'machine not found');
    }
    return { app, m };
  }

  private async listMachines(appName: string, query: URLSearchParams): Promise<Result> {
    const app = this.requireApp(appName);
    const includeDeleted = query.has('include_deleted') && query.get('include_deleted') !== 'false';
    const region = query.get('region');
    const state = query.get('state');
    const metadata = [...query.entries()].filter(([k]) => k.startsWith('metadata.')).map(([k, v]) => [k.slice('metadata.'.length), v] as const);
    const out = [];
    for (const m of app.machines.values()) {
      await this.reconcile(m);
      if (!includeDeleted && m.state === 'destroyed') continue;
      if (region && m.region !== region) continue;
      if (state && !state.split(',').includes(m.state)) continue;
      if (!metadata.every(([k, v]) => m.config.metadata?.[k] === v)) continue;
      out.push(machineJson(m));
    }
    return ok(out);
  }

  private async getMachine(appName: string, id: string): Promise<Result> {
    const { m } = this.requireMachine(appName, id, true);
    await this.reconcile(m);
    return ok(machineJson(m));
  }

  private async createMachine(appName: string, body: Record<string, unknown>): Promise<Result> {
    const app = this.requireApp(appName);
    const region = typeof body.region === 'string' && body.region ? body.region : (this.options.defaultRegion ?? 'iad');
    const id = randomId(14);
    const config = await this.validateConfig(app, body.config, region, id);
    const now = new Date().toISOString();
    const m: EmuMachine = {
      id,
      name: typeof body.name === 'string' && body.name ? body.name : `machine-${id.slice(0, 6)}`,
      app: app.name,
      region,
      state: 'created',
      instanceId: instanceId(),
      versions: [],
      privateIp: '',
      config,
      createdAt: now,
      updatedAt: now,
      events: [],
      chain: Promise.resolve(),
      pending: 0,
      waiters: new Set(),
    };
    app.machines.set(id, m);
    this.attach(app, m);
    this.event(m, 'launch', 'created', 'user');
    if (body.skip_launch !== true) this.enqueue(m, () => this.boot(m));
    return ok(machineJson(m));
  }

  private async updateMachine(appName: string, id: string, body: Record<string, unknown>): Promise<Result> {
    const { app, m } = this.requireMachine(appName, id);
    if (m.state === 'destroying') throw new HttpError(412, 'failed_precondition: machine is being destroyed');
    if (typeof body.current_version === 'string' && body.current_version !== m.instanceId) {
      throw new HttpError(412, `failed_precondition: current version is ${m.instanceId}, not ${body.current_version}`);
    }
    const config = await this.validateConfig(app, body.config, m.region, m.id);
    this.detach(app, m);
    m.config = config;
    this.attach(app, m);
    m.versions.push(m.instanceId);
    m.instanceId = instanceId();
    m.updatedAt = new Date().toISOString();
    this.setState(m, 'replacing');
    this.event(m, 'update', 'replacing', 'user');
    const launch = body.skip_launch !== true;
    this.enqueue(m, async () => {
      if (m.containerId) {
        await this.backend.stop(m.containerId, 'SIGTERM', stopTimeout(m.config));
        m.containerId = undefined;
      }
      if (launch) await this.boot(m, true);
      else this.setState(m, 'stopped');
    });
    return ok(machineJson(m));
  }

  private startMachine(appName: string, id: string): Result {
    const { m } = this.requireMachine(appName, id);
    const previous = m.state;
    if (['destroying', 'replacing', 'updating'].includes(previous)) {
      throw new HttpError(412, `failed_precondition: machine is ${previous}`);
    }
    this.enqueue(m, () => this.boot(m));
    return ok({ previous_state: previous });
  }

  private stopMachine(appName: string, id: string, body: Record<string, unknown>): Result {
    const { m } = this.requireMachine(appName, id);
    if (m.state === 'destroying') throw new HttpError(412, 'failed_precondition: machine is being destroyed');
    const signal = typeof body.signal === 'string' && body.signal ? body.signal.toUpperCase() : 'SIGTERM';
    const timeout = body.timeout === undefined ? stopTimeout(m.config) : parseDurationSeconds(body.timeout);
    this.enqueue(m, () => this.halt(m, signal, timeout));
    return ok({ ok: true });
  }

  private suspendMachine(appName: string, id: string): Result {
    const { m } = this.requireMachine(appName, id);
    if (!['started', 'starting'].includes(m.state)) throw new HttpError(412, `failed_precondition: machine is ${m.state}, not started`);
    this.enqueue(m, async () => {
      if (m.state !== 'started' || !m.containerId) return;
      this.setState(m, 'suspending');
      this.event(m, 'suspend', 'suspending', 'user');
      await this.backend.pause(m.containerId);
      this.setState(m, 'suspended');
      this.event(m, 'suspend', 'suspended', 'flyd');
    });
    return ok({ ok: true });
  }

  private restartMachine(appName: string, id: string, query: URLSearchParams): Result {
    const { m } = this.requireMachine(appName, id);
    const timeout = query.get('timeout') ? parseDurationSeconds(query.get('timeout')) : stopTimeout(m.config);
    this.enqueue(m, async () => {
      await this.halt(m, query.get('signal') ?? 'SIGTERM', timeout);
      await this.boot(m);
    });
    return ok({ ok: true });
  }

  private destroyMachine(appName: string, id: string, query: URLSearchParams): Result {
    const { app, m } = this.requireMachine(appName, id);
    const force = ['force', 'kill'].some((k) => query.has(k) && query.get(k) !== 'false');
    const destroyable = ['stopped', 'created', 'suspended', 'failed', 'launch_failed'];
    if (!force && !destroyable.includes(m.state)) {
      throw new HttpError(412, `failed_precondition: unable to destroy machine, not currently stopped, suspended or failed (state: ${m.state})`);
    }
    if (m.state === 'destroying') return ok({ ok: true });
    this.setState(m, 'destroying');
    this.enqueue(m, () => this.destroyNow(app, m));
    return ok({ ok: true });
  }

  private async waitMachine(appName: string, id: string, query: URLSearchParams, req: http.IncomingMessage): Promise<Result> {
    const { m } = this.requireMachine(appName, id, true);
    const state = (query.get('state') ?? 'started') as WaitState;
    if (!['started', 'stopped', 'suspended', 'destroyed'].includes(state)) {
      throw new HttpError(400, `invalid state "${state}": expected started, stopped, suspended or destroyed`);
    }
    const instance = query.get('instance_id') ?? undefined;
    if (state === 'stopped' && !instance) throw new HttpError(400, 'instance_id is required when waiting for the stopped state');
    const rawTimeout = query.get('timeout');
    const requested = rawTimeout === null ? 60 : Number(rawTimeout);
    if (!Number.isFinite(requested) || requested <= 0) throw new HttpError(400, `invalid timeout "${rawTimeout}"`);
    const timeoutSeconds = Math.min(requested, 60, this.maxWaitSeconds);
    const reached = (): boolean => {
      if (instance && instance !== m.instanceId) {
        // An earlier version: it is over once replaced, and never starts again.
        if (m.versions.includes(instance)) return state === 'stopped' || state === 'destroyed';
        return false;
      }
      return m.state === state;
    };
    await this.reconcile(m);
    if (reached()) return ok({ ok: true });
    const outcome = await new Promise<'reached' | 'timeout' | 'gone'>((resolve) => {
      const check = (): void => {
        if (this.closed) finish('gone');
        else if (reached()) finish('reached');
      };
      const poll = setInterval(() => void this.reconcile(m).then(check, () => undefined), 1_000);
      const timer = setTimeout(() => finish('timeout'), timeoutSeconds * 1000);
      this.waitTimers.add(timer);
      const onClose = (): void => finish('gone');
      req.socket.once('close', onClose);
      m.waiters.add(check);
      function finish(result: 'reached' | 'timeout' | 'gone'): void {
        clearTimeout(timer);
        clearInterval(poll);
        m.waiters.delete(check);
        req.socket.off('close', onClose);
        resolve(result);
      }
    });
    if (outcome === 'reached') return ok({ ok: true });
    throw new HttpError(408, `deadline_exceeded: machine ${m.id} did not reach state ${state} within ${timeoutSeconds}s`);
  }

  private async execMachine(appName: string, id: string, body: Record<string, unknown>): Promise<Result> {
    const { m } = this.requireMachine(appName, id);
    await this.reconcile(m);
    if (m.state !== 'started' || !m.containerId) throw new HttpError(412, `failed_precondition: machine is ${m.state}, not started`);
    let argv: string[];
    if (Array.isArray(body.command) && body.command.length && body.command.every((a) => typeof a === 'string')) argv = body.command as string[];
    else if (typeof body.cmd === 'string' && body.cmd.trim()) argv = body.cmd.trim().split(/\s+/);
    else throw new HttpError(400, 'command: expected a non-empty array of strings');
    const timeoutSeconds = body.timeout === undefined ? 30 : Number(body.timeout);
    if (!Number.isFinite(timeoutSeconds) || timeoutSeconds <= 0) throw new HttpError(400, 'timeout: expected seconds');
    const result = await this.backend.exec(m.containerId, argv, timeoutSeconds * 1000, 16 * 1024 * 1024);
    if (result.timedOut) throw new HttpError(408, `deadline_exceeded: command did not finish within ${timeoutSeconds}s`);
    return ok({ exit_code: result.exitCode ?? -1, stdout: result.stdout, stderr: result.stderr });
  }

  // ---- volumes ----

  private listVolumes(appName: string): Result {
    const app = this.requireApp(appName);
    return ok([...app.volumes.values()].filter((v) => v.state !== 'destroyed').map(volumeJson));
  }

  private getVolume(appName: string, id: string): Result {
    const volume = this.requireApp(appName).volumes.get(id);
    if (!volume || volume.state === 'destroyed') throw new HttpError(404, 'volume not found');
    return ok(volumeJson(volume));
  }

  private async createVolume(appName: string, body: Record<string, unknown>): Promise<Result> {
    const app = this.requireApp(appName);
    const name = body.name;
    if (typeof name !== 'string' || !/^[a-z0-9_]{1,30}$/.test(name)) {
      throw new HttpError(400, 'name: expected 1-30 characters of a-z, 0-9 and "_"');
    }
    const region = typeof body.region === 'string' && body.region ? body.region : (this.options.defaultRegion ?? 'iad');
    const from = body.snapshot_id === undefined || body.snapshot_id === null ? undefined : this.snapshotToRestore(app, body.snapshot_id);
    const sizeGb = body.size_gb === undefined ? (from?.sizeGb ?? 1) : Number(body.size_gb);
    if (!Number.isInteger(sizeGb) || sizeGb < 1 || sizeGb > 500) throw new HttpError(400, 'size_gb: expected 1-500');
    if (from && sizeGb < from.sizeGb) throw new HttpError(422, `size_gb: a volume from snapshot ${from.id} needs at least ${from.sizeGb} GB (got ${sizeGb})`);
    const retention = body.snapshot_retention === undefined ? 5 : Number(body.snapshot_retention);
    if (!Number.isInteger(retention) || retention < 1 || retention > 60) throw new HttpError(400, 'snapshot_retention: expected 1-60 days');
    const id = `vol_${randomId(16, 'abcdefghijklmnopqrstuvwxyz0123456789')}`;
    const dockerVolume = await this.backend.createVolume(app.name, id);
    const volume: EmuVolume = {
      id,
      name,
      app: app.name,
      region,
      sizeGb,
      state: from ? 'hydrating' : 'created',
      encrypted: body.encrypted !== false,
      createdAt: new Date().toISOString(),
      attachedMachineId: null,
      dockerVolume,
      snapshotRetention: retention,
      ...(from ? { lastImage: from.image } : {}),
      hydrated: Promise.resolve(),
    };
    if (from) {
      // Answered at once; the data arrives meanwhile (Fly hydrates a restored volume in the background).
      volume.hydrated = this.track(async () => {
        try {
          await this.backend.copyVolume(from.dockerVolume, dockerVolume, from.image);
          if (volume.state === 'hydrating') volume.state = 'created';
        } catch (err) {
          if (volume.state === 'hydrating') volume.state = 'failed';
          throw err;
        }
      });
    }
    app.volumes.set(id, volume);
    return ok(volumeJson(volume));
  }

  /** The snapshot a new volume is made from: it must exist in this app and be `created` (usable). */
  private snapshotToRestore(app: EmuApp, raw: unknown): EmuVolumeSnapshot {
    if (typeof raw !== 'string' || !raw) throw new HttpError(400, 'snapshot_id: expected a snapshot id');
    const found = app.snapshots.get(raw);
    if (!found || this.snapshotExpired(found)) throw new HttpError(404, `snapshot ${raw} not found`);
    if (found.status !== 'created') throw new HttpError(422, `snapshot ${raw} is ${found.status}; a volume can be made from it once it is created`);
    return found;
  }

  private listVolumeSnapshots(appName: string, volumeId: string): Result {
    const app = this.requireApp(appName);
    const volume = app.volumes.get(volumeId);
    if (!volume || volume.state === 'destroyed') throw new HttpError(404, 'volume not found');
    return ok([...app.snapshots.values()].filter((s) => s.volumeId === volumeId && !this.snapshotExpired(s)).map(volumeSnapshotJson));
  }

  /**
   * An on-demand snapshot: the copy starts now and the call answers at once, without a body. The snapshot
   * shows as `pending` in the list until its copy is taken and the delay passed, then `created`.
   */
  private async createVolumeSnapshot(appName: string, volumeId: string): Promise<Result> {
    const app = this.requireApp(appName);
    const volume = app.volumes.get(volumeId);
    if (!volume || volume.state === 'destroyed') throw new HttpError(404, 'volume not found');
    if (volume.state !== 'created') throw new HttpError(422, `volume ${volumeId} is ${volume.state}; it can be snapshotted once it is created`);
    const image = volume.lastImage;
    if (!image) throw new HttpError(422, `volume ${volumeId} was never mounted; the emulator needs an image for the copy (mount it in a Machine first)`);
    const id = `vs_${randomId(16, 'abcdefghijklmnopqrstuvwxyz0123456789')}`;
    const dockerVolume = await this.backend.createSnapshotVolume(app.name, volumeId, id);
    const snap: EmuVolumeSnapshot = {
      id, volumeId, status: 'pending', size: 0, digest: '', createdAt: new Date().toISOString(), retentionDays: volume.snapshotRetention,
      sizeGb: volume.sizeGb, image, dockerVolume, taken: Promise.resolve(),
    };
    app.snapshots.set(id, snap);
    // The data is copied before the answer, so the snapshot is the volume as it was at the request (Fly's
    // are crash-consistent block copies of that moment); it becomes usable only after the delay.
    try {
      const { bytes, digest } = await this.backend.copyVolume(volume.dockerVolume, dockerVolume, image);
      snap.size = bytes;
      snap.digest = digest;
    } catch (err) {
      snap.status = 'failed';
      throw err;
    }
    snap.taken = this.track(async () => {
      if (this.snapshotDelayMs > 0) await new Promise((r) => setTimeout(r, this.snapshotDelayMs));
      snap.status = 'created';
    });
    return { status: 200, body: undefined };
  }

  private snapshotExpired(s: EmuVolumeSnapshot): boolean {
    return Date.parse(s.createdAt) + s.retentionDays * 86_400_000 <= Date.now();
  }

  /** Runs a copy in the background, kept until it ends so that close() can wait for it. */
  private track(work: () => Promise<void>): Promise<void> {
    const done = work();
    const settled = done.catch(() => undefined);
    this.copies.add(settled);
    void settled.finally(() => this.copies.delete(settled));
    return settled;
  }

  private async destroyVolume(appName: string, id: string): Promise<Result> {
    const app = this.requireApp(appName);
    const volume = app.volumes.get(id);
    if (!volume || volume.state === 'destroyed') throw new HttpError(404, 'volume not found');
    if (volume.attachedMachineId) {
      throw new HttpError(412, `failed_precondition: volume ${id} is attached to machine ${volume.attachedMachineId}; destroy the machine first`);
    }
    await volume.hydrated; // the copy into it ends first (its helper holds the Docker volume)
    await this.backend.removeVolume(volume.dockerVolume);
    volume.state = 'destroyed';
    return ok({ ...volumeJson(volume), state: 'pending_destroy' });
  }

  // ---- lifecycle (runs on the Machine's chain) ----

  private enqueue(m: EmuMachine, op: () => Promise<void>): void {
    m.pending++;
    m.chain = m.chain
      .then(() => (this.closed ? undefined : op()))
      .catch((err) => {
        this.event(m, 'error', m.state, 'flyd', { error: (err as Error)?.message ?? String(err) });
      })
      .finally(() => {
        m.pending--;
      });
  }

  /** One boot: a fresh container from the image, on the network, with the volumes. */
  private async boot(m: EmuMachine, afterUpdate = false): Promise<void> {
    if (m.state === 'started' && m.containerId && (await this.backend.isRunning(m.containerId))) return;
    if (m.state === 'destroying' || m.state === 'destroyed') return;
    if (m.state === 'suspended' && m.containerId && (await this.backend.isRunning(m.containerId))) {
      // Resume from the snapshot: same processes, same memory.
      this.setState(m, 'starting');
      this.event(m, 'start', 'starting', 'user');
      await this.backend.unpause(m.containerId);
      this.setState(m, 'started');
      this.event(m, 'start', 'started', 'flyd');
      return;
    }
    this.setState(m, 'starting');
    this.event(m, 'start', 'starting', 'user');
    try {
      if (m.containerId) await this.backend.remove(m.containerId);
      const app = this.apps.get(m.app)!;
      // A volume made from a snapshot is usable once hydrated: the Machine sees all of its data.
      await Promise.all((m.config.mounts ?? []).map((mount) => app.volumes.get(mount.volume)?.hydrated));
      const { containerId, ip } = await this.backend.run({
        app: m.app,
        machineId: m.id,
        instanceId: m.instanceId,
        region: m.region,
        image: m.config.image,
        entrypoint: m.config.init?.entrypoint,
        cmd: m.config.init?.cmd,
        env: m.config.env ?? {},
        cpus: m.config.guest.cpus,
        memoryMb: m.config.guest.memory_mb,
        mounts: (m.config.mounts ?? []).map((mount) => ({ dockerVolume: app.volumes.get(mount.volume)!.dockerVolume, path: mount.path })),
        restart: m.config.restart,
      });
      m.containerId = containerId;
      m.privateIp = ip;
      if (this.startDelayMs > 0) await new Promise((r) => setTimeout(r, this.startDelayMs));
      this.setState(m, 'started');
      this.event(m, afterUpdate ? 'update' : 'start', 'started', 'flyd');
    } catch (err) {
      this.setState(m, 'failed');
      this.event(m, 'exit', 'failed', 'flyd', { error: (err as Error).message });
      throw err;
    }
  }

  private async halt(m: EmuMachine, signal: string, timeoutSeconds: number): Promise<void> {
    if (!['started', 'starting', 'suspended'].includes(m.state)) return; // stopped, created, failed: nothing runs
    this.setState(m, 'stopping');
    this.event(m, 'stop', 'stopping', 'user');
    if (m.containerId) await this.backend.stop(m.containerId, signal, timeoutSeconds);
    m.containerId = undefined;
    this.setState(m, 'stopped');
    this.event(m, 'exit', 'stopped', 'flyd', { exit_event: { requested_stop: true, signal } });
  }

  private async destroyNow(app: EmuApp, m: EmuMachine): Promise<void> {
    if (m.state === 'destroyed') return;
    this.setState(m, 'destroying');
    if (m.containerId) await this.backend.remove(m.containerId);
    m.containerId = undefined;
    this.detach(app, m);
    m.destroyedAt = Date.now();
    this.setState(m, 'destroyed');
    this.event(m, 'destroy', 'destroyed', 'user');
  }

  /** A Machine whose container exited or vanished behind the emulator's back is stopped, as Fly reports an exited VM. */
  private async reconcile(m: EmuMachine): Promise<void> {
    if (m.state !== 'started' || m.pending > 0 || !m.containerId) return;
    const containerId = m.containerId;
    if (await this.backend.isRunning(containerId)) return;
    if (m.state !== 'started' || m.pending > 0 || m.containerId !== containerId) return;
    await this.backend.remove(containerId).catch(() => undefined);
    m.containerId = undefined;
    this.setState(m, 'stopped');
    this.event(m, 'exit', 'stopped', 'flyd', { exit_event: { requested_stop: false } });
  }

  private setState(m: EmuMachine, state: string): void {
    m.state = state;
    m.updatedAt = new Date().toISOString();
    for (const waiter of [...m.waiters]) waiter();
  }

  private event(m: EmuMachine, type: string, status: string, source: 'user' | 'flyd', request?: unknown): void {
    m.events.unshift({ id: randomId(26, CROCKFORD), type, status, source, timestamp: Date.now(), ...(request ? { request } : {}) });
    m.events.length = Math.min(m.events.length, 20);
  }

  private attach(app: EmuApp, m: EmuMachine): void {
    for (const mount of m.config.mounts ?? []) {
      const volume = app.volumes.get(mount.volume)!;
      volume.attachedMachineId = m.id;
      volume.lastImage = m.config.image;
    }
  }

  private detach(app: EmuApp, m: EmuMachine): void {
    for (const v of app.volumes.values()) if (v.attachedMachineId === m.id) v.attachedMachineId = null;
  }

  /** Validates a Machine config the way the API does (422 with what is wrong) and fills its defaults. */
  private async validateConfig(app: EmuApp, raw: unknown, region: string, machineId: string): Promise<MachineConfig> {
    if (!raw || typeof raw !== 'object' || Array.isArray(raw)) throw new HttpError(400, 'config: expected an object');
    const config = structuredClone(raw) as MachineConfig;
    if (typeof config.image !== 'string' || !config.image) throw new HttpError(422, 'config.image: an image is required');
    const guest: MachineConfig['guest'] = Object.assign({ cpu_kind: 'shared', cpus: 1, memory_mb: 256 }, config.guest ?? {});
    const counts = guest.cpu_kind === 'performance' ? PERFORMANCE_CPUS : guest.cpu_kind === 'shared' ? SHARED_CPUS : undefined;
    if (!counts) throw new HttpError(422, `invalid cpu_kind "${guest.cpu_kind}": expected shared or performance`);
    if (!counts.includes(guest.cpus)) throw new HttpError(422, `invalid number of CPUs ${guest.cpus} for ${guest.cpu_kind} (expected one of ${counts.join(', ')})`);
    const [minPer, maxPer] = guest.cpu_kind === 'performance' ? [2048, 8192] : [256, 2048];
    if (guest.memory_mb % 256 !== 0 || guest.memory_mb < minPer * guest.cpus || guest.memory_mb > maxPer * guest.cpus) {
      throw new HttpError(
        422,
        `invalid memory size ${guest.memory_mb} MB for ${guest.cpus} ${guest.cpu_kind} CPU(s): expected a multiple of 256 between ${minPer * guest.cpus} and ${maxPer * guest.cpus}`,
      );
    }
    config.guest = guest;
    if (config.env !== undefined && (typeof config.env !== 'object' || config.env === null || Object.values(config.env).some((v) => typeof v !== 'string'))) {
      throw new HttpError(422, 'config.env: expected a map of strings');
    }
    if (config.metadata !== undefined && (typeof config.metadata !== 'object' || config.metadata === null || Object.values(config.metadata).some((v) => typeof v !== 'string'))) {
      throw new HttpError(422, 'config.metadata: expected a map of strings');
    }
    for (const mount of config.mounts ?? []) {
      const volume = typeof mount?.volume === 'string' ? app.volumes.get(mount.volume) : undefined;
      if (!volume || volume.state === 'destroyed') throw new HttpError(422, `config.mounts: volume ${String(mount?.volume)} not found`);
      if (typeof mount.path !== 'string' || !mount.path.startsWith('/')) throw new HttpError(422, 'config.mounts: path must be absolute');
      if (volume.region !== region) throw new HttpError(422, `config.mounts: volume ${volume.id} is in ${volume.region}, the machine in ${region}`);
      if (volume.attachedMachineId && volume.attachedMachineId !== machineId) {
        const holder = app.machines.get(volume.attachedMachineId);
        if (holder && holder.state !== 'destroyed') throw new HttpError(409, `volume ${volume.id} is already attached to machine ${holder.id}`);
      }
    }
    if (!(await this.backend.imageExists(config.image))) {
      throw new HttpError(422, `failed to get manifest for image ${config.image}: not found (the emulator cannot pull; build or load it locally)`);
    }
    return config;
  }
}

type Result = { status: number; body: unknown };
type Handler = (params: Record<string, string>, body: Record<string, unknown>, query: URLSearchParams, req: http.IncomingMessage) => Result | Promise<Result>;
interface Route {
  pattern: string;
  action: string;
  params: Record<string, string>;
  handler: Handler;
}

function ok(body: unknown): Result {
  return { status: 200, body };
}

function faultError(status: number): HttpError {
  if (status === 429) return new HttpError(429, 'rate limit exceeded (injected)', { 'retry-after': '1' });
  return new HttpError(status, `injected fault ${status}`);
}

function machineJson(m: EmuMachine): Record<string, unknown> {
  return {
    id: m.id,
    name: m.name,
    state: m.state,
    region: m.region,
    instance_id: m.instanceId,
    private_ip: m.privateIp,
    config: structuredClone(m.config),
    image_ref: imageRef(m.config.image),
    created_at: m.createdAt,
    updated_at: m.updatedAt,
    events: m.events.slice(0, 10),
    checks: [],
    host_status: 'ok',
  };
}

function volumeJson(v: EmuVolume): Record<string, unknown> {
  return {
    id: v.id,
    name: v.name,
    state: v.state,
    size_gb: v.sizeGb,
    region: v.region,
    zone: `${v.region}-emu`,
    encrypted: v.encrypted,
    attached_machine_id: v.attachedMachineId,
    attached_alloc_id: null,
    created_at: v.createdAt,
    fstype: 'ext4',
    snapshot_retention: v.snapshotRetention,
    auto_backup_enabled: true,
    host_dedication_key: '',
  };
}

function volumeSnapshotJson(s: EmuVolumeSnapshot): Record<string, unknown> {
  return { id: s.id, size: s.size, digest: s.digest, created_at: s.createdAt, status: s.status, retention_days: s.retentionDays };
}

function snapshot(m: EmuMachine): MachineSnapshot {
  return { id: m.id, app: m.app, state: m.state, instanceId: m.instanceId, ...(m.containerId ? { containerId: m.containerId } : {}) };
}

function imageRef(image: string): Record<string, unknown> {
  const at = image.indexOf('@');
  const withoutDigest = at >= 0 ? image.slice(0, at) : image;
  const colon = withoutDigest.lastIndexOf(':');
  const hasTag = colon > withoutDigest.lastIndexOf('/');
  const repository = hasTag ? withoutDigest.slice(0, colon) : withoutDigest;
  const first = repository.split('/')[0]!;
  const hasRegistry = repository.includes('/') && (first.includes('.') || first.includes(':') || first === 'localhost');
  return {
    registry: hasRegistry ? first : 'registry-1.docker.io',
    repository: hasRegistry ? repository.slice(first.length + 1) : repository,
    tag: hasTag ? withoutDigest.slice(colon + 1) : 'latest',
    digest: at >= 0 ? image.slice(at + 1) : '',
    labels: {},
  };
}

function stopTimeout(config: MachineConfig): number {
  const stop = config.stop_config as { timeout?: unknown } | undefined;
  return stop?.timeout === undefined ? 5 : parseDurationSeconds(stop.timeout);
}

/** "10s", "1m30s", "500ms", or a number of seconds (Go durations in JSON may also be nanoseconds). */
function parseDurationSeconds(value: unknown): number {
  if (typeof value === 'number') return value > 1e6 ? value / 1e9 : value;
  if (value && typeof value === 'object' && 'time.Duration' in value) return parseDurationSeconds((value as Record<string, unknown>)['time.Duration']);
  const text = String(value ?? '').trim();
  if (/^\d+(\.\d+)?$/.test(text)) return Number(text);
  let seconds = 0;
  let matched = false;
  for (const [, n, unit] of text.matchAll(/(\d+(?:\.\d+)?)(ms|s|m|h)/g)) {
    matched = true;
    seconds += Number(n) * (unit === 'ms' ? 0.001 : unit === 's' ? 1 : unit === 'm' ? 60 : 3600);
  }
  if (!matched) throw new HttpError(400, `invalid duration "${text}"`);
  return seconds;
}

const CROCKFORD = '0123456789ABCDEFGHJKMNPQRSTVWXYZ';

function instanceId(): string {
  return randomId(26, CROCKFORD);
}

function randomId(length: number, alphabet = '0123456789abcdef'): string {
  const bytes = randomBytes(length);
  let out = '';
  for (let i = 0; i < length; i++) out += alphabet[bytes[i]! % alphabet.length];
  return out;
}

async function readBody(req: http.IncomingMessage): Promise<Buffer> {
  const chunks: Buffer[] = [];
  let size = 0;
  for await (const chunk of req) {
    size += (chunk as Buffer).length;
    if (size > 4 * 1024 * 1024) throw new HttpError(413, 'request body too large');
    chunks.push(chunk as Buffer);
  }
  return Buffer.concat(chunks);
}
