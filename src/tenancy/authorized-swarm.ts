/**
 * The swarm as one caller may use it: the one place where authorization happens.
 *
 * Every door (MCP over stdio and HTTP, the CLI, the library, the gateway's links) asks through an
 * AuthorizedSwarm made for its caller, so they cannot disagree. The rules:
 * - an instance the caller may not see is NOT_FOUND, with the very message of one that does not exist;
 *   callers see their own instances, and every owner's only with the `swarm:admin` scope (which only
 *   admins' credentials carry);
 * - an operation the caller may see but whose scope its credential lacks is FORBIDDEN, naming the scope;
 * - warm-buffer members belong to nobody and are shown to nobody but admins;
 * - quotas are checked by the controller at the moment a change counts (see tenancy/quotas.ts).
 * Each call, allowed or denied, ends as exactly one audit event naming the actor, its credential and door.
 */
import { InstanceIdSchema, type CommandResult, type InstanceConfigPatch, type InstanceLogs, type ProviderType, type UpdateMode, type VSCodeInstance } from '../../providers/provider.js';
import { DEFAULT_QUERY_LIMIT, MAX_QUERY_LIMIT, type AuditEvent, type AuditOutcome, type AuditQuery } from '../audit/audit-log.js';
import type { AuditTrail } from '../store/postgres/audit-log.js';
import type { CreateRequest, CreateResult, ListFilter, OperationOptions, SwarmController, SwarmStatus } from '../controller/swarm-controller.js';
import { SwarmError, asSwarmError, invalidInput } from '../errors.js';
import type { AccessLink } from '../gateway/access-links.js';
import { issuePortShare, listListeningPorts, type ListeningPort, type PortShareLink } from '../gateway/ports.js';
import type { HealthCheck, HealthMonitor, HealthRecord, RecoveryAction } from '../health/health-monitor.js';
import type { Migration, MigrationManager, MigrationPlan, MigrationStrategy } from '../migration/migration-manager.js';
import { snapshotManagerFor, type ForkResult, type RestoreResult, type SnapshotManager } from '../snapshots/snapshot-manager.js';
import { notFound as snapshotNotFound, type Snapshot } from '../snapshots/snapshot-store.js';
import { OPERATIONS, type Operation, type PrincipalActor, type Scope } from './identity.js';
import type { NewPrincipal, NewToken, Principal, TokenInfo } from './principals.js';
import { limitsFor, ownerOf, usageOf, type QuotaLimits, type Usage } from './quotas.js';

export interface AuthorizedSwarmDeps {
  controller: SwarmController;
  health?: HealthMonitor;
  migrations?: MigrationManager;
  /** Snapshots; the controller's own manager (made on first use) when absent. */
  snapshots?: SnapshotManager;
}

export interface WhoAmI {
  principal: Principal;
  scopes: readonly Scope[];
  credentialId?: string;
  door: string;
  usage: Usage;
  limits: QuotaLimits;
}

/** Codes that mean "you may not", recorded as denials rather than failures. */
const DENIALS = new Set(['UNAUTHENTICATED', 'FORBIDDEN', 'QUOTA_EXCEEDED']);

export class AuthorizedSwarm {
  private readonly controller: SwarmController;
  private readonly audit: AuditTrail;

  constructor(
    private readonly deps: AuthorizedSwarmDeps,
    readonly actor: PrincipalActor,
  ) {
    this.controller = deps.controller;
    this.audit = deps.controller.audit;
  }

  /** Whether this caller sees every owner's instances (and the warm buffer). */
  get seesAll(): boolean {
    return this.actor.scopes.includes('swarm:admin');
  }

  // ---- instances ----

  listInstances(filter: ListFilter = {}, options: { refresh?: boolean } = {}): Promise<VSCodeInstance[]> {
    return this.run('instance.list', { request: filter }, async () => {
      this.requireScope('instance.list');
      const all = await this.controller.listInstances(this.seesAll ? filter : { ...filter, includeWarm: false }, options);
      return all.filter((i) => this.visible(i));
    });
  }

