import type { McpServer } from '@modelcontextprotocol/sdk/server/mcp.js';
import { z } from 'zod';
import { CreateRequestSchema } from '../../controller/swarm-controller.js';
import { InstanceOutputSchema, describeInstance, progressFor, runTool, type ToolContext } from '../tool-support.js';

export function registerCreateSwarmInstanceTool(server: McpServer, ctx: ToolContext): void {
  server.registerTool(
    'create_swarm_instance',
    {
      title: 'Create a workspace',
      description:
        'Creates a VS Code (code-server) workspace and waits until the editor answers. Names are unique: asking again for an existing name returns that workspace (created: false) instead of a second one. Resources default from the configuration; cpu is in cores, memoryMb in MiB.',
      inputSchema: CreateRequestSchema.shape,
      outputSchema: { instance: InstanceOutputSchema, created: z.boolean() },
      annotations: { readOnlyHint: false, destructiveHint: false, idempotentHint: true, openWorldHint: false },
    },
    (args, extra) =>
      runTool(ctx, 'create_swarm_instance', async () => {
        const onProgress = progressFor(extra);
        const { instance, created } = await ctx.controller.createInstance(args, { ...(onProgress ? { onProgress } : {}), signal: extra.signal });
        return { text: `${created ? 'Created' : 'Already exists'}: ${describeInstance(instance)}`, structured: { instance, created } };
      }),
  );
}
