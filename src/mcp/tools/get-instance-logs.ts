import type { McpServer } from '@modelcontextprotocol/server';
import { z } from 'zod';
import { instanceIdInput, runTool, type ToolContext } from '../tool-support.js';

export function registerGetInstanceLogsTool(server: McpServer, ctx: ToolContext): void {
  server.registerTool(
    'get_instance_logs',
    {
      title: 'Workspace logs',
      description: "The editor's recent output (code-server's stdout and stderr).",
      inputSchema: {
        instanceId: instanceIdInput,
        tail: z.number().int().min(1).max(10_000).optional().describe('Last N lines (default 200)'),
        since: z.string().optional().describe('Only lines at or after this ISO 8601 time'),
      },
      outputSchema: { instanceId: z.string(), lines: z.array(z.string()), truncated: z.boolean() },
      annotations: { readOnlyHint: true, openWorldHint: false },
    },
    ({ instanceId, tail, since }) =>
      runTool(ctx, 'get_instance_logs', async () => {
        const logs = await ctx.swarm.getInstanceLogs(instanceId, { ...(tail !== undefined ? { tail } : {}), ...(since !== undefined ? { since } : {}) });
        return { text: logs.lines.join('\n') || '(no output)', structured: { ...logs } };
      }),
  );
}