  getInstance(instanceId: string): Promise<VSCodeInstance> {
    return this.onInstance('instance.get', instanceId, {}, () => this.controller.getInstance(instanceId));
  }

  createInstance(request: CreateRequest, options: OperationOptions = {}): Promise<CreateResult> {
    const owner = request?.owner ?? this.actor.principalId;
    return this.run('instance.create', { request, owner }, async (found) => {
      this.requireScope('instance.create');
      if (owner !== this.actor.principalId) {
        if (!this.seesAll) throw new SwarmError('FORBIDDEN', `owner: creating a workspace for another principal (${owner}) needs the swarm:admin scope`, { field: 'owner' });
        const target = this.controller.principals.getPrincipal(owner);
        if (!target || target.disabled) throw invalidInput('owner', 'an existing, enabled principal id', owner);
      }
      const result = await this.controller.createInstance({ ...request, owner }, options);
      found.subject = result.instance.id;
      return result;
    });
  }

  startInstance(instanceId: string, options: OperationOptions = {}): Promise<VSCodeInstance> {
    return this.onInstance('instance.start', instanceId, {}, () => this.controller.startInstance(instanceId, options));
  }

  stopInstance(instanceId: string, options: { force?: boolean } = {}): Promise<VSCodeInstance> {
    return this.onInstance('instance.stop', instanceId, options, () => this.controller.stopInstance(instanceId, { ...(options.force ? { force: true } : {}), by: 'request' }));
  }

  deleteInstance(instanceId: string, options: { keepWorkspace?: boolean } = {}): ReturnType<SwarmController['deleteInstance']> {
    return this.onInstance('instance.delete', instanceId, options, () => this.controller.deleteInstance(instanceId, options));
  }

  updateInstance(instanceId: string, patch: InstanceConfigPatch, options: OperationOptions = {}): Promise<VSCodeInstance & { updateMode: UpdateMode }> {
    return this.onInstance('instance.update', instanceId, patch, () => this.controller.updateInstance(instanceId, patch, options));
  }

  getInstanceLogs(instanceId: string, options: { tail?: number; since?: string } = {}): Promise<InstanceLogs> {
    return this.onInstance('instance.logs', instanceId, options, () => this.controller.getInstanceLogs(instanceId, options));
  }

  executeCommand(instanceId: string, command: string, options: { timeoutMs?: number } = {}): Promise<CommandResult> {
    // The command is recorded by its length only: commands carry secrets as often as not.
    return this.onInstance('instance.exec', instanceId, { commandLength: typeof command === 'string' ? command.length : undefined, ...options }, () =>
      this.controller.executeCommand(instanceId, command, options),
    );
  }

  issueAccessLink(instanceId: string, options: { ttlMinutes?: number; revokeExisting?: boolean } = {}): Promise<AccessLink> {
    return this.onInstance('instance.access-link', instanceId, options, () => this.controller.issueAccessLink(instanceId, options));
  }

  /** The TCP ports listening inside the instance, with their forwarded addresses. */
  listPorts(instanceId: string): Promise<ListeningPort[]> {
    return this.onInstance('instance.ports', instanceId, {}, () => listListeningPorts(this.controller, instanceId));
  }

  /** A link that opens one forwarded port of the instance (not its editor) to whoever holds it, for `minutes`. */
  sharePort(instanceId: string, port: number, minutes?: number): Promise<PortShareLink> {
    return this.onInstance('instance.share-port', instanceId, { port, minutes }, async () => {
      if (!this.controller.access) throw new SwarmError('DISABLED', 'the gateway is turned off in the configuration, so no port can be shared');
      return issuePortShare(this.controller.access, this.controller.registry.require(instanceId), port, minutes);
    });
  }

