import type { McpServer } from '@modelcontextprotocol/server';
import { z } from 'zod';
import { instanceIdInput, runTool, type ToolContext } from '../tool-support.js';

export function registerDeleteSwarmInstanceTool(server: McpServer, ctx: ToolContext): void {
  server.registerTool(
    'delete_swarm_instance',
    {
      title: 'Delete a workspace',
      description:
        'Deletes a workspace and, unless keepWorkspace is true, its files. This cannot be undone.',
      inputSchema: {
        instanceId: instanceIdInput,
        keepWorkspace: z.boolean().optional().describe('Keep the workspace files (volume) for a later workspace'),
      },
      outputSchema: { instanceId: z.string(), deleted: z.boolean(), workspaceKept: z.boolean() },
      annotations: { readOnlyHint: false, destructiveHint: true, idempotentHint: true, openWorldHint: false },
    },
    ({ instanceId, keepWorkspace }) =>
      runTool(ctx, 'delete_swarm_instance', async () => {
        const result = await ctx.swarm.deleteInstance(instanceId, { keepWorkspace: keepWorkspace ?? false });
        return { text: `Deleted ${instanceId}${result.workspaceKept ? ' (workspace files kept)' : ' and its workspace files'}.`, structured: result };
      }),
  );
}
