/**
 * The swarm of a controller that runs elsewhere (`vscode-swarm up`), used through its MCP tools over
 * Streamable HTTP with a bearer credential: the CLI's mode while a controller owns the state directory.
 *
 * Each method is one tool call, answered with the tool's structured output typed as AuthorizedSwarm
 * answers, so a command prints the same JSON in both modes. Errors read the same too: a tool's error
 * ("CODE: message") becomes a SwarmError with that code, and the door's refusals (401 without a valid
 * credential, 403 insufficient_scope) become UNAUTHENTICATED and FORBIDDEN. Progress notifications are
 * passed to the caller's onProgress.
 *
 * The client is the v2 SDK's (`@modelcontextprotocol/client`), pinned to protocol revision 2026-07-28: no
 * initialize, `server/discover` on connect (which is where a bad credential is first refused), and every
 * request carrying its version. The controller is this same package, so it always speaks that revision.
 */
import { Client, InsufficientScopeError, SdkError, SdkErrorCode, SdkHttpError, StreamableHTTPClientTransport, type CallToolResult } from '@modelcontextprotocol/client';
import type { InstanceConfigPatch, InstanceLogs, UpdateMode, VSCodeInstance } from '../../providers/provider.js';
import type { AuditEvent, AuditQuery } from '../audit/audit-log.js';
import type { CreateRequest, CreateResult, ListFilter, OperationOptions } from '../controller/swarm-controller.js';
import { ERROR_CODES, SwarmError, type ErrorCode } from '../errors.js';
import type { AccessLink } from '../gateway/access-links.js';
import type { TOOL_OPERATIONS } from '../mcp/server.js';
import { PACKAGE_VERSION } from '../version.js';
import type { WhoAmI } from './authorized-swarm.js';
import type { NewPrincipal, Principal, TokenInfo } from './principals.js';
import type { ForkResult, RestoreResult } from '../snapshots/snapshot-manager.js';
import type { Snapshot } from '../snapshots/snapshot-store.js';
import type { DeleteResult, ForkRequest, PrincipalChange, SnapshotRequest, SwarmApi, SwarmStatusView, TokenRequest } from './swarm-api.js';

export interface RemoteSwarmOptions {
  /** The controller's MCP endpoint, e.g. http://127.0.0.1:7081/mcp */
  url: string;
  /** Sent as `Authorization: Bearer <credential>`: an API token, or the local admin's credential. */
  credential: string;
  /** How long one call may take without a sign of progress (default 30 minutes: creates wait for editors). */
  timeoutMs?: number;
}

type ToolName = keyof typeof TOOL_OPERATIONS;

const DEFAULT_TIMEOUT_MS = 30 * 60_000;
/** The MCP revision the CLI speaks to its controller. */
const PROTOCOL_REVISION = '2026-07-28';

export class RemoteSwarm implements SwarmApi {
  private constructor(
    private readonly client: Client,
    readonly url: string,
    private readonly timeoutMs: number,
  ) {}

  /** Connects (`server/discover`, which also checks the credential). */
  static async connect(options: RemoteSwarmOptions): Promise<RemoteSwarm> {
    const transport = new StreamableHTTPClientTransport(new URL(options.url), { requestInit: { headers: { Authorization: `Bearer ${options.credential}` } } });
    const client = new Client({ name: 'vscode-swarm-cli', version: PACKAGE_VERSION }, { versionNegotiation: { mode: { pin: PROTOCOL_REVISION } } });
    try {
      await client.connect(transport);
    } catch (err) {
      await client.close().catch(() => undefined);
      throw remoteError(err, options.url);
    }
    return new RemoteSwarm(client, options.url, options.timeoutMs ?? DEFAULT_TIMEOUT_MS);
  }

  close(): Promise<void> {
    return this.client.close();
  }

  // ---- instances ----

  async getSwarmStatus(): Promise<SwarmStatusView> {
    return this.call<SwarmStatusView>('get_swarm_status', {});
  }

  async listInstances(filter: ListFilter = {}): Promise<VSCodeInstance[]> {
    return (await this.call<{ instances: VSCodeInstance[] }>('list_swarm_instances', { ...filter })).instances;
  }

  async getInstance(instanceId: string): Promise<VSCodeInstance> {
    return (await this.call<{ instance: VSCodeInstance }>('get_swarm_instance', { instanceId })).instance;
  }

  async createInstance(request: CreateRequest, options: OperationOptions = {}): Promise<CreateResult> {
    return this.call<CreateResult>('create_swarm_instance', { ...request }, options);
  }

  async startInstance(instanceId: string, options: OperationOptions = {}): Promise<VSCodeInstance> {
    return (await this.call<{ instance: VSCodeInstance }>('start_swarm_instance', { instanceId }, options)).instance;
  }

