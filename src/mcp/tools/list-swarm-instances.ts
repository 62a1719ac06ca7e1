import type { McpServer } from '@modelcontextprotocol/server';
import { z } from 'zod';
import { ListFilterSchema } from '../../controller/swarm-controller.js';
import { InstanceOutputSchema, describeInstance, runTool, type ToolContext } from '../tool-support.js';

export function registerListSwarmInstancesTool(server: McpServer, ctx: ToolContext): void {
  server.registerTool(
    'list_swarm_instances',
    {
      title: 'List workspaces',
      description:
        'Lists VS Code workspaces in the swarm, refreshed from their providers. Filter by provider type, status, a name glob (* and ?) or a metadata key (and value).',
      inputSchema: ListFilterSchema.shape,
      outputSchema: { instances: z.array(InstanceOutputSchema), count: z.number().int() },
      annotations: { readOnlyHint: true, openWorldHint: false },
    },
    (args) =>
      runTool(ctx, 'list_swarm_instances', async () => {
        const instances = await ctx.swarm.listInstances(args);
        const text = instances.length ? instances.map(describeInstance).join('\n') : 'No workspaces match.';
        return { text, structured: { instances, count: instances.length } };
      }),
  );
}
