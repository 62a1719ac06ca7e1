/**
 * The Machines API as this provider uses it: fly-admin's client for the documented endpoints, plain
 * fetch for the two it lacks (exec, and `force` on delete under its documented name), retries with
 * backoff on 429/5xx/network faults and nothing else, and every failure turned into one SwarmError
 * that says what to do.
 */
import FlyAdmin from 'fly-admin/dist/client.js';
import pRetry from 'p-retry';
import { SwarmError, type ErrorCode } from '../../src/errors.js';
import type { Logger } from '../../src/logger.js';
import type { FlyMachine } from './fly-mapping.js';

type FlyClientClass = typeof FlyAdmin.default;
type FlyClient = InstanceType<FlyClientClass>;

/**
 * fly-admin is CommonJS with `exports.default = Client`: Node's ESM loader hands over `module.exports`
 * (so the class is `.default`), while bundler-style interop (vitest) hands over the class itself.
 */
export const FlyClientConstructor: FlyClientClass =
  (FlyAdmin as unknown as { default?: FlyClientClass }).default ?? (FlyAdmin as unknown as FlyClientClass);

export const DEFAULT_API_URL = 'https://api.machines.dev';
export const DEFAULT_GRAPHQL_URL = 'https://api.fly.io';
/** The longest `timeout` the /wait endpoint accepts, in seconds. */
export const MAX_WAIT_SECONDS = 60;

export interface RetryOptions {
  /** Attempts after the first; default 5. */
  retries?: number;
  /** First backoff; default 250 ms, doubling up to maxTimeoutMs, randomised. */
  minTimeoutMs?: number;
  maxTimeoutMs?: number;
}

export interface FlyApiOptions {
  token: string;
  apiUrl: string;
  graphqlUrl?: string;
  app: string;
  retry?: RetryOptions;
  logger: Logger;
}

export interface FlyVolume {
  id: string;
  name: string;
  state?: string;
  region?: string;
  size_gb?: number;
  attached_machine_id?: string | null;
  created_at?: string;
}

/** A volume snapshot as GET /v1/apps/{app}/volumes/{id}/snapshots lists it. */
export interface FlyVolumeSnapshot {
  id: string;
  size?: number;
  digest?: string;
  created_at?: string;
  /** `pending` while being taken, `created` once a volume can be made from it. */
  status?: string;
  retention_days?: number;
}

export interface ExecResponse {
  exit_code?: number;
  exit_signal?: number;
  stdout?: string;
  stderr?: string;
}

/** An error as the Machines API reported it: its HTTP status and its `error` text. */
export class FlyHttpError extends Error {
  constructor(
    readonly status: number,
    readonly body: string,
  ) {
    super(`${status}: ${body}`);
    this.name = 'FlyHttpError';
  }

  /** The `error` field of Fly's JSON error body, or the body as is. */
  get reason(): string {
    try {
      const parsed = JSON.parse(this.body) as { error?: unknown };
      if (typeof parsed?.error === 'string') return parsed.error;
    } catch {
      // not JSON
    }
    return this.body.trim().slice(0, 300) || `HTTP ${this.status}`;
  }
}

/** The HTTP status of a failed call: fly-admin throws `Error("<status>: <body>")`. */
export function httpStatusOf(err: unknown): number | undefined {
  if (err instanceof FlyHttpError) return err.status;
  if (err instanceof SwarmError) return typeof err.details?.status === 'number' ? err.details.status : undefined;
  const match = /^(\d{3}): /.exec((err as Error)?.message ?? '');
  return match ? Number(match[1]) : undefined;
}

function asHttpError(err: unknown): FlyHttpError | undefined {
  if (err instanceof FlyHttpError) return err;
  const match = /^(\d{3}): ([\s\S]*)$/.exec((err as Error)?.message ?? '');
  return match ? new FlyHttpError(Number(match[1]), match[2]!) : undefined;
}

// ERR_STREAM_PREMATURE_CLOSE: the connection closed in the middle of an answer (node-fetch, under fly-admin).
const NETWORK_CODES = new Set(['ECONNREFUSED', 'ECONNRESET', 'ETIMEDOUT', 'EAI_AGAIN', 'ENOTFOUND', 'EPIPE', 'EHOSTUNREACH', 'ENETUNREACH', 'UND_ERR_SOCKET', 'UND_ERR_CONNECT_TIMEOUT', 'ERR_STREAM_PREMATURE_CLOSE']);