  async stopInstance(instanceId: string, options: { force?: boolean } = {}): Promise<VSCodeInstance> {
    return (await this.call<{ instance: VSCodeInstance }>('stop_swarm_instance', { instanceId, ...options })).instance;
  }

  async updateInstance(instanceId: string, patch: InstanceConfigPatch, options: OperationOptions = {}): Promise<VSCodeInstance & { updateMode: UpdateMode }> {
    const { instance, updateMode } = await this.call<{ instance: VSCodeInstance; updateMode: UpdateMode }>('update_swarm_instance', { instanceId, ...patch }, options);
    return { ...instance, updateMode };
  }

  async deleteInstance(instanceId: string, options: { keepWorkspace?: boolean } = {}): Promise<DeleteResult> {
    return this.call<DeleteResult>('delete_swarm_instance', { instanceId, ...options });
  }

  async getInstanceLogs(instanceId: string, options: { tail?: number; since?: string } = {}): Promise<InstanceLogs> {
    return this.call<InstanceLogs>('get_instance_logs', { instanceId, ...options });
  }

  async issueAccessLink(instanceId: string, options: { ttlMinutes?: number; revokeExisting?: boolean } = {}): Promise<AccessLink> {
    return this.call<AccessLink>('get_instance_access_link', { instanceId, ...options });
  }

  async keepAlive(instanceId: string, minutes: number, holder?: string): Promise<VSCodeInstance> {
    return (await this.call<{ instance: VSCodeInstance }>('keep_instance_alive', { instanceId, minutes, ...(holder !== undefined ? { holder } : {}) })).instance;
  }

  // ---- snapshots ----

  async createSnapshot(instanceId: string, options: SnapshotRequest = {}): Promise<Snapshot> {
    const { onProgress, ...args } = options;
    return (await this.call<{ snapshot: Snapshot }>('create_snapshot', { instanceId, ...args }, onProgress ? { onProgress } : {})).snapshot;
  }

  async listSnapshots(filter: { instanceId?: string } = {}): Promise<Snapshot[]> {
    return (await this.call<{ snapshots: Snapshot[] }>('list_snapshots', { ...filter })).snapshots;
  }

  async deleteSnapshot(snapshotId: string): Promise<Snapshot> {
    return (await this.call<{ snapshot: Snapshot }>('delete_snapshot', { snapshotId })).snapshot;
  }

  async restoreSnapshot(instanceId: string, snapshotId: string, options: Pick<OperationOptions, 'onProgress'> = {}): Promise<RestoreResult> {
    return this.call<RestoreResult>('restore_snapshot', { instanceId, snapshotId }, options);
  }

  async forkInstance(request: ForkRequest, options: OperationOptions = {}): Promise<ForkResult> {
    return this.call<ForkResult>('fork_instance', { ...request }, options);
  }

  // ---- identity, principals, tokens, audit ----

  async whoami(): Promise<WhoAmI> {
    return this.call<WhoAmI>('whoami', {});
  }

  async listPrincipals(): Promise<Principal[]> {
    return (await this.call<{ principals: Principal[] }>('list_principals', {})).principals;
  }

  async addPrincipal(input: NewPrincipal): Promise<Principal> {
    return (await this.call<{ principal: Principal }>('add_principal', { ...input })).principal;
  }

  async updatePrincipal(principalId: string, change: PrincipalChange): Promise<Principal> {
    return (await this.call<{ principal: Principal }>('update_principal', { principalId, ...change })).principal;
  }

  async createToken(input: TokenRequest): Promise<{ token: string; info: TokenInfo }> {
    return this.call<{ token: string; info: TokenInfo }>('create_token', { ...input });
  }

  async listTokens(principalId?: string): Promise<TokenInfo[]> {
    return (await this.call<{ tokens: TokenInfo[] }>('list_tokens', principalId !== undefined ? { principalId } : {})).tokens;
  }

  async revokeToken(tokenId: string): Promise<TokenInfo> {
    return (await this.call<{ token: TokenInfo }>('revoke_token', { tokenId })).token;
  }

  /** The tool filters by workspace (`instanceId`), which is the events' subject; `owner` is not offered remotely. */
  async auditEvents(query: Omit<AuditQuery, 'visibleTo'> = {}): Promise<AuditEvent[]> {
    const { subject, owner, ...rest } = query;
    if (owner !== undefined) throw new SwarmError('INVALID_INPUT', 'owner: expected no owner filter (list_audit_events filters by instanceId)', { field: 'owner' });
    return (await this.call<{ events: AuditEvent[] }>('list_audit_events', { ...rest, ...(subject !== undefined ? { instanceId: subject } : {}) })).events;
  }

