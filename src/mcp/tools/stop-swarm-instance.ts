import type { McpServer } from '@modelcontextprotocol/server';
import { z } from 'zod';
import { InstanceOutputSchema, describeInstance, instanceIdInput, runTool, type ToolContext } from '../tool-support.js';

export function registerStopSwarmInstanceTool(server: McpServer, ctx: ToolContext): void {
  server.registerTool(
    'stop_swarm_instance',
    {
      title: 'Stop a workspace',
      description:
        'Stops a workspace. Its files are kept; running processes and unsaved editor state end. force kills at once instead of waiting for a clean shutdown.',
      inputSchema: { instanceId: instanceIdInput, force: z.boolean().optional().describe('Kill instead of a graceful stop') },
      outputSchema: { instance: InstanceOutputSchema },
      annotations: { readOnlyHint: false, destructiveHint: true, idempotentHint: true, openWorldHint: false },
    },
    ({ instanceId, force }) =>
      runTool(ctx, 'stop_swarm_instance', async () => {
        const instance = await ctx.swarm.stopInstance(instanceId, { force: force ?? false });
        return { text: `Stopped: ${describeInstance(instance)}`, structured: { instance } };
      }),
  );
}