function networkCode(err: unknown): string | undefined {
  const e = err as { name?: string; type?: string; code?: string; errno?: string; cause?: { code?: string } };
  // An answer cut short can also arrive as JSON that does not parse (node-fetch's `invalid-json`).
  if (e?.name === 'FetchError' && e.type === 'invalid-json') return 'a truncated answer';
  const code = e?.code ?? e?.errno ?? e?.cause?.code;
  return code && NETWORK_CODES.has(code) ? code : undefined;
}

/** Which failures are worth another attempt: rate limiting, Fly's own faults, and the network. Never 4xx otherwise. */
export function isRetryable(err: unknown, mode: 'all' | 'rate-limit-only' = 'all'): boolean {
  const status = httpStatusOf(err);
  if (status === 429) return true;
  if (mode === 'rate-limit-only') return false;
  if (status !== undefined) return status >= 500 && status <= 599;
  return networkCode(err) !== undefined;
}

export class FlyApi {
  readonly app: string;
  private client: FlyClient;
  private readonly retry: Required<RetryOptions>;
  private readonly logger: Logger;

  constructor(private readonly options: FlyApiOptions) {
    this.app = options.app;
    this.client = new FlyClientConstructor(options.token, { apiUrl: options.apiUrl, graphqlUrl: options.graphqlUrl ?? DEFAULT_GRAPHQL_URL });
    this.retry = { retries: 5, minTimeoutMs: 250, maxTimeoutMs: 4_000, ...options.retry };
    this.logger = options.logger;
  }

  // ---- apps ----

  /** The app, or undefined when it does not exist (to this token). */
  async getApp(): Promise<{ name?: string; organization?: { slug?: string } } | undefined> {
    try {
      return (await this.call('get app', () => this.client.App.getApp(this.app))) as { name?: string; organization?: { slug?: string } };
    } catch (err) {
      if (err instanceof SwarmError && err.code === 'NOT_FOUND') return undefined;
      throw err;
    }
  }

  async createApp(org: string, network?: string): Promise<void> {
    await this.call('create app', () => this.client.App.createApp({ app_name: this.app, org_slug: org, ...(network ? { network } : {}) }));
  }

  // ---- machines ----

  /** Machines whose metadata has every given key/value (filtered by the API), destroyed ones left out. */
  async listMachines(metadata: Record<string, string> = {}): Promise<FlyMachine[]> {
    const query: Record<string, string> = { app_name: this.app };
    for (const [k, v] of Object.entries(metadata)) query[`metadata.${k}`] = v;
    const machines = (await this.call('list machines', () =>
      this.client.Machine.listMachines(query as unknown as Parameters<FlyClient['Machine']['listMachines']>[0]),
    )) as unknown as FlyMachine[];
    // The filter is the API's; checking again keeps a server that ignores it from leaking other Machines in.
    return machines.filter((m) => Object.entries(metadata).every(([k, v]) => m.config?.metadata?.[k] === v));
  }

  async getMachine(machineId: string): Promise<FlyMachine> {
    return (await this.call(`get machine ${machineId}`, () => this.client.Machine.getMachine({ app_name: this.app, machine_id: machineId }))) as unknown as FlyMachine;
  }

  async createMachine(body: { name: string; region: string; config: Record<string, unknown> }): Promise<FlyMachine> {
    // Not retried: a 5xx after Fly made the Machine would make a twin; the caller looks again by metadata instead.
    return (await this.call(
      'create machine',
      () => this.client.Machine.createMachine({ app_name: this.app, ...body } as unknown as Parameters<FlyClient['Machine']['createMachine']>[0]),
      'rate-limit-only',
    )) as unknown as FlyMachine;
  }

  /** Replaces the whole config; Fly makes a new version (instance_id) and restarts a running Machine. */
  async updateMachine(machineId: string, config: Record<string, unknown>, skipLaunch: boolean): Promise<FlyMachine> {
    return (await this.call(`update machine ${machineId}`, () =>
      this.client.Machine.updateMachine({ app_name: this.app, machine_id: machineId, config, skip_launch: skipLaunch } as unknown as Parameters<
        FlyClient['Machine']['updateMachine']
      >[0]),
    )) as unknown as FlyMachine;
  }