  // ---- the call ----

  private async call<T>(tool: ToolName, args: Record<string, unknown>, options: OperationOptions = {}): Promise<T> {
    const { onProgress, signal } = options;
    let result: CallToolResult;
    try {
      result = (await this.client.callTool({ name: tool, arguments: withoutUndefined(args) }, {
        timeout: this.timeoutMs,
        resetTimeoutOnProgress: true,
        ...(signal ? { signal } : {}),
        ...(onProgress ? { onprogress: (p) => onProgress({ fraction: p.total ? p.progress / p.total : 0, message: p.message ?? '' }) } : {}),
      })) as CallToolResult;
    } catch (err) {
      // The SDK wraps an abort's reason in a REQUEST_TIMEOUT error; the caller's own reason is what it said.
      if (signal?.aborted) throw remoteError(signal.reason, this.url);
      throw remoteError(err, this.url, tool);
    }
    const text = (result.content ?? []).map((c) => (c.type === 'text' ? c.text : '')).join('\n');
    if (result.isError) throw errorFromText(text);
    if (!result.structuredContent) throw new SwarmError('INTERNAL', `${tool} answered without structured content: ${text.slice(0, 300)}`);
    return result.structuredContent as T;
  }
}

/** "CODE: message" (a tool's error text, or a door's refusal) → a SwarmError with that code. */
export function errorFromText(text: string, fallback: ErrorCode = 'INTERNAL'): SwarmError {
  const match = /^([A-Z_]+): ([\s\S]*)$/.exec(text.trim());
  if (match && Object.hasOwn(ERROR_CODES, match[1]!)) return new SwarmError(match[1] as ErrorCode, match[2]!);
  return new SwarmError(fallback, text.trim() || 'the controller answered with an error and no message');
}

/** A failure of the call itself (HTTP refusal, unreachable controller, timeout) as a SwarmError. */
function remoteError(err: unknown, url: string, tool?: ToolName): SwarmError {
  if (err instanceof SwarmError) return err;
  // The door's 403 insufficient_scope, read by the SDK from its WWW-Authenticate challenge (the step-up).
  if (err instanceof InsufficientScopeError) {
    return new SwarmError('FORBIDDEN', err.errorDescription ?? `${tool ?? 'this call'} needs the ${err.requiredScope ?? 'missing'} scope, which this credential does not carry`);
  }
  // Any other refusal at the door (on server/discover or on a call), with the door's body.
  if (err instanceof SdkHttpError && typeof err.status === 'number') {
    const body = (err.data as { text?: unknown } | undefined)?.text;
    const message = doorMessage(typeof body === 'string' && body ? body : err.message);
    if (err.status === 401) return new SwarmError('UNAUTHENTICATED', message);
    if (err.status === 403) return errorFromText(message, 'FORBIDDEN');
    return errorFromText(message, 'INTERNAL');
  }
  if (err instanceof SdkError && err.code === SdkErrorCode.RequestTimeout) {
    return new SwarmError('TIMEOUT', `the controller at ${url} did not answer in time: ${err.message}`);
  }
  // Not reachable: fetch's TypeError, on its own or as the cause of the connect probe's failure.
  const error = err as Error & { code?: unknown; cause?: Error & { code?: unknown; cause?: { code?: unknown; message?: unknown } } };
  const fetchFailure = err instanceof TypeError ? error : error?.cause instanceof TypeError ? error.cause : undefined;
  if (fetchFailure) {
    const cause = fetchFailure.cause?.code ?? fetchFailure.cause?.message;
    return new SwarmError('CONFLICT', `the controller that owns the state directory does not answer at ${url} (${typeof cause === 'string' ? cause : fetchFailure.message}); wait for it, or stop it to work without it`, { cause: err });
  }
  // A JSON-RPC error (a ProtocolError; "MCP error -32602: " in older SDKs) keeps its code when it carries one.
  return errorFromText(String(error?.message ?? err).replace(/^MCP error -?\d+: /, ''));
}

/** The message inside the JSON-RPC error body a door answers with, or the text as it is. */
function doorMessage(text: string): string {
  const body = text.replace(/^Error POSTing to endpoint: /, '');
  try {
    const parsed = JSON.parse(body) as { error?: { message?: unknown } };
    if (typeof parsed.error?.message === 'string') return parsed.error.message;
  } catch {
    // not JSON: keep the text
  }
  return body;
}

function withoutUndefined(args: Record<string, unknown>): Record<string, unknown> {
  return Object.fromEntries(Object.entries(args).filter(([, v]) => v !== undefined));
}
