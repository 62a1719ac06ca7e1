import type { McpServer } from '@modelcontextprotocol/server';
import { z } from 'zod';
import { ProviderCapabilitiesSchema } from '../../../providers/provider.js';
import { MigrationSchema } from '../../migration/migration-manager.js';
import { runTool, type ToolContext } from '../tool-support.js';

const Counts = z.record(z.string(), z.number());

export const SwarmStatusOutputSchema = {
  total: z.number().int(),
  byStatus: Counts,
  byHealth: Counts,
  byProvider: z.record(z.string(), z.object({ total: z.number().int(), byStatus: Counts, byHealth: Counts })),
  providers: z.array(
    z.object({
      type: z.string(),
      state: z.enum(['ready', 'unavailable', 'disabled']),
      reason: z.string().optional(),
      capabilities: ProviderCapabilitiesSchema.optional(),
    }),
  ),
  warm: z.array(
    z.object({
      key: z.string(),
      provider: z.string(),
      image: z.string(),
      resources: z.object({ cpu: z.number(), memoryMb: z.number() }),
      size: z.number().int(),
      ready: z.number().int(),
      warming: z.number().int(),
    }),
  ),
  gatewayUrlPattern: z.string().optional(),
  idleTimeoutMinutes: z.number(),
  execEnabled: z.boolean(),
  stateDir: z.string(),
  migrationsInProgress: z.array(MigrationSchema),
};

export function registerGetSwarmStatusTool(server: McpServer, ctx: ToolContext): void {
  server.registerTool(
    'get_swarm_status',
    {
      title: 'Swarm status',
      description: 'Counts of workspaces by provider, status and health, and each provider with its state and capabilities.',
      inputSchema: {},
      outputSchema: SwarmStatusOutputSchema,
      annotations: { readOnlyHint: true, openWorldHint: false },
    },
    () =>
      runTool(ctx, 'get_swarm_status', async () => {
        const status = await ctx.swarm.getSwarmStatus();
        const providers = status.providers.map((p) => `${p.type}: ${p.state}${p.reason ? ` (${p.reason})` : ''}`).join('; ');
        const states = Object.entries(status.byStatus).filter(([, n]) => n > 0).map(([s, n]) => `${n} ${s}`).join(', ');
        const warm = status.warm.map((w) => `${w.ready}/${w.size} ready for ${w.image} (${w.resources.cpu} CPU, ${w.resources.memoryMb} MiB)`).join('; ');
        const moving = status.migrationsInProgress.map((m) => `${m.instanceId} → ${m.target}`).join(', ');
        return {
          text: `${status.total} workspace(s)${states ? `: ${states}` : ''}. Providers: ${providers}.${warm ? ` Warm buffer: ${warm}.` : ''}${moving ? ` Migrating: ${moving}.` : ''}`,
          structured: { ...status },
        };
      }),
  );
}
