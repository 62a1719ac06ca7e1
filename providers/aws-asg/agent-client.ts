/**
 * A small typed client for one host agent's control API (agent/agent-protocol.ts): bearer token on every
 * request, a timeout per call, retries with backoff (p-retry) only for idempotent calls and only on
 * connection faults and the agent's own 500/503, and every failure turned into one SwarmError.
 *
 * What is not retried: 4xx (the agent refused: retrying changes nothing), 502/504 (the agent reached
 * Docker and Docker failed or timed out: a real outcome), and exec (running a command twice is not safe).
 */
import { Readable } from 'node:stream';
import type { ReadableStream as WebReadableStream } from 'node:stream/web';
import pRetry from 'p-retry';
import { SwarmError, type ErrorCode } from '../../src/errors.js';
import type { Logger } from '../../src/logger.js';
import type { CommandResult, InstanceConfig, InstanceConfigPatch, InstanceLogs, UpdateMode, VSCodeInstance } from '../provider.js';
import { AGENT_API_PREFIX, type AgentErrorBody, type CreateOnHostResponse, type HostReport } from './agent/agent-protocol.js';

export interface AgentRetryOptions {
  /** Attempts after the first; default 3. */
  retries?: number;
  minTimeoutMs?: number;
  maxTimeoutMs?: number;
}

export interface AgentClientOptions {
  /** http://<privateIp>:<agentPort> */
  baseUrl: string;
  /** The EC2 instance id, for messages. */
  hostId: string;
  token: string;
  /** Default timeout of one attempt. */
  timeoutMs: number;
  retry?: AgentRetryOptions;
  logger: Logger;
}

interface RequestOptions {
  body?: unknown;
  /** A body streamed as it is read (a workspace archive). */
  raw?: Readable;
  timeoutMs?: number;
  idempotent: boolean;
  /** Expect a binary answer, handed on as a stream once the status is known to be good. */
  binary?: boolean;
}

const NETWORK_CODES = new Set(['ECONNREFUSED', 'ECONNRESET', 'ETIMEDOUT', 'EPIPE', 'EHOSTUNREACH', 'ENETUNREACH', 'UND_ERR_SOCKET', 'UND_ERR_CONNECT_TIMEOUT', 'UND_ERR_HEADERS_TIMEOUT']);

/** An agent's error answer, or a transport fault (status undefined). */
export class AgentCallError extends Error {
  /** For a transport fault: `timeout`, or the network error code (ECONNREFUSED, …). */
  transport?: string;
  constructor(
    message: string,
    readonly status: number | undefined,
    readonly body: AgentErrorBody['error'] | undefined,
    options?: { cause?: unknown },
  ) {
    super(message, options);
    this.name = 'AgentCallError';
  }
}

function networkCode(err: unknown): string | undefined {
  const e = err as { code?: string; cause?: { code?: string } };
  const code = e?.cause?.code ?? e?.code;
  return code && NETWORK_CODES.has(code) ? code : undefined;
}

function retryable(err: unknown): boolean {
  if (err instanceof AgentCallError) return err.status === undefined || err.status === 500 || err.status === 503;
  return false;
}

export class AgentClient {
  readonly baseUrl: string;
  readonly hostId: string;
  private readonly retry: Required<AgentRetryOptions>;

  constructor(private readonly options: AgentClientOptions) {
    this.baseUrl = options.baseUrl.replace(/\/+$/, '');
    this.hostId = options.hostId;
    this.retry = { retries: 3, minTimeoutMs: 100, maxTimeoutMs: 1_000, ...options.retry };
  }

  /** Capacity and load. Not retried: a host that does not answer at once is skipped for placement. */
  host(timeoutMs?: number): Promise<HostReport> {
    return this.request<HostReport>('GET', '/host', { idempotent: false, ...(timeoutMs ? { timeoutMs } : {}) });
  }

  async list(): Promise<VSCodeInstance[]> {
    return (await this.request<{ instances: VSCodeInstance[] }>('GET', '/instances', { idempotent: true })).instances;
  }

  /** The instance, or undefined when the agent has none with this id. */
  async get(instanceId: string): Promise<VSCodeInstance | undefined> {
    try {
      return (await this.request<{ instance: VSCodeInstance }>('GET', `/instances/${instanceId}`, { idempotent: true })).instance;
    } catch (err) {
      if (err instanceof SwarmError && err.code === 'NOT_FOUND') return undefined;
      throw err;
    }
  }

