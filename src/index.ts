/**
 * vscode-swarm as a library: build a controller from a configuration, or assemble one from parts.
 *
 *   const controller = createSwarm(await loadConfig());
 *   await controller.initialize();
 *   const { instance } = await controller.createInstance({ name: 'alice' });
 *
 * The controller's own methods act as the local admin (the process owns the state directory). To act for
 * someone else, with their ownership, scopes, quotas and an audit trail, go through an AuthorizedSwarm:
 *
 *   const alice = await new Authenticator(controller.principals).authenticate(token, 'library');
 *   const swarm = new AuthorizedSwarm({ controller }, alice);
 *   await swarm.listInstances(); // alice's only
 */
export * from '../providers/provider.js';
export { DockerProvider, type DockerProviderOptions } from '../providers/docker/docker-provider.js';
export { SwarmController, CreateRequestSchema, ListFilterSchema } from './controller/swarm-controller.js';
export type { CreateRequest, ListFilter, OperationOptions, ProviderStatus, ReconcileReport, SwarmStatus } from './controller/swarm-controller.js';
export { createSwarm, defaultProviderFactory, type CreateSwarmOptions } from './controller/create-swarm.js';
export { InstanceRegistry, type RegistryFilter, type LoadReport } from './registry/instance-registry.js';
export { loadConfig, parseConfig, SwarmConfigSchema, DEFAULT_EDITOR_IMAGE, DEFAULT_STATE_DIR, type SwarmConfig, type SwarmConfigInput } from './config.js';
export { SwarmError, ERROR_CODES, type ErrorCode } from './errors.js';
export { createMcpServer } from './mcp/server.js';
export { createLogger, silentLogger, type Logger } from './logger.js';
export { AuthorizedSwarm, type AuthorizedSwarmDeps, type WhoAmI } from './tenancy/authorized-swarm.js';
export { Authenticator, bearerOf } from './tenancy/authenticate.js';
export { ROLES, SCOPES, OPERATIONS, LOCAL_ADMIN_ID, localAdmin, systemActor, type Actor, type PrincipalActor, type Role, type Scope, type Door, type Operation } from './tenancy/identity.js';
export { PrincipalStore, type PrincipalDirectory, type Principal, type TokenInfo, type NewPrincipal, type NewToken } from './tenancy/principals.js';
export { importStateDir, exportStateDir, type TransferReport } from './store/transfer.js';
export { QuotaConfigSchema, QuotaLimitsSchema, type QuotaLimits, type Usage } from './tenancy/quotas.js';
export { AuditLog, AuditConfigSchema, type AuditEvent, type AuditEventInput, type AuditQuery } from './audit/audit-log.js';
