import type { McpServer } from '@modelcontextprotocol/server';
import { z } from 'zod';
import { AccessLinkSchema, instanceIdInput, runTool, type ToolContext } from '../tool-support.js';

export function registerGetInstanceAccessLinkTool(server: McpServer, ctx: ToolContext): void {
  server.registerTool(
    'get_instance_access_link',
    {
      title: 'Link to open a workspace',
      description:
        'Issues a fresh one-time link that opens the workspace in a browser through the gateway (the browser keeps a session cookie afterwards). revokeExisting first invalidates every earlier link and signed-in browser.',
      inputSchema: {
        instanceId: instanceIdInput,
        ttlMinutes: z.number().min(1).max(10_080).optional().describe('How long the link stays usable (default from the configuration)'),
        revokeExisting: z.boolean().optional().describe('Sign out every browser and invalidate earlier links first'),
      },
      outputSchema: AccessLinkSchema.shape,
      annotations: { readOnlyHint: false, destructiveHint: false, idempotentHint: false, openWorldHint: false },
    },
    ({ instanceId, ttlMinutes, revokeExisting }) =>
      runTool(ctx, 'get_instance_access_link', async () => {
        const link = await ctx.swarm.issueAccessLink(instanceId, { ...(ttlMinutes ? { ttlMinutes } : {}), revokeExisting: revokeExisting ?? false });
        return { text: `Open: ${link.accessUrl}\n(one-time link, valid until ${link.expiresAt})`, structured: { ...link } };
      }),
  );
}