  keepAlive(instanceId: string, minutes: number, holder?: string): Promise<VSCodeInstance> {
    return this.onInstance('instance.keep-alive', instanceId, { minutes, holder }, () => this.controller.keepAlive(instanceId, minutes, holder ?? this.actor.principalId));
  }

  /** Counts over what this caller sees (everything for admins), with the migrations under way among them. */
  getSwarmStatus(): Promise<SwarmStatus & { migrationsInProgress: ReturnType<MigrationManager['inProgress']> }> {
    return this.run('swarm.status', {}, async () => {
      this.requireScope('swarm.status');
      const status = this.controller.getSwarmStatus(this.seesAll ? undefined : (i) => this.visible(i));
      const migrationsInProgress = (this.deps.migrations?.inProgress() ?? []).filter((m) => this.seesAll || this.canSee(m.instanceId));
      return { ...status, migrationsInProgress };
    });
  }

  // ---- health ----

  checkHealth(instanceId: string): Promise<{ check: HealthCheck; record: HealthRecord }> {
    return this.onInstance('instance.health', instanceId, {}, async () => {
      const health = this.requireHealth();
      const check = await health.checkAndRecover(instanceId, { recover: false });
      return { check, record: await health.history(instanceId) };
    });
  }

  recoverInstance(instanceId: string, action?: RecoveryAction): Promise<HealthCheck> {
    return this.onInstance('instance.recover', instanceId, { action }, () => this.requireHealth().recoverNow(instanceId, action));
  }

  // ---- migrations ----

  planMigration(instanceId: string, target: ProviderType, strategy?: MigrationStrategy): Promise<MigrationPlan> {
    return this.onInstance('migration.plan', instanceId, { target, strategy }, () => this.requireMigrations().plan(instanceId, target, strategy));
  }

  startMigration(instanceId: string, target: ProviderType, options: { strategy?: MigrationStrategy; timeoutMs?: number } = {}): Promise<{ migration: Migration; wait: Promise<Migration> }> {
    return this.onInstance('migration.start', instanceId, { target, ...options }, () => this.requireMigrations().start(instanceId, target, options));
  }

  getMigration(migrationId: string): Promise<Migration> {
    return this.onMigration('migration.get', migrationId, () => this.requireMigrations().get(migrationId));
  }

  cancelMigration(migrationId: string): Promise<Migration> {
    return this.onMigration('migration.cancel', migrationId, () => this.requireMigrations().cancel(migrationId));
  }

  listMigrations(filter: { instanceId?: string; status?: Migration['status'] } = {}): Promise<Migration[]> {
    return this.run('migration.list', { request: filter }, async () => {
      this.requireScope('migration.list');
      const all = await this.requireMigrations().list(filter);
      return all.filter((m) => this.migrationVisible(m));
    });
  }

  // ---- snapshots ----

  /** A snapshot of an instance the caller sees, owned by the instance's owner and counted against that owner's limits. */
  createSnapshot(instanceId: string, options: { name?: string; stopForSnapshot?: boolean } & Pick<OperationOptions, 'onProgress'> = {}): Promise<Snapshot> {
    const { onProgress: _progress, ...request } = options;
    return this.onInstance('snapshot.create', instanceId, request, () => this.snapshots.create(instanceId, options));
  }

  /** The caller's snapshots (every owner's with swarm:admin), optionally of one instance. */
  listSnapshots(filter: { instanceId?: string } = {}): Promise<Snapshot[]> {
    return this.run('snapshot.list', { request: filter }, async () => {
      this.requireScope('snapshot.list');
      return this.snapshots.list({ ...filter, ...(this.seesAll ? {} : { owner: this.actor.principalId }) });
    });
  }

  deleteSnapshot(snapshotId: string): Promise<Snapshot> {
    return this.onSnapshot('snapshot.delete', snapshotId, () => this.snapshots.delete(snapshotId));
  }

