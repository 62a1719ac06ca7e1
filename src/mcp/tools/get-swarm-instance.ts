import type { McpServer } from '@modelcontextprotocol/server';
import { registerAppTool } from '@modelcontextprotocol/ext-apps/server';
import { InstanceOutputSchema, describeInstance, instanceIdInput, runTool, type ToolContext } from '../tool-support.js';
import { WORKSPACE_APP_TOOL_META } from '../app/workspace-app.js';

export function registerGetSwarmInstanceTool(server: McpServer, ctx: ToolContext): void {
  registerAppTool(
    server,
    'get_swarm_instance',
    {
      title: 'Get a workspace',
      description: 'Shows one workspace as its provider sees it now: status and why, endpoint, resources, image.',
      inputSchema: { instanceId: instanceIdInput },
      outputSchema: { instance: InstanceOutputSchema },
      annotations: { readOnlyHint: true, openWorldHint: false },
      _meta: WORKSPACE_APP_TOOL_META, // clients that render MCP Apps show the workspace with an Open button
    },
    ({ instanceId }) =>
      runTool(ctx, 'get_swarm_instance', async () => {
        const instance = await ctx.swarm.getInstance(instanceId);
        return { text: describeInstance(instance), structured: { instance } };
      }),
  );
}