  async startMachine(machineId: string): Promise<void> {
    await this.call(`start machine ${machineId}`, () => this.client.Machine.startMachine({ app_name: this.app, machine_id: machineId }));
  }

  async stopMachine(machineId: string, signal: 'SIGTERM' | 'SIGKILL', timeoutSeconds: number): Promise<void> {
    await this.call(`stop machine ${machineId}`, () =>
      this.client.Machine.stopMachine({ app_name: this.app, machine_id: machineId, signal, timeout: `${timeoutSeconds}s` } as unknown as Parameters<
        FlyClient['Machine']['stopMachine']
      >[0]),
    );
  }

  /**
   * Destroys a Machine. The API refuses (412) a running one unless forced; fly-admin spells the flag
   * `kill=true`, the documentation `force=true`, so the forced form is sent with both.
   */
  async deleteMachine(machineId: string, force: boolean): Promise<void> {
    if (!force) {
      await this.call(`destroy machine ${machineId}`, () => this.client.Machine.deleteMachine({ app_name: this.app, machine_id: machineId }));
      return;
    }
    await this.call(`destroy machine ${machineId}`, () => this.raw('DELETE', `apps/${this.app}/machines/${machineId}?force=true&kill=true`));
  }

  /**
   * One call to /wait: true when the Machine reached `state`, false when the server's timeout passed
   * first (408). The caller loops until its own deadline.
   */
  async waitOnce(machineId: string, state: 'started' | 'stopped' | 'destroyed', instanceId: string | undefined, timeoutSeconds: number): Promise<boolean> {
    const timeout = String(Math.max(1, Math.min(MAX_WAIT_SECONDS, Math.ceil(timeoutSeconds))));
    try {
      await this.call(`wait for machine ${machineId} to be ${state}`, () =>
        this.client.Machine.waitMachine({
          app_name: this.app,
          machine_id: machineId,
          state,
          timeout,
          ...(instanceId ? { instance_id: instanceId } : {}),
        } as unknown as Parameters<FlyClient['Machine']['waitMachine']>[0]),
      );
      return true;
    } catch (err) {
      if (httpStatusOf(err) === 408) return false;
      throw err;
    }
  }

  /**
   * POST /machines/{id}/exec (in the Machines API, not in fly-admin). Only a 429 is retried: a command
   * is not idempotent, and a 5xx may come after it ran.
   */
  async exec(machineId: string, command: string[], timeoutSeconds: number, signal: AbortSignal): Promise<ExecResponse> {
    return (await this.call(
      `exec in machine ${machineId}`,
      () => this.raw('POST', `apps/${this.app}/machines/${machineId}/exec`, { command, timeout: timeoutSeconds }, signal),
      'rate-limit-only',
    )) as ExecResponse;
  }

  // ---- volumes ----

  async listVolumes(): Promise<FlyVolume[]> {
    return (await this.call('list volumes', () => this.client.Volume.listVolumes(this.app))) as unknown as FlyVolume[];
  }

  async createVolume(name: string, region: string, sizeGb: number): Promise<FlyVolume> {
    // Not retried on 5xx for the same reason as createMachine; the caller's clean-up looks by name.
    return (await this.call(
      `create volume ${name}`,
      () => this.client.Volume.createVolume({ app_name: this.app, name, region, size_gb: sizeGb, encrypted: true } as Parameters<FlyClient['Volume']['createVolume']>[0]),
      'rate-limit-only',
    )) as unknown as FlyVolume;
  }

  /** A new volume holding a copy of a volume snapshot (`snapshot_id`, which fly-admin's types lack). Not retried on 5xx, like createVolume. */
  async createVolumeFromSnapshot(name: string, region: string, sizeGb: number, snapshotId: string): Promise<FlyVolume> {
    return (await this.call(
      `create volume ${name} from snapshot ${snapshotId}`,
      () => this.raw('POST', `apps/${this.app}/volumes`, { name, region, size_gb: sizeGb, encrypted: true, snapshot_id: snapshotId }),
      'rate-limit-only',
    )) as FlyVolume;
  }

  async getVolume(volumeId: string): Promise<FlyVolume> {
    return (await this.call(`get volume ${volumeId}`, () => this.raw('GET', `apps/${this.app}/volumes/${volumeId}`))) as FlyVolume;
  }