  /** Brings an instance the caller sees back to a snapshot the caller sees, verified file by file. */
  restoreSnapshot(instanceId: string, snapshotId: string, options: Pick<OperationOptions, 'onProgress'> = {}): Promise<RestoreResult> {
    return this.onInstance('snapshot.restore', instanceId, { snapshotId }, async () => {
      await this.visibleSnapshot(snapshotId);
      return this.snapshots.restore(instanceId, snapshotId, options);
    });
  }

  /**
   * A new instance owned by the caller with the files of a snapshot, or of an instance (a snapshot of it is
   * taken first and kept), on the same provider or `providerType`.
   */
  forkInstance(request: { name: string; snapshotId?: string; instanceId?: string; providerType?: ProviderType }, options: OperationOptions = {}): Promise<ForkResult> {
    return this.run('instance.fork', { request, subject: request?.snapshotId ?? request?.instanceId }, async (found) => {
      const { name, snapshotId, instanceId, providerType } = request ?? {};
      if ((snapshotId === undefined) === (instanceId === undefined)) throw invalidInput('snapshotId', 'exactly one of snapshotId and instanceId');
      let from: Snapshot;
      if (instanceId !== undefined) {
        if (!this.canSee(instanceId)) {
          if (InstanceIdSchema.safeParse(instanceId).success && this.controller.registry.get(instanceId)) found.denied = true;
          throw new SwarmError('NOT_FOUND', `instance ${instanceId} does not exist`, { field: 'instanceId' });
        }
        this.requireScope('instance.fork');
        from = await this.snapshots.create(instanceId, { name: `fork-of-${instanceId}`.slice(0, 63), ...(options.onProgress ? { onProgress: (e) => options.onProgress!({ fraction: e.fraction * 0.4, message: e.message }) } : {}) });
      } else {
        from = await this.visibleSnapshot(snapshotId!, found);
        this.requireScope('instance.fork');
      }
      this.requireScope('instance.create');
      const later = options.onProgress && instanceId !== undefined ? (e: { fraction: number; message: string }) => options.onProgress!({ fraction: 0.4 + e.fraction * 0.6, message: e.message }) : options.onProgress;
      const result = await this.snapshots.fork({ name, snapshotId: from.id, owner: this.actor.principalId, ...(providerType ? { providerType } : {}), ...(later ? { onProgress: later } : {}), ...(options.signal ? { signal: options.signal } : {}) });
      found.subject = result.instance.id;
      found.owner = this.actor.principalId;
      return result;
    });
  }

  // ---- identity, usage, audit ----

  /** The caller: principal, scopes in force, usage and limits. */
  whoami(): Promise<WhoAmI> {
    return this.usage();
  }

  /** A principal's usage and limits: one's own, or anyone's with swarm:admin. */
  usage(principalId?: string): Promise<WhoAmI> {
    const id = principalId ?? this.actor.principalId;
    return this.run('swarm.usage', { request: { principalId: id } }, async () => {
      this.requireScope('swarm.usage');
      if (id !== this.actor.principalId) this.requireAdmin('swarm.usage');
      return this.usageOf(id);
    });
  }

  listPrincipals(): Promise<Principal[]> {
    return this.run('principal.list', {}, async () => {
      this.requireScope('principal.list');
      return this.controller.principals.listPrincipals();
    });
  }

  addPrincipal(input: NewPrincipal): Promise<Principal> {
    return this.run('principal.add', { request: input, subject: input?.id }, async () => {
      this.requireScope('principal.add');
      return this.controller.principals.addPrincipal(input);
    });
  }

  updatePrincipal(principalId: string, change: { disabled?: boolean; role?: Principal['role']; quotas?: QuotaLimits }): Promise<Principal> {
    return this.run('principal.update', { request: change, subject: principalId }, async () => {
      this.requireScope('principal.update');
      return this.controller.principals.updatePrincipal(principalId, change);
    });
  }

