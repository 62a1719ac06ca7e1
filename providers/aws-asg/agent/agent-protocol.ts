/**
 * The wire contract between the central controller (the AWS provider) and the host agent on each EC2
 * host: request bodies as zod schemas (the agent validates with them; a client may too), the shapes it
 * answers with, the events it POSTs to the controller, and how error codes map onto HTTP statuses.
 *
 * Every request carries `Authorization: Bearer <token>`. Errors are `{ error: { code, message, field?, details? } }`.
 */
import { z } from 'zod';
import { InstanceConfigPatchSchema, InstanceConfigSchema, InstanceIdSchema, type VSCodeInstance } from '../../provider.js';
import { SwarmError, type ErrorCode } from '../../../src/errors.js';

export const AGENT_API_PREFIX = '/v1';

/** POST /v1/instances: the controller assigns the id; `image` defaults to the agent's --image. */
export const CreateOnHostRequestSchema = z
  .object({
    instanceId: InstanceIdSchema,
    config: InstanceConfigSchema,
    /** The instance's access epoch at the controller, so that links it revoked are refused here too. */
    accessEpoch: z.number().int().min(0).optional(),
  })
  .strict();
export type CreateOnHostRequest = z.infer<typeof CreateOnHostRequestSchema>;

/** POST /v1/instances/:id/stop */
export const StopOnHostRequestSchema = z
  .object({ force: z.boolean().optional(), reason: z.string().max(512).optional() })
  .strict();

/** PATCH /v1/instances/:id */
export const PatchOnHostRequestSchema = InstanceConfigPatchSchema;

/** POST /v1/instances/:id/exec */
export const ExecOnHostRequestSchema = z
  .object({
    command: z.string().min(1).max(65_536),
    timeoutMs: z.number().int().min(100).max(3_600_000).optional(),
  })
  .strict();

/** POST /v1/instances/:id/access: raise the access epoch (revocation); a lower or equal one is a no-op. */
export const AccessEpochRequestSchema = z.object({ accessEpoch: z.number().int().min(0) }).strict();

/** POST /v1/instances/:id/keep-alive: a lease the host's idle monitor honours. */
export const KeepAliveOnHostRequestSchema = z
  .object({ minutes: z.number().gt(0).max(1_440), holder: z.string().max(128).optional() })
  .strict();

/** GET /v1/host */
export interface HostReport {
  hostId: string;
  /** Most containers this host holds (running or stopped). */
  capacity: number;
  /** Instances on the host, counting creates in flight. */
  used: number;
  free: number;
  draining: boolean;
  version: string;
  load: {
    containers: number;
    running: number;
    /** Memory and CPUs reserved by running containers. */
    memoryMb: number;
    cpus: number;
  };
  ports: { range: string; used: number; free: number };
  api: string;
  proxy: string;
}

/** 201 from POST /v1/instances (also for an id that already existed: `created: false`). */
export interface CreateOnHostResponse {
  instance: VSCodeInstance;
  created: boolean;
}

/** POST /v1/drain */
export interface DrainResponse {
  /** Every instance on the host; all stopped, workspaces kept. */
  drained: string[];
  /** Instances that could not be stopped, with why. */
  failed: { instanceId: string; error: string }[];
}

/** Ids the host agent accepts (EC2 instance ids): they become the swarm label `host-<id>`. */
export const HOST_ID_PATTERN = /^[a-z0-9][a-z0-9-]{0,57}$/;

const EventHostIdSchema = z.string().max(58).regex(HOST_ID_PATTERN, 'expected an EC2 instance id such as i-0123abcd');

/**
 * What the agent POSTs to --controller-url. Every field is bounded: the controller takes these from a
 * host it trusts only with that host's own instances.
 */
export const AgentEventSchema = z.discriminatedUnion('type', [
  z.object({ type: z.literal('idle-stopped'), hostId: EventHostIdSchema, instanceId: InstanceIdSchema, reason: z.string().max(512) }).strict(),
  z.object({ type: z.literal('draining'), hostId: EventHostIdSchema }).strict(),
  z.object({ type: z.literal('drained'), hostId: EventHostIdSchema, instances: z.array(InstanceIdSchema).max(10_000) }).strict(),
]);
export type AgentEvent = z.infer<typeof AgentEventSchema>;

export interface AgentErrorBody {
  error: { code: ErrorCode | 'UNAUTHORIZED' | 'METHOD_NOT_ALLOWED'; message: string; field?: string; details?: Record<string, unknown> };
}

/** The HTTP status for a domain error code. */
export function httpStatusOf(code: ErrorCode): number {
  switch (code) {
    case 'INVALID_INPUT':
      return 400;
    case 'UNAUTHENTICATED':
      return 401;
    case 'FORBIDDEN':
      return 403;
    case 'QUOTA_EXCEEDED':
      return 429;
    case 'NOT_FOUND':
      return 404;
    case 'CONFLICT':
      return 409;
    case 'DISABLED':
      return 403;
    case 'PROVIDER_ERROR':
      return 502;
    case 'PROVIDER_UNAVAILABLE':
    case 'PROVIDER_UNKNOWN':
    case 'STORE_UNAVAILABLE':
      return 503;
    case 'TIMEOUT':
      return 504;
    case 'STATE_ERROR':
    case 'INTERNAL':
      return 500;
  }
}

/** Validates a request body, naming the first offending field; nothing is changed on failure. */
export function parseBody<S extends z.ZodType>(schema: S, body: unknown): z.infer<S> {
  const parsed = schema.safeParse(body ?? {});
  if (!parsed.success) {
    const issue = parsed.error.issues[0]!;
    const field = issue.path.join('.') || 'body';
    throw new SwarmError('INVALID_INPUT', `${field}: ${issue.message}`, { field });
  }
  return parsed.data;
}