  async listVolumeSnapshots(volumeId: string): Promise<FlyVolumeSnapshot[]> {
    return ((await this.call(`list snapshots of volume ${volumeId}`, () => this.raw('GET', `apps/${this.app}/volumes/${volumeId}/snapshots`))) ?? []) as FlyVolumeSnapshot[];
  }

  /** Schedules an on-demand snapshot; the API answers without it (the caller finds it in the list). Not retried on 5xx: it may have been taken. */
  async createVolumeSnapshot(volumeId: string): Promise<void> {
    await this.call(`snapshot volume ${volumeId}`, () => this.raw('POST', `apps/${this.app}/volumes/${volumeId}/snapshots`), 'rate-limit-only');
  }

  async deleteVolume(volumeId: string): Promise<void> {
    await this.call(`destroy volume ${volumeId}`, () => this.client.Volume.deleteVolume({ app_name: this.app, volume_id: volumeId }));
  }

  // ---- plumbing ----

  /** A request fly-admin cannot express, made the way it makes its own (bearer token, JSON). */
  private async raw(method: string, path: string, body?: unknown, signal?: AbortSignal): Promise<unknown> {
    const res = await fetch(`${this.options.apiUrl.replace(/\/+$/, '')}/v1/${path}`, {
      method,
      headers: { Authorization: `Bearer ${this.options.token}`, 'Content-Type': 'application/json' },
      ...(body === undefined ? {} : { body: JSON.stringify(body) }),
      ...(signal ? { signal } : {}),
    });
    const text = await res.text();
    if (!res.ok) throw new FlyHttpError(res.status, text);
    return text ? (JSON.parse(text) as unknown) : undefined;
  }

  /** Runs one API call with retries on what is worth retrying; anything else becomes a SwarmError at once. */
  private async call<T>(what: string, fn: () => Promise<T>, mode: 'all' | 'rate-limit-only' = 'all'): Promise<T> {
    try {
      return await pRetry(fn, {
        retries: this.retry.retries,
        minTimeout: this.retry.minTimeoutMs,
        maxTimeout: this.retry.maxTimeoutMs,
        factor: 2,
        randomize: true,
        shouldRetry: ({ error }) => isRetryable(error, mode),
        onFailedAttempt: ({ error, attemptNumber, retriesLeft }) => {
          if (isRetryable(error, mode) && retriesLeft > 0) {
            this.logger.debug({ what, attempt: attemptNumber, retriesLeft, err: describe(error) }, 'fly api call failed; retrying');
          }
        },
      });
    } catch (err) {
      throw this.wrap(err, what);
    }
  }

  private wrap(err: unknown, what: string): SwarmError {
    if (err instanceof SwarmError) return err;
    const http = asHttpError(err);
    if (!http) {
      const code = networkCode(err);
      if (code || (err as Error)?.name === 'FetchError') {
        return new SwarmError(
          'PROVIDER_UNAVAILABLE',
          `fly: ${what}: cannot reach the Machines API at ${this.options.apiUrl} (${code ?? (err as Error).message}); check providers.fly.apiUrl and the network`,
          { cause: err },
        );
      }
      if ((err as Error)?.name === 'AbortError') return new SwarmError('TIMEOUT', `fly: ${what}: aborted`, { cause: err });
      return new SwarmError('PROVIDER_ERROR', `fly: ${what}: ${(err as Error)?.message ?? String(err)}`, { cause: err });
    }
    const { status } = http;
    const details = { status };
    if (status === 401 || status === 403) {
      return new SwarmError(
        'PROVIDER_UNAVAILABLE',
        `fly: the Machines API refused the token (${status}: ${http.reason}); set FLY_API_TOKEN (or providers.fly.apiToken) to a token for app "${this.app}" or its organisation, e.g. from \`fly tokens create org\``,
        { cause: err, details },
      );
    }
    const code: ErrorCode =
      status === 404 ? 'NOT_FOUND' : status === 408 ? 'TIMEOUT' : status === 409 || status === 412 ? 'CONFLICT' : 'PROVIDER_ERROR';
    const hint = status === 429 ? ' (rate limited; still refused after retries)' : status >= 500 ? ' (a fault at Fly; still failing after retries)' : '';
    return new SwarmError(code, `fly: ${what}: ${status} ${http.reason}${hint}`, { cause: err, details });
  }
}

function describe(err: unknown): string {
  return (err as Error)?.message?.slice(0, 200) ?? String(err);
}