  /** A token for oneself, within the scopes of the credential in use; for someone else with swarm:admin. */
  createToken(input: Omit<NewToken, 'principalId'> & { principalId?: string }): Promise<{ token: string; info: TokenInfo }> {
    const principalId = input?.principalId ?? this.actor.principalId;
    return this.run('token.create', { request: { ...input, principalId }, subject: principalId }, async (found) => {
      this.requireScope('token.create');
      if (principalId !== this.actor.principalId) this.requireAdmin('token.create');
      else {
        const beyond = (input.scopes ?? this.actor.scopes).filter((s) => !this.actor.scopes.includes(s));
        if (beyond.length) throw new SwarmError('FORBIDDEN', `scopes: a credential cannot make a token with more than it carries (${beyond.join(', ')} missing)`, { field: 'scopes' });
      }
      const scopes = input.scopes ?? (principalId === this.actor.principalId ? [...this.actor.scopes] : undefined);
      const made = await this.controller.principals.createToken({ ...input, principalId, ...(scopes ? { scopes } : {}) });
      found.subject = made.info.id;
      return made;
    });
  }

  listTokens(principalId?: string): Promise<TokenInfo[]> {
    return this.run('token.list', { request: { principalId } }, async () => {
      this.requireScope('token.list');
      if (principalId !== this.actor.principalId && !this.seesAll) {
        if (principalId !== undefined) this.requireAdmin('token.list');
        return this.controller.principals.listTokens(this.actor.principalId);
      }
      return this.controller.principals.listTokens(principalId);
    });
  }

  revokeToken(tokenId: string): Promise<TokenInfo> {
    return this.run('token.revoke', { subject: tokenId }, async () => {
      this.requireScope('token.revoke');
      const token = this.controller.principals.getToken(tokenId);
      // Someone else's token is as unknown as one that does not exist.
      if (!token || (token.principalId !== this.actor.principalId && !this.seesAll)) throw new SwarmError('NOT_FOUND', `token ${tokenId} does not exist`, { field: 'tokenId' });
      return this.controller.principals.revokeToken(tokenId);
    });
  }

  /** Audit events: one's own (as actor or as owner of the instance acted on); every one with swarm:admin. */
  auditEvents(query: Omit<AuditQuery, 'visibleTo'> = {}): Promise<AuditEvent[]> {
    return this.run('audit.list', { request: query }, async () => {
      this.requireScope('audit.list');
      if (this.seesAll) return this.audit.query(query);
      // owner and outcome are matched on the events as shown (see asSeen), so that neither filter tells them apart either.
      const { owner, outcome, ...rest } = query;
      const limit = query.limit ?? DEFAULT_QUERY_LIMIT;
      if (outcome !== undefined && !['ok', 'denied', 'failed'].includes(outcome)) throw invalidInput('outcome', "'ok', 'denied' or 'failed'", outcome);
      if (!Number.isInteger(limit) || limit < 1 || limit > MAX_QUERY_LIMIT) throw invalidInput('limit', `an integer from 1 to ${MAX_QUERY_LIMIT}`, query.limit);
      const filtered = owner !== undefined || outcome !== undefined;
      const events = await this.audit.query({ ...rest, ...(filtered ? { limit: MAX_QUERY_LIMIT } : {}), visibleTo: { principalId: this.actor.principalId } });
      const shown = events.map((e) => this.asSeen(e));
      return filtered ? shown.filter((e) => (owner === undefined || e.owner === owner) && (outcome === undefined || e.outcome === outcome)).slice(-limit) : shown;
    });
  }

  /**
   * An event as a caller without swarm:admin sees it. Their own call on someone else's instance names
   * neither its owner nor, by its outcome, that it exists: refused as NOT_FOUND, it reads as the failure
   * a call on a missing instance is. Events about their own instances, whoever the actor, are shown whole.
   */
  private asSeen(event: AuditEvent): AuditEvent {
    if (event.owner === undefined || event.owner === this.actor.principalId) return event;
    const { owner: _owner, ...shown } = event;
    return shown.outcome === 'denied' && shown.code === 'NOT_FOUND' ? { ...shown, outcome: 'failed' } : shown;
  }

