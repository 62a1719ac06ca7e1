/**
 * The tenancy tools: who am I, the audit trail, and the administration of principals and their API
 * tokens. They share their schemas (with the CLI, which validates its flags with the same input schemas so
 * that bad input reads the same whether it runs in one-shot mode or against a running controller), so they
 * live together. Every call goes through `ctx.swarm`, which authorizes it and records it.
 */
import type { McpServer } from '@modelcontextprotocol/server';
import { z } from 'zod';
import { PROVIDER_TYPES } from '../../../providers/provider.js';
import { AUDIT_DOORS, MAX_QUERY_LIMIT, type AuditEvent, type AuditQuery } from '../../audit/audit-log.js';
import type { WhoAmI } from '../../tenancy/authorized-swarm.js';
import { PrincipalIdSchema, RoleSchema, ScopeSchema } from '../../tenancy/identity.js';
import { NewPrincipalSchema, NewTokenSchema, PrincipalSchema, type TokenInfo } from '../../tenancy/principals.js';
import { QuotaLimitsSchema } from '../../tenancy/quotas.js';
import { instanceIdInput, runTool, type ToolContext } from '../tool-support.js';

// ---- input schemas (the CLI parses its flags with these too) ----

const ISO_TIME = /^\d{4}-\d{2}-\d{2}(T\d{2}:\d{2}(:\d{2}(\.\d{1,9})?)?(Z|[+-]\d{2}:\d{2})?)?$/;
const isoTime = (what: string) =>
  z
    .string()
    .regex(ISO_TIME, 'expected an ISO 8601 time such as 2025-01-31T12:00:00Z')
    .refine((s) => !Number.isNaN(Date.parse(s)), 'expected an ISO 8601 time that exists, such as 2025-01-31T12:00:00Z')
    .describe(what);

/** Loose on purpose: an id of no token is NOT_FOUND; what is refused here is the token itself (61 characters) or text that is no id. */
export const TokenIdSchema = z
  .string()
  .regex(/^[A-Za-z0-9_-]{1,32}$/, 'expected a token id such as t0123456789ab, as shown by list_tokens (not the token itself)')
  .describe('The token id (not the token itself), as shown by list_tokens');

export const ListAuditEventsInputSchema = z
  .object({
    since: isoTime('Only events at or after this time (ISO 8601)').optional(),
    until: isoTime('Only events before this time (ISO 8601)').optional(),
    instanceId: instanceIdInput.optional().describe('Only events about this workspace'),
    actorId: PrincipalIdSchema.optional().describe('Only events by this principal (or system component, e.g. "health")'),
    type: z
      .string()
      .max(200)
      .regex(/^[A-Za-z0-9._:/-]+\*?$/, "expected an event type such as dev.vscode-swarm.instance.create, or a prefix ending in '*'")
      .optional()
      .describe("An event type, or a prefix ending in '*' (e.g. dev.vscode-swarm.token.*)"),
    outcome: z.enum(['ok', 'denied', 'failed']).optional().describe('Only allowed calls that worked (ok), refusals (denied) or failures (failed)'),
    limit: z.number().int().min(1).max(MAX_QUERY_LIMIT).optional().describe('The newest N matches (default 100)'),
  })
  .strict();
export type ListAuditEventsInput = z.infer<typeof ListAuditEventsInputSchema>;

export const UpdatePrincipalInputSchema = z
  .object({
    principalId: PrincipalIdSchema.describe('The principal to change'),
    disabled: z.boolean().optional().describe('true: its tokens stop working on the next request; false: enabled again'),
    role: RoleSchema.optional().describe('admin, member or viewer'),
    quotas: QuotaLimitsSchema.optional().describe("Its own limits, replacing earlier own limits (fields left out fall back to the role's)"),
  })
  .strict();
export type UpdatePrincipalInput = z.infer<typeof UpdatePrincipalInputSchema>;

export const ListTokensInputSchema = z.object({ principalId: PrincipalIdSchema.optional().describe('Only this principal’s tokens') }).strict();
export const RevokeTokenInputSchema = z.object({ tokenId: TokenIdSchema }).strict();

/** A token for oneself by default; `principalId` names someone else (swarm:admin). */
export const CreateTokenInputSchema = NewTokenSchema.partial({ principalId: true });
export type CreateTokenInput = z.infer<typeof CreateTokenInputSchema>;

// ---- output schemas ----

const TokenInfoSchema = z.object({
  id: TokenIdSchema,
  principalId: PrincipalIdSchema,
  name: z.string(),
  scopes: z.array(ScopeSchema),
  createdAt: z.string(),
  expiresAt: z.string().optional(),
  lastUsedAt: z.string().optional(),
  revokedAt: z.string().optional(),
});

const FiguresSchema = z.object({ instances: z.number(), cpu: z.number(), memoryMb: z.number() });

