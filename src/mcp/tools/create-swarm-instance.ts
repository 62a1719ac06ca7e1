import type { McpServer } from '@modelcontextprotocol/server';
import { registerAppTool } from '@modelcontextprotocol/ext-apps/server';
import { z } from 'zod';
import { CreateRequestSchema } from '../../controller/swarm-controller.js';
import { AccessLinkSchema, InstanceOutputSchema, describeInstance, runLongTool, type ToolContext } from '../tool-support.js';
import { WORKSPACE_APP_TOOL_META } from '../app/workspace-app.js';

export function registerCreateSwarmInstanceTool(server: McpServer, ctx: ToolContext): void {
  registerAppTool(
    server,
    'create_swarm_instance',
    {
      title: 'Create a workspace',
      description:
        'Creates a VS Code (code-server) workspace and waits until the editor answers; served in milliseconds from the warm buffer when one matches. Names are unique: asking again for an existing name returns that workspace (created: false) instead of a second one. Resources default from the configuration; cpu is in cores, memoryMb in MiB. The result has access.accessUrl: a one-time link that opens the editor in a browser. It stops after idleTimeoutMinutes without use. With repository { url, ref?, credential? } the repository is cloned on the controller and copied into the workspace (verified) before it is returned; credential names one configured on the controller, never the secret itself.',
      inputSchema: CreateRequestSchema.shape,
      outputSchema: { instance: InstanceOutputSchema, created: z.boolean(), fromWarmPool: z.boolean(), access: AccessLinkSchema.optional() },
      annotations: { readOnlyHint: false, destructiveHint: false, idempotentHint: true, openWorldHint: false },
      _meta: WORKSPACE_APP_TOOL_META, // clients that render MCP Apps show the workspace with an Open button
    },
    (args, extra) =>
      runLongTool(ctx, 'create_swarm_instance', extra, async (options) => {
        const result = await ctx.swarm.createInstance(args, options);
        const verb = result.created ? (result.fromWarmPool ? 'Created (from the warm buffer)' : 'Created') : 'Already exists';
        const open = result.access ? `\nOpen it: ${result.access.accessUrl} (one-time link, valid until ${result.access.expiresAt})` : '';
        return { text: `${verb}: ${describeInstance(result.instance)}${open}`, structured: { ...result } };
      }),
  );
}
