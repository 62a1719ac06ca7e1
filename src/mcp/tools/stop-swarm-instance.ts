import type { McpServer } from '@modelcontextprotocol/server';
import { registerAppTool } from '@modelcontextprotocol/ext-apps/server';
import { z } from 'zod';
import { InstanceOutputSchema, describeInstance, instanceIdInput, runTool, type ToolContext } from '../tool-support.js';
import { WORKSPACE_APP_TOOL_META } from '../app/workspace-app.js';

export function registerStopSwarmInstanceTool(server: McpServer, ctx: ToolContext): void {
  registerAppTool(
    server,
    'stop_swarm_instance',
    {
      title: 'Stop a workspace',
      description:
        'Stops a workspace. Its files are kept; running processes and unsaved editor state end. force kills at once instead of waiting for a clean shutdown.',
      inputSchema: { instanceId: instanceIdInput, force: z.boolean().optional().describe('Kill instead of a graceful stop') },
      outputSchema: { instance: InstanceOutputSchema },
      annotations: { readOnlyHint: false, destructiveHint: true, idempotentHint: true, openWorldHint: false },
      _meta: WORKSPACE_APP_TOOL_META, // clients that render MCP Apps show the workspace with an Open button
    },
    ({ instanceId, force }) =>
      runTool(ctx, 'stop_swarm_instance', async () => {
        const instance = await ctx.swarm.stopInstance(instanceId, { force: force ?? false });
        return { text: `Stopped: ${describeInstance(instance)}`, structured: { instance } };
      }),
  );
}