const WhoAmIOutputSchema = {
  principal: PrincipalSchema,
  scopes: z.array(ScopeSchema).describe('The scopes in force: the credential’s, within the role’s'),
  credentialId: z.string().optional().describe('The API token id (or "local") used; absent for the launching user'),
  door: z.string(),
  usage: FiguresSchema.extend({ byProvider: z.partialRecord(z.enum(PROVIDER_TYPES), FiguresSchema) }),
  limits: QuotaLimitsSchema,
};

const AuditEventSchema = z.object({
  specversion: z.literal('1.0'),
  id: z.string(),
  source: z.string(),
  type: z.string(),
  time: z.string(),
  datacontenttype: z.literal('application/json'),
  action: z.string(),
  actor: z.object({ type: z.enum(['principal', 'system']), id: z.string(), credentialId: z.string().optional(), door: z.string().describe(AUDIT_DOORS.join(', ')) }),
  outcome: z.enum(['ok', 'denied', 'failed']),
  subject: z.string().optional(),
  owner: z.string().optional(),
  code: z.string().optional(),
  reason: z.string().optional(),
  // Any JSON value (the log is JSON lines), each branch typed: a bare z.unknown() would be an untyped `{}` schema,
  // which the MCP Inspector's --strict flags as unportable.
  request: z.json().optional().describe('The request as recorded, secrets and env values redacted'),
});

// ---- text a person reads ----

export function describeToken(t: TokenInfo): string {
  const state = t.revokedAt ? `revoked ${t.revokedAt}` : t.expiresAt ? `expires ${t.expiresAt}` : 'no expiry';
  return `${t.id} ${t.name} of ${t.principalId}: ${t.scopes.join(' ')}; made ${t.createdAt}, ${state}${t.lastUsedAt ? `, last used ${t.lastUsedAt}` : ''}`;
}

export function describeWhoAmI(me: WhoAmI): string {
  const limit = (n: number | undefined): string => (n === undefined ? 'no limit' : String(n));
  return [
    `${me.principal.id} (${me.principal.role}${me.principal.disabled ? ', disabled' : ''}) via ${me.door}${me.credentialId ? ` with credential ${me.credentialId}` : ''}`,
    `scopes: ${me.scopes.join(', ') || 'none'}`,
    `usage: ${me.usage.instances} workspace(s) of ${limit(me.limits.instances)}, ${me.usage.cpu} CPU of ${limit(me.limits.cpu)}, ${me.usage.memoryMb} MiB of ${limit(me.limits.memoryMb)}`,
  ].join('\n');
}

export function describeAuditEvent(e: AuditEvent): string {
  const actor = `${e.actor.id}${e.actor.credentialId ? `/${e.actor.credentialId}` : ''} (${e.actor.door})`;
  const why = e.outcome === 'ok' ? '' : ` ${e.code ?? ''}${e.reason ? `: ${e.reason}` : ''}`;
  return `${e.time} ${actor} ${e.action}${e.subject ? ` ${e.subject}` : ''} → ${e.outcome}${why}`;
}

