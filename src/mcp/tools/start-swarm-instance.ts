import type { McpServer } from '@modelcontextprotocol/server';
import { InstanceOutputSchema, describeInstance, instanceIdInput, runLongTool, type ToolContext } from '../tool-support.js';

export function registerStartSwarmInstanceTool(server: McpServer, ctx: ToolContext): void {
  server.registerTool(
    'start_swarm_instance',
    {
      title: 'Start a workspace',
      description:
        'Starts a stopped workspace and waits until the editor answers; a running one is returned as is. A workspace whose container went missing is re-created around its files.',
      inputSchema: { instanceId: instanceIdInput },
      outputSchema: { instance: InstanceOutputSchema },
      annotations: { readOnlyHint: false, destructiveHint: false, idempotentHint: true, openWorldHint: false },
    },
    ({ instanceId }, extra) =>
      runLongTool(ctx, 'start_swarm_instance', extra, async (options) => {
        const instance = await ctx.swarm.startInstance(instanceId, options);
        return { text: `Started: ${describeInstance(instance)}`, structured: { instance } };
      }),
  );
}
