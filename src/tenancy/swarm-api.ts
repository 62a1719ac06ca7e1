/**
 * The swarm as one caller may use it, as an interface: what the CLI (and any other client) calls. Two
 * implementations, so that a command reads and fails the same wherever the controller runs:
 * - `AuthorizedSwarm` over a controller in this process (the CLI's one-shot mode), and
 * - `RemoteSwarm` over the MCP tools of a running controller (./remote-swarm.ts), whose results are the
 *   tools' structured output and whose errors are SwarmErrors with the tools' codes.
 */
import type { InstanceConfigPatch, InstanceLogs, ProviderType, UpdateMode, VSCodeInstance } from '../../providers/provider.js';
import type { AuditEvent, AuditQuery } from '../audit/audit-log.js';
import type { CreateRequest, CreateResult, ListFilter, OperationOptions, SwarmController, SwarmStatus } from '../controller/swarm-controller.js';
import type { AccessLink } from '../gateway/access-links.js';
import type { Migration } from '../migration/migration-manager.js';
import type { ForkResult, RestoreResult } from '../snapshots/snapshot-manager.js';
import type { Snapshot } from '../snapshots/snapshot-store.js';
import type { AuthorizedSwarm, WhoAmI } from './authorized-swarm.js';
import type { NewPrincipal, NewToken, Principal, TokenInfo } from './principals.js';
import type { QuotaLimits } from './quotas.js';

export type SwarmStatusView = SwarmStatus & { migrationsInProgress: Migration[] };
export type DeleteResult = Awaited<ReturnType<SwarmController['deleteInstance']>>;
export type PrincipalChange = { disabled?: boolean; role?: Principal['role']; quotas?: QuotaLimits };
export type TokenRequest = Omit<NewToken, 'principalId'> & { principalId?: string };
export type SnapshotRequest = { name?: string; stopForSnapshot?: boolean } & Pick<OperationOptions, 'onProgress'>;
/** A fork names exactly one of snapshotId (that snapshot) and instanceId (a snapshot of it taken first). */
export type ForkRequest = { name: string; snapshotId?: string; instanceId?: string; providerType?: ProviderType };

export interface SwarmApi {
  getSwarmStatus(): Promise<SwarmStatusView>;
  listInstances(filter?: ListFilter): Promise<VSCodeInstance[]>;
  getInstance(instanceId: string): Promise<VSCodeInstance>;
  createInstance(request: CreateRequest, options?: OperationOptions): Promise<CreateResult>;
  startInstance(instanceId: string, options?: OperationOptions): Promise<VSCodeInstance>;
  stopInstance(instanceId: string, options?: { force?: boolean }): Promise<VSCodeInstance>;
  updateInstance(instanceId: string, patch: InstanceConfigPatch, options?: OperationOptions): Promise<VSCodeInstance & { updateMode: UpdateMode }>;
  deleteInstance(instanceId: string, options?: { keepWorkspace?: boolean }): Promise<DeleteResult>;
  getInstanceLogs(instanceId: string, options?: { tail?: number; since?: string }): Promise<InstanceLogs>;
  issueAccessLink(instanceId: string, options?: { ttlMinutes?: number; revokeExisting?: boolean }): Promise<AccessLink>;
  keepAlive(instanceId: string, minutes: number, holder?: string): Promise<VSCodeInstance>;
  createSnapshot(instanceId: string, options?: SnapshotRequest): Promise<Snapshot>;
  listSnapshots(filter?: { instanceId?: string }): Promise<Snapshot[]>;
  deleteSnapshot(snapshotId: string): Promise<Snapshot>;
  restoreSnapshot(instanceId: string, snapshotId: string, options?: Pick<OperationOptions, 'onProgress'>): Promise<RestoreResult>;
  forkInstance(request: ForkRequest, options?: OperationOptions): Promise<ForkResult>;
  whoami(): Promise<WhoAmI>;
  listPrincipals(): Promise<Principal[]>;
  addPrincipal(input: NewPrincipal): Promise<Principal>;
  updatePrincipal(principalId: string, change: PrincipalChange): Promise<Principal>;
  /** The result's `token` is the only time the token exists outside its holder's hands. */
  createToken(input: TokenRequest): Promise<{ token: string; info: TokenInfo }>;
  listTokens(principalId?: string): Promise<TokenInfo[]>;
  revokeToken(tokenId: string): Promise<TokenInfo>;
  auditEvents(query?: Omit<AuditQuery, 'visibleTo'>): Promise<AuditEvent[]>;
}

/** Fails to compile when AuthorizedSwarm stops being a SwarmApi. */
export function asSwarmApi(swarm: AuthorizedSwarm): SwarmApi {
  return swarm;
}