  /** A call refused before it became an operation (its arguments did not parse) is one audit event too; the arguments are not recorded. */
  async recordRefused(operation: Operation, error: SwarmError): Promise<void> {
    await this.run(operation, {}, () => Promise.reject(error)).catch(() => undefined);
  }

  // ---- internals ----

  private visible(instance: Readonly<VSCodeInstance>): boolean {
    if (this.seesAll) return true;
    return !instance.warmPool && ownerOf(instance) === this.actor.principalId;
  }

  private canSee(instanceId: string): boolean {
    const instance = InstanceIdSchema.safeParse(instanceId).success ? this.controller.registry.get(instanceId) : undefined;
    return instance !== undefined && this.visible(instance);
  }

  private migrationVisible(m: Pick<Migration, 'instanceId'>): boolean {
    return this.seesAll || this.canSee(m.instanceId);
  }

  private requireScope(operation: Operation): void {
    const scope = OPERATIONS[operation].scope;
    if (!this.actor.scopes.includes(scope)) {
      const via = this.actor.credentialId ? `credential ${this.actor.credentialId}` : 'this credential';
      throw new SwarmError('FORBIDDEN', `${operation} needs the ${scope} scope, which ${via} of ${this.actor.principalId} (${this.actor.role}) does not carry`, { details: { missingScope: scope } });
    }
  }

  private requireAdmin(operation: Operation): void {
    if (!this.seesAll) throw new SwarmError('FORBIDDEN', `${operation} for another principal needs the swarm:admin scope`, { details: { missingScope: 'swarm:admin' } });
  }

  private get snapshots(): SnapshotManager {
    return this.deps.snapshots ?? snapshotManagerFor(this.controller);
  }

  /** The snapshot, or NOT_FOUND with the message of a missing one when it is someone else's. */
  private async visibleSnapshot(snapshotId: string, found?: Found): Promise<Snapshot> {
    const snapshot = await this.snapshots.get(snapshotId);
    if (found) found.owner = snapshot.owner;
    if (!this.seesAll && snapshot.owner !== this.actor.principalId) {
      if (found) found.denied = true;
      throw snapshotNotFound(snapshotId);
    }
    return snapshot;
  }

  private onSnapshot<T>(operation: Operation, snapshotId: string, work: () => Promise<T>): Promise<T> {
    return this.run(operation, { subject: snapshotId }, async (found) => {
      await this.visibleSnapshot(snapshotId, found);
      this.requireScope(operation);
      return work();
    });
  }

  private requireHealth(): HealthMonitor {
    if (!this.deps.health) throw new SwarmError('DISABLED', 'the health monitor is turned off in the configuration (health.enabled)');
    return this.deps.health;
  }

  private requireMigrations(): MigrationManager {
    if (!this.deps.migrations) throw new SwarmError('DISABLED', 'migrations are not available in this server');
    return this.deps.migrations;
  }

  private usageOf(principalId: string): WhoAmI {
    const principal = this.controller.principals.getPrincipal(principalId);
    if (!principal) throw new SwarmError('NOT_FOUND', `principal ${principalId} does not exist`, { field: 'principalId' });
    return {
      principal,
      scopes: principalId === this.actor.principalId ? this.actor.scopes : [],
      ...(principalId === this.actor.principalId && this.actor.credentialId ? { credentialId: this.actor.credentialId } : {}),
      door: this.actor.door,
      usage: usageOf(principalId, this.controller.registry.list()),
      limits: limitsFor(principal.role, principal.quotas, this.controller.config.quotas),
    };
  }

