import type { McpServer } from '@modelcontextprotocol/sdk/server/mcp.js';
import { z } from 'zod';
import { ProviderCapabilitiesSchema } from '../../../providers/provider.js';
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
  execEnabled: z.boolean(),
  stateDir: z.string(),
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
        const status = ctx.controller.getSwarmStatus();
        const providers = status.providers.map((p) => `${p.type}: ${p.state}${p.reason ? ` (${p.reason})` : ''}`).join('; ');
        const states = Object.entries(status.byStatus).filter(([, n]) => n > 0).map(([s, n]) => `${n} ${s}`).join(', ');
        return { text: `${status.total} workspace(s)${states ? `: ${states}` : ''}. Providers: ${providers}.`, structured: { ...status } };
      }),
  );
}
