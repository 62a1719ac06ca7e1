import type { McpServer } from '@modelcontextprotocol/server';
import { InstanceOutputSchema, describeInstance, instanceIdInput, runTool, type ToolContext } from '../tool-support.js';

export function registerGetSwarmInstanceTool(server: McpServer, ctx: ToolContext): void {
  server.registerTool(
    'get_swarm_instance',
    {
      title: 'Get a workspace',
      description: 'Shows one workspace as its provider sees it now: status and why, endpoint, resources, image.',
      inputSchema: { instanceId: instanceIdInput },
      outputSchema: { instance: InstanceOutputSchema },
      annotations: { readOnlyHint: true, openWorldHint: false },
    },
    ({ instanceId }) =>
      runTool(ctx, 'get_swarm_instance', async () => {
        const instance = await ctx.swarm.getInstance(instanceId);
        return { text: describeInstance(instance), structured: { instance } };
      }),
  );
}
