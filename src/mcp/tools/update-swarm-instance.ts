import type { McpServer } from '@modelcontextprotocol/server';
import { z } from 'zod';
import { InstanceConfigPatchSchema } from '../../../providers/provider.js';
import { InstanceOutputSchema, describeInstance, instanceIdInput, runLongTool, type ToolContext } from '../tool-support.js';

export function registerUpdateSwarmInstanceTool(server: McpServer, ctx: ToolContext): void {
  server.registerTool(
    'update_swarm_instance',
    {
      title: 'Update a workspace',
      description:
        'Changes resources (cpu cores, memoryMb), image, env or metadata. Resources change live where the provider can; an image or env change re-creates the workspace around the same files, which restarts the editor. updateMode says which happened.',
      inputSchema: { instanceId: instanceIdInput, ...InstanceConfigPatchSchema.shape },
      outputSchema: { instance: InstanceOutputSchema, updateMode: z.enum(['live', 'recreate', 'none']) },
      annotations: { readOnlyHint: false, destructiveHint: true, idempotentHint: true, openWorldHint: false },
    },
    ({ instanceId, ...patch }, extra) =>
      runLongTool(ctx, 'update_swarm_instance', extra, async ({ onProgress }) => {
        const { updateMode, ...instance } = await ctx.swarm.updateInstance(instanceId, patch, onProgress ? { onProgress } : {});
        return { text: `Updated (${updateMode}): ${describeInstance(instance)}`, structured: { instance, updateMode } };
      }),
  );
}