  /** Idempotent by id on the agent (an id it has is returned as is), so transport faults are retried. */
  create(instanceId: string, config: InstanceConfig, timeoutMs: number): Promise<CreateOnHostResponse> {
    return this.request<CreateOnHostResponse>('POST', '/instances', { body: { instanceId, config }, idempotent: true, timeoutMs });
  }

  async start(instanceId: string, timeoutMs: number): Promise<VSCodeInstance> {
    return (await this.request<{ instance: VSCodeInstance }>('POST', `/instances/${instanceId}/start`, { idempotent: true, timeoutMs })).instance;
  }

  async stop(instanceId: string, force: boolean, timeoutMs: number): Promise<VSCodeInstance> {
    return (await this.request<{ instance: VSCodeInstance }>('POST', `/instances/${instanceId}/stop`, { body: { force }, idempotent: true, timeoutMs })).instance;
  }

  /** False when the agent has no such instance. */
  async delete(instanceId: string, keepWorkspace: boolean, timeoutMs: number): Promise<boolean> {
    try {
      await this.request('DELETE', `/instances/${instanceId}${keepWorkspace ? '?keepWorkspace=1' : ''}`, { idempotent: true, timeoutMs });
      return true;
    } catch (err) {
      if (err instanceof SwarmError && err.code === 'NOT_FOUND') return false;
      throw err;
    }
  }

  async update(instanceId: string, patch: InstanceConfigPatch, timeoutMs: number): Promise<VSCodeInstance & { updateMode?: UpdateMode }> {
    return (await this.request<{ instance: VSCodeInstance & { updateMode?: UpdateMode } }>('PATCH', `/instances/${instanceId}`, { body: patch, idempotent: true, timeoutMs })).instance;
  }

  logs(instanceId: string, query: { tail?: number; since?: string }): Promise<InstanceLogs> {
    const q = new URLSearchParams();
    if (query.tail !== undefined) q.set('tail', String(query.tail));
    if (query.since !== undefined) q.set('since', query.since);
    const qs = q.toString();
    return this.request<InstanceLogs>('GET', `/instances/${instanceId}/logs${qs ? `?${qs}` : ''}`, { idempotent: true });
  }

  /** Never retried: the command may have run. */
  exec(instanceId: string, command: string, timeoutMs: number): Promise<CommandResult> {
    return this.request<CommandResult>('POST', `/instances/${instanceId}/exec`, {
      body: { command, timeoutMs: Math.max(100, Math.min(3_600_000, Math.round(timeoutMs))) },
      idempotent: false,
      timeoutMs: timeoutMs + 15_000,
    });
  }

  /** Retried until the agent answers; from then on the archive streams, and a cut shows as a truncated archive. */
  exportWorkspace(instanceId: string, timeoutMs: number): Promise<Readable> {
    return this.request<Readable>('GET', `/instances/${instanceId}/workspace`, { idempotent: true, binary: true, timeoutMs });
  }

  /** The stream is consumed by the first attempt, so this is not retried: the caller holds the source and may try again. */
  async importWorkspace(instanceId: string, archive: Readable, timeoutMs: number): Promise<void> {
    await this.request('PUT', `/instances/${instanceId}/workspace`, { raw: archive, idempotent: false, timeoutMs });
  }

  // ---- plumbing ----

  private async request<T>(method: string, route: string, options: RequestOptions): Promise<T> {
    const what = `${method} ${route}`;
    const once = (): Promise<T> => this.once<T>(method, route, options);
    try {
      if (!options.idempotent) return await once();
      return await pRetry(once, {
        retries: this.retry.retries,
        minTimeout: this.retry.minTimeoutMs,
        maxTimeout: this.retry.maxTimeoutMs,
        factor: 2,
        randomize: true,
        shouldRetry: ({ error }) => retryable(error),
        onFailedAttempt: ({ error, attemptNumber, retriesLeft }) => {
          if (retryable(error) && retriesLeft > 0) {
            this.options.logger.debug({ hostId: this.hostId, what, attempt: attemptNumber, err: error.message }, 'agent call failed; retrying');
          }
        },
      });
    } catch (err) {
      throw this.wrap(err, what);
    }
  }

