import type { McpServer } from '@modelcontextprotocol/server';
import { z } from 'zod';
import { HealthCheckSchema, RECOVERY_ACTIONS } from '../../health/health-monitor.js';
import { instanceIdInput, runLongTool, type ToolContext } from '../tool-support.js';

export function registerRecoverInstanceTool(server: McpServer, ctx: ToolContext): void {
  server.registerTool(
    'recover_instance',
    {
      title: 'Repair a workspace',
      description:
        'Repairs a workspace now: restart (stop and start its editor), recreate (a new container around the same workspace files) or migrate (move it with its files, each verified, to the provider named by health.migrateTo). Without an action, the next one in the configured order is used. The reason is recorded.',
      inputSchema: { instanceId: instanceIdInput, action: z.enum(RECOVERY_ACTIONS).optional() },
      outputSchema: { check: HealthCheckSchema },
      annotations: { readOnlyHint: false, destructiveHint: true, idempotentHint: false, openWorldHint: false },
    },
    ({ instanceId, action }, extra) =>
      runLongTool(ctx, 'recover_instance', extra, async () => {
        const check = await ctx.swarm.recoverInstance(instanceId, action);
        return { text: `${instanceId}: ${check.action ?? 'nothing done'} (finding before: ${check.status}, ${check.reason})`, structured: { check } };
      }),
  );
}
