/**
 * What every tool handler shares: the instance output shape, progress reporting through the request's
 * progress token, and turning errors into messages that carry their stable code.
 */
import type { CallToolResult, ServerContext } from '@modelcontextprotocol/server';
import { z } from 'zod';
import { InstanceIdSchema, VSCodeInstanceSchema, type ProgressEvent, type VSCodeInstance } from '../../providers/provider.js';
import type { SwarmController } from '../controller/swarm-controller.js';
import type { AuthorizedSwarm } from '../tenancy/authorized-swarm.js';
import type { HealthMonitor } from '../health/health-monitor.js';
import type { MigrationManager } from '../migration/migration-manager.js';
import { SwarmError, asSwarmError } from '../errors.js';
import type { Logger } from '../logger.js';

/** What the SDK hands a tool handler beside its arguments: the request (its _meta, signal) and a way to notify about it. */
export type ToolExtra = ServerContext;

export interface ToolContext {
  controller: SwarmController;
  /** The swarm as this server's caller may use it: every tool acts through it (authorization and audit). */
  swarm: AuthorizedSwarm;
  logger: Logger;
  /** Present where the health monitor runs (serve, up). */
  health?: HealthMonitor;
  /** Present where migrations can run (serve, up). */
  migrations?: MigrationManager;
}

export function requireMigrations(ctx: ToolContext): MigrationManager {
  if (!ctx.migrations) throw new SwarmError('DISABLED', 'migrations are not available in this server');
  return ctx.migrations;
}

export const InstanceOutputSchema = VSCodeInstanceSchema;

export const AccessLinkSchema = z.object({
  url: z.string().describe('The workspace address, without credentials'),
  accessUrl: z.string().describe('Opens the editor: a one-time link that signs the browser in'),
  expiresAt: z.string(),
});

export const instanceIdInput = InstanceIdSchema.describe('The instance id, as returned by create_swarm_instance or list_swarm_instances');

/** A progress callback that sends MCP progress notifications when the caller asked for them. */
export function progressFor(extra: ToolExtra): ((event: ProgressEvent) => void) | undefined {
  const progressToken = extra.mcpReq._meta?.progressToken;
  if (progressToken === undefined) return undefined;
  let last = -1;
  return (event) => {
    const progress = Math.round(Math.min(1, Math.max(0, event.fraction)) * 100);
    if (progress <= last) return; // progress must increase
    last = progress;
    void extra.mcpReq
      .notify({ method: 'notifications/progress', params: { progressToken, progress, total: 100, message: event.message } })
      .catch(() => undefined);
  };
}

/**
 * Runs a handler and shapes its result. A thrown SwarmError reaches the client as `isError` with its
 * code in front ("NOT_FOUND: ..."); an unexpected fault is logged and reported as INTERNAL, never as bad input.
 */
export async function runTool<T extends Record<string, unknown>>(
  ctx: ToolContext,
  tool: string,
  work: () => Promise<{ text: string; structured: T }>,
): Promise<CallToolResult> {
  try {
    const { text, structured } = await work();
    return { content: [{ type: 'text', text }], structuredContent: structured };
  } catch (err) {
    const error = asSwarmError(err);
    if (error.code === 'INTERNAL') ctx.logger.error({ tool, err }, 'tool failed unexpectedly');
    else ctx.logger.info({ tool, code: error.code, message: error.message }, 'tool refused');
    return { isError: true, content: [{ type: 'text', text: `${error.code}: ${error.message}` }] };
  }
}

/** What a long operation gets from the request: progress (when the caller asked for it) and cancellation. */
export interface LongOperationOptions {
  onProgress?: (event: ProgressEvent) => void;
  signal: AbortSignal;
}

/**
 * THE seam for MCP Tasks: every long operation (create on a cold provider, start, update, recover, migration)
 * runs through here. The Tasks extension (`io.modelcontextprotocol/tasks`) would let a client that
 * declares it get a task back and poll it; @modelcontextprotocol/server 2.4.0 does not publish that
 * extension (it exports only ext/skills), and the protocol is not hand-rolled here. So today the operation
 * runs within the request, reporting progress and honouring cancellation; when the SDK publishes the
 * extension, this is the one place that returns a task instead for clients that support it.
 */
export function runLongTool<T extends Record<string, unknown>>(
  ctx: ToolContext,
  tool: string,
  extra: ToolExtra,
  work: (options: LongOperationOptions) => Promise<{ text: string; structured: T }>,
): Promise<CallToolResult> {
  const onProgress = progressFor(extra);
  return runTool(ctx, tool, () => work({ ...(onProgress ? { onProgress } : {}), signal: extra.mcpReq.signal }));
}

/** One line a person can read about an instance. */
export function describeInstance(i: VSCodeInstance): string {
  const where = i.url ? ` at ${i.url}` : i.endpoint ? ` at ${i.endpoint.url}` : '';
  const why = i.statusReason ? ` (${i.statusReason})` : '';
  return `${i.name} [${i.id}] on ${i.providerType}: ${i.status}${why}${where}; ${i.config.resources.cpu} CPU, ${i.config.resources.memoryMb} MiB, image ${i.config.image}`;
}