  private async once<T>(method: string, route: string, options: RequestOptions): Promise<T> {
    const headers: Record<string, string> = { authorization: `Bearer ${this.options.token}` };
    let body: string | WebReadableStream | undefined;
    if (options.raw) {
      headers['content-type'] = 'application/x-tar';
      body = Readable.toWeb(options.raw);
    } else if (options.body !== undefined) {
      headers['content-type'] = 'application/json';
      body = JSON.stringify(options.body);
    }
    let res: Response;
    try {
      res = await fetch(`${this.baseUrl}${AGENT_API_PREFIX}${route}`, {
        method,
        headers,
        ...(body !== undefined ? { body: body as RequestInit['body'] } : {}),
        // A streamed request body must say so (fetch's half-duplex upload).
        ...(options.raw ? { duplex: 'half' } : {}),
        signal: AbortSignal.timeout(options.timeoutMs ?? this.options.timeoutMs),
      });
    } catch (err) {
      const e = err as Error;
      const why = e.name === 'TimeoutError' ? `no answer within ${options.timeoutMs ?? this.options.timeoutMs} ms` : (networkCode(err) ?? e.message);
      const failure = new AgentCallError(`host agent ${this.hostId} at ${this.baseUrl}: ${why}`, undefined, undefined, { cause: err });
      failure.transport = e.name === 'TimeoutError' ? 'timeout' : (networkCode(err) ?? 'error');
      throw failure;
    }
    if (options.binary && res.ok && res.body) return Readable.fromWeb(res.body as WebReadableStream) as T;
    const text = await res.text().catch(() => '');
    let parsed: unknown;
    try {
      parsed = text ? JSON.parse(text) : undefined;
    } catch {
      throw new AgentCallError(`host agent ${this.hostId} at ${this.baseUrl} answered ${res.status} with something that is not JSON: ${JSON.stringify(text.slice(0, 80))}`, res.ok ? 502 : res.status, undefined);
    }
    if (!res.ok) {
      const error = (parsed as AgentErrorBody | undefined)?.error;
      throw new AgentCallError(error?.message ?? `HTTP ${res.status}`, res.status, error && typeof error.message === 'string' ? error : undefined);
    }
    if (parsed === undefined || typeof parsed !== 'object') {
      throw new AgentCallError(`host agent ${this.hostId} at ${this.baseUrl} answered ${res.status} without a JSON object`, 502, undefined);
    }
    return parsed as T;
  }

  private wrap(err: unknown, what: string): SwarmError {
    if (err instanceof SwarmError) return err;
    if (!(err instanceof AgentCallError)) return new SwarmError('PROVIDER_ERROR', `aws-asg: host agent ${this.hostId}: ${what}: ${(err as Error)?.message ?? String(err)}`, { cause: err });
    const details: Record<string, unknown> = {
      hostId: this.hostId,
      ...(err.status !== undefined ? { status: err.status } : {}),
      ...(err.transport !== undefined ? { transport: err.transport } : {}),
      ...(err.body?.details ?? {}),
    };
    if (err.status === undefined) return new SwarmError('PROVIDER_UNAVAILABLE', `aws-asg: ${err.message}`, { cause: err, details });
    if (err.status === 401 || err.status === 403) {
      return new SwarmError(
        'PROVIDER_UNAVAILABLE',
        `aws-asg: host agent ${this.hostId} at ${this.baseUrl} refused the controller's token (${err.status}); set providers.aws-asg agent token to the --token the agents run with`,
        { cause: err, details: { ...details, reason: 'AGENT_UNAUTHORIZED' } },
      );
    }
    const body = err.body;
    const known: ErrorCode[] = ['INVALID_INPUT', 'NOT_FOUND', 'CONFLICT', 'PROVIDER_ERROR', 'PROVIDER_UNAVAILABLE', 'TIMEOUT', 'DISABLED'];
    const code: ErrorCode = body && known.includes(body.code as ErrorCode) ? (body.code as ErrorCode) : err.status === 404 ? 'NOT_FOUND' : 'PROVIDER_ERROR';
    const message = code === 'INVALID_INPUT' || code === 'NOT_FOUND' || code === 'CONFLICT' ? err.message : `aws-asg: host ${this.hostId}: ${err.message}`;
    return new SwarmError(code, message, { cause: err, details, ...(body?.field ? { field: body.field } : {}) });
  }
}
