import type { McpServer } from '@modelcontextprotocol/server';
import { registerAppTool } from '@modelcontextprotocol/ext-apps/server';
import { InstanceOutputSchema, describeInstance, instanceIdInput, runLongTool, type ToolContext } from '../tool-support.js';
import { WORKSPACE_APP_TOOL_META } from '../app/workspace-app.js';

export function registerStartSwarmInstanceTool(server: McpServer, ctx: ToolContext): void {
  registerAppTool(
    server,
    'start_swarm_instance',
    {
      title: 'Start a workspace',
      description:
        'Starts a stopped workspace and waits until the editor answers; a running one is returned as is. A workspace whose container went missing is re-created around its files.',
      inputSchema: { instanceId: instanceIdInput },
      outputSchema: { instance: InstanceOutputSchema },
      annotations: { readOnlyHint: false, destructiveHint: false, idempotentHint: true, openWorldHint: false },
      _meta: WORKSPACE_APP_TOOL_META, // clients that render MCP Apps show the workspace with an Open button
    },
    ({ instanceId }, extra) =>
      runLongTool(ctx, 'start_swarm_instance', extra, async (options) => {
        const instance = await ctx.swarm.startInstance(instanceId, options);
        return { text: `Started: ${describeInstance(instance)}`, structured: { instance } };
      }),
  );
}
