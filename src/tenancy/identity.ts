/**
 * Who is asking, and what each kind of caller may do: the one table every door and the domain layer read.
 *
 * A principal is a person or a service (an assistant, a CI job) with a role; the credential it used
 * carries scopes that can only narrow what the role allows. The system itself (the health monitor, the
 * idle monitor, the warm pool, migrations, host agents) is an actor too, so that the audit trail names
 * who did everything.
 */
import { z } from 'zod';

export const ROLES = ['admin', 'member', 'viewer'] as const;
export type Role = (typeof ROLES)[number];
export const RoleSchema = z.enum(ROLES);

export const SCOPES = ['swarm:read', 'swarm:write', 'swarm:exec', 'swarm:admin'] as const;
export type Scope = (typeof SCOPES)[number];
export const ScopeSchema = z.enum(SCOPES);

/** What each role may do at most; a credential's scopes narrow this further. */
export const ROLE_SCOPES: Readonly<Record<Role, readonly Scope[]>> = {
  admin: SCOPES,
  member: ['swarm:read', 'swarm:write', 'swarm:exec'],
  viewer: ['swarm:read'],
};

/** The principal every pre-tenancy instance belongs to, and who the person launching the server is. */
export const LOCAL_ADMIN_ID = 'local-admin';

export const PrincipalIdSchema = z
  .string()
  .regex(/^[a-z0-9][a-z0-9._-]{0,62}$/, 'expected 1-63 characters a-z, 0-9, ".", "_" and "-", starting with a letter or digit');

/** Through which door a request came in: recorded in the audit trail. */
export type Door = 'mcp-stdio' | 'mcp-http' | 'cli' | 'library' | 'gateway' | 'dashboard' | 'agent' | 'system';

export interface PrincipalActor {
  kind: 'principal';
  principalId: string;
  role: Role;
  /** The scopes in force: the credential's, within the role's. */
  scopes: readonly Scope[];
  /** The API token or OAuth token id used; absent for the launching user of a stdio server or the library. */
  credentialId?: string;
  door: Door;
}

export interface SystemActor {
  kind: 'system';
  /** 'health', 'idle', 'warm', 'migration', 'agent', 'reconcile', 'failover'... */
  component: string;
}

export type Actor = PrincipalActor | SystemActor;

/** The launching user of a stdio server, the CLI in one-shot mode, or the library: the local admin, unnarrowed. */
export function localAdmin(door: Door): PrincipalActor {
  return { kind: 'principal', principalId: LOCAL_ADMIN_ID, role: 'admin', scopes: SCOPES, door };
}

export function systemActor(component: string): SystemActor {
  return { kind: 'system', component };
}

/** The scopes a credential carries in force for a principal of this role. */
export function effectiveScopes(role: Role, credentialScopes: readonly string[]): Scope[] {
  const allowed = ROLE_SCOPES[role];
  return allowed.filter((s) => credentialScopes.includes(s));
}

/**
 * Every operation a caller can ask for, with the scope it needs and whether it only reads (changes nothing).
 * MCP tools, CLI commands and gateway actions map onto these names; the audit trail records them.
 */
export const OPERATIONS = {
  'instance.list': { scope: 'swarm:read', readOnly: true },
  'instance.get': { scope: 'swarm:read', readOnly: true },
  'instance.logs': { scope: 'swarm:read', readOnly: true },
  'instance.health': { scope: 'swarm:read', readOnly: true },
  'swarm.status': { scope: 'swarm:read', readOnly: true },
  'swarm.usage': { scope: 'swarm:read', readOnly: true },
  'migration.list': { scope: 'swarm:read', readOnly: true },
  'migration.get': { scope: 'swarm:read', readOnly: true },
  'migration.plan': { scope: 'swarm:read', readOnly: true },
  'audit.list': { scope: 'swarm:read', readOnly: true },
  'instance.ports': { scope: 'swarm:read', readOnly: true },
  'snapshot.list': { scope: 'swarm:read', readOnly: true },
  'instance.create': { scope: 'swarm:write' },
  'instance.start': { scope: 'swarm:write' },
  'instance.stop': { scope: 'swarm:write' },
  'instance.delete': { scope: 'swarm:write' },
  'instance.update': { scope: 'swarm:write' },
  'instance.keep-alive': { scope: 'swarm:write' },
  // Opening the editor gives its terminal: the same trust as changing the workspace.
  'instance.access-link': { scope: 'swarm:write' },
  'instance.recover': { scope: 'swarm:write' },
  // A share link opens one forwarded port (not the editor) to anyone holding it, until it expires.
  'instance.share-port': { scope: 'swarm:write' },
  // A snapshot copies a workspace's files; restore and fork write them into one: the trust of changing it.
  'snapshot.create': { scope: 'swarm:write' },
  'snapshot.delete': { scope: 'swarm:write' },
  'snapshot.restore': { scope: 'swarm:write' },
  'instance.fork': { scope: 'swarm:write' },
  'migration.start': { scope: 'swarm:write' },
  'migration.cancel': { scope: 'swarm:write' },
  'instance.exec': { scope: 'swarm:exec' },
  'principal.list': { scope: 'swarm:admin', readOnly: true },
  'principal.add': { scope: 'swarm:admin' },
  'principal.update': { scope: 'swarm:admin' },
  'token.create': { scope: 'swarm:read' }, // one's own tokens, within one's own scopes; for others swarm:admin
  'token.list': { scope: 'swarm:read', readOnly: true },
  'token.revoke': { scope: 'swarm:read' },
} as const satisfies Record<string, { scope: Scope; readOnly?: true }>;

export type Operation = keyof typeof OPERATIONS;

export function requiredScope(operation: Operation): Scope {
  return OPERATIONS[operation].scope;
}

/** A short stable label for logs and audit: "alice (member, mcp-http)" or "system:health". */
export function describeActor(actor: Actor): string {
  return actor.kind === 'system' ? `system:${actor.component}` : `${actor.principalId} (${actor.role}, ${actor.door})`;
}