export function registerTenancyTools(server: McpServer, ctx: ToolContext): void {
  server.registerTool(
    'whoami',
    {
      title: 'Who am I',
      description:
        'The principal this connection acts as: its role, the scopes its credential carries (what it may do), the credential id and door, and its usage against its quotas (workspaces held, CPU and memory of running ones). Call it to learn why something was FORBIDDEN or QUOTA_EXCEEDED.',
      inputSchema: {},
      outputSchema: WhoAmIOutputSchema,
      annotations: { readOnlyHint: true, openWorldHint: false },
    },
    () =>
      runTool(ctx, 'whoami', async () => {
        const me = await ctx.swarm.whoami();
        return { text: describeWhoAmI(me), structured: { ...me } };
      }),
  );

  server.registerTool(
    'list_audit_events',
    {
      title: 'Audit trail',
      description:
        "Who did what, when, through which door, and whether it was allowed: the newest events (default 100), oldest first. Without the swarm:admin scope only events by the caller or about the caller's workspaces are shown. Filter by time, workspace, actor, type (prefix with '*') or outcome.",
      inputSchema: ListAuditEventsInputSchema.shape,
      outputSchema: { events: z.array(AuditEventSchema), count: z.number().int() },
      annotations: { readOnlyHint: true, openWorldHint: false },
    },
    (args) =>
      runTool(ctx, 'list_audit_events', async () => {
        const events = await ctx.swarm.auditEvents(auditQueryOf(args));
        return { text: events.map(describeAuditEvent).join('\n') || 'No events match.', structured: { events, count: events.length } };
      }),
  );

  server.registerTool(
    'list_principals',
    {
      title: 'List principals',
      description: 'Every principal (person or service) with its role, whether it is disabled, its own quotas and OAuth subjects. Needs the swarm:admin scope.',
      inputSchema: {},
      outputSchema: { principals: z.array(PrincipalSchema) },
      annotations: { readOnlyHint: true, openWorldHint: false },
    },
    () =>
      runTool(ctx, 'list_principals', async () => {
        const principals = await ctx.swarm.listPrincipals();
        return { text: principals.map(describePrincipal).join('\n'), structured: { principals } };
      }),
  );

  server.registerTool(
    'add_principal',
    {
      title: 'Add a principal',
      description:
        'Adds a person or a service (an assistant, a CI job) with a role: admin (everything), member (own workspaces: read, write, exec) or viewer (read only). Then make it a token with create_token. Optional own quotas override its role’s defaults; subjects are OAuth subjects that sign in as it. Needs the swarm:admin scope.',
      inputSchema: NewPrincipalSchema.shape,
      outputSchema: { principal: PrincipalSchema },
      annotations: { readOnlyHint: false, destructiveHint: false, idempotentHint: false, openWorldHint: false },
    },
    (args) =>
      runTool(ctx, 'add_principal', async () => {
        const principal = await ctx.swarm.addPrincipal(args);
        return { text: `Added: ${describePrincipal(principal)}`, structured: { principal } };
      }),
  );

  server.registerTool(
    'update_principal',
    {
      title: 'Change a principal',
      description:
        'Disables a principal (every request with its tokens is refused from the next one on; its workspaces stay), enables it again, changes its role or replaces its own quotas. The local admin cannot be disabled or demoted. Needs the swarm:admin scope.',
      inputSchema: UpdatePrincipalInputSchema.shape,
      outputSchema: { principal: PrincipalSchema },
      annotations: { readOnlyHint: false, destructiveHint: true, idempotentHint: true, openWorldHint: false },
    },
    ({ principalId, ...change }) =>
      runTool(ctx, 'update_principal', async () => {
        const principal = await ctx.swarm.updatePrincipal(principalId, change);
        return { text: `Updated: ${describePrincipal(principal)}`, structured: { principal } };
      }),
  );

  server.registerTool(
    'create_token',
    {
      title: 'Make an API token',
      description:
        'Makes an API token (vss_…) for yourself, or with the swarm:admin scope for another principal. The token is in this result ONCE: only its hash is kept, so it can never be shown again; hand it to its holder now (as `Authorization: Bearer <token>`, or VSCODE_SWARM_TOKEN) and do not repeat it elsewhere. scopes narrow what it may do (default: all its holder’s role allows, or, for yourself, what your credential carries); expiresInDays limits its life.',
      inputSchema: CreateTokenInputSchema.shape,
      outputSchema: { token: z.string().describe('The token itself: shown this once'), info: TokenInfoSchema },
      annotations: { readOnlyHint: false, destructiveHint: false, idempotentHint: false, openWorldHint: false },
    },
    (args) =>
      runTool(ctx, 'create_token', async () => {
        const { token, info } = await ctx.swarm.createToken(args);
        return { text: `Token ${info.id} for ${info.principalId} (${info.scopes.join(', ')}), shown this once and never again:\n${token}`, structured: { token, info } };
      }),
  );

  server.registerTool(
    'list_tokens',
    {
      title: 'List API tokens',
      description: "API tokens with their scopes, expiry, last use and revocation; never the token itself. Your own by default; another principal's, or everyone's, with the swarm:admin scope.",
      inputSchema: ListTokensInputSchema.shape,
      outputSchema: { tokens: z.array(TokenInfoSchema) },
      annotations: { readOnlyHint: true, openWorldHint: false },
    },
    ({ principalId }) =>
      runTool(ctx, 'list_tokens', async () => {
        const tokens = await ctx.swarm.listTokens(principalId);
        return { text: tokens.map(describeToken).join('\n') || 'No tokens.', structured: { tokens } };
      }),
  );

  server.registerTool(
    'revoke_token',
    {
      title: 'Revoke an API token',
      description: 'Revokes an API token by its id (from list_tokens): the very next request made with it is refused. Your own tokens; anyone’s with the swarm:admin scope. Revoking twice is harmless.',
      inputSchema: RevokeTokenInputSchema.shape,
      outputSchema: { token: TokenInfoSchema },
      annotations: { readOnlyHint: false, destructiveHint: true, idempotentHint: true, openWorldHint: false },
    },
    ({ tokenId }) =>
      runTool(ctx, 'revoke_token', async () => {
        const token = await ctx.swarm.revokeToken(tokenId);
        return { text: `Revoked: ${describeToken(token)}`, structured: { token } };
      }),
  );
}

/** The tool's filters as an audit query (the workspace is the events' subject). */
export function auditQueryOf({ instanceId, ...rest }: ListAuditEventsInput): Omit<AuditQuery, 'visibleTo'> {
  return { ...rest, ...(instanceId !== undefined ? { subject: instanceId } : {}) };
}

export function describePrincipal(p: z.infer<typeof PrincipalSchema>): string {
  const quotas = p.quotas ? `; own quotas ${JSON.stringify(p.quotas)}` : '';
  const subjects = p.subjects?.length ? `; subjects ${p.subjects.join(', ')}` : '';
  return `${p.id} "${p.name}" (${p.kind}, ${p.role}${p.disabled ? ', DISABLED' : ''})${quotas}${subjects}`;
}
