import type { McpServer } from '@modelcontextprotocol/server';
import { z } from 'zod';
import { HealthCheckSchema } from '../../health/health-monitor.js';
import { instanceIdInput, runTool, type ToolContext } from '../tool-support.js';

export function registerCheckInstanceHealthTool(server: McpServer, ctx: ToolContext): void {
  server.registerTool(
    'check_instance_health',
    {
      title: 'Check a workspace',
      description:
        "Checks a workspace now (it exists, it is running, its editor answers, its memory is within its limit) without repairing anything, and returns the finding with its reason and the recent history of checks.",
      inputSchema: { instanceId: instanceIdInput, historyLimit: z.number().int().min(0).max(1_000).optional().describe('How many past checks to return (default 10)') },
      outputSchema: { check: HealthCheckSchema, history: z.array(HealthCheckSchema), consecutiveFailures: z.number().int(), recoveryAttempts: z.number().int() },
      annotations: { readOnlyHint: true, openWorldHint: false },
    },
    ({ instanceId, historyLimit }) =>
      runTool(ctx, 'check_instance_health', async () => {
        const { check, record } = await ctx.swarm.checkHealth(instanceId);
        const limit = historyLimit ?? 10;
        const history = limit === 0 ? [] : record.history.slice(-limit); // slice(-0) would be everything
        return {
          text: `${instanceId}: ${check.status} (${check.reason})`,
          structured: { check, history, consecutiveFailures: record.consecutiveFailures, recoveryAttempts: record.recoveryAttempts },
        };
      }),
  );
}
