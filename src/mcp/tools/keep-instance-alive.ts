import type { McpServer } from '@modelcontextprotocol/server';
import { z } from 'zod';
import { InstanceOutputSchema, instanceIdInput, runTool, type ToolContext } from '../tool-support.js';

export function registerKeepInstanceAliveTool(server: McpServer, ctx: ToolContext): void {
  server.registerTool(
    'keep_instance_alive',
    {
      title: 'Keep a workspace awake',
      description:
        'Holds a workspace awake for the next N minutes even with no editor or browser activity, e.g. while an assistant works elsewhere and will be back. Call again to extend; the idle timeout counts from when the lease ends.',
      inputSchema: {
        instanceId: instanceIdInput,
        minutes: z.number().gt(0).max(1_440).describe('Minutes to keep it awake (at most 1440)'),
        holder: z.string().max(128).regex(/^[^\u0000-\u001f\u007f-\u009f]*$/, 'expected one line of text without control characters').optional().describe('Who holds the lease, shown in the instance'),
      },
      outputSchema: { instance: InstanceOutputSchema },
      annotations: { readOnlyHint: false, destructiveHint: false, idempotentHint: true, openWorldHint: false },
    },
    ({ instanceId, minutes, holder }) =>
      runTool(ctx, 'keep_instance_alive', async () => {
        const instance = await ctx.swarm.keepAlive(instanceId, minutes, holder);
        return { text: `Kept awake until ${instance.lease?.until}.`, structured: { instance } };
      }),
  );
}