  /**
   * An operation on one instance: NOT_FOUND unless visible (checked again after the work, which may have
   * waited for the instance's lock while it changed hands), then the scope.
   */
  private onInstance<T>(operation: Operation, instanceId: string, request: unknown, work: () => Promise<T>): Promise<T> {
    return this.run(operation, { subject: instanceId, request }, async (found) => {
      const wellFormed = InstanceIdSchema.safeParse(instanceId).success;
      const known = wellFormed ? this.controller.registry.get(instanceId) : undefined;
      if (known) found.owner = ownerOf(known);
      // A missing instance is NOT_FOUND here too, before the work checks its other arguments: otherwise a bad
      // argument would be reported for a missing instance but not for a hidden one, telling them apart.
      if ((known && !this.visible(known)) || (!known && wellFormed)) {
        if (known) found.denied = true;
        throw new SwarmError('NOT_FOUND', `instance ${instanceId} does not exist`, { field: 'instanceId' });
      }
      if (known) this.requireScope(operation);
      return work();
    });
  }

  private onMigration<T extends Migration>(operation: Operation, migrationId: string, work: () => Promise<T>): Promise<T> {
    return this.run(operation, { subject: migrationId }, async (found) => {
      const migration = await this.requireMigrations().get(migrationId);
      const instance = this.controller.registry.get(migration.instanceId);
      if (instance) found.owner = ownerOf(instance);
      if (!this.migrationVisible(migration)) {
        found.denied = true;
        throw new SwarmError('NOT_FOUND', `migration ${migrationId} does not exist`, { field: 'migrationId' });
      }
      this.requireScope(operation);
      return work();
    });
  }

  /**
   * Runs one operation and records it, allowed or not, as exactly one audit event. The work fills in what
   * it learns: the subject (a new instance's id), the owner of what it acts on, and whether a NOT_FOUND
   * was a denial (an instance that exists but is not the caller's; the caller is not told).
   */
  private async run<T>(operation: Operation, target: { subject?: string; request?: unknown; owner?: string }, work: (found: Found) => Promise<T>): Promise<T> {
    const found: Found = { ...(target.subject !== undefined ? { subject: target.subject } : {}), ...(target.owner ? { owner: target.owner } : {}), denied: false };
    let outcome: AuditOutcome = 'ok';
    let code: string | undefined;
    let reason: string | undefined;
    try {
      return await work(found);
    } catch (err) {
      const error = asSwarmError(err);
      code = error.code;
      reason = error.message;
      outcome = DENIALS.has(error.code) || found.denied ? 'denied' : 'failed';
      throw error;
    } finally {
      const { subject, owner } = found;
      // A change or a refusal is on disk before the caller hears of it; a read that went through is made
      // durable with the next group commit (about a millisecond) without holding its reply: reads change
      // nothing, and waiting for an fsync per read would multiply their cost (npm run bench, tenancy-mcp).
      const waitForDisk = outcome !== 'ok' || !('readOnly' in OPERATIONS[operation]);
      const written = this.audit
        .record({
          type: `dev.vscode-swarm.${operation}`,
          action: operation,
          actor: { type: 'principal', id: this.actor.principalId, door: this.actor.door, ...(this.actor.credentialId ? { credentialId: this.actor.credentialId } : {}) },
          outcome,
          ...(subject !== undefined && typeof subject === 'string' ? { subject: subject.slice(0, 128) } : {}),
          ...(owner ? { owner } : {}),
          ...(code ? { code } : {}),
          ...(reason ? { reason: reason.slice(0, 1_000) } : {}),
          ...(target.request !== undefined ? { request: target.request } : {}), // the audit log removes secrets and env values
        })
        .catch((err: unknown) => this.controller.logger.error({ err: (err as Error).message, operation }, 'could not record an audit event'));
      if (waitForDisk) await written;
    }
  }
}

interface Found {
  subject?: string;
  owner?: string;
  denied: boolean;
}
